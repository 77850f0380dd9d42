//! `stop`: the dialog ended, for whatever reason.

use callcontrol_core::request::Request;
use callcontrol_core::types::CallId;

use crate::codec::Params;
use crate::error::ProtocolError;

/// `callid` is required.
pub(crate) fn parse(p: &Params<'_>) -> Result<Request, ProtocolError> {
    Ok(Request::Stop {
        call_id: CallId::new(p.require("callid")?),
    })
}

/// `stop\r\ncallid: …\r\n\r\n`.
pub(crate) fn write_request(call_id: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(b"stop\r\ncallid: ");
    out.extend_from_slice(call_id.as_bytes());
    out.extend_from_slice(b"\r\n\r\n");
}
