//! A fake CDRTool rating engine (feature `test-kit`), faithful to
//! PROTOCOLS.md §5 so that tests and embedders can rely on it.
//!
//! - TCP on `127.0.0.1:0`; one task serves every connection, one `read()` at
//!   a time, like the real single-threaded engine. There is no framing: each
//!   read of at most 4096 bytes is one request, so two requests in one TCP
//!   segment merge into one bad request (repeated keys answer `0`) and a
//!   split request becomes two.
//! - Prepaid accounts with a balance, `max_sessions` (default 1) and
//!   per-destination rates (by prefix of the To user part; default 0.10 per
//!   minute). Unknown accounts are postpaid. Money is kept in units of
//!   0.0001 and written with four decimals, as CDRTool does.
//! - `MaxSessionTime` records the Call-ID among the account's active
//!   sessions and answers the shared limit: how long the balance lasts with
//!   all of them running (10.00 at 0.10/min → 6000 s; a second call 3 s later
//!   → 2998 s). `Locked` when the sessions, the asking one included, would
//!   exceed `max_sessions`. Sessions older than their limit + 120 s are purged
//!   by the next `MaxSessionTime` on the account.
//! - `DebitBalance` charges an active session once and removes it; a second
//!   debit of the Call-ID (or of a purged one) answers `Failed\n\n\n`, stray
//!   newline included. Every charge goes to a [`ledger`](FakeCdrtool::ledger).
//! - A non-numeric `Duration` crashes the engine, as observed.
//! - Scriptable [`Fault`]s (latency, silence, garbage, truncated replies,
//!   disconnects, a stuck engine, crashes) and [`stop`](FakeCdrtool::stop) /
//!   [`restart`](FakeCdrtool::restart) on the same port. Accounts, sessions and
//!   the ledger survive restarts (they live in the engine's database).
//!
//! `GetBalance` answers the balance (`10.0000`), `AddBalance` and
//! `DeleteBalance` answer `Ok`, `GetBalanceHistory` a JSON array of
//! `{date, action, description, value, balance}` objects: these formats are
//! this fake's assumption, not observed.
//!
//! # Time
//!
//! The fake reads the time from a core [`Clock`]. By default it is a
//! [`TokioClock`], which follows tokio's virtual time when the fake runs in
//! a paused test runtime. Tests that combine real sockets with long
//! durations should rather share a [`TestClock`] between the fake and the
//! engine and [`advance`](TestClock::advance) it: tokio's auto-advance moves
//! a paused clock whenever the runtime waits for socket I/O, which fires
//! request timeouts that real time would never reach.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use callcontrol_core::clock::{Clock, TokioClock};
use callcontrol_core::types::Timestamp;
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::cdrtool::codec::{decode_value, is_decimal};

/// A clock for tests: real time plus manual jumps. Share one between the
/// engine (as its `Clock`) and the fake, then [`advance`](Self::advance) it
/// to let hours pass in an instant.
#[derive(Debug, Clone)]
pub struct TestClock {
    base: Timestamp,
    origin: std::time::Instant,
    offset: Arc<AtomicU64>,
}

impl TestClock {
    /// Starts at 2024-01-01T00:00:00Z.
    pub fn new() -> Self {
        TestClock {
            base: Timestamp(1_704_067_200_000),
            origin: std::time::Instant::now(),
            offset: Arc::new(AtomicU64::new(0)),
        }
    }
    /// Jumps forward by `d` (every clone sees it).
    pub fn advance(&self, d: Duration) {
        self.offset
            .fetch_add(d.as_millis() as u64, Ordering::SeqCst);
    }
}

impl Default for TestClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for TestClock {
    fn now(&self) -> Timestamp {
        let real = self.origin.elapsed().as_millis() as u64;
        Timestamp(self.base.0 + real + self.offset.load(Ordering::SeqCst))
    }
}

