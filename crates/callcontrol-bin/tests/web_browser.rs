//! The sessions page in headless Chromium (Debian package `chromium`),
//! driven over the DevTools protocol: it loads the page against an
//! in-process daemon with sessions, enters the token, checks the rows, the
//! escaping of a hostile Call-ID and the countdown, filters, terminates a
//! call (the fake MI sees `dlg_end_dlg`), adds credit, and saves
//! screenshots to `target/artifacts/web-sessions*.png`.
//!
//! Skipped, loudly, when no Chromium is installed, unless
//! `CALLCONTROL_REQUIRE_CHROMIUM=1` (CI sets it), which makes that a failure.

mod web_support;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use callcontrol_core::prelude::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use web_support::*;

const XSS_CALL_ID: &str = "<script>window.__xss=1</script>\"'><img src=x onerror=window.__xss=2>@h";

fn find_chromium() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    for dir in std::env::split_paths(&path) {
        for name in ["chromium", "chromium-browser", "google-chrome"] {
            let p = dir.join(name);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

fn artifacts_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    let dir = target.join("artifacts");
    std::fs::create_dir_all(&dir).expect("artifacts dir");
    dir
}

/// A headless Chromium and one DevTools session attached to one page.
struct Browser {
    _child: tokio::process::Child,
    _profile: tempfile::TempDir,
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u64,
    session: String,
}

impl Browser {
    async fn launch(exe: &Path) -> Browser {
        let profile = tempfile::tempdir().expect("profile dir");
        let mut child = tokio::process::Command::new(exe)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-quic",
                "--disable-extensions",
                "--disable-dev-shm-usage",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                "--window-size=1400,1000",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start chromium");
        let stderr = child.stderr.take().expect("stderr");
        let mut lines = BufReader::new(stderr).lines();
        let url = tokio::time::timeout(Duration::from_secs(30), async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(i) = line.find("ws://") {
                    if line.contains("DevTools listening on") {
                        return line[i..].trim().to_string();
                    }
                }
            }
            panic!("chromium exited without a DevTools address");
        })
        .await
        .expect("chromium did not start within 30 s");
        // Keep draining its stderr so it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let (ws, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .expect("devtools websocket");
        let mut b = Browser {
            _child: child,
            _profile: profile,
            ws,
            next_id: 1,
            session: String::new(),
        };
        let target = b
            .call("Target.createTarget", json!({"url": "about:blank"}))
            .await;
        let target_id = target["targetId"].as_str().expect("targetId").to_string();
        let attached = b
            .call(
                "Target.attachToTarget",
                json!({"targetId": target_id, "flatten": true}),
            )
            .await;
        b.session = attached["sessionId"]
            .as_str()
            .expect("sessionId")
            .to_string();
        b.page("Page.enable", json!({})).await;
        b.page("Runtime.enable", json!({})).await;
        b.page(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": 1400, "height": 1000, "deviceScaleFactor": 1, "mobile": false}),
        )
        .await;
        b
    }

    async fn send(&mut self, method: &str, params: Value, session: bool) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if session {
            msg["sessionId"] = json!(self.session);
        }
        self.ws
            .send(Message::Text(msg.to_string().into()))
            .await
            .expect("devtools send");
        loop {
            let m = tokio::time::timeout(Duration::from_secs(30), self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("no answer to {method}"))
                .expect("devtools closed")
                .expect("devtools read");
            let Message::Text(t) = m else { continue };
            let v: Value = serde_json::from_str(&t).expect("devtools json");
            if v["id"] == json!(id) {
                if let Some(e) = v.get("error") {
                    panic!("{method} failed: {e}");
                }
                return v["result"].clone();
            }
        }
    }

    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.send(method, params, false).await
    }

    async fn page(&mut self, method: &str, params: Value) -> Value {
        self.send(method, params, true).await
    }

    /// Evaluates `expr` in the page (promises awaited) and returns its value.
    async fn eval(&mut self, expr: &str) -> Value {
        let r = self
            .page(
                "Runtime.evaluate",
                json!({"expression": expr, "returnByValue": true, "awaitPromise": true}),
            )
            .await;
        if let Some(e) = r.get("exceptionDetails") {
            panic!("page script failed: {e}\n{expr}");
        }
        r["result"]["value"].clone()
    }

    /// Polls `expr` until it is `true` (10 s at most).
    async fn wait_for(&mut self, what: &str, expr: &str) {
        for _ in 0..200 {
            if self.eval(expr).await == json!(true) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("page never showed {what} ({expr})");
    }

    async fn navigate(&mut self, url: &str) {
        self.page("Page.navigate", json!({"url": url})).await;
        self.wait_for(
            "the page",
            "document.readyState === 'complete' && !!window.callcontrol",
        )
        .await;
    }

    async fn screenshot(&mut self, path: &Path) {
        let r = self
            .page("Page.captureScreenshot", json!({"format": "png"}))
            .await;
        let data = base64_decode(r["data"].as_str().expect("png data"));
        assert!(data.starts_with(b"\x89PNG"), "not a PNG");
        std::fs::write(path, data).expect("write screenshot");
        eprintln!("screenshot saved: {}", path.display());
    }
}

fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("bad base64"),
        }
    };
    let bytes: Vec<u8> = s
        .bytes()
        .filter(|b| !b.is_ascii_whitespace() && *b != b'=')
        .collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= val(c) << (18 - 6 * i);
        }
        let take = chunk.len() - 1;
        for i in 0..take {
            out.push((n >> (16 - 8 * i)) as u8);
        }
    }
    out
}

/// Seconds from the page's `h:mm:ss` / `m:ss`.
fn secs(text: &Value) -> u64 {
    let t = text.as_str().unwrap_or_else(|| panic!("not text: {text}"));
    t.split(':').fold(0, |acc, p| {
        acc * 60 + p.parse::<u64>().unwrap_or_else(|_| panic!("{t:?}"))
    })
}

fn js(s: &str) -> String {
    serde_json::to_string(s).expect("js string")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_page_in_headless_chromium() {
    let Some(exe) = find_chromium() else {
        let msg =
            "\n\n!!!!! SKIPPED web_browser: no chromium on PATH (apt-get install chromium) !!!!!\n";
        if std::env::var("CALLCONTROL_REQUIRE_CHROMIUM").is_ok_and(|v| v == "1") {
            panic!("{msg}");
        }
        eprintln!("{msg}");
        return;
    };

    let d = Daemon::start(Some(TOKEN)).await;
    let mut p = d.proxy(4).await;
    // The hostile Call-ID first (oldest, so it is on page one), then 3
    // prepaid calls of alice, then postpaid calls of bob: 130 in all, more
    // than one page of 100.
    assert_eq!(
        d.call(&mut p, XSS_CALL_ID, "mallory", false, true, 0).await,
        InitReply::Limited
    );
    for i in 1..=3 {
        assert_eq!(
            d.call(&mut p, &format!("alice-{i}@h"), "alice", true, true, i)
                .await,
            InitReply::Limited
        );
    }
    for i in 4..130 {
        let answer = i % 5 != 0;
        assert_eq!(
            d.call(&mut p, &format!("bob-{i:03}@h"), "bob", false, answer, i)
                .await,
            InitReply::Limited
        );
    }
    // And 10,000 more straight through the engine: the page must stay usable.
    for i in 0..10_000 {
        let req = InitRequest::new(
            format!("bulk-{i:05}@h"),
            "<sip:bulk@example.com>",
            "sip:2000@example.com",
        );
        assert_eq!(d.handle.init(req).await.unwrap(), InitReply::Limited);
    }
    let artifacts = artifacts_dir();

    let mut b = Browser::launch(&exe).await;
    b.navigate(&format!("http://{}/", d.addr)).await;
    // No token yet: the page says so.
    b.wait_for(
        "the token prompt",
        "document.getElementById('message').textContent.includes('token')",
    )
    .await;
    assert_eq!(
        b.eval("document.querySelectorAll('#rows tr').length").await,
        json!(0)
    );
    // Enter the token as an operator would.
    b.eval(&format!(
        "document.getElementById('token').value = {}; document.getElementById('token-form').requestSubmit(); true",
        js(TOKEN)
    ))
    .await;
    b.wait_for(
        "100 rows",
        "document.querySelectorAll('#rows tr').length === 100",
    )
    .await;
    assert_eq!(
        b.eval("sessionStorage.getItem('callcontrol.token')").await,
        json!(TOKEN)
    );
    assert_eq!(
        b.eval("document.getElementById('page-info').textContent")
            .await,
        json!("1–100 of 10130")
    );

    // The hostile Call-ID is shown as text and ran nothing.
    assert_eq!(b.eval("typeof window.__xss").await, json!("undefined"));
    assert_eq!(
        b.eval("document.querySelectorAll('#rows img, #rows script, main script').length")
            .await,
        json!(0)
    );
    assert_eq!(
        b.eval("document.querySelector('#rows tr td.callid').textContent")
            .await,
        json!(XSS_CALL_ID)
    );
    assert_eq!(
        b.eval("document.querySelector('#rows tr').dataset.callid")
            .await,
        json!(XSS_CALL_ID)
    );

    // A prepaid row: its columns, and its countdown.
    let row = "document.querySelector('#rows tr[data-callid=\"alice-1@h\"]')";
    let cells = b
        .eval(&format!(
            "Array.from({row}.children).map(c => c.textContent)"
        ))
        .await;
    assert_eq!(cells[0], "alice-1@h");
    assert_eq!(cells[1], "\"cc test\" <sip:alice@example.com>");
    assert_eq!(cells[2], "sip:1000@127.0.0.1:5060");
    assert_eq!(cells[3], "alice@example.com");
    assert_eq!(cells[4], "prepaid");
    assert_eq!(cells[8], "in-progress");
    assert_eq!(cells[9], "Terminate");
    let limit = secs(&cells[5]);
    let before = secs(
        &b.eval(&format!("{row}.querySelector('.remaining').textContent"))
            .await,
    );
    assert!(
        before > 0 && before <= limit,
        "remaining {before} of {limit}"
    );
    b.wait_for(
        "the countdown",
        &format!("(() => {{ const t = {row}.querySelector('.remaining').textContent.split(':').map(Number); return t.reduce((a, n) => a * 60 + n, 0) < {before}; }})()"),
    )
    .await;
    let elapsed = secs(
        &b.eval(&format!("{row}.querySelector('.elapsed').textContent"))
            .await,
    );
    assert!(elapsed >= 1, "elapsed counts up: {elapsed}");
    // A pending postpaid row has no timers yet.
    let pending = b.eval("Array.from(document.querySelector('#rows tr[data-callid=\"bob-005@h\"]').children).map(c => c.textContent)").await;
    assert_eq!(pending[4], "postpaid");
    assert_eq!(pending[6], "—");
    assert_eq!(pending[8], "pending");

    // The health summary.
    b.wait_for(
        "health",
        "document.getElementById('health').dataset.ok === 'true'",
    )
    .await;
    let health = b
        .eval("document.getElementById('health').textContent")
        .await;
    let health = health.as_str().unwrap();
    assert!(
        health.contains("control socket: up") && health.contains("rating 127.0.0.1:"),
        "{health}"
    );

    // Page two.
    b.eval("document.getElementById('next').click(); true")
        .await;
    b.wait_for(
        "page two",
        "document.getElementById('page-info').textContent === '101–200 of 10130'",
    )
    .await;
    assert_eq!(
        b.eval("document.querySelectorAll('#rows tr').length").await,
        json!(100)
    );
    // The last page.
    b.eval(
        "window.callcontrol.state.offset = 10100; window.callcontrol.refresh().then(() => true)",
    )
    .await;
    b.wait_for(
        "the last page",
        "document.getElementById('page-info').textContent === '10101–10130 of 10130'",
    )
    .await;
    assert_eq!(
        b.eval("document.getElementById('next').disabled").await,
        json!(true)
    );
    assert_eq!(
        b.eval("document.querySelector('#rows tr:last-child').dataset.callid")
            .await,
        json!("bulk-09999@h")
    );
    // One refresh of a page with 10,130 sessions (reported, not asserted).
    let ms = b
        .eval("(async () => { const t = performance.now(); await window.callcontrol.refresh(); return performance.now() - t; })()")
        .await;
    eprintln!("page refresh with 10130 sessions: {ms} ms");
    b.eval("window.callcontrol.state.offset = 100; document.getElementById('prev').click(); true")
        .await;
    b.wait_for(
        "page one",
        "document.getElementById('page-info').textContent === '1–100 of 10130'",
    )
    .await;

    // The filter box.
    b.eval("{ const f = document.getElementById('filter'); f.value = 'ALICE'; f.dispatchEvent(new Event('input')); } true").await;
    b.wait_for(
        "alice's rows",
        "document.querySelectorAll('#rows tr').length === 3",
    )
    .await;
    assert_eq!(
        b.eval("document.getElementById('counts').textContent")
            .await,
        json!("(3 matching of 10130)")
    );

    // The account panel: balance, then credit.
    b.eval("document.getElementById('account').value = 'alice@example.com'; document.getElementById('account-form').requestSubmit(); true").await;
    b.wait_for(
        "the balance",
        "document.getElementById('account-balance').textContent === '10.0000'",
    )
    .await;
    b.eval("document.getElementById('credit-amount').value = '2.50'; document.getElementById('credit-form').requestSubmit(); true").await;
    b.wait_for(
        "the new balance",
        "document.getElementById('account-balance').textContent === '12.5000'",
    )
    .await;
    assert_eq!(
        d.cdrtool.balance("alice@example.com").as_deref(),
        Some("12.5000")
    );
    // A float-looking amount is refused by the page before any request.
    b.eval("document.getElementById('credit-amount').value = '1e3'; document.getElementById('credit-form').requestSubmit(); true").await;
    b.wait_for(
        "the refusal",
        "document.getElementById('message').textContent.includes('positive decimal')",
    )
    .await;
    assert_eq!(
        d.cdrtool.balance("alice@example.com").as_deref(),
        Some("12.5000")
    );

    // Terminate alice-2 with confirmation.
    let row2 = "document.querySelector('#rows tr[data-callid=\"alice-2@h\"]')";
    b.eval(&format!(
        "{row2}.querySelector('button.danger').click(); true"
    ))
    .await;
    b.wait_for(
        "the confirmation",
        &format!("{row2}.querySelector('button.confirm') !== null"),
    )
    .await;
    b.screenshot(&artifacts.join("web-sessions-confirm.png"))
        .await;
    assert!(
        d.mi.end_requests().is_empty(),
        "nothing ended before confirmation"
    );
    b.eval(&format!(
        "{row2}.querySelector('button.confirm').click(); true"
    ))
    .await;
    eventually("dlg_end_dlg at the MI", || {
        let ended = d.mi.ended();
        async move { ended == vec![CallId::new("alice-2@h")] }
    })
    .await;
    b.wait_for("the row to go", "document.querySelectorAll('#rows tr').length === 2 && !document.querySelector('#rows tr[data-callid=\"alice-2@h\"]')").await;

    // Back to everything, and the picture.
    b.eval("{ const f = document.getElementById('filter'); f.value = ''; f.dispatchEvent(new Event('input')); } true").await;
    b.wait_for("all rows", "document.querySelectorAll('#rows tr').length === 100 && document.getElementById('page-info').textContent === '1–100 of 10129'").await;
    b.eval("document.getElementById('message').hidden = true; window.scrollTo(0, 0); true")
        .await;
    let shot = artifacts.join("web-sessions.png");
    b.screenshot(&shot).await;
    assert!(std::fs::metadata(&shot).expect("screenshot").len() > 10_000);
    assert_eq!(b.eval("typeof window.__xss").await, json!("undefined"));
    d.stop().await;
}
