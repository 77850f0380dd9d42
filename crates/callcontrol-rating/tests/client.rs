//! The CDRTool client against the fake rating engine over real TCP.

mod common;

use std::sync::Arc;
use std::time::Duration;

use callcontrol_core::error::RatingError;
use callcontrol_core::rating::{
    AccountType, Authorisation, DebitOutcome, RatedLimit, RatingBackend,
};
use callcontrol_rating::testkit::{FakeCdrtool, Fault};
use common::{auth, client, debit, wait_until};

async fn fake_with_alice() -> FakeCdrtool {
    let fake = FakeCdrtool::start().await.unwrap();
    fake.add_prepaid("alice@example.com", "10.00");
    fake
}

#[tokio::test]
async fn authorises_debits_and_a_repeated_debit_fails_without_a_second_charge() {
    let fake = fake_with_alice().await;
    let c = client(&fake.address());
    wait_until("the client connected", || c.health()[0].connected).await;
    assert_eq!(
        c.authorise(&auth("alice", "c1")).await,
        Ok(Authorisation::prepaid(6000))
    );
    assert_eq!(
        c.debit(&debit("alice", "c1", 60)).await,
        Ok(DebitOutcome::Debited {
            max_session_time: Some(0),
            price: Some("0.1000".into())
        })
    );
    assert_eq!(
        c.debit(&debit("alice", "c1", 60)).await,
        Ok(DebitOutcome::Failed {
            reason: "Failed".into()
        })
    );
    // `Failed\n\n\n` leaves a stray newline: the next reply is still read right.
    assert_eq!(
        c.authorise(&auth("alice", "c2")).await,
        Ok(Authorisation::prepaid(5940))
    );
    assert_eq!(fake.balance("alice@example.com").as_deref(), Some("9.9000"));
    assert_eq!(fake.charges().len(), 1);
    assert!(c.health()[0].connected);
    let s = c.stats();
    assert_eq!(s.requests["MaxSessionTime"]["limit"], 2);
    assert_eq!(s.requests["DebitBalance"]["ok"], 1);
    assert_eq!(s.requests["DebitBalance"]["failed"], 1);
    assert_eq!((s.debits_sent, s.debits_ok, s.debits_failed), (2, 1, 1));
    assert_eq!(s.latency.count, 4);
    // One connection did it all: one request in flight at a time.
    assert_eq!(fake.connections(), 1);
}

#[tokio::test]
async fn account_types_and_limits() {
    let fake = fake_with_alice().await;
    fake.add_prepaid("broke@example.com", "0");
    fake.add_postpaid("bob@example.com");
    let c = client(&fake.address());
    assert_eq!(
        c.authorise(&auth("broke", "n1")).await,
        Ok(Authorisation::prepaid(0))
    );
    assert_eq!(
        c.authorise(&auth("bob", "p1")).await,
        Ok(Authorisation {
            limit: RatedLimit::Unlimited,
            account: Some(AccountType::Postpaid)
        })
    );
    assert_eq!(
        c.authorise(&auth("alice", "a1")).await.map(|a| a.limit),
        Ok(RatedLimit::Seconds(6000))
    );
    // max_sessions 1: the second parallel call is locked.
    assert_eq!(
        c.authorise(&auth("alice", "a2")).await.map(|a| a.limit),
        Ok(RatedLimit::Locked)
    );
    // `none` and `Locked` record no session in the engine: only broke and
    // alice (a1) are pinned.
    assert_eq!(c.pinned_parties(), 2);
    assert_eq!(
        c.debit(&debit("bob", "p1", 10)).await,
        Ok(DebitOutcome::NotPrepaid)
    );
    let mut capped = auth("alice", "a1");
    capped.max_duration = 100;
    assert_eq!(
        c.authorise(&capped).await.map(|a| a.limit),
        Ok(RatedLimit::Seconds(100))
    );
}

