//! Fuzzes what comes back from the proxy's management interface: a
//! JSON-RPC / MI datagram or HTTP body (or a plain-text `<code> <message>`
//! error), the dialog lists of OpenSIPS and Kamailio, the outcome of a
//! dialog end, dialog ids and version strings. Nothing may panic.
#![no_main]

use callcontrol_opensips::testkit::parse_as_every_reply;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| parse_as_every_reply(data));
