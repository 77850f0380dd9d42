//! Fuzzes the `call_control` request decoder: the first byte chooses how the
//! input is split into reads; nothing may panic, the buffer must stay
//! bounded, and every decoded request must encode and decode back to itself.
#![no_main]

use callcontrol_opensips::codec::{encode_request, Decoder, MAX_LINE, MAX_LINES};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&step, input)) = data.split_first() else { return };
    let step = usize::from(step).max(1);
    let mut d = Decoder::new();
    for chunk in input.chunks(step) {
        d.feed(chunk);
        assert!(d.buffered() <= (MAX_LINES + 1) * (MAX_LINE + 2) + step);
        while let Some(r) = d.decode() {
            if let Ok(req) = r {
                let bytes = encode_request(&req);
                let mut again = Decoder::new();
                again.feed(&bytes);
                // Values are trimmed on the way in, so they survive the trip.
                if let Some(Ok(back)) = again.decode() {
                    assert_eq!(back, req);
                }
            }
        }
    }
});
