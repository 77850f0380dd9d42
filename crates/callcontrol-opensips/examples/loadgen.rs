//! Load generator: N emulated OpenSIPS workers against a `call_control`
//! socket, reporting calls/s (init + start + stop), per-request latency
//! percentiles and the daemon's CPU time per call.
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
//! `--server-threads N` (tokio workers of the spawned servers; 1 = a
//! current-thread runtime), `--client-threads N`, and `--engine-only` (the
//! engine and driver alone through the handle, no sockets).
//!
//! Each worker owns one connection and is strictly request → reply. Worker
//! `k` sends the `init` of its own calls, the `start` of worker `k+1`'s calls
//! and the `stop` of worker `k+2`'s, so each call's three requests arrive on
//! three different connections, as with OpenSIPS.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use callcontrol_core::prelude::*;
use callcontrol_opensips::codec::{write_request, Decoder};
use callcontrol_opensips::server::{bind_socket, serve, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::net::{UnixListener, UnixStream};

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
}

/// `--serve`/`--serve-echo` mode: socket path, echo or not, threads.
type ServeMode = Option<(PathBuf, bool, usize)>;

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
    };
    let mut serve = None;
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut val = || it.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--serve" => serve = Some((PathBuf::from(val()?), false)),
            "--serve-echo" => serve = Some((PathBuf::from(val()?), true)),
            "--server-threads" => a.server_threads = val()?.parse().map_err(|e| format!("{e}"))?,
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
            "--engine-only" => {
                runtime(1).block_on(engine_only());
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok((serve.map(|(p, e)| (p, e, a.server_threads)), a))
}

fn main() {
    let (serve_mode, args) = match parse_args() {
        Ok(x) => x,
        Err(e) => {
            eprintln!("loadgen: {e}");
            std::process::exit(2);
        }
    };
    if let Some((path, echo, threads)) = serve_mode {
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
        let running = driver::spawn(
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
            shutdown.clone(),
        )
        .expect("engine");
        serve(listener, running.handle, ServerConfig::default(), shutdown)
            .await
            .expect("serve");
    });
}

/// The baseline: answers every request with the right reply string, keeps
/// no state. Same decoder and buffering as the real server.
async fn echo_server(listener: UnixListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let mut stream = BufWriter::new(stream);
            let mut d = Decoder::new();
            loop {
                while let Some(r) = d.decode() {
                    let reply: &[u8] = match r {
                        Ok(Request::Init(_)) => b"Limited\r\n",
                        Ok(_) => b"Ok\r\n",
                        Err(_) => b"Error\r\n",
                    };
                    if stream.write_all(reply).await.is_err() {
                        return;
                    }
                }
                if stream.flush().await.is_err() {
                    return;
                }
                let buf = d.buffer_mut();
                buf.reserve(4096);
                match stream.read_buf(buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        });
    }
}

