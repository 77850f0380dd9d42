//! The pieces of the `call-control` daemon and `call-control-cli` that are
//! worth testing as a library: configuration, assembly, the web interface.
//!
//! # Layout
//!
//! - [`ini`], [`config`]: `config.ini` (the original's file, read unchanged,
//!   plus the new settings).
//! - [`logging`]: syslog, stderr or journald-style output for the `log` facade.
//! - [`daemon`]: command-line arguments, assembly of the backends, the socket,
//!   signals, graceful restart; `main.rs` only calls [`daemon::main`].
//! - [`client`]: the admin client used by `call-control-cli`.
//! - [`web`]: the HTTP interface.
#![deny(unsafe_code)]
#![deny(missing_docs)]

pub mod client;
pub mod config;
pub mod daemon;
pub mod fork;
pub mod ini;
pub mod logging;
mod syslog;
pub mod web;
