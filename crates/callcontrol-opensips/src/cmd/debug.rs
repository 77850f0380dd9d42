//! `debug`: the admin views, `show: sessions` (optionally `user: <prefix>`)
//! and `show: session` + `callid`.
//!
//! The reply format is the original's (AG Projects callcontrol,
//! `controller.py` `_CC_debug`): the lines joined by `\r\n`, then `\r\n`,
//! then the line end of `sendLine` — so every reply ends `\r\n\r\n` and an
//! empty list is exactly `\r\n\r\n`. A list line is
//! `Call id <id> of <user> to <ruri>: <status>`; we append
//! ` (limit N s, elapsed N s, remaining N s)` with whatever is known, and the
//! status may also be `ending`/`end-failed` (a dialog the proxy has not
//! confirmed ending). `show: session` gives `key: value` lines, like the
//! original's dump of its call object (Python-style `None`/`True`/`False`,
//! times as Unix seconds), in a fixed order; an unknown Call-ID gives
//! `Call id <id> does not exist`.

use std::fmt::Write as _;

use serde::Serialize;

use callcontrol_core::request::{ListQuery, Request};
use callcontrol_core::session::SessionInfo;
use callcontrol_core::types::{CallId, DialogId, SessionState, Timestamp};

use super::none_or;
use crate::codec::{eq_key, Fields};
use crate::error::ProtocolError;

/// `show` is `sessions` or `session` (any case); `session` needs `callid`.
#[derive(Default)]
pub(crate) struct DebugFields<'a> {
    show: Option<&'a str>,
    user: Option<&'a str>,
    call_id: Option<&'a str>,
}

impl<'a> Fields<'a> for DebugFields<'a> {
    fn set(&mut self, key: &'a str, value: &'a str) {
        let slot = if eq_key(key.as_bytes(), "show") {
            &mut self.show
        } else if eq_key(key.as_bytes(), "user") {
            &mut self.user
        } else if super::is_callid(key) {
            &mut self.call_id
        } else {
            return;
        };
        *slot = Some(value);
    }

    fn finish(self) -> Result<Request, ProtocolError> {
        let show = self
            .show
            .ok_or(ProtocolError::MissingKey("show", "debug"))?;
        if show.eq_ignore_ascii_case("sessions") {
            Ok(Request::List {
                user: none_or(self.user),
            })
        } else if show.eq_ignore_ascii_case("session") {
            let call_id = self
                .call_id
                .ok_or(ProtocolError::MissingKey("callid", "debug"))?;
            if call_id.is_empty() {
                return Err(ProtocolError::MissingKey("callid", "debug"));
            }
            Ok(Request::Show {
                call_id: CallId::new(call_id),
            })
        } else {
            Err(ProtocolError::BadValue("show", show.to_string(), "debug"))
        }
    }
}

pub(crate) fn write_request(r: &Request, out: &mut Vec<u8>) {
    match r {
        Request::List { user } | Request::Page(ListQuery { user, .. }) => {
            out.extend_from_slice(b"debug\r\nshow: sessions\r\n");
            if let Some(u) = user {
                out.extend_from_slice(format!("user: {u}\r\n").as_bytes());
            }
        }
        Request::Show { call_id } => {
            out.extend_from_slice(
                format!("debug\r\nshow: session\r\ncallid: {call_id}\r\n").as_bytes(),
            );
        }
        _ => {}
    }
    out.extend_from_slice(b"\r\n");
}

pub(crate) fn write_no_such_call(call_id: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(b"Call id ");
    out.extend_from_slice(call_id.as_bytes());
    out.extend_from_slice(b" does not exist\r\n\r\n");
}

pub(crate) fn write_list(list: &[SessionInfo], out: &mut Vec<u8>) {
    write_list_rows(list, true, out);
    write_list_end(out);
}

/// Appends list lines, for a reply streamed page by page: `first` is
/// whether these are the reply's first rows (every later row is preceded by
/// the `\r\n` that joins it to the one before). End with [`write_list_end`].
pub(crate) fn write_list_rows(list: &[SessionInfo], first: bool, out: &mut Vec<u8>) {
    let mut s = String::new();
    for (i, info) in list.iter().enumerate() {
        if i > 0 || !first {
            s.push_str("\r\n");
        }
        SessionRow::from(info).write(&mut s);
    }
    out.extend_from_slice(s.as_bytes());
}

/// Ends a list reply (an empty list is just this).
pub(crate) fn write_list_end(out: &mut Vec<u8>) {
    out.extend_from_slice(b"\r\n\r\n");
}