/// Something the fake engine does to one request instead of (or besides)
/// answering it normally.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Process the request, then answer after this long. The engine serves
    /// nothing else meanwhile (it is single-threaded).
    Delay(Duration),
    /// Process the request (it takes effect) and never answer.
    Silence,
    /// Read the request and drop it: no effect, no answer.
    Ignore,
    /// Answer these bytes instead; the request has no effect.
    Garbage(Vec<u8>),
    /// Process the request, write only the first bytes of the reply, close.
    Truncate(usize),
    /// Process the request (it takes effect), then close without answering.
    Disconnect,
    /// A stuck engine: serve nothing at all until [`FakeCdrtool::release`],
    /// then process and answer this request.
    Hold,
    /// Crash before processing (the listener and every connection close).
    Crash,
}

/// One successful `DebitBalance`: what the engine charged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Charge {
    /// The `CallId` as the engine received it (percent-encoded by the client
    /// where needed).
    pub call_id: String,
    /// [`Charge::call_id`] with `%XX` escapes decoded.
    pub decoded_call_id: String,
    /// `user@domain`.
    pub account: String,
    /// The destination (`To`).
    pub to: String,
    /// Seconds charged.
    pub duration: u64,
    /// The price, four decimals.
    pub price: String,
    /// When.
    pub at: Timestamp,
}

#[derive(Debug, Clone)]
struct ActiveSession {
    call_id: String,
    started: Timestamp,
    limit: u64,
    rate: i64,
}

#[derive(Debug, Clone)]
struct Account {
    prepaid: bool,
    balance: i64,
    max_sessions: usize,
    sessions: Vec<ActiveSession>,
    history: Vec<serde_json::Value>,
}

impl Account {
    fn prepaid(balance: i64) -> Self {
        Account {
            prepaid: true,
            balance,
            max_sessions: 1,
            sessions: Vec::new(),
            history: Vec::new(),
        }
    }
}

struct State {
    accounts: HashMap<String, Account>,
    rates: Vec<(String, i64)>,
    default_rate: i64,
    ledger: Vec<Charge>,
    requests: Vec<String>,
    faults: VecDeque<(Option<String>, Fault)>,
    latency: Duration,
    connections: u64,
    timing: Option<Vec<Duration>>,
}

impl State {
    /// No accounts, the default rate (0.10/min), no faults.
    fn new() -> Self {
        State {
            accounts: HashMap::new(),
            rates: Vec::new(),
            default_rate: 1_000,
            ledger: Vec::new(),
            requests: Vec::new(),
            faults: VecDeque::new(),
            latency: Duration::ZERO,
            connections: 0,
            timing: None,
        }
    }
}

struct Shared {
    state: Mutex<State>,
    clock: Arc<dyn Clock>,
    release: Notify,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Money: a decimal string to units of 0.0001 (`None` if not a decimal).
pub fn parse_amount(s: &str) -> Option<i64> {
    let s = s.trim();
    if !is_decimal(s) {
        return None;
    }
    let neg = s.starts_with('-');
    let s = s.trim_start_matches('-');
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    let mut frac: String = frac.chars().take(4).collect();
    while frac.len() < 4 {
        frac.push('0');
    }
    let v = int
        .parse::<i64>()
        .ok()?
        .checked_mul(10_000)?
        .checked_add(frac.parse::<i64>().ok()?)?;
    Some(if neg { -v } else { v })
}

/// Money: units of 0.0001 to a four-decimal string.
pub fn format_amount(v: i64) -> String {
    let sign = if v < 0 { "-" } else { "" };
    let a = v.unsigned_abs();
    format!("{sign}{}.{:04}", a / 10_000, a % 10_000)
}

/// The fake rating engine. See the module docs.
pub struct FakeCdrtool {
    shared: Arc<Shared>,
    addr: SocketAddr,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for FakeCdrtool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeCdrtool")
            .field("addr", &self.addr)
            .finish()
    }
}

impl FakeCdrtool {
    /// Starts a fake engine on `127.0.0.1:0` whose time is tokio's.
    pub async fn start() -> std::io::Result<Self> {
        Self::start_with_clock(Arc::new(TokioClock::new())).await
    }

