//! A daemon assembled in-process for the web tests: the engine driver, the
//! real CDRTool client against the fake CDRTool, the real OpenSIPS MI client
//! against the fake MI (datagram), the real control socket server with the
//! metrics observer, and the web server on 127.0.0.1:0.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use callcontrol_bin::web::client::{ApiClient, RawResponse};
use callcontrol_bin::web::{serve, Metrics, WebParts, WebState};
use callcontrol_core::prelude::*;
use callcontrol_opensips::server::{bind_socket, ServerConfig};
use callcontrol_opensips::testkit::{opensips_init, FakeMi, FakeOpenSips, MiVersion};
use callcontrol_opensips::{MiClient, MiConfig};
use callcontrol_rating::testkit::FakeCdrtool;
use callcontrol_rating::{CdrtoolClient, CdrtoolConfig};
use hyper::Method;

/// The token the tests use.
pub const TOKEN: &str = "test-token-0123456789abcdef";

pub struct Daemon {
    pub addr: SocketAddr,
    pub token: Option<String>,
    pub handle: Handle,
    pub cdrtool: FakeCdrtool,
    pub mi: FakeMi,
    pub metrics: Metrics,
    pub control_up: Arc<AtomicBool>,
    pub socket: std::path::PathBuf,
    pub shutdown: CancellationToken,
    pub dir: tempfile::TempDir,
}

impl Daemon {
    /// Starts everything; `rating: None` uses the CDRTool client.
    pub async fn start(token: Option<&str>) -> Daemon {
        Self::start_with(token, None).await
    }

    pub async fn start_with(token: Option<&str>, rating: Option<Arc<dyn RatingBackend>>) -> Daemon {
        let dir = tempfile::tempdir().expect("tempdir");
        let shutdown = CancellationToken::new();
        let metrics = Metrics::new();

        let cdrtool = FakeCdrtool::start().await.expect("fake cdrtool");
        cdrtool.add_prepaid("alice@example.com", "10.0000");
        cdrtool.set_max_sessions("alice@example.com", 100);
        let rating = match rating {
            Some(r) => r,
            None => Arc::new(
                CdrtoolClient::new(
                    CdrtoolConfig::with_address(&cdrtool.address()).expect("config"),
                )
                .expect("cdrtool client"),
            ),
        };
        let rating = metrics.wrap_rating(rating);

        let mi = FakeMi::new(MiVersion::V3_6);
        let mi_path = dir.path().join("mi.sock");
        mi.serve_datagram(&mi_path).expect("fake mi");
        let mi_client = MiClient::new(MiConfig {
            socket_path: mi_path,
            reply_dir: Some(dir.path().to_path_buf()),
            timeout: 2.0,
            ..MiConfig::default()
        })
        .expect("mi client");
        // As the daemon does at start-up: learn the version (and the id format).
        mi_client.probe().await.expect("MI version");
        let signalling = metrics.wrap_signalling(Arc::new(mi_client));

        let running = driver::spawn(
            Parts {
                config: EngineConfig {
                    limit: Some(3600),
                    ..Default::default()
                },
                rating: rating.clone(),
                signalling: signalling.clone(),
                store: Box::new(MemoryStore::new()),
                clock: Arc::new(TokioClock::new()),
            },
            shutdown.clone(),
        )
        .expect("engine");
        let handle = running.handle.clone();

        let socket = dir.path().join("callcontrol.sock");
        let listener = bind_socket(&socket, None).expect("control socket");
        let config = metrics.instrument_server(ServerConfig::default());
        tokio::spawn(callcontrol_opensips::serve(
            listener,
            handle.clone(),
            config,
            shutdown.clone(),
        ));
        let control_up = Arc::new(AtomicBool::new(true));

        let probe = control_up.clone();
        let state = WebState::new(WebParts {
            handle: handle.clone(),
            rating,
            signalling,
            control_socket_up: Arc::new(move || probe.load(Ordering::Relaxed)),
            metrics: metrics.clone(),
            token: token.map(str::to_string),
        });
        let web = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("web listener");
        let addr = web.local_addr().expect("addr");
        tokio::spawn(serve(web, state, shutdown.clone()));
        Daemon {
            addr,
            token: token.map(str::to_string),
            handle,
            cdrtool,
            mi,
            metrics,
            control_up,
            socket,
            shutdown,
            dir,
        }
    }

    pub fn client(&self) -> ApiClient {
        ApiClient::new(self.addr, self.token.clone())
    }

    pub fn anonymous(&self) -> ApiClient {
        ApiClient::new(self.addr, None)
    }

    pub async fn get(&self, path: &str) -> RawResponse {
        self.client()
            .send(Method::GET, path, &[], Vec::new())
            .await
            .expect("GET")
    }

    pub async fn post(&self, path: &str, body: Option<&str>) -> RawResponse {
        let headers = [("content-type", "application/json".to_string())];
        let body = body.map(|b| b.as_bytes().to_vec()).unwrap_or_default();
        self.client()
            .send(Method::POST, path, &headers, body)
            .await
            .expect("POST")
    }

    /// Workers connected to the control socket, like OpenSIPS's.
    pub async fn proxy(&self, workers: usize) -> FakeOpenSips {
        FakeOpenSips::connect(&self.socket, workers)
            .await
            .expect("workers")
    }

    /// Sets up calls through the control socket: `init` (+ `start` with a
    /// dialog the fake MI knows, when `answer`). Returns the dialog id.
    pub async fn call(
        &self,
        proxy: &mut FakeOpenSips,
        call_id: &str,
        from_user: &str,
        prepaid: bool,
        answer: bool,
        n: u32,
    ) -> InitReply {
        let mut req = opensips_init(call_id, from_user);
        req.prepaid = if prepaid {
            Prepaid::True
        } else {
            Prepaid::False
        };
        let w = proxy.worker(n as usize % proxy.len());
        let reply = w.init(req).await.expect("init");
        if answer && reply == InitReply::Limited {
            let d = DialogId::new(1000 + n, 2000 + n);
            self.mi.add_dialog(call_id, d);
            let w = proxy.worker((n as usize + 1) % proxy.len());
            assert_eq!(w.start(call_id, d).await.expect("start"), Found::Ok);
        }
        reply
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        self.cdrtool.stop().await;
    }
}

/// Waits (up to ~5 s, polling) until `f` is true.
pub async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..250 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}");
}

/// Parses Prometheus/OpenMetrics text into `series → value`, where a series
/// is the metric name with its labels as written (`name{a="b"}`).
pub fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (series, value) = match line.rfind("} ") {
            Some(i) => (&line[..=i], &line[i + 2..]),
            None => line.split_once(' ').expect("sample line"),
        };
        let value = value.split_whitespace().next().expect("value");
        let v = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse::<f64>()
                .unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        out.insert(series.to_string(), v);
    }
    out
}

/// One sample, or a panic naming what is missing.
pub fn sample(m: &BTreeMap<String, f64>, series: &str) -> f64 {
    *m.get(series).unwrap_or_else(|| {
        let name = series.split('{').next().unwrap_or(series);
        let similar: Vec<_> = m.keys().filter(|k| k.starts_with(name)).collect();
        panic!("no series {series}; have {similar:#?}")
    })
}
