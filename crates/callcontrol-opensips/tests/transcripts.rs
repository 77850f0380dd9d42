//! The transcripts of PROTOCOLS.md §1, §2 and §4, replayed byte for byte
//! through a real Unix socket to the real engine.

mod common;

use std::sync::Arc;

use callcontrol_core::testkit::RecordingSignalling;
use common::{exchange, Daemon};
use tokio::net::UnixStream;

const INIT: &[u8] = b"init\r\nruri: sip:1000@127.0.0.1:5060\r\ndiverter: None\r\nsourceip: 127.0.0.1\r\ncallid: 1-1469@127.0.0.1\r\nfrom: \"cc test\" <sip:caller1@example.com>\r\nfromtag: 1469SIPpTag001\r\nprepaid: unknown\r\ncall_limit: 0\r\ncall_token: None\r\n\r\n";

async fn replay(stream: &mut UnixStream, request: &[u8], reply: &[u8]) {
    let got = exchange(stream, request, reply.len()).await;
    assert_eq!(
        String::from_utf8_lossy(&got),
        String::from_utf8_lossy(reply),
        "reply to {:?}",
        String::from_utf8_lossy(request)
    );
}

// Virtual time: the list line's elapsed/remaining seconds are exact.
#[tokio::test(start_paused = true)]
async fn opensips_transcript() {
    let signalling = RecordingSignalling::new();
    let d = Daemon::start(Some(600), Arc::new(signalling.clone())).await;
    let mut a = UnixStream::connect(&d.socket).await.unwrap();
    let mut b = UnixStream::connect(&d.socket).await.unwrap();
    let mut c = UnixStream::connect(&d.socket).await.unwrap();
    replay(&mut a, INIT, b"Limited\r\n").await;
    replay(
        &mut b,
        b"start\r\ncallid: 1-1469@127.0.0.1\r\ndialogid: 11111181033451\r\n\r\n",
        b"Ok\r\n",
    )
    .await;
    replay(
        &mut c,
        b"debug\r\nshow: sessions\r\n\r\n",
        b"Call id 1-1469@127.0.0.1 of caller1@example.com to sip:1000@127.0.0.1:5060: in-progress (limit 600 s, elapsed 0 s, remaining 600 s)\r\n\r\n",
    )
    .await;
    replay(
        &mut c,
        b"debug\r\nshow: sessions\r\nuser: bob\r\n\r\n",
        b"\r\n\r\n",
    )
    .await;
    replay(
        &mut c,
        b"stop\r\ncallid: 1-1469@127.0.0.1\r\n\r\n",
        b"Ok\r\n",
    )
    .await;
    replay(
        &mut a,
        b"stop\r\ncallid: 1-1469@127.0.0.1\r\n\r\n",
        b"Not found\r\n",
    )
    .await;
    replay(
        &mut b,
        b"start\r\ncallid: 1-1469@127.0.0.1\r\ndialogid: 1\r\n\r\n",
        b"Not found\r\n",
    )
    .await;
    replay(
        &mut c,
        b"debug\r\nshow: session\r\ncallid: nope\r\n\r\n",
        b"Call id nope does not exist\r\n\r\n",
    )
    .await;
    replay(
        &mut c,
        b"terminate\r\ncallid: nope\r\n\r\n",
        b"Call id nope does not exist\r\n\r\n",
    )
    .await;
    assert!(signalling.ended().is_empty());
}

#[tokio::test]
async fn no_limit_configured_means_not_tracked() {
    let d = Daemon::start(None, Arc::new(RecordingSignalling::new())).await;
    let mut a = UnixStream::connect(&d.socket).await.unwrap();
    replay(&mut a, INIT, b"No limit\r\n").await;
    replay(
        &mut a,
        b"stop\r\ncallid: 1-1469@127.0.0.1\r\n\r\n",
        b"Not found\r\n",
    )
    .await;
}

#[tokio::test]
async fn kamailio_transcript() {
    let d = Daemon::start(Some(600), Arc::new(RecordingSignalling::new())).await;
    // Kamailio may open a new connection per request.
    let mut a = UnixStream::connect(&d.socket).await.unwrap();
    replay(&mut a, b"init\r\nruri: sip:limit3@127.0.0.1:5062\r\ndiverter: None\r\nsourceip: 127.0.0.1\r\ncallid: 1-28964@127.0.0.1\r\nfrom: \"cc test\" <sip:caller1@example.com>\r\nfromtag: 28964SIPpTag001\r\nsip_application: audio\r\n\r\n", b"Limited\r\n").await;
    drop(a);
    let mut b = UnixStream::connect(&d.socket).await.unwrap();
    replay(
        &mut b,
        b"start\r\ncallid: 1-28964@127.0.0.1\r\ndialogid: 3908:2580\r\n\r\n",
        b"Ok\r\n",
    )
    .await;
    let info = d.handle.show("1-28964@127.0.0.1").await.unwrap().unwrap();
    assert_eq!(
        info.dialog_id,
        Some(callcontrol_core::types::DialogId::new(3908, 2580))
    );
    let mut c = UnixStream::connect(&d.socket).await.unwrap();
    replay(
        &mut c,
        b"stop\r\ncallid: 1-28964@127.0.0.1\r\n\r\n",
        b"Ok\r\n",
    )
    .await;
}

