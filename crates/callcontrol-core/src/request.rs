//! Typed requests to the engine and its replies, independent of any wire
//! format (the `call_control` codec and the HTTP API map onto these).

use serde::{Deserialize, Serialize};

use crate::session::SessionInfo;
use crate::types::{CallId, DialogId, Prepaid, SessionState, Timestamp};

/// `init`: the proxy asks whether a new call may proceed and with what limit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitRequest {
    /// Canonical request URI (`ruri`).
    pub ruri: String,
    /// `diverter` (`None` on the wire is `None` here).
    pub diverter: Option<String>,
    /// `sourceip`: the caller's signalling address.
    pub source_ip: String,
    /// `callid`.
    pub call_id: CallId,
    /// `from`: the From header value without its tag.
    pub from: String,
    /// `fromtag`.
    pub from_tag: String,
    /// `prepaid` (absent = `unknown`).
    pub prepaid: Prepaid,
    /// `call_limit`: max tracked sessions of the billing party (0 = none).
    pub call_limit: u32,
    /// `call_token` (`None` on the wire is `None` here).
    pub call_token: Option<String>,
    /// `sip_application` (Kamailio; optional in OpenSIPS).
    pub sip_application: Option<String>,
}

impl InitRequest {
    /// A minimal request, for tests and examples: `from` is used as is.
    pub fn new(call_id: impl AsRef<str>, from: impl Into<String>, ruri: impl Into<String>) -> Self {
        InitRequest {
            ruri: ruri.into(),
            diverter: None,
            source_ip: "127.0.0.1".into(),
            call_id: CallId::new(call_id),
            from: from.into(),
            from_tag: "tag".into(),
            prepaid: Prepaid::Unknown,
            call_limit: 0,
            call_token: None,
            sip_application: None,
        }
    }
    /// Marks the request prepaid (`true`) or postpaid (`false`).
    pub fn prepaid(mut self, prepaid: bool) -> Self {
        self.prepaid = if prepaid {
            Prepaid::True
        } else {
            Prepaid::False
        };
        self
    }
    /// Sets `call_limit`.
    pub fn call_limit(mut self, n: u32) -> Self {
        self.call_limit = n;
        self
    }
    /// Sets `call_token`.
    pub fn token(mut self, t: impl Into<String>) -> Self {
        self.call_token = Some(t.into());
        self
    }
    /// Sets `diverter`.
    pub fn diverter(mut self, d: impl Into<String>) -> Self {
        self.diverter = Some(d.into());
        self
    }
}

/// `start`: the call was answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartRequest {
    /// `callid`.
    pub call_id: CallId,
    /// `dialogid`, if sent.
    pub dialog_id: Option<DialogId>,
}

/// Every request the engine serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// `init`.
    Init(InitRequest),
    /// `start`.
    Start(StartRequest),
    /// `stop`.
    Stop {
        /// `callid`.
        call_id: CallId,
    },
    /// `debug` / `show: sessions` (optionally `user: <prefix>`).
    List {
        /// Only sessions whose billing party (`user@host`) starts with this.
        user: Option<String>,
    },
    /// `debug` / `show: session`.
    Show {
        /// `callid`.
        call_id: CallId,
    },
    /// `terminate`: end a call now.
    Terminate {
        /// `callid`.
        call_id: CallId,
    },
    /// One page of the session list (admin views): costs the engine one
    /// pass over references and clones only the page.
    Page(ListQuery),
}

/// Filters, cursor and window of a [`Request::Page`]. Rows are ordered like
/// [`Request::List`]: by `(created, call_id)`, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListQuery {
    /// Only sessions whose billing party (`user@host`) starts with this.
    pub user: Option<String>,
    /// Only sessions in one of these states.
    pub states: Option<Vec<SessionState>>,
    /// Only prepaid (`true`) or postpaid (`false`) sessions.
    pub prepaid: Option<bool>,
    /// Only sessions whose Call-ID, From, R-URI or billing party contains
    /// this text (case-insensitively).
    pub text: Option<String>,
    /// Cursor: only sessions ordered after this `(created, call_id)` (the
    /// last row of the previous page), for walking the whole list.
    pub after: Option<(Timestamp, CallId)>,
    /// Rows to skip (after the filters and the cursor).
    pub offset: usize,
    /// Rows at most.
    pub limit: usize,
}

impl ListQuery {
    /// All sessions, `limit` rows at a time.
    pub fn first(limit: usize) -> Self {
        ListQuery {
            limit,
            ..Default::default()
        }
    }
    /// The same filters and limit, for the page after `last` (the last row
    /// of the page just received); the offset is reset.
    pub fn next_after(&self, last: &SessionInfo) -> Self {
        ListQuery {
            after: Some((last.created, last.call_id.clone())),
            offset: 0,
            ..self.clone()
        }
    }
}

/// The answer to a [`Request::Page`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionPage {
    /// Sessions tracked (before filtering).
    pub total: usize,
    /// Sessions that match the filters (the cursor and window not applied).
    pub matched: usize,
    /// The rows, in `(created, call_id)` order.
    pub sessions: Vec<SessionInfo>,
}

/// The answer to `init`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum InitReply {
    /// `No limit` (2): not tracked.
    NoLimit,
    /// `Limited` (1): tracked.
    Limited,
    /// `No credit` (−1).
    NoCredit,
    /// `Locked` (−2).
    Locked,
    /// `Duplicated callid` (−3).
    DuplicatedCallId,
    /// `Call limit reached` (−4).
    CallLimitReached,
    /// `Error` (−5).
    Error,
}

impl InitReply {
    /// The reply line without its line end, as the proxy expects it.
    pub fn as_str(self) -> &'static str {
        match self {
            InitReply::NoLimit => "No limit",
            InitReply::Limited => "Limited",
            InitReply::NoCredit => "No credit",
            InitReply::Locked => "Locked",
            InitReply::DuplicatedCallId => "Duplicated callid",
            InitReply::CallLimitReached => "Call limit reached",
            InitReply::Error => "Error",
        }
    }
    /// A short machine-friendly outcome name (metrics, logs).
    pub fn outcome(self) -> &'static str {
        match self {
            InitReply::NoLimit => "no_limit",
            InitReply::Limited => "limited",
            InitReply::NoCredit => "no_credit",
            InitReply::Locked => "locked",
            InitReply::DuplicatedCallId => "duplicated_callid",
            InitReply::CallLimitReached => "call_limit_reached",
            InitReply::Error => "error",
        }
    }
}

/// The answer to `start`, `stop` and `terminate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Found {
    /// `Ok`.
    Ok,
    /// `Not found` (or, for `terminate`, `Call id … does not exist`).
    NotFound,
}

/// Every reply the engine gives. Kept small (the one large variant is
/// boxed): every `init`/`start`/`stop` reply is moved through a channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Reply {
    /// To `init`.
    Init(InitReply),
    /// To `start`.
    Start(Found),
    /// To `stop`.
    Stop(Found),
    /// To a list request.
    Sessions(Vec<SessionInfo>),
    /// To a show request.
    Session(Option<Box<SessionInfo>>),
    /// To `terminate`.
    Terminate(Found),
    /// To a page request.
    Page(SessionPage),
}
