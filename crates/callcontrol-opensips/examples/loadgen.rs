//! Load generator: N emulated OpenSIPS workers against a `call_control`
//! socket, reporting calls/s (init + start + stop), per-request latency
//! percentiles, the server's CPU time per call and the load generator's own
//! CPU time per call (client and server share the machine's cores).
//!
//! ```text
//! # In-process daemon (engine + server, fixed 3600 s limit) and a stateless
//! # echo responder, each in a child process of its own so its CPU is measured:
//! cargo run --release -p callcontrol-opensips --example loadgen
//! # Against a running daemon (CPU from /proc/<pid>/stat):
//! cargo run --release -p callcontrol-opensips --example loadgen -- \
//!     --socket /run/callcontrol/socket --pid $(pidof call-control)
//! ```
//! Options: `--connections 8,32`, `--duration 3` (seconds per run),
//! `--runs 3` (the median is reported), `--prefill 100000` (sessions in
//! progress before the last measurement; 0 to skip), `--no-echo`,
//! `--server-threads N` (tokio workers of the spawned daemon; 1 = a
//! current-thread runtime), `--echo-threads N` (the same for the echo
//! responder; default 1, its best setting on a 2-core machine),
//! `--client-threads N`, `--engine-only` (the engine and driver alone
//! through the handle, no sockets), and `--series FILE`: every reply of the
//! last run measured, one line each (`<µs since the run started> <latency
//! µs> <1 for an init>`), after a `# CLOCK_MONOTONIC <s>` line giving the
//! run's start on the clock `perf record -k CLOCK_MONOTONIC` uses, so that
//! the slow replies can be lined up with a `perf sched` trace.
//!
//! Every line also gives `steal`: the share of the machine's CPU time the
//! hypervisor gave to other guests during the runs (`/proc/stat`; the
//! median of the runs). On a shared virtual machine it is what makes runs
//! of the same build differ by 2x. `--max-steal P` repeats a run during
//! which steal exceeded P% (at most `4 × --runs` attempts in all) and says
//! how many were set aside, for figures taken while the host was quiet.
//!
//! Each worker owns one connection and is strictly request → reply, as an
//! OpenSIPS worker: a blocking `send`, then `poll(POLLIN)` and `recv`. So
//! the client's sockets are registered for read readiness only (never
//! `EPOLLOUT`, whose wake-ups on every `recv` of the server would cost both
//! sides), requests are written directly and built without allocating
//! (byte for byte what `codec::write_request` writes: checked at start-up
//! and by `cargo test -p callcontrol-opensips --example loadgen`).
//! Worker `k` sends the `init` of its own calls, the `start` of worker
//! `k+1`'s calls and the `stop` of worker `k+2`'s, so each call's three
//! requests arrive on three different connections, as with OpenSIPS. A
//! worker sends the step of the call furthest along first, has at most
//! [`WINDOW`] calls of its own in progress, and with nothing to send sleeps
//! until a neighbour makes progress (no busy waiting).
//!
//! The echo responder is the baseline: the same decoder as the daemon,
//! connections registered for read readiness only, direct writes, and no
//! state.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use callcontrol_core::prelude::*;
use callcontrol_opensips::codec::{encode_request, write_request, Decoder};
use callcontrol_opensips::server::{bind_socket, serve, ServerConfig};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::net::UnixListener;
use tokio::sync::Notify;

/// Calls of its own a worker may have in progress (inited, not yet
/// stopped): a bound on the sessions the load leaves in progress, wide
/// enough that workers next to never wait for it.
const WINDOW: u64 = 32;

/// The echo responder's runtime: 1 = current-thread, its best figures on a
/// 2-core machine shared with the client (no cross-thread wake-ups).
const ECHO_THREADS: usize = 1;

struct Args {
    socket: Option<PathBuf>,
    pid: Option<u32>,
    connections: Vec<usize>,
    duration: Duration,
    runs: usize,
    prefill: usize,
    echo: bool,
    client_threads: usize,
    server_threads: usize,
    echo_threads: usize,
    series: Option<PathBuf>,
    max_steal: Option<f64>,
}

/// `--serve`/`--serve-echo` mode: socket path, echo or not, threads.
type ServeMode = Option<(PathBuf, bool)>;

