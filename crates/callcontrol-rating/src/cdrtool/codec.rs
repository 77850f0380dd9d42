//! The CDRTool rating engine protocol, without I/O (PROTOCOLS.md §5).
//!
//! Requests are one line, `Command Key=Value …`, written in one buffer; the
//! engine has no framing and takes each `read()` as one request. Replies are
//! `\n`-separated lines ending with `\n\n`; [`frame_reply`] finds the end of one
//! and [`parse_max_session_time`], [`parse_debit_balance`] and friends type it.
//!
//! # Value encoding
//!
//! The engine splits a request on whitespace, drops everything after a second
//! `=` in a token and lower-cases every value but `CallId`. A value holding
//! whitespace, `=` or non-ASCII would be split, truncated or mangled, so values
//! are percent-encoded (`%XX`, upper-case hex, of each UTF-8 byte) outside a
//! safe set. Two sets, each applied identically to every request:
//!
//! - `CallId` ([`encode_call_id`]): every byte outside printable ASCII, and
//!   `=` and `%` themselves, so the encoding is injective: two Call-IDs never
//!   share a session key, and `MaxSessionTime` and `DebitBalance` of one call
//!   always do.
//! - URIs and other values ([`encode_value`]): whitespace, control bytes, `=`
//!   and non-ASCII. `%` is left alone because URIs already use `%XX` escapes
//!   (`sip:%2B31…`) that the engine must see unchanged.
//!
//! Ordinary values (`sip:alice@example.com`, `1-1469@127.0.0.1`) contain none
//! of these bytes and go out byte for byte as the original daemon sent them.

use std::fmt::Write as _;

use callcontrol_core::rating::{
    AccountType, Authorisation, AuthoriseRequest, BalanceEntry, DebitOutcome, DebitRequest,
    RatedLimit,
};

/// Largest reply accepted for session requests (the engine's replies are a
/// few hundred bytes; tariff lines included).
pub const MAX_REPLY: usize = 64 * 1024;
/// Largest reply accepted for `GetBalanceHistory`.
pub const MAX_HISTORY_REPLY: usize = 1024 * 1024;

/// The commands this client sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Command {
    /// `MaxSessionTime`: authorise a prepaid session.
    MaxSessionTime,
    /// `DebitBalance`: charge (or release) a session.
    DebitBalance,
    /// `GetBalance`.
    GetBalance,
    /// `AddBalance`.
    AddBalance,
    /// `GetBalanceHistory`.
    GetBalanceHistory,
    /// `KeepAlive` (answers `1`): the reconnect probe.
    KeepAlive,
}

impl Command {
    /// The command word on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Command::MaxSessionTime => "MaxSessionTime",
            Command::DebitBalance => "DebitBalance",
            Command::GetBalance => "GetBalance",
            Command::AddBalance => "AddBalance",
            Command::GetBalanceHistory => "GetBalanceHistory",
            Command::KeepAlive => "KeepAlive",
        }
    }

    /// The largest reply accepted for this command.
    pub fn max_reply(self) -> usize {
        match self {
            Command::GetBalanceHistory => MAX_HISTORY_REPLY,
            _ => MAX_REPLY,
        }
    }
}

/// A reply that is not what the protocol allows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    /// Not a valid reply to the command (garbage, truncated, merged).
    #[error("unexpected reply {0:?}")]
    Unexpected(String),
    /// The engine answered `Error: …`.
    #[error("{0}")]
    Engine(String),
}

/// A value the client refuses to send.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The account is not `user@domain`.
    #[error("invalid account {0:?} (want user@domain)")]
    Account(String),
    /// The amount is not a decimal number.
    #[error("invalid amount {0:?} (want a decimal number such as 10.50)")]
    Amount(String),
}

fn is_call_id_safe(b: u8) -> bool {
    b.is_ascii_graphic() && b != b'=' && b != b'%'
}

fn is_value_safe(b: u8) -> bool {
    // `%` is kept: URIs carry their own %XX escapes.
    b.is_ascii_graphic() && b != b'='
}

fn push_encoded(out: &mut Vec<u8>, value: &str, safe: fn(u8) -> bool) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in value.as_bytes() {
        if safe(b) {
            out.push(b);
        } else {
            out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
        }
    }
}