#[tokio::test]
async fn a_stuck_engine_times_out_and_its_late_reply_never_answers_the_next_request() {
    let fake = fake_with_alice().await;
    fake.add_prepaid("bob@example.com", "1.00");
    let c = client(&fake.address());
    assert_eq!(
        c.authorise(&auth("bob", "warm")).await.map(|a| a.limit),
        Ok(RatedLimit::Seconds(600))
    );
    c.debit(&debit("bob", "warm", 0)).await.unwrap();
    // The engine hangs on alice's request.
    fake.push_fault_for("MaxSessionTime", Fault::Hold);
    assert_eq!(
        c.authorise(&auth("alice", "a1")).await,
        Err(RatingError::Timeout)
    );
    assert_eq!(c.stats().timeouts, 1);
    // Until a probe answers, requests fail at once instead of piling up.
    assert!(!c.health()[0].connected);
    assert!(matches!(
        c.authorise(&auth("bob", "b0")).await,
        Err(RatingError::Unreachable(_))
    ));
    // The engine wakes up and answers alice (6000) on the dropped connection.
    fake.release();
    wait_until("the client reconnected", || c.health()[0].connected).await;
    assert_eq!(
        c.authorise(&auth("bob", "b1")).await.map(|a| a.limit),
        Ok(RatedLimit::Seconds(600))
    );
    assert!(fake.connections() >= 2);
    // A slow reply (past the timeout) is not taken for the next answer either.
    fake.push_fault_for("MaxSessionTime", Fault::Delay(Duration::from_millis(300)));
    assert_eq!(
        c.authorise(&auth("alice", "a2")).await,
        Err(RatingError::Timeout)
    );
    wait_until("the client reconnected", || c.health()[0].connected).await;
    assert_eq!(
        c.debit(&debit("bob", "b1", 60))
            .await
            .map(|d| matches!(d, DebitOutcome::Debited { .. })),
        Ok(true)
    );
    assert_eq!(fake.charges().len(), 1);
}

#[tokio::test]
async fn garbage_and_truncated_replies() {
    let fake = fake_with_alice().await;
    let c = client(&fake.address());
    fake.push_fault_for(
        "MaxSessionTime",
        Fault::Garbage(b"HTTP/1.0 400 Bad Request\n\n".to_vec()),
    );
    assert!(matches!(
        c.authorise(&auth("alice", "a1")).await,
        Err(RatingError::BadReply(_))
    ));
    // Garbage without the terminator: no reply is ever complete.
    fake.push_fault_for(
        "MaxSessionTime",
        Fault::Garbage(b"\x00\x01garbage".to_vec()),
    );
    assert_eq!(
        c.authorise(&auth("alice", "a1")).await,
        Err(RatingError::Timeout)
    );
    wait_until("the client reconnected", || c.health()[0].connected).await;
    assert_eq!(
        c.authorise(&auth("alice", "a1")).await.map(|a| a.limit),
        Ok(RatedLimit::Seconds(6000))
    );

    // Garbage to a debit: not delivered, so `Err` (the engine core retries).
    fake.push_fault_for("DebitBalance", Fault::Garbage(b"Okay?\n\n".to_vec()));
    assert!(c.debit(&debit("alice", "a1", 30)).await.is_err());
    // A truncated reply: the engine charged, then the connection broke.
    fake.push_fault_for("DebitBalance", Fault::Truncate(5));
    assert!(c.debit(&debit("alice", "a1", 30)).await.is_err());
    // The retry is answered `Failed`: charged once, never twice.
    assert_eq!(
        c.debit(&debit("alice", "a1", 30)).await,
        Ok(DebitOutcome::Failed {
            reason: "Failed".into()
        })
    );
    assert_eq!(fake.charges().len(), 1);
    assert_eq!(fake.balance("alice@example.com").as_deref(), Some("9.9500"));
    let s = c.stats();
    assert_eq!(s.bad_replies, 2);
    assert_eq!(s.debits_undelivered, 2);
}

#[tokio::test]
async fn an_authorisation_is_repeated_on_a_new_connection_when_a_pooled_one_broke() {
    let fake = fake_with_alice().await;
    let c = client(&fake.address());
    c.authorise(&auth("alice", "a1")).await.unwrap();
    // The engine takes the request, then the connection drops unanswered.
    fake.push_fault_for("MaxSessionTime", Fault::Disconnect);
    assert_eq!(
        c.authorise(&auth("alice", "a1")).await.map(|a| a.limit),
        Ok(RatedLimit::Seconds(6000))
    );
    // A debit is not repeated by the client (a repeat would answer Failed).
    fake.push_fault_for("DebitBalance", Fault::Disconnect);
    assert!(c.debit(&debit("alice", "a1", 10)).await.is_err());
    assert_eq!(fake.charges().len(), 1);
}

