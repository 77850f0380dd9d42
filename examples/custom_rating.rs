//! A custom rating backend in a few dozen lines: prepaid balances kept in
//! memory, priced per minute, with the shared limit for parallel calls.
//!
//! `cargo run --example custom_rating`

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use callcontrol::prelude::*;

/// Balances in hundredths of a cent per account; one price for every call.
struct Wallets {
    balances: Mutex<HashMap<String, u64>>,
    /// Hundredths of a cent per second.
    rate: u64,
}

#[async_trait::async_trait]
impl RatingBackend for Wallets {
    async fn authorise(&self, req: &AuthoriseRequest) -> Result<Authorisation, RatingError> {
        let balances = self
            .balances
            .lock()
            .map_err(|_| RatingError::Engine("poisoned".into()))?;
        let Some(balance) = balances.get(req.party.user_host()) else {
            return Ok(Authorisation {
                limit: RatedLimit::Unlimited,
                account: Some(AccountType::Postpaid),
            });
        };
        Ok(Authorisation::prepaid(
            (balance / self.rate).min(req.max_duration),
        ))
    }

    async fn debit(&self, req: &DebitRequest) -> Result<DebitOutcome, RatingError> {
        let mut balances = self
            .balances
            .lock()
            .map_err(|_| RatingError::Engine("poisoned".into()))?;
        let Some(balance) = balances.get_mut(req.party.user_host()) else {
            return Ok(DebitOutcome::NotPrepaid);
        };
        let price = req.duration * self.rate;
        *balance = balance.saturating_sub(price);
        Ok(DebitOutcome::Debited {
            // The shared limit for the party's calls still running.
            max_session_time: Some(*balance / self.rate),
            price: Some(format!("{}.{:04}", price / 10_000, price % 10_000)),
        })
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let wallets = Wallets {
        balances: Mutex::new(HashMap::from([("alice@example.com".to_string(), 100_000)])),
        rate: 17, // 0.10 per minute
    };
    let shutdown = CancellationToken::new();
    let running = driver::spawn(
        Parts {
            config: EngineConfig::default(),
            rating: Arc::new(wallets),
            signalling: Arc::new(LogSignalling),
            store: Box::new(MemoryStore::new()),
            clock: Arc::new(TokioClock::new()),
        },
        shutdown.clone(),
    )?;
    let req = InitRequest::new(
        "c1@example.com",
        "<sip:alice@example.com>",
        "sip:bob@example.com",
    )
    .prepaid(true);
    println!(
        "alice (10.00): {}",
        running.handle.init(req).await?.as_str()
    );
    let s = running
        .handle
        .show("c1@example.com")
        .await?
        .ok_or("no session")?;
    println!("limit: {:?} seconds", s.limit);
    let req = InitRequest::new(
        "c2@example.com",
        "<sip:bob@example.com>",
        "sip:alice@example.com",
    )
    .prepaid(true);
    println!(
        "bob (no wallet): {}",
        running.handle.init(req).await?.as_str()
    );
    shutdown.cancel();
    running.task.await??;
    Ok(())
}
