//! The CLI's side of the API: `call-control-cli balance <account> [--add
//! AMOUNT] [--history]` talks to the running daemon's web interface (with
//! the token from `config.ini`), which asks the rating backend. Amounts are
//! checked here and sent as JSON strings.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;

use super::amount::{parse_account, Amount, InputError};
use super::config::{WebConfig, WebConfigError};

/// How long the whole exchange may take.
const TIMEOUT: Duration = Duration::from_secs(15);

/// What `call-control-cli balance` was asked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BalanceArgs {
    /// `user@domain`.
    pub account: String,
    /// `--add AMOUNT`: credit to add (a decimal string).
    pub add: Option<String>,
    /// `--history`: also show the balance history.
    pub history: bool,
}

/// Why a client command failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The web interface is not configured, so there is nothing to talk to.
    #[error(
        "the daemon's web interface is off: set [Web] port (and token) in config.ini; \
         balance commands go through it"
    )]
    NotConfigured,
    /// `[Web]` is unusable.
    #[error(transparent)]
    Config(#[from] WebConfigError),
    /// The account or amount is malformed.
    #[error(transparent)]
    Input(#[from] InputError),
    /// The daemon could not be reached.
    #[error("cannot reach the daemon's web interface at {addr}: {message}")]
    Connect {
        /// Where.
        addr: SocketAddr,
        /// Why.
        message: String,
    },
    /// The daemon answered with an error.
    #[error("{status}: {message}")]
    Api {
        /// The HTTP status.
        status: StatusCode,
        /// The error message from the JSON body.
        message: String,
    },
    /// No answer in time.
    #[error("the daemon did not answer within {0:?}")]
    Timeout(Duration),
}

/// Percent-encodes one path segment.
fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'@' | b'+') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// A minimal JSON-over-HTTP/1.1 client of the web API.
#[derive(Debug, Clone)]
pub struct ApiClient {
    addr: SocketAddr,
    token: Option<String>,
}

impl ApiClient {
    /// A client for the daemon configured by `config`.
    pub fn from_config(config: &WebConfig) -> Result<ApiClient, ClientError> {
        config.validate()?;
        let addr = config.bind_addr()?.ok_or(ClientError::NotConfigured)?;
        Ok(ApiClient::new(
            super::client_addr(addr),
            config.token().map(str::to_string),
        ))
    }

    /// A client for the server at `addr`.
    pub fn new(addr: SocketAddr, token: Option<String>) -> ApiClient {
        ApiClient { addr, token }
    }

    /// Sends one request and returns the JSON body of a 2xx answer.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, ClientError> {
        let mut headers = vec![("accept", "application/json".to_string())];
        let payload = match &body {
            Some(v) => {
                headers.push(("content-type", "application/json".to_string()));
                v.to_string().into_bytes()
            }
            None => Vec::new(),
        };
        let r = self.send(method, path, &headers, payload).await?;
        let json: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
        if !r.status.is_success() {
            let message = json
                .pointer("/error/message")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| String::from_utf8_lossy(&r.body).trim().to_string());
            return Err(ClientError::Api {
                status: r.status,
                message,
            });
        }
        Ok(json)
    }

    /// Sends one request with these extra headers (the token is added unless
    /// `authorization` is among them; `host` replaces the default) and
    /// returns the answer whatever its status.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, String)],
        body: Vec<u8>,
    ) -> Result<RawResponse, ClientError> {
        match tokio::time::timeout(TIMEOUT, self.exchange(method, path, headers, body)).await {
            Ok(r) => r,
            Err(_) => Err(ClientError::Timeout(TIMEOUT)),
        }
    }

    async fn exchange(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, String)],
        body: Vec<u8>,
    ) -> Result<RawResponse, ClientError> {
        let connect_err = |e: &dyn std::fmt::Display| ClientError::Connect {
            addr: self.addr,
            message: e.to_string(),
        };
        let stream = tokio::net::TcpStream::connect(self.addr)
            .await
            .map_err(|e| connect_err(&e))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| connect_err(&e))?;
        let conn = tokio::spawn(conn);
        let mut req = Request::builder().method(method).uri(path);
        let has = |name: &str| headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(name));
        if !has("host") {
            req = req.header(hyper::header::HOST, self.addr.to_string());
        }
        if let (Some(t), false) = (&self.token, has("authorization")) {
            req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        for (k, v) in headers {
            req = req.header(*k, v.as_str());
        }
        let req = req
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| connect_err(&e))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| connect_err(&e))?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| connect_err(&e))?
            .to_bytes();
        conn.abort();
        Ok(RawResponse {
            status,
            headers,
            body: bytes.to_vec(),
        })
    }
}

