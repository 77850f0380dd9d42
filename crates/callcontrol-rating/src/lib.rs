//! Rating backends for callcontrol: the fixed-limit backend and the CDRTool
//! rating engine client.
//!
//! # Layout
//!
//! - [`fixed`]: every session gets the configured limit, nothing is debited.
//! - [`cdrtool`]: the CDRTool rating engine client (codec, connections,
//!   `[CDRTool]` config).
//! - [`error`]: this crate's errors (configuration).
//! - [`testkit`] (feature `test-kit`): a fake CDRTool rating engine on TCP,
//!   faithful to its quirks, with a ledger of every charge.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod cdrtool;
pub mod error;
pub mod fixed;
#[cfg(any(test, feature = "test-kit"))]
pub mod testkit;

pub use cdrtool::{CdrtoolClient, CdrtoolConfig};
pub use fixed::FixedLimit;
