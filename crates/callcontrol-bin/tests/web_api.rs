//! The web interface over a real TCP socket, against an in-process daemon
//! (engine, control socket, CDRTool client + fake CDRTool, MI client + fake
//! MI).

mod web_support;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use callcontrol_bin::web::client::{balance_with, ApiClient, BalanceArgs, ClientError};
use callcontrol_bin::web::{bind_and_serve, ServeError, WebConfig, WebParts};
use callcontrol_core::prelude::*;
use callcontrol_opensips::codec::ReplyFraming;
use hyper::{Method, StatusCode};
use serde_json::Value;
use web_support::*;

const XSS_CALL_ID: &str = "<script>window.__xss=1</script>\"'><img src=x onerror=window.__xss=2>@h";

fn call_ids(v: &Value) -> Vec<String> {
    v["sessions"]
        .as_array()
        .expect("sessions")
        .iter()
        .map(|s| s["call_id"].as_str().expect("call_id").to_string())
        .collect()
}

#[tokio::test]
async fn auth_is_required_and_wrong_tokens_are_refused() {
    let d = Daemon::start(Some(TOKEN)).await;
    for path in [
        "/api/sessions",
        "/api/health",
        "/api/status",
        "/metrics",
        "/api/sessions/x",
    ] {
        let r = d
            .anonymous()
            .send(Method::GET, path, &[], Vec::new())
            .await
            .unwrap();
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{path}");
        assert_eq!(r.json()["error"]["code"], "unauthorized", "{path}");
        assert!(r.headers.get("www-authenticate").is_some());
    }
    let r = d
        .anonymous()
        .send(Method::POST, "/api/sessions/x/terminate", &[], Vec::new())
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    for wrong in [
        "Bearer nope",
        "Bearer test-token-0123456789abcdeX",
        "Basic dGVzdA==",
        "Bearer",
    ] {
        let h = [("authorization", wrong.to_string())];
        let r = d
            .anonymous()
            .send(Method::GET, "/api/sessions", &h, Vec::new())
            .await
            .unwrap();
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{wrong}");
    }
    // The scheme is case-insensitive.
    let h = [("authorization", format!("bearer {TOKEN}"))];
    let r = d
        .anonymous()
        .send(Method::GET, "/api/sessions", &h, Vec::new())
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);
    let r = d.get("/api/sessions").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["total"], 0);
    d.stop().await;
}

#[tokio::test]
async fn page_is_public_and_carries_security_headers() {
    let d = Daemon::start(Some(TOKEN)).await;
    for (path, ctype) in [
        ("/", "text/html"),
        ("/app.js", "text/javascript"),
        ("/app.css", "text/css"),
    ] {
        let r = d
            .anonymous()
            .send(Method::GET, path, &[], Vec::new())
            .await
            .unwrap();
        assert_eq!(r.status, StatusCode::OK, "{path}");
        let ct = r.headers["content-type"].to_str().unwrap();
        assert!(ct.starts_with(ctype), "{path}: {ct}");
        let csp = r.headers["content-security-policy"].to_str().unwrap();
        assert!(
            csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
            "{csp}"
        );
        assert_eq!(r.headers["x-content-type-options"], "nosniff");
    }
    let page = d
        .anonymous()
        .send(Method::GET, "/", &[], Vec::new())
        .await
        .unwrap()
        .text();
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "no network resources"
    );
    let js = d
        .anonymous()
        .send(Method::GET, "/app.js", &[], Vec::new())
        .await
        .unwrap()
        .text();
    assert!(
        !js.contains("innerHTML") && !js.contains("insertAdjacentHTML"),
        "no HTML parsing of data"
    );
    let r = d.get("/api/sessions/%FF%FE").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "bad_request");
    let r = d.get("/api/nothing-here").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.json()["error"]["code"], "not_found");
    d.stop().await;
}

