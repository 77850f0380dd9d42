//! `stop`: the dialog ended, for whatever reason.

use callcontrol_core::request::Request;

use super::CallIdField;
use crate::codec::{general_line, Fields};
use crate::error::ProtocolError;

/// `callid` is required.
#[derive(Default)]
pub(crate) struct StopFields<'a>(CallIdField<'a>);

impl<'a> Fields<'a> for StopFields<'a> {
    fn set(&mut self, key: &'a str, value: &'a str) {
        self.0.set(key, value);
    }
    #[inline]
    fn line(&mut self, line: &'a str) -> bool {
        self.0.exact_line(line).is_some() || general_line(self, line)
    }
    fn finish(self) -> Result<Request, ProtocolError> {
        Ok(Request::Stop {
            call_id: self.0.require("stop")?,
        })
    }
}

/// `stop\r\ncallid: …\r\n\r\n`.
pub(crate) fn write_request(call_id: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(b"stop\r\ncallid: ");
    out.extend_from_slice(call_id.as_bytes());
    out.extend_from_slice(b"\r\n\r\n");
}