fn parse_args() -> Result<(ServeMode, Args), String> {
    let mut a = Args {
        socket: None,
        pid: None,
        connections: vec![8, 32],
        duration: Duration::from_secs(3),
        runs: 3,
        prefill: 100_000,
        echo: true,
        client_threads: 1,
        server_threads: 2,
        echo_threads: ECHO_THREADS,
        series: None,
        max_steal: None,
    };
    let mut serve = None;
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut val = || it.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--serve" => serve = Some((PathBuf::from(val()?), false)),
            "--serve-echo" => serve = Some((PathBuf::from(val()?), true)),
            "--server-threads" => a.server_threads = val()?.parse().map_err(|e| format!("{e}"))?,
            "--echo-threads" => a.echo_threads = val()?.parse().map_err(|e| format!("{e}"))?,
            "--client-threads" => a.client_threads = val()?.parse().map_err(|e| format!("{e}"))?,
            "--socket" => a.socket = Some(PathBuf::from(val()?)),
            "--pid" => a.pid = Some(val()?.parse().map_err(|e| format!("--pid: {e}"))?),
            "--connections" => {
                a.connections = val()?
                    .split(',')
                    .map(|s| s.trim().parse().map_err(|e| format!("--connections: {e}")))
                    .collect::<Result<_, _>>()?
            }
            "--duration" => {
                a.duration = Duration::from_secs_f64(val()?.parse().map_err(|e| format!("{e}"))?)
            }
            "--runs" => a.runs = val()?.parse().map_err(|e| format!("--runs: {e}"))?,
            "--prefill" => a.prefill = val()?.parse().map_err(|e| format!("--prefill: {e}"))?,
            "--no-echo" => a.echo = false,
            "--series" => a.series = Some(PathBuf::from(val()?)),
            "--max-steal" => {
                a.max_steal = Some(val()?.parse().map_err(|e| format!("--max-steal: {e}"))?)
            }
            "--engine-only" => {
                runtime(1).block_on(engine_only());
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if a.connections.contains(&0) {
        return Err("--connections: at least 1".into());
    }
    if a.runs == 0 {
        return Err("--runs: at least 1".into());
    }
    Ok((serve, a))
}

fn main() {
    let (serve_mode, args) = match parse_args() {
        Ok(x) => x,
        Err(e) => {
            eprintln!("loadgen: {e}");
            std::process::exit(2);
        }
    };
    if let Some((path, echo)) = serve_mode {
        let threads = if echo {
            args.echo_threads
        } else {
            args.server_threads
        };
        return run_server(&path, echo, threads);
    }
    runtime(args.client_threads).block_on(bench(args));
}

// ---- the servers (child processes) ------------------------------------------

/// A runtime with `threads` workers; 0 or 1: a current-thread runtime.
fn runtime(threads: usize) -> tokio::runtime::Runtime {
    let mut b = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    };
    b.enable_all().build().expect("runtime")
}

fn run_server(path: &Path, echo: bool, threads: usize) {
    runtime(threads).block_on(async {
        let listener = bind_socket(path, None).expect("bind");
        if echo {
            return echo_server(listener).await;
        }
        let shutdown = CancellationToken::new();
        let running = fixed_limit_engine(shutdown.clone());
        serve(listener, running.handle, ServerConfig::default(), shutdown)
            .await
            .expect("serve");
    });
}

/// The in-process engine: a fixed 3600 s limit, state in memory.
fn fixed_limit_engine(shutdown: CancellationToken) -> Running {
    driver::spawn(
        Parts {
            config: EngineConfig {
                limit: Some(3600),
                ..Default::default()
            },
            rating: Arc::new(NoRating),
            signalling: Arc::new(LogSignalling),
            store: Box::new(MemoryStore::new()),
            clock: Arc::new(TokioClock::new()),
        },
        shutdown,
    )
    .expect("engine")
}

/// The baseline: answers every request with the right reply string, keeps
/// no state. Same decoder as the real server; read readiness only, and the
/// replies to what one read brought written with one direct `write`.
async fn echo_server(listener: UnixListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let _ = echo_connection(stream).await;
        });
    }
}

async fn echo_connection(stream: tokio::net::UnixStream) -> io::Result<()> {
    let fd = read_only(stream.into_std()?)?;
    let mut d = Decoder::new();
    let mut out = Vec::with_capacity(256);
    let mut chunk = [0u8; 4096];
    loop {
        while let Some(r) = d.decode() {
            out.extend_from_slice(match r {
                Ok(Request::Init(_)) => b"Limited\r\n",
                Ok(_) => b"Ok\r\n",
                Err(_) => b"Error\r\n",
            });
        }
        if !out.is_empty() {
            send_all(fd.get_ref(), &out).await?;
            out.clear();
        }
        match recv(&fd, &mut chunk).await? {
            0 => return Ok(()),
            n => d.feed(&chunk[..n]),
        }
    }
}