pub(crate) fn write_show(info: Option<&SessionInfo>, call_id: &str, out: &mut Vec<u8>) {
    let Some(i) = info else {
        return write_no_such_call(call_id, out);
    };
    let opt = |v: Option<String>| v.unwrap_or_else(|| "None".into());
    let fields: [(&str, String); 17] = [
        ("callid", i.call_id.to_string()),
        ("user", i.user.clone()),
        ("from", i.from.clone()),
        ("fromtag", i.from_tag.clone()),
        ("ruri", i.ruri.clone()),
        ("diverter", opt(i.diverter.clone())),
        ("sourceip", i.source_ip.clone()),
        ("token", opt(i.token.clone())),
        ("prepaid", if i.prepaid { "True" } else { "False" }.into()),
        ("call_limit", i.call_limit.to_string()),
        ("status", i.state.as_str().into()),
        ("timelimit", opt(i.limit.map(|l| l.to_string()))),
        ("dialogid", opt(i.dialog_id.map(|d| d.to_string()))),
        ("created", secs(i.created)),
        ("starttime", opt(i.answered.map(secs))),
        ("elapsed", opt(i.elapsed.map(|l| l.to_string()))),
        ("remaining", opt(i.remaining.map(|l| l.to_string()))),
    ];
    let mut s = String::new();
    for (k, v) in fields {
        let _ = write!(s, "{k}: {v}\r\n");
    }
    s.push_str("\r\n");
    out.extend_from_slice(s.as_bytes());
}

fn secs(t: Timestamp) -> String {
    format!("{}.{:03}", t.0 / 1000, t.0 % 1000)
}

fn parse_secs(s: &str) -> Option<Timestamp> {
    let (whole, frac) = s.split_once('.').unwrap_or((s, "0"));
    let ms: u64 = format!("{frac:0<3}").get(..3)?.parse().ok()?;
    let ms = whole
        .parse::<u64>()
        .ok()?
        .checked_mul(1000)?
        .checked_add(ms)?;
    Some(Timestamp(ms))
}

/// One line of the session list, parsed back (the CLI's `--json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SessionRow {
    /// SIP Call-ID.
    pub call_id: String,
    /// Billing party, `user@host`.
    pub user: String,
    /// R-URI.
    pub ruri: String,
    /// `pending`, `in-progress`, `ending` or `end-failed`.
    pub state: String,
    /// Limit in seconds, when known.
    pub limit: Option<u64>,
    /// Seconds since the answer, when answered.
    pub elapsed: Option<u64>,
    /// Seconds left, when in progress with a limit.
    pub remaining: Option<u64>,
}

impl From<&SessionInfo> for SessionRow {
    fn from(i: &SessionInfo) -> Self {
        SessionRow {
            call_id: i.call_id.to_string(),
            user: i.user.clone(),
            ruri: i.ruri.clone(),
            state: i.state.as_str().to_string(),
            limit: i.limit,
            elapsed: i.elapsed,
            remaining: i.remaining,
        }
    }
}

impl SessionRow {
    fn write(&self, s: &mut String) {
        let _ = write!(
            s,
            "Call id {} of {} to {}: {}",
            self.call_id, self.user, self.ruri, self.state
        );
        let mut extras = Vec::new();
        if let Some(l) = self.limit {
            extras.push(format!("limit {l} s"));
        }
        if let Some(e) = self.elapsed {
            extras.push(format!("elapsed {e} s"));
        }
        if let Some(r) = self.remaining {
            extras.push(format!("remaining {r} s"));
        }
        if !extras.is_empty() {
            let _ = write!(s, " ({})", extras.join(", "));
        }
    }

    /// Parses a list line (ours, or the original's without the extras).
    pub fn parse(line: &str) -> Option<SessionRow> {
        let rest = line.trim().strip_prefix("Call id ")?;
        let (call_id, rest) = rest.split_once(" of ")?;
        let (user, rest) = rest.split_once(" to ")?;
        let (ruri, tail) = rest.rsplit_once(": ")?;
        let (state, extras) = match tail.split_once(" (") {
            Some((s, e)) => (s, e.trim_end_matches(')')),
            None => (tail, ""),
        };
        let mut row = SessionRow {
            call_id: call_id.into(),
            user: user.into(),
            ruri: ruri.into(),
            state: state.trim().into(),
            limit: None,
            elapsed: None,
            remaining: None,
        };
        for part in extras.split(", ").filter(|p| !p.is_empty()) {
            let mut words = part.split(' ');
            let (Some(name), Some(n)) = (words.next(), words.next()) else {
                continue;
            };
            let n = n.parse().ok();
            match name {
                "limit" => row.limit = n,
                "elapsed" => row.elapsed = n,
                "remaining" => row.remaining = n,
                _ => {}
            }
        }
        Some(row)
    }
}

