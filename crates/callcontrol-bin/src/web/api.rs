//! The JSON API handlers. Each returns JSON or an [`ApiError`]; none builds
//! HTML.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use callcontrol_core::error::{DriverError, RatingError};
use callcontrol_core::prelude::{Found, SessionInfo, SessionState};
use callcontrol_core::request::ListQuery as EngineQuery;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::amount::{parse_account, Amount};
use super::metrics::{Scrape, CONTENT_TYPE};
use super::{ApiError, WebState, BACKEND_TIMEOUT};

impl From<DriverError> for ApiError {
    fn from(e: DriverError) -> Self {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "engine_stopped",
            e.to_string(),
        )
    }
}

impl From<RatingError> for ApiError {
    fn from(e: RatingError) -> Self {
        let (status, code) = match &e {
            RatingError::Unsupported => (StatusCode::NOT_IMPLEMENTED, "not_supported"),
            RatingError::Timeout => (StatusCode::GATEWAY_TIMEOUT, "rating_timeout"),
            RatingError::Unreachable(_) => (StatusCode::BAD_GATEWAY, "rating_unreachable"),
            RatingError::BadReply(_) | RatingError::Engine(_) => {
                (StatusCode::BAD_GATEWAY, "rating_error")
            }
        };
        let message = match e {
            RatingError::Unsupported => {
                "the rating backend keeps no balances (fixed-limit backend)".to_string()
            }
            e => e.to_string(),
        };
        ApiError::new(status, code, message)
    }
}

fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
}

/// The one path parameter of a route (a Call-ID or an account), percent-
/// decoded; a malformed one is a JSON 400 like every other error.
pub(super) struct Param(String);

impl<S: Send + Sync> FromRequestParts<S> for Param {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Path::<String>::from_request_parts(parts, state)
            .await
            .map(|Path(p)| Param(p))
            .map_err(|e| bad_request(e.body_text()))
    }
}

/// Unknown paths.
pub(super) async fn not_found(uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no such resource {}", uri.path()),
    )
}

/// `GET /api/sessions` filters.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct ListQuery {
    /// Billing party (`user@host`, `sip:` optional) prefix.
    user: Option<String>,
    /// Comma-separated states (`pending,in-progress,ending,end-failed`).
    state: Option<String>,
    /// `prepaid` or `postpaid`.
    kind: Option<String>,
    /// Case-insensitive text in the Call-ID, caller, callee or billing party.
    q: Option<String>,
    /// First row (after filtering and sorting).
    offset: Option<usize>,
    /// Rows at most ([`MAX_PAGE`] when absent or larger).
    limit: Option<usize>,
}

/// The most rows one `GET /api/sessions` returns.
pub(super) const MAX_PAGE: usize = 1000;

/// A page of sessions.
#[derive(Debug, Serialize)]
struct SessionPage {
    /// Sessions tracked (before filtering).
    total: usize,
    /// Sessions that match the filters.
    matched: usize,
    /// The first row's position among the matched.
    offset: usize,
    /// The rows, oldest first.
    sessions: Vec<SessionInfo>,
}

fn parse_states(s: &str) -> Result<Vec<SessionState>, ApiError> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| match p.to_ascii_lowercase().as_str() {
            "pending" => Ok(SessionState::Pending),
            "in-progress" | "in_progress" | "inprogress" => Ok(SessionState::InProgress),
            "ending" => Ok(SessionState::Ending),
            "end-failed" | "end_failed" => Ok(SessionState::EndFailed),
            _ => Err(bad_request(format!(
                "unknown state {p:?} (use pending, in-progress, ending, end-failed)"
            ))),
        })
        .collect()
}

/// `GET /api/sessions?user=&state=&kind=&q=&offset=&limit=`
pub(super) async fn list_sessions(
    State(st): State<WebState>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Query(q) = query.map_err(|e| bad_request(e.body_text()))?;
    let states = q
        .state
        .as_deref()
        .map(parse_states)
        .transpose()?
        .filter(|s| !s.is_empty());
    let prepaid = match q.kind.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(k) if k.eq_ignore_ascii_case("prepaid") => Some(true),
        Some(k) if k.eq_ignore_ascii_case("postpaid") => Some(false),
        Some(k) => {
            return Err(bad_request(format!(
                "unknown kind {k:?} (prepaid or postpaid)"
            )))
        }
    };
    let user = q
        .user
        .as_deref()
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|u| {
            u.strip_prefix("sip:")
                .or_else(|| u.strip_prefix("sips:"))
                .unwrap_or(u)
                .to_string()
        });
    let text =
        q.q.as_deref()
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_lowercase);

    // One page from the engine: it filters over references and clones only
    // the rows returned, so a refresh costs it a few ms at 100,000 sessions.
    let limit = q.limit.unwrap_or(MAX_PAGE).min(MAX_PAGE);
    let page = st
        .inner
        .handle
        .page(EngineQuery {
            user,
            states,
            prepaid,
            text,
            after: None,
            offset: q.offset.unwrap_or(0),
            limit,
        })
        .await?;
    let (total, matched, sessions) = (page.total, page.matched, page.sessions);
    let offset = q.offset.unwrap_or(0).min(matched);
    Ok(Json(json!(SessionPage {
        total,
        matched,
        offset,
        sessions
    })))
}

