//! A fake OpenSIPS for tests (feature `test-kit`), so that this crate's
//! tests, other crates' tests and embedders drive a daemon the way the real
//! proxy does.
//!
//! - [`FakeOpenSips`]: N workers, each with one persistent connection to the
//!   `call_control` socket, strictly request → reply, giving up (and closing
//!   the connection, as the module does) after 500 ms; `init` is sent in the
//!   exact byte layout of the `call_control` module.
//! - [`FakeMi`]: an MI endpoint on a Unix datagram socket and/or HTTP that
//!   records every request, ends the dialogs it knows when asked with an id
//!   its [`MiVersion`] accepts, and answers OK / 404 / plain text / nothing
//!   as scripted.

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UnixDatagram, UnixStream};

use callcontrol_core::request::{Found, InitReply, InitRequest, Request, StartRequest};
use callcontrol_core::types::{CallId, DialogId};

use crate::codec::{write_request, ClientReply, ReplyDecoder, ReplyFraming};
use crate::error::ReplyError;
use crate::mi::did;

/// OpenSIPS's `socket_timeout` default.
pub const WORKER_TIMEOUT: Duration = Duration::from_millis(500);

/// Why a worker got no usable reply.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// No reply within the timeout; the worker closed its connection.
    #[error("no reply in time")]
    Timeout,
    /// The connection is closed (by the daemon, or after a timeout).
    #[error("connection closed")]
    Closed,
    /// Socket error.
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    /// A reply that does not parse.
    #[error("reply: {0}")]
    Reply(#[from] ReplyError),
    /// A reply of the wrong kind for the request.
    #[error("unexpected reply {0:?}")]
    Unexpected(ClientReply),
}

/// One OpenSIPS worker: one persistent connection, one request at a time.
#[derive(Debug)]
pub struct Worker {
    stream: Option<UnixStream>,
    path: PathBuf,
    decoder: ReplyDecoder,
    out: Vec<u8>,
    timeout: Duration,
}

impl Worker {
    /// Connects to the daemon's socket.
    pub async fn connect(path: impl AsRef<Path>) -> io::Result<Worker> {
        let path = path.as_ref().to_path_buf();
        let stream = UnixStream::connect(&path).await?;
        Ok(Worker {
            stream: Some(stream),
            path,
            decoder: ReplyDecoder::new(),
            out: Vec::with_capacity(512),
            timeout: WORKER_TIMEOUT,
        })
    }

    /// Changes the reply timeout (default [`WORKER_TIMEOUT`]).
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Whether the connection is open.
    pub fn is_connected(&self) -> bool {
        self.stream.is_some()
    }

    /// Opens a new connection (OpenSIPS does so 10 s after losing one).
    pub async fn reconnect(&mut self) -> io::Result<()> {
        self.stream = Some(UnixStream::connect(&self.path).await?);
        self.decoder = ReplyDecoder::new();
        Ok(())
    }

    /// Sends raw bytes and reads one reply of the given framing (lines
    /// without line ends).
    pub async fn raw(
        &mut self,
        bytes: &[u8],
        framing: ReplyFraming,
    ) -> Result<Vec<String>, WorkerError> {
        self.send(bytes).await?;
        let r = self.read_with(|d| d.decode_raw(framing)).await?;
        Ok(r?)
    }

    /// Sends raw bytes without waiting for anything.
    pub async fn send(&mut self, bytes: &[u8]) -> Result<(), WorkerError> {
        let stream = self.stream.as_mut().ok_or(WorkerError::Closed)?;
        if let Err(e) = stream.write_all(bytes).await {
            self.stream = None;
            return Err(e.into());
        }
        Ok(())
    }

    /// Sends a request and reads its typed reply.
    pub async fn request(&mut self, request: &Request) -> Result<ClientReply, WorkerError> {
        self.out.clear();
        write_request(request, &mut self.out);
        let out = std::mem::take(&mut self.out);
        let sent = self.send(&out).await;
        self.out = out;
        sent?;
        let r = self.read_with(|d| d.decode(request)).await?;
        Ok(r?)
    }