/// The `CallId` value as sent: see the module docs.
pub fn encode_call_id(call_id: &str) -> String {
    let mut v = Vec::with_capacity(call_id.len());
    push_encoded(&mut v, call_id, is_call_id_safe);
    // Only ASCII was pushed.
    String::from_utf8_lossy(&v).into_owned()
}

/// Any other value as sent (URIs, IPs, `Application`): see the module docs.
pub fn encode_value(value: &str) -> String {
    let mut v = Vec::with_capacity(value.len());
    push_encoded(&mut v, value, is_value_safe);
    String::from_utf8_lossy(&v).into_owned()
}

/// Reverses [`encode_call_id`]/[`encode_value`] (for the fake engine and logs).
/// Malformed escapes are kept as they are.
pub fn decode_value(value: &str) -> String {
    let b = value.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = |c: u8| (c as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn push_key(out: &mut Vec<u8>, key: &str) {
    out.push(b' ');
    out.extend_from_slice(key.as_bytes());
    out.push(b'=');
}

/// The fields shared by `MaxSessionTime` and `DebitBalance`.
struct SessionFields<'a> {
    call_id: &'a str,
    from: &'a str,
    to: &'a str,
    gateway: &'a str,
    duration: u64,
    application: &'a str,
}

/// Writes `command` and the fields in the order
/// `CallId From To Gateway Duration Application`.
fn encode_session(out: &mut Vec<u8>, command: Command, f: SessionFields<'_>) {
    out.clear();
    out.extend_from_slice(command.as_str().as_bytes());
    push_key(out, "CallId");
    push_encoded(out, f.call_id, is_call_id_safe);
    push_key(out, "From");
    push_encoded(out, f.from, is_value_safe);
    push_key(out, "To");
    push_encoded(out, f.to, is_value_safe);
    push_key(out, "Gateway");
    push_encoded(out, f.gateway, is_value_safe);
    push_key(out, "Duration");
    // Always an integer: a non-numeric Duration kills the engine.
    let _ = write!(DigitSink(out), "{}", f.duration);
    push_key(out, "Application");
    let app = if f.application.is_empty() {
        "audio"
    } else {
        f.application
    };
    push_encoded(out, app, is_value_safe);
}

/// `fmt::Write` into a byte buffer.
struct DigitSink<'a>(&'a mut Vec<u8>);
impl std::fmt::Write for DigitSink<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// Encodes `MaxSessionTime` into `out` (cleared first). `State=Connected`,
/// which the original added at the answer, is not sent: current CDRTool
/// ignores it.
pub fn encode_max_session_time(req: &AuthoriseRequest, out: &mut Vec<u8>) {
    let fields = SessionFields {
        call_id: req.call_id.as_str(),
        from: req.party.as_str(),
        to: &req.to,
        gateway: &req.gateway,
        duration: req.max_duration,
        application: &req.application,
    };
    encode_session(out, Command::MaxSessionTime, fields);
}

/// Encodes `DebitBalance` into `out` (cleared first).
pub fn encode_debit_balance(req: &DebitRequest, out: &mut Vec<u8>) {
    let fields = SessionFields {
        call_id: req.call_id.as_str(),
        from: req.party.as_str(),
        to: &req.to,
        gateway: &req.gateway,
        duration: req.duration,
        application: &req.application,
    };
    encode_session(out, Command::DebitBalance, fields);
}

/// `user@domain` for the balance commands: a `sip:`/`sips:` prefix is removed;
/// whitespace, `=` or a missing `@` is refused.
pub fn account(account: &str) -> Result<String, EncodeError> {
    let a = account.trim();
    let a = a
        .strip_prefix("sip:")
        .or_else(|| a.strip_prefix("sips:"))
        .unwrap_or(a);
    let ok = a
        .split_once('@')
        .is_some_and(|(u, d)| !u.is_empty() && !d.is_empty())
        && a.bytes().all(is_value_safe);
    if ok {
        Ok(a.to_string())
    } else {
        Err(EncodeError::Account(account.to_string()))
    }
}

