//! The callcontrol engine: sessions, limits, shared prepaid balances, timers.
//!
//! # Layout
//!
//! - [`types`], [`request`], [`session`]: the domain (Call-IDs, billing
//!   parties, dialog ids; requests and replies; sessions).
//! - [`engine`]: the state machine without I/O. It is handed requests, backend
//!   answers and the time, and returns effects, store changes and its next
//!   deadline.
//! - [`driver`]: runs an engine behind a mutex: requests are served inline
//!   through a cloneable [`driver::Handle`], and one tokio task fires timers
//!   and performs the effects through the backends.
//! - The seams: [`rating::RatingBackend`] (authorise, debit),
//!   [`signalling::SignallingBackend`] (end a dialog),
//!   [`store::SessionStore`] (persistence), [`clock::Clock`] (time).
//! - [`testkit`] (feature `test-kit`): scriptable fakes; feature `mock`:
//!   mockall mocks of every seam.
//!
//! ```
//! use std::sync::Arc;
//! use callcontrol_core::prelude::*;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let running = driver::spawn(
//!     driver::Parts {
//!         config: EngineConfig { limit: Some(600), ..Default::default() },
//!         rating: Arc::new(NoRating),
//!         signalling: Arc::new(LogSignalling),
//!         store: Box::new(MemoryStore::new()),
//!         clock: Arc::new(TokioClock::new()),
//!     },
//!     CancellationToken::new(),
//! ).unwrap();
//! let reply = running.handle.init(InitRequest::new("c1", "<sip:alice@example.com>", "sip:bob@example.com")).await.unwrap();
//! assert_eq!(reply, InitReply::Limited);
//! # }
//! ```
#![deny(unsafe_code)]
#![deny(missing_docs)]

pub mod clock;
pub mod config;
pub mod driver;
pub mod engine;
pub mod error;
pub mod journal;
pub mod party;
pub mod rating;
pub mod request;
pub mod session;
pub mod signalling;
pub mod store;
#[cfg(any(test, feature = "test-kit"))]
pub mod testkit;
pub mod types;

pub use tokio_util::sync::CancellationToken;

/// A signalling backend that only logs (for embeddings without a proxy).
#[derive(Debug, Clone, Default)]
pub struct LogSignalling;

#[async_trait::async_trait]
impl signalling::SignallingBackend for LogSignalling {
    async fn end_dialog(
        &self,
        d: &signalling::DialogRef,
    ) -> Result<signalling::EndOutcome, error::SignallingError> {
        log::warn!(
            "No signalling backend: cannot end dialog {:?} ({})",
            d.dialog_id,
            d.call_id
        );
        Err(error::SignallingError::Unreachable(
            "no signalling backend configured".into(),
        ))
    }
}

/// The names most embedders need.
pub mod prelude {
    pub use crate::clock::{Clock, TokioClock};
    pub use crate::config::{EngineConfig, RatingFailurePolicy};
    pub use crate::driver::{self, Handle, Parts, Running};
    pub use crate::engine::{Effect, Engine};
    pub use crate::error::*;
    pub use crate::rating::*;
    pub use crate::request::*;
    pub use crate::session::{Session, SessionInfo};
    pub use crate::signalling::*;
    pub use crate::store::{MemoryStore, SessionStore, Snapshot, StoreChange};
    pub use crate::types::*;
    pub use crate::{CancellationToken, LogSignalling};
}
