//! Connections to CDRTool rating engines, and the [`RatingBackend`] on top.
//!
//! Each engine ([`Link`]) has a small pool of TCP connections. A connection
//! carries one request at a time, ever: the engine has no framing, and two
//! requests in one TCP segment merge into one bad request. A request takes a
//! connection out of the pool and puts it back only after a whole reply; a
//! request that times out or is cancelled drops its connection, so a late
//! reply can never be read as the answer to the next request.
//!
//! Each engine has a supervisor task. While the engine is down (connection
//! refused, or a request timed out) requests fail at once, so an `init`
//! gets the configured policy well inside OpenSIPS's 500 ms, and the
//! supervisor reconnects with backoff, probing with `KeepAlive` before the
//! engine is used again (a stuck engine accepts connections but answers
//! nothing).
//!
//! With several engines, a billing party is pinned to one engine while it
//! has sessions (the shared balance is computed there), as the original
//! does. The first choice is a stable hash of the party, so a restarted
//! daemon sends owed debits to the engine that authorised them.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hasher;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use callcontrol_core::error::RatingError;
use callcontrol_core::rating::{
    Authorisation, AuthoriseRequest, Balance, BalanceEntry, DebitOutcome, DebitRequest, RatedLimit,
    RatingBackend, RatingHealth,
};
use callcontrol_core::types::{BillingParty, CallId};
use log::{debug, error, info, warn};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::{timeout_at, Instant};

use super::codec::{self, Command, Frame, ReplyError};
use super::config::{CdrtoolConfig, EngineAddress};
use crate::error::Error;

/// Upper bounds of the latency histogram buckets, in microseconds.
pub const LATENCY_BOUNDS_US: [u64; 12] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
];

/// Request latency (from taking a connection to the whole reply), as a
/// histogram: `counts[i]` requests took at most `bounds_us[i]` µs (and more
/// than the bound before); the last count is above every bound. Not cumulative.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LatencyHistogram {
    /// Bucket upper bounds in µs.
    pub bounds_us: Vec<u64>,
    /// Requests per bucket (`bounds_us.len() + 1` entries).
    pub counts: Vec<u64>,
    /// Sum of all latencies in µs.
    pub sum_us: u64,
    /// Number of requests measured.
    pub count: u64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram {
            bounds_us: LATENCY_BOUNDS_US.to_vec(),
            counts: vec![0; LATENCY_BOUNDS_US.len() + 1],
            sum_us: 0,
            count: 0,
        }
    }
}

impl LatencyHistogram {
    fn observe(&mut self, d: Duration) {
        let us = d.as_micros().min(u128::from(u64::MAX)) as u64;
        let i = self
            .bounds_us
            .iter()
            .position(|b| us <= *b)
            .unwrap_or(self.bounds_us.len());
        if let Some(c) = self.counts.get_mut(i) {
            *c += 1;
        }
        self.sum_us = self.sum_us.saturating_add(us);
        self.count += 1;
    }
}

/// A snapshot of the client's counters (monotonic), for metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CdrtoolStats {
    /// Requests by command (`MaxSessionTime`, …) and result: `limit`,
    /// `no-credit`, `unlimited`, `locked`, `ok`, `failed`, `not-prepaid`,
    /// `error` (the engine said `Error: …`), `bad-reply`, `timeout`,
    /// `unreachable`.
    pub requests: BTreeMap<String, BTreeMap<String, u64>>,
    /// Requests that timed out (their connection was dropped).
    pub timeouts: u64,
    /// Transport failures: connections refused or closed mid-request.
    pub errors: u64,
    /// Replies that were not valid for their command.
    pub bad_replies: u64,
    /// Connections opened.
    pub connects: u64,
    /// Connection attempts that failed.
    pub connect_failures: u64,
    /// Debits written to an engine (retries included).
    pub debits_sent: u64,
    /// Debits answered `Ok`.
    pub debits_ok: u64,
    /// Debits answered `Failed` (final: not charged).
    pub debits_failed: u64,
    /// Debits with no valid answer (the engine core retries them).
    pub debits_undelivered: u64,
    /// Latency of answered requests.
    pub latency: LatencyHistogram,
}

