//! The CDRTool rating engine client (PROTOCOLS.md §5).
//!
//! # Layout
//!
//! - [`codec`]: the protocol without I/O — requests in one buffer, replies
//!   framed at `\n\n` and typed, values the engine would mangle
//!   percent-encoded.
//! - [`client`]: per-engine connection pools (one request in flight per
//!   connection), timeouts that drop the connection, reconnection with
//!   backoff, fail-fast when an engine is down, billing parties pinned to one
//!   engine, counters for metrics; [`CdrtoolClient`] implements the core's
//!   [`RatingBackend`](callcontrol_core::rating::RatingBackend).
//! - [`config`]: `[CDRTool]` settings ([`CdrtoolConfig`]).
//!
//! What the engine core does and this client does not: it keeps owed debits
//! in order, persists them, retries a debit whose `debit()` returned `Err`
//! and resets a party's sessions from `MaxSessionTime=` in debit replies.
//! The client's part is to answer `Err` whenever a debit may not have been
//! answered, and a typed outcome otherwise.

pub mod client;
pub mod codec;
pub mod config;

pub use client::{CdrtoolClient, CdrtoolStats, LatencyHistogram};
pub use config::{CdrtoolConfig, EngineAddress};
