//! Domain types shared by every crate: Call-IDs, billing parties, dialog ids,
//! timestamps and the small enums of the `call_control` protocol.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::RequestError;

/// Milliseconds since the Unix epoch. The engine only ever sees time as this
/// value, handed to it by its driver, so virtual time and restarts (deadlines
/// are wall-clock) work the same way.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// This instant plus `secs` seconds.
    pub fn plus_secs(self, secs: u64) -> Timestamp {
        Timestamp(self.0.saturating_add(secs.saturating_mul(1000)))
    }
    /// This instant plus `ms` milliseconds.
    pub fn plus_millis(self, ms: u64) -> Timestamp {
        Timestamp(self.0.saturating_add(ms))
    }
    /// Whole seconds from `earlier` to `self` (floored, 0 if `earlier` is later).
    pub fn secs_since(self, earlier: Timestamp) -> u64 {
        self.0.saturating_sub(earlier.0) / 1000
    }
    /// Milliseconds from `earlier` to `self` (0 if `earlier` is later).
    pub fn millis_since(self, earlier: Timestamp) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

/// A SIP Call-ID: the key of a session. Cheap to clone (shared).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CallId(Arc<str>);

impl CallId {
    /// Wraps a Call-ID.
    pub fn new(s: impl AsRef<str>) -> CallId {
        CallId(Arc::from(s.as_ref()))
    }
    /// The Call-ID text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CallId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl fmt::Debug for CallId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}
impl From<&str> for CallId {
    fn from(s: &str) -> Self {
        CallId::new(s)
    }
}
impl std::borrow::Borrow<str> for CallId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

/// Who pays for a call: `sip:user@host`. Derived from `diverter` or From.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct BillingParty(Arc<str>);

impl BillingParty {
    /// Wraps an already normalised `sip:user@host` string.
    pub fn new(s: impl AsRef<str>) -> BillingParty {
        BillingParty(Arc::from(s.as_ref()))
    }
    /// The `sip:user@host` form.
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// `user@host`, without the scheme (CDRTool's `GetBalance From=`, the admin list).
    pub fn user_host(&self) -> &str {
        self.0
            .strip_prefix("sip:")
            .or_else(|| self.0.strip_prefix("sips:"))
            .unwrap_or(&self.0)
    }
    /// Derives the billing party of an `init`: `sip:` + `diverter` when the
    /// diverter is set (not `None`), else the From URI reduced to
    /// `sip:user@host` (no display name, port or parameters).
    pub fn derive(from: &str, diverter: Option<&str>) -> Result<BillingParty, RequestError> {
        let mut uri = String::with_capacity(from.len() + 4);
        if crate::party::write_billing_party(from, diverter, &mut uri) {
            Ok(BillingParty::new(uri))
        } else {
            Err(RequestError::BadFrom(from.to_string()))
        }
    }
}
impl std::borrow::Borrow<str> for BillingParty {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for BillingParty {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl fmt::Debug for BillingParty {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

/// An OpenSIPS/Kamailio dialog id: the pair (`h_entry`, `h_id`).
///
/// `start` carries it as the decimal u64 `(h_entry << 32) | h_id` (OpenSIPS
/// ≥ 2.3) or as `h_entry:h_id` (older OpenSIPS, Kamailio); both parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DialogId {
    /// Hash table entry.
    pub h_entry: u32,
    /// Id within the entry.
    pub h_id: u32,
}

impl DialogId {
    /// Builds a dialog id from its two halves.
    pub fn new(h_entry: u32, h_id: u32) -> DialogId {
        DialogId { h_entry, h_id }
    }
    /// The decimal u64 form `(h_entry << 32) | h_id`.
    pub fn as_u64(self) -> u64 {
        (u64::from(self.h_entry) << 32) | u64::from(self.h_id)
    }
    /// Parses `11111181033451` or `2587:1107755007`.
    pub fn parse(s: &str) -> Result<DialogId, RequestError> {
        let s = s.trim();
        let bad = || RequestError::BadDialogId(s.to_string());
        if let Some((e, i)) = s.split_once(':') {
            let e = e.trim().parse::<u32>().map_err(|_| bad())?;
            let i = i.trim().parse::<u32>().map_err(|_| bad())?;
            return Ok(DialogId::new(e, i));
        }
        let v = s.parse::<u64>().map_err(|_| bad())?;
        Ok(DialogId::new((v >> 32) as u32, v as u32))
    }
}

impl fmt::Display for DialogId {
    /// Displays as `h_entry:h_id`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.h_entry, self.h_id)
    }
}

/// The `prepaid` key of `init`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Prepaid {
    /// `prepaid: true`: the limit comes from the rating engine.
    True,
    /// `prepaid: false`.
    False,
    /// `prepaid: unknown` (no `prepaid_account_flag` in the proxy), or absent.
    #[default]
    Unknown,
}

impl Prepaid {
    /// Parses `true`/`false`/`unknown` (any case; `yes`/`1` and `no`/`0` too).
    pub fn parse(s: &str) -> Result<Prepaid, RequestError> {
        let v = s.trim();
        let is = |words: &[&str]| words.iter().any(|w| v.eq_ignore_ascii_case(w));
        if is(&["true", "yes", "1"]) {
            Ok(Prepaid::True)
        } else if is(&["false", "no", "0"]) {
            Ok(Prepaid::False)
        } else if is(&["unknown", "none", ""]) {
            Ok(Prepaid::Unknown)
        } else {
            Err(RequestError::BadValue {
                key: "prepaid",
                value: s.to_string(),
            })
        }
    }
    /// Whether the session is rated by the rating engine.
    pub fn is_prepaid(self) -> bool {
        self == Prepaid::True
    }
}

/// The life of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SessionState {
    /// Authorised, not answered yet (`pending` in the admin list).
    Pending,
    /// Answered (`start` received), the timer runs (`in-progress`).
    InProgress,
    /// The daemon asked the proxy to end the dialog and waits for it.
    Ending,
    /// The proxy could not be made to end the dialog; retried by the engine.
    EndFailed,
    /// Over (only seen in events and history; ended sessions are forgotten).
    Ended,
}

impl SessionState {
    /// The word the admin list uses.
    pub fn as_str(self) -> &'static str {
        match self {
            SessionState::Pending => "pending",
            SessionState::InProgress => "in-progress",
            SessionState::Ending => "ending",
            SessionState::EndFailed => "end-failed",
            SessionState::Ended => "ended",
        }
    }
}

impl fmt::Display for SessionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