/// The engine and driver alone, without sockets: 8 tasks calling the
/// handle directly, one call (init + start + stop) after the other.
async fn engine_only() {
    let running = driver::spawn(
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
        CancellationToken::new(),
    )
    .expect("engine");
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

struct Conn {
    stream: UnixStream,
    buf: Vec<u8>,
    out: Vec<u8>,
}

impl Conn {
    async fn connect(path: &Path) -> std::io::Result<Conn> {
        Ok(Conn {
            stream: UnixStream::connect(path).await?,
            buf: Vec::with_capacity(256),
            out: Vec::with_capacity(512),
        })
    }
    /// One request, one reply line; returns whether the reply was `expected`.
    async fn call(&mut self, req: &Request, expected: &[u8]) -> std::io::Result<bool> {
        self.out.clear();
        write_request(req, &mut self.out);
        self.stream.write_all(&self.out).await?;
        self.buf.clear();
        loop {
            let mut chunk = [0u8; 256];
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
            if self.buf.ends_with(b"\n") {
                return Ok(self.buf == expected);
            }
        }
    }
}

#[derive(Default)]
struct Sample {
    calls: u64,
    mismatches: u64,
    all: Vec<u32>,
    init: Vec<u32>,
    elapsed: Duration,
    cpu: Option<Duration>,
}

fn init_req(prefix: &str, k: usize, i: u64) -> Request {
    let mut r = InitRequest::new(
        format!("{prefix}-{k}-{i}@127.0.0.1"),
        format!("\"cc test\" <sip:user{k}@example.com>"),
        "sip:1000@127.0.0.1:5060",
    );
    r.from_tag = "1469SIPpTag001".into();
    Request::Init(r)
}

/// Runs `n` workers for `duration` (or until `max_calls` calls are
/// started, when `stop_calls` is false: the prefill).
async fn run_load(
    path: &Path,
    n: usize,
    duration: Duration,
    prefix: &str,
    prefill: Option<u64>,
) -> Sample {
    let inited: Arc<Vec<AtomicU64>> = Arc::new((0..n).map(|_| AtomicU64::new(0)).collect());
    let started: Arc<Vec<AtomicU64>> = Arc::new((0..n).map(|_| AtomicU64::new(0)).collect());
    let stop = Arc::new(AtomicBool::new(false));
    let mut conns = Vec::new();
    for _ in 0..n {
        conns.push(Conn::connect(path).await.expect("connect"));
    }
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for (k, mut conn) in conns.into_iter().enumerate() {
        let (inited, started, stop) = (inited.clone(), started.clone(), stop.clone());
        let prefix = prefix.to_string();
        tasks.push(tokio::spawn(async move {
            let mut s = Sample::default();
            let (j1, j2) = ((k + 1) % n, (k + 2) % n);
            let (mut i, mut si, mut ti) = (0u64, 0u64, 0u64);
            let per_worker = prefill.map(|p| p.div_ceil(n as u64));
            loop {
                if stop.load(Ordering::Relaxed) || per_worker.is_some_and(|p| i >= p && si >= p) {
                    break;
                }
                let mut progressed = false;
                if per_worker.is_none_or(|p| i < p) {
                    let t = Instant::now();
                    let ok = conn
                        .call(&init_req(&prefix, k, i), b"Limited\r\n")
                        .await
                        .expect("init");
                    let us = t.elapsed().as_micros() as u32;
                    s.all.push(us);
                    s.init.push(us);
                    s.mismatches += u64::from(!ok);
                    i += 1;
                    inited[k].store(i, Ordering::Release);
                    progressed = true;
                }
                // The start of the next worker's call, once its init is answered.
                let (sj, tj) = if prefill.is_some() { (k, k) } else { (j1, j2) };
                if si < inited[sj].load(Ordering::Acquire) {
                    let req = Request::Start(StartRequest {
                        call_id: CallId::new(format!("{prefix}-{sj}-{si}@127.0.0.1")),
                        dialog_id: Some(DialogId::new(sj as u32, si as u32)),
                    });
                    let t = Instant::now();
                    let ok = conn.call(&req, b"Ok\r\n").await.expect("start");
                    s.all.push(t.elapsed().as_micros() as u32);
                    s.mismatches += u64::from(!ok);
                    si += 1;
                    started[k].store(si, Ordering::Release);
                    progressed = true;
                }
                // The stop of the call after next, once its start is answered.
                if prefill.is_none() && ti < started[(tj + n - 1) % n].load(Ordering::Acquire) {
                    let req = Request::Stop {
                        call_id: CallId::new(format!("{prefix}-{tj}-{ti}@127.0.0.1")),
                    };
                    let t = Instant::now();
                    let ok = conn.call(&req, b"Ok\r\n").await.expect("stop");
                    s.all.push(t.elapsed().as_micros() as u32);
                    s.mismatches += u64::from(!ok);
                    ti += 1;
                    s.calls += 1;
                    progressed = true;
                }
                if !progressed {
                    tokio::task::yield_now().await;
                }
            }
            if prefill.is_some() {
                s.calls = si;
            }
            s
        }));
    }
    if prefill.is_none() {
        tokio::time::sleep(duration).await;
        stop.store(true, Ordering::Relaxed);
    }
    let mut total = Sample::default();
    for t in tasks {
        let s = t.await.expect("worker");
        total.calls += s.calls;
        total.mismatches += s.mismatches;
        total.all.extend(s.all);
        total.init.extend(s.init);
    }
    total.elapsed = t0.elapsed();
    total
}

fn pct(v: &mut [u32], p: f64) -> u32 {
    if v.is_empty() {
        return 0;
    }
    v.sort_unstable();
    let i = ((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1;
    v[i]
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
    name: &'static str,
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
            "echo responder"
        } else {
            "daemon (in-process engine, fixed limit)"
        },
        path,
        pid: Some(child.id()),
        child: Some(child),
    }
}

async fn measure(t: &Target, n: usize, duration: Duration, runs: usize, tag: &str) -> Vec<Sample> {
    let mut samples = Vec::new();
    for r in 0..runs {
        let cpu0 = t.pid.and_then(cpu_of);
        let mut s = run_load(&t.path, n, duration, &format!("{tag}{n}r{r}"), None).await;
        let cpu1 = t.pid.and_then(cpu_of);
        s.cpu = cpu0.zip(cpu1).map(|(a, b)| b.saturating_sub(a));
        samples.push(s);
    }
    samples
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn report(name: &str, n: usize, samples: &mut [Sample]) -> f64 {
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
    let mism: u64 = samples.iter().map(|s| s.mismatches).sum();
    println!(
        "{name:<42} conns={n:<3} calls/s={rate:>8.0}  req p50={p50:>5.0}µs p99={p99:>6.0}µs p999={p999:>6.0}µs  \
         init p99={ip99:>6.0}µs max={imax:>6}µs  cpu/call={cpu:>6}µs  unexpected={mism}"
    );
    rate
}

async fn bench(args: Args) {
    let dir = tempfile_dir();
    let mut targets = Vec::new();
    match &args.socket {
        Some(p) => targets.push(Target {
            name: "daemon at --socket",
            path: p.clone(),
            pid: args.pid,
            child: None,
        }),
        None => targets.push(spawn_server(&dir, false, args.server_threads)),
    }
    if args.echo {
        targets.push(spawn_server(&dir, true, args.server_threads));
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
            let mut samples = measure(t, n, args.duration, args.runs, "c").await;
            rates.push((t.name, n, report(t.name, n, &mut samples)));
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
        )
        .await;
        println!(
            "prefilled {} sessions in progress in {:.1} s",
            s.calls,
            s.elapsed.as_secs_f64()
        );
        let mut samples = measure(t, n, args.duration, args.runs, "p").await;
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

fn tempfile_dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("callcontrol-loadgen-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&d);
    d
}
