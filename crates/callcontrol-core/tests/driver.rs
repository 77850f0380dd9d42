//! The tokio driver under virtual time, with the test kit's scriptable fakes
//! and the mockall mocks.

use std::sync::Arc;
use std::time::Duration;

use callcontrol_core::prelude::*;
use callcontrol_core::rating::MockRatingBackend;
use callcontrol_core::testkit::{FakeRating, RecordingSignalling, Scripted};

struct Rig {
    handle: Handle,
    rating: FakeRating,
    signalling: RecordingSignalling,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), StoreError>>,
}

fn rig(config: EngineConfig) -> Rig {
    let rating = FakeRating::new();
    let signalling = RecordingSignalling::new();
    let shutdown = CancellationToken::new();
    let running = driver::spawn(
        Parts {
            config,
            rating: Arc::new(rating.clone()),
            signalling: Arc::new(signalling.clone()),
            store: Box::new(MemoryStore::new()),
            clock: Arc::new(TokioClock::starting_at(Timestamp(1_700_000_000_000))),
        },
        shutdown.clone(),
    )
    .unwrap();
    Rig {
        handle: running.handle,
        rating,
        signalling,
        shutdown,
        task: running.task,
    }
}

fn call(id: &str) -> InitRequest {
    InitRequest::new(id, "<sip:alice@example.com>", "sip:bob@example.com")
}

