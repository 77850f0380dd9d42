//! Bad input, vanishing clients and slow answers: each gets an error reply
//! or a logged close, and no other connection or session is affected.

mod common;

use std::sync::Arc;
use std::time::Duration;

use callcontrol_core::rating::Authorisation;
use callcontrol_core::request::{Found, InitReply, Request};
use callcontrol_core::testkit::{RecordingSignalling, Scripted};
use callcontrol_opensips::codec::{ReplyFraming, MAX_LINE, MAX_LINES};
use callcontrol_opensips::testkit::{opensips_init, FakeOpenSips, Worker};
use common::{exchange, Daemon};
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;

async fn daemon() -> Daemon {
    Daemon::start(Some(600), Arc::new(RecordingSignalling::new())).await
}

#[tokio::test]
async fn bad_requests_get_error_replies_and_the_connection_stays_usable() {
    let d = daemon().await;
    let mut good = FakeOpenSips::connect(&d.socket, 1).await.unwrap();
    assert_eq!(
        good.worker(0)
            .init(opensips_init("kept", "alice"))
            .await
            .unwrap(),
        InitReply::Limited
    );

    let mut s = UnixStream::connect(&d.socket).await.unwrap();
    // Garbage, unknown command, missing keys, a line without a colon.
    assert_eq!(
        exchange(&mut s, b"\x00\x01garbage!!\r\n\r\n", 7).await,
        b"Error\r\n"
    );
    assert_eq!(
        exchange(&mut s, b"INVITE sip:x SIP/2.0\r\n\r\n", 7).await,
        b"Error\r\n"
    );
    assert_eq!(
        exchange(&mut s, b"init\r\ncallid: x\r\n\r\n", 7).await,
        b"Error\r\n"
    );
    assert_eq!(
        exchange(&mut s, b"start\r\ndialogid: 1\r\n\r\n", 7).await,
        b"Error\r\n"
    );
    assert_eq!(
        exchange(&mut s, b"stop\r\nno colon here\r\n\r\n", 7).await,
        b"Error\r\n"
    );
    // Admin errors end with an empty line.
    assert_eq!(
        exchange(&mut s, b"debug\r\nshow: everything\r\n\r\n", 9).await,
        b"Error\r\n\r\n"
    );
    assert_eq!(
        exchange(&mut s, b"terminate\r\n\r\n", 9).await,
        b"Error\r\n\r\n"
    );
    // Invalid UTF-8.
    assert_eq!(
        exchange(&mut s, b"stop\r\ncallid: \xff\xfe\r\n\r\n", 7).await,
        b"Error\r\n"
    );
    // An oversized line, then the rest of its block: one error, resynchronised.
    let mut big = b"init\r\nruri: ".to_vec();
    big.resize(big.len() + MAX_LINE * 3, b'a');
    assert_eq!(exchange(&mut s, &big, 7).await, b"Error\r\n");
    assert_eq!(
        exchange(
            &mut s,
            b"\r\nfrom: x\r\n\r\nstop\r\ncallid: nope\r\n\r\n",
            11
        )
        .await,
        b"Not found\r\n"
    );
    // A block of too many lines.
    let mut many = b"start\r\ncallid: x\r\n".to_vec();
    for i in 0..MAX_LINES * 2 {
        many.extend_from_slice(format!("k{i}: v\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    assert_eq!(exchange(&mut s, &many, 7).await, b"Error\r\n");
    assert_eq!(
        exchange(&mut s, b"stop\r\ncallid: nope\r\n\r\n", 11).await,
        b"Not found\r\n"
    );
    // Blank lines alone get nothing; the next request is answered.
    assert_eq!(
        exchange(&mut s, b"\r\n\n  \r\nstop\ncallid:nope\n\n", 11).await,
        b"Not found\r\n"
    );

    // The other connection and its session are unaffected.
    assert_eq!(good.worker(0).stop("kept").await.unwrap(), Found::Ok);
}

#[tokio::test]
async fn a_client_vanishing_mid_request_loses_no_session() {
    let d = daemon().await;
    // Half a request, then gone.
    let mut s = UnixStream::connect(&d.socket).await.unwrap();
    s.write_all(b"init\r\nruri: sip:1000@127.0.0.1\r\ncall")
        .await
        .unwrap();
    drop(s);
    // A whole request, then gone before the reply.
    let mut s = UnixStream::connect(&d.socket).await.unwrap();
    let mut bytes = Vec::new();
    callcontrol_opensips::codec::write_request(
        &Request::Init(opensips_init("vanished", "bob")),
        &mut bytes,
    );
    s.write_all(&bytes).await.unwrap();
    drop(s);
    // The engine served it: the session exists.
    common::eventually_async(|| async { d.handle.show("vanished").await.unwrap().is_some() }).await;
    let mut w = Worker::connect(&d.socket).await.unwrap();
    assert_eq!(w.stop("vanished").await.unwrap(), Found::Ok);
}

#[tokio::test(start_paused = true)]
async fn a_slow_rating_answer_does_not_delay_another_connection() {
    let d = daemon().await;
    d.rating.push_authorise(Scripted::after(
        Duration::from_millis(400),
        Ok(Authorisation::prepaid(60)),
    ));
    let mut slow = Worker::connect(&d.socket).await.unwrap();
    let mut fast = Worker::connect(&d.socket).await.unwrap();
    let slow_task = tokio::spawn(async move {
        slow.init(opensips_init("prepaid", "carol").prepaid(true))
            .await
    });
    tokio::time::sleep(Duration::from_millis(10)).await;
    let before = tokio::time::Instant::now();
    assert_eq!(
        fast.init(opensips_init("postpaid", "dave")).await.unwrap(),
        InitReply::Limited
    );
    // Virtual time: the fast reply needed no time at all.
    assert_eq!(before.elapsed(), Duration::ZERO);
    assert!(!slow_task.is_finished());
    assert_eq!(slow_task.await.unwrap().unwrap(), InitReply::Limited);
}

/// At shutdown an idle connection is closed at once, and one waiting for
/// the rating engine gets its answer first; nothing waits for the grace
/// period (virtual time: the 400 ms answer is the only wait).
#[tokio::test(start_paused = true)]
async fn shutdown_closes_idle_connections_and_answers_busy_ones() {
    use callcontrol_opensips::server::SHUTDOWN_GRACE;
    use tokio::io::AsyncReadExt;
    let d = daemon().await;
    d.rating.push_authorise(Scripted::after(
        Duration::from_millis(400),
        Ok(Authorisation::prepaid(60)),
    ));
    let mut idle = UnixStream::connect(&d.socket).await.unwrap();
    let mut busy = Worker::connect(&d.socket).await.unwrap();
    let busy_task = tokio::spawn(async move {
        let reply = busy
            .init(opensips_init("prepaid", "carol").prepaid(true))
            .await;
        (reply, busy)
    });
    tokio::time::sleep(Duration::from_millis(10)).await;
    let t0 = tokio::time::Instant::now();
    d.shutdown.cancel();
    let mut byte = [0u8; 1];
    assert_eq!(idle.read(&mut byte).await.unwrap(), 0);
    assert!(t0.elapsed() < Duration::from_millis(390));
    assert!(!busy_task.is_finished());
    let (reply, _busy) = busy_task.await.unwrap();
    assert_eq!(reply.unwrap(), InitReply::Limited);
    d.server.await.unwrap().unwrap();
    assert!(t0.elapsed() < SHUTDOWN_GRACE);
    assert!(!d.socket.exists());
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let d = daemon().await;
    let mut w = Worker::connect(&d.socket).await.unwrap();
    let mut bytes = Vec::new();
    for i in 0..50 {
        callcontrol_opensips::codec::write_request(
            &Request::Init(opensips_init(&format!("p{i}"), "erin")),
            &mut bytes,
        );
        bytes.extend_from_slice(
            format!("stop\r\ncallid: p{i}\r\n\r\nstop\r\ncallid: p{i}\r\n\r\n").as_bytes(),
        );
    }
    w.send(&bytes).await.unwrap();
    for _ in 0..50 {
        for expected in ["Limited", "Ok", "Not found"] {
            let line = w.raw(b"", ReplyFraming::Line).await.unwrap();
            assert_eq!(line, vec![expected.to_string()]);
        }
    }
}

/// A client that sends far more requests than the socket buffers hold
/// before it reads a reply: the server fills the socket, waits for write
/// readiness (its connections are registered for reads only until then),
/// and every reply arrives, in order, once the client reads.
#[tokio::test]
async fn a_client_that_reads_late_gets_every_reply_in_order() {
    use tokio::io::AsyncReadExt;
    let d = daemon().await;
    let stream = UnixStream::connect(&d.socket).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    let n = 60_000;
    let writer = tokio::spawn(async move {
        let mut bytes = Vec::new();
        for i in 0..n {
            bytes.extend_from_slice(format!("stop\r\ncallid: late{i}\r\n\r\n").as_bytes());
        }
        wr.write_all(&bytes).await.unwrap();
        wr
    });
    // Let the server fill the socket buffer with replies nobody reads yet.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let expected = b"Not found\r\n".repeat(n);
    let mut got = vec![0u8; expected.len()];
    tokio::time::timeout(Duration::from_secs(20), rd.read_exact(&mut got))
        .await
        .expect("every reply arrives")
        .unwrap();
    assert!(got == expected, "replies in order, none lost");
    drop(writer.await.unwrap());
    // The server still serves other connections.
    let mut other = Worker::connect(&d.socket).await.unwrap();
    let reply = other
        .raw(b"stop\r\ncallid: x\r\n\r\n", ReplyFraming::Line)
        .await;
    assert_eq!(reply.unwrap(), vec!["Not found".to_string()]);
}

#[tokio::test]
async fn eight_workers_with_each_calls_requests_on_different_connections() {
    let d = daemon().await;
    let workers: Vec<_> = FakeOpenSips::connect(&d.socket, 8)
        .await
        .unwrap()
        .into_workers()
        .into_iter()
        .map(|w| Arc::new(tokio::sync::Mutex::new(w)))
        .collect();
    let mut tasks = Vec::new();
    for t in 0..16usize {
        let workers = workers.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..25usize {
                let call = format!("call-{t}-{i}");
                let w = |k: usize| workers[(t + i + k * 3) % 8].clone();
                let r = w(0)
                    .lock()
                    .await
                    .init(opensips_init(&call, "frank"))
                    .await
                    .unwrap();
                assert_eq!(r, InitReply::Limited);
                let dialog = callcontrol_core::types::DialogId::new(t as u32, i as u32);
                assert_eq!(
                    w(1).lock().await.start(&call, dialog).await.unwrap(),
                    Found::Ok
                );
                assert_eq!(w(2).lock().await.stop(&call).await.unwrap(), Found::Ok);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert!(d.handle.list(None).await.unwrap().is_empty());
    for w in &workers {
        assert!(w.lock().await.is_connected());
    }
}

#[tokio::test]
async fn socket_setup_and_shutdown() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub/cc.sock");
    // A stale socket file from a crashed daemon is replaced.
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    let l = callcontrol_opensips::server::bind_socket(&path, Some("no-such-group-here")).unwrap();
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o666
    );
    // A live one is not.
    assert!(callcontrol_opensips::server::bind_socket(&path, None).is_err());
    drop(l);
    std::fs::remove_file(&path).unwrap();
    let _l = callcontrol_opensips::server::bind_socket(&path, Some("root")).unwrap();
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o660
    );

    // serve removes the socket at shutdown.
    let d = daemon().await;
    assert!(d.socket.exists());
    d.shutdown.cancel();
    d.server.await.unwrap().unwrap();
    assert!(!d.socket.exists());
}

#[tokio::test]
async fn duplex_connection_for_in_memory_tests() {
    let d = daemon().await;
    let (client, server) = tokio::io::duplex(64);
    let handle = d.handle.clone();
    let shutdown = d.shutdown.clone();
    tokio::spawn(async move {
        callcontrol_opensips::server::serve_connection(
            server,
            handle,
            &Default::default(),
            shutdown,
        )
        .await
    });
    let (mut rd, mut wr) = tokio::io::split(client);
    wr.write_all(b"stop\r\ncallid: a\r\n\r\nstop\r\ncallid: b\r\n\r\n")
        .await
        .unwrap();
    let mut got = vec![0u8; 22];
    tokio::io::AsyncReadExt::read_exact(&mut rd, &mut got)
        .await
        .unwrap();
    assert_eq!(got, b"Not found\r\nNot found\r\n");
}
