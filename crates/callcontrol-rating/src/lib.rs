//! Rating backends for callcontrol: the fixed-limit backend and the CDRTool
//! rating engine client.
//!
//! # Layout
//!
//! - [`fixed`]: every session gets the configured limit, nothing is debited.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod fixed;

pub use fixed::FixedLimit;
