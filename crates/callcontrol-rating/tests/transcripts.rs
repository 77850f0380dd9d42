//! The PROTOCOLS.md §5 transcripts, replayed byte for byte against the fake
//! engine over a raw TCP socket, and its replies read back with the codec.

use std::sync::Arc;
use std::time::Duration;

use callcontrol_core::rating::{Authorisation, DebitOutcome};
use callcontrol_rating::cdrtool::codec::{self, Frame};
use callcontrol_rating::testkit::{FakeCdrtool, TestClock};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const MST_B1: &str = "MaxSessionTime CallId=b1@h From=sip:alice@example.com To=sip:0031201234567@example.com Gateway=127.0.0.1 Duration=36000 Application=audio";
const MST_B2: &str = "MaxSessionTime CallId=b2@h From=sip:alice@example.com To=sip:0031201234567@example.com Gateway=127.0.0.1 Duration=36000 Application=audio";
const DEBIT_B1: &str = "DebitBalance CallId=b1@h From=sip:alice@example.com To=sip:0031201234567@example.com Gateway=127.0.0.1 Duration=60 Application=audio";
const DEBIT_B2_0: &str = "DebitBalance CallId=b2@h From=sip:alice@example.com To=sip:0031201234567@example.com Gateway=127.0.0.1 Duration=0 Application=audio";

/// Sends one request (one write) and reads until a whole reply.
async fn ask(s: &mut TcpStream, req: &str) -> String {
    s.write_all(req.as_bytes()).await.unwrap();
    read_reply(s).await
}

async fn read_reply(s: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    loop {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut chunk))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed after {buf:?}");
        buf.extend_from_slice(&chunk[..n]);
        if let Frame::Complete { .. } = codec::frame_reply(&buf) {
            return String::from_utf8(buf).unwrap();
        }
    }
}

fn body(raw: &str) -> &str {
    match codec::frame_reply(raw.as_bytes()) {
        Frame::Complete { start, end } => &raw[start..end],
        Frame::Incomplete => panic!("incomplete {raw:?}"),
    }
}

async fn engine() -> (FakeCdrtool, TestClock, TcpStream) {
    let clock = TestClock::new();
    let fake = FakeCdrtool::start_with_clock(Arc::new(clock.clone()))
        .await
        .unwrap();
    fake.add_prepaid("alice@example.com", "10.00");
    fake.set_max_sessions("alice@example.com", 2);
    let s = TcpStream::connect(fake.addr()).await.unwrap();
    (fake, clock, s)
}

#[tokio::test]
async fn max_session_time_and_debit_balance_as_observed() {
    let (fake, clock, mut s) = engine().await;
    let r = ask(&mut s, MST_B1).await;
    assert_eq!(r, "6000\ntype=prepaid\n\n");
    assert_eq!(
        codec::parse_max_session_time(body(&r)),
        Ok(Authorisation::prepaid(6000))
    );
    // A second parallel call 3 s later shares the balance.
    clock.advance(Duration::from_secs(3));
    assert_eq!(ask(&mut s, MST_B2).await, "2998\ntype=prepaid\n\n");
    clock.advance(Duration::from_secs(57));
    let r = ask(&mut s, DEBIT_B1).await;
    assert!(r.starts_with("Ok\nMaxSessionTime=5883\n0.1000\n"), "{r}");
    assert!(r.contains("Duration: 60 s") && r.ends_with("\n\n"), "{r}");
    assert_eq!(
        codec::parse_debit_balance(body(&r)),
        Ok(DebitOutcome::Debited {
            max_session_time: Some(5883),
            price: Some("0.1000".into())
        })
    );
    assert_eq!(
        ask(&mut s, DEBIT_B2_0).await,
        "Ok\nMaxSessionTime=0\n0.0000\n\n"
    );
    // A repeated debit fails, with a stray newline, and charges nothing.
    assert_eq!(ask(&mut s, DEBIT_B1).await, "Failed\n\n\n");
    assert_eq!(fake.charges().len(), 1);
    assert_eq!(fake.balance("alice@example.com").as_deref(), Some("9.9000"));
}

