//! Engine alone, no sockets, no runtime: init + start + stop cycles, with a
//! background of sessions in progress so the maps and the timer set are warm
//! and realistically sized.
//!
//! `cargo bench -p callcontrol-core --bench engine`

use std::hint::black_box;

#[path = "common.rs"]
mod common;

use callcontrol_core::engine::{Effect, Engine};
use callcontrol_core::prelude::*;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

fn drain(e: &mut Engine) {
    black_box(e.take_changes());
    while let Some(x) = e.poll_effect() {
        black_box(&x);
        if let Effect::EndDialog(_) = x {}
    }
}

fn engine_with(background: u64) -> (Engine, Timestamp) {
    let mut e = Engine::new(EngineConfig {
        limit: Some(3600),
        ..Default::default()
    });
    let now = Timestamp(1_700_000_000_000);
    for i in 0..background {
        e.handle(
            now,
            i,
            Request::Init(common::request(1_000_000_000 + i, 5000)),
        );
        let call_id = CallId::new(format!("{:08x}-4a3b-11ef-9c3d@10.0.0.1", 1_000_000_000 + i));
        e.handle(
            now,
            i,
            Request::Start(StartRequest {
                call_id,
                dialog_id: Some(DialogId::new(1, i as u32)),
            }),
        );
        drain(&mut e);
    }
    (e, now)
}

fn bench_cycle(c: &mut Criterion) {
    let mut g = c.benchmark_group("engine");
    // One element = one engine operation; a cycle is three (init, start, stop).
    g.throughput(Throughput::Elements(3));
    for background in [0u64, 100_000] {
        let (mut e, mut now) = engine_with(background);
        let mut i = 0u64;
        g.bench_function(format!("init_start_stop/{background}_in_progress"), |b| {
            b.iter_batched(
                || {
                    i += 1;
                    common::request(i, 5000)
                },
                |req| {
                    now = now.plus_millis(1);
                    common::cycle(&mut e, now, req);
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, bench_cycle);
criterion_main!(benches);