// ---- socket I/O as an OpenSIPS worker does it ---------------------------------

/// Registers `stream` (made non-blocking) with the runtime for read
/// readiness only.
///
/// `with_interest` is deprecated in favour of the `unsafe`
/// `register_with_interest`, whose contract (the descriptor stays open and
/// the same while registered) an owned `UnixStream` upholds by itself.
#[allow(deprecated)]
fn read_only(stream: StdUnixStream) -> io::Result<AsyncFd<StdUnixStream>> {
    stream.set_nonblocking(true)?;
    AsyncFd::with_interest(stream, Interest::READABLE)
}

/// Writes all of `buf` with direct `write`s. The socket is not registered
/// for write readiness: a full send buffer (never seen with requests and
/// replies this small) is waited out with short sleeps.
async fn send_all(mut stream: &StdUnixStream, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        match stream.write(buf) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                tokio::time::sleep(Duration::from_micros(50)).await
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// One `recv` once the socket is readable; 0 at end of stream. A short read
/// drained the socket, so its readiness is cleared at once: the next call
/// waits for the next reply instead of paying for a `recv` that would block.
async fn recv(fd: &AsyncFd<StdUnixStream>, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        let mut guard = fd.readable().await?;
        match guard.try_io(|s| {
            let mut r = s.get_ref();
            r.read(buf)
        }) {
            Ok(Ok(n)) => {
                if n > 0 && n < buf.len() {
                    guard.clear_ready();
                }
                return Ok(n);
            }
            Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
            Ok(Err(e)) => return Err(e),
            Err(_would_block) => {}
        }
    }
}

/// The engine and driver alone, without sockets: 8 tasks calling the
/// handle directly, one call (init + start + stop) after the other.
async fn engine_only() {
    let running = fixed_limit_engine(CancellationToken::new());
    let t0 = Instant::now();
    let cpu0 = cpu_of(std::process::id());
    let per_task = 50_000u64;
    let mut tasks = Vec::new();
    for k in 0..8 {
        let h = running.handle.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..per_task {
                let Request::Init(init) = init_req("e", k, i) else {
                    unreachable!()
                };
                let call_id = init.call_id.clone();
                h.init(init).await.expect("init");
                h.start(StartRequest {
                    call_id: call_id.clone(),
                    dialog_id: None,
                })
                .await
                .expect("start");
                h.stop(call_id).await.expect("stop");
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let calls = 8 * per_task;
    let cpu = cpu_of(std::process::id())
        .zip(cpu0)
        .map(|(b, a)| b.saturating_sub(a));
    println!(
        "engine only: {:.0} calls/s, {:.1} µs CPU per call",
        calls as f64 / t0.elapsed().as_secs_f64(),
        cpu.map_or(0.0, |c| c.as_secs_f64() * 1e6 / calls as f64)
    );
}

// ---- the client -------------------------------------------------------------

/// One emulated OpenSIPS worker's connection.
struct Conn {
    fd: AsyncFd<StdUnixStream>,
    /// The reply being received (one short line).
    reply: [u8; 64],
}

impl Conn {
    async fn connect(path: &Path) -> io::Result<Conn> {
        let stream = tokio::net::UnixStream::connect(path).await?.into_std()?;
        Ok(Conn {
            fd: read_only(stream)?,
            reply: [0; 64],
        })
    }

    /// Sends `request`, reads one reply line; returns whether it was `expected`.
    async fn call(&mut self, request: &[u8], expected: &[u8]) -> io::Result<bool> {
        send_all(self.fd.get_ref(), request).await?;
        let mut len = 0;
        loop {
            if len == self.reply.len() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "reply line too long",
                ));
            }
            match recv(&self.fd, &mut self.reply[len..]).await? {
                0 => return Err(io::ErrorKind::UnexpectedEof.into()),
                n => len += n,
            }
            if self.reply[..len].ends_with(b"\n") {
                return Ok(&self.reply[..len] == expected);
            }
        }
    }
}

/// The host part of every Call-ID: `{prefix}-{worker}-{n}@127.0.0.1`.
const CALL_ID_HOST: &[u8] = b"@127.0.0.1";