/// An HTTP answer.
#[derive(Debug, Clone)]
pub struct RawResponse {
    /// The status.
    pub status: StatusCode,
    /// The headers.
    pub headers: hyper::HeaderMap,
    /// The body.
    pub body: Vec<u8>,
}

impl RawResponse {
    /// The body as JSON (`Null` when it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn text(v: &Value, key: &str) -> String {
    match v.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => "?".into(),
        Some(other) => other.to_string(),
    }
}

/// `call-control-cli balance <account> [--add AMOUNT] [--history]`: returns
/// the text to print.
pub async fn balance_command(
    config: &WebConfig,
    args: &BalanceArgs,
) -> Result<String, ClientError> {
    let client = ApiClient::from_config(config)?;
    balance_with(&client, args).await
}

/// [`balance_command`] against a given client (tests).
pub async fn balance_with(client: &ApiClient, args: &BalanceArgs) -> Result<String, ClientError> {
    let account = parse_account(&args.account)?;
    // Checked before anything is sent: a bad amount never reaches the daemon.
    let add = args.add.as_deref().map(Amount::parse).transpose()?;
    let seg = encode_segment(&account);
    let mut out = String::new();
    if let Some(amount) = add {
        let v = client
            .call(
                Method::POST,
                &format!("/api/accounts/{seg}/credit"),
                Some(serde_json::json!({ "amount": amount.as_str() })),
            )
            .await?;
        let _ = writeln!(
            out,
            "Added {amount} to {account}: balance is now {}",
            text(&v, "balance")
        );
    } else {
        let v = client
            .call(Method::GET, &format!("/api/accounts/{seg}/balance"), None)
            .await?;
        let _ = writeln!(out, "Balance of {account}: {}", text(&v, "balance"));
    }
    if args.history {
        let v = client
            .call(Method::GET, &format!("/api/accounts/{seg}/history"), None)
            .await?;
        let entries = v
            .get("entries")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let _ = writeln!(out, "History ({} entries):", entries.len());
        for e in entries {
            let fields = e
                .get("fields")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let line: Vec<String> = fields
                .iter()
                .filter_map(|f| {
                    let k = f.get(0)?.as_str()?;
                    let v = f.get(1)?.as_str()?;
                    Some(format!("{k}={v}"))
                })
                .collect();
            let _ = writeln!(out, "  {}", line.join(" "));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_encoded() {
        assert_eq!(encode_segment("alice@example.com"), "alice@example.com");
        assert_eq!(encode_segment("a%b c/d"), "a%25b%20c%2Fd");
    }

    #[tokio::test]
    async fn refuses_bad_input_before_connecting() {
        // Port 9 on loopback: nothing is sent, input is checked first.
        let c = ApiClient::new("127.0.0.1:9".parse().unwrap(), None);
        let args = BalanceArgs {
            account: "alice@example.com".into(),
            add: Some("1e3".into()),
            history: false,
        };
        assert!(matches!(
            balance_with(&c, &args).await,
            Err(ClientError::Input(InputError::Amount(_)))
        ));
        let args = BalanceArgs {
            account: "alice".into(),
            ..Default::default()
        };
        assert!(matches!(
            balance_with(&c, &args).await,
            Err(ClientError::Input(InputError::Account(_)))
        ));
    }

    #[tokio::test]
    async fn not_configured_is_explained() {
        let e = balance_command(&WebConfig::default(), &BalanceArgs::default())
            .await
            .unwrap_err();
        assert!(matches!(e, ClientError::NotConfigured));
        assert!(e.to_string().contains("[Web] port"));
    }
}