#[tokio::test]
async fn sessions_are_listed_filtered_and_paged() {
    let d = Daemon::start(Some(TOKEN)).await;
    let mut p = d.proxy(4).await;
    assert_eq!(
        d.call(&mut p, "a1@h", "alice", true, true, 1).await,
        InitReply::Limited
    );
    assert_eq!(
        d.call(&mut p, "a2@h", "alice", true, false, 2).await,
        InitReply::Limited
    );
    assert_eq!(
        d.call(&mut p, "b1@h", "bob", false, true, 3).await,
        InitReply::Limited
    );
    assert_eq!(
        d.call(&mut p, "b2@h", "bob", false, false, 4).await,
        InitReply::Limited
    );
    assert_eq!(
        d.call(&mut p, XSS_CALL_ID, "carol", false, true, 5).await,
        InitReply::Limited
    );

    let all = d.get("/api/sessions").await.json();
    assert_eq!(all["total"], 5);
    assert_eq!(all["matched"], 5);
    let ids = call_ids(&all);
    assert!(ids.contains(&XSS_CALL_ID.to_string()), "{ids:?}");
    let a1 = all["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["call_id"] == "a1@h")
        .unwrap();
    assert_eq!(a1["user"], "alice@example.com");
    assert_eq!(a1["prepaid"], true);
    assert_eq!(a1["state"], "in-progress");
    assert!(a1["remaining"].as_u64().unwrap() > 0);
    assert!(a1["limit"].as_u64().unwrap() > 0);

    let by_user = d.get("/api/sessions?user=sip:alice@").await.json();
    assert_eq!(call_ids(&by_user), ["a1@h", "a2@h"]);
    assert_eq!(by_user["total"], 5);
    assert_eq!(by_user["matched"], 2);
    let pending = d.get("/api/sessions?state=pending").await.json();
    assert_eq!(call_ids(&pending), ["a2@h", "b2@h"]);
    let both = d
        .get("/api/sessions?state=pending,in-progress&kind=postpaid&user=bob")
        .await
        .json();
    assert_eq!(call_ids(&both), ["b1@h", "b2@h"]);
    let prepaid = d
        .get("/api/sessions?kind=prepaid&state=in-progress")
        .await
        .json();
    assert_eq!(call_ids(&prepaid), ["a1@h"]);
    let text = d.get("/api/sessions?q=%3CSCRIPT").await.json();
    assert_eq!(call_ids(&text), [XSS_CALL_ID]);
    let text = d.get("/api/sessions?q=CAROL").await.json();
    assert_eq!(call_ids(&text), [XSS_CALL_ID]);

    // Paging over the matched rows, in a stable order.
    let mut paged = Vec::new();
    for offset in [0, 2, 4] {
        let page = d
            .get(&format!("/api/sessions?offset={offset}&limit=2"))
            .await
            .json();
        assert_eq!(page["offset"], offset);
        assert_eq!(page["matched"], 5);
        paged.extend(call_ids(&page));
    }
    assert_eq!(paged, ids);
    let beyond = d.get("/api/sessions?offset=50&limit=2").await.json();
    assert_eq!(call_ids(&beyond), Vec::<String>::new());

    for bad in [
        "/api/sessions?state=sleeping",
        "/api/sessions?kind=free",
        "/api/sessions?limit=-1",
        "/api/sessions?bogus=1",
    ] {
        let r = d.get(bad).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(r.json()["error"]["code"], "bad_request", "{bad}");
    }
    d.stop().await;
}

#[tokio::test]
async fn one_session_by_call_id_with_awkward_characters() {
    let d = Daemon::start(Some(TOKEN)).await;
    let mut p = d.proxy(2).await;
    let odd = "a/b?c#d%20e f;g=h@example.com";
    assert_eq!(
        d.call(&mut p, odd, "bob", false, true, 1).await,
        InitReply::Limited
    );
    assert_eq!(
        d.call(&mut p, XSS_CALL_ID, "bob", false, true, 2).await,
        InitReply::Limited
    );
    for id in [odd, XSS_CALL_ID] {
        let enc = percent(id);
        let r = d.get(&format!("/api/sessions/{enc}")).await;
        assert_eq!(r.status, StatusCode::OK, "{id}");
        let s = r.json();
        assert_eq!(s["call_id"], id);
        assert_eq!(s["ruri"], "sip:1000@127.0.0.1:5060");
        assert_eq!(s["from"], "\"cc test\" <sip:bob@example.com>");
        assert_eq!(s["state"], "in-progress");
    }
    let r = d.get("/api/sessions/nope%40h").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.json()["error"]["code"], "not_found");
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("nope@h"));
    d.stop().await;
}

