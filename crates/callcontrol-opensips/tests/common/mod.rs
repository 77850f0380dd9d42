//! A daemon in the test process: the real engine driver behind the real
//! socket server, on a socket in a temp dir.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use callcontrol_core::prelude::*;
use callcontrol_core::testkit::FakeRating;
use callcontrol_opensips::server::{bind_socket, serve, ServerConfig};
use callcontrol_opensips::testkit::{FakeMi, MiVersion};
use callcontrol_opensips::{DialogIdFormat, MiClient, MiConfig, MiTransport};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub handle: Handle,
    pub rating: FakeRating,
    pub shutdown: CancellationToken,
    pub server: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Daemon {
    pub async fn start(limit: Option<u64>, signalling: Arc<dyn SignallingBackend>) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(dir, limit, signalling).await
    }

    pub async fn start_in(
        dir: tempfile::TempDir,
        limit: Option<u64>,
        signalling: Arc<dyn SignallingBackend>,
    ) -> Daemon {
        let socket = dir.path().join("callcontrol.sock");
        let rating = FakeRating::new();
        let shutdown = CancellationToken::new();
        let running = driver::spawn(
            Parts {
                config: EngineConfig {
                    limit,
                    ..Default::default()
                },
                rating: Arc::new(rating.clone()),
                signalling,
                store: Box::new(MemoryStore::new()),
                clock: Arc::new(TokioClock::new()),
            },
            shutdown.clone(),
        )
        .unwrap();
        let listener = bind_socket(&socket, Some("no-such-group-here")).unwrap();
        let server = tokio::spawn(serve(
            listener,
            running.handle.clone(),
            ServerConfig::default(),
            shutdown.clone(),
        ));
        Daemon {
            dir,
            socket,
            handle: running.handle,
            rating,
            shutdown,
            server,
        }
    }
}

/// A fake MI of `version` on a datagram socket in `dir`, and an MI client
/// for it.
pub fn mi_pair(dir: &Path, version: MiVersion, format: DialogIdFormat) -> (FakeMi, Arc<MiClient>) {
    let fake = FakeMi::new(version);
    let path = dir.join("mi.sock");
    fake.serve_datagram(&path).unwrap();
    let client = MiClient::new(MiConfig {
        transport: MiTransport::Datagram,
        socket_path: path,
        dialog_id_format: format,
        reply_dir: Some(dir.to_path_buf()),
        ..MiConfig::default()
    })
    .unwrap();
    (fake, Arc::new(client))
}

/// Writes `request` on a raw connection and reads exactly `expected.len()`
/// bytes (or fails after 2 s), returning what was read.
pub async fn exchange(stream: &mut UnixStream, request: &[u8], expected_len: usize) -> Vec<u8> {
    stream.write_all(request).await.unwrap();
    let mut got = vec![0u8; expected_len];
    tokio::time::timeout(Duration::from_secs(2), stream.read_exact(&mut got))
        .await
        .expect("reply in time")
        .expect("reply");
    got
}

/// Polls `f` until it is true (bounded).
pub async fn eventually(mut f: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("condition not reached");
}

/// Polls an async condition until it is true (bounded).
pub async fn eventually_async<F, Fut>(mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..1000 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("condition not reached");
}
