//! The fixed-limit rating backend: every session gets the configured limit,
//! nothing is debited. For deployments without a rating engine, and as the
//! simplest example of a [`RatingBackend`].

use async_trait::async_trait;
use callcontrol_core::error::RatingError;
use callcontrol_core::rating::{
    AccountType, Authorisation, AuthoriseRequest, DebitOutcome, DebitRequest, RatedLimit,
    RatingBackend, RatingHealth,
};

/// Gives every session `limit` seconds (`None`: no limit) and debits nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FixedLimit {
    limit: Option<u64>,
}

impl FixedLimit {
    /// Every session gets `limit` seconds; `None` means unlimited.
    pub fn new(limit: Option<u64>) -> Self {
        FixedLimit { limit }
    }
    /// The configured limit.
    pub fn limit(&self) -> Option<u64> {
        self.limit
    }
}

#[async_trait]
impl RatingBackend for FixedLimit {
    async fn authorise(&self, req: &AuthoriseRequest) -> Result<Authorisation, RatingError> {
        let limit = match self.limit {
            Some(l) => RatedLimit::Seconds(l.min(req.max_duration)),
            None => RatedLimit::Unlimited,
        };
        Ok(Authorisation {
            limit,
            account: Some(AccountType::Prepaid),
        })
    }

    async fn debit(&self, _req: &DebitRequest) -> Result<DebitOutcome, RatingError> {
        Ok(DebitOutcome::NotPrepaid)
    }

    fn health(&self) -> Vec<RatingHealth> {
        vec![RatingHealth {
            address: "fixed-limit".into(),
            connected: true,
        }]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use callcontrol_core::types::{BillingParty, CallId};

    fn req(max: u64) -> AuthoriseRequest {
        AuthoriseRequest {
            call_id: CallId::new("c"),
            party: BillingParty::new("sip:a@b"),
            to: "sip:x@y".into(),
            gateway: "127.0.0.1".into(),
            max_duration: max,
            application: "audio".into(),
            connected: false,
        }
    }

    #[tokio::test]
    async fn gives_the_configured_limit_capped_by_the_request() {
        let b = FixedLimit::new(Some(600));
        assert_eq!(
            b.authorise(&req(36000)).await.unwrap().limit,
            RatedLimit::Seconds(600)
        );
        assert_eq!(
            b.authorise(&req(300)).await.unwrap().limit,
            RatedLimit::Seconds(300)
        );
        let none = FixedLimit::new(None);
        assert_eq!(
            none.authorise(&req(300)).await.unwrap().limit,
            RatedLimit::Unlimited
        );
    }

    #[tokio::test]
    async fn debits_nothing() {
        let b = FixedLimit::new(Some(600));
        let d = DebitRequest {
            call_id: CallId::new("c"),
            party: BillingParty::new("sip:a@b"),
            to: "sip:x@y".into(),
            gateway: "127.0.0.1".into(),
            duration: 60,
            application: "audio".into(),
        };
        assert_eq!(b.debit(&d).await.unwrap(), DebitOutcome::NotPrepaid);
    }
}
