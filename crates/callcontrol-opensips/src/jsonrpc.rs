//! A generic JSON-RPC 2.0 client for a proxy's management interface, over a
//! Unix datagram socket or HTTP. It knows nothing of OpenSIPS or Kamailio:
//! [`mi`](crate::mi) and the Kamailio backend build their methods on it.
//!
//! **Datagram** (OpenSIPS `mi_datagram`, Kamailio `jsonrpcs` `dgram_socket`):
//! one request per datagram, sent from a socket bound to a path of our own
//! (the proxy answers to the sender's address, and sends nothing back to an
//! unbound socket), made writable for the proxy's group (mode 0660 and the
//! group of [`ReplySocket::group`], as the control socket; 0666 when that
//! group does not exist). Reply sockets a previous run left behind in the
//! same directory are removed when a new one is bound. A reply sent from a
//! named socket other than the proxy's is dropped (the proxies answer from
//! an unnamed socket, so this does not authenticate them: the directory and
//! the socket's mode do). One reader task
//! takes every reply and hands it to the waiting request by its `id`, so many
//! requests can be in flight. A plain-text reply (`<code> <message>`, which
//! OpenSIPS sends for internal errors) carries no id: it goes to the oldest
//! request waiting, since the proxy answers a socket's requests in order.
//!
//! **HTTP** (OpenSIPS `mi_http`, Kamailio `xhttp`): `POST` of the JSON-RPC
//! body, one connection per request (management traffic is rare). The
//! HTTP status is not trusted on its own: Kamailio mirrors the RPC code in
//! it, so the JSON body decides whenever there is one.
//!
//! ```no_run
//! # async fn f() -> Result<(), callcontrol_opensips::RpcError> {
//! use std::time::Duration;
//! use callcontrol_opensips::jsonrpc::RpcClient;
//! let rpc = RpcClient::datagram("/run/opensips/socket", None).map_err(|e| {
//!     callcontrol_opensips::RpcError::Unreachable { address: "".into(), reason: e.to_string() }
//! })?;
//! let v = rpc.call("version", serde_json::Value::Null, Duration::from_secs(1)).await?;
//! # Ok(()) }
//! ```

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use log::{debug, warn};
use serde_json::{json, Value};
use tokio::net::{TcpStream, UnixDatagram};
use tokio::sync::oneshot;

use crate::error::RpcError;

/// Largest datagram accepted (OpenSIPS's `mi_datagram` limit is 65457).
pub const MAX_DATAGRAM: usize = 65536;

type Waiter = oneshot::Sender<Result<Value, RpcError>>;

/// Ids of answered requests `Pending::order` may keep besides twice those
/// still waiting.
const STALE_KEPT: usize = 64;

#[derive(Default)]
struct Pending {
    waiters: HashMap<u64, Waiter>,
    /// Ids in the order sent, for plain-text replies that carry none.
    order: VecDeque<u64>,
}

impl Pending {
    fn take(&mut self, id: u64) -> Option<Waiter> {
        let w = self.waiters.remove(&id);
        // The id stays in `order` (`take_oldest` skips ids no longer
        // waiting) until those outnumber the ids still waiting: taking it
        // out now would scan every request in flight at each reply
        // (quadratic in the requests in flight).
        if self.order.len() > 2 * self.waiters.len() + STALE_KEPT {
            let waiters = &self.waiters;
            self.order.retain(|i| waiters.contains_key(i));
        }
        w
    }
    fn take_oldest(&mut self) -> Option<(u64, Waiter)> {
        while let Some(id) = self.order.pop_front() {
            if let Some(w) = self.waiters.remove(&id) {
                return Some((id, w));
            }
        }
        None
    }
}

static SOCKET_SEQ: AtomicU64 = AtomicU64::new(0);

/// The prefix of every reply socket's name: `callcontrol-rpc-<pid>-<n>.sock`.
const REPLY_PREFIX: &str = "callcontrol-rpc-";