#[tokio::test]
async fn an_engine_that_is_down_fails_fast_and_is_reconnected() {
    let fake = fake_with_alice().await;
    fake.stop().await;
    let c = client(&fake.address());
    // Refused at once: `Unreachable`, not a timeout.
    assert!(matches!(
        c.authorise(&auth("alice", "a1")).await,
        Err(RatingError::Unreachable(_))
    ));
    assert!(matches!(
        c.authorise(&auth("alice", "a2")).await,
        Err(RatingError::Unreachable(_))
    ));
    assert!(matches!(
        c.debit(&debit("alice", "a1", 5)).await,
        Err(RatingError::Unreachable(_))
    ));
    assert!(!c.health()[0].connected);
    assert!(c.last_errors()[0].1.is_some());
    fake.restart().await.unwrap();
    wait_until("the client reconnected", || c.health()[0].connected).await;
    assert_eq!(
        c.authorise(&auth("alice", "a1")).await.map(|a| a.limit),
        Ok(RatedLimit::Seconds(6000))
    );
}

#[tokio::test]
async fn an_engine_restarted_mid_call_gets_the_debit() {
    let fake = fake_with_alice().await;
    let c = client(&fake.address());
    c.authorise(&auth("alice", "a1")).await.unwrap();
    fake.restart().await.unwrap();
    // The pooled connection died with the engine; a new one carries the debit.
    let d = c.debit(&debit("alice", "a1", 42)).await;
    assert!(matches!(d, Ok(DebitOutcome::Debited { .. })), "{d:?}");
    assert_eq!(fake.charges().len(), 1);
    assert_eq!(fake.charges()[0].duration, 42);
}

#[tokio::test]
async fn call_ids_with_equals_spaces_and_non_ascii_keep_one_session_key() {
    let fake = fake_with_alice().await;
    fake.set_max_sessions("alice@example.com", 10);
    let c = client(&fake.address());
    let ids = [
        "a=b@h",
        "with space@h",
        "tab\tand\r\nnewline",
        "ünïcödé@h",
        "%41@h",
        "A@h",
    ];
    for id in ids {
        assert!(c.authorise(&auth("alice", id)).await.is_ok(), "{id}");
    }
    // Six distinct sessions: `%41@h` and `A@h` do not collide.
    assert_eq!(fake.active_sessions("alice@example.com").len(), ids.len());
    for id in ids {
        let d = c.debit(&debit("alice", id, 6)).await;
        assert!(matches!(d, Ok(DebitOutcome::Debited { .. })), "{id}: {d:?}");
    }
    let charged: Vec<String> = fake
        .charges()
        .into_iter()
        .map(|c| c.decoded_call_id)
        .collect();
    assert_eq!(charged, ids);
    for r in fake
        .requests()
        .iter()
        .filter(|r| !r.starts_with("KeepAlive"))
    {
        assert_eq!(r.split_whitespace().count(), 7, "{r}");
        assert!(r.is_ascii(), "{r}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_sessions_are_rated_at_once_without_mixing_replies() {
    let fake = FakeCdrtool::start().await.unwrap();
    for i in 0..40 {
        fake.add_prepaid(&format!("u{i}@example.com"), &format!("{}.00", i + 1));
    }
    let c = Arc::new(client(&fake.address()));
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let c = c.clone();
            tokio::spawn(async move {
                (
                    i,
                    c.authorise(&auth(&format!("u{i}"), &format!("c{i}"))).await,
                )
            })
        })
        .collect();
    for t in tasks {
        let (i, r) = t.await.unwrap();
        assert_eq!(
            r.map(|a| a.limit),
            Ok(RatedLimit::Seconds(600 * (i + 1))),
            "u{i}"
        );
    }
    // A pool of 4 (plus the supervisor's first connection at most).
    assert!(fake.connections() <= 5, "{}", fake.connections());
}

