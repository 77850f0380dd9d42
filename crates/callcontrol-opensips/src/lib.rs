//! The OpenSIPS side of callcontrol: the `call_control` socket protocol and
//! server, and the MI client that ends dialogs.
//!
//! # Layout
//!
//! - [`codec`] (with one file per command in `cmd/`): the `call_control`
//!   line protocol without I/O — requests in, replies out, and the client
//!   side of both.
//! - [`server`]: the Unix stream socket server in front of a
//!   [`Handle`](callcontrol_core::driver::Handle).
//! - [`jsonrpc`]: a generic JSON-RPC 2.0 client over a Unix datagram socket
//!   or HTTP (shared with the Kamailio backend).
//! - [`mi`]: the OpenSIPS MI client, a
//!   [`SignallingBackend`](callcontrol_core::signalling::SignallingBackend).
//! - [`testkit`] (feature `test-kit`): a fake OpenSIPS — workers on the
//!   `call_control` socket and a scriptable MI endpoint.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod cmd;
pub mod codec;
pub mod error;
pub mod jsonrpc;
pub mod kamailio;
pub mod mi;
pub mod server;
#[cfg(feature = "test-kit")]
pub mod testkit;

pub use codec::{ClientReply, Decoder, ReplyDecoder};
pub use error::{ProtocolError, ReplyError, RpcError};
pub use mi::{DialogIdFormat, MiClient, MiConfig, MiTransport};
pub use server::{serve, ServerConfig};
