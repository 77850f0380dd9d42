//! The `call_control` codec alone: decoding one call's `init`, `start` and
//! `stop` (OpenSIPS's exact bytes) and encoding their replies.
//!
//! `cargo bench -p callcontrol-opensips --bench codec`
//! `CALLS=20000 valgrind --tool=callgrind target/release/deps/codec-*` (run
//! with CALLS=0 too and subtract for instructions per call).

use std::hint::black_box;
use std::time::Instant;

use callcontrol_core::request::{Found, InitReply, Reply};
use callcontrol_opensips::codec::{encode_reply, Decoder};

fn main() {
    let calls: usize = std::env::var("CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let mut decoder = Decoder::new();
    let t = Instant::now();
    for i in 0..calls {
        let call_id = format!("{i}-1469@127.0.0.1");
        let block = format!(
            "init\r\nruri: sip:1000@127.0.0.1:5060\r\ndiverter: None\r\nsourceip: 127.0.0.1\r\n\
             callid: {call_id}\r\nfrom: \"cc test\" <sip:caller1@example.com>\r\n\
             fromtag: 1469SIPpTag001\r\nprepaid: unknown\r\ncall_limit: 0\r\ncall_token: None\r\n\r\n\
             start\r\ncallid: {call_id}\r\ndialogid: 11111181033451\r\n\r\n\
             stop\r\ncallid: {call_id}\r\n\r\n"
        );
        decoder.feed(block.as_bytes());
        while let Some(r) = decoder.decode() {
            let r = black_box(r.expect("valid request"));
            let reply = match r {
                callcontrol_core::request::Request::Init(_) => Reply::Init(InitReply::Limited),
                _ => Reply::Stop(Found::Ok),
            };
            black_box(encode_reply(&reply, None));
        }
    }
    if calls > 0 {
        let ns = t.elapsed().as_nanos() as f64 / calls as f64;
        println!(
            "codec: {ns:.0} ns per call (3 requests decoded, 3 replies encoded, input formatted)"
        );
    }
}