/// The requests of one worker, built without allocating into a reused
/// buffer: byte for byte what [`write_request`] writes for [`init_req`] and
/// the matching `start` and `stop` (see [`check_wire_format`]).
struct Requests {
    /// The `init` up to its Call-ID, and from the end of the Call-ID on
    /// (the `from` names the worker).
    init_head: Vec<u8>,
    init_tail: Vec<u8>,
    /// Call-ID stems `{prefix}-{worker}-` of the calls this worker inits,
    /// starts and stops.
    init_stem: Vec<u8>,
    start_stem: Vec<u8>,
    stop_stem: Vec<u8>,
    /// The worker whose calls this worker starts (its dialog ids' `h_entry`).
    start_of: u32,
    out: Vec<u8>,
}

impl Requests {
    fn new(prefix: &str, worker: usize, start_of: usize, stop_of: usize) -> Requests {
        // The init template, from write_request itself, split at the Call-ID.
        const MARK: &str = "\u{1}call-id\u{1}";
        let mut template = Vec::new();
        write_request(&Request::Init(init_req_with(MARK, worker)), &mut template);
        let at = template
            .windows(MARK.len())
            .position(|w| w == MARK.as_bytes())
            .expect("the Call-ID is in the init request");
        let stem = |w: usize| format!("{prefix}-{w}-").into_bytes();
        Requests {
            init_head: template[..at].to_vec(),
            init_tail: template[at + MARK.len()..].to_vec(),
            init_stem: stem(worker),
            start_stem: stem(start_of),
            stop_stem: stem(stop_of),
            start_of: start_of as u32,
            out: Vec::with_capacity(template.len() + 64),
        }
    }

    /// The `init` of this worker's call `i`.
    fn init(&mut self, i: u64) -> &[u8] {
        self.out.clear();
        self.out.extend_from_slice(&self.init_head);
        push_call_id(&mut self.out, &self.init_stem, i);
        self.out.extend_from_slice(&self.init_tail);
        &self.out
    }

    /// The `start` of call `i` of worker `start_of`, with dialog id
    /// `start_of:i`.
    fn start(&mut self, i: u64) -> &[u8] {
        self.out.clear();
        self.out.extend_from_slice(b"start\r\ncallid: ");
        push_call_id(&mut self.out, &self.start_stem, i);
        self.out.extend_from_slice(b"\r\ndialogid: ");
        push_u64(
            &mut self.out,
            DialogId::new(self.start_of, i as u32).as_u64(),
        );
        self.out.extend_from_slice(b"\r\n\r\n");
        &self.out
    }

    /// The `stop` of call `i` of worker `stop_of`.
    fn stop(&mut self, i: u64) -> &[u8] {
        self.out.clear();
        self.out.extend_from_slice(b"stop\r\ncallid: ");
        push_call_id(&mut self.out, &self.stop_stem, i);
        self.out.extend_from_slice(b"\r\n\r\n");
        &self.out
    }
}

fn push_call_id(out: &mut Vec<u8>, stem: &[u8], i: u64) {
    out.extend_from_slice(stem);
    push_u64(out, i);
    out.extend_from_slice(CALL_ID_HOST);
}

