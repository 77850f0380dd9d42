//! `stop`: the dialog ended, for whatever reason.

use callcontrol_core::request::Request;
use callcontrol_core::types::CallId;

use crate::codec::Fields;
use crate::error::ProtocolError;

/// `callid` is required.
#[derive(Default)]
pub(crate) struct StopFields<'a> {
    call_id: Option<&'a str>,
}

impl<'a> Fields<'a> for StopFields<'a> {
    fn set(&mut self, key: &'a str, value: &'a str) {
        if super::is_callid(key) {
            self.call_id = Some(value);
        }
    }
    fn finish(self) -> Result<Request, ProtocolError> {
        let call_id = self
            .call_id
            .ok_or(ProtocolError::MissingKey("callid", "stop"))?;
        Ok(Request::Stop {
            call_id: CallId::new(call_id),
        })
    }
}

/// `stop\r\ncallid: …\r\n\r\n`.
pub(crate) fn write_request(call_id: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(b"stop\r\ncallid: ");
    out.extend_from_slice(call_id.as_bytes());
    out.extend_from_slice(b"\r\n\r\n");
}
