//! callcontrol: call duration control for the OpenSIPS and Kamailio
//! `call_control` modules. This facade re-exports the workspace crates so an
//! embedder depends on one crate.
//!
//! # Layout
//!
//! - [`core`]: the engine, its traits (rating, signalling, store, clock) and
//!   the driver.
//! - [`rating`]: rating backends (fixed limit, CDRTool).
//! - [`opensips`]: the `call_control` socket protocol and server, and the
//!   proxy management clients.
//!
//! Features: `mock` (mockall mocks of every backend trait) and `test-kit`
//! (scriptable fakes: `core::testkit`, `rating::testkit` — a fake CDRTool —
//! and `opensips::testkit` — fake OpenSIPS workers and MI), for embedders'
//! own tests.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub use callcontrol_core as core;
pub use callcontrol_opensips as opensips;
pub use callcontrol_rating as rating;

pub use callcontrol_core::prelude;