#[tokio::test]
async fn a_party_stays_on_one_engine_while_it_has_sessions() {
    let (a, b) = (fake_with_alice().await, fake_with_alice().await);
    for f in [&a, &b] {
        f.set_max_sessions("alice@example.com", 5);
    }
    let c = client(&format!("{} {}", a.address(), b.address()));
    for id in ["c1", "c2", "c3"] {
        c.authorise(&auth("alice", id)).await.unwrap();
    }
    let (home, other) = if a.active_sessions("alice@example.com").is_empty() {
        (&b, &a)
    } else {
        (&a, &b)
    };
    assert_eq!(home.active_sessions("alice@example.com").len(), 3);
    assert!(other.requests().iter().all(|r| r == "KeepAlive"));
    assert_eq!(c.pinned_parties(), 1);
    // The home engine goes down: alice's sessions are there, so no failover.
    home.stop().await;
    assert!(matches!(
        c.authorise(&auth("alice", "c4")).await,
        Err(RatingError::Unreachable(_))
    ));
    assert!(c.debit(&debit("alice", "c1", 10)).await.is_err());
    home.restart().await.unwrap();
    wait_until("both engines connected", || {
        c.health().iter().all(|h| h.connected)
    })
    .await;
    for id in ["c1", "c2", "c3"] {
        assert!(matches!(
            c.debit(&debit("alice", id, 10)).await,
            Ok(DebitOutcome::Debited { .. })
        ));
    }
    assert_eq!(home.charges().len(), 3);
    assert_eq!(c.pinned_parties(), 0);
    // No sessions left: with its engine down, alice is rated by the other one.
    home.stop().await;
    let _ = c.authorise(&auth("alice", "probe")).await;
    assert!(c.authorise(&auth("alice", "c5")).await.is_ok());
    assert_eq!(
        other.active_sessions("alice@example.com"),
        vec!["c5".to_string()]
    );
}

#[tokio::test]
async fn balances() {
    let fake = fake_with_alice().await;
    let c = client(&fake.address());
    assert_eq!(
        c.balance("alice@example.com").await.unwrap().balance,
        "10.0000"
    );
    let b = c
        .add_balance("sip:alice@example.com", "5.50")
        .await
        .unwrap();
    assert_eq!(
        (b.account.as_str(), b.balance.as_str()),
        ("alice@example.com", "15.5000")
    );
    let h = c.balance_history("alice@example.com").await.unwrap();
    assert_eq!(h.len(), 1);
    assert!(h[0].fields.contains(&("value".into(), "5.5000".into())));
    assert!(matches!(
        c.add_balance("alice@example.com", "1e9").await,
        Err(RatingError::Engine(_))
    ));
    assert!(matches!(
        c.balance("nobody@example.com").await,
        Err(RatingError::Engine(_))
    ));
    assert!(c.balance("not an account").await.is_err());
}

#[tokio::test]
async fn after_a_restart_a_debit_finds_the_engine_that_authorised_the_call() {
    let (a, b) = (fake_with_alice().await, fake_with_alice().await);
    let both = format!("{} {}", a.address(), b.address());
    // Find which engine alice's calls prefer, then authorise on the other one
    // (as if the preferred engine had been down at the time).
    let probe = client(&both);
    wait_until("both engines connected", || {
        probe.health().iter().all(|h| h.connected)
    })
    .await;
    probe.authorise(&auth("alice", "probe")).await.unwrap();
    probe.debit(&debit("alice", "probe", 0)).await.unwrap();
    let (preferred, other) = if a.ledger().is_empty() {
        (&b, &a)
    } else {
        (&a, &b)
    };
    let only_other = client(&other.address());
    wait_until("the other engine connected", || {
        only_other.health()[0].connected
    })
    .await;
    only_other.authorise(&auth("alice", "c1")).await.unwrap();
    // The daemon restarts: a new client with both engines and no pins.
    let restarted = client(&both);
    wait_until("both engines connected", || {
        restarted.health().iter().all(|h| h.connected)
    })
    .await;
    let outcome = restarted.debit(&debit("alice", "c1", 60)).await.unwrap();
    assert!(
        matches!(outcome, DebitOutcome::Debited { .. }),
        "{outcome:?}"
    );
    let charged: Vec<_> = other
        .charges()
        .into_iter()
        .filter(|c| c.call_id == "c1")
        .collect();
    assert_eq!(
        charged.len(),
        1,
        "charged once, on the engine that authorised it"
    );
    assert!(preferred.charges().iter().all(|c| c.call_id != "c1"));
}