impl CdrtoolStats {
    fn count(&mut self, cmd: Command, result: &str) {
        // Look up before inserting: no allocation once the keys exist.
        if !self.requests.contains_key(cmd.as_str()) {
            self.requests
                .insert(cmd.as_str().to_string(), BTreeMap::new());
        }
        if let Some(by_result) = self.requests.get_mut(cmd.as_str()) {
            match by_result.get_mut(result) {
                Some(n) => *n += 1,
                None => {
                    by_result.insert(result.to_string(), 1);
                }
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LinkUp {
    /// Not connected yet: requests may connect themselves.
    Connecting,
    /// Answering.
    Up,
    /// Refused, closed or stuck: requests fail at once until the supervisor's
    /// probe succeeds.
    Down,
}

#[derive(Debug)]
struct LinkState {
    up: LinkUp,
    last_error: Option<String>,
}

/// Why an exchange got no valid reply.
#[derive(Debug)]
enum Failure {
    /// Nothing reached the engine (down, refused, no free connection).
    NotSent { why: String, busy: bool },
    /// Written, but no whole reply: the request may have taken effect.
    NoAnswer { why: String, timeout: bool },
    /// A reply too long to be one.
    Oversized,
}

/// One rating engine: its connection pool and state.
struct Link {
    addr: EngineAddress,
    name: String,
    idle: Mutex<Vec<TcpStream>>,
    slots: Semaphore,
    state: Mutex<LinkState>,
    wake: Notify,
    timeout: Duration,
    reconnect_min: Duration,
    reconnect_max: Duration,
    stats: Arc<Mutex<CdrtoolStats>>,
}

impl Link {
    fn is_down(&self) -> bool {
        lock(&self.state).up == LinkUp::Down
    }

    fn is_up(&self) -> bool {
        lock(&self.state).up == LinkUp::Up
    }

    fn mark_up(&self) {
        let mut s = lock(&self.state);
        if s.up != LinkUp::Up {
            info!("Connected to the rating engine at {}", self.name);
            s.up = LinkUp::Up;
            s.last_error = None;
        }
    }

    fn mark_down(&self, why: &str) {
        let mut s = lock(&self.state);
        if s.up != LinkUp::Down {
            error!("Rating engine at {} is down: {why}", self.name);
            s.up = LinkUp::Down;
        }
        s.last_error = Some(why.to_string());
        drop(s);
        lock(&self.idle).clear();
        self.wake.notify_one();
    }

    /// A pooled connection that is still open. A pooled connection has no
    /// request in flight, so anything readable is a close, a stray `\n`
    /// after `Failed\n\n\n`, or garbage — the latter two are discarded.
    fn take_idle(&self) -> Option<TcpStream> {
        let mut idle = lock(&self.idle);
        while let Some(s) = idle.pop() {
            let mut probe = [0u8; 64];
            match s.try_read(&mut probe) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Some(s),
                Ok(n) if n > 0 && probe[..n].iter().all(|b| *b == b'\n' || *b == b'\r') => {
                    return Some(s)
                }
                Ok(0) => debug!(
                    "Pooled connection to {} was closed by the engine",
                    self.name
                ),
                Ok(n) => warn!(
                    "Discarding a connection to {} with {n} unexpected bytes",
                    self.name
                ),
                Err(e) => debug!("Pooled connection to {} failed: {e}", self.name),
            }
        }
        None
    }

    fn put_idle(&self, s: TcpStream) {
        lock(&self.idle).push(s);
    }

    async fn connect(&self, deadline: Instant) -> Result<TcpStream, String> {
        let target = self.addr.connect_string();
        let r = match timeout_at(deadline, TcpStream::connect(&target)).await {
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                Ok(s)
            }
            Ok(Err(e)) => Err(format!("cannot connect: {e}")),
            Err(_) => Err("connection attempt timed out".to_string()),
        };
        let mut st = lock(&self.stats);
        match r {
            Ok(_) => st.connects += 1,
            Err(_) => {
                st.connect_failures += 1;
                st.errors += 1;
            }
        }
        r
    }

    /// Writes one request and reads its whole reply.
    async fn round_trip(
        &self,
        stream: &mut TcpStream,
        cmd: Command,
        request: &[u8],
        deadline: Instant,
    ) -> Result<String, (Failure, bool)> {
        // One write of the whole request: the engine takes each read as one.
        match timeout_at(deadline, stream.write_all(request)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                return Err((
                    Failure::NotSent {
                        why: format!("write failed: {e}"),
                        busy: false,
                    },
                    true,
                ))
            }
            Err(_) => {
                return Err((
                    Failure::NoAnswer {
                        why: "timed out writing".into(),
                        timeout: true,
                    },
                    false,
                ))
            }
        }
        let mut buf = Vec::with_capacity(256);
        loop {
            match timeout_at(deadline, stream.read_buf(&mut buf)).await {
                Ok(Ok(0)) => {
                    let fresh = buf.iter().all(|b| *b == b'\n' || *b == b'\r');
                    let why = if fresh {
                        "connection closed"
                    } else {
                        "connection closed mid-reply"
                    };
                    return Err((
                        Failure::NoAnswer {
                            why: why.into(),
                            timeout: false,
                        },
                        fresh,
                    ));
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    let fresh = buf.iter().all(|b| *b == b'\n' || *b == b'\r');
                    return Err((
                        Failure::NoAnswer {
                            why: format!("read failed: {e}"),
                            timeout: false,
                        },
                        fresh,
                    ));
                }
                Err(_) => {
                    return Err((
                        Failure::NoAnswer {
                            why: "no reply in time".into(),
                            timeout: true,
                        },
                        false,
                    ))
                }
            }
            if let Frame::Complete { start, end } = codec::frame_reply(&buf) {
                return Ok(String::from_utf8_lossy(&buf[start..end]).into_owned());
            }
            if buf.len() > cmd.max_reply() {
                return Err((Failure::Oversized, false));
            }
        }
    }

    /// One request, one reply, on a connection of the pool. `retry_stale`:
    /// when a pooled connection turns out to be dead before any reply byte
    /// (the engine restarted), retry once on a new connection — only for
    /// requests that are safe to repeat.
    async fn exchange(
        &self,
        cmd: Command,
        request: &[u8],
        retry_stale: bool,
    ) -> Result<String, Failure> {
        let started = Instant::now();
        let deadline = started + self.timeout;
        if self.is_down() {
            return Err(Failure::NotSent {
                why: format!("{} is down", self.name),
                busy: false,
            });
        }
        let _permit = match timeout_at(deadline, self.slots.acquire()).await {
            Ok(Ok(p)) => p,
            Ok(Err(_)) => {
                return Err(Failure::NotSent {
                    why: "client closed".into(),
                    busy: false,
                })
            }
            Err(_) => {
                return Err(Failure::NotSent {
                    why: "every connection stayed busy".into(),
                    busy: true,
                })
            }
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (mut stream, pooled) = match self.take_idle() {
                Some(s) => (s, true),
                None => {
                    // Bounded below the request timeout, so a black-holed
                    // engine still leaves time to answer the proxy.
                    let connect_deadline = deadline.min(Instant::now() + self.timeout / 2);
                    match self.connect(connect_deadline).await {
                        Ok(s) => (s, false),
                        Err(why) => {
                            self.mark_down(&why);
                            return Err(Failure::NotSent { why, busy: false });
                        }
                    }
                }
            };
            match self.round_trip(&mut stream, cmd, request, deadline).await {
                Ok(body) => {
                    self.put_idle(stream);
                    self.mark_up();
                    lock(&self.stats).latency.observe(started.elapsed());
                    return Ok(body);
                }
                Err((failure, fresh)) => {
                    drop(stream);
                    match &failure {
                        Failure::NoAnswer { timeout: true, .. } => {
                            lock(&self.stats).timeouts += 1;
                            // Stuck or too slow: fail fast until a probe answers.
                            self.mark_down("a request timed out");
                        }
                        Failure::Oversized => {}
                        _ => {
                            lock(&self.stats).errors += 1;
                            // The engine probably restarted: every pooled
                            // connection is dead too.
                            lock(&self.idle).clear();
                        }
                    }
                    let retry = fresh
                        && pooled
                        && attempt == 1
                        && (retry_stale || matches!(failure, Failure::NotSent { .. }));
                    if !retry {
                        return Err(failure);
                    }
                    debug!(
                        "Connection to {} was stale, retrying on a new one",
                        self.name
                    );
                }
            }
        }
    }

    /// Connects and checks that the engine answers `KeepAlive`.
    async fn probe(&self) -> Result<TcpStream, String> {
        let deadline = Instant::now() + self.timeout;
        let mut s = self.connect(deadline).await?;
        let mut req = Vec::new();
        codec::encode_keepalive(&mut req);
        match self
            .round_trip(&mut s, Command::KeepAlive, &req, deadline)
            .await
        {
            Ok(body) => match codec::parse_keepalive(&body) {
                Ok(()) => Ok(s),
                // An engine without KeepAlive answers `0`: it answers, so use it.
                Err(_) => {
                    debug!(
                        "Rating engine at {} answered KeepAlive with {body:?}",
                        self.name
                    );
                    Ok(s)
                }
            },
            Err((Failure::NoAnswer { why, .. } | Failure::NotSent { why, .. }, _)) => Err(why),
            Err((Failure::Oversized, _)) => Err("oversized KeepAlive reply".into()),
        }
    }

    fn backoff(&self, failures: u32) -> Duration {
        let shift = failures.saturating_sub(1).min(16);
        self.reconnect_min
            .saturating_mul(1 << shift)
            .min(self.reconnect_max)
    }
}

/// Keeps a link connected: connects at start, and after the link went down
/// reconnects with backoff until the engine answers a probe.
async fn supervise(link: Arc<Link>) {
    let mut failures = 0u32;
    loop {
        while link.is_up() {
            link.wake.notified().await;
        }
        match link.probe().await {
            Ok(s) => {
                failures = 0;
                link.put_idle(s);
                link.mark_up();
            }
            Err(why) => {
                failures += 1;
                if failures == 1 || lock(&link.state).up != LinkUp::Down {
                    link.mark_down(&why);
                } else {
                    debug!("Rating engine at {} still down: {why}", link.name);
                    lock(&link.state).last_error = Some(why);
                }
                tokio::time::sleep(link.backoff(failures)).await;
            }
        }
    }
}

/// Where a party's sessions are rated.
struct Pin {
    link: usize,
    /// Call-IDs with an authorisation the engine may hold, and until when
    /// (the engine purges a session at its limit + 120 s).
    calls: HashMap<CallId, Instant>,
    /// The earliest of those: expired calls are swept only once it passed,
    /// so pinning stays O(1) per request.
    sweep_at: Instant,
}

impl Pin {
    fn sweep(&mut self, now: Instant) {
        if now >= self.sweep_at {
            self.calls.retain(|_, until| *until > now);
            self.sweep_at = self.calls.values().min().copied().unwrap_or(now);
        }
    }
}

struct Inner {
    links: Vec<Arc<Link>>,
    pins: Mutex<HashMap<BillingParty, Pin>>,
    stats: Arc<Mutex<CdrtoolStats>>,
}

/// A stable hash (FNV-1a): the same party picks the same engine after a
/// restart of the daemon.
fn stable_hash(s: &str) -> u64 {
    struct Fnv(u64);
    impl Hasher for Fnv {
        fn finish(&self) -> u64 {
            self.0
        }
        fn write(&mut self, bytes: &[u8]) {
            for b in bytes {
                self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
            }
        }
    }
    let mut h = Fnv(0xcbf2_9ce4_8422_2325);
    h.write(s.as_bytes());
    h.finish()
}

impl Inner {
    /// The first engine not known to be down, starting at the party's hash.
    fn preferred(&self, key: &str) -> Option<usize> {
        let n = self.links.len();
        let start = (stable_hash(key) % n.max(1) as u64) as usize;
        (0..n)
            .map(|k| (start + k) % n)
            .find(|&i| !self.links[i].is_down())
    }