#[tokio::test]
async fn postpaid_no_balance_and_locked() {
    let (fake, _clock, mut s) = engine().await;
    fake.add_prepaid("broke@example.com", "0.00");
    assert_eq!(
        ask(&mut s, &MST_B1.replace("alice", "bob")).await,
        "none\ntype=postpaid\n\n"
    );
    assert_eq!(
        ask(&mut s, &MST_B1.replace("alice", "broke")).await,
        "0\ntype=prepaid\n\n"
    );
    fake.set_max_sessions("alice@example.com", 1);
    ask(&mut s, MST_B1).await;
    assert_eq!(ask(&mut s, MST_B2).await, "Locked\ntype=prepaid\n\n");
    // Duration=0 releases the session at no charge and unlocks the account.
    ask(&mut s, &DEBIT_B1.replace("Duration=60", "Duration=0")).await;
    assert_eq!(ask(&mut s, MST_B2).await, "6000\ntype=prepaid\n\n");
}

#[tokio::test]
async fn two_requests_in_one_segment_merge_into_a_bad_one() {
    let (fake, _clock, mut s) = engine().await;
    let merged = format!("{MST_B1}\n{MST_B2}\n");
    assert_eq!(ask(&mut s, &merged).await, "0\n\n");
    assert!(fake.active_sessions("alice@example.com").is_empty());
}

#[tokio::test]
async fn a_split_request_becomes_two() {
    let (fake, _clock, mut s) = engine().await;
    let (a, b) = MST_B1.split_at(40);
    s.write_all(a.as_bytes()).await.unwrap();
    let first = read_reply(&mut s).await;
    assert!(first.starts_with("Error:"), "{first}");
    s.write_all(b.as_bytes()).await.unwrap();
    let second = read_reply(&mut s).await;
    assert_eq!(second, "0\n\n", "unknown command");
    assert_eq!(fake.requests(), vec![a.to_string(), b.to_string()]);
}

#[tokio::test]
async fn terminators_are_trimmed_and_the_engine_has_no_idle_timeout() {
    let (_fake, clock, mut s) = engine().await;
    assert_eq!(
        ask(&mut s, &format!("{MST_B1}\r\n")).await,
        "6000\ntype=prepaid\n\n"
    );
    clock.advance(Duration::from_secs(3600));
    assert_eq!(ask(&mut s, "KeepAlive").await, "1\n\n");
    assert_eq!(ask(&mut s, "keepalive\n").await, "1\n\n");
}

#[tokio::test]
async fn a_non_numeric_duration_kills_the_engine() {
    let (fake, _clock, mut s) = engine().await;
    s.write_all(DEBIT_B1.replace("Duration=60", "Duration=sixty").as_bytes())
        .await
        .unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0, "closed");
    assert!(TcpStream::connect(fake.addr()).await.is_err());
    // It comes back on the same port, its database intact.
    fake.restart().await.unwrap();
    let mut s = TcpStream::connect(fake.addr()).await.unwrap();
    assert_eq!(
        ask(&mut s, "GetBalance From=alice@example.com").await,
        "10.0000\n\n"
    );
}

#[tokio::test]
async fn stale_sessions_are_purged_and_never_charged() {
    let (fake, clock, mut s) = engine().await;
    ask(&mut s, MST_B1).await;
    clock.advance(Duration::from_secs(6000 + 121));
    assert_eq!(ask(&mut s, MST_B2).await, "6000\ntype=prepaid\n\n");
    assert_eq!(ask(&mut s, DEBIT_B1).await, "Failed\n\n\n");
    assert!(fake.charges().is_empty());
}

#[tokio::test]
async fn values_are_lower_cased_except_the_call_id_and_a_second_equals_truncates() {
    let (fake, _clock, mut s) = engine().await;
    ask(
        &mut s,
        &MST_B1
            .replace("CallId=b1@h", "CallId=B1=x@H")
            .replace("alice", "ALICE"),
    )
    .await;
    assert_eq!(
        fake.active_sessions("alice@example.com"),
        vec!["B1".to_string()]
    );
    // Quit closes the connection.
    s.write_all(b"quit").await.unwrap();
    let mut buf = [0u8; 8];
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap_or(0),
        0
    );
}

#[tokio::test]
async fn other_commands() {
    let (_fake, _clock, mut s) = engine().await;
    assert!(ask(&mut s, "Version").await.contains("10.0.0"));
    assert_eq!(
        ask(&mut s, "AddBalance From=alice@example.com Value=2.5").await,
        "Ok\n\n"
    );
    assert_eq!(
        ask(&mut s, "GetBalance From=alice@example.com").await,
        "12.5000\n\n"
    );
    let h = ask(&mut s, "GetBalanceHistory From=alice@example.com").await;
    let entries = codec::parse_balance_history(body(&h)).unwrap();
    assert!(
        entries[0]
            .fields
            .contains(&("balance".into(), "12.5000".into())),
        "{h}"
    );
    assert_eq!(ask(&mut s, "Bogus").await, "0\n\n");
}