    /// Starts a fake engine reading the time from `clock`.
    pub async fn start_with_clock(clock: Arc<dyn Clock>) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State::new()),
            clock,
            release: Notify::new(),
        });
        let task = tokio::spawn(serve(shared.clone(), listener));
        Ok(FakeCdrtool {
            shared,
            addr,
            task: Mutex::new(Some(task)),
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `127.0.0.1:port`, for `[CDRTool] address`.
    pub fn address(&self) -> String {
        self.addr.to_string()
    }

    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        f(&mut lock(&self.shared.state))
    }

    /// Creates (or resets) a prepaid account `user@domain` with this balance
    /// (a decimal string) and `max_sessions` 1.
    ///
    /// # Panics
    /// When `balance` is not a decimal number (a test mistake).
    pub fn add_prepaid(&self, account: &str, balance: &str) {
        let b = parse_amount(balance).unwrap_or_else(|| panic!("bad balance {balance:?}"));
        self.with(|s| {
            s.accounts
                .insert(account.to_ascii_lowercase(), Account::prepaid(b))
        });
    }

    /// Makes `account` postpaid (unknown accounts are postpaid too).
    pub fn add_postpaid(&self, account: &str) {
        self.with(|s| {
            let mut a = Account::prepaid(0);
            a.prepaid = false;
            s.accounts.insert(account.to_ascii_lowercase(), a)
        });
    }

    /// Sets how many sessions the account may have at once.
    pub fn set_max_sessions(&self, account: &str, n: usize) {
        self.with(|s| {
            if let Some(a) = s.accounts.get_mut(&account.to_ascii_lowercase()) {
                a.max_sessions = n;
            }
        });
    }

    /// The price per minute (decimal string) of destinations whose number
    /// starts with `prefix` (longest prefix wins).
    ///
    /// # Panics
    /// When `per_minute` is not a decimal number.
    pub fn set_rate(&self, prefix: &str, per_minute: &str) {
        let r = parse_amount(per_minute).unwrap_or_else(|| panic!("bad rate {per_minute:?}"));
        self.with(|s| {
            s.rates.retain(|(p, _)| p != prefix);
            s.rates.push((prefix.to_string(), r));
            s.rates.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
        });
    }

    /// The price per minute of every other destination (default 0.10).
    ///
    /// # Panics
    /// When `per_minute` is not a decimal number.
    pub fn set_default_rate(&self, per_minute: &str) {
        let r = parse_amount(per_minute).unwrap_or_else(|| panic!("bad rate {per_minute:?}"));
        self.with(|s| s.default_rate = r);
    }

    /// The account's balance, four decimals (`None` if unknown).
    pub fn balance(&self, account: &str) -> Option<String> {
        self.with(|s| {
            s.accounts
                .get(&account.to_ascii_lowercase())
                .map(|a| format_amount(a.balance))
        })
    }

    /// The Call-IDs (as received) of the account's active sessions.
    pub fn active_sessions(&self, account: &str) -> Vec<String> {
        self.with(|s| {
            s.accounts
                .get(&account.to_ascii_lowercase())
                .map(|a| a.sessions.iter().map(|x| x.call_id.clone()).collect())
                .unwrap_or_default()
        })
    }

    /// Every successful `DebitBalance`, releases (`Duration=0`) included.
    pub fn ledger(&self) -> Vec<Charge> {
        self.with(|s| s.ledger.clone())
    }

    /// The charges of more than 0 seconds.
    pub fn charges(&self) -> Vec<Charge> {
        self.ledger()
            .into_iter()
            .filter(|c| c.duration > 0)
            .collect()
    }

    /// Every request read, as text, one entry per read.
    pub fn requests(&self) -> Vec<String> {
        self.with(|s| s.requests.clone())
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.with(|s| s.connections)
    }

    /// Applies `fault` to the next request.
    pub fn push_fault(&self, fault: Fault) {
        self.with(|s| s.faults.push_back((None, fault)));
    }

    /// Applies `fault` to the next request of this command (any case).
    pub fn push_fault_for(&self, command: &str, fault: Fault) {
        self.with(|s| {
            s.faults
                .push_back((Some(command.to_ascii_lowercase()), fault))
        });
    }

    /// Answers every request after this long (the engine blocks meanwhile).
    pub fn set_latency(&self, d: Duration) {
        self.with(|s| s.latency = d);
    }

    /// Ends a [`Fault::Hold`].
    pub fn release(&self) {
        self.shared.release.notify_one();
    }

    /// Records, per request, the time from its read to the end of the reply
    /// write (for benchmarks: the engine's own time).
    pub fn record_timing(&self, on: bool) {
        self.with(|s| s.timing = on.then(Vec::new));
    }

    /// The recorded per-request engine times, in order.
    pub fn timings(&self) -> Vec<Duration> {
        self.with(|s| s.timing.clone().unwrap_or_default())
    }

    /// Whether the engine is serving.
    pub fn is_running(&self) -> bool {
        self.task
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .is_some_and(|t| !t.is_finished())
    }

    /// Crashes the engine: the listener and every connection close at once.
    /// The database (accounts, sessions, ledger) stays.
    pub async fn stop(&self) {
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = task {
            t.abort();
            let _ = t.await;
        }
    }

    /// Starts the engine again on the same port (stopping it first if needed).
    pub async fn restart(&self) -> std::io::Result<()> {
        self.stop().await;
        let listener = TcpListener::bind(self.addr).await?;
        let task = tokio::spawn(serve(self.shared.clone(), listener));
        *self.task.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
        Ok(())
    }
}

