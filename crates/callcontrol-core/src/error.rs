//! Errors of the core crate, grouped by where the failure came from.

use thiserror::Error;

/// A request from the proxy or an admin client that cannot be served as sent.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum RequestError {
    /// The From header holds no usable `sip:`/`sips:` URI.
    #[error("no SIP URI in From header {0:?}")]
    BadFrom(String),
    /// The `dialogid` is neither a decimal u64 nor `h_entry:h_id`.
    #[error("bad dialog id {0:?}")]
    BadDialogId(String),
    /// A key has a value that cannot be parsed.
    #[error("bad value {value:?} for {key}")]
    BadValue {
        /// The key.
        key: &'static str,
        /// The value as received.
        value: String,
    },
    /// A required key is missing.
    #[error("missing key {0}")]
    MissingKey(&'static str),
}

/// A failure of the rating backend (transport, timeout, nonsense answer).
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum RatingError {
    /// No rating engine could be reached.
    #[error("rating engine unreachable: {0}")]
    Unreachable(String),
    /// The rating engine did not answer in time.
    #[error("rating engine timed out")]
    Timeout,
    /// The rating engine answered something that is not a valid reply.
    #[error("rating engine answered nonsense: {0:?}")]
    BadReply(String),
    /// The rating engine answered `Error: …`.
    #[error("rating engine error: {0}")]
    Engine(String),
    /// This backend does not support the operation (e.g. balances on the
    /// fixed-limit backend).
    #[error("not supported by this rating backend")]
    Unsupported,
}

/// A failure of the signalling backend (the proxy's MI/RPC interface).
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum SignallingError {
    /// The management socket is missing or refused the request.
    #[error("proxy management interface unreachable: {0}")]
    Unreachable(String),
    /// No answer in time, after the retries.
    #[error("proxy management interface timed out")]
    Timeout,
    /// The proxy answered with an error.
    #[error("proxy answered error {code}: {message}")]
    Proxy {
        /// The JSON-RPC (or plain text) error code.
        code: i64,
        /// Its message.
        message: String,
    },
    /// The proxy answered something that is not a valid reply.
    #[error("proxy answered nonsense: {0:?}")]
    BadReply(String),
}

/// A failure of the session store.
#[derive(Debug, Error)]
pub enum StoreError {
    /// I/O on the store's files.
    #[error("session store I/O: {0}")]
    Io(#[from] std::io::Error),
    /// A stored record could not be read back.
    #[error("session store corrupt: {0}")]
    Corrupt(String),
}

/// A failure talking to the engine task.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum DriverError {
    /// The engine task has stopped (shutdown).
    #[error("call control engine is shutting down")]
    Stopped,
}
