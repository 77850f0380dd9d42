//! The engine's settings (the `[CallControl]` policy part of `config.ini`).

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What to do with a prepaid `init` when the rating engine is down, slow or
/// answers nonsense.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum RatingFailurePolicy {
    /// Answer `Error` (the original's behaviour; the default).
    #[default]
    Reject,
    /// Fail open: allow the call with this limit in seconds.
    Allow(u64),
}

/// The engine's policy settings. Every field can change at run time
/// (`SIGHUP`): sessions keep the limit they were given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct EngineConfig {
    /// `[CallControl] limit`: the fixed limit in seconds for sessions that
    /// are not prepaid; `None` = no limit.
    pub limit: Option<u64>,
    /// `[CallControl] prepaid_limit`: the cap for prepaid sessions; when
    /// unset, `limit`, else 36000 s.
    pub prepaid_limit: Option<u64>,
    /// Unanswered tracked sessions are released after this long.
    pub setup_timeout: Duration,
    /// Answered sessions with no limit are ended after this long.
    pub stale_timeout: Duration,
    /// How long an `init` waits for the rating engine before the policy applies.
    pub rating_timeout: Duration,
    /// The most an `init` reply may take, whatever `rating_timeout` says:
    /// the proxy gives up after 500 ms (and disables the worker for 10 s),
    /// so the policy must be applied before then.
    pub init_reply_budget: Duration,
    /// What a prepaid `init` gets when rating fails.
    pub rating_failure: RatingFailurePolicy,
    /// Debits in flight at once (they still start in the order owed).
    pub debit_window: usize,
    /// First retry delay of a failed debit or dialog end; doubles up to
    /// `retry_max`.
    pub retry_min: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            limit: None,
            prepaid_limit: None,
            setup_timeout: Duration::from_secs(90),
            stale_timeout: Duration::from_secs(24 * 3600),
            rating_timeout: Duration::from_millis(500),
            init_reply_budget: Duration::from_millis(450),
            rating_failure: RatingFailurePolicy::Reject,
            debit_window: 8,
            retry_min: Duration::from_secs(1),
            retry_max: Duration::from_secs(60),
        }
    }
}

impl EngineConfig {
    /// The cap a prepaid session is asked for (`Duration` of MaxSessionTime).
    pub fn prepaid_cap(&self) -> u64 {
        self.prepaid_limit.or(self.limit).unwrap_or(36000)
    }

    /// The retry delay after `attempts` failures (1 = first retry).
    pub fn retry_delay(&self, attempts: u32) -> Duration {
        let shift = attempts.saturating_sub(1).min(16);
        self.retry_min
            .saturating_mul(1 << shift)
            .min(self.retry_max)
    }
}