/// Whether `s` is a decimal number: `-?digits[.digits]`.
pub fn is_decimal(s: &str) -> bool {
    let s = s.strip_prefix('-').unwrap_or(s);
    let (int, frac) = match s.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (s, None),
    };
    !int.is_empty()
        && int.bytes().all(|b| b.is_ascii_digit())
        && frac.is_none_or(|f| !f.is_empty() && f.bytes().all(|b| b.is_ascii_digit()))
}

/// Encodes `GetBalance From=user@domain`.
pub fn encode_get_balance(acct: &str, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let a = account(acct)?;
    out.clear();
    out.extend_from_slice(b"GetBalance From=");
    out.extend_from_slice(a.as_bytes());
    Ok(())
}

/// Encodes `AddBalance From=user@domain Value=<decimal>`.
pub fn encode_add_balance(acct: &str, amount: &str, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let a = account(acct)?;
    let amount = amount.trim();
    if !is_decimal(amount) {
        return Err(EncodeError::Amount(amount.to_string()));
    }
    out.clear();
    out.extend_from_slice(b"AddBalance From=");
    out.extend_from_slice(a.as_bytes());
    out.extend_from_slice(b" Value=");
    out.extend_from_slice(amount.as_bytes());
    Ok(())
}

/// Encodes `GetBalanceHistory From=user@domain`.
pub fn encode_get_balance_history(acct: &str, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let a = account(acct)?;
    out.clear();
    out.extend_from_slice(b"GetBalanceHistory From=");
    out.extend_from_slice(a.as_bytes());
    Ok(())
}

/// Encodes `KeepAlive`.
pub fn encode_keepalive(out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(b"KeepAlive");
}

/// Where the reply in a receive buffer stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame {
    /// Keep reading.
    Incomplete,
    /// A whole reply: its text is `buf[start..end]` (leading `\n` skipped,
    /// the final `\n\n` excluded).
    Complete {
        /// First byte of the reply.
        start: usize,
        /// End of the reply text.
        end: usize,
    },
}

/// Finds one whole reply in `buf`: the engine ends a reply with `\n\n` and
/// may leave a stray `\n` before the next one (`Failed\n\n\n`), so leading
/// `\n`/`\r` are skipped and the reply is complete when the buffer ends with
/// `\n\n`. One request is in flight per connection, so whatever follows can
/// only be more of the same reply.
pub fn frame_reply(buf: &[u8]) -> Frame {
    let start = buf
        .iter()
        .position(|&b| b != b'\n' && b != b'\r')
        .unwrap_or(buf.len());
    let rest = &buf[start..];
    if rest.is_empty() {
        return Frame::Incomplete;
    }
    let trimmed = rest
        .iter()
        .rposition(|&b| b != b'\n' && b != b'\r')
        .map_or(0, |p| p + 1);
    let tail = &rest[trimmed..];
    let newlines = tail.iter().filter(|&&b| b == b'\n').count();
    if newlines >= 2 {
        Frame::Complete {
            start,
            end: start + trimmed,
        }
    } else {
        Frame::Incomplete
    }
}

fn lines(body: &str) -> impl Iterator<Item = &str> {
    body.lines().map(str::trim).filter(|l| !l.is_empty())
}

fn engine_error(first: &str) -> Option<String> {
    let lower = first.to_ascii_lowercase();
    lower.starts_with("error").then(|| {
        let rest = first[5..].trim_start_matches([':', ' ']).trim();
        if rest.is_empty() {
            "Error".to_string()
        } else {
            rest.to_string()
        }
    })
}

/// A whole number of seconds: digits, optionally with a fraction (floored).
fn seconds(s: &str) -> Option<u64> {
    if !is_decimal(s) || s.starts_with('-') {
        return None;
    }
    s.split('.').next()?.parse().ok()
}

