//! `start`: the call was answered.

use callcontrol_core::error::RequestError;
use callcontrol_core::request::{Request, StartRequest};
use callcontrol_core::types::{CallId, DialogId};

use crate::codec::{eq_key, general_line, value_after, Fields};
use crate::error::ProtocolError;

/// `callid` is required. `dialogid` (decimal u64 or `h_entry:h_id`) is
/// optional, and one that does not parse is logged and dropped rather than
/// refused: refusing `start` would leave the call untimed, while without a
/// dialog id the call can still be ended by its Call-ID.
#[derive(Default)]
pub(crate) struct StartFields<'a> {
    call_id: Option<&'a str>,
    dialog_id: Option<&'a str>,
}

impl<'a> Fields<'a> for StartFields<'a> {
    fn set(&mut self, key: &'a str, value: &'a str) {
        if super::is_callid(key) {
            self.call_id = Some(value);
        } else if key.len() == 8 && eq_key(key.as_bytes(), "dialogid") {
            self.dialog_id = Some(value);
        }
    }
    #[inline]
    fn line(&mut self, line: &'a str) -> bool {
        // As OpenSIPS sends them; anything else takes the general split.
        if let Some(v) = value_after(line, "callid:") {
            self.call_id = Some(v);
        } else if let Some(v) = value_after(line, "dialogid:") {
            self.dialog_id = Some(v);
        } else {
            return general_line(self, line);
        }
        true
    }
    fn finish(self) -> Result<Request, ProtocolError> {
        let call_id = self
            .call_id
            .ok_or(ProtocolError::MissingKey("callid", "start"))?;
        let dialog_id = match self.dialog_id {
            None => None,
            Some(d) => match parse_dialog_id(d) {
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
}

/// [`DialogId::parse`], with a shortcut for what OpenSIPS ≥ 2.3 sends: up to
/// 19 decimal digits cannot overflow a u64.
fn parse_dialog_id(s: &str) -> Result<DialogId, RequestError> {
    if (1..=19).contains(&s.len()) {
        let mut v = 0u64;
        for b in s.bytes() {
            let digit = b.wrapping_sub(b'0');
            if digit > 9 {
                return DialogId::parse(s);
            }
            v = v * 10 + u64::from(digit);
        }
        return Ok(DialogId::new((v >> 32) as u32, v as u32));
    }
    DialogId::parse(s)
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