/// `GET /api/sessions/{call_id}`
pub(super) async fn show_session(
    State(st): State<WebState>,
    Param(call_id): Param,
) -> Result<Json<SessionInfo>, ApiError> {
    match st.inner.handle.show(call_id.as_str()).await? {
        Some(s) => Ok(Json(s)),
        None => Err(no_session(&call_id)),
    }
}

fn no_session(call_id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no session with Call-ID {call_id:?}"),
    )
}

/// `POST /api/sessions/{call_id}/terminate`: end the call with BYE and debit
/// the elapsed time.
pub(super) async fn terminate(
    State(st): State<WebState>,
    Param(call_id): Param,
) -> Result<Json<serde_json::Value>, ApiError> {
    match st.inner.handle.terminate(call_id.as_str()).await? {
        Found::Ok => {
            log::info!("Web: session terminated by operator ({call_id})");
            Ok(Json(json!({ "terminated": call_id })))
        }
        Found::NotFound => Err(no_session(&call_id)),
    }
}

fn scrape_parts(st: &WebState) -> Scrape {
    Scrape {
        status: None,
        control_socket_up: (st.inner.control_socket_up)(),
        rating: st.inner.rating.health(),
        signalling: st.inner.signalling.health(),
    }
}

/// `GET /api/health`: 200 when everything is up, 503 otherwise; the body
/// says what is down either way.
pub(super) async fn health(State(st): State<WebState>) -> Response {
    let mut s = scrape_parts(&st);
    s.status = st.inner.handle.status().await.ok();
    let engine = s.status.is_some();
    let rating_ok = s.rating.iter().all(|h| h.connected);
    let mi_ok = s.signalling.as_ref().is_none_or(|h| h.reachable);
    let ok = engine && s.control_socket_up && rating_ok && mi_ok;
    let body = json!({
        "ok": ok,
        "engine": { "running": engine },
        "control_socket": { "up": s.control_socket_up },
        "rating": s.rating,
        "signalling": s.signalling,
        "sessions": s.status.as_ref().map(|st| st.sessions.values().sum::<u64>()),
        "debits_pending": s.status.as_ref().map(|st| st.debits_owed),
    });
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

/// `GET /api/status`: the engine's counters and gauges.
pub(super) async fn status(
    State(st): State<WebState>,
) -> Result<Json<callcontrol_core::driver::Status>, ApiError> {
    Ok(Json(st.inner.handle.status().await?))
}

/// `GET /metrics`
pub(super) async fn metrics(State(st): State<WebState>) -> Result<Response, ApiError> {
    let mut s = scrape_parts(&st);
    s.status = st.inner.handle.status().await.ok();
    let text = st.inner.metrics.encode(s).map_err(|_| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "could not encode metrics",
        )
    })?;
    Ok(([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response())
}

async fn with_timeout<T>(
    f: impl std::future::Future<Output = Result<T, RatingError>>,
) -> Result<T, ApiError> {
    match tokio::time::timeout(BACKEND_TIMEOUT, f).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(RatingError::Timeout.into()),
    }
}

fn account(raw: &str) -> Result<String, ApiError> {
    parse_account(raw).map_err(|e| bad_request(e.to_string()))
}

/// `GET /api/accounts/{account}/balance`
pub(super) async fn balance(
    State(st): State<WebState>,
    Param(raw): Param,
) -> Result<Json<serde_json::Value>, ApiError> {
    let acct = account(&raw)?;
    let b = with_timeout(st.inner.rating.balance(&acct)).await?;
    Ok(Json(json!({ "account": b.account, "balance": b.balance })))
}

/// `GET /api/accounts/{account}/history`
pub(super) async fn history(
    State(st): State<WebState>,
    Param(raw): Param,
) -> Result<Json<serde_json::Value>, ApiError> {
    let acct = account(&raw)?;
    let entries = with_timeout(st.inner.rating.balance_history(&acct)).await?;
    Ok(Json(json!({ "account": acct, "entries": entries })))
}

/// The body of a credit request. `amount` must be a JSON string.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Credit {
    amount: String,
}

/// `POST /api/accounts/{account}/credit` with `{"amount": "10.00"}`.
pub(super) async fn add_credit(
    State(st): State<WebState>,
    Param(raw): Param,
    body: Result<Json<Credit>, JsonRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let acct = account(&raw)?;
    let Json(credit) = body.map_err(|e| {
        bad_request(format!(
            "expected {{\"amount\": \"12.50\"}} (a decimal string, never a number): {}",
            e.body_text()
        ))
    })?;
    let amount = Amount::parse(&credit.amount).map_err(|e| bad_request(e.to_string()))?;
    let b = with_timeout(st.inner.rating.add_balance(&acct, amount.as_str())).await?;
    log::info!(
        "Web: added {amount} to the balance of {acct}, now {}",
        b.balance
    );
    Ok(Json(
        json!({ "account": b.account, "balance": b.balance, "added": amount.as_str() }),
    ))
}
