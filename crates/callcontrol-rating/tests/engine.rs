//! Prepaid calls through the real engine core and driver, rated by the
//! CDRTool client against the fake engine over TCP.
//!
//! The engine and the fake share a [`TestClock`] (real time plus jumps), so
//! hours of call time pass in an instant while sockets and retries run in
//! real time; a `status()` request wakes the driver after a jump.

mod common;

use std::sync::Arc;
use std::time::Duration;

use callcontrol_core::prelude::*;
use callcontrol_core::testkit::RecordingSignalling;
use callcontrol_rating::cdrtool::CdrtoolClient;
use callcontrol_rating::testkit::{FakeCdrtool, TestClock};
use common::{config, wait_until};

struct World {
    fake: FakeCdrtool,
    clock: TestClock,
    client: Arc<CdrtoolClient>,
    signalling: RecordingSignalling,
    handle: Handle,
    _shutdown: tokio_util::sync::DropGuard,
}

fn engine_config() -> EngineConfig {
    EngineConfig {
        retry_min: Duration::from_millis(10),
        retry_max: Duration::from_millis(50),
        ..EngineConfig::default()
    }
}

async fn world_with(engine: EngineConfig, setup: impl FnOnce(&FakeCdrtool)) -> World {
    let clock = TestClock::new();
    let fake = FakeCdrtool::start_with_clock(Arc::new(clock.clone()))
        .await
        .unwrap();
    setup(&fake);
    let client = Arc::new(CdrtoolClient::new(config(&fake.address())).unwrap());
    let signalling = RecordingSignalling::new();
    let shutdown = CancellationToken::new();
    let running = driver::spawn(
        Parts {
            config: engine,
            rating: client.clone(),
            signalling: Arc::new(signalling.clone()),
            store: Box::new(MemoryStore::new()),
            clock: Arc::new(clock.clone()),
        },
        shutdown.clone(),
    )
    .unwrap();
    World {
        fake,
        clock,
        client,
        signalling,
        handle: running.handle,
        _shutdown: shutdown.drop_guard(),
    }
}

async fn world(setup: impl FnOnce(&FakeCdrtool)) -> World {
    world_with(engine_config(), setup).await
}

fn prepaid(call_id: &str, user: &str) -> InitRequest {
    InitRequest::new(
        call_id,
        format!("<sip:{user}@example.com>"),
        "sip:0031201234567@example.com",
    )
    .prepaid(true)
}

fn start(call_id: &str) -> StartRequest {
    StartRequest {
        call_id: CallId::new(call_id),
        dialog_id: Some(DialogId::new(1, 2)),
    }
}

impl World {
    /// Lets `d` pass and has the driver fire what is due.
    async fn advance(&self, d: Duration) {
        self.clock.advance(d);
        self.handle.status().await.unwrap();
    }