    /// Picks the engine for an authorisation and pins the call there.
    /// Returns the engine and whether the call was newly pinned.
    fn pin_authorise(&self, req: &AuthoriseRequest) -> Result<(usize, bool), RatingError> {
        let now = Instant::now();
        // The engine forgets the session at its limit + 120 s; keep the pin
        // a little longer than the longest the limit can be.
        let keep = Duration::from_secs(req.max_duration.saturating_add(300));
        let mut pins = lock(&self.pins);
        if let Some(pin) = pins.get_mut(&req.party) {
            pin.sweep(now);
            if !pin.calls.is_empty() {
                let fresh = pin.calls.insert(req.call_id.clone(), now + keep).is_none();
                pin.sweep_at = pin.sweep_at.min(now + keep);
                return Ok((pin.link, fresh));
            }
        }
        let link = self
            .preferred(req.party.as_str())
            .ok_or_else(|| RatingError::Unreachable("no rating engine is reachable".into()))?;
        let mut calls = HashMap::new();
        calls.insert(req.call_id.clone(), now + keep);
        pins.insert(
            req.party.clone(),
            Pin {
                link,
                calls,
                sweep_at: now + keep,
            },
        );
        Ok((link, true))
    }

    fn unpin(&self, party: &BillingParty, call_id: &CallId) {
        let mut pins = lock(&self.pins);
        if let Some(pin) = pins.get_mut(party) {
            pin.calls.remove(call_id);
            if pin.calls.is_empty() {
                pins.remove(party);
            }
        }
    }

