//! A limited call that expires is ended through the real MI client, with the
//! dialog id the OpenSIPS version accepts, exactly once; OpenSIPS's `stop`
//! that follows is answered `Not found`.

mod common;

use std::time::Duration;

use callcontrol_core::types::DialogId;
use callcontrol_opensips::testkit::{opensips_init, FakeMi, FakeOpenSips, MiAnswer, MiVersion};
use callcontrol_opensips::{DialogIdFormat, MiClient, MiConfig, MiTransport};
use common::{eventually, mi_pair, Daemon};

const CALL: &str = "1-1469@127.0.0.1";
const DIALOG: DialogId = DialogId {
    h_entry: 0xa1b,
    h_id: 0x5ff9feb,
};

async fn expire_one(version: MiVersion, format: DialogIdFormat) -> (FakeMi, Daemon) {
    let dir = tempfile::tempdir().unwrap();
    let (mi, client) = mi_pair(dir.path(), version, format);
    let d = Daemon::start_in(dir, Some(600), client).await;
    let mut proxy = FakeOpenSips::connect(&d.socket, 3).await.unwrap();
    mi.add_dialog(CALL, DIALOG);
    assert_eq!(
        proxy
            .worker(0)
            .init(opensips_init(CALL, "caller1"))
            .await
            .unwrap(),
        callcontrol_core::request::InitReply::Limited
    );
    assert_eq!(
        proxy.worker(1).start(CALL, DIALOG).await.unwrap(),
        callcontrol_core::request::Found::Ok
    );
    tokio::time::sleep(Duration::from_secs(601)).await;
    eventually(|| !mi.ended().is_empty()).await;
    // The proxy sends stop after ending the dialog: the call is already gone.
    assert_eq!(
        proxy.worker(2).stop(CALL).await.unwrap(),
        callcontrol_core::request::Found::NotFound
    );
    assert!(d.handle.list(None).await.unwrap().is_empty());
    (mi, d)
}

