//! What the engine benches share: a realistic `init`, and one call's cycle.

use callcontrol_core::engine::Engine;
use callcontrol_core::prelude::*;

/// An `init` as OpenSIPS sends it, for call number `i` (`parties` billing
/// parties in all). Its strings have no spare capacity, as the codec's
/// (copies of the parsed values) have none.
pub fn request(i: u64, parties: u64) -> InitRequest {
    let exact = |s: String| String::from(s.into_boxed_str());
    let mut r = InitRequest::new(
        format!("{i:08x}-4a3b-11ef-9c3d@10.0.0.1"),
        exact(format!(
            "\"User {i}\" <sip:user{}@example.com>",
            i % parties
        )),
        "sip:0031201234567@example.com",
    );
    r.from_tag = exact(format!("{i}SIPpTag001"));
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

/// One call through the engine as the daemon's driver serves requests
/// inline: before each request the due timers, after it the store changes
/// (one `take_changes` per request) and the effects. The changes are kept
/// until the call is over, as a store that mirrors the sessions keeps each
/// record until it is replaced or removed.
#[allow(dead_code)] // not every bench that includes this file uses it
pub fn cycle_inline(
    e: &mut Engine,
    now: Timestamp,
    req: InitRequest,
    mut store: Option<&mut dyn SessionStore>,
) {
    let id = req.call_id.clone();
    let start = StartRequest {
        call_id: id.clone(),
        dialog_id: Some(DialogId::new(3, 4)),
    };
    let requests = [
        Request::Init(req),
        Request::Start(start),
        Request::Stop { call_id: id },
    ];
    let mut kept: [Vec<StoreChange>; 3] = Default::default();
    for ((token, request), kept) in requests.into_iter().enumerate().zip(&mut kept) {
        if e.poll_timeout().is_some_and(|t| t <= now) {
            e.handle_timeout(now);
        }
        e.handle(now, token as u64, request);
        if e.has_changes() {
            *kept = e.take_changes();
            if let Some(store) = store.as_deref_mut() {
                store.apply(kept).expect("journal write");
                if store.wants_state() {
                    store.save_state(e.shared_state()).expect("compaction");
                }
            }
        }
        while e.poll_effect().is_some() {}
    }
}
