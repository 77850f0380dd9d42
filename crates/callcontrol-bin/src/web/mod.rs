//! The HTTP interface: JSON API, Prometheus metrics and the sessions page.
//!
//! # Layout
//!
//! - [`config`]: [`WebConfig`], the `[Web]` section (off unless a port is
//!   set; loopback by default; a token is required anywhere else).
//! - [`api`](self): the routes, served by axum from [`serve`]:
//!   `GET /api/sessions`, `GET /api/sessions/{call_id}`,
//!   `POST /api/sessions/{call_id}/terminate`, `GET /api/health`,
//!   `GET /api/status`, `GET /api/accounts/{account}/balance`,
//!   `GET /api/accounts/{account}/history`,
//!   `POST /api/accounts/{account}/credit`, `GET /metrics`, and the page
//!   itself at `/` (assets embedded in the binary, no network).
//! - [`metrics`]: [`Metrics`], the registry, the observer hook for the
//!   control socket server and the metering decorators for the backends.
//! - [`amount`]: account names and decimal amounts (never floats).
//! - [`client`]: the CLI's side, `call-control-cli balance`, an HTTP client
//!   of this API.
//!
//! Every API route and `/metrics` requires `Authorization: Bearer <token>`
//! when `[Web] token` is set. Without a token (loopback only) the server
//! still refuses requests whose `Host` is not a loopback name, so a web page
//! elsewhere cannot reach it by DNS rebinding, and a `POST` whose `Origin` is
//! another site. The page keeps the token in `sessionStorage` and sends it as
//! a header, never as a cookie, so other sites cannot make requests with it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use callcontrol_core::driver::Handle;
use callcontrol_core::rating::RatingBackend;
use callcontrol_core::signalling::SignallingBackend;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub mod amount;
mod api;
mod assets;
pub mod client;
pub mod config;
pub mod metrics;

pub use client::{balance_command, BalanceArgs, ClientError};
pub use config::{WebConfig, WebConfigError};
pub use metrics::Metrics;

/// Answers whether the control socket is up (for health and metrics).
pub type Probe = Arc<dyn Fn() -> bool + Send + Sync>;

/// How long an API request may wait for the rating engine.
const BACKEND_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything the web interface reads and acts on.
pub struct WebParts {
    /// The running engine.
    pub handle: Handle,
    /// The rating backend (for balances and health); pass the same
    /// (metered) one the engine uses.
    pub rating: Arc<dyn RatingBackend>,
    /// The signalling backend (for health).
    pub signalling: Arc<dyn SignallingBackend>,
    /// Whether the control socket is accepting connections.
    pub control_socket_up: Probe,
    /// The metrics registry.
    pub metrics: Metrics,
    /// The bearer token, if any (from [`WebConfig::token`]).
    pub token: Option<String>,
}

/// The shared state of the HTTP server. Cheap to clone.
#[derive(Clone)]
pub struct WebState {
    inner: Arc<WebParts>,
}

impl WebState {
    /// Builds the state.
    pub fn new(mut parts: WebParts) -> WebState {
        parts.token = parts
            .token
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty());
        WebState {
            inner: Arc::new(parts),
        }
    }
}

/// The routes, with authentication and security headers.
pub fn router(state: WebState) -> Router {
    let protected = Router::new()
        .route("/api/sessions", get(api::list_sessions))
        .route("/api/sessions/{call_id}", get(api::show_session))
        .route("/api/sessions/{call_id}/terminate", post(api::terminate))
        .route("/api/health", get(api::health))
        .route("/api/status", get(api::status))
        .route("/api/accounts/{account}/balance", get(api::balance))
        .route("/api/accounts/{account}/history", get(api::history))
        .route("/api/accounts/{account}/credit", post(api::add_credit))
        .route("/metrics", get(api::metrics))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/", get(assets::index))
        .route("/index.html", get(assets::index))
        .route("/app.js", get(assets::script))
        .route("/app.css", get(assets::style))
        .merge(protected)
        .fallback(api::not_found)
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state)
}

/// Serves the web interface on `listener` until `shutdown` is cancelled.
pub async fn serve(
    listener: TcpListener,
    state: WebState,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        log::info!(
            "Web interface listening on http://{addr}/ ({})",
            if state.inner.token.is_some() {
                "bearer token required"
            } else {
                "no token"
            }
        );
    }
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