/// Where and how the datagram reply socket is made.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplySocket {
    /// The directory (default: the system temp dir; the daemon passes its
    /// runtime dir). The proxy must be able to reach it.
    pub dir: Option<PathBuf>,
    /// The group given the socket with mode 0660 (the control socket's
    /// `[CallControl] group`); mode 0666 when unset or unknown.
    pub group: Option<String>,
}

/// The pid in a reply socket's file name, if `name` is one.
fn reply_socket_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(REPLY_PREFIX)?.strip_suffix(".sock")?;
    let (pid, seq) = rest.split_once('-')?;
    seq.parse::<u64>().ok()?;
    pid.parse().ok()
}

/// Removes the reply sockets in `dir` left by runs that are gone: those of
/// another pid that nobody is bound to any more.
fn remove_stale_reply_sockets(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let me = std::process::id();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(reply_socket_pid) else {
            continue;
        };
        let path = entry.path();
        let is_socket = entry.file_type().is_ok_and(|t| {
            use std::os::unix::fs::FileTypeExt;
            t.is_socket()
        });
        if pid == me || !is_socket {
            continue;
        }
        // Bound by a live process (another daemon sharing the dir): keep.
        let live = std::os::unix::net::UnixDatagram::unbound()
            .and_then(|s| s.connect(&path))
            .is_ok();
        if !live {
            debug!("Removing stale reply socket {}", path.display());
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// JSON-RPC over a Unix datagram socket. Dropping it stops its reader task
/// and removes its reply socket.
pub struct DatagramClient {
    socket: Arc<UnixDatagram>,
    target: PathBuf,
    reply_path: PathBuf,
    pending: Arc<Mutex<Pending>>,
    next_id: AtomicU64,
    reader: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for DatagramClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatagramClient")
            .field("target", &self.target)
            .field("reply_path", &self.reply_path)
            .finish()
    }
}

impl DatagramClient {
    /// Binds a reply socket in `reply_dir` (default: the system temp dir;
    /// use a runtime dir the proxy can reach) with mode 0666, and starts the
    /// reader task. See [`bind_with`](Self::bind_with).
    pub fn bind(target: impl Into<PathBuf>, reply_dir: Option<&Path>) -> std::io::Result<Self> {
        Self::bind_with(
            target,
            &ReplySocket {
                dir: reply_dir.map(Path::to_path_buf),
                group: None,
            },
        )
    }

    /// Binds a reply socket as `reply` says, after removing the stale ones
    /// of earlier runs in that directory, and starts the reader task. Must
    /// be called inside a tokio runtime. The target need not exist yet.
    pub fn bind_with(target: impl Into<PathBuf>, reply: &ReplySocket) -> std::io::Result<Self> {
        let dir = reply.dir.clone().unwrap_or_else(std::env::temp_dir);
        remove_stale_reply_sockets(&dir);
        let reply_path = dir.join(format!(
            "{REPLY_PREFIX}{}-{}.sock",
            std::process::id(),
            SOCKET_SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_file(&reply_path);
        let socket = UnixDatagram::bind(&reply_path)?;
        // The proxy usually runs as another user: let its group answer.
        crate::server::restrict_to_group(&reply_path, reply.group.as_deref());
        let target = target.into();
        let socket = Arc::new(socket);
        let pending = Arc::new(Mutex::new(Pending::default()));
        let reader = tokio::spawn(read_replies(
            socket.clone(),
            pending.clone(),
            target.clone(),
        ));
        Ok(DatagramClient {
            socket,
            target,
            reply_path,
            pending,
            next_id: AtomicU64::new(1),
            reader,
        })
    }

    /// The proxy's socket.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Our bound reply socket.
    pub fn reply_path(&self) -> &Path {
        &self.reply_path
    }

    /// Calls `method` with `params` (`Value::Null`: none) and waits up to
    /// `timeout` for the reply.
    pub async fn call(
        &self,
        method: &str,
        params: Value,
        timeout: Duration,
    ) -> Result<Value, RpcError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let body = request_body(method, params, id);
        let (tx, rx) = oneshot::channel();
        {
            let mut p = lock(&self.pending);
            p.waiters.insert(id, tx);
            p.order.push_back(id);
        }
        if let Err(e) = self.socket.send_to(&body, &self.target).await {
            lock(&self.pending).take(id);
            return Err(RpcError::Unreachable {
                address: self.target.display().to_string(),
                reason: e.to_string(),
            });
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(RpcError::BadReply("reply reader stopped".into())),
            Err(_) => {
                lock(&self.pending).take(id);
                Err(RpcError::Timeout(self.target.display().to_string()))
            }
        }
    }
}

impl Drop for DatagramClient {
    fn drop(&mut self) {
        self.reader.abort();
        let _ = std::fs::remove_file(&self.reply_path);
    }
}

fn lock(p: &Mutex<Pending>) -> std::sync::MutexGuard<'_, Pending> {
    p.lock().unwrap_or_else(|e| e.into_inner())
}

/// Whether a datagram from `sender` may be a reply of the proxy at
/// `target`: yes from an unnamed socket (the proxies answer from one, so
/// the sender is unknown), no from a named socket other than `target`.
fn from_proxy(sender: Option<&Path>, target: &Path) -> bool {
    match sender {
        None => true,
        Some(p) => {
            p == target
                || matches!(
                    (std::fs::canonicalize(p), std::fs::canonicalize(target)),
                    (Ok(a), Ok(b)) if a == b
                )
        }
    }
}

async fn read_replies(socket: Arc<UnixDatagram>, pending: Arc<Mutex<Pending>>, target: PathBuf) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let n = match socket.recv_from(&mut buf).await {
            Ok((n, from)) => {
                if !from_proxy(from.as_pathname(), &target) {
                    warn!(
                        "Dropping a datagram on the JSON-RPC reply socket from {} (not the proxy's {})",
                        from.as_pathname().map(Path::display).map_or_else(String::new, |d| d.to_string()),
                        target.display()
                    );
                    continue;
                }
                n
            }
            Err(e) => {
                warn!("JSON-RPC reply socket error: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (id, result) = parse_response(&buf[..n]);
        let waiter = {
            let mut p = lock(&pending);
            match id {
                Some(id) => p.take(id),
                None => p.take_oldest().map(|(_, w)| w),
            }
        };
        match waiter {
            Some(w) => {
                let _ = w.send(result);
            }
            None => debug!(
                "JSON-RPC reply for no waiting request: {}",
                String::from_utf8_lossy(&buf[..n])
            ),
        }
    }
}

fn request_body(method: &str, params: Value, id: u64) -> Vec<u8> {
    let v = if params.is_null() {
        json!({"jsonrpc": "2.0", "method": method, "id": id})
    } else {
        json!({"jsonrpc": "2.0", "method": method, "params": params, "id": id})
    };
    serde_json::to_vec(&v).unwrap_or_default()
}

/// Parses one reply: its id (when it has one) and its outcome. A JSON-RPC
/// `error` becomes [`RpcError::Remote`]; a plain-text `<code> <message>`
/// too (with no id).
pub fn parse_response(bytes: &[u8]) -> (Option<u64>, Result<Value, RpcError>) {
    let text = String::from_utf8_lossy(bytes);
    let trimmed = text.trim();
    let Ok(v) = serde_json::from_str::<Value>(trimmed) else {
        return (None, Err(parse_plain_error(trimmed)));
    };
    let id = match v.get("id") {
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) => s.parse().ok(),
        _ => None,
    };
    if let Some(e) = v.get("error") {
        let code = e.get("code").and_then(Value::as_i64).unwrap_or(0);
        let message = e
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        return (id, Err(RpcError::Remote { code, message }));
    }
    match v.get("result") {
        Some(r) => (id, Ok(r.clone())),
        None => (id, Err(RpcError::BadReply(truncate(trimmed)))),
    }
}

fn parse_plain_error(text: &str) -> RpcError {
    let (code, message) = text.split_once(char::is_whitespace).unwrap_or((text, ""));
    match code.parse::<i64>() {
        Ok(code) => RpcError::Remote {
            code,
            message: message.trim().to_string(),
        },
        Err(_) => RpcError::BadReply(truncate(text)),
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(200).collect()
}

/// JSON-RPC over HTTP `POST`.
#[derive(Debug, Clone)]
pub struct HttpClient {
    uri: hyper::Uri,
    next_id: Arc<AtomicU64>,
}

impl HttpClient {
    /// A client for `url` (`http://host:port/path`; no TLS).
    pub fn new(url: &str) -> Result<Self, RpcError> {
        let uri: hyper::Uri = url.parse().map_err(|e| RpcError::Unreachable {
            address: url.to_string(),
            reason: format!("bad URL: {e}"),
        })?;
        if uri.scheme_str() != Some("http") || uri.host().is_none() {
            return Err(RpcError::Unreachable {
                address: url.to_string(),
                reason: "only http://host:port/path URLs are supported".into(),
            });
        }
        Ok(HttpClient {
            uri,
            next_id: Arc::new(AtomicU64::new(1)),
        })
    }

    /// The URL.
    pub fn url(&self) -> String {
        self.uri.to_string()
    }

    /// Calls `method`; the whole exchange is bounded by `timeout`.
    pub async fn call(
        &self,
        method: &str,
        params: Value,
        timeout: Duration,
    ) -> Result<Value, RpcError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let body = request_body(method, params, id);
        match tokio::time::timeout(timeout, self.exchange(body)).await {
            Ok(r) => r,
            Err(_) => Err(RpcError::Timeout(self.url())),
        }
    }

    async fn exchange(&self, body: Vec<u8>) -> Result<Value, RpcError> {
        let unreachable = |e: &dyn std::fmt::Display| RpcError::Unreachable {
            address: self.url(),
            reason: e.to_string(),
        };
        let host = self.uri.host().unwrap_or("localhost");
        let port = self.uri.port_u16().unwrap_or(80);
        let stream = TcpStream::connect((host, port))
            .await
            .map_err(|e| unreachable(&e))?;
        let _ = stream.set_nodelay(true);
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| unreachable(&e))?;
        let conn = tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!("MI HTTP connection: {e}");
            }
        });
        let path = self.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let authority = self.uri.authority().map(|a| a.as_str()).unwrap_or(host);
        let req = hyper::Request::post(path)
            .header(hyper::header::HOST, authority)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| RpcError::BadReply(e.to_string()))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| unreachable(&e))?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| unreachable(&e))?
            .to_bytes();
        conn.abort();
        let (_, result) = parse_response(&bytes);
        match result {
            // A JSON body decides; otherwise a failed status is the error.
            Err(RpcError::BadReply(_)) if !status.is_success() => Err(RpcError::Remote {
                code: i64::from(status.as_u16()),
                message: status
                    .canonical_reason()
                    .unwrap_or("HTTP error")
                    .to_string(),
            }),
            r => r,
        }
    }
}