/// Types a `MaxSessionTime` reply: a limit (seconds, `none`, `Locked`) and the
/// optional `type=prepaid|postpaid` line; other lines are ignored.
pub fn parse_max_session_time(body: &str) -> Result<Authorisation, ReplyError> {
    let mut it = lines(body);
    let first = it
        .next()
        .ok_or_else(|| ReplyError::Unexpected(body.to_string()))?;
    if let Some(e) = engine_error(first) {
        return Err(ReplyError::Engine(e));
    }
    let limit = if first.eq_ignore_ascii_case("none") {
        RatedLimit::Unlimited
    } else if first.eq_ignore_ascii_case("locked") {
        RatedLimit::Locked
    } else if let Some(n) = seconds(first) {
        RatedLimit::Seconds(n)
    } else {
        return Err(ReplyError::Unexpected(body.to_string()));
    };
    let mut account = None;
    for line in it {
        if let Some((k, v)) = line.split_once('=') {
            if k.trim().eq_ignore_ascii_case("type") {
                account = match v.trim().to_ascii_lowercase().as_str() {
                    "prepaid" => Some(AccountType::Prepaid),
                    "postpaid" => Some(AccountType::Postpaid),
                    _ => return Err(ReplyError::Unexpected(body.to_string())),
                };
            }
        }
    }
    Ok(Authorisation { limit, account })
}

/// Types a `DebitBalance` reply. `Ok` carries `MaxSessionTime=<n>` and the
/// price (kept as the decimal string the engine wrote); tariff lines are
/// ignored. `Error: …` is returned as [`ReplyError::Engine`], which the client
/// reports as undelivered so the debit is retried.
pub fn parse_debit_balance(body: &str) -> Result<DebitOutcome, ReplyError> {
    let mut it = lines(body);
    let first = it
        .next()
        .ok_or_else(|| ReplyError::Unexpected(body.to_string()))?;
    if let Some(e) = engine_error(first) {
        return Err(ReplyError::Engine(e));
    }
    match first.to_ascii_lowercase().as_str() {
        "ok" => {}
        "failed" => {
            return Ok(DebitOutcome::Failed {
                reason: first.to_string(),
            })
        }
        "not prepaid" => return Ok(DebitOutcome::NotPrepaid),
        _ => return Err(ReplyError::Unexpected(body.to_string())),
    }
    let mut max_session_time = None;
    let mut price = None;
    for line in it {
        if let Some((k, v)) = line.split_once('=') {
            if k.trim().eq_ignore_ascii_case("maxsessiontime") {
                max_session_time = seconds(v.trim());
                if max_session_time.is_none() {
                    return Err(ReplyError::Unexpected(body.to_string()));
                }
            }
        } else if price.is_none() && is_decimal(line) {
            // The first bare number after `Ok` is the price; tariff lines
            // (`Duration: 60 s`, `Price: …`) are not bare numbers.
            price = Some(line.to_string());
        }
    }
    Ok(DebitOutcome::Debited {
        max_session_time,
        price,
    })
}

/// Types a `GetBalance` reply: the balance as a decimal string.
pub fn parse_get_balance(body: &str) -> Result<String, ReplyError> {
    let first = lines(body)
        .next()
        .ok_or_else(|| ReplyError::Unexpected(body.to_string()))?;
    if let Some(e) = engine_error(first) {
        return Err(ReplyError::Engine(e));
    }
    // Lenient: `10.0000`, or `Balance=10.0000`.
    let v = first.split_once('=').map_or(first, |(_, v)| v).trim();
    if is_decimal(v) {
        Ok(v.to_string())
    } else {
        Err(ReplyError::Unexpected(body.to_string()))
    }
}

/// Types an `AddBalance` reply: `Some(balance)` when the engine wrote the new
/// balance, `None` for a bare `Ok` (the caller then asks `GetBalance`).
pub fn parse_add_balance(body: &str) -> Result<Option<String>, ReplyError> {
    let first = lines(body)
        .next()
        .ok_or_else(|| ReplyError::Unexpected(body.to_string()))?;
    if let Some(e) = engine_error(first) {
        return Err(ReplyError::Engine(e));
    }
    if first.eq_ignore_ascii_case("ok") {
        return Ok(None);
    }
    let v = first.split_once('=').map_or(first, |(_, v)| v).trim();
    if is_decimal(v) {
        Ok(Some(v.to_string()))
    } else if first.eq_ignore_ascii_case("failed") {
        Err(ReplyError::Engine(first.to_string()))
    } else {
        Err(ReplyError::Unexpected(body.to_string()))
    }
}