    async fn debits_settled(&self) {
        for _ in 0..1000 {
            if self.handle.status().await.unwrap().debits_owed == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("debits still owed");
    }
}

#[tokio::test]
async fn two_parallel_prepaid_calls_share_the_balance_and_are_charged_once_each() {
    let w = world(|f| {
        f.add_prepaid("alice@example.com", "10.00");
        f.set_max_sessions("alice@example.com", 2);
    })
    .await;
    let h = &w.handle;
    assert_eq!(
        h.init(prepaid("c1", "alice")).await.unwrap(),
        InitReply::Limited
    );
    assert_eq!(h.show("c1").await.unwrap().unwrap().limit, Some(6000));
    assert_eq!(h.start(start("c1")).await.unwrap(), Found::Ok);

    w.advance(Duration::from_secs(3)).await;
    assert_eq!(
        h.init(prepaid("c2", "alice")).await.unwrap(),
        InitReply::Limited
    );
    assert_eq!(h.show("c2").await.unwrap().unwrap().limit, Some(2998));
    h.start(start("c2")).await.unwrap();
    // The re-query at the answer resets both calls to the shared limit.
    wait_until("c1 was reset to the shared limit", || {
        w.client.stats().requests["MaxSessionTime"]["limit"] == 4
    })
    .await;
    let c1 = h.show("c1").await.unwrap().unwrap();
    assert!(
        c1.limit.is_some_and(|l| (3000..=3001).contains(&l)),
        "{c1:?}"
    );

    // The first call ends after 63 s: its DebitBalance reply gives the new
    // shared limit, and the second call's timer is reset from it.
    w.advance(Duration::from_secs(60)).await;
    assert_eq!(h.stop("c1").await.unwrap(), Found::Ok);
    w.debits_settled().await;
    let c2 = h.show("c2").await.unwrap().unwrap();
    // 9.8950 left, c2 has run 60 s at 0.10/min: 5877 s more, 5937 s in all.
    assert_eq!(c2.limit, Some(5937), "{c2:?}");

    // The second call runs out of money: ended by the engine, charged its limit.
    w.advance(Duration::from_secs(5878)).await;
    wait_until("c2 was ended", || w.signalling.ended().len() == 1).await;
    assert_eq!(w.signalling.ended()[0].call_id, CallId::new("c2"));
    w.debits_settled().await;
    let charges: Vec<(String, u64, String)> = w
        .fake
        .charges()
        .into_iter()
        .map(|c| (c.call_id, c.duration, c.price))
        .collect();
    assert_eq!(
        charges,
        vec![
            ("c1".to_string(), 63, "0.1050".to_string()),
            ("c2".to_string(), 5937, "9.8950".to_string())
        ]
    );
    assert_eq!(
        w.fake.balance("alice@example.com").as_deref(),
        Some("0.0000")
    );
    assert!(w.fake.active_sessions("alice@example.com").is_empty());
    assert_eq!(w.client.pinned_parties(), 0);
}

#[tokio::test]
async fn locked_with_max_sessions_one() {
    let w = world(|f| f.add_prepaid("alice@example.com", "10.00")).await;
    let h = &w.handle;
    assert_eq!(
        h.init(prepaid("c1", "alice")).await.unwrap(),
        InitReply::Limited
    );
    h.start(start("c1")).await.unwrap();
    assert_eq!(
        h.init(prepaid("c2", "alice")).await.unwrap(),
        InitReply::Locked
    );
    w.advance(Duration::from_secs(10)).await;
    h.stop("c1").await.unwrap();
    w.debits_settled().await;
    let charges = w.fake.charges();
    assert_eq!(charges.len(), 1);
    assert_eq!(
        (charges[0].call_id.as_str(), charges[0].duration),
        ("c1", 10)
    );
}

#[tokio::test]
async fn no_credit_and_postpaid() {
    let w = world(|f| {
        f.add_prepaid("broke@example.com", "0");
        f.add_postpaid("bob@example.com");
    })
    .await;
    assert_eq!(
        w.handle.init(prepaid("n1", "broke")).await.unwrap(),
        InitReply::NoCredit
    );
    // The proxy marked a postpaid account prepaid: a configuration mismatch.
    assert_eq!(
        w.handle.init(prepaid("p1", "bob")).await.unwrap(),
        InitReply::Error
    );
    w.debits_settled().await;
    // The refused authorisation was released at no charge.
    assert!(w.fake.charges().is_empty());
    assert!(w.fake.active_sessions("broke@example.com").is_empty());
}

#[tokio::test]
async fn rating_engine_down_at_init_gets_the_policy() {
    let w = world(|f| f.add_prepaid("alice@example.com", "10.00")).await;
    w.fake.stop().await;
    assert_eq!(
        w.handle.init(prepaid("c1", "alice")).await.unwrap(),
        InitReply::Error
    );
    // Failed fast: not a timeout (which the engine would answer the same way
    // only after the rating timeout).
    assert_eq!(w.client.stats().timeouts, 0);

    let open = EngineConfig {
        rating_failure: RatingFailurePolicy::Allow(60),
        ..engine_config()
    };
    w.handle.reload(open).await.unwrap();
    assert_eq!(
        w.handle.init(prepaid("c2", "alice")).await.unwrap(),
        InitReply::Limited
    );
    assert_eq!(w.handle.show("c2").await.unwrap().unwrap().limit, Some(60));
}

#[tokio::test]
async fn engine_down_at_the_debit_is_charged_exactly_once_when_it_returns() {
    let w = world(|f| f.add_prepaid("alice@example.com", "10.00")).await;
    let h = &w.handle;
    h.init(prepaid("c1", "alice")).await.unwrap();
    h.start(start("c1")).await.unwrap();
    wait_until("re-rated at the answer", || {
        w.client.stats().requests["MaxSessionTime"]["limit"] == 2
    })
    .await;
    w.fake.stop().await;
    w.advance(Duration::from_secs(30)).await;
    h.stop("c1").await.unwrap();
    // The debit waits through the outage, retried by the engine core.
    for _ in 0..1000 {
        if h.status().await.unwrap().stats.debit_retries >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(h.status().await.unwrap().debits_owed, 1);
    assert!(w.fake.charges().is_empty());
    w.fake.restart().await.unwrap();
    w.debits_settled().await;
    let charges = w.fake.charges();
    assert_eq!(charges.len(), 1);
    assert_eq!(
        (charges[0].call_id.as_str(), charges[0].duration),
        ("c1", 30)
    );
    assert_eq!(w.client.stats().debits_ok, 1);
}

#[tokio::test]
async fn engine_restarted_mid_call() {
    let w = world(|f| f.add_prepaid("alice@example.com", "10.00")).await;
    let h = &w.handle;
    h.init(prepaid("c1", "alice")).await.unwrap();
    h.start(start("c1")).await.unwrap();
    w.fake.restart().await.unwrap();
    w.advance(Duration::from_secs(45)).await;
    h.stop("c1").await.unwrap();
    w.debits_settled().await;
    let charges = w.fake.charges();
    assert_eq!(charges.len(), 1);
    assert_eq!(charges[0].duration, 45);
    assert_eq!(
        w.fake.balance("alice@example.com").as_deref(),
        Some("9.9250")
    );
}

#[tokio::test]
async fn call_ids_the_engine_would_mangle_are_charged_under_their_own_key() {
    let w = world(|f| {
        f.add_prepaid("alice@example.com", "10.00");
        f.set_max_sessions("alice@example.com", 5);
    })
    .await;
    let ids = ["x=y@host", "a b@host", "ñandú@host"];
    for id in ids {
        assert_eq!(
            w.handle.init(prepaid(id, "alice")).await.unwrap(),
            InitReply::Limited,
            "{id}"
        );
        w.handle.start(start(id)).await.unwrap();
    }
    w.advance(Duration::from_secs(12)).await;
    for id in ids {
        w.handle.stop(id).await.unwrap();
    }
    w.debits_settled().await;
    let mut charged: Vec<(String, u64)> = w
        .fake
        .charges()
        .into_iter()
        .map(|c| (c.decoded_call_id, c.duration))
        .collect();
    charged.sort();
    let mut want: Vec<(String, u64)> = ids.iter().map(|i| (i.to_string(), 12)).collect();
    want.sort();
    assert_eq!(charged, want);
}