#[tokio::test]
async fn terminate_ends_the_dialog_and_the_admin_reply_ends_with_an_empty_line() {
    let signalling = RecordingSignalling::new();
    let d = Daemon::start(Some(600), Arc::new(signalling.clone())).await;
    let mut a = UnixStream::connect(&d.socket).await.unwrap();
    replay(&mut a, INIT, b"Limited\r\n").await;
    replay(
        &mut a,
        b"start\r\ncallid: 1-1469@127.0.0.1\r\ndialogid: 11111181033451\r\n\r\n",
        b"Ok\r\n",
    )
    .await;
    let mut admin = UnixStream::connect(&d.socket).await.unwrap();
    replay(
        &mut admin,
        b"terminate\r\ncallid: 1-1469@127.0.0.1\r\n\r\n",
        b"Ok\r\n\r\n",
    )
    .await;
    common::eventually(|| signalling.ended().len() == 1).await;
    let ended = signalling.ended();
    assert_eq!(ended[0].call_id.as_str(), "1-1469@127.0.0.1");
    assert_eq!(
        ended[0].dialog_id,
        Some(callcontrol_core::types::DialogId::new(0xa1b, 0x5ff9feb))
    );
    // OpenSIPS then sends stop; the daemon already forgot the call.
    replay(
        &mut a,
        b"stop\r\ncallid: 1-1469@127.0.0.1\r\n\r\n",
        b"Not found\r\n",
    )
    .await;
}

#[tokio::test]
async fn admin_show_session_lists_fields() {
    let d = Daemon::start(Some(600), Arc::new(RecordingSignalling::new())).await;
    let mut a = UnixStream::connect(&d.socket).await.unwrap();
    replay(&mut a, INIT, b"Limited\r\n").await;
    let mut w = callcontrol_opensips::testkit::Worker::connect(&d.socket)
        .await
        .unwrap();
    let reply = w
        .request(&callcontrol_core::request::Request::Show {
            call_id: "1-1469@127.0.0.1".into(),
        })
        .await
        .unwrap();
    let callcontrol_opensips::ClientReply::Session(fields) = reply else {
        panic!("{reply:?}")
    };
    let info = callcontrol_opensips::codec::session_from_fields(&fields).unwrap();
    assert_eq!(info.user, "caller1@example.com");
    assert_eq!(info.limit, Some(600));
    assert_eq!(info.state, callcontrol_core::types::SessionState::Pending);
}

// A list longer than one engine page is streamed page by page and is byte
// for byte the reply the whole list encodes to.
#[tokio::test(start_paused = true)]
async fn a_long_session_list_is_streamed_byte_identical() {
    use callcontrol_core::prelude::*;
    use callcontrol_opensips::codec::encode_reply;

    let d = Daemon::start(Some(600), Arc::new(RecordingSignalling::new())).await;
    for i in 0..2_345 {
        let user = if i % 3 == 0 { "alice" } else { "bob" };
        let req = InitRequest::new(
            format!("long-{:05}@h", (i * 7919) % 2_345),
            format!("<sip:{user}@example.com>"),
            "sip:2000@example.com",
        );
        assert_eq!(d.handle.init(req).await.unwrap(), InitReply::Limited);
        if i % 100 == 0 {
            let id = format!("long-{:05}@h", (i * 7919) % 2_345);
            d.handle
                .start(StartRequest {
                    call_id: CallId::new(id),
                    dialog_id: None,
                })
                .await
                .unwrap();
            tokio::time::advance(std::time::Duration::from_millis(1500)).await;
        }
    }
    let mut c = UnixStream::connect(&d.socket).await.unwrap();
    for (request, user) in [
        (&b"debug\r\nshow: sessions\r\n\r\n"[..], None),
        (
            b"debug\r\nshow: sessions\r\nuser: alice@\r\n\r\n",
            Some("alice@"),
        ),
        (
            b"debug\r\nshow: sessions\r\nuser: carol\r\n\r\n",
            Some("carol"),
        ),
    ] {
        let whole = encode_reply(&Reply::Sessions(d.handle.list(user).await.unwrap()), None);
        replay(&mut c, request, &whole).await;
    }
    // Nothing more was sent: the next reply is the next request's.
    replay(&mut c, b"stop\r\ncallid: nope\r\n\r\n", b"Not found\r\n").await;
}
