//! `init`: may this call proceed, and with what limit?

use callcontrol_core::request::{InitRequest, Request};
use callcontrol_core::types::{CallId, Prepaid};

use super::none_or;
use crate::codec::{general_line, value_after, Fields};
use crate::error::ProtocolError;

/// The original requires `callid`, `diverter`, `ruri`, `sourceip` and `from`
/// (OpenSIPS and Kamailio always send them); the rest are optional, and a
/// value that cannot be used falls back the way the original's did:
/// `prepaid` other than true/false is `unknown`, `call_limit` that is not a
/// positive integer is 0 (no limit), `call_token` `None` or empty is none.
#[derive(Default)]
pub(crate) struct InitFields<'a> {
    call_id: Option<&'a str>,
    ruri: Option<&'a str>,
    from: Option<&'a str>,
    source_ip: Option<&'a str>,
    diverter: Option<&'a str>,
    from_tag: Option<&'a str>,
    prepaid: Option<&'a str>,
    call_limit: Option<&'a str>,
    call_token: Option<&'a str>,
    app: Option<&'a str>,
}

impl<'a> Fields<'a> for InitFields<'a> {
    fn set(&mut self, k: &'a str, v: &'a str) {
        // This runs for every line of every call: the keys as OpenSIPS
        // sends them first, then any case.
        let slot = match k.as_bytes() {
            b"ruri" => &mut self.ruri,
            b"diverter" => &mut self.diverter,
            b"sourceip" => &mut self.source_ip,
            b"callid" => &mut self.call_id,
            b"from" => &mut self.from,
            b"fromtag" => &mut self.from_tag,
            b"prepaid" => &mut self.prepaid,
            b"call_limit" => &mut self.call_limit,
            b"call_token" => &mut self.call_token,
            b"sip_application" => &mut self.app,
            _ => match self.slot_any_case(k) {
                Some(slot) => slot,
                None => return,
            },
        };
        *slot = Some(v);
    }

    #[inline]
    fn line(&mut self, line: &'a str) -> bool {
        // The keys exactly as OpenSIPS sends them, told apart by a byte or
        // two; anything else takes the general split.
        macro_rules! exact {
            ($slot:ident, $key:literal) => {
                match value_after(line, $key) {
                    Some(v) => {
                        self.$slot = Some(v);
                        true
                    }
                    None => general_line(self, line),
                }
            };
        }
        let b = line.as_bytes();
        match b.first() {
            Some(b'r') => exact!(ruri, "ruri:"),
            Some(b'd') => exact!(diverter, "diverter:"),
            Some(b's') if b.get(1) == Some(&b'o') => exact!(source_ip, "sourceip:"),
            Some(b's') => exact!(app, "sip_application:"),
            Some(b'p') => exact!(prepaid, "prepaid:"),
            Some(b'f') if b.get(4) == Some(&b':') => exact!(from, "from:"),
            Some(b'f') => exact!(from_tag, "fromtag:"),
            Some(b'c') if b.get(4) == Some(&b'i') => exact!(call_id, "callid:"),
            Some(b'c') if b.get(5) == Some(&b'l') => exact!(call_limit, "call_limit:"),
            Some(b'c') => exact!(call_token, "call_token:"),
            _ => general_line(self, line),
        }
    }

    fn finish(self) -> Result<Request, ProtocolError> {
        let call_id = need(self.call_id, "callid")?;
        let ruri = need(self.ruri, "ruri")?;
        let from = need(self.from, "from")?;
        let source_ip = need(self.source_ip, "sourceip")?;
        let diverter = none_or(Some(need(self.diverter, "diverter")?));
        if call_id.is_empty() {
            return Err(ProtocolError::BadValue("callid", String::new(), "init"));
        }
        Ok(Request::Init(InitRequest {
            ruri: ruri.to_owned(),
            diverter,
            source_ip: source_ip.to_owned(),
            call_id: CallId::new(call_id),
            from: from.to_owned(),
            from_tag: self.from_tag.unwrap_or("").to_owned(),
            prepaid: self.prepaid.map_or(Prepaid::Unknown, parse_prepaid),
            call_limit: self.call_limit.map_or(0, parse_call_limit),
            call_token: none_or(self.call_token),
            sip_application: none_or(self.app),
        }))
    }
}

impl<'a> InitFields<'a> {
    fn slot_any_case(&mut self, k: &str) -> Option<&mut Option<&'a str>> {
        let is = |name: &str| k.eq_ignore_ascii_case(name);
        let first = k.as_bytes().first().map_or(0, u8::to_ascii_lowercase);
        Some(match (k.len(), first) {
            (4, b'r') if is("ruri") => &mut self.ruri,
            (4, b'f') if is("from") => &mut self.from,
            (6, b'c') if is("callid") => &mut self.call_id,
            (7, b'f') if is("fromtag") => &mut self.from_tag,
            (7, b'p') if is("prepaid") => &mut self.prepaid,
            (8, b'd') if is("diverter") => &mut self.diverter,
            (8, b's') if is("sourceip") => &mut self.source_ip,
            (10, b'c') if is("call_limit") => &mut self.call_limit,
            (10, b'c') if is("call_token") => &mut self.call_token,
            (15, b's') if is("sip_application") => &mut self.app,
            _ => return None,
        })
    }
}

/// [`Prepaid::parse`] with what cannot be used as `unknown`; OpenSIPS sends
/// `unknown` unless a `prepaid_account_flag` is configured.
fn parse_prepaid(v: &str) -> Prepaid {
    if v == "unknown" || (v.len() == 7 && v.eq_ignore_ascii_case("unknown")) {
        return Prepaid::Unknown;
    }
    Prepaid::parse(v).unwrap_or_default()
}

/// `call_limit` as a `u32`, 0 when it is not one: up to nine digits
/// (what OpenSIPS sends) cannot overflow, anything else goes to `parse`.
fn parse_call_limit(v: &str) -> u32 {
    if (1..=9).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_digit()) {
        return v.bytes().fold(0, |n, b| n * 10 + u32::from(b - b'0'));
    }
    v.parse::<u32>().unwrap_or(0)
}

fn need<'a>(v: Option<&'a str>, key: &'static str) -> Result<&'a str, ProtocolError> {
    v.ok_or(ProtocolError::MissingKey(key, "init"))
}

/// OpenSIPS's byte layout: fixed field order, `key: value\r\n`, then `\r\n`.
/// `sip_application` (not sent by OpenSIPS) is added last when set.
pub(crate) fn write_request(r: &InitRequest, out: &mut Vec<u8>) {
    let prepaid = match r.prepaid {
        Prepaid::True => "true",
        Prepaid::False => "false",
        Prepaid::Unknown => "unknown",
    };
    let mut kv = |k: &str, v: &str| {
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v.as_bytes());
        out.extend_from_slice(b"\r\n");
    };
    kv("init\r\nruri", &r.ruri);
    kv("diverter", r.diverter.as_deref().unwrap_or("None"));
    kv("sourceip", &r.source_ip);
    kv("callid", r.call_id.as_str());
    kv("from", &r.from);
    kv("fromtag", &r.from_tag);
    kv("prepaid", prepaid);
    kv("call_limit", &r.call_limit.to_string());
    kv("call_token", r.call_token.as_deref().unwrap_or("None"));
    if let Some(app) = &r.sip_application {
        kv("sip_application", app);
    }
    out.extend_from_slice(b"\r\n");
}