#[tokio::test(start_paused = true)]
async fn opensips_2_4_gets_the_decimal_id() {
    let (mi, _d) = expire_one(MiVersion::V2_4, DialogIdFormat::Auto).await;
    assert_eq!(mi.end_requests(), vec!["11111181033451"]);
    assert_eq!(mi.ended().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn opensips_3_0_gets_the_decimal_id() {
    let (mi, _d) = expire_one(MiVersion::V3_0, DialogIdFormat::Auto).await;
    assert_eq!(mi.end_requests(), vec!["11111181033451"]);
}

#[tokio::test(start_paused = true)]
async fn opensips_3_6_gets_the_did() {
    let (mi, _d) = expire_one(MiVersion::V3_6, DialogIdFormat::Auto).await;
    assert_eq!(mi.end_requests(), vec!["b1a.bef9ff5"]);
    assert_eq!(mi.requests()[0].method, "version");
}

#[tokio::test(start_paused = true)]
async fn opensips_3_6_with_the_original_numeric_id_falls_back_to_the_call_id() {
    let (mi, _d) = expire_one(MiVersion::V3_6, DialogIdFormat::Numeric).await;
    assert_eq!(mi.end_requests(), vec!["11111181033451", CALL]);
    assert_eq!(mi.ended().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn call_id_format() {
    let (mi, _d) = expire_one(MiVersion::V3_0, DialogIdFormat::Callid).await;
    assert_eq!(mi.end_requests(), vec![CALL]);
}

#[tokio::test(start_paused = true)]
async fn mi_socket_missing_leaves_the_session_visible_as_end_failed() {
    let dir = tempfile::tempdir().unwrap();
    let client = MiClient::new(MiConfig {
        socket_path: dir.path().join("missing.sock"),
        dialog_id_format: DialogIdFormat::Did,
        retries: 1,
        reply_dir: Some(dir.path().to_path_buf()),
        ..MiConfig::default()
    })
    .unwrap();
    let client = std::sync::Arc::new(client);
    let d = Daemon::start_in(dir, Some(600), client.clone()).await;
    let mut proxy = FakeOpenSips::connect(&d.socket, 2).await.unwrap();
    proxy
        .worker(0)
        .init(opensips_init(CALL, "caller1"))
        .await
        .unwrap();
    proxy.worker(1).start(CALL, DIALOG).await.unwrap();
    tokio::time::sleep(Duration::from_secs(601)).await;
    eventually(|| client.stats().error >= 2).await;
    tokio::time::sleep(Duration::from_millis(10)).await;
    let list = d.handle.list(None).await.unwrap();
    assert_eq!(list.len(), 1);
    assert!(
        matches!(
            list[0].state,
            callcontrol_core::types::SessionState::EndFailed
                | callcontrol_core::types::SessionState::Ending
        ),
        "{list:?}"
    );
    // The admin list shows it as such.
    let reply = proxy
        .worker(0)
        .request(&callcontrol_core::request::Request::List { user: None })
        .await
        .unwrap();
    let callcontrol_opensips::ClientReply::Sessions(rows) = reply else {
        panic!()
    };
    assert!(
        rows[0].state == "end-failed" || rows[0].state == "ending",
        "{rows:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn mi_404_everywhere_means_the_dialog_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let (mi, client) = mi_pair(dir.path(), MiVersion::V3_6, DialogIdFormat::Did);
    use callcontrol_core::signalling::{DialogRef, EndOutcome, SignallingBackend};
    let r = client
        .end_dialog(&DialogRef {
            call_id: CALL.into(),
            dialog_id: Some(DIALOG),
        })
        .await;
    assert_eq!(r, Ok(EndOutcome::NotFound));
    assert_eq!(mi.end_requests(), vec!["b1a.bef9ff5", CALL]);
    assert_eq!(client.stats().not_found, 2);
}

#[tokio::test(start_paused = true)]
async fn mi_silent_is_retried_then_a_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let (mi, client) = mi_pair(dir.path(), MiVersion::V3_6, DialogIdFormat::Did);
    for _ in 0..4 {
        mi.push(MiAnswer::Silent);
    }
    use callcontrol_core::signalling::{DialogRef, SignallingBackend};
    let r = client
        .end_dialog(&DialogRef {
            call_id: CALL.into(),
            dialog_id: Some(DIALOG),
        })
        .await;
    assert_eq!(r, Err(callcontrol_core::error::SignallingError::Timeout));
    assert_eq!(mi.end_requests().len(), 4);
    assert_eq!(client.stats().timeout, 4);
    // The next attempt goes through.
    mi.add_dialog(CALL, DIALOG);
    let r = client
        .end_dialog(&DialogRef {
            call_id: CALL.into(),
            dialog_id: Some(DIALOG),
        })
        .await;
    assert_eq!(r, Ok(callcontrol_core::signalling::EndOutcome::Ended));
}

#[tokio::test]
async fn dlg_list_is_paged_over_datagrams() {
    let dir = tempfile::tempdir().unwrap();
    let (mi, client) = mi_pair(dir.path(), MiVersion::V3_6, DialogIdFormat::Did);
    for i in 0..250u32 {
        mi.add_dialog(&format!("call-{i:03}"), DialogId::new(i, i + 1));
    }
    use callcontrol_core::signalling::SignallingBackend;
    let live = client.list_live_dialogs().await.unwrap().unwrap();
    assert_eq!(live.len(), 250);
    assert_eq!(live[249].call_id.as_str(), "call-249");
    assert_eq!(live[249].dialog_id, Some(DialogId::new(249, 250)));
    let pages = mi
        .requests()
        .iter()
        .filter(|r| r.method == "dlg_list")
        .count();
    assert_eq!(pages, 3);
}

#[tokio::test(start_paused = true)]
async fn mi_plain_text_error_is_a_proxy_error() {
    let dir = tempfile::tempdir().unwrap();
    let (mi, client) = mi_pair(dir.path(), MiVersion::V3_6, DialogIdFormat::Did);
    mi.push(MiAnswer::PlainText("500 Internal server error".into()));
    use callcontrol_core::signalling::{DialogRef, SignallingBackend};
    let r = client
        .end_dialog(&DialogRef {
            call_id: CALL.into(),
            dialog_id: Some(DIALOG),
        })
        .await;
    assert_eq!(
        r,
        Err(callcontrol_core::error::SignallingError::Proxy {
            code: 500,
            message: "Internal server error".into()
        })
    );
    assert_eq!(client.stats().error, 1);
}

#[tokio::test]
async fn mi_http_transport_ends_the_dialog_and_lists_dialogs() {
    let mi = FakeMi::new(MiVersion::V3_6);
    let (url, _task) = mi.serve_http().await.unwrap();
    let client = MiClient::new(MiConfig {
        transport: MiTransport::Http,
        url,
        ..MiConfig::default()
    })
    .unwrap();
    mi.add_dialog(CALL, DIALOG);
    mi.add_dialog("other", DialogId::new(1, 2));
    use callcontrol_core::signalling::{DialogRef, EndOutcome, SignallingBackend};
    let mut live = client.list_dialogs().await.unwrap().unwrap();
    live.sort();
    assert_eq!(live, vec!["1-1469@127.0.0.1".into(), "other".into()]);
    let dialogs = client.list_live_dialogs().await.unwrap().unwrap();
    assert_eq!(dialogs[0].dialog_id, Some(DIALOG));
    assert!(dialogs[0].answered.is_some());
    let r = client
        .end_dialog(&DialogRef {
            call_id: CALL.into(),
            dialog_id: Some(DIALOG),
        })
        .await;
    assert_eq!(r, Ok(EndOutcome::Ended));
    assert_eq!(mi.end_requests(), vec!["b1a.bef9ff5"]);
    let health = client.health().unwrap();
    assert!(health.reachable);
    assert_eq!(
        health.version.as_deref(),
        Some("OpenSIPS (3.6.8 (x86_64/linux))")
    );
    mi.push(MiAnswer::NotFound);
    mi.push(MiAnswer::NotFound);
    let r = client
        .end_dialog(&DialogRef {
            call_id: "x".into(),
            dialog_id: Some(DIALOG),
        })
        .await;
    assert_eq!(r, Ok(EndOutcome::NotFound));
}