    /// The engine a debit goes to: where the party is pinned, else where an
    /// authorisation would have gone. May be down: the debit then waits.
    fn debit_link(&self, party: &BillingParty) -> usize {
        if let Some(pin) = lock(&self.pins).get(party) {
            return pin.link;
        }
        self.preferred(party.as_str()).unwrap_or_else(|| {
            (stable_hash(party.as_str()) % self.links.len().max(1) as u64) as usize
        })
    }

    fn count(&self, cmd: Command, result: &str) {
        lock(&self.stats).count(cmd, result);
    }

    /// An exchange for the balance commands (not pinned; not repeated).
    async fn simple(
        &self,
        cmd: Command,
        req: &[u8],
        key: &str,
    ) -> Result<(String, usize), RatingError> {
        let i = self.preferred(key).ok_or_else(|| {
            self.count(cmd, "unreachable");
            RatingError::Unreachable("no rating engine is reachable".into())
        })?;
        let link = &self.links[i];
        // AddBalance is not repeated on a stale connection: it is not idempotent.
        let repeatable = cmd != Command::AddBalance;
        match link.exchange(cmd, req, repeatable).await {
            Ok(body) => Ok((body, i)),
            Err(f) => Err(self.failure(cmd, link, f, key)),
        }
    }

    /// Counts a failure and turns it into the core's error.
    fn failure(&self, cmd: Command, link: &Link, f: Failure, what: &str) -> RatingError {
        match f {
            Failure::NotSent { why, busy } => {
                self.count(cmd, if busy { "timeout" } else { "unreachable" });
                warn!("{} not sent to {}: {why} ({what})", cmd.as_str(), link.name);
                if busy {
                    RatingError::Timeout
                } else {
                    RatingError::Unreachable(format!("{}: {why}", link.name))
                }
            }
            Failure::NoAnswer { why, timeout } => {
                self.count(cmd, if timeout { "timeout" } else { "unreachable" });
                warn!(
                    "{} sent to {} got no answer: {why} ({what})",
                    cmd.as_str(),
                    link.name
                );
                // It may have taken effect: the core releases an
                // authorisation that timed out, so say so.
                RatingError::Timeout
            }
            Failure::Oversized => {
                self.count(cmd, "bad-reply");
                lock(&self.stats).bad_replies += 1;
                warn!("{} to {}: reply too long ({what})", cmd.as_str(), link.name);
                RatingError::BadReply("reply too long".into())
            }
        }
    }