fn percent(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~@".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[tokio::test]
async fn terminate_has_the_proxy_end_the_dialog() {
    let d = Daemon::start(Some(TOKEN)).await;
    let mut p = d.proxy(2).await;
    assert_eq!(
        d.call(&mut p, "t1@h", "alice", true, true, 7).await,
        InitReply::Limited
    );
    assert_eq!(
        d.call(&mut p, "t2@h", "bob", false, true, 8).await,
        InitReply::Limited
    );

    let r = d.post("/api/sessions/t1%40h/terminate", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["terminated"], "t1@h");

    // OpenSIPS 3.6 takes the DID form: reverse hex of h_entry "." h_id.
    let did = callcontrol_opensips::mi::did(DialogId::new(1007, 2007));
    eventually("dlg_end_dlg at the MI", || {
        let mi = d.mi.clone();
        let did = did.clone();
        async move { mi.end_requests().contains(&did) }
    })
    .await;
    assert_eq!(d.mi.ended(), vec![CallId::new("t1@h")]);
    // The ended dialog is forgotten (the proxy's later stop is "Not found");
    // the other call goes on.
    eventually("the session to go", || {
        let c = d.client();
        async move {
            let v = c.call(Method::GET, "/api/sessions", None).await.unwrap();
            call_ids(&v) == ["t2@h"]
        }
    })
    .await;
    assert_eq!(p.worker(0).stop("t1@h").await.unwrap(), Found::NotFound);
    // The prepaid call was charged.
    eventually("the debit", || {
        let charged = d
            .cdrtool
            .ledger()
            .iter()
            .filter(|c| c.call_id == "t1@h")
            .count();
        async move { charged == 1 }
    })
    .await;

    let r = d.post("/api/sessions/t1%40h/terminate", None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.json()["error"]["code"], "not_found");
    let r = d.get("/api/sessions/t1%40h/terminate").await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    d.stop().await;
}

#[tokio::test]
async fn balance_is_shown_and_credit_added() {
    let d = Daemon::start(Some(TOKEN)).await;
    let r = d.get("/api/accounts/alice@example.com/balance").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["balance"], "10.0000");

    let r = d
        .post(
            "/api/accounts/sip:alice@example.com/credit",
            Some(r#"{"amount": "5.25"}"#),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["added"], "5.25");
    assert_eq!(r.json()["balance"], "15.2500");
    assert_eq!(
        d.cdrtool.balance("alice@example.com").as_deref(),
        Some("15.2500")
    );
    let r = d.get("/api/accounts/alice@example.com/balance").await;
    assert_eq!(r.json()["balance"], "15.2500");

    let r = d.get("/api/accounts/alice@example.com/history").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert!(r.json()["entries"].is_array());

    // Amounts are decimal strings: numbers, exponents, signs are refused
    // before the rating engine is asked.
    for body in [
        r#"{"amount": 5.25}"#,
        r#"{"amount": "1e3"}"#,
        r#"{"amount": "-5"}"#,
        r#"{"amount": "0"}"#,
        r#"{"amount": "5", "extra": 1}"#,
        r#"not json"#,
    ] {
        let r = d
            .post("/api/accounts/alice@example.com/credit", Some(body))
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {}", r.text());
        assert_eq!(r.json()["error"]["code"], "bad_request");
    }
    assert_eq!(
        d.cdrtool.balance("alice@example.com").as_deref(),
        Some("15.2500")
    );
    let r = d.get("/api/accounts/no-at-sign/balance").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = d.get("/api/accounts/a%3Db@example.com/balance").await;
    assert_eq!(
        r.status,
        StatusCode::BAD_REQUEST,
        "'=' would corrupt the CDRTool request"
    );
    d.stop().await;
}

#[tokio::test]
async fn balance_command_talks_to_the_daemon() {
    let d = Daemon::start(Some(TOKEN)).await;
    let c = d.client();
    let args = BalanceArgs {
        account: "alice@example.com".into(),
        add: None,
        history: false,
    };
    let out = balance_with(&c, &args).await.unwrap();
    assert_eq!(out, "Balance of alice@example.com: 10.0000\n");
    let args = BalanceArgs {
        add: Some("2.50".into()),
        history: true,
        ..args
    };
    let out = balance_with(&c, &args).await.unwrap();
    assert!(
        out.starts_with("Added 2.50 to alice@example.com: balance is now 12.5000\n"),
        "{out}"
    );
    assert!(out.contains("History ("), "{out}");
    assert_eq!(
        d.cdrtool.balance("alice@example.com").as_deref(),
        Some("12.5000")
    );

    let wrong = ApiClient::new(d.addr, Some("wrong-token-0123456789".into()));
    match balance_with(&wrong, &args).await {
        Err(ClientError::Api { status, .. }) => assert_eq!(status, StatusCode::UNAUTHORIZED),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        d.cdrtool.balance("alice@example.com").as_deref(),
        Some("12.5000")
    );
    d.stop().await;
}

#[tokio::test]
async fn fixed_limit_backend_says_it_has_no_balances() {
    let fixed: Arc<dyn RatingBackend> = Arc::new(callcontrol_rating::FixedLimit::new(Some(60)));
    let d = Daemon::start_with(Some(TOKEN), Some(fixed)).await;
    let r = d.get("/api/accounts/alice@example.com/balance").await;
    assert_eq!(r.status, StatusCode::NOT_IMPLEMENTED);
    assert_eq!(r.json()["error"]["code"], "not_supported");
    let r = d
        .post(
            "/api/accounts/alice@example.com/credit",
            Some(r#"{"amount": "1"}"#),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_IMPLEMENTED);
    d.stop().await;
}

#[tokio::test]
async fn metrics_count_the_activity_that_produced_them() {
    let d = Daemon::start(Some(TOKEN)).await;
    let mut p = d.proxy(3).await;
    // 3 prepaid in progress, 1 postpaid pending, 1 refused (no credit).
    for i in 0..3 {
        assert_eq!(
            d.call(&mut p, &format!("m{i}@h"), "alice", true, true, i)
                .await,
            InitReply::Limited
        );
    }
    assert_eq!(
        d.call(&mut p, "m3@h", "bob", false, false, 3).await,
        InitReply::Limited
    );
    d.cdrtool.add_prepaid("poor@example.com", "0.0000");
    assert_eq!(
        d.call(&mut p, "m4@h", "poor", true, false, 4).await,
        InitReply::NoCredit
    );
    // One terminated through the API, and its stop.
    assert_eq!(
        d.post("/api/sessions/m0%40h/terminate", None).await.status,
        StatusCode::OK
    );
    eventually("the dialog end", || {
        let n = d.mi.ended().len();
        async move { n == 1 }
    })
    .await;
    assert_eq!(p.worker(1).stop("m0@h").await.unwrap(), Found::NotFound);
    eventually("the debit", || {
        let n = d.cdrtool.ledger().len();
        async move { n == 2 }
    })
    .await;

    // One request the server cannot parse.
    let bad = p
        .worker(2)
        .raw(b"fly\r\ncallid: x\r\n\r\n", ReplyFraming::Line)
        .await;
    assert!(bad.is_ok(), "{bad:?}");

    let r = d.get("/metrics").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/openmetrics-text"));
    let text = r.text();
    assert!(text.ends_with("# EOF\n"));
    let m = parse_metrics(&text);
    let s = |series: &str| sample(&m, series);

    assert_eq!(
        s(r#"callcontrol_sessions{state="in-progress",kind="prepaid"}"#),
        2.0
    );
    assert_eq!(
        s(r#"callcontrol_sessions{state="pending",kind="postpaid"}"#),
        1.0
    );
    assert_eq!(
        s(r#"callcontrol_sessions{state="pending",kind="prepaid"}"#),
        0.0
    );
    assert_eq!(
        s(r#"callcontrol_init_replies_total{outcome="limited"}"#),
        4.0
    );
    assert_eq!(
        s(r#"callcontrol_init_replies_total{outcome="no_credit"}"#),
        1.0
    );
    assert_eq!(s(r#"callcontrol_init_replies_total{outcome="error"}"#), 0.0);
    // Every request through the control socket was observed.
    assert_eq!(
        s(r#"callcontrol_request_duration_seconds_count{command="init"}"#),
        5.0
    );
    assert_eq!(
        s(r#"callcontrol_request_duration_seconds_count{command="start"}"#),
        3.0
    );
    assert_eq!(
        s(r#"callcontrol_request_duration_seconds_count{command="stop"}"#),
        1.0
    );
    assert_eq!(
        s(r#"callcontrol_request_duration_seconds_count{command="terminate"}"#),
        0.0
    );
    assert_eq!(
        s(r#"callcontrol_protocol_errors_total{kind="unknown_command"}"#),
        1.0
    );
    assert_eq!(
        s(r#"callcontrol_request_duration_seconds_bucket{le="+Inf",command="init"}"#),
        5.0
    );
    // Rating: 4 prepaid inits + 3 re-queries at start; two debits: the
    // terminated call and the release (Duration=0) of the refused one.
    assert_eq!(
        s(r#"callcontrol_rating_requests_total{operation="authorise",result="ok"}"#),
        7.0
    );
    assert_eq!(
        s(r#"callcontrol_rating_requests_total{operation="debit",result="ok"}"#),
        2.0
    );
    assert_eq!(
        s(r#"callcontrol_rating_request_duration_seconds_count{operation="authorise"}"#),
        7.0
    );
    let connected: Vec<_> = m
        .iter()
        .filter(|(k, _)| k.starts_with("callcontrol_rating_engine_connected{"))
        .collect();
    assert_eq!(connected.len(), 1, "{connected:?}");
    assert_eq!(*connected[0].1, 1.0);
    assert_eq!(s(r#"callcontrol_debits_total{result="ok"}"#), 2.0);
    assert_eq!(s(r#"callcontrol_debits_total{result="failed"}"#), 0.0);
    assert_eq!(s("callcontrol_debits_pending"), 0.0);
    // The MI: one dialog ended.
    assert_eq!(
        s(r#"callcontrol_mi_requests_total{operation="end_dialog",result="ended"}"#),
        1.0
    );
    assert_eq!(
        s(r#"callcontrol_dialog_end_requests_total{result="sent"}"#),
        1.0
    );
    let mi: Vec<_> = m
        .iter()
        .filter(|(k, _)| k.starts_with("callcontrol_mi_reachable{"))
        .collect();
    assert_eq!(mi.len(), 1, "{mi:?}");
    assert_eq!(*mi[0].1, 1.0);
    assert_eq!(s("callcontrol_control_socket_up"), 1.0);
    assert_eq!(s("callcontrol_engine_up"), 1.0);
    // Timers: none fired yet, but the histogram is there.
    assert_eq!(s("callcontrol_timer_lateness_seconds_count"), 0.0);
    assert_eq!(
        s(r#"callcontrol_timer_lateness_seconds_bucket{le="+Inf"}"#),
        0.0
    );
    d.stop().await;
}

#[tokio::test]
async fn health_says_what_is_down() {
    let d = Daemon::start(Some(TOKEN)).await;
    // Make the rating client connect once.
    let _ = d.get("/api/accounts/alice@example.com/balance").await;
    let r = d.get("/api/health").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let h = r.json();
    assert_eq!(h["ok"], true);
    assert_eq!(h["control_socket"]["up"], true);
    assert_eq!(h["engine"]["running"], true);
    assert_eq!(h["rating"][0]["connected"], true);
    assert_eq!(h["rating"][0]["address"], d.cdrtool.address());

    d.control_up.store(false, Ordering::Relaxed);
    let r = d.get("/api/health").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.json()["ok"], false);
    assert_eq!(r.json()["control_socket"]["up"], false);
    let m = parse_metrics(&d.get("/metrics").await.text());
    assert_eq!(sample(&m, "callcontrol_control_socket_up"), 0.0);
    d.stop().await;
}

#[tokio::test]
async fn without_a_token_only_localhost_and_same_origin_are_served() {
    let d = Daemon::start(None).await;
    let r = d.get("/api/sessions").await;
    assert_eq!(r.status, StatusCode::OK);
    let c = d.anonymous();
    let rebinding = [("host", "evil.example:80".to_string())];
    let r = c
        .send(Method::GET, "/api/sessions", &rebinding, Vec::new())
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let localhost = [("host", format!("localhost:{}", d.addr.port()))];
    let r = c
        .send(Method::GET, "/api/sessions", &localhost, Vec::new())
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);
    let mut p = d.proxy(1).await;
    d.call(&mut p, "o1@h", "bob", false, true, 1).await;
    let cross = [("origin", "http://evil.example".to_string())];
    let r = c
        .send(
            Method::POST,
            "/api/sessions/o1%40h/terminate",
            &cross,
            Vec::new(),
        )
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(d.mi.end_requests().len(), 0);
    let same = [("origin", format!("http://{}", d.addr))];
    let r = c
        .send(
            Method::POST,
            "/api/sessions/o1%40h/terminate",
            &same,
            Vec::new(),
        )
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);
    d.stop().await;
}

#[tokio::test]
async fn a_public_address_without_token_is_refused_at_start() {
    let d = Daemon::start(None).await;
    let parts = WebParts {
        handle: d.handle.clone(),
        rating: Arc::new(NoRating),
        signalling: Arc::new(LogSignalling),
        control_socket_up: Arc::new(|| true),
        metrics: d.metrics.clone(),
        token: None,
    };
    let config = WebConfig {
        address: "0.0.0.0".into(),
        port: Some(1),
        token: None,
    };
    match bind_and_serve(&config, parts, CancellationToken::new()).await {
        Err(ServeError::Config(e)) => {
            assert_eq!(e.key, "token");
            assert!(e.to_string().contains("not a loopback address"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    d.stop().await;
}

#[tokio::test]
async fn ten_thousand_sessions_are_served_a_page_at_a_time() {
    let d = Daemon::start(Some(TOKEN)).await;
    for i in 0..10_000 {
        let from = if i % 1000 == 7 {
            "<sip:needle@example.com>"
        } else {
            "<sip:bulk@example.com>"
        };
        let req = InitRequest::new(format!("bulk-{i:05}@h"), from, "sip:2000@example.com");
        assert_eq!(d.handle.init(req).await.unwrap(), InitReply::Limited);
    }
    let t = std::time::Instant::now();
    let r = d.get("/api/sessions?offset=9950&limit=100").await;
    eprintln!(
        "GET one page of 10000 sessions: {:?}, {} bytes",
        t.elapsed(),
        r.body.len()
    );
    let page = r.json();
    assert_eq!(page["total"], 10_000);
    assert_eq!(page["matched"], 10_000);
    assert_eq!(call_ids(&page).len(), 50);
    assert_eq!(call_ids(&page)[49], "bulk-09999@h");
    let needles = d.get("/api/sessions?user=needle&limit=100").await.json();
    assert_eq!(needles["matched"], 10);
    assert_eq!(call_ids(&needles)[0], "bulk-00007@h");
    let m = parse_metrics(&d.get("/metrics").await.text());
    assert_eq!(
        sample(
            &m,
            r#"callcontrol_sessions{state="pending",kind="postpaid"}"#
        ),
        10_000.0
    );
    d.stop().await;
}

#[tokio::test]
async fn a_page_is_at_most_a_thousand_rows_in_order() {
    let d = Daemon::start(Some(TOKEN)).await;
    for i in 0..1_200 {
        let req = InitRequest::new(
            format!("cap-{:05}@h", (i * 7) % 1_200),
            "<sip:bulk@example.com>",
            "sip:2000@example.com",
        );
        assert_eq!(d.handle.init(req).await.unwrap(), InitReply::Limited);
    }
    for path in ["/api/sessions", "/api/sessions?limit=5000"] {
        let page = d.get(path).await.json();
        assert_eq!(page["total"], 1_200, "{path}");
        assert_eq!(page["matched"], 1_200, "{path}");
        assert_eq!(call_ids(&page).len(), 1_000, "{path}");
    }
    let rest = d.get("/api/sessions?offset=1000&limit=5000").await.json();
    let ids = call_ids(&rest);
    assert_eq!(ids.len(), 200);
    // Same creation millisecond or not, rows come in (created, call_id) order.
    let created: Vec<u64> = rest["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["created"].as_u64().unwrap())
        .collect();
    for (w, c) in ids.windows(2).zip(created.windows(2)) {
        assert!((c[0], &w[0]) < (c[1], &w[1]), "{w:?} {c:?}");
    }
    d.stop().await;
}
