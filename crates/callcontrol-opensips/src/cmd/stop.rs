//! `stop`: the dialog ended, for whatever reason.

use callcontrol_core::request::Request;
use callcontrol_core::types::CallId;

use super::{CallIdCommand, CallIdFields};

/// `callid` is required.
pub(crate) struct Stop;

impl CallIdCommand for Stop {
    const NAME: &'static str = "stop";
    fn request(call_id: CallId) -> Request {
        Request::Stop { call_id }
    }
}

/// The fields of a `stop` request.
pub(crate) type StopFields<'a> = CallIdFields<'a, Stop>;

/// `stop\r\ncallid: …\r\n\r\n`.
pub(crate) fn write_request(call_id: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(b"stop\r\ncallid: ");
    out.extend_from_slice(call_id.as_bytes());
    out.extend_from_slice(b"\r\n\r\n");
}
