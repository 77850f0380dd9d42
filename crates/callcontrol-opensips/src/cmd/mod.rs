//! One file per command (mini-redis `cmd/`): each parses its block into a
//! [`Request`](callcontrol_core::request::Request) and knows how its request
//! and reply look on the wire. None touches a socket.

pub(crate) mod debug;
pub(crate) mod init;
pub(crate) mod start;
pub(crate) mod stop;
pub(crate) mod terminate;

use std::marker::PhantomData;

use callcontrol_core::request::Request;
use callcontrol_core::types::CallId;

use crate::codec::{general_line, Fields};
use crate::error::ProtocolError;

/// `None` (any case) or empty → `None`.
pub(crate) fn none_or(v: Option<&str>) -> Option<String> {
    // What OpenSIPS sends, without trimming again.
    if v == Some("None") {
        return None;
    }
    v.map(str::trim)
        .filter(|v| !v.is_empty() && !v.eq_ignore_ascii_case("none"))
        .map(str::to_string)
}

/// A command whose only key is `callid`, required: `stop` and `terminate`.
pub(crate) trait CallIdCommand {
    /// The command's name, for the error naming it.
    const NAME: &'static str;
    /// Its request for a Call-ID.
    fn request(call_id: CallId) -> Request;
}

/// The fields of a [`CallIdCommand`]: the `callid` (the last one wins).
pub(crate) struct CallIdFields<'a, C>(Option<&'a str>, PhantomData<C>);

impl<C> Default for CallIdFields<'_, C> {
    fn default() -> Self {
        CallIdFields(None, PhantomData)
    }
}

impl<'a, C: CallIdCommand> Fields<'a> for CallIdFields<'a, C> {
    fn set(&mut self, key: &'a str, value: &'a str) {
        if is_callid(key) {
            self.0 = Some(value);
        }
    }
    /// `callid:` and the value, as OpenSIPS sends it, without the general
    /// split.
    #[inline]
    fn line(&mut self, line: &'a str) -> bool {
        match crate::codec::value_after(line, "callid:") {
            Some(value) => {
                self.0 = Some(value);
                true
            }
            None => general_line(self, line),
        }
    }
    fn finish(self) -> Result<Request, ProtocolError> {
        self.0
            .map(|id| C::request(CallId::new(id)))
            .ok_or(ProtocolError::MissingKey("callid", C::NAME))
    }
}

/// Whether a key is `callid` (any case).
pub(crate) fn is_callid(key: &str) -> bool {
    key.len() == 6 && crate::codec::eq_key(key.as_bytes(), "callid")
}
