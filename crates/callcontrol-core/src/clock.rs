//! Time, as the driver hands it to the engine.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::types::Timestamp;

/// A source of wall-clock time. The engine never reads the clock itself; its
/// driver asks a `Clock` and passes the answer in.
#[cfg_attr(feature = "mock", mockall::automock)]
pub trait Clock: Send + Sync + 'static {
    /// Now, in milliseconds since the Unix epoch.
    fn now(&self) -> Timestamp;
}

/// The wall clock, advanced by tokio's clock: reads the system time once,
/// then adds `tokio::time::Instant` elapsed time. Under
/// `tokio::time::pause()` it follows virtual time, so tests of two-hour calls
/// run in milliseconds; in production it is the wall clock.
#[derive(Debug, Clone)]
pub struct TokioClock {
    base: Timestamp,
    origin: tokio::time::Instant,
}

impl TokioClock {
    /// Starts the clock at the current system time.
    pub fn new() -> Self {
        let base = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        Self::starting_at(Timestamp(base))
    }
    /// Starts the clock at a given wall-clock time (tests).
    pub fn starting_at(base: Timestamp) -> Self {
        TokioClock {
            base,
            origin: tokio::time::Instant::now(),
        }
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for TokioClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.base.0 + self.origin.elapsed().as_millis() as u64)
    }
}
