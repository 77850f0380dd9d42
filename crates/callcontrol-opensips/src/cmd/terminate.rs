//! `terminate`: an administrator ends a call now.

use callcontrol_core::request::{Found, Request};

use super::CallIdField;
use crate::codec::{general_line, Fields};
use crate::error::ProtocolError;

/// `callid` is required.
#[derive(Default)]
pub(crate) struct TerminateFields<'a>(CallIdField<'a>);

impl<'a> Fields<'a> for TerminateFields<'a> {
    fn set(&mut self, key: &'a str, value: &'a str) {
        self.0.set(key, value);
    }
    #[inline]
    fn line(&mut self, line: &'a str) -> bool {
        self.0.exact_line(line).is_some() || general_line(self, line)
    }
    fn finish(self) -> Result<Request, ProtocolError> {
        Ok(Request::Terminate {
            call_id: self.0.require("terminate")?,
        })
    }
}

/// `terminate\r\ncallid: …\r\n\r\n`.
pub(crate) fn write_request(call_id: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(b"terminate\r\ncallid: ");
    out.extend_from_slice(call_id.as_bytes());
    out.extend_from_slice(b"\r\n\r\n");
}

/// As the original: `Ok\r\n\r\n` or `Call id <id> does not exist\r\n\r\n`.
pub(crate) fn write_reply(found: Found, call_id: &str, out: &mut Vec<u8>) {
    match found {
        Found::Ok => out.extend_from_slice(b"Ok\r\n\r\n"),
        Found::NotFound => super::debug::write_no_such_call(call_id, out),
    }
}