    async fn read_with<T>(
        &mut self,
        mut decode: impl FnMut(&mut ReplyDecoder) -> Option<T>,
    ) -> Result<T, WorkerError> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            if let Some(r) = decode(&mut self.decoder) {
                return Ok(r);
            }
            let stream = self.stream.as_mut().ok_or(WorkerError::Closed)?;
            let buf = self.decoder.buffer_mut();
            buf.reserve(1024);
            match tokio::time::timeout_at(deadline, stream.read_buf(buf)).await {
                Err(_) => {
                    // As the module: give up on the reply and the connection.
                    self.stream = None;
                    return Err(WorkerError::Timeout);
                }
                Ok(Ok(0)) => {
                    self.stream = None;
                    return Err(WorkerError::Closed);
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    self.stream = None;
                    return Err(e.into());
                }
            }
        }
    }

    /// `init`.
    pub async fn init(&mut self, req: InitRequest) -> Result<InitReply, WorkerError> {
        match self.request(&Request::Init(req)).await? {
            ClientReply::Init(r) => Ok(r),
            ClientReply::Error => Ok(InitReply::Error),
            other => Err(WorkerError::Unexpected(other)),
        }
    }

    /// `start` with the decimal dialog id of OpenSIPS ≥ 2.3.
    pub async fn start(
        &mut self,
        call_id: &str,
        dialog_id: DialogId,
    ) -> Result<Found, WorkerError> {
        let req = Request::Start(StartRequest {
            call_id: CallId::new(call_id),
            dialog_id: Some(dialog_id),
        });
        self.found(&req).await
    }

    /// `stop`.
    pub async fn stop(&mut self, call_id: &str) -> Result<Found, WorkerError> {
        self.found(&Request::Stop {
            call_id: CallId::new(call_id),
        })
        .await
    }

    async fn found(&mut self, req: &Request) -> Result<Found, WorkerError> {
        match self.request(req).await? {
            ClientReply::Found(f) => Ok(f),
            other => Err(WorkerError::Unexpected(other)),
        }
    }
}

/// N OpenSIPS workers, each with its own persistent connection.
#[derive(Debug)]
pub struct FakeOpenSips {
    workers: Vec<Worker>,
}

impl FakeOpenSips {
    /// Connects `n` workers to the socket at `path`.
    pub async fn connect(path: impl AsRef<Path>, n: usize) -> io::Result<Self> {
        let mut workers = Vec::with_capacity(n);
        for _ in 0..n {
            workers.push(Worker::connect(path.as_ref()).await?);
        }
        Ok(FakeOpenSips { workers })
    }
    /// Worker `i` (modulo the number of workers).
    pub fn worker(&mut self, i: usize) -> &mut Worker {
        let n = self.workers.len();
        &mut self.workers[i % n]
    }
    /// The number of workers.
    pub fn len(&self) -> usize {
        self.workers.len()
    }
    /// Whether there are no workers.
    pub fn is_empty(&self) -> bool {
        self.workers.is_empty()
    }
    /// The workers, e.g. to move each into a task of its own.
    pub fn into_workers(self) -> Vec<Worker> {
        self.workers
    }
}

/// An `init` as OpenSIPS sends it for a SIPp call: `call_id`, caller
/// `from_user@example.com`, callee `sip:1000@127.0.0.1:5060`.
pub fn opensips_init(call_id: &str, from_user: &str) -> InitRequest {
    InitRequest {
        ruri: "sip:1000@127.0.0.1:5060".into(),
        diverter: None,
        source_ip: "127.0.0.1".into(),
        call_id: CallId::new(call_id),
        from: format!("\"cc test\" <sip:{from_user}@example.com>"),
        from_tag: "1469SIPpTag001".into(),
        prepaid: callcontrol_core::types::Prepaid::Unknown,
        call_limit: 0,
        call_token: None,
        sip_application: None,
    }
}

/// Which OpenSIPS the fake MI mimics: its `version` answer and the ids its
/// `dlg_end_dlg` accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MiVersion {
    /// 2.x (2.3–2.4): decimal id or Call-ID.
    V2_4,
    /// 3.0: decimal id or Call-ID.
    V3_0,
    /// 3.6: DID string or Call-ID only.
    V3_6,
}

