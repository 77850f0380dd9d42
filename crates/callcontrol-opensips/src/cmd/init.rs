//! `init`: may this call proceed, and with what limit?

use callcontrol_core::request::{InitRequest, Request};
use callcontrol_core::types::{CallId, Prepaid};

use super::none_or;
use crate::codec::Params;
use crate::error::ProtocolError;

/// The original requires `callid`, `diverter`, `ruri`, `sourceip` and `from`
/// (OpenSIPS and Kamailio always send them); the rest are optional, and a
/// value that cannot be used falls back the way the original's did:
/// `prepaid` other than true/false is `unknown`, `call_limit` that is not a
/// positive integer is 0 (no limit), `call_token` `None` or empty is none.
pub(crate) fn parse(p: &Params<'_>) -> Result<Request, ProtocolError> {
    // One pass over the lines (this runs for every call); the last of a
    // repeated key wins, as in the original's dict.
    let (mut call_id, mut ruri, mut from, mut source_ip, mut diverter) =
        (None, None, None, None, None);
    let (mut from_tag, mut prepaid, mut call_limit, mut call_token, mut app) =
        (None, None, None, None, None);
    for (k, v) in p.iter() {
        let slot = match k.len() {
            4 if k.eq_ignore_ascii_case("ruri") => &mut ruri,
            4 if k.eq_ignore_ascii_case("from") => &mut from,
            6 if k.eq_ignore_ascii_case("callid") => &mut call_id,
            7 if k.eq_ignore_ascii_case("fromtag") => &mut from_tag,
            7 if k.eq_ignore_ascii_case("prepaid") => &mut prepaid,
            8 if k.eq_ignore_ascii_case("diverter") => &mut diverter,
            8 if k.eq_ignore_ascii_case("sourceip") => &mut source_ip,
            10 if k.eq_ignore_ascii_case("call_limit") => &mut call_limit,
            10 if k.eq_ignore_ascii_case("call_token") => &mut call_token,
            15 if k.eq_ignore_ascii_case("sip_application") => &mut app,
            _ => continue,
        };
        *slot = Some(v);
    }
    let call_id = need(call_id, "callid")?;
    let ruri = need(ruri, "ruri")?;
    let from = need(from, "from")?;
    let source_ip = need(source_ip, "sourceip")?;
    let diverter = none_or(Some(need(diverter, "diverter")?));
    if call_id.is_empty() {
        return Err(ProtocolError::BadValue("callid", String::new(), "init"));
    }
    Ok(Request::Init(InitRequest {
        ruri: ruri.to_string(),
        diverter,
        source_ip: source_ip.to_string(),
        call_id: CallId::new(call_id),
        from: from.to_string(),
        from_tag: from_tag.unwrap_or("").to_string(),
        prepaid: prepaid
            .and_then(|v| Prepaid::parse(v).ok())
            .unwrap_or_default(),
        call_limit: call_limit.and_then(|v| v.parse::<u32>().ok()).unwrap_or(0),
        call_token: none_or(call_token),
        sip_application: none_or(app),
    }))
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
