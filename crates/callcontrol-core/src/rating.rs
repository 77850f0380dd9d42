//! The rating backend seam: who decides a prepaid session's limit and takes
//! the money afterwards (CDRTool's `MaxSessionTime` and `DebitBalance`).

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::RatingError;
use crate::types::{BillingParty, CallId};

/// What the engine asks before a prepaid call (and again at its answer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthoriseRequest {
    /// The session's Call-ID (the rating engine's session key).
    pub call_id: CallId,
    /// The billing party, `sip:user@host`.
    pub party: BillingParty,
    /// The destination (the `init`'s R-URI).
    pub to: String,
    /// The caller's signalling IP (`Gateway`).
    pub gateway: String,
    /// The cap in seconds (`Duration`).
    pub max_duration: u64,
    /// `Application` (`audio` unless the proxy said otherwise).
    pub application: String,
    /// True for the re-query at the call's answer (`State=Connected`).
    pub connected: bool,
}

/// The rating engine's limit for a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RatedLimit {
    /// Seconds from now (0 = no credit). With parallel sessions this is the
    /// shared limit: how long the balance lasts with all of them running.
    Seconds(u64),
    /// `none`: no limit from the rating engine (the fixed limit applies).
    Unlimited,
    /// `Locked`: the account has reached its parallel-session maximum.
    Locked,
}

/// The account type the rating engine reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AccountType {
    /// `type=prepaid`.
    Prepaid,
    /// `type=postpaid`.
    Postpaid,
}

/// A typed `MaxSessionTime` answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Authorisation {
    /// The limit.
    pub limit: RatedLimit,
    /// `type=…`, when the engine sent it.
    pub account: Option<AccountType>,
}

impl Authorisation {
    /// A prepaid authorisation for `secs` seconds.
    pub fn prepaid(secs: u64) -> Self {
        Authorisation {
            limit: RatedLimit::Seconds(secs),
            account: Some(AccountType::Prepaid),
        }
    }
}

/// A debit owed to the rating engine: charge `duration` seconds of the call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DebitRequest {
    /// The session's Call-ID.
    pub call_id: CallId,
    /// The billing party, `sip:user@host`.
    pub party: BillingParty,
    /// The destination.
    pub to: String,
    /// The caller's signalling IP.
    pub gateway: String,
    /// Whole seconds (floored); 0 releases the authorisation at no charge.
    pub duration: u64,
    /// `Application`.
    pub application: String,
}

/// A typed `DebitBalance` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DebitOutcome {
    /// `Ok`: charged.
    Debited {
        /// `MaxSessionTime=<n>`: the new shared limit, seconds from now, for
        /// the party's calls still running.
        max_session_time: Option<u64>,
        /// The price, as the engine wrote it (a decimal string, never a float).
        price: Option<String>,
    },
    /// `Failed`: not an active session (already debited, never authorised,
    /// purged as stale) or not ratable. Not retried.
    Failed {
        /// What the engine said.
        reason: String,
    },
    /// `Not prepaid`, or a backend that debits nothing (fixed limit).
    NotPrepaid,
}

/// An account balance (provisioning). Amounts are decimal strings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Balance {
    /// `user@domain`.
    pub account: String,
    /// The balance as the engine wrote it.
    pub balance: String,
}

/// One line of an account's balance history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalanceEntry {
    /// The raw fields of the history line, in the engine's words.
    pub fields: Vec<(String, String)>,
}

/// The health of one rating engine connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RatingHealth {
    /// `host:port`, or the backend's name.
    pub address: String,
    /// Whether it is connected (or, for backends without connections, usable).
    pub connected: bool,
}

/// A rating backend. Implementations must be cheap to call concurrently: the
/// engine driver issues calls for many sessions at once and never waits for
/// one before serving the others.
///
/// ```
/// use callcontrol_core::rating::*;
/// use callcontrol_core::error::RatingError;
///
/// /// Every prepaid call gets two minutes; debits are only logged.
/// struct TwoMinutes;
///
/// #[async_trait::async_trait]
/// impl RatingBackend for TwoMinutes {
///     async fn authorise(&self, _: &AuthoriseRequest) -> Result<Authorisation, RatingError> {
///         Ok(Authorisation::prepaid(120))
///     }
///     async fn debit(&self, req: &DebitRequest) -> Result<DebitOutcome, RatingError> {
///         log::info!("debit {} s ({})", req.duration, req.call_id);
///         Ok(DebitOutcome::Debited { max_session_time: None, price: None })
///     }
/// }
/// ```
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait RatingBackend: Send + Sync + 'static {
    /// `MaxSessionTime`: how long may this session last?
    async fn authorise(&self, req: &AuthoriseRequest) -> Result<Authorisation, RatingError>;

    /// `DebitBalance`: charge a finished session (or release it with 0).
    /// An `Err` means the debit may not have been taken and is retried; the
    /// engine answers a repeated debit with `Failed`, so retrying is safe.
    async fn debit(&self, req: &DebitRequest) -> Result<DebitOutcome, RatingError>;

    /// `GetBalance`.
    async fn balance(&self, _account: &str) -> Result<Balance, RatingError> {
        Err(RatingError::Unsupported)
    }

    /// `AddBalance`; `amount` is a decimal string.
    async fn add_balance(&self, _account: &str, _amount: &str) -> Result<Balance, RatingError> {
        Err(RatingError::Unsupported)
    }

    /// `GetBalanceHistory`.
    async fn balance_history(&self, _account: &str) -> Result<Vec<BalanceEntry>, RatingError> {
        Err(RatingError::Unsupported)
    }

    /// Connection health, for monitoring.
    fn health(&self) -> Vec<RatingHealth> {
        Vec::new()
    }
}

/// A rating backend for deployments without a rating engine: every prepaid
/// authorisation fails with [`RatingError::Unreachable`], so the engine's
/// rating failure policy decides.
#[derive(Debug, Clone, Default)]
pub struct NoRating;

#[async_trait]
impl RatingBackend for NoRating {
    async fn authorise(&self, _: &AuthoriseRequest) -> Result<Authorisation, RatingError> {
        Err(RatingError::Unreachable(
            "no rating engine is configured".into(),
        ))
    }
    async fn debit(&self, _: &DebitRequest) -> Result<DebitOutcome, RatingError> {
        Ok(DebitOutcome::NotPrepaid)
    }
}
