//! Fuzzes what comes back from the proxy's management interface: a
//! JSON-RPC / MI datagram or HTTP body (or a plain-text `<code> <message>`
//! error), the dialog lists of OpenSIPS and Kamailio, the outcome of a
//! dialog end, dialog ids and version strings. Nothing may panic.
#![no_main]

use callcontrol_opensips::{jsonrpc, kamailio, mi};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (_, result) = jsonrpc::parse_response(data);
    if let Ok(value) = &result {
        let _ = mi::parse_dialog_list(value);
        let _ = kamailio::parse_dialogs(value);
    }
    let _ = kamailio::classify_end(result);
    let text = String::from_utf8_lossy(data);
    let _ = mi::parse_did(&text);
    let _ = mi::format_for_version(&text);
});