async fn settle() {
    // Let spawned backend tasks and the driver run (virtual time stays put).
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_two_hour_prepaid_call_is_cut_and_debited_in_virtual_time() {
    let r = rig(EngineConfig::default());
    r.rating
        .set_default_authorise(Scripted::now(Ok(Authorisation::prepaid(7200))));
    assert_eq!(
        r.handle.init(call("c1").prepaid(true)).await.unwrap(),
        InitReply::Limited
    );
    let start = StartRequest {
        call_id: CallId::new("c1"),
        dialog_id: Some(DialogId::new(7, 9)),
    };
    assert_eq!(r.handle.start(start).await.unwrap(), Found::Ok);
    tokio::time::sleep(Duration::from_secs(7199)).await;
    settle().await;
    assert!(r.signalling.ended().is_empty());
    tokio::time::sleep(Duration::from_secs(1)).await;
    settle().await;
    let ended = r.signalling.ended();
    assert_eq!(ended.len(), 1);
    assert_eq!(ended[0].dialog_id, Some(DialogId::new(7, 9)));
    let debits = r.rating.debits();
    assert_eq!(debits.len(), 1);
    assert_eq!(debits[0].duration, 7200);
    assert_eq!(r.handle.stop("c1").await.unwrap(), Found::NotFound);
    r.shutdown.cancel();
    r.task.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_hanging_rating_engine_gets_the_policy_at_the_timeout_and_blocks_nobody() {
    let r = rig(EngineConfig {
        limit: Some(60),
        ..Default::default()
    });
    r.rating.set_default_authorise(Scripted::after(
        Duration::from_secs(3600),
        Ok(Authorisation::prepaid(60)),
    ));
    let h = r.handle.clone();
    let started = tokio::time::Instant::now();
    let slow = tokio::spawn(async move { h.init(call("slow").prepaid(true)).await.unwrap() });
    settle().await;
    // Another call is served while the rating engine hangs.
    assert_eq!(
        r.handle.init(call("fast")).await.unwrap(),
        InitReply::Limited
    );
    assert_eq!(tokio::time::Instant::now(), started, "served at once");
    assert_eq!(slow.await.unwrap(), InitReply::Error);
    assert_eq!(
        started.elapsed(),
        Duration::from_millis(450),
        "policy applied inside the proxy's 500 ms"
    );
}

#[tokio::test(start_paused = true)]
async fn fail_open_policy_allows_the_call_when_rating_fails() {
    let r = rig(EngineConfig {
        rating_failure: RatingFailurePolicy::Allow(300),
        ..Default::default()
    });
    r.rating
        .push_authorise(Scripted::now(Err(RatingError::Unreachable(
            "refused".into(),
        ))));
    assert_eq!(
        r.handle.init(call("c1").prepaid(true)).await.unwrap(),
        InitReply::Limited
    );
    assert_eq!(r.handle.show("c1").await.unwrap().unwrap().limit, Some(300));
}

#[tokio::test(start_paused = true)]
async fn a_debit_lost_in_an_outage_is_delivered_when_the_engine_returns() {
    let r = rig(EngineConfig::default());
    r.rating
        .push_debit(Scripted::now(Err(RatingError::Unreachable("down".into()))));
    r.rating
        .push_debit(Scripted::now(Err(RatingError::Timeout)));
    r.handle.init(call("c1").prepaid(true)).await.unwrap();
    r.handle
        .start(StartRequest {
            call_id: CallId::new("c1"),
            dialog_id: None,
        })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(30)).await;
    r.handle.stop("c1").await.unwrap();
    settle().await;
    assert_eq!(r.handle.status().await.unwrap().debits_owed, 1);
    tokio::time::sleep(Duration::from_secs(10)).await;
    settle().await;
    let debits = r.rating.debits();
    assert_eq!(debits.len(), 3, "two failed attempts, then delivered");
    assert!(debits
        .iter()
        .all(|d| d.duration == 30 && d.call_id.as_str() == "c1"));
    assert_eq!(r.handle.status().await.unwrap().debits_owed, 0);
}

#[tokio::test(start_paused = true)]
async fn debit_reply_resets_the_parallel_session_through_the_driver() {
    let r = rig(EngineConfig::default());
    r.rating
        .set_default_authorise(Scripted::now(Ok(Authorisation::prepaid(6000))));
    r.rating.push_debit(Scripted::now(Ok(DebitOutcome::Debited {
        max_session_time: Some(100),
        price: Some("0.1".into()),
    })));
    for id in ["c1", "c2"] {
        r.handle.init(call(id).prepaid(true)).await.unwrap();
        r.handle
            .start(StartRequest {
                call_id: CallId::new(id),
                dialog_id: None,
            })
            .await
            .unwrap();
    }
    settle().await;
    r.handle.stop("c1").await.unwrap();
    settle().await;
    assert_eq!(
        r.handle.show("c2").await.unwrap().unwrap().remaining,
        Some(100)
    );
    tokio::time::sleep(Duration::from_secs(100)).await;
    settle().await;
    assert_eq!(r.signalling.ended().len(), 1);
    assert_eq!(r.signalling.ended()[0].call_id.as_str(), "c2");
}

#[tokio::test(start_paused = true)]
async fn graceful_shutdown_answers_inits_in_flight() {
    let r = rig(EngineConfig::default());
    r.rating.set_default_authorise(Scripted::after(
        Duration::from_millis(200),
        Ok(Authorisation::prepaid(60)),
    ));
    let h = r.handle.clone();
    let pending = tokio::spawn(async move { h.init(call("c1").prepaid(true)).await });
    settle().await;
    r.shutdown.cancel();
    assert_eq!(pending.await.unwrap().unwrap(), InitReply::Limited);
    r.task.await.unwrap().unwrap();
    assert_eq!(r.handle.list(None).await, Err(DriverError::Stopped));
}

#[tokio::test(start_paused = true)]
async fn mocked_rating_backend_is_asked_exactly_once_per_prepaid_init() {
    let mut mock = MockRatingBackend::new();
    mock.expect_authorise()
        .withf(|req| {
            req.call_id.as_str() == "c1"
                && req.party.as_str() == "sip:alice@example.com"
                && req.max_duration == 36000
        })
        .times(1)
        .returning(|_| Ok(Authorisation::prepaid(0)));
    mock.expect_debit()
        .withf(|req| req.duration == 0)
        .times(1)
        .returning(|_| {
            Ok(DebitOutcome::Debited {
                max_session_time: Some(0),
                price: None,
            })
        });
    let running = driver::spawn(
        Parts {
            config: EngineConfig::default(),
            rating: Arc::new(mock),
            signalling: Arc::new(RecordingSignalling::new()),
            store: Box::new(MemoryStore::new()),
            clock: Arc::new(TokioClock::new()),
        },
        CancellationToken::new(),
    )
    .unwrap();
    assert_eq!(
        running.handle.init(call("c1").prepaid(true)).await.unwrap(),
        InitReply::NoCredit
    );
    settle().await;
    assert_eq!(running.handle.status().await.unwrap().debits_owed, 0);
}

#[tokio::test(start_paused = true)]
async fn init_reply_keeps_inside_the_proxys_500_ms_whatever_the_rating_timeout() {
    let r = rig(EngineConfig {
        rating_timeout: Duration::from_secs(2),
        ..Default::default()
    });
    r.rating.set_default_authorise(Scripted::after(
        Duration::from_secs(1),
        Ok(Authorisation::prepaid(60)),
    ));
    let started = tokio::time::Instant::now();
    assert_eq!(
        r.handle.init(call("c1").prepaid(true)).await.unwrap(),
        InitReply::Error
    );
    assert_eq!(started.elapsed(), Duration::from_millis(450));
}

/// A memory store that counts its `apply` calls and may ask for group commit.
#[derive(Clone)]
struct CountingStore {
    inner: Arc<std::sync::Mutex<(MemoryStore, u32)>>,
    group_commit: bool,
}

impl SessionStore for CountingStore {
    fn apply(&mut self, changes: &[StoreChange]) -> Result<(), StoreError> {
        let mut g = self.inner.lock().unwrap();
        g.1 += 1;
        g.0.apply(changes)
    }
    fn load(&mut self) -> Result<Snapshot, StoreError> {
        self.inner.lock().unwrap().0.load()
    }
    fn group_commit(&self) -> bool {
        self.group_commit
    }
}

/// Eight `init`s sent at once: served one by one inline, or in one batch
/// (one `apply`) when the store flushes to disk on every apply.
async fn applies_for_eight_concurrent_inits(group_commit: bool) -> (u32, usize) {
    let store = CountingStore {
        inner: Default::default(),
        group_commit,
    };
    let running = driver::spawn(
        Parts {
            config: EngineConfig {
                limit: Some(60),
                ..Default::default()
            },
            rating: Arc::new(NoRating),
            signalling: Arc::new(RecordingSignalling::new()),
            store: Box::new(store.clone()),
            clock: Arc::new(TokioClock::starting_at(Timestamp(1_700_000_000_000))),
        },
        CancellationToken::new(),
    )
    .unwrap();
    settle().await;
    let before = store.inner.lock().unwrap().1;
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let h = running.handle.clone();
            tokio::spawn(async move { h.init(call(&format!("g{i}"))).await.unwrap() })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), InitReply::Limited);
    }
    let g = store.inner.lock().unwrap();
    (g.1 - before, g.0.snapshot().sessions.len())
}

#[tokio::test(start_paused = true)]
async fn requests_are_served_inline_or_in_batches_for_a_group_commit_store() {
    assert_eq!(applies_for_eight_concurrent_inits(false).await, (8, 8));
    let (applies, persisted) = applies_for_eight_concurrent_inits(true).await;
    assert_eq!(persisted, 8, "every acknowledged session persisted");
    assert_eq!(applies, 1, "one batch, one apply");
}