/// Why the web interface could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The `[Web]` settings are unusable.
    #[error(transparent)]
    Config(#[from] WebConfigError),
    /// The address could not be bound.
    #[error("[Web] cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The server failed.
    #[error("web interface: {0}")]
    Io(#[from] std::io::Error),
}

/// Binds the configured address and serves until `shutdown` is cancelled;
/// returns at once when the web interface is not configured. Validates
/// `config` first (the daemon should also call [`WebConfig::validate`] at
/// start-up, so a bad setting stops it before anything else runs).
pub async fn bind_and_serve(
    config: &WebConfig,
    mut parts: WebParts,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    config.validate()?;
    let Some(addr) = config.bind_addr()? else {
        return Ok(());
    };
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })?;
    parts.token = config.token().map(str::to_string);
    serve(listener, WebState::new(parts), shutdown).await?;
    Ok(())
}

/// A JSON error: `{"error": {"code": "...", "message": "..."}}`.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": { "code": self.code, "message": self.message } });
        let mut r = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"callcontrol\""),
            );
        }
        r
    }
}

/// Compares in time independent of where the first difference is.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for (i, x) in a.iter().enumerate() {
        diff |= usize::from(x ^ b.get(i % b.len().max(1)).copied().unwrap_or(0));
    }
    diff == 0
}

/// Requires the bearer token on the protected routes.
async fn require_token(State(st): State<WebState>, req: Request, next: Next) -> Response {
    if let Some(token) = &st.inner.token {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.trim());
        match given {
            Some(t) if same_secret(t.as_bytes(), token.as_bytes()) => {}
            Some(_) => {
                log::warn!(
                    "Web: refused {} {}: wrong bearer token",
                    req.method(),
                    req.uri().path()
                );
                return ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "wrong token")
                    .into_response();
            }
            None => {
                return ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "send Authorization: Bearer <token> ([Web] token in config.ini)",
                )
                .into_response()
            }
        }
    }
    next.run(req).await
}

fn is_loopback_host(host: &str) -> bool {
    // Host is `name`, `name:port`, `[v6]` or `[v6]:port`.
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Cross-site and DNS-rebinding checks, and the security headers.
async fn guard(State(st): State<WebState>, req: Request, next: Next) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if st.inner.token.is_none() && !is_loopback_host(host) {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "without [Web] token the web interface only answers requests for localhost",
        )
        .into_response();
    }
    // With a token, cross-site requests cannot carry it (it is a header, not
    // a cookie, and no CORS is offered); without one, refuse foreign origins.
    if st.inner.token.is_none() && req.method() != Method::GET && req.method() != Method::HEAD {
        if let Some(origin) = req
            .headers()
            .get(header::ORIGIN)
            .and_then(|v| v.to_str().ok())
        {
            let same = origin
                .split_once("://")
                .is_some_and(|(_, rest)| rest.eq_ignore_ascii_case(host));
            if !same {
                return ApiError::new(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    "cross-origin request refused",
                )
                .into_response();
            }
        }
    }
    let mut r = next.run(req).await;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// The address a client should use to reach a server bound to `addr`
/// (an unspecified bind address means this host's loopback).
pub fn client_addr(addr: SocketAddr) -> SocketAddr {
    let ip = match addr.ip() {
        std::net::IpAddr::V4(v4) if v4.is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
        std::net::IpAddr::V6(v6) if v6.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
        ip => ip,
    };
    SocketAddr::new(ip, addr.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abc", b"abd"));
        assert!(!same_secret(b"abc", b"abcd"));
        assert!(!same_secret(b"", b"a"));
        assert!(same_secret(b"", b""));
    }

    #[test]
    fn loopback_hosts() {
        for h in [
            "localhost",
            "localhost:80",
            "127.0.0.1:9080",
            "[::1]:9080",
            "[::1]",
            "127.9.9.9",
        ] {
            assert!(is_loopback_host(h), "{h}");
        }
        for h in [
            "",
            "evil.example",
            "evil.example:9080",
            "10.0.0.1:80",
            "[2001:db8::1]:80",
        ] {
            assert!(!is_loopback_host(h), "{h}");
        }
    }
}