    fn reply_error(&self, cmd: Command, e: ReplyError, link: &Link, what: &str) -> RatingError {
        match e {
            ReplyError::Engine(msg) => {
                self.count(cmd, "error");
                warn!(
                    "{} to {} answered error: {msg} ({what})",
                    cmd.as_str(),
                    link.name
                );
                RatingError::Engine(msg)
            }
            ReplyError::Unexpected(body) => {
                self.count(cmd, "bad-reply");
                lock(&self.stats).bad_replies += 1;
                warn!(
                    "{} to {} answered nonsense {body:?} ({what})",
                    cmd.as_str(),
                    link.name
                );
                RatingError::BadReply(body)
            }
        }
    }
}

/// The CDRTool rating engine client: a [`RatingBackend`] over one or more
/// engines. Create it inside a tokio runtime; dropping it stops its
/// reconnect tasks.
///
/// ```no_run
/// use std::sync::Arc;
/// use callcontrol_rating::cdrtool::{CdrtoolClient, CdrtoolConfig};
/// use callcontrol_core::rating::RatingBackend;
///
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let config = CdrtoolConfig::with_address("127.0.0.1:9024")?;
/// config.validate()?;
/// let rating: Arc<dyn RatingBackend> = Arc::new(CdrtoolClient::new(config)?);
/// println!("{:?}", rating.health());
/// # Ok(()) }
/// ```
pub struct CdrtoolClient {
    inner: Arc<Inner>,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for CdrtoolClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CdrtoolClient")
            .field("engines", &self.health())
            .finish()
    }
}