impl MiVersion {
    /// The `Server` string of `version`.
    pub fn server(self) -> &'static str {
        match self {
            MiVersion::V2_4 => "OpenSIPS (2.4.11 (x86_64/linux))",
            MiVersion::V3_0 => "OpenSIPS (3.0.5 (x86_64/linux))",
            MiVersion::V3_6 => "OpenSIPS (3.6.8 (x86_64/linux))",
        }
    }
    /// Whether `param` names dialog `d` of call `call_id` for this version.
    pub fn accepts(self, param: &str, call_id: &CallId, d: DialogId) -> bool {
        param == call_id.as_str()
            || match self {
                MiVersion::V2_4 | MiVersion::V3_0 => param == d.as_u64().to_string(),
                MiVersion::V3_6 => param == did(d),
            }
    }
}

/// A scripted answer to the next `dlg_end_dlg`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MiAnswer {
    /// `"result": "OK"` (without ending anything).
    Ok,
    /// Error 404 "Requested Dialog not found".
    NotFound,
    /// A JSON-RPC error.
    Error(i64, String),
    /// A plain-text datagram, e.g. `500 Internal error`.
    PlainText(String),
    /// No answer at all.
    Silent,
}

/// One request the fake MI received.
#[derive(Debug, Clone, PartialEq)]
pub struct MiRequest {
    /// `method`.
    pub method: String,
    /// `params` (`Null` when absent).
    pub params: Value,
}

#[derive(Debug)]
struct MiState {
    version: MiVersion,
    dialogs: BTreeMap<CallId, DialogId>,
    script: VecDeque<MiAnswer>,
    requests: Vec<MiRequest>,
    ended: Vec<CallId>,
}

/// A scriptable OpenSIPS MI endpoint. Cheap to clone (shared state).
#[derive(Debug, Clone)]
pub struct FakeMi {
    state: Arc<Mutex<MiState>>,
}

enum Outcome {
    Reply(Vec<u8>),
    Silent,
}

impl FakeMi {
    /// A fake of the given version with no dialogs.
    pub fn new(version: MiVersion) -> Self {
        FakeMi {
            state: Arc::new(Mutex::new(MiState {
                version,
                dialogs: BTreeMap::new(),
                script: VecDeque::new(),
                requests: Vec::new(),
                ended: Vec::new(),
            })),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut MiState) -> R) -> R {
        f(&mut self.state.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Registers a live dialog (as if OpenSIPS had created it).
    pub fn add_dialog(&self, call_id: &str, dialog_id: DialogId) {
        self.with(|s| s.dialogs.insert(CallId::new(call_id), dialog_id));
    }
    /// Scripts the answer to the next `dlg_end_dlg`.
    pub fn push(&self, answer: MiAnswer) {
        self.with(|s| s.script.push_back(answer));
    }
    /// Every request received, in order.
    pub fn requests(&self) -> Vec<MiRequest> {
        self.with(|s| s.requests.clone())
    }
    /// The `params[0]` of every `dlg_end_dlg` received, in order.
    pub fn end_requests(&self) -> Vec<String> {
        self.with(|s| {
            s.requests
                .iter()
                .filter(|r| r.method == "dlg_end_dlg")
                .map(|r| match &r.params[0] {
                    Value::String(p) => p.clone(),
                    other => other.to_string(),
                })
                .collect()
        })
    }
    /// The dialogs ended (BYEs "sent"), by Call-ID, in order.
    pub fn ended(&self) -> Vec<CallId> {
        self.with(|s| s.ended.clone())
    }

    fn answer(&self, body: &[u8]) -> Outcome {
        let Ok(req) = serde_json::from_slice::<Value>(body) else {
            return Outcome::Reply(b"400 Bad request".to_vec());
        };
        let id = req.get("id").cloned().unwrap_or(Value::Null);
        let method = req
            .get("method")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let params = req.get("params").cloned().unwrap_or(Value::Null);
        let reply = |v: Value| Outcome::Reply(serde_json::to_vec(&v).unwrap_or_default());
        let ok = |result: Value| reply(json!({"jsonrpc": "2.0", "result": result, "id": id}));
        let err = |code: i64, message: &str| {
            reply(json!({"jsonrpc": "2.0", "error": {"code": code, "message": message}, "id": id}))
        };
        self.with(|s| {
            s.requests.push(MiRequest {
                method: method.clone(),
                params: params.clone(),
            });
            match method.as_str() {
                "version" => ok(json!({"Server": s.version.server()})),
                "dlg_list" => {
                    // Paged like OpenSIPS: named params `index` and `counter`.
                    let index = params.get("index").and_then(Value::as_u64).unwrap_or(0) as usize;
                    let counter = params
                        .get("counter")
                        .and_then(Value::as_u64)
                        .map_or(usize::MAX, |c| c as usize);
                    let dialogs: Vec<Value> = s
                        .dialogs
                        .iter()
                        .skip(index)
                        .take(counter)
                        .map(|(c, d)| {
                            json!({"ID": did(*d), "db_id": d.as_u64().to_string(), "state": 4,
                                   "timestart": 1_700_000_000u64, "callid": c.as_str()})
                        })
                        .collect();
                    ok(json!({"count": s.dialogs.len(), "Dialogs": dialogs}))
                }
                "dlg_end_dlg" => match s.script.pop_front() {
                    Some(MiAnswer::Ok) => ok(json!("OK")),
                    Some(MiAnswer::NotFound) => err(404, "Requested Dialog not found"),
                    Some(MiAnswer::Error(code, m)) => err(code, &m),
                    Some(MiAnswer::PlainText(t)) => Outcome::Reply(t.into_bytes()),
                    Some(MiAnswer::Silent) => Outcome::Silent,
                    None => {
                        let param = params.get(0).and_then(Value::as_str).unwrap_or("");
                        let version = s.version;
                        let found = s
                            .dialogs
                            .iter()
                            .find(|(c, d)| version.accepts(param, c, **d))
                            .map(|(c, _)| c.clone());
                        match found {
                            Some(c) => {
                                s.dialogs.remove(&c);
                                s.ended.push(c);
                                ok(json!("OK"))
                            }
                            None => err(404, "Requested Dialog not found"),
                        }
                    }
                },
                _ => err(-32601, "Method not found"),
            }
        })
    }

    /// Serves `mi_datagram` on a Unix datagram socket at `path` (in a task).
    pub fn serve_datagram(
        &self,
        path: impl AsRef<Path>,
    ) -> io::Result<tokio::task::JoinHandle<()>> {
        let _ = std::fs::remove_file(path.as_ref());
        let socket = UnixDatagram::bind(path.as_ref())?;
        let me = self.clone();
        Ok(tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            while let Ok((n, from)) = socket.recv_from(&mut buf).await {
                if let (Outcome::Reply(r), Some(to)) = (me.answer(&buf[..n]), from.as_pathname()) {
                    let _ = socket.send_to(&r, to).await;
                }
            }
        }))
    }

