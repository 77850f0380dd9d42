//! CDRTool client benchmark (harness = false; figures, not assertions).
//!
//! `cargo bench -p callcontrol-rating --bench cdrtool`
//!
//! 1. Client overhead per request over the engine's own time, against the
//!    zero-latency fake engine: for each request, the time the caller waits
//!    minus the time the fake spends from reading the request to the end of
//!    writing its reply. What remains is the client (encode, pool, parse)
//!    plus the loopback TCP round trip and task wake-ups.
//! 2. Authorisations per second through one engine connection (pool of 1),
//!    one caller and 64 concurrent callers; and authorise + debit pairs.
//! 3. The codec alone (encode a request, frame and parse a reply).

use std::sync::Arc;
use std::time::{Duration, Instant};

use callcontrol_core::rating::{AuthoriseRequest, DebitRequest, RatingBackend};
use callcontrol_core::types::{BillingParty, CallId};
use callcontrol_rating::cdrtool::codec;
use callcontrol_rating::cdrtool::{CdrtoolClient, CdrtoolConfig};
use callcontrol_rating::testkit::FakeCdrtool;

fn auth(user: &str, call_id: &str) -> AuthoriseRequest {
    AuthoriseRequest {
        call_id: CallId::new(call_id),
        party: BillingParty::new(format!("sip:{user}@example.com")),
        to: "sip:0031201234567@example.com".into(),
        gateway: "127.0.0.1".into(),
        max_duration: 36000,
        application: "audio".into(),
        connected: false,
    }
}

fn debit(user: &str, call_id: &str) -> DebitRequest {
    DebitRequest {
        call_id: CallId::new(call_id),
        party: BillingParty::new(format!("sip:{user}@example.com")),
        to: "sip:0031201234567@example.com".into(),
        gateway: "127.0.0.1".into(),
        duration: 0,
        application: "audio".into(),
    }
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn report(name: &str, mut v: Vec<Duration>) {
    v.sort();
    println!(
        "{name:<34} p50 {:>7.1} µs  p90 {:>7.1} µs  p99 {:>7.1} µs  p99.9 {:>7.1} µs  (n={})",
        pct(&v, 0.50).as_secs_f64() * 1e6,
        pct(&v, 0.90).as_secs_f64() * 1e6,
        pct(&v, 0.99).as_secs_f64() * 1e6,
        pct(&v, 0.999).as_secs_f64() * 1e6,
        v.len()
    );
}

async fn client(fake: &FakeCdrtool, pool: usize) -> Arc<CdrtoolClient> {
    let config = CdrtoolConfig {
        pool_size: pool,
        timeout: Duration::from_secs(2),
        ..CdrtoolConfig::with_address(&fake.address()).expect("address")
    };
    let c = Arc::new(CdrtoolClient::new(config).expect("client"));
    while !c.health()[0].connected {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    c
}

/// The same request over a bare socket (no client): the floor that the
/// loopback round trip and the runtime's wake-ups set.
async fn raw_round_trip(n: usize) -> Vec<Duration> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fake = FakeCdrtool::start().await.expect("fake");
    let mut s = tokio::net::TcpStream::connect(fake.addr())
        .await
        .expect("connect");
    let _ = s.set_nodelay(true);
    let mut req = Vec::new();
    let mut v = Vec::with_capacity(n);
    let mut buf = Vec::with_capacity(256);
    for i in 0..(n + 2000) {
        codec::encode_max_session_time(&auth("bench", &format!("c{i}")), &mut req);
        let t = Instant::now();
        s.write_all(&req).await.expect("write");
        buf.clear();
        while !matches!(codec::frame_reply(&buf), codec::Frame::Complete { .. }) {
            s.read_buf(&mut buf).await.expect("read");
        }
        if i >= 2000 {
            v.push(t.elapsed());
        }
    }
    v
}

async fn overhead(n: usize) {
    let fake = FakeCdrtool::start().await.expect("fake");
    let c = client(&fake, 1).await;
    // Warm up (connection, allocator, caches).
    for i in 0..2000 {
        let _ = c.authorise(&auth("bench", &format!("w{i}"))).await;
    }
    fake.record_timing(true);
    let mut total = Vec::with_capacity(n);
    for i in 0..n {
        let req = auth("bench", &format!("c{i}"));
        let t = Instant::now();
        let r = c.authorise(&req).await;
        total.push(t.elapsed());
        assert!(r.is_ok(), "{r:?}");
    }
    let engine = fake.timings();
    assert_eq!(engine.len(), n, "one engine timing per request");
    let over: Vec<Duration> = total
        .iter()
        .zip(&engine)
        .map(|(t, e)| t.saturating_sub(*e))
        .collect();
    println!("== client overhead per MaxSessionTime, zero-latency fake, one connection");
    report(
        "bare socket round trip (no client)",
        raw_round_trip(n).await,
    );
    report("caller wait (client + engine)", total);
    report("engine's own time (fake)", engine);
    report("overhead = wait - engine time", over);
}

async fn throughput(concurrency: usize, window: Duration, pairs: bool) -> f64 {
    let fake = FakeCdrtool::start().await.expect("fake");
    if pairs {
        for i in 0..concurrency {
            fake.add_prepaid(&format!("p{i}@example.com"), "1000000.00");
        }
    }
    let c = client(&fake, 1).await;
    let stop = Instant::now() + window;
    let tasks: Vec<_> = (0..concurrency)
        .map(|w| {
            let c = c.clone();
            tokio::spawn(async move {
                let mut n = 0u64;
                while Instant::now() < stop {
                    let id = format!("w{w}-{n}");
                    if pairs {
                        let user = format!("p{w}");
                        let _ = c.authorise(&auth(&user, &id)).await;
                        let _ = c.debit(&debit(&user, &id)).await;
                    } else {
                        let _ = c.authorise(&auth("bench", &id)).await;
                    }
                    n += 1;
                }
                n
            })
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap_or(0);
    }
    total as f64 / window.as_secs_f64()
}

fn codec_only(n: usize) {
    let req = auth("alice", "1-1469@127.0.0.1");
    let reply = b"6000\ntype=prepaid\n\n";
    let mut buf = Vec::with_capacity(256);
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        codec::encode_max_session_time(&req, &mut buf);
        let a = match codec::frame_reply(reply) {
            codec::Frame::Complete { start, end } => {
                codec::parse_max_session_time(std::str::from_utf8(&reply[start..end]).unwrap_or(""))
            }
            codec::Frame::Incomplete => unreachable!(),
        };
        let _ = std::hint::black_box((&buf, a));
        v.push(t.elapsed());
    }
    println!("== codec alone");
    report("encode + frame + parse", v);
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    codec_only(200_000);
    println!("-- current-thread runtime (client and fake on one thread)");
    let single = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    single.block_on(overhead(20_000));
    println!("-- multi-thread runtime, 2 workers");
    rt.block_on(async {
        overhead(20_000).await;
        println!("== throughput through one engine connection (2 s windows)");
        for conc in [1, 64] {
            let r = throughput(conc, Duration::from_secs(2), false).await;
            println!("authorisations/s, {conc:>2} caller(s):        {r:>9.0}");
        }
        let r = throughput(64, Duration::from_secs(2), true).await;
        println!("authorise+debit pairs/s, 64 callers: {r:>9.0}");
    });
}