impl CdrtoolClient {
    /// Validates `config`, then starts connecting to every engine.
    pub fn new(config: CdrtoolConfig) -> Result<Self, Error> {
        config.validate()?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime)?;
        let stats = Arc::new(Mutex::new(CdrtoolStats::default()));
        let links: Vec<Arc<Link>> = config
            .address
            .iter()
            .map(|addr| {
                Arc::new(Link {
                    name: addr.to_string(),
                    addr: addr.clone(),
                    idle: Mutex::new(Vec::new()),
                    slots: Semaphore::new(config.pool_size),
                    state: Mutex::new(LinkState {
                        up: LinkUp::Connecting,
                        last_error: None,
                    }),
                    wake: Notify::new(),
                    timeout: config.timeout,
                    reconnect_min: config.reconnect_min,
                    reconnect_max: config.reconnect_max,
                    stats: stats.clone(),
                })
            })
            .collect();
        let tasks = links
            .iter()
            .map(|l| runtime.spawn(supervise(l.clone())))
            .collect();
        Ok(CdrtoolClient {
            inner: Arc::new(Inner {
                links,
                pins: Mutex::new(HashMap::new()),
                stats,
            }),
            tasks,
        })
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> CdrtoolStats {
        lock(&self.inner.stats).clone()
    }

    /// The last error of each engine that is not up, by address.
    pub fn last_errors(&self) -> Vec<(String, Option<String>)> {
        self.inner
            .links
            .iter()
            .map(|l| (l.name.clone(), lock(&l.state).last_error.clone()))
            .collect()
    }

    /// How many billing parties are pinned to an engine now.
    pub fn pinned_parties(&self) -> usize {
        lock(&self.inner.pins).len()
    }
}

impl Drop for CdrtoolClient {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn limit_result(a: &Authorisation) -> &'static str {
    match a.limit {
        RatedLimit::Seconds(0) => "no-credit",
        RatedLimit::Seconds(_) => "limit",
        RatedLimit::Unlimited => "unlimited",
        RatedLimit::Locked => "locked",
    }
}