/// Rebuilds a [`SessionInfo`] from the `key: value` lines of a
/// `show: session` reply written by this crate; `None` if a required field is
/// missing.
pub fn session_from_fields(fields: &[(String, String)]) -> Option<SessionInfo> {
    let get = |k: &str| {
        fields
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(k))
            .map(|(_, v)| v.as_str())
            .filter(|v| *v != "None")
    };
    let num = |k: &str| get(k).and_then(|v| v.parse::<u64>().ok());
    let state = match get("status")? {
        "pending" => SessionState::Pending,
        "in-progress" => SessionState::InProgress,
        "ending" => SessionState::Ending,
        "end-failed" => SessionState::EndFailed,
        _ => SessionState::Ended,
    };
    Some(SessionInfo {
        call_id: CallId::new(get("callid")?),
        user: get("user").unwrap_or_default().into(),
        from: get("from").unwrap_or_default().into(),
        from_tag: get("fromtag").unwrap_or_default().into(),
        ruri: get("ruri").unwrap_or_default().into(),
        diverter: get("diverter").map(str::to_string),
        source_ip: get("sourceip").unwrap_or_default().into(),
        token: get("token").map(str::to_string),
        prepaid: get("prepaid") == Some("True"),
        call_limit: num("call_limit").unwrap_or(0) as u32,
        state,
        limit: num("timelimit"),
        dialog_id: get("dialogid").and_then(|d| DialogId::parse(d).ok()),
        created: get("created").and_then(parse_secs).unwrap_or_default(),
        answered: get("starttime").and_then(parse_secs),
        elapsed: num("elapsed"),
        remaining: num("remaining"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> SessionInfo {
        SessionInfo {
            call_id: CallId::new("c1@h"),
            user: "alice@example.com".into(),
            from: "\"A\" <sip:alice@example.com>".into(),
            from_tag: "t1".into(),
            ruri: "sip:bob@example.com:5060".into(),
            diverter: None,
            source_ip: "10.0.0.1".into(),
            token: Some("tok".into()),
            prepaid: true,
            call_limit: 2,
            state: SessionState::InProgress,
            limit: Some(600),
            dialog_id: Some(DialogId::new(2587, 1107755007)),
            created: Timestamp(1_700_000_000_123),
            answered: Some(Timestamp(1_700_000_001_000)),
            elapsed: Some(12),
            remaining: Some(588),
        }
    }

    #[test]
    fn list_lines_round_trip() {
        let mut out = Vec::new();
        write_list(&[info()], &mut out);
        assert_eq!(
            out,
            b"Call id c1@h of alice@example.com to sip:bob@example.com:5060: in-progress \
              (limit 600 s, elapsed 12 s, remaining 588 s)\r\n\r\n"
        );
        let line = std::str::from_utf8(&out).unwrap().lines().next().unwrap();
        assert_eq!(SessionRow::parse(line), Some(SessionRow::from(&info())));
        let orig = SessionRow::parse("Call id x of a@b to sip:c@d: pending").unwrap();
        assert_eq!(orig.state, "pending");
        assert_eq!(orig.ruri, "sip:c@d");
    }

    #[test]
    fn a_list_streamed_in_pages_is_byte_identical_to_the_whole() {
        let rows: Vec<SessionInfo> = (0..5)
            .map(|i| SessionInfo {
                call_id: CallId::new(format!("c{i}")),
                ..info()
            })
            .collect();
        for n in 0..=rows.len() {
            let mut whole = Vec::new();
            write_list(&rows[..n], &mut whole);
            for size in 1..=3 {
                let mut streamed = Vec::new();
                for (k, chunk) in rows[..n].chunks(size).enumerate() {
                    write_list_rows(chunk, k == 0, &mut streamed);
                }
                write_list_end(&mut streamed);
                assert_eq!(streamed, whole, "{n} rows in pages of {size}");
            }
        }
        let mut empty = Vec::new();
        write_list(&[], &mut empty);
        assert_eq!(empty, b"\r\n\r\n");
    }

    #[test]
    fn show_round_trips() {
        let mut out = Vec::new();
        write_show(Some(&info()), "c1@h", &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.ends_with("\r\n\r\n"));
        let fields: Vec<(String, String)> = text
            .lines()
            .filter_map(|l| l.split_once(": "))
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        assert_eq!(session_from_fields(&fields), Some(info()));
    }

    #[test]
    fn times_parse_and_nonsense_is_refused() {
        assert_eq!(
            parse_secs("1700000000.123"),
            Some(Timestamp(1_700_000_000_123))
        );
        assert_eq!(parse_secs("12.5"), Some(Timestamp(12_500)));
        assert_eq!(parse_secs("7"), Some(Timestamp(7_000)));
        // Past u64 milliseconds: refused, not wrapped or a panic.
        assert_eq!(parse_secs("18446744073709551615"), None);
        assert_eq!(parse_secs("18446744073709551.999"), None);
        assert_eq!(parse_secs("x.1"), None);
    }
}
