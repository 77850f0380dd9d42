//! Errors of the OpenSIPS crate, grouped by where the failure came from: a
//! client's request on the `call_control` socket ([`ProtocolError`]), a reply
//! a client could not read ([`ReplyError`]), and the proxy's management
//! interface ([`RpcError`]).

use thiserror::Error;

/// Why a request block on the `call_control` socket cannot be served. Every
/// one of these is answered (see [`ProtocolError::reply_bytes`]) and logged;
/// none closes the connection.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ProtocolError {
    /// A line longer than [`MAX_LINE`](crate::codec::MAX_LINE) bytes, in a
    /// request of this command (`""` when unknown).
    #[error("request line longer than {0} bytes in {1:?} request")]
    LineTooLong(usize, &'static str),
    /// A block of more than [`MAX_LINES`](crate::codec::MAX_LINES) lines.
    #[error("request block longer than {0} lines in {1:?} request")]
    TooManyLines(usize, &'static str),
    /// The block is not UTF-8.
    #[error("{0:?} request is not valid UTF-8")]
    InvalidUtf8(&'static str),
    /// The command word is none of `init`, `start`, `stop`, `debug`, `terminate`.
    #[error("unknown command {0:?}")]
    UnknownCommand(String),
    /// A parameter line has no `:`.
    #[error("badly formatted line {0:?} in {1} request")]
    BadLine(String, &'static str),
    /// A required key is missing.
    #[error("missing {0} in {1} request")]
    MissingKey(&'static str, &'static str),
    /// A value cannot be used.
    #[error("bad value {1:?} for {0} in {2} request")]
    BadValue(&'static str, String, &'static str),
}

impl ProtocolError {
    /// Whether the failed request is an admin command (`debug`, `terminate`),
    /// whose replies, errors included, end with an empty line.
    pub fn is_admin(&self) -> bool {
        matches!(
            self,
            ProtocolError::MissingKey(_, "debug" | "terminate")
                | ProtocolError::BadLine(_, "debug" | "terminate")
                | ProtocolError::BadValue(_, _, "debug" | "terminate")
                | ProtocolError::LineTooLong(_, "debug" | "terminate")
                | ProtocolError::TooManyLines(_, "debug" | "terminate")
                | ProtocolError::InvalidUtf8("debug" | "terminate")
        )
    }

    /// The reply to send: `Error\r\n` (OpenSIPS maps any unknown reply line
    /// to −5), or `Error\r\n\r\n` for an admin command so that a client
    /// reading to the empty line never hangs (the original's CLI did).
    pub fn reply_bytes(&self) -> &'static [u8] {
        if self.is_admin() {
            b"Error\r\n\r\n"
        } else {
            b"Error\r\n"
        }
    }
}

/// A reply from a `call_control` server that a client cannot read.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ReplyError {
    /// A reply line longer than the client accepts.
    #[error("reply longer than {0} bytes")]
    TooLong(usize),
    /// Not UTF-8.
    #[error("reply is not valid UTF-8")]
    InvalidUtf8,
    /// The server answered `Error`.
    #[error("server answered Error")]
    Error,
    /// A line the client does not understand.
    #[error("unexpected reply {0:?}")]
    Unexpected(String),
}

/// A failed JSON-RPC exchange with a proxy's management interface.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RpcError {
    /// The request could not be sent (socket missing, connection refused…).
    #[error("cannot reach {address}: {reason}")]
    Unreachable {
        /// Socket path or URL.
        address: String,
        /// The OS error or similar.
        reason: String,
    },
    /// No reply in time.
    #[error("no reply from {0} in time")]
    Timeout(String),
    /// The proxy answered a JSON-RPC error, or a plain-text `<code> <message>`.
    #[error("error {code}: {message}")]
    Remote {
        /// The error code (404: not found).
        code: i64,
        /// The message.
        message: String,
    },
    /// The reply is neither JSON-RPC nor a plain-text error.
    #[error("bad reply: {0}")]
    BadReply(String),
}

impl From<RpcError> for callcontrol_core::error::SignallingError {
    fn from(e: RpcError) -> Self {
        use callcontrol_core::error::SignallingError as S;
        match e {
            RpcError::Unreachable { address, reason } => {
                S::Unreachable(format!("{address}: {reason}"))
            }
            RpcError::Timeout(_) => S::Timeout,
            RpcError::Remote { code, message } => S::Proxy { code, message },
            RpcError::BadReply(r) => S::BadReply(r),
        }
    }
}
