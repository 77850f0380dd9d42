//! One file per command (mini-redis `cmd/`): each parses its block into a
//! [`Request`](callcontrol_core::request::Request) and knows how its request
//! and reply look on the wire. None touches a socket.

pub(crate) mod debug;
pub(crate) mod init;
pub(crate) mod start;
pub(crate) mod stop;
pub(crate) mod terminate;

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

/// The only key of `stop` and `terminate`: `callid`, required.
#[derive(Default)]
pub(crate) struct CallIdField<'a>(Option<&'a str>);

impl<'a> CallIdField<'a> {
    /// Takes `value` if `key` is `callid` (the last one wins).
    pub(crate) fn set(&mut self, key: &'a str, value: &'a str) {
        if is_callid(key) {
            self.0 = Some(value);
        }
    }
    /// Takes the value of a parameter `line` as the `callid` when it is
    /// `callid:` and the value, as OpenSIPS sends it; `None` for any other
    /// line (for the general split).
    #[inline(always)]
    pub(crate) fn exact_line(&mut self, line: &'a str) -> Option<()> {
        self.0 = Some(crate::codec::value_after(line, "callid:")?);
        Some(())
    }
    /// The Call-ID, or the error naming `command`.
    pub(crate) fn require(
        self,
        command: &'static str,
    ) -> Result<callcontrol_core::types::CallId, crate::error::ProtocolError> {
        self.0
            .map(callcontrol_core::types::CallId::new)
            .ok_or(crate::error::ProtocolError::MissingKey("callid", command))
    }
}

/// Whether a key is `callid` (any case).
pub(crate) fn is_callid(key: &str) -> bool {
    key.len() == 6 && crate::codec::eq_key(key.as_bytes(), "callid")
}