impl Drop for FakeCdrtool {
    fn drop(&mut self) {
        if let Some(t) = self.task.lock().unwrap_or_else(|e| e.into_inner()).take() {
            t.abort();
        }
    }
}

enum Event {
    Accept(TcpStream),
    Data(usize, usize),
    Closed(usize),
}

/// Waits for the next connection or the next read on any connection, round
/// robin: the one loop of a single-threaded server.
fn poll_next(
    cx: &mut Context<'_>,
    listener: &TcpListener,
    conns: &[TcpStream],
    next: &mut usize,
    buf: &mut [u8],
) -> Poll<Event> {
    if let Poll::Ready(Ok((s, _))) = listener.poll_accept(cx) {
        return Poll::Ready(Event::Accept(s));
    }
    let n = conns.len();
    for k in 0..n {
        let i = (*next + k) % n;
        loop {
            match conns[i].poll_read_ready(cx) {
                Poll::Ready(Ok(())) => match conns[i].try_read(buf) {
                    Ok(0) => return Poll::Ready(Event::Closed(i)),
                    Ok(m) => {
                        *next = i + 1;
                        return Poll::Ready(Event::Data(i, m));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                    Err(_) => return Poll::Ready(Event::Closed(i)),
                },
                Poll::Ready(Err(_)) => return Poll::Ready(Event::Closed(i)),
                Poll::Pending => break,
            }
        }
    }
    Poll::Pending
}

/// What to do after a request.
enum Action {
    Reply(Vec<u8>),
    Nothing,
    Close,
    ReplyAndClose(Vec<u8>),
    Crash,
}

async fn serve(shared: Arc<Shared>, listener: TcpListener) {
    let mut conns: Vec<TcpStream> = Vec::new();
    let mut next = 0usize;
    // The engine reads at most 4096 bytes and takes them as one request.
    let mut buf = vec![0u8; 4096];
    loop {
        let ev =
            std::future::poll_fn(|cx| poll_next(cx, &listener, &conns, &mut next, &mut buf)).await;
        let (i, n) = match ev {
            Event::Accept(s) => {
                let _ = s.set_nodelay(true);
                lock(&shared.state).connections += 1;
                conns.push(s);
                continue;
            }
            Event::Closed(i) => {
                conns.remove(i);
                continue;
            }
            Event::Data(i, n) => (i, n),
        };
        let started = std::time::Instant::now();
        let raw = buf[..n].to_vec();
        let action = handle(&shared, &raw).await;
        let mut close = false;
        match action {
            Action::Reply(r) => close = conns[i].write_all(&r).await.is_err(),
            Action::ReplyAndClose(r) => {
                let _ = conns[i].write_all(&r).await;
                close = true;
            }
            Action::Nothing => {}
            Action::Close => close = true,
            Action::Crash => return,
        }
        if close {
            conns.remove(i);
        }
        if let Some(t) = lock(&shared.state).timing.as_mut() {
            t.push(started.elapsed());
        }
    }
}

async fn handle(shared: &Shared, raw: &[u8]) -> Action {
    let text = String::from_utf8_lossy(raw).into_owned();
    let command = text
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_ascii_lowercase();
    let (fault, latency) = {
        let mut s = lock(&shared.state);
        s.requests.push(text.trim_end().to_string());
        let pos = s
            .faults
            .iter()
            .position(|(c, _)| c.as_ref().is_none_or(|c| *c == command));
        (
            pos.and_then(|p| s.faults.remove(p)).map(|(_, f)| f),
            s.latency,
        )
    };
    let run = |shared: &Shared| process(&mut lock(&shared.state), shared.clock.now(), &text);
    match fault {
        None => {
            let a = run(shared);
            if !latency.is_zero() {
                tokio::time::sleep(latency).await;
            }
            a
        }
        Some(Fault::Delay(d)) => {
            let a = run(shared);
            tokio::time::sleep(d).await;
            a
        }
        Some(Fault::Silence) => match run(shared) {
            Action::Crash => Action::Crash,
            _ => Action::Nothing,
        },
        Some(Fault::Ignore) => Action::Nothing,
        Some(Fault::Garbage(g)) => Action::Reply(g),
        Some(Fault::Truncate(k)) => match run(shared) {
            Action::Reply(r) => Action::ReplyAndClose(r[..k.min(r.len())].to_vec()),
            other => other,
        },
        Some(Fault::Disconnect) => match run(shared) {
            Action::Crash => Action::Crash,
            _ => Action::Close,
        },
        Some(Fault::Hold) => {
            shared.release.notified().await;
            run(shared)
        }
        Some(Fault::Crash) => Action::Crash,
    }
}

fn reply(s: impl Into<String>) -> Action {
    Action::Reply(s.into().into_bytes())
}

/// The engine's handling of one read, without I/O.
fn process(st: &mut State, now: Timestamp, text: &str) -> Action {
    let mut tokens = text.split_whitespace();
    let Some(command) = tokens.next() else {
        return Action::Nothing;
    };
    let command = command.to_ascii_lowercase();
    let mut p: HashMap<String, String> = HashMap::new();
    for t in tokens {
        let mut parts = t.split('=');
        let key = parts.next().unwrap_or("").to_ascii_lowercase();
        // A token without `=` is ignored; anything after a second `=` is dropped.
        let Some(value) = parts.next() else { continue };
        let value = if key == "callid" {
            value.to_string()
        } else {
            value.to_ascii_lowercase()
        };
        if p.insert(key, value).is_some() {
            return reply("0\n\n");
        }
    }
    // A non-numeric Duration kills the engine (observed).
    let duration = match p.get("duration") {
        Some(d) if !is_decimal(d) => return Action::Crash,
        Some(d) => Some(
            d.split('.')
                .next()
                .and_then(|i| i.parse::<i64>().ok())
                .unwrap_or(0)
                .max(0) as u64,
        ),
        None => None,
    };
    let account = |key: &str| {
        p.get(key)
            .map(|f| f.strip_prefix("sip:").unwrap_or(f).to_string())
    };
    match command.as_str() {
        "maxsessiontime" => {
            let (Some(call_id), Some(acct), Some(to)) =
                (p.get("callid"), account("from"), p.get("to"))
            else {
                return reply("Error: Missing CallId, From or To parameter\n\n");
            };
            let rate = rate_for(st, to);
            let Some(a) = st.accounts.get_mut(&acct).filter(|a| a.prepaid) else {
                return reply("none\ntype=postpaid\n\n");
            };
            // Purge sessions older than their limit + 120 s.
            a.sessions
                .retain(|s| now.0 < s.started.plus_secs(s.limit + 120).0);
            if !a.sessions.iter().any(|s| s.call_id == *call_id) {
                if a.sessions.len() + 1 > a.max_sessions {
                    return reply("Locked\ntype=prepaid\n\n");
                }
                a.sessions.push(ActiveSession {
                    call_id: call_id.clone(),
                    started: now,
                    limit: 0,
                    rate,
                });
            }
            let mut limit = shared_limit(a, now);
            if let Some(cap) = duration.filter(|d| *d > 0) {
                limit = limit.min(cap);
            }
            if let Some(s) = a.sessions.iter_mut().find(|s| s.call_id == *call_id) {
                s.limit = limit;
            }
            reply(format!("{limit}\ntype=prepaid\n\n"))
        }
        "debitbalance" => {
            let (Some(call_id), Some(acct), Some(duration)) =
                (p.get("callid"), account("from"), duration)
            else {
                return reply("Error: Missing CallId, From or Duration parameter\n\n");
            };
            let Some(a) = st.accounts.get_mut(&acct).filter(|a| a.prepaid) else {
                return reply("Not prepaid\n\n");
            };
            let Some(pos) = a.sessions.iter().position(|s| s.call_id == *call_id) else {
                return reply("Failed\n\n\n");
            };
            let session = a.sessions.remove(pos);
            let price = (i128::from(session.rate) * i128::from(duration) + 30) / 60;
            let price = i64::try_from(price).unwrap_or(i64::MAX);
            a.balance -= price;
            let left = if a.sessions.is_empty() {
                0
            } else {
                shared_limit(a, now)
            };
            a.history.push(json!({
                "date": now.0, "action": "Debit balance",
                "description": format!("Session {call_id} for {duration} s"),
                "value": format_amount(-price), "balance": format_amount(a.balance),
            }));
            st.ledger.push(Charge {
                call_id: call_id.clone(),
                decoded_call_id: decode_value(call_id),
                account: acct,
                to: p.get("to").cloned().unwrap_or_default(),
                duration,
                price: format_amount(price),
                at: now,
            });
            let price = format_amount(price);
            if duration == 0 {
                reply(format!("Ok\nMaxSessionTime={left}\n{price}\n\n"))
            } else {
                reply(format!(
                    "Ok\nMaxSessionTime={left}\n{price}\n    Duration: {duration} s\n         App: audio\n        Rate: {} / 60 s\n       Price: {price}\n\n",
                    format_amount(session.rate)
                ))
            }
        }
        "getbalance" => match account("from").and_then(|a| st.accounts.get(&a)) {
            Some(a) => reply(format!("{}\n\n", format_amount(a.balance))),
            None => reply("Error: account not found\n\n"),
        },
        "addbalance" => {
            let (Some(acct), Some(v)) = (
                account("from"),
                p.get("value").and_then(|v| parse_amount(v)),
            ) else {
                return reply("Error: Missing From or Value parameter\n\n");
            };
            let a = st
                .accounts
                .entry(acct)
                .or_insert_with(|| Account::prepaid(0));
            a.balance += v;
            let entry = json!({
                "date": now.0, "action": "Add balance", "description": "AddBalance",
                "value": format_amount(v), "balance": format_amount(a.balance),
            });
            a.history.push(entry);
            reply("Ok\n\n")
        }
        "deletebalance" => match account("from").and_then(|a| st.accounts.get_mut(&a)) {
            Some(a) => {
                a.balance = 0;
                reply("Ok\n\n")
            }
            None => reply("Error: account not found\n\n"),
        },
        "getbalancehistory" => match account("from").and_then(|a| st.accounts.get(&a)) {
            Some(a) => reply(format!(
                "{}\n\n",
                serde_json::Value::Array(a.history.clone())
            )),
            None => reply("[]\n\n"),
        },
        "dumpprepaidsessions" => {
            let a = account("account").and_then(|a| st.accounts.get(&a));
            let v: Vec<serde_json::Value> = a
                .map(|a| {
                    a.sessions
                        .iter()
                        .map(|s| json!({"callid": s.call_id, "start": s.started.0, "limit": s.limit}))
                        .collect()
                })
                .unwrap_or_default();
            reply(format!("{}\n\n", serde_json::Value::Array(v)))
        }
        "showprice" => {
            let rate = p.get("to").map_or(st.default_rate, |to| rate_for(st, to));
            let d = duration.unwrap_or(0);
            reply(format!(
                "{}\n\n",
                format_amount(((i128::from(rate) * i128::from(d) + 30) / 60) as i64)
            ))
        }
        "keepalive" => reply("1\n\n"),
        "version" => reply("CDRTool fake rating engine 10.0.0\n\n"),
        "help" => reply(
            "Commands: MaxSessionTime DebitBalance GetBalance AddBalance DeleteBalance \
             GetBalanceHistory DumpPrepaidSessions ShowPrice KeepAlive Version Help \
             ReloadRatingTables Quit\n\n",
        ),
        "reloadratingtables" => reply("Ok\n\n"),
        "exit" | "quit" => Action::Close,
        _ => reply("0\n\n"),
    }
}

/// The rate of a destination: longest configured prefix of its number.
fn rate_for(st: &State, to: &str) -> i64 {
    let to = to
        .strip_prefix("sip:")
        .or_else(|| to.strip_prefix("sips:"))
        .unwrap_or(to);
    let number = to.split('@').next().unwrap_or(to);
    st.rates
        .iter()
        .find(|(p, _)| number.starts_with(p.as_str()))
        .map_or(st.default_rate, |(_, r)| *r)
}

/// How long the balance lasts with all the account's sessions running:
/// what is left after the time they already ran, at the sum of their rates.
fn shared_limit(a: &Account, now: Timestamp) -> u64 {
    let rates: i128 = a.sessions.iter().map(|s| i128::from(s.rate)).sum();
    // Units × 60, so per-second costs stay whole numbers.
    let spent: i128 = a
        .sessions
        .iter()
        .map(|s| i128::from(s.rate) * i128::from(now.secs_since(s.started)))
        .sum();
    let left = i128::from(a.balance) * 60 - spent;
    if rates == 0 {
        return 36_000;
    }
    if left <= 0 {
        return 0;
    }
    u64::try_from(left / rates).unwrap_or(u64::MAX)
}

/// Types `reply` as the answer to every CDRTool command (each parser of
/// [`crate::cdrtool::codec`], and the value decoder), for fuzz targets and
/// property tests: whatever a rating engine sends, none of them may panic.
pub fn parse_as_every_reply(reply: &str) {
    use crate::cdrtool::codec::{
        decode_value, parse_add_balance, parse_balance_history, parse_debit_balance,
        parse_get_balance, parse_keepalive, parse_max_session_time,
    };
    let _ = parse_max_session_time(reply);
    let _ = parse_debit_balance(reply);
    let _ = parse_get_balance(reply);
    let _ = parse_add_balance(reply);
    let _ = parse_balance_history(reply);
    let _ = parse_keepalive(reply);
    let _ = decode_value(reply);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> State {
        State::new()
    }

    fn text(a: Action) -> String {
        match a {
            Action::Reply(r) => String::from_utf8(r).unwrap(),
            _ => panic!("no reply"),
        }
    }

    const T0: Timestamp = Timestamp(1_000_000);

    fn mst(call: &str) -> String {
        format!("MaxSessionTime CallId={call} From=sip:alice@example.com To=sip:0031201234567@example.com Gateway=127.0.0.1 Duration=36000 Application=audio")
    }
    fn debit(call: &str, d: u64) -> String {
        format!("DebitBalance CallId={call} From=sip:alice@example.com To=sip:0031201234567@example.com Gateway=127.0.0.1 Duration={d} Application=audio")
    }

    #[test]
    fn amounts() {
        assert_eq!(parse_amount("10.00"), Some(100_000));
        assert_eq!(parse_amount("0.1"), Some(1_000));
        assert_eq!(parse_amount("-1.23456"), Some(-12_345));
        assert_eq!(format_amount(100_000), "10.0000");
        assert_eq!(format_amount(-5), "-0.0005");
    }

    #[test]
    fn the_observed_shared_limits() {
        let mut st = state();
        let mut a = Account::prepaid(100_000);
        a.max_sessions = 2;
        st.accounts.insert("alice@example.com".into(), a);
        assert_eq!(
            text(process(&mut st, T0, &mst("b1@h"))),
            "6000\ntype=prepaid\n\n"
        );
        assert_eq!(
            text(process(&mut st, T0.plus_secs(3), &mst("b2@h"))),
            "2998\ntype=prepaid\n\n"
        );
        // A third call is locked (the count includes the asking Call-ID).
        assert_eq!(
            text(process(&mut st, T0.plus_secs(4), &mst("b3@h"))),
            "Locked\ntype=prepaid\n\n"
        );
        let r = text(process(&mut st, T0.plus_secs(60), &debit("b1@h", 60)));
        assert!(r.starts_with("Ok\nMaxSessionTime="), "{r}");
        assert!(r.contains("\n0.1000\n") && r.ends_with("\n\n"), "{r}");
        // Idempotent by Call-ID, with the stray newline.
        assert_eq!(
            text(process(&mut st, T0.plus_secs(61), &debit("b1@h", 60))),
            "Failed\n\n\n"
        );
        assert_eq!(st.ledger.len(), 1);
        let r = text(process(&mut st, T0.plus_secs(61), &debit("b2@h", 0)));
        assert_eq!(r, "Ok\nMaxSessionTime=0\n0.0000\n\n");
    }

    #[test]
    fn quirks_of_the_request_parser() {
        let mut st = state();
        st.accounts
            .insert("alice@example.com".into(), Account::prepaid(100_000));
        // Two requests merged in one read: repeated keys answer 0.
        let merged = format!("{}\n{}", mst("a"), mst("b"));
        assert_eq!(text(process(&mut st, T0, &merged)), "0\n\n");
        assert_eq!(text(process(&mut st, T0, "Bogus X=1")), "0\n\n");
        assert!(text(process(&mut st, T0, "MaxSessionTime CallId=x")).starts_with("Error:"));
        // Unknown account: postpaid.
        let r = mst("c").replace("alice", "bob");
        assert_eq!(text(process(&mut st, T0, &r)), "none\ntype=postpaid\n\n");
        // Values are lower-cased except CallId; a second `=` truncates.
        assert_eq!(
            text(process(&mut st, T0, &mst("X=Y"))),
            "6000\ntype=prepaid\n\n"
        );
        assert_eq!(st.accounts["alice@example.com"].sessions[0].call_id, "X");
        assert!(matches!(
            process(
                &mut st,
                T0,
                &debit("X", 1).replace("Duration=1", "Duration=abc")
            ),
            Action::Crash
        ));
    }

    #[test]
    fn stale_sessions_are_purged_by_the_next_max_session_time() {
        let mut st = state();
        let mut a = Account::prepaid(100_000);
        a.max_sessions = 2;
        st.accounts.insert("alice@example.com".into(), a);
        assert_eq!(
            text(process(&mut st, T0, &mst("old"))),
            "6000\ntype=prepaid\n\n"
        );
        process(&mut st, T0.plus_secs(6000 + 121), &mst("new"));
        assert_eq!(
            text(process(&mut st, T0.plus_secs(6200), &debit("old", 6000))),
            "Failed\n\n\n"
        );
    }
}