/// Appends `v` in decimal.
fn push_u64(out: &mut Vec<u8>, mut v: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

fn init_req(prefix: &str, k: usize, i: u64) -> Request {
    Request::Init(init_req_with(&format!("{prefix}-{k}-{i}@127.0.0.1"), k))
}

fn init_req_with(call_id: &str, k: usize) -> InitRequest {
    let mut r = InitRequest::new(
        call_id,
        format!("\"cc test\" <sip:user{k}@example.com>"),
        "sip:1000@127.0.0.1:5060",
    );
    r.from_tag = "1469SIPpTag001".into();
    r
}

/// Panics unless [`Requests`] writes exactly what `write_request` writes.
fn check_wire_format(prefix: &str) {
    let (k, s, t) = (3, 4, 5);
    let mut r = Requests::new(prefix, k, s, t);
    for i in [0, 1, 9, 10, 99, 100, 4711, 123_456_789, u64::from(u32::MAX)] {
        assert_eq!(
            r.init(i),
            encode_request(&init_req(prefix, k, i)),
            "init {i}"
        );
        let start = Request::Start(StartRequest {
            call_id: CallId::new(format!("{prefix}-{s}-{i}@127.0.0.1")),
            dialog_id: Some(DialogId::new(s as u32, i as u32)),
        });
        assert_eq!(r.start(i), encode_request(&start), "start {i}");
        let stop = Request::Stop {
            call_id: CallId::new(format!("{prefix}-{t}-{i}@127.0.0.1")),
        };
        assert_eq!(r.stop(i), encode_request(&stop), "stop {i}");
    }
}

#[derive(Default)]
struct Sample {
    calls: u64,
    mismatches: u64,
    /// Latencies in µs: all requests, and the `init`s alone.
    all: Vec<u32>,
    init: Vec<u32>,
    /// With `--series`: when each reply came, and its latency in µs (the
    /// low bit: an `init`).
    series: Option<Vec<(Instant, u32)>>,
    elapsed: Duration,
    cpu: Option<Duration>,
    client_cpu: Option<Duration>,
    /// Share of the machine's CPU time stolen by the hypervisor during the run.
    steal: Option<f64>,
}

impl Sample {
    fn with_capacity(requests: usize, series: bool) -> Sample {
        Sample {
            all: Vec::with_capacity(requests),
            init: Vec::with_capacity(requests / 3 + 16),
            series: series.then(|| Vec::with_capacity(requests)),
            ..Default::default()
        }
    }

    /// Records a reply that came at `now` to a request sent at `sent`.
    fn record(&mut self, sent: Instant, now: Instant, ok: bool, init: bool) {
        let us = u32::try_from(now.duration_since(sent).as_micros()).unwrap_or(u32::MAX);
        self.all.push(us);
        if init {
            self.init.push(us);
        }
        if let Some(series) = &mut self.series {
            series.push((now, us.saturating_mul(2) | u32::from(init)));
        }
        self.mismatches += u64::from(!ok);
    }
}

/// Progress of the workers, and their wake-ups.
struct Shared {
    /// Per worker `k`: calls of its own inited, starts sent (of worker
    /// `k+1`'s calls), stops sent (of worker `k+2`'s calls).
    inited: Vec<AtomicU64>,
    started: Vec<AtomicU64>,
    stopped: Vec<AtomicU64>,
    /// Wakes worker `k` when a counter it waits for moved (or at the end).
    wake: Vec<Notify>,
    stop: AtomicBool,
}

impl Shared {
    fn new(n: usize) -> Shared {
        let counters = || (0..n).map(|_| AtomicU64::new(0)).collect();
        Shared {
            inited: counters(),
            started: counters(),
            stopped: counters(),
            wake: (0..n).map(|_| Notify::new()).collect(),
            stop: AtomicBool::new(false),
        }
    }
}

/// Calls per second the latency vectors are sized for (more just grow them).
const EXPECTED_CALLS_PER_S: f64 = 100_000.0;

/// Runs `n` workers for `duration`, or, with `prefill`, until that many
/// calls are inited and started (and left in progress). With `series`, the
/// sample keeps every reply's time (see `--series`).
async fn run_load(
    path: &Path,
    n: usize,
    duration: Duration,
    prefix: &str,
    prefill: Option<u64>,
    series: bool,
) -> Sample {
    let shared = Arc::new(Shared::new(n));
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        conns.push(Conn::connect(path).await.expect("connect"));
    }
    let requests = match prefill {
        Some(p) => 2 * p.div_ceil(n as u64) as usize,
        None => (duration.as_secs_f64() * EXPECTED_CALLS_PER_S * 3.0 / n as f64) as usize,
    };
    let t0 = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for (k, conn) in conns.into_iter().enumerate() {
        let shared = shared.clone();
        let prefix = prefix.to_string();
        let sample = Sample::with_capacity(requests, series);
        tasks.push(tokio::spawn(async move {
            match prefill {
                Some(p) => prefill_worker(k, conn, &prefix, p.div_ceil(n as u64), sample).await,
                None => worker(k, n, conn, &shared, &prefix, sample).await,
            }
        }));
    }
    if prefill.is_none() {
        tokio::time::sleep(duration).await;
        shared.stop.store(true, Ordering::Relaxed);
        for w in &shared.wake {
            w.notify_one();
        }
    }
    let mut total = Sample::with_capacity(requests * n, series);
    for t in tasks {
        let s = t.await.expect("worker task").expect("worker");
        total.calls += s.calls;
        total.mismatches += s.mismatches;
        total.all.extend(s.all);
        total.init.extend(s.init);
        if let (Some(all), Some(one)) = (&mut total.series, s.series) {
            all.extend(one);
        }
    }
    total.elapsed = t0.elapsed();
    total
}

