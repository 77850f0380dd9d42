//! A session: everything the engine keeps about one call.

use serde::{Deserialize, Serialize};

use crate::types::{BillingParty, CallId, DialogId, Prepaid, SessionState, Timestamp};

/// One tracked call. This is also the record a [`SessionStore`] persists.
///
/// [`SessionStore`]: crate::store::SessionStore
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// SIP Call-ID.
    pub call_id: CallId,
    /// Who pays.
    pub party: BillingParty,
    /// R-URI of the `init`.
    pub ruri: Box<str>,
    /// From header value (without tag).
    pub from: Box<str>,
    /// From tag.
    pub from_tag: Box<str>,
    /// Caller's signalling IP.
    pub source_ip: Box<str>,
    /// `diverter`, if any.
    pub diverter: Option<Box<str>>,
    /// `call_token`, if any.
    pub token: Option<Box<str>>,
    /// `sip_application`, if any.
    pub application: Option<Box<str>>,
    /// `prepaid` as sent.
    pub prepaid: Prepaid,
    /// The `call_limit` the `init` carried.
    pub call_limit: u32,
    /// Limit in seconds from the answer; `None` = unlimited.
    pub limit: Option<u64>,
    /// Dialog id from `start`.
    pub dialog_id: Option<DialogId>,
    /// State.
    pub state: SessionState,
    /// When `init` was accepted.
    pub created: Timestamp,
    /// When `start` arrived.
    pub answered: Option<Timestamp>,
    /// When the session ends by itself (expiry, or the setup/stale sweep),
    /// or when the engine retries ending it.
    pub deadline: Option<Timestamp>,
    /// For sessions ending: how many times the proxy was asked to end it.
    pub end_attempts: u32,
}

impl Session {
    /// Whether the rating engine limits (and charges) this session.
    pub fn is_prepaid(&self) -> bool {
        self.prepaid.is_prepaid()
    }

    /// A snapshot for admin views at `now`.
    pub fn info(&self, now: Timestamp) -> SessionInfo {
        let elapsed = self.answered.map(|a| now.secs_since(a));
        let remaining = match (self.state, self.answered, self.limit) {
            (SessionState::InProgress, Some(a), Some(l)) => {
                Some(a.plus_secs(l).0.saturating_sub(now.0) / 1000)
            }
            _ => None,
        };
        SessionInfo {
            call_id: self.call_id.clone(),
            user: self.party.user_host().to_string(),
            from: self.from.to_string(),
            from_tag: self.from_tag.to_string(),
            ruri: self.ruri.to_string(),
            diverter: self.diverter.as_deref().map(str::to_string),
            source_ip: self.source_ip.to_string(),
            token: self.token.as_deref().map(str::to_string),
            prepaid: self.is_prepaid(),
            call_limit: self.call_limit,
            state: self.state,
            limit: self.limit,
            dialog_id: self.dialog_id,
            created: self.created,
            answered: self.answered,
            elapsed,
            remaining,
        }
    }
}

/// A read-only view of a session, for `list`/`show`, the CLI and the HTTP API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionInfo {
    /// SIP Call-ID.
    pub call_id: CallId,
    /// Billing party as `user@host`.
    pub user: String,
    /// From header value.
    pub from: String,
    /// From tag.
    pub from_tag: String,
    /// R-URI (the callee).
    pub ruri: String,
    /// Diverter.
    pub diverter: Option<String>,
    /// Caller's signalling IP.
    pub source_ip: String,
    /// Call token.
    pub token: Option<String>,
    /// Prepaid or not.
    pub prepaid: bool,
    /// `call_limit` from `init`.
    pub call_limit: u32,
    /// State.
    pub state: SessionState,
    /// Limit in seconds; `None` = unlimited.
    pub limit: Option<u64>,
    /// Dialog id.
    pub dialog_id: Option<DialogId>,
    /// When `init` was accepted (ms since epoch).
    pub created: Timestamp,
    /// When the call was answered (ms since epoch).
    pub answered: Option<Timestamp>,
    /// Seconds since the answer.
    pub elapsed: Option<u64>,
    /// Seconds left before the limit.
    pub remaining: Option<u64>,
}
