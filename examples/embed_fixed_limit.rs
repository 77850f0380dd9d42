//! Embed the call-control engine with the fixed-limit rating backend.
//!
//! `cargo run --example embed_fixed_limit`
//!
//! Every call gets 2 seconds; when the limit is reached the engine asks the
//! signalling backend to end the dialog. Here the signalling backend is a
//! closure-like struct that prints what a proxy would be asked.

use std::sync::Arc;
use std::time::Duration;

use callcontrol::prelude::*;
use callcontrol::rating::FixedLimit;

/// Prints the dialogs it is asked to end (a real embedding would send the
/// proxy's `dlg_end_dlg`, see `callcontrol::opensips`).
struct PrintSignalling;

#[async_trait::async_trait]
impl SignallingBackend for PrintSignalling {
    async fn end_dialog(&self, d: &DialogRef) -> Result<EndOutcome, SignallingError> {
        println!(
            "limit reached: ending dialog {:?} of call {}",
            d.dialog_id, d.call_id
        );
        Ok(EndOutcome::Ended)
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let shutdown = CancellationToken::new();
    let running = driver::spawn(
        Parts {
            // Non-prepaid calls get `limit`; prepaid ones ask the rating backend.
            config: EngineConfig {
                limit: Some(2),
                ..Default::default()
            },
            rating: Arc::new(FixedLimit::new(Some(2))),
            signalling: Arc::new(PrintSignalling),
            store: Box::new(MemoryStore::new()),
            clock: Arc::new(TokioClock::new()),
        },
        shutdown.clone(),
    )?;
    let engine = running.handle;

    for (id, prepaid) in [("call-1@example.com", false), ("call-2@example.com", true)] {
        let req = InitRequest::new(
            id,
            "\"Alice\" <sip:alice@example.com>",
            "sip:bob@example.com",
        )
        .prepaid(prepaid);
        println!("init {id}: {}", engine.init(req).await?.as_str());
        let start = StartRequest {
            call_id: CallId::new(id),
            dialog_id: Some(DialogId::new(1, 2)),
        };
        println!("start {id}: {:?}", engine.start(start).await?);
    }
    for s in engine.list(None).await? {
        println!(
            "{} of {}: {} (limit {:?} s)",
            s.call_id, s.user, s.state, s.limit
        );
    }
    tokio::time::sleep(Duration::from_millis(2200)).await;
    // The proxy confirms the end of each dialog with `stop`.
    for id in ["call-1@example.com", "call-2@example.com"] {
        println!("stop {id}: {:?}", engine.stop(id).await?);
    }
    println!("sessions left: {}", engine.list(None).await?.len());
    shutdown.cancel();
    running.task.await??;
    Ok(())
}
