//! init+start+stop cycles through the engine alone, reporting CPU time per
//! cycle (steadier than wall time on a shared machine) and usable under
//! `valgrind --tool=callgrind` for an instruction count that does not depend
//! on the machine's load:
//!
//! `cargo bench -p callcontrol-core --bench cycles`
//! `CYCLES=100000 BACKGROUND=100000 valgrind --tool=callgrind target/release/deps/cycles-*`
//! (run once with CYCLES=0 and subtract: the difference over CYCLES is the
//! instruction count of one cycle, setup excluded).
//!
//! By default each request is followed by its own `take_changes`, as the
//! daemon's driver does when it serves requests inline (`FLUSH=cycle`: one
//! per cycle), and `info` lines are formatted into a buffer as the daemon's
//! logger does, then discarded (`LOG=0`: no logger, nothing formatted).
//! `STORE=journal` also writes every change to the session journal, as the
//! daemon does (in a directory of its own under the temporary directory,
//! removed after): the journal's cost with the kernel's share included (the
//! page faults of the mapped file, the flushes of its background thread).

#[path = "common.rs"]
mod common;

use callcontrol_core::engine::Engine;
use callcontrol_core::prelude::*;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Process CPU time (user + system) in seconds, from /proc/self/stat.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// Formats every line into a reused buffer, as a logger that queues lines
/// would, and drops it: the engine's cost of logging, without the I/O.
struct FormatLogger(std::sync::Mutex<String>);

impl log::Log for FormatLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }
    fn log(&self, record: &log::Record<'_>) {
        let mut buf = self.0.lock().unwrap_or_else(|p| p.into_inner());
        buf.clear();
        let _ = std::fmt::Write::write_fmt(&mut *buf, *record.args());
        std::hint::black_box(buf.as_str());
    }
    fn flush(&self) {}
}

fn main() {
    if env("LOG", 1) != 0 {
        static LOGGER: FormatLogger = FormatLogger(std::sync::Mutex::new(String::new()));
        if log::set_logger(&LOGGER).is_ok() {
            log::set_max_level(log::LevelFilter::Info);
        }
    }
    let inline = std::env::var("FLUSH").map_or(true, |v| v != "cycle");
    let journal_dir = (std::env::var("STORE").as_deref() == Ok("journal"))
        .then(|| std::env::temp_dir().join(format!("cycles-journal-{}", std::process::id())));
    let mut journal = journal_dir.as_ref().map(|dir| {
        callcontrol_core::journal::Journal::open(dir, Default::default()).expect("journal")
    });
    let cycles = env("CYCLES", 1_000_000);
    let background = env("BACKGROUND", 100_000);
    let mut e = Engine::new(EngineConfig {
        limit: Some(3600),
        ..Default::default()
    });
    let mut now = Timestamp(1_700_000_000_000);
    for i in 0..background {
        let req = common::request(10_000_000_000 + i, 50_000);
        let id = req.call_id.clone();
        e.handle(now, 0, Request::Init(req));
        e.handle(
            now,
            0,
            Request::Start(StartRequest {
                call_id: id,
                dialog_id: Some(DialogId::new(1, 2)),
            }),
        );
        drop(e.take_changes());
        while e.poll_effect().is_some() {}
    }
    // Requests are built in small chunks outside the timed part, as a codec
    // would hand them over (hot in cache); only the engine work is timed.
    let cpu0 = cpu_seconds();
    let mut engine_wall = std::time::Duration::ZERO;
    let mut done = 0;
    while done < cycles {
        let n = (cycles - done).min(256);
        let reqs: Vec<InitRequest> = (done..done + n)
            .map(|i| common::request(i, 50_000))
            .collect();
        done += n;
        let t = std::time::Instant::now();
        for req in reqs {
            now = now.plus_millis(1);
            if inline {
                let store = journal.as_mut().map(|j| j as &mut dyn SessionStore);
                common::cycle_inline(&mut e, now, req, store);
            } else {
                common::cycle(&mut e, now, req);
            }
        }
        engine_wall += t.elapsed();
    }
    let cpu = cpu_seconds() - cpu0;
    let wall = engine_wall.as_secs_f64();
    if cycles > 0 {
        println!(
            "cycles: {cycles}, sessions in progress: {background}, changes taken per {}{}, \
             info lines {}",
            if inline { "request" } else { "cycle" },
            if journal.is_some() {
                " and journalled"
            } else {
                ""
            },
            if log::log_enabled!(log::Level::Info) {
                "formatted"
            } else {
                "off"
            }
        );
        println!(
            "engine: {:.2} us per cycle, {:.0} engine operations/s on one core",
            wall / cycles as f64 * 1e6,
            3.0 * cycles as f64 / wall
        );
        println!(
            "process CPU per cycle, building the requests included: {:.2} us",
            cpu / cycles as f64 * 1e6
        );
    }
    drop(journal);
    if let Some(dir) = journal_dir {
        let _ = std::fs::remove_dir_all(dir);
    }
}