/// Writes `series` (see `--series`) to `path`, times from `t0`.
fn write_series(path: &Path, t0: Instant, series: &mut [(Instant, u32)]) -> io::Result<()> {
    // The run's start on CLOCK_MONOTONIC (which `Instant` reads on Linux).
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)?;
    let start =
        Duration::new(now.tv_sec() as u64, now.tv_nsec() as u32).saturating_sub(t0.elapsed());
    series.sort_unstable_by_key(|&(at, _)| at);
    let mut out = io::BufWriter::new(std::fs::File::create(path)?);
    writeln!(out, "# CLOCK_MONOTONIC {:.6}", start.as_secs_f64())?;
    for &(at, v) in series.iter() {
        let us = at.saturating_duration_since(t0).as_micros();
        writeln!(out, "{us} {} {}", v >> 1, v & 1)?;
    }
    out.flush()
}

/// Worker `k` of `n` until `shared.stop`: the `init`s of its own calls (at
/// most [`WINDOW`] in progress), the `start`s of worker `k+1`'s calls and
/// the `stop`s of worker `k+2`'s, each once the previous step is answered.
/// With nothing to send it sleeps until a neighbour wakes it.
/// One clock reading per request: a reply's time is the next request's
/// send time.
async fn worker(
    k: usize,
    n: usize,
    mut conn: Conn,
    shared: &Shared,
    prefix: &str,
    mut s: Sample,
) -> io::Result<Sample> {
    let (next, after, prev) = ((k + 1) % n, (k + 2) % n, (k + n - 1) % n);
    // The worker that stops this worker's calls.
    let stopper = (k + 2 * n - 2) % n;
    let mut req = Requests::new(prefix, k, next, after);
    let (mut i, mut si, mut ti) = (0u64, 0u64, 0u64);
    let mut now = Instant::now();
    while !shared.stop.load(Ordering::Relaxed) {
        // One request at a time, the call furthest along first, so that no
        // start or stop falls behind for good.
        if ti < shared.started[next].load(Ordering::Acquire) {
            let ok = conn.call(req.stop(ti), b"Ok\r\n").await?;
            let sent = std::mem::replace(&mut now, Instant::now());
            s.record(sent, now, ok, false);
            ti += 1;
            s.calls += 1;
            shared.stopped[k].store(ti, Ordering::Release);
            shared.wake[after].notify_one();
        } else if si < shared.inited[next].load(Ordering::Acquire) {
            let ok = conn.call(req.start(si), b"Ok\r\n").await?;
            let sent = std::mem::replace(&mut now, Instant::now());
            s.record(sent, now, ok, false);
            si += 1;
            shared.started[k].store(si, Ordering::Release);
            shared.wake[prev].notify_one();
        } else if i < shared.stopped[stopper].load(Ordering::Acquire) + WINDOW {
            let ok = conn.call(req.init(i), b"Limited\r\n").await?;
            let sent = std::mem::replace(&mut now, Instant::now());
            s.record(sent, now, ok, true);
            i += 1;
            shared.inited[k].store(i, Ordering::Release);
            shared.wake[prev].notify_one();
        } else {
            shared.wake[k].notified().await;
            now = Instant::now();
        }
    }
    Ok(s)
}

/// Worker `k` of the prefill: `init` and `start` of `count` calls of its
/// own, left in progress.
async fn prefill_worker(
    k: usize,
    mut conn: Conn,
    prefix: &str,
    count: u64,
    mut s: Sample,
) -> io::Result<Sample> {
    let mut req = Requests::new(prefix, k, k, k);
    let mut now = Instant::now();
    for i in 0..count {
        let ok = conn.call(req.init(i), b"Limited\r\n").await?;
        let sent = std::mem::replace(&mut now, Instant::now());
        s.record(sent, now, ok, true);
        let ok = conn.call(req.start(i), b"Ok\r\n").await?;
        let sent = std::mem::replace(&mut now, Instant::now());
        s.record(sent, now, ok, false);
    }
    s.calls = count;
    Ok(s)
}

fn pct(v: &mut [u32], p: f64) -> u32 {
    if v.is_empty() {
        return 0;
    }
    v.sort_unstable();
    let i = ((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1;
    v[i]
}

/// The machine's CPU time so far, from the `cpu` line of `/proc/stat`:
/// (all of it, stolen by the hypervisor), in clock ticks.
fn machine_time() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    steal_of(stat.lines().next()?)
}

/// (total, steal) of a `/proc/stat` `cpu` line: user nice system idle
/// iowait irq softirq steal (guest time is already in user and nice).
fn steal_of(line: &str) -> Option<(u64, u64)> {
    let f: Vec<u64> = line
        .strip_prefix("cpu ")?
        .split_whitespace()
        .take(8)
        .map(|v| v.parse().ok())
        .collect::<Option<_>>()?;
    (f.len() == 8).then(|| (f.iter().sum(), f[7]))
}

/// utime + stime of a process, from `/proc/<pid>/stat`.
fn cpu_of(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_secs_f64(ticks as f64 / clk_tck()))
}

