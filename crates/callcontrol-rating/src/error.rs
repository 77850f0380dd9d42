//! Errors of the rating crate. Failures talking to a rating engine are the
//! core's [`callcontrol_core::error::RatingError`]; this crate adds its own
//! configuration and set-up errors.

use thiserror::Error;

/// A bad `[CDRTool]` setting.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("[CDRTool] {key}: {message}")]
pub struct ConfigError {
    /// The key in the `[CDRTool]` section.
    pub key: &'static str,
    /// What is wrong with it.
    pub message: String,
}

impl ConfigError {
    /// A problem with `key`.
    pub fn new(key: &'static str, message: impl Into<String>) -> Self {
        ConfigError {
            key,
            message: message.into(),
        }
    }
}

/// Why a rating client could not be built.
#[derive(Debug, Error)]
pub enum Error {
    /// A bad setting.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The client spawns its reconnect tasks and needs a tokio runtime.
    #[error("the CDRTool client must be created inside a tokio runtime")]
    NoRuntime,
}
