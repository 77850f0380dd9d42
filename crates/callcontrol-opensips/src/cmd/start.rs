//! `start`: the call was answered.

use callcontrol_core::request::{Request, StartRequest};
use callcontrol_core::types::{CallId, DialogId};

use crate::codec::Params;
use crate::error::ProtocolError;

/// `callid` is required. `dialogid` (decimal u64 or `h_entry:h_id`) is
/// optional, and one that does not parse is logged and dropped rather than
/// refused: refusing `start` would leave the call untimed, while without a
/// dialog id the call can still be ended by its Call-ID.
pub(crate) fn parse(p: &Params<'_>) -> Result<Request, ProtocolError> {
    let call_id = p.require("callid")?;
    let dialog_id = match p.get("dialogid") {
        None => None,
        Some(d) => match DialogId::parse(d) {
            Ok(d) => Some(d),
            Err(e) => {
                log::warn!("start with {e}; the call will be ended by its Call-ID ({call_id})");
                None
            }
        },
    };
    Ok(Request::Start(StartRequest {
        call_id: CallId::new(call_id),
        dialog_id,
    }))
}

/// `start\r\ncallid: …\r\ndialogid: <decimal u64>\r\n\r\n` (OpenSIPS ≥ 2.3).
pub(crate) fn write_request(r: &StartRequest, out: &mut Vec<u8>) {
    out.extend_from_slice(b"start\r\ncallid: ");
    out.extend_from_slice(r.call_id.as_str().as_bytes());
    out.extend_from_slice(b"\r\n");
    if let Some(d) = r.dialog_id {
        out.extend_from_slice(b"dialogid: ");
        out.extend_from_slice(d.as_u64().to_string().as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}
