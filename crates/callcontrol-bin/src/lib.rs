//! The pieces of the `call-control` daemon and `call-control-cli` that are
//! worth testing as a library: configuration, assembly, the web interface.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod web;
