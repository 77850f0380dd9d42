//! The `call_control` codec alone: decoding one call's `init`, `start` and
//! `stop` (OpenSIPS's exact bytes, from `write_request`) and encoding their
//! replies, one request per read as the daemon gets them.
//!
//! Wall clock: `cargo bench -p callcontrol-opensips --bench codec`.
//!
//! Instructions per call (deterministic): the input is built before the
//! measured function `run`, so only decoding, replying and dropping the
//! requests are counted:
//!
//! ```text
//! cargo bench -p callcontrol-opensips --bench codec --no-run
//! CALLS=20000 valgrind --tool=callgrind --callgrind-out-file=/tmp/codec.cg \
//!     --toggle-collect='codec::run' target/release/deps/codec-<hash>
//! callgrind_annotate /tmp/codec.cg | grep 'PROGRAM TOTALS'   # ÷ CALLS
//! ```

use std::hint::black_box;
use std::time::Instant;

use callcontrol_core::request::{Found, InitReply, Reply, Request, StartRequest};
use callcontrol_core::types::DialogId;
use callcontrol_opensips::codec::{write_reply, write_request, Decoder};
use callcontrol_opensips::testkit::opensips_init;

/// The three requests of each call, as OpenSIPS writes them.
fn inputs(calls: usize) -> Vec<[Vec<u8>; 3]> {
    (0..calls)
        .map(|i| {
            let call_id = format!("{i}-1469@127.0.0.1");
            let init = Request::Init(opensips_init(&call_id, "caller1"));
            let start = Request::Start(StartRequest {
                call_id: call_id.as_str().into(),
                dialog_id: Some(DialogId::new(0xa1b, 0x5ff9feb)),
            });
            let stop = Request::Stop {
                call_id: call_id.as_str().into(),
            };
            [&init, &start, &stop].map(|r| {
                let mut out = Vec::new();
                write_request(r, &mut out);
                out
            })
        })
        .collect()
}

/// Decodes every request and encodes its reply; the measured part.
#[inline(never)]
fn run(decoder: &mut Decoder, inputs: &[[Vec<u8>; 3]], out: &mut Vec<u8>) -> usize {
    let mut n = 0;
    for call in inputs {
        for request in call {
            decoder.feed(request);
            while let Some(r) = decoder.decode() {
                let r = black_box(r.expect("valid request"));
                let reply = match r {
                    Request::Init(_) => Reply::Init(InitReply::Limited),
                    _ => Reply::Stop(Found::Ok),
                };
                out.clear();
                write_reply(&reply, None, out);
                black_box(&out);
                n += 1;
            }
        }
    }
    n
}

fn main() {
    let calls: usize = std::env::var("CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let inputs = inputs(calls);
    let mut decoder = Decoder::new();
    let mut out = Vec::with_capacity(256);
    let t = Instant::now();
    let n = run(&mut decoder, &inputs, &mut out);
    assert_eq!(n, 3 * calls);
    if calls > 0 {
        let ns = t.elapsed().as_nanos() as f64 / calls as f64;
        println!("codec: {ns:.0} ns per call (3 requests decoded, 3 replies encoded)");
    }
}