/// Either transport.
#[derive(Debug)]
pub enum RpcClient {
    /// Unix datagram socket.
    Datagram(DatagramClient),
    /// HTTP.
    Http(HttpClient),
}

impl RpcClient {
    /// A datagram client; see [`DatagramClient::bind`].
    pub fn datagram(target: impl Into<PathBuf>, reply_dir: Option<&Path>) -> std::io::Result<Self> {
        DatagramClient::bind(target, reply_dir).map(RpcClient::Datagram)
    }
    /// A datagram client; see [`DatagramClient::bind_with`].
    pub fn datagram_with(target: impl Into<PathBuf>, reply: &ReplySocket) -> std::io::Result<Self> {
        DatagramClient::bind_with(target, reply).map(RpcClient::Datagram)
    }
    /// An HTTP client; see [`HttpClient::new`].
    pub fn http(url: &str) -> Result<Self, RpcError> {
        HttpClient::new(url).map(RpcClient::Http)
    }
    /// Where requests go, for logs.
    pub fn address(&self) -> String {
        match self {
            RpcClient::Datagram(d) => d.target().display().to_string(),
            RpcClient::Http(h) => h.url(),
        }
    }
    /// Calls `method` with `params` (`Value::Null`: none).
    pub async fn call(
        &self,
        method: &str,
        params: Value,
        timeout: Duration,
    ) -> Result<Value, RpcError> {
        match self {
            RpcClient::Datagram(d) => d.call(method, params, timeout).await,
            RpcClient::Http(h) => h.call(method, params, timeout).await,
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn replies_by_id_keep_the_order_of_those_still_waiting_and_bounded() {
        let mut p = super::Pending::default();
        let mut replies = Vec::new();
        let n = 10_000u64;
        for id in 0..n {
            let (tx, rx) = tokio::sync::oneshot::channel();
            p.waiters.insert(id, tx);
            p.order.push_back(id);
            replies.push(rx);
        }
        // Answered by id, out of order, all but every hundredth.
        for id in (0..n).rev().filter(|id| id % 100 != 7) {
            assert!(p.take(id).is_some(), "{id}");
            assert!(p.take(id).is_none(), "{id} answered twice");
            assert!(p.order.len() <= 2 * p.waiters.len() + super::STALE_KEPT);
        }
        // Replies without an id go to the oldest still waiting, in order.
        for want in (0..n).filter(|id| id % 100 == 7) {
            let (id, _) = p.take_oldest().expect("a request still waiting");
            assert_eq!(id, want);
        }
        assert!(p.take_oldest().is_none());
        assert!(p.waiters.is_empty() && p.order.is_empty());
    }

    use super::*;

    #[test]
    fn parses_results_errors_and_plain_text() {
        let (id, r) = parse_response(br#"{"jsonrpc":"2.0","result":"OK","id":"27"}"#);
        assert_eq!((id, r), (Some(27), Ok(json!("OK"))));
        let (id, r) = parse_response(
            br#"{"jsonrpc":"2.0","error":{"code":404,"message":"Requested Dialog not found"},"id":7}"#,
        );
        assert_eq!(id, Some(7));
        assert_eq!(
            r,
            Err(RpcError::Remote {
                code: 404,
                message: "Requested Dialog not found".into()
            })
        );
        let (id, r) = parse_response(b"500 Internal server error\n");
        assert_eq!(id, None);
        assert_eq!(
            r,
            Err(RpcError::Remote {
                code: 500,
                message: "Internal server error".into()
            })
        );
        assert!(matches!(
            parse_response(b"garbage").1,
            Err(RpcError::BadReply(_))
        ));
    }

    #[tokio::test]
    async fn datagram_correlates_out_of_order_replies_and_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let server_path = dir.path().join("mi.sock");
        let server = UnixDatagram::bind(&server_path).unwrap();
        let client = Arc::new(DatagramClient::bind(&server_path, Some(dir.path())).unwrap());
        let c1 = client.clone();
        let a =
            tokio::spawn(async move { c1.call("a", Value::Null, Duration::from_secs(5)).await });
        let c2 = client.clone();
        let b = tokio::spawn(async move { c2.call("b", json!([1]), Duration::from_secs(5)).await });
        let mut buf = [0u8; 1024];
        let mut got = Vec::new();
        for _ in 0..2 {
            let (n, from) = server.recv_from(&mut buf).await.unwrap();
            let v: Value = serde_json::from_slice(&buf[..n]).unwrap();
            got.push((v, from.as_pathname().unwrap().to_path_buf()));
        }
        // Answer in reverse order, each with its method name.
        for (v, from) in got.iter().rev() {
            let reply = json!({"jsonrpc": "2.0", "result": v["method"], "id": v["id"]});
            server
                .send_to(&serde_json::to_vec(&reply).unwrap(), from)
                .await
                .unwrap();
        }
        assert_eq!(a.await.unwrap(), Ok(json!("a")));
        assert_eq!(b.await.unwrap(), Ok(json!("b")));
        let t = client
            .call("silent", Value::Null, Duration::from_millis(50))
            .await;
        assert!(matches!(t, Err(RpcError::Timeout(_))));
        let missing = DatagramClient::bind(dir.path().join("none"), Some(dir.path())).unwrap();
        let r = missing
            .call("x", Value::Null, Duration::from_millis(50))
            .await;
        assert!(matches!(r, Err(RpcError::Unreachable { .. })), "{r:?}");
        let reply_path = client.reply_path().to_path_buf();
        drop(missing);
        drop(Arc::try_unwrap(client).unwrap());
        assert!(!reply_path.exists());
    }

    #[test]
    fn reply_socket_names_and_senders() {
        assert_eq!(reply_socket_pid("callcontrol-rpc-42-0.sock"), Some(42));
        assert_eq!(reply_socket_pid("callcontrol-rpc-42.sock"), None);
        assert_eq!(reply_socket_pid("callcontrol-rpc-x-1.sock"), None);
        assert_eq!(reply_socket_pid("socket"), None);
        let proxy = Path::new("/run/kamailio/kamailio_rpc.sock");
        assert!(from_proxy(None, proxy), "unnamed sender: unknown, kept");
        assert!(from_proxy(Some(proxy), proxy));
        assert!(!from_proxy(Some(Path::new("/tmp/evil.sock")), proxy));
    }

    #[tokio::test]
    async fn reply_socket_is_private_and_stale_ones_go() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        // Left by a run that is gone: a socket nobody is bound to.
        let stale = dir.path().join("callcontrol-rpc-999999999-3.sock");
        drop(std::os::unix::net::UnixDatagram::bind(&stale).unwrap());
        // Bound by a live process: kept.
        let live = dir.path().join("callcontrol-rpc-999999998-0.sock");
        let _live = std::os::unix::net::UnixDatagram::bind(&live).unwrap();
        let other = dir.path().join("unrelated.sock");
        drop(std::os::unix::net::UnixDatagram::bind(&other).unwrap());

        // A group that exists (ours): mode 0660.
        let gid = nix::unistd::getegid();
        let group = nix::unistd::Group::from_gid(gid).unwrap().map(|g| g.name);
        let reply = ReplySocket {
            dir: Some(dir.path().to_path_buf()),
            group: group.clone(),
        };
        let client = DatagramClient::bind_with(dir.path().join("mi.sock"), &reply).unwrap();
        assert!(!stale.exists());
        assert!(live.exists() && other.exists());
        let mode = std::fs::metadata(client.reply_path())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, if group.is_some() { 0o660 } else { 0o666 });
        // No such group: 0666, as the control socket.
        let open = DatagramClient::bind_with(
            dir.path().join("mi.sock"),
            &ReplySocket {
                dir: Some(dir.path().to_path_buf()),
                group: Some("no-such-group-callcontrol".into()),
            },
        )
        .unwrap();
        let mode = std::fs::metadata(open.reply_path())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o666);
    }

    #[tokio::test]
    async fn a_forged_reply_from_another_socket_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let server_path = dir.path().join("mi.sock");
        let server = UnixDatagram::bind(&server_path).unwrap();
        let forger = UnixDatagram::bind(dir.path().join("forger.sock")).unwrap();
        let client = Arc::new(DatagramClient::bind(&server_path, Some(dir.path())).unwrap());
        let c = client.clone();
        let call = tokio::spawn(async move {
            c.call("dlg_end_dlg", json!([1]), Duration::from_secs(5))
                .await
        });
        let mut buf = [0u8; 1024];
        let (n, from) = server.recv_from(&mut buf).await.unwrap();
        let v: Value = serde_json::from_slice(&buf[..n]).unwrap();
        let to = from.as_pathname().unwrap().to_path_buf();
        let forged = json!({"jsonrpc": "2.0", "result": "OK", "id": v["id"]});
        forger
            .send_to(&serde_json::to_vec(&forged).unwrap(), &to)
            .await
            .unwrap();
        let real =
            json!({"jsonrpc": "2.0", "error": {"code": 404, "message": "gone"}, "id": v["id"]});
        server
            .send_to(&serde_json::to_vec(&real).unwrap(), &to)
            .await
            .unwrap();
        assert_eq!(
            call.await.unwrap(),
            Err(RpcError::Remote {
                code: 404,
                message: "gone".into()
            })
        );
    }
}
