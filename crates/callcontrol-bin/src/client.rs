//! The admin client behind `call-control-cli`: the original's admin protocol
//! on the daemon's socket (so it works against the original daemon too),
//! with a deadline on everything — it never hangs.

use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use callcontrol_core::request::Request;
use callcontrol_core::types::CallId;
use callcontrol_opensips::codec::{write_request, ClientReply, ReplyDecoder};

/// Why an admin command could not be carried out.
#[derive(Debug)]
pub enum ClientError {
    /// Nothing listens on the socket (missing file or connection refused).
    NotRunning {
        /// The socket.
        socket: String,
        /// The OS error.
        reason: String,
    },
    /// The daemon did not answer in time.
    Timeout {
        /// The socket.
        socket: String,
        /// The deadline.
        after: Duration,
    },
    /// Another I/O failure, or a reply that cannot be read.
    Failed(String),
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::NotRunning { socket, reason } => {
                write!(
                    f,
                    "call-control is not running (cannot connect to {socket}: {reason})"
                )
            }
            ClientError::Timeout { socket, after } => write!(
                f,
                "call-control did not answer on {socket} within {} ms",
                after.as_millis()
            ),
            ClientError::Failed(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for ClientError {}

/// A reply, typed and as the daemon wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The typed reply.
    pub reply: ClientReply,
    /// The reply's text, without the final empty line.
    pub text: String,
}

/// The admin request for `list [user]`.
pub fn list(user: Option<&str>) -> Request {
    Request::List {
        user: user.map(str::to_string),
    }
}

/// The admin request for `show <callid>`.
pub fn show(call_id: &str) -> Request {
    Request::Show {
        call_id: CallId::new(call_id),
    }
}

/// The admin request for `terminate <callid>`.
pub fn terminate(call_id: &str) -> Request {
    Request::Terminate {
        call_id: CallId::new(call_id),
    }
}

/// Sends one admin request and reads its reply, all within `timeout`.
pub async fn send(
    socket: &Path,
    request: &Request,
    timeout: Duration,
) -> Result<Answer, ClientError> {
    let name = socket.display().to_string();
    let mut stream = match tokio::time::timeout(timeout, UnixStream::connect(socket)).await {
        Err(_) => {
            return Err(ClientError::Timeout {
                socket: name,
                after: timeout,
            })
        }
        Ok(Err(e)) => {
            use std::io::ErrorKind::*;
            return Err(match e.kind() {
                NotFound | ConnectionRefused => ClientError::NotRunning {
                    socket: name,
                    reason: e.to_string(),
                },
                _ => ClientError::Failed(format!("cannot connect to {name}: {e}")),
            });
        }
        Ok(Ok(s)) => s,
    };
    let mut out = Vec::new();
    write_request(request, &mut out);
    let deadline = tokio::time::Instant::now() + timeout;
    let failed = |e: std::io::Error| ClientError::Failed(format!("talking to {name}: {e}"));
    match tokio::time::timeout_at(deadline, stream.write_all(&out)).await {
        Err(_) => {
            return Err(ClientError::Timeout {
                socket: name,
                after: timeout,
            })
        }
        Ok(r) => r.map_err(failed)?,
    }
    let mut raw = Vec::new();
    let mut decoder = ReplyDecoder::new();
    // A long session list is megabytes: read it in large pieces (the
    // decoder resumes its scan where the previous read ended).
    let mut buf = vec![0u8; 64 * 1024];
    let decoded = loop {
        let n = match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(r) => r.map_err(failed)?,
            // The original daemon answers an empty list with a bare line end
            // and no final empty line: after the deadline that is the answer.
            Err(_) if !raw.is_empty() && raw.iter().all(u8::is_ascii_whitespace) => break None,
            Err(_) => {
                return Err(ClientError::Timeout {
                    socket: name,
                    after: timeout,
                })
            }
        };
        if n == 0 {
            break None;
        }
        raw.extend_from_slice(&buf[..n]);
        decoder.feed(&buf[..n]);
        if let Some(r) = decoder.decode(request) {
            break Some(r);
        }
    };
    let text = String::from_utf8_lossy(&raw).trim_end().to_string();
    match decoded {
        Some(Ok(reply)) => Ok(Answer { reply, text }),
        Some(Err(e)) => Err(ClientError::Failed(format!(
            "unexpected reply from {name}: {e}"
        ))),
        None if text.is_empty() && matches!(request, Request::List { .. }) => Ok(Answer {
            reply: ClientReply::Sessions(Vec::new()),
            text,
        }),
        None => Err(ClientError::Failed(format!(
            "{name} closed the connection without a complete reply"
        ))),
    }
}
