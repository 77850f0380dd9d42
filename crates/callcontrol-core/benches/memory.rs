//! Resident memory per in-progress session at 1M sessions (bench binary).
//!
//! `cargo bench -p callcontrol-core --bench memory`
//!
//! Reads the process's RSS from /proc/self/statm before and after 1,000,000
//! sessions are initialised and answered; the difference over the count is
//! the cost of one session in the engine (session record, Call-ID map,
//! timer set, billing-party index), allocator overhead included. Also
//! prints the slowest `init` on the way: the tables grow (and move every
//! entry) as the count doubles, and that one request holds up all others.

use callcontrol_core::engine::Engine;
use callcontrol_core::prelude::*;

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn main() {
    // `cargo bench` passes `--bench`; ignore arguments.
    let n: u64 = std::env::var("SESSIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let before = rss_bytes();
    let mut e = Engine::new(EngineConfig {
        limit: Some(3600),
        ..Default::default()
    });
    let now = Timestamp(1_700_000_000_000);
    let mut slowest = (std::time::Duration::ZERO, 0);
    for i in 0..n {
        let mut req = InitRequest::new(
            format!("{i:08x}-4a3b-11ef-9c3d@10.0.0.1"),
            format!("\"User {i}\" <sip:user{}@example.com>", i % 50_000),
            "sip:0031201234567@example.com",
        );
        req.from_tag = format!("{i}SIPpTag001");
        let id = req.call_id.clone();
        let t = std::time::Instant::now();
        e.handle(now, i, Request::Init(req));
        slowest = slowest.max((t.elapsed(), i));
        e.handle(
            now,
            i,
            Request::Start(StartRequest {
                call_id: id,
                dialog_id: Some(DialogId::new(1, i as u32)),
            }),
        );
        drop(e.take_changes());
        while e.poll_effect().is_some() {}
    }
    let after = rss_bytes();
    assert_eq!(e.len() as u64, n);
    let per = (after.saturating_sub(before)) as f64 / n as f64;
    println!("sessions in progress: {n}");
    println!(
        "rss before: {:.1} MiB, after: {:.1} MiB",
        before as f64 / 1048576.0,
        after as f64 / 1048576.0
    );
    println!("resident memory per in-progress session: {per:.0} bytes");
    println!(
        "slowest init: {:.1} ms, with {} sessions in progress",
        slowest.0.as_secs_f64() * 1000.0,
        slowest.1
    );
}