impl CdrtoolClient {
    /// One `DebitBalance` on engine `index`.
    async fn debit_on(
        &self,
        index: usize,
        req: &DebitRequest,
    ) -> Result<DebitOutcome, RatingError> {
        let inner = &self.inner;
        let cmd = Command::DebitBalance;
        let link = &inner.links[index];
        let mut buf = Vec::with_capacity(256);
        codec::encode_debit_balance(req, &mut buf);
        if !link.is_down() {
            lock(&inner.stats).debits_sent += 1;
        }
        // Not repeated here: a repeated debit answers `Failed`, which would be
        // final. The engine core retries an `Err` after its backoff instead.
        let result = match link.exchange(cmd, &buf, false).await {
            Ok(body) => match codec::parse_debit_balance(&body) {
                Ok(outcome) => Ok(outcome),
                Err(e) => Err(inner.reply_error(cmd, e, link, req.call_id.as_str())),
            },
            Err(f) => Err(inner.failure(cmd, link, f, req.call_id.as_str())),
        };
        let mut st = lock(&inner.stats);
        match &result {
            Ok(o) => {
                let r = match o {
                    DebitOutcome::Debited { .. } => {
                        st.debits_ok += 1;
                        "ok"
                    }
                    DebitOutcome::Failed { .. } => {
                        st.debits_failed += 1;
                        "failed"
                    }
                    DebitOutcome::NotPrepaid => "not-prepaid",
                };
                st.count(cmd, r);
                drop(st);
                inner.unpin(&req.party, &req.call_id);
            }
            Err(e) => {
                st.debits_undelivered += 1;
                debug!(
                    "Debit of {} s for {} to be retried: {e} ({})",
                    req.duration, req.party, req.call_id
                );
            }
        }
        result
    }
}

#[async_trait]
impl RatingBackend for CdrtoolClient {
    async fn authorise(&self, req: &AuthoriseRequest) -> Result<Authorisation, RatingError> {
        let inner = &self.inner;
        let cmd = Command::MaxSessionTime;
        let (i, fresh) = match inner.pin_authorise(req) {
            Ok(p) => p,
            Err(e) => {
                inner.count(cmd, "unreachable");
                warn!(
                    "Cannot rate the call of {}: {e} ({})",
                    req.party, req.call_id
                );
                return Err(e);
            }
        };
        let link = &inner.links[i];
        let mut buf = Vec::with_capacity(256);
        codec::encode_max_session_time(req, &mut buf);
        // MaxSessionTime may be repeated: it records the same Call-ID again.
        let body = match link.exchange(cmd, &buf, true).await {
            Ok(body) => body,
            Err(f) => {
                if fresh && matches!(f, Failure::NotSent { .. }) {
                    inner.unpin(&req.party, &req.call_id);
                }
                return Err(inner.failure(cmd, link, f, req.call_id.as_str()));
            }
        };
        match codec::parse_max_session_time(&body) {
            Ok(a) => {
                inner.count(cmd, limit_result(&a));
                // `none` (postpaid) and `Locked` record no session in the
                // engine: nothing will be debited, so nothing to pin.
                if fresh && matches!(a.limit, RatedLimit::Unlimited | RatedLimit::Locked) {
                    inner.unpin(&req.party, &req.call_id);
                }
                debug!(
                    "MaxSessionTime for {} from {}: {:?} ({})",
                    req.party, link.name, a, req.call_id
                );
                Ok(a)
            }
            Err(e) => Err(inner.reply_error(cmd, e, link, req.call_id.as_str())),
        }
    }

    async fn debit(&self, req: &DebitRequest) -> Result<DebitOutcome, RatingError> {
        let pinned = lock(&self.inner.pins).contains_key(&req.party);
        let first = self.inner.debit_link(&req.party);
        let result = self.debit_on(first, req).await;
        if pinned
            || self.inner.links.len() < 2
            || !matches!(result, Ok(DebitOutcome::Failed { .. }))
        {
            return result;
        }
        // Not pinned (the daemon restarted since the call was authorised):
        // the call may have been authorised on another engine while this one
        // was down. An engine that does not know the Call-ID answers `Failed`
        // and charges nothing, so asking the others is safe; at most one of
        // them holds the session.
        let n = self.inner.links.len();
        let mut unreachable = None;
        for k in 1..n {
            let i = (first + k) % n;
            match self.debit_on(i, req).await {
                Ok(DebitOutcome::Failed { .. }) => {}
                Ok(other) => return Ok(other),
                Err(e) => unreachable = Some(e),
            }
        }
        match unreachable {
            // The engine that may hold the session is out of reach: retry
            // this debit on its own (the others need not wait for it).
            Some(e) => Err(RatingError::Engine(format!(
                "debit refused by the reachable engines, retrying for the others: {e}"
            ))),
            None => result,
        }
    }

