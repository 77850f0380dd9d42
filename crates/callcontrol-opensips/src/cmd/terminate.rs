//! `terminate`: an administrator ends a call now.

use callcontrol_core::request::{Found, Request};
use callcontrol_core::types::CallId;

use super::{CallIdCommand, CallIdFields};

/// `callid` is required.
pub(crate) struct Terminate;

impl CallIdCommand for Terminate {
    const NAME: &'static str = "terminate";
    fn request(call_id: CallId) -> Request {
        Request::Terminate { call_id }
    }
}

/// The fields of a `terminate` request.
pub(crate) type TerminateFields<'a> = CallIdFields<'a, Terminate>;

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
