//! The OpenSIPS side of callcontrol: the `call_control` socket protocol and
//! server, and the MI client that ends dialogs.
#![forbid(unsafe_code)]
#![deny(missing_docs)]