/// Types a `GetBalanceHistory` reply, leniently: the engine's format is not
/// part of the observed contract. Accepted: a JSON array of objects (each
/// object one entry, values as strings), or one entry per line of
/// `key=value` / `key: value` tokens; any other line becomes an entry with
/// the single field `("line", text)`.
pub fn parse_balance_history(body: &str) -> Result<Vec<BalanceEntry>, ReplyError> {
    let text = body.trim();
    if let Some(e) = lines(text).next().and_then(engine_error) {
        return Err(ReplyError::Engine(e));
    }
    if text.starts_with('[') || text.starts_with('{') {
        let v: serde_json::Value =
            serde_json::from_str(text).map_err(|_| ReplyError::Unexpected(truncate(body)))?;
        let items = match v {
            serde_json::Value::Array(a) => a,
            serde_json::Value::Object(o) => o.into_iter().map(|(_, v)| v).collect(),
            _ => return Err(ReplyError::Unexpected(truncate(body))),
        };
        return Ok(items
            .into_iter()
            .map(|item| match item {
                serde_json::Value::Object(o) => BalanceEntry {
                    fields: o.into_iter().map(|(k, v)| (k, json_text(v))).collect(),
                },
                other => BalanceEntry {
                    fields: vec![("line".into(), json_text(other))],
                },
            })
            .collect());
    }
    Ok(lines(text)
        .map(|line| {
            let kv: Vec<(String, String)> = if line.contains('=') {
                line.split_whitespace()
                    .filter_map(|t| t.split_once('='))
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect()
            } else if let Some((k, v)) = line.split_once(": ") {
                vec![(k.trim().to_string(), v.trim().to_string())]
            } else {
                Vec::new()
            };
            if kv.is_empty() {
                BalanceEntry {
                    fields: vec![("line".into(), line.to_string())],
                }
            } else {
                BalanceEntry { fields: kv }
            }
        })
        .collect())
}

fn json_text(v: serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s,
        serde_json::Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(200).collect()
}