    async fn balance(&self, account: &str) -> Result<Balance, RatingError> {
        let mut buf = Vec::new();
        codec::encode_get_balance(account, &mut buf)
            .map_err(|e| RatingError::Engine(e.to_string()))?;
        let acct = codec::account(account).map_err(|e| RatingError::Engine(e.to_string()))?;
        let cmd = Command::GetBalance;
        let (body, i) = self.inner.simple(cmd, &buf, &format!("sip:{acct}")).await?;
        match codec::parse_get_balance(&body) {
            Ok(balance) => {
                self.inner.count(cmd, "ok");
                Ok(Balance {
                    account: acct,
                    balance,
                })
            }
            Err(e) => Err(self.inner.reply_error(cmd, e, &self.inner.links[i], &acct)),
        }
    }

    async fn add_balance(&self, account: &str, amount: &str) -> Result<Balance, RatingError> {
        let mut buf = Vec::new();
        codec::encode_add_balance(account, amount, &mut buf)
            .map_err(|e| RatingError::Engine(e.to_string()))?;
        let acct = codec::account(account).map_err(|e| RatingError::Engine(e.to_string()))?;
        let cmd = Command::AddBalance;
        let (body, i) = self.inner.simple(cmd, &buf, &format!("sip:{acct}")).await?;
        match codec::parse_add_balance(&body) {
            Ok(Some(balance)) => {
                self.inner.count(cmd, "ok");
                info!("Added {amount} to the balance of {acct}: now {balance}");
                Ok(Balance {
                    account: acct,
                    balance,
                })
            }
            Ok(None) => {
                self.inner.count(cmd, "ok");
                info!("Added {amount} to the balance of {acct}");
                self.balance(&acct).await
            }
            Err(e) => Err(self.inner.reply_error(cmd, e, &self.inner.links[i], &acct)),
        }
    }

    async fn balance_history(&self, account: &str) -> Result<Vec<BalanceEntry>, RatingError> {
        let mut buf = Vec::new();
        codec::encode_get_balance_history(account, &mut buf)
            .map_err(|e| RatingError::Engine(e.to_string()))?;
        let acct = codec::account(account).map_err(|e| RatingError::Engine(e.to_string()))?;
        let cmd = Command::GetBalanceHistory;
        let (body, i) = self.inner.simple(cmd, &buf, &format!("sip:{acct}")).await?;
        match codec::parse_balance_history(&body) {
            Ok(h) => {
                self.inner.count(cmd, "ok");
                Ok(h)
            }
            Err(e) => Err(self.inner.reply_error(cmd, e, &self.inner.links[i], &acct)),
        }
    }

    fn health(&self) -> Vec<RatingHealth> {
        self.inner
            .links
            .iter()
            .map(|l| RatingHealth {
                address: l.name.clone(),
                connected: l.is_up(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets() {
        let mut h = LatencyHistogram::default();
        h.observe(Duration::from_micros(50));
        h.observe(Duration::from_micros(100));
        h.observe(Duration::from_micros(101));
        h.observe(Duration::from_secs(2));
        assert_eq!(h.counts[0], 2);
        assert_eq!(h.counts[1], 1);
        assert_eq!(*h.counts.last().unwrap(), 1);
        assert_eq!(h.count, 4);
    }

    #[test]
    fn the_hash_is_stable() {
        // Fixed values: a change would move parties to other engines after an upgrade.
        assert_eq!(
            stable_hash("sip:alice@example.com"),
            stable_hash("sip:alice@example.com")
        );
        assert_ne!(
            stable_hash("sip:alice@example.com"),
            stable_hash("sip:bob@example.com")
        );
    }
}