fn clk_tck() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

struct Target {
    name: String,
    path: PathBuf,
    pid: Option<u32>,
    child: Option<std::process::Child>,
}

fn spawn_server(dir: &Path, echo: bool, threads: usize) -> Target {
    let path = dir.join(if echo { "echo.sock" } else { "daemon.sock" });
    let exe = std::env::current_exe().expect("current exe");
    let child = std::process::Command::new(exe)
        .arg(if echo { "--serve-echo" } else { "--serve" })
        .arg(&path)
        .arg("--server-threads")
        .arg(threads.to_string())
        .spawn()
        .expect("spawn server");
    for _ in 0..200 {
        if std::os::unix::net::UnixStream::connect(&path).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Target {
        name: if echo {
            format!("echo responder ({})", threads_name(threads))
        } else {
            "daemon (in-process engine, fixed limit)".to_string()
        },
        path,
        pid: Some(child.id()),
        child: Some(child),
    }
}

/// `args.runs` runs of `args.duration` with `n` workers against `t`,
/// repeating those that `args.max_steal` sets aside (at most `4 × runs`
/// attempts); the samples, and how many runs were set aside.
async fn measure(t: &Target, n: usize, tag: &str, args: &Args) -> (Vec<Sample>, usize) {
    let (runs, series, max_steal) = (args.runs, args.series.as_deref(), args.max_steal);
    let mut samples = Vec::new();
    let mut set_aside = 0;
    let attempts = 4 * runs;
    for r in 0..attempts {
        if samples.len() == runs {
            break;
        }
        let cpu0 = t.pid.and_then(cpu_of);
        let own0 = cpu_of(std::process::id());
        let machine0 = machine_time();
        let t0 = Instant::now();
        let prefix = format!("{tag}{n}r{r}");
        let mut s = run_load(&t.path, n, args.duration, &prefix, None, series.is_some()).await;
        if let (Some(path), Some(replies)) = (series, &mut s.series) {
            if let Err(e) = write_series(path, t0, replies) {
                eprintln!("--series {}: {e}", path.display());
            }
        }
        let cpu1 = t.pid.and_then(cpu_of);
        let own1 = cpu_of(std::process::id());
        s.cpu = cpu0.zip(cpu1).map(|(a, b)| b.saturating_sub(a));
        s.client_cpu = own0.zip(own1).map(|(a, b)| b.saturating_sub(a));
        s.steal = machine0
            .zip(machine_time())
            .and_then(|((t0, s0), (t1, s1))| {
                (t1 > t0).then(|| s1.saturating_sub(s0) as f64 / (t1 - t0) as f64)
            });
        let noisy = max_steal.is_some_and(|max| s.steal.is_some_and(|st| st * 100.0 > max));
        // Never come back empty-handed: the last attempt counts anyway.
        if noisy && r + 1 < attempts {
            set_aside += 1;
            // Shown, so that nothing measured goes unreported.
            eprintln!(
                "  set aside: {} conns={n} calls/s={:.0} steal={:.1}%",
                t.name,
                s.calls as f64 / s.elapsed.as_secs_f64(),
                s.steal.unwrap_or(0.0) * 100.0
            );
        } else {
            samples.push(s);
        }
    }
    (samples, set_aside)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn report(name: &str, n: usize, (samples, set_aside): &mut (Vec<Sample>, usize)) -> f64 {
    let samples = samples.as_mut_slice();
    let rate = median(
        samples
            .iter()
            .map(|s| s.calls as f64 / s.elapsed.as_secs_f64())
            .collect(),
    );
    let p = |samples: &mut [Sample], init: bool, q: f64| {
        median(
            samples
                .iter_mut()
                .map(|s| f64::from(pct(if init { &mut s.init } else { &mut s.all }, q)))
                .collect(),
        )
    };
    let (p50, p99, p999) = (
        p(samples, false, 0.5),
        p(samples, false, 0.99),
        p(samples, false, 0.999),
    );
    let ip99 = p(samples, true, 0.99);
    let imax = samples
        .iter_mut()
        .map(|s| pct(&mut s.init, 1.0))
        .max()
        .unwrap_or(0);
    let cpu = samples
        .iter()
        .filter_map(|s| s.cpu.map(|c| c.as_secs_f64() * 1e6 / s.calls.max(1) as f64))
        .collect::<Vec<_>>();
    let cpu = if cpu.is_empty() {
        "n/a".to_string()
    } else {
        format!("{:.1}", median(cpu))
    };
    let client = median(
        samples
            .iter()
            .map(|s| {
                s.client_cpu
                    .map_or(0.0, |c| c.as_secs_f64() * 1e6 / s.calls.max(1) as f64)
            })
            .collect(),
    );
    let mism: u64 = samples.iter().map(|s| s.mismatches).sum();
    let steal = samples.iter().filter_map(|s| s.steal).collect::<Vec<_>>();
    let steal = if steal.is_empty() {
        "n/a".to_string()
    } else {
        format!("{:.1}%", median(steal) * 100.0)
    };
    let aside = if *set_aside > 0 {
        format!("  ({set_aside} runs set aside for steal)")
    } else {
        String::new()
    };
    println!(
        "{name:<42} conns={n:<3} calls/s={rate:>8.0}  req p50={p50:>5.0}µs p99={p99:>6.0}µs p999={p999:>6.0}µs  \
         init p99={ip99:>6.0}µs max={imax:>6}µs  cpu/call={cpu:>6}µs  client cpu/call={client:>5.1}µs  unexpected={mism}  steal={steal}{aside}"
    );
    rate
}

async fn bench(args: Args) {
    check_wire_format("c8r0");
    let dir = tempfile_dir();
    let mut targets = Vec::new();
    match &args.socket {
        Some(p) => targets.push(Target {
            name: "daemon at --socket".to_string(),
            path: p.clone(),
            pid: args.pid,
            child: None,
        }),
        None => targets.push(spawn_server(&dir, false, args.server_threads)),
    }
    if args.echo {
        targets.push(spawn_server(&dir, true, args.echo_threads));
    }
    println!(
        "loadgen: {} s per run, median of {} runs, connections {:?}",
        args.duration.as_secs_f64(),
        args.runs,
        args.connections
    );
    let mut rates = Vec::new();
    for t in &targets {
        for &n in &args.connections {
            let mut samples = measure(t, n, "c", &args).await;
            rates.push((t.name.as_str(), n, report(&t.name, n, &mut samples)));
        }
    }
    for &n in &args.connections {
        let d = rates
            .iter()
            .find(|(name, m, _)| *m == n && !name.starts_with("echo"));
        let e = rates
            .iter()
            .find(|(name, m, _)| *m == n && name.starts_with("echo"));
        if let (Some(d), Some(e)) = (d, e) {
            println!("ratio daemon/echo at {n} connections: {:.2}", d.2 / e.2);
        }
    }
    if args.prefill > 0 {
        let t = &targets[0];
        let n = *args.connections.last().unwrap_or(&32);
        let s = run_load(
            &t.path,
            n,
            args.duration,
            "prefill",
            Some(args.prefill as u64),
            false,
        )
        .await;
        println!(
            "prefilled {} sessions in progress in {:.1} s",
            s.calls,
            s.elapsed.as_secs_f64()
        );
        let mut samples = measure(t, n, "p", &args).await;
        report(
            &format!("{} +{}k", t.name, args.prefill / 1000),
            n,
            &mut samples,
        );
    }
    for t in &mut targets {
        if let Some(c) = &mut t.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn threads_name(threads: usize) -> String {
    if threads <= 1 {
        "current-thread".to_string()
    } else {
        format!("{threads} threads")
    }
}

fn tempfile_dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("callcontrol-loadgen-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&d);
    d
}

#[cfg(test)]
mod tests {
    #[test]
    fn requests_are_what_write_request_writes() {
        super::check_wire_format("t1");
        super::check_wire_format("prefill");
    }

    #[test]
    fn steal_from_proc_stat() {
        let line = "cpu  4705 150 1120 16250 520 0 35 230 0 0";
        assert_eq!(super::steal_of(line), Some((23010, 230)));
        assert_eq!(super::steal_of("cpu0 1 2 3 4 5 6 7 8 0 0"), None);
        assert_eq!(super::steal_of("cpu  1 2 3"), None);
    }

    #[test]
    fn decimal() {
        let mut out = Vec::new();
        for v in [0, 7, 10, 65_535, u64::MAX] {
            out.clear();
            super::push_u64(&mut out, v);
            assert_eq!(out, v.to_string().as_bytes());
        }
    }
}