/// Whether `KeepAlive` was answered (`1`).
pub fn parse_keepalive(body: &str) -> Result<(), ReplyError> {
    match lines(body).next() {
        Some("1") => Ok(()),
        _ => Err(ReplyError::Unexpected(body.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use callcontrol_core::types::{BillingParty, CallId};

    fn auth(call_id: &str) -> AuthoriseRequest {
        AuthoriseRequest {
            call_id: CallId::new(call_id),
            party: BillingParty::new("sip:alice@example.com"),
            to: "sip:0031201234567@example.com".into(),
            gateway: "127.0.0.1".into(),
            max_duration: 36000,
            application: "audio".into(),
            connected: false,
        }
    }

    fn debit(call_id: &str, duration: u64) -> DebitRequest {
        DebitRequest {
            call_id: CallId::new(call_id),
            party: BillingParty::new("sip:alice@example.com"),
            to: "sip:0031201234567@example.com".into(),
            gateway: "127.0.0.1".into(),
            duration,
            application: "audio".into(),
        }
    }

    fn complete(buf: &[u8]) -> &str {
        match frame_reply(buf) {
            Frame::Complete { start, end } => std::str::from_utf8(&buf[start..end]).unwrap(),
            Frame::Incomplete => panic!("incomplete: {buf:?}"),
        }
    }

    #[test]
    fn encodes_the_observed_max_session_time_request() {
        let mut out = Vec::new();
        encode_max_session_time(&auth("b1@h"), &mut out);
        assert_eq!(
            out,
            b"MaxSessionTime CallId=b1@h From=sip:alice@example.com \
              To=sip:0031201234567@example.com Gateway=127.0.0.1 Duration=36000 Application=audio"
        );
    }

    #[test]
    fn encodes_the_observed_debit_balance_request() {
        let mut out = Vec::new();
        encode_debit_balance(&debit("b1@h", 60), &mut out);
        assert_eq!(
            out,
            b"DebitBalance CallId=b1@h From=sip:alice@example.com \
              To=sip:0031201234567@example.com Gateway=127.0.0.1 Duration=60 Application=audio"
        );
    }

    #[test]
    fn call_ids_the_engine_would_mangle_are_percent_encoded_the_same_in_both_requests() {
        let id = "a=b c\td%é@h";
        assert_eq!(encode_call_id(id), "a%3Db%20c%09d%25%C3%A9@h");
        let (mut a, mut d) = (Vec::new(), Vec::new());
        encode_max_session_time(&auth(id), &mut a);
        encode_debit_balance(&debit(id, 5), &mut d);
        let key = |v: &[u8]| {
            let s = String::from_utf8(v.to_vec()).unwrap();
            s.split_whitespace()
                .find(|t| t.starts_with("CallId="))
                .unwrap()
                .to_string()
        };
        assert_eq!(key(&a), key(&d));
        assert_eq!(key(&a), "CallId=a%3Db%20c%09d%25%C3%A9@h");
        // Every token is Key=Value with exactly one `=`: nothing to split or truncate.
        for v in [&a, &d] {
            let s = String::from_utf8(v.clone()).unwrap();
            assert!(s.is_ascii());
            let tokens: Vec<&str> = s.split_whitespace().collect();
            assert_eq!(tokens.len(), 7);
            assert!(
                tokens[1..].iter().all(|t| t.matches('=').count() == 1),
                "{s}"
            );
        }
        assert_eq!(decode_value(&encode_call_id(id)), id);
    }

    #[test]
    fn uris_keep_their_own_escapes_but_lose_whitespace_and_equals() {
        assert_eq!(
            encode_value("sip:%2B31@example.com"),
            "sip:%2B31@example.com"
        );
        assert_eq!(
            encode_value("sip:1 2@x;user=phone"),
            "sip:1%202@x;user%3Dphone"
        );
        assert_eq!(encode_value("sip:jöe@x"), "sip:j%C3%B6e@x");
    }

    #[test]
    fn the_request_is_one_line_without_terminator() {
        let mut out = Vec::new();
        encode_max_session_time(&auth("x\r\ny"), &mut out);
        assert!(!out.contains(&b'\n') && !out.contains(&b'\r'));
    }

    #[test]
    fn frames_a_reply_at_the_double_newline_and_skips_stray_newlines() {
        assert_eq!(frame_reply(b""), Frame::Incomplete);
        assert_eq!(frame_reply(b"\n"), Frame::Incomplete);
        assert_eq!(frame_reply(b"6000\ntype=prepaid\n"), Frame::Incomplete);
        assert_eq!(frame_reply(b"6000\ntype=prep"), Frame::Incomplete);
        assert_eq!(complete(b"6000\ntype=prepaid\n\n"), "6000\ntype=prepaid");
        assert_eq!(complete(b"Failed\n\n\n"), "Failed");
        // The stray `\n` of the previous `Failed\n\n\n` arriving first.
        assert_eq!(complete(b"\n6000\ntype=prepaid\n\n"), "6000\ntype=prepaid");
        assert_eq!(complete(b"Ok\r\n\r\n"), "Ok");
    }

    #[test]
    fn parses_max_session_time_replies() {
        let p = |s: &[u8]| parse_max_session_time(complete(s));
        assert_eq!(
            p(b"6000\ntype=prepaid\n\n"),
            Ok(Authorisation::prepaid(6000))
        );
        assert_eq!(
            p(b"none\ntype=postpaid\n\n"),
            Ok(Authorisation {
                limit: RatedLimit::Unlimited,
                account: Some(AccountType::Postpaid)
            })
        );
        assert_eq!(p(b"0\ntype=prepaid\n\n"), Ok(Authorisation::prepaid(0)));
        assert_eq!(
            p(b"Locked\ntype=prepaid\n\n"),
            Ok(Authorisation {
                limit: RatedLimit::Locked,
                account: Some(AccountType::Prepaid)
            })
        );
        assert_eq!(p(b"None\n\n").map(|a| a.limit), Ok(RatedLimit::Unlimited));
        assert_eq!(
            p(b"Error: Missing From parameter\n\n"),
            Err(ReplyError::Engine("Missing From parameter".into()))
        );
        assert!(matches!(
            p(b"HTTP/1.1 400 Bad\n\n"),
            Err(ReplyError::Unexpected(_))
        ));
        assert!(matches!(
            p(b"-5\ntype=prepaid\n\n"),
            Err(ReplyError::Unexpected(_))
        ));
        assert!(matches!(
            p(b"60\ntype=weird\n\n"),
            Err(ReplyError::Unexpected(_))
        ));
        assert!(matches!(
            parse_max_session_time(""),
            Err(ReplyError::Unexpected(_))
        ));
        // Extra lines are ignored.
        assert_eq!(
            p(b"120\nfoo: bar\ntype=prepaid\n\n"),
            Ok(Authorisation::prepaid(120))
        );
    }

    #[test]
    fn parses_debit_balance_replies() {
        let p = |s: &[u8]| parse_debit_balance(complete(s));
        assert_eq!(
            p(b"Ok\nMaxSessionTime=5940\n0.1000\nDuration: 60 s\n   App: audio\n       Price: 0.1000\n\n"),
            Ok(DebitOutcome::Debited { max_session_time: Some(5940), price: Some("0.1000".into()) })
        );
        assert_eq!(
            p(b"Ok\nMaxSessionTime=0\n0.0000\n\n"),
            Ok(DebitOutcome::Debited {
                max_session_time: Some(0),
                price: Some("0.0000".into())
            })
        );
        assert_eq!(
            p(b"Ok\n\n"),
            Ok(DebitOutcome::Debited {
                max_session_time: None,
                price: None
            })
        );
        assert_eq!(
            p(b"Failed\n\n\n"),
            Ok(DebitOutcome::Failed {
                reason: "Failed".into()
            })
        );
        assert_eq!(p(b"Not prepaid\n\n"), Ok(DebitOutcome::NotPrepaid));
        assert!(matches!(
            p(b"Error: database down\n\n"),
            Err(ReplyError::Engine(_))
        ));
        assert!(matches!(p(b"0\n\n"), Err(ReplyError::Unexpected(_))));
        assert!(matches!(
            p(b"Ok\nMaxSessionTime=abc\n\n"),
            Err(ReplyError::Unexpected(_))
        ));
    }

    #[test]
    fn balance_requests_and_replies() {
        let mut out = Vec::new();
        encode_get_balance("sip:alice@example.com", &mut out).unwrap();
        assert_eq!(out, b"GetBalance From=alice@example.com");
        encode_add_balance("alice@example.com", "10.50", &mut out).unwrap();
        assert_eq!(out, b"AddBalance From=alice@example.com Value=10.50");
        assert!(encode_add_balance("alice@example.com", "1e3", &mut out).is_err());
        assert!(encode_add_balance("alice@example.com", "10,5", &mut out).is_err());
        assert!(encode_get_balance("alice example.com", &mut out).is_err());
        assert!(encode_get_balance("alice@ex ample.com", &mut out).is_err());
        assert!(encode_get_balance("a=b@x", &mut out).is_err());
        assert_eq!(parse_get_balance("10.0000"), Ok("10.0000".into()));
        assert_eq!(parse_get_balance("Balance=-1.5"), Ok("-1.5".into()));
        assert!(parse_get_balance("lots").is_err());
        assert_eq!(parse_add_balance("Ok"), Ok(None));
        assert_eq!(parse_add_balance("20.5000"), Ok(Some("20.5000".into())));
        assert!(parse_add_balance("Error: no such account").is_err());
    }

    #[test]
    fn balance_history_is_parsed_leniently() {
        let json = r#"[{"date":"2024-01-01 10:00:00","action":"Debit balance","value":"-0.1000","balance":"9.9000"}]"#;
        let h = parse_balance_history(json).unwrap();
        assert_eq!(h.len(), 1);
        assert!(h[0].fields.contains(&("value".into(), "-0.1000".into())));
        let h = parse_balance_history("date=2024-01-01 value=1.00\nsomething else").unwrap();
        assert_eq!(
            h[0].fields,
            vec![
                ("date".into(), "2024-01-01".into()),
                ("value".into(), "1.00".into())
            ]
        );
        assert_eq!(h[1].fields, vec![("line".into(), "something else".into())]);
        assert!(parse_balance_history("[not json").is_err());
        assert_eq!(parse_balance_history("").unwrap(), vec![]);
    }

    #[test]
    fn decimals() {
        for ok in ["0", "10", "10.5", "-0.1000"] {
            assert!(is_decimal(ok), "{ok}");
        }
        for bad in ["", "-", ".5", "5.", "1e3", "1.2.3", "NaN", "+1"] {
            assert!(!is_decimal(bad), "{bad}");
        }
    }
}
