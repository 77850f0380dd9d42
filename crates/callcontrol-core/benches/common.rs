//! What the engine benches share: a realistic `init`, and one call's cycle.

use callcontrol_core::engine::Engine;
use callcontrol_core::prelude::*;

/// An `init` as OpenSIPS sends it, for call number `i` (`parties` billing
/// parties in all).
pub fn request(i: u64, parties: u64) -> InitRequest {
    let mut r = InitRequest::new(
        format!("{i:08x}-4a3b-11ef-9c3d@10.0.0.1"),
        format!("\"User {i}\" <sip:user{}@example.com>", i % parties),
        "sip:0031201234567@example.com",
    );
    r.from_tag = format!("{i}SIPpTag001");
    r
}

/// One call through the engine: init, start, stop at `now`, then what a
/// driver does after a batch (timers, store changes, effects).
pub fn cycle(e: &mut Engine, now: Timestamp, req: InitRequest) {
    let id = req.call_id.clone();
    e.handle(now, 1, Request::Init(req));
    let start = StartRequest {
        call_id: id.clone(),
        dialog_id: Some(DialogId::new(3, 4)),
    };
    e.handle(now, 2, Request::Start(start));
    e.handle(now, 3, Request::Stop { call_id: id });
    e.handle_timeout(now);
    drop(e.take_changes());
    while e.poll_effect().is_some() {}
}