    /// Serves `mi_http` on `127.0.0.1` (in a task); returns the URL of `/mi`.
    pub async fn serve_http(&self) -> io::Result<(String, tokio::task::JoinHandle<()>)> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr: SocketAddr = listener.local_addr()?;
        let me = self.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let me = me.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |req: hyper::Request<hyper::body::Incoming>| {
                            let me = me.clone();
                            async move {
                                let body = req
                                    .into_body()
                                    .collect()
                                    .await
                                    .map(|b| b.to_bytes())
                                    .unwrap_or_default();
                                match me.answer(&body) {
                                    Outcome::Reply(r) => Ok::<_, hyper::Error>(
                                        hyper::Response::builder()
                                            .header("content-type", "application/json")
                                            .body(Full::new(Bytes::from(r)))
                                            .unwrap_or_default(),
                                    ),
                                    Outcome::Silent => std::future::pending().await,
                                }
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok((format!("http://{addr}/mi"), task))
    }
}

/// Reads `bytes` as everything the proxy's management interface may send
/// back (a JSON-RPC / MI reply or plain-text error, the OpenSIPS and
/// Kamailio dialog lists in it, the outcome of a dialog end, a DID, a
/// version string), for fuzz targets and property tests: whatever arrives,
/// none of them may panic.
pub fn parse_as_every_reply(bytes: &[u8]) {
    use crate::{jsonrpc, kamailio, mi};
    let (_, result) = jsonrpc::parse_response(bytes);
    if let Ok(value) = &result {
        let _ = mi::parse_dialog_list(value);
        let _ = kamailio::parse_dialogs(value);
    }
    let _ = kamailio::classify_end(result);
    let text = String::from_utf8_lossy(bytes);
    let _ = mi::parse_did(&text);
    let _ = mi::format_for_version(&text);
}
