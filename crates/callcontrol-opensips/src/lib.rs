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
//!
//! # Testing and benchmarking
//!
//! `cargo test -p callcontrol-opensips` runs the codec's unit and property
//! tests and the socket tests (real Unix sockets, the real engine driver,
//! the fake OpenSIPS). The codec also has a `cargo fuzz` target outside the
//! workspace: `cd fuzz && cargo +nightly fuzz run codec`. The load generator
//! `cargo run --release -p callcontrol-opensips --example loadgen` reports
//! calls/s, latency percentiles and CPU per call (see its docs).
#![deny(unsafe_code)]
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
