//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::time::Duration;

use callcontrol_core::rating::{AuthoriseRequest, DebitRequest};
use callcontrol_core::types::{BillingParty, CallId};
use callcontrol_rating::cdrtool::{CdrtoolClient, CdrtoolConfig};

/// Client settings for tests: a short timeout and quick reconnects.
pub fn config(addresses: &str) -> CdrtoolConfig {
    CdrtoolConfig {
        timeout: Duration::from_millis(200),
        reconnect_min: Duration::from_millis(5),
        reconnect_max: Duration::from_millis(40),
        ..CdrtoolConfig::with_address(addresses).unwrap()
    }
}

pub fn client(addresses: &str) -> CdrtoolClient {
    CdrtoolClient::new(config(addresses)).unwrap()
}

pub fn auth(user: &str, call_id: &str) -> AuthoriseRequest {
    AuthoriseRequest {
        call_id: CallId::new(call_id),
        party: BillingParty::new(format!("sip:{user}@example.com")),
        to: "sip:0031201234567@example.com".into(),
        gateway: "127.0.0.1".into(),
        max_duration: 36000,
        application: "audio".into(),
        connected: false,
    }
}

pub fn debit(user: &str, call_id: &str, duration: u64) -> DebitRequest {
    DebitRequest {
        call_id: CallId::new(call_id),
        party: BillingParty::new(format!("sip:{user}@example.com")),
        to: "sip:0031201234567@example.com".into(),
        gateway: "127.0.0.1".into(),
        duration,
        application: "audio".into(),
    }
}

/// Polls `cond` every 5 ms for up to 5 s (real time); panics with `what`.
pub async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("timed out waiting until {what}");
}
