//! The Kamailio signalling backend: ends dialogs with the `dialog` module's
//! RPC `dlg.end_dlg [h_entry, h_id]` over the `jsonrpcs` module's Unix
//! datagram socket (`dgram_socket`), or over HTTP (`xhttp`).
//!
//! Kamailio's own `call_control` module speaks the same line protocol as
//! OpenSIPS's (see [`codec`](crate::codec): `dialogid` comes as
//! `h_entry:h_id`, `init` has `sip_application` and no `prepaid`,
//! `call_limit` or `call_token`), so only the way dialogs are ended differs.
//!
//! Facts this backend is built on (Kamailio 5.6, observed):
//! - the reply datagram goes to the sender's address, so requests leave from
//!   a socket bound to a path of our own ([`jsonrpc::DatagramClient`]);
//! - success is `"result": {}`; error 404 means the dialog is already gone,
//!   which is an end all the same ([`EndOutcome::NotFound`]);
//! - the module's `stop` for the dialog reaches the daemon *before* the RPC
//!   reply (Kamailio runs the dialog-end callbacks inside the RPC), so the
//!   engine must be free to serve requests while this call waits — the
//!   driver runs it as a task of its own, and the engine answers that `stop`
//!   `Not found` and forgets the session.
//!
//! ```no_run
//! # async fn f() -> std::io::Result<()> {
//! use callcontrol_core::signalling::{DialogRef, SignallingBackend};
//! use callcontrol_core::types::{CallId, DialogId};
//! use callcontrol_opensips::kamailio::{Kamailio, KamailioConfig};
//!
//! let kamailio = Kamailio::new(KamailioConfig {
//!     socket_path: "/run/kamailio/kamailio_rpc.sock".into(),
//!     ..KamailioConfig::default()
//! })?;
//! let call = DialogRef { call_id: CallId::new("1-28964@127.0.0.1"), dialog_id: Some(DialogId::new(3908, 2580)) };
//! let outcome = kamailio.end_dialog(&call).await;
//! # Ok(()) }
//! ```

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use callcontrol_core::error::SignallingError;
use callcontrol_core::signalling::{DialogRef, EndOutcome, SignallingBackend, SignallingHealth};
use callcontrol_core::types::{CallId, DialogId};
use log::{debug, error, info, warn};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::error::RpcError;
use crate::jsonrpc::{ReplySocket, RpcClient};

/// Kamailio's default `jsonrpcs` datagram socket (`<rundir>/kamailio_rpc.sock`
/// with the Debian package's run dir).
pub const DEFAULT_SOCKET: &str = "/run/kamailio/kamailio_rpc.sock";

/// Kamailio's command name.
pub const DEFAULT_PROCESS_NAME: &str = "kamailio";

/// The `[Kamailio]` section of `config.ini`, selected by
/// `[CallControl] proxy = kamailio`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct KamailioConfig {
    /// `socket_path`: Kamailio's `jsonrpcs` datagram socket
    /// (`modparam("jsonrpcs", "dgram_socket", …)`; transport 4 or 6). The
    /// daemon's user must be allowed to write to it (`dgram_mode`/`dgram_group`).
    pub socket_path: PathBuf,
    /// `url`: use the HTTP transport instead (`xhttp` + `jsonrpcs` transport
    /// 1), e.g. `http://127.0.0.1:5060/RPC`; unset = the datagram socket.
    pub url: Option<String>,
    /// `reply_dir`: where the daemon binds its own reply socket, which
    /// Kamailio must be able to write to; unset = the system temp dir (the
    /// daemon uses its runtime dir).
    pub reply_dir: Option<PathBuf>,
    /// `timeout`: milliseconds to wait for each reply.
    #[serde(with = "millis")]
    pub timeout: Duration,
    /// `retries`: further attempts after a timeout or transport failure
    /// (not after an answer: 404 is final, and so is any other RPC error
    /// but a 5xx).
    pub retries: u32,
    /// `retry_delay`: milliseconds before the first retry; doubles with
    /// every further one.
    #[serde(with = "millis")]
    pub retry_delay: Duration,
    /// `process_name`: Kamailio's process (command) name, as in
    /// `/proc/<pid>/comm`. Only a `call_control` connection from a process
    /// of this name can be taken for the pre-fork one
    /// ([`close_pre_fork_connection`]); empty = never close any.
    pub process_name: String,
}

impl Default for KamailioConfig {
    fn default() -> Self {
        KamailioConfig {
            socket_path: PathBuf::from(DEFAULT_SOCKET),
            url: None,
            reply_dir: None,
            timeout: Duration::from_millis(1000),
            retries: 2,
            retry_delay: Duration::from_millis(200),
            process_name: DEFAULT_PROCESS_NAME.into(),
        }
    }
}

impl KamailioConfig {
    /// The delay before retry number `n` (1 = first retry), doubling, at
    /// most 10 s.
    pub fn retry_delay(&self, n: u32) -> Duration {
        let shift = n.saturating_sub(1).min(16);
        self.retry_delay
            .saturating_mul(1 << shift)
            .min(Duration::from_secs(10))
    }

    /// Checks the settings; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        if self.timeout.is_zero() {
            return Err("[Kamailio] timeout: must be at least 1 millisecond".into());
        }
        if let Some(url) = &self.url {
            if !url.starts_with("http://") {
                return Err(format!(
                    "[Kamailio] url = {url:?}: expected http://HOST:PORT/PATH"
                ));
            }
        }
        Ok(())
    }
}

/// Durations as whole milliseconds (INI values and JSON alike).
mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Ms {
            N(u64),
            S(String),
        }
        match Ms::deserialize(d)? {
            Ms::N(n) => Ok(Duration::from_millis(n)),
            Ms::S(s) => s
                .trim()
                .trim_end_matches("ms")
                .trim()
                .parse::<u64>()
                .map(Duration::from_millis)
                .map_err(|_| serde::de::Error::custom(format!("expected milliseconds, got {s:?}"))),
        }
    }
}

/// What one RPC answer means for ending a dialog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// Final: the dialog is ended (or already gone).
    Done(EndOutcome),
    /// Worth another try: timeout, transport failure, 5xx.
    Retry(SignallingError),
    /// Final failure: Kamailio refused the request itself.
    Fail(SignallingError),
}

/// The `dlg.end_dlg` params: positional integers `[h_entry, h_id]`.
pub fn end_dlg_params(id: DialogId) -> Value {
    json!([id.h_entry, id.h_id])
}

/// Classifies the answer to `dlg.end_dlg`.
pub fn classify_end(result: Result<Value, RpcError>) -> Attempt {
    match result {
        // Success is `{}`; accept any result (older versions say "OK").
        Ok(_) => Attempt::Done(EndOutcome::Ended),
        Err(RpcError::Remote { code: 404, .. }) => Attempt::Done(EndOutcome::NotFound),
        Err(
            e @ RpcError::Remote {
                code: 500..=599, ..
            },
        ) => Attempt::Retry(e.into()),
        Err(e @ RpcError::Remote { .. }) => Attempt::Fail(e.into()),
        Err(e) => Attempt::Retry(e.into()),
    }
}

/// One dialog in Kamailio's dialog table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KamailioDialog {
    /// `call-id`.
    pub call_id: CallId,
    /// `h_entry`/`h_id`.
    pub dialog_id: DialogId,
    /// `state`: 1 unconfirmed, 2 early, 3 confirmed without ACK, 4 confirmed,
    /// 5 deleted (ended dialogs linger a few seconds in this state).
    pub state: u32,
}

impl KamailioDialog {
    /// Whether the dialog has not ended yet (state below 5).
    pub fn is_live(&self) -> bool {
        self.state < 5
    }
}

/// Parses the result of `dlg.list` / `dlg.list_match` (an array of dialog
/// objects), or of `dlg.briefing` with the `c` and `s` attributes. Entries
/// without a Call-ID or ids are skipped.
pub fn parse_dialogs(result: &Value) -> Result<Vec<KamailioDialog>, SignallingError> {
    let items = match result {
        Value::Array(a) => a,
        // An empty table may come back as `{}` or null.
        Value::Null => return Ok(Vec::new()),
        Value::Object(o) if o.is_empty() => return Ok(Vec::new()),
        other => {
            return Err(SignallingError::BadReply(
                other.to_string().chars().take(200).collect(),
            ))
        }
    };
    let u32_of = |v: &Value, k: &str| {
        v.get(k)
            .and_then(Value::as_u64)
            .and_then(|n| u32::try_from(n).ok())
    };
    Ok(items
        .iter()
        .filter_map(|d| {
            let call_id = d
                .get("call-id")
                .or_else(|| d.get("callid"))
                .and_then(Value::as_str)?;
            Some(KamailioDialog {
                call_id: CallId::new(call_id),
                dialog_id: DialogId::new(u32_of(d, "h_entry")?, u32_of(d, "h_id")?),
                state: u32_of(d, "state").unwrap_or(0),
            })
        })
        .collect())
}

/// Whether a connection to the `call_control` socket was opened by
/// Kamailio's main process before it forked its workers — and is therefore
/// shared by all of them.
///
/// Kamailio's `call_control` module (5.6) connects in `child_init`, which
/// Kamailio also runs in the main process before forking (`PROC_INIT`); the
/// workers inherit that socket and, finding it open, never connect
/// themselves (*observed*: one connection for 11 processes). Several
/// processes then wait for replies on one stream and read each other's:
/// under concurrent calls some get a wrong reply (−5 at once) or none (−5
/// after `socket_timeout`), and each failure costs that process 10 s of
/// −5s. Closing this one connection as soon as it is accepted fixes it: the
/// module's first `send` in each process then fails with `EPIPE`, and it
/// reconnects at once — a connection of its own — and sends again, so no
/// request is lost.
///
/// Only a peer (by `SO_PEERCRED` pid) whose command name is `process_name`
/// (Kamailio's) is considered — any other client, such as
/// `call-control-cli`, is kept. Such a peer is taken for the main process
/// unless its parent has the same command name and at least one other child
/// of that name: see [`is_pre_fork_main`]. Reads `/proc` (world-readable
/// fields only); where that fails, answers `false` (keep the connection).
pub fn opened_before_fork(peer_pid: u32, process_name: &str) -> bool {
    opened_before_fork_in(peer_pid, process_name, read_proc_stat, || {
        std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
    })
}

/// Whether command name `comm` (at most 15 bytes, as the kernel keeps it)
/// is that of the binary `process_name` (a name or a path).
pub fn is_process_name(comm: &str, process_name: &str) -> bool {
    let name = process_name.rsplit('/').next().unwrap_or(process_name);
    if name.is_empty() || comm.is_empty() {
        return false;
    }
    // The kernel truncates the command name to 15 bytes.
    let truncated = name.as_bytes().get(..15).unwrap_or(name.as_bytes());
    comm.as_bytes() == truncated
}

/// The decision of [`opened_before_fork`], on what `/proc` tells: the
/// peer's command name, its parent's (`None`: unknown), and how many other
/// children of that parent bear the peer's name.
///
/// A peer not named `process_name` is never the pre-fork connection. One
/// that is, is the main process when its parent has another name (a shell,
/// a supervisor) or is its only child of that name (Kamailio's daemonising
/// parent); a worker is one of several siblings under the main process.
pub fn is_pre_fork_main(
    peer_comm: &str,
    parent_comm: Option<&str>,
    same_name_siblings: usize,
    process_name: &str,
) -> bool {
    if !is_process_name(peer_comm, process_name) {
        return false;
    }
    match parent_comm {
        // A parent we cannot see: keep the connection.
        None => false,
        Some(parent) if parent == peer_comm => same_name_siblings == 0,
        // Started by something else: the main process itself.
        Some(_) => true,
    }
}

/// An accept filter for the `call_control` server
/// ([`ServerConfig::close_at_accept`](crate::server::ServerConfig::close_at_accept))
/// that closes the connection Kamailio's main process opened before forking
/// (see [`opened_before_fork`]), Kamailio's command name being `kamailio`.
pub fn close_pre_fork_connection(stream: &tokio::net::UnixStream) -> bool {
    close_pre_fork_connection_of(stream, DEFAULT_PROCESS_NAME)
}

/// [`close_pre_fork_connection`] for Kamailio running under the command
/// name `process_name` ([`KamailioConfig::process_name`]).
pub fn pre_fork_filter(process_name: &str) -> crate::server::AcceptFilter {
    let name = process_name.to_string();
    std::sync::Arc::new(move |stream: &tokio::net::UnixStream| {
        close_pre_fork_connection_of(stream, &name)
    })
}

fn close_pre_fork_connection_of(stream: &tokio::net::UnixStream, process_name: &str) -> bool {
    let Some(pid) = stream.peer_cred().ok().and_then(|c| c.pid()) else {
        return false;
    };
    let Ok(pid) = u32::try_from(pid) else {
        return false;
    };
    if !opened_before_fork(pid, process_name) {
        return false;
    }
    info!(
        "Closing the call_control connection Kamailio's main process (pid {pid}) opened before forking: \
         its processes would share it; each reconnects on its own"
    );
    true
}

/// `(command name, parent pid)` from `/proc/<pid>/stat`.
fn read_proc_stat(pid: u32) -> Option<(String, u32)> {
    parse_proc_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Parses `pid (comm) state ppid …`; `comm` may hold spaces and parentheses.
fn parse_proc_stat(text: &str) -> Option<(String, u32)> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_string();
    let ppid = text
        .get(close + 1..)?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some((comm, ppid))
}

/// [`opened_before_fork`] over any process table (for tests); the process
/// list is walked only for a peer of the right name under a parent of the
/// same name.
fn opened_before_fork_in<I: Iterator<Item = u32>>(
    peer: u32,
    process_name: &str,
    stat: impl Fn(u32) -> Option<(String, u32)>,
    all: impl FnOnce() -> I,
) -> bool {
    let Some((comm, parent)) = stat(peer) else {
        return false;
    };
    if !is_process_name(&comm, process_name) {
        return false;
    }
    let parent_comm = stat(parent).map(|(c, _)| c);
    let siblings = if parent_comm.as_deref() == Some(comm.as_str()) {
        all()
            .filter(|&p| p != peer)
            .filter_map(&stat)
            .filter(|(c, pp)| *pp == parent && *c == comm)
            .count()
    } else {
        0
    };
    is_pre_fork_main(&comm, parent_comm.as_deref(), siblings, process_name)
}

/// The Kamailio signalling backend. Create it inside a tokio runtime.
pub struct Kamailio {
    rpc: RpcClient,
    config: KamailioConfig,
    health: Mutex<SignallingHealth>,
}

impl std::fmt::Debug for Kamailio {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kamailio")
            .field("address", &self.rpc.address())
            .finish()
    }
}

impl Kamailio {
    /// Binds the reply socket (datagram) or prepares the HTTP client.
    /// Kamailio need not be running yet.
    pub fn new(config: KamailioConfig) -> std::io::Result<Kamailio> {
        Self::with_reply_group(config, None)
    }

    /// [`new`](Kamailio::new), with the datagram reply socket given to
    /// `group` with mode 0660 (the control socket's `[CallControl] group`),
    /// as [`DatagramClient::bind_with`](crate::jsonrpc::DatagramClient::bind_with).
    pub fn with_reply_group(
        config: KamailioConfig,
        group: Option<&str>,
    ) -> std::io::Result<Kamailio> {
        let rpc = match &config.url {
            Some(url) => RpcClient::http(url).map_err(|e| {
                std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string())
            })?,
            None => RpcClient::datagram_with(
                &config.socket_path,
                &ReplySocket {
                    dir: config.reply_dir.clone(),
                    group: group.map(str::to_string),
                },
            )?,
        };
        let health = SignallingHealth {
            address: rpc.address(),
            reachable: false,
            version: None,
        };
        Ok(Kamailio {
            rpc,
            config,
            health: Mutex::new(health),
        })
    }

    /// The settings.
    pub fn config(&self) -> &KamailioConfig {
        &self.config
    }

    /// One RPC call, bounded by the configured timeout; records health.
    pub async fn call(&self, method: &str, params: Value) -> Result<Value, RpcError> {
        let r = self.rpc.call(method, params, self.config.timeout).await;
        // A JSON-RPC error is an answer: Kamailio is reachable.
        let reachable = !matches!(
            r,
            Err(RpcError::Timeout(_) | RpcError::Unreachable { .. } | RpcError::BadReply(_))
        );
        self.lock_health().reachable = reachable;
        r
    }

    /// Asks `core.version` (e.g. `kamailio 5.6.3 (x86_64/linux)`) and
    /// remembers it for [`health`](SignallingBackend::health).
    pub async fn version(&self) -> Result<String, SignallingError> {
        let v = self.call("core.version", Value::Null).await?;
        let text = match v {
            Value::String(s) => s.trim().to_string(),
            other => other.to_string(),
        };
        self.lock_health().version = Some(text.clone());
        Ok(text)
    }

    /// Every dialog Kamailio holds, ended ones (state 5) included.
    pub async fn dialogs(&self) -> Result<Vec<KamailioDialog>, SignallingError> {
        // `dlg.briefing` keeps each entry small, so thousands fit in one
        // datagram; `dlg.list` (older versions) otherwise.
        match self.call("dlg.briefing", json!(["cs"])).await {
            Ok(v) => parse_dialogs(&v),
            Err(RpcError::Remote { code, message }) => {
                debug!("dlg.briefing not available ({code} {message}), using dlg.list");
                parse_dialogs(&self.call("dlg.list", Value::Null).await?)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The live dialogs with this Call-ID (`dlg.list_match callid eq …`).
    pub async fn find(&self, call_id: &CallId) -> Result<Vec<KamailioDialog>, SignallingError> {
        match self
            .call("dlg.list_match", json!(["callid", "eq", call_id.as_str()]))
            .await
        {
            Ok(v) => Ok(parse_dialogs(&v)?
                .into_iter()
                .filter(KamailioDialog::is_live)
                .collect()),
            // Nothing matched.
            Err(RpcError::Remote { code: 404, .. }) => Ok(Vec::new()),
            Err(e) => Err(e.into()),
        }
    }

    /// `dlg.end_dlg` with retries; every failure is logged with the Call-ID.
    async fn end_with_retries(
        &self,
        id: DialogId,
        call_id: &CallId,
    ) -> Result<EndOutcome, SignallingError> {
        let attempts = self.config.retries.saturating_add(1);
        let mut n = 0;
        loop {
            n += 1;
            let started = std::time::Instant::now();
            let answer = self.call("dlg.end_dlg", end_dlg_params(id)).await;
            let e = match classify_end(answer) {
                Attempt::Done(outcome) => {
                    let ms = started.elapsed().as_millis();
                    match outcome {
                        EndOutcome::Ended => {
                            info!("Kamailio ended dialog {id} in {ms} ms ({call_id})")
                        }
                        EndOutcome::NotFound => {
                            info!("Kamailio no longer has dialog {id} ({call_id})")
                        }
                    }
                    return Ok(outcome);
                }
                Attempt::Fail(e) => {
                    error!("Kamailio refused dlg.end_dlg {id}: {e} ({call_id})");
                    return Err(e);
                }
                Attempt::Retry(e) => e,
            };
            if n >= attempts {
                error!("Kamailio dlg.end_dlg {id} failed after {n} attempts: {e} ({call_id})");
                return Err(e);
            }
            let delay = self.config.retry_delay(n);
            warn!(
                "Kamailio dlg.end_dlg {id} failed (attempt {n} of {attempts}), retrying in {} ms: {e} ({call_id})",
                delay.as_millis()
            );
            tokio::time::sleep(delay).await;
        }
    }

    fn lock_health(&self) -> std::sync::MutexGuard<'_, SignallingHealth> {
        self.health.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl SignallingBackend for Kamailio {
    async fn end_dialog(&self, dialog: &DialogRef) -> Result<EndOutcome, SignallingError> {
        let call_id = &dialog.call_id;
        if let Some(id) = dialog.dialog_id {
            info!(
                "Sending dlg.end_dlg {id} to Kamailio at {} ({call_id})",
                self.rpc.address()
            );
            return self.end_with_retries(id, call_id).await;
        }
        // Never answered, so no `start` gave us the ids: look the dialog up.
        let found = match self.find(call_id).await {
            Ok(found) => found,
            Err(e) => {
                error!("Cannot look up the Kamailio dialog to end it: {e} ({call_id})");
                return Err(e);
            }
        };
        if found.is_empty() {
            info!("Kamailio has no dialog to end ({call_id})");
            return Ok(EndOutcome::NotFound);
        }
        let mut outcome = EndOutcome::NotFound;
        for d in found {
            info!(
                "Sending dlg.end_dlg {} to Kamailio at {} ({call_id})",
                d.dialog_id,
                self.rpc.address()
            );
            if self.end_with_retries(d.dialog_id, call_id).await? == EndOutcome::Ended {
                outcome = EndOutcome::Ended;
            }
        }
        Ok(outcome)
    }

    async fn list_dialogs(&self) -> Result<Option<Vec<CallId>>, SignallingError> {
        let dialogs = self
            .dialogs()
            .await
            .inspect_err(|e| error!("Cannot list Kamailio's dialogs: {e}"))?;
        let mut ids: Vec<CallId> = dialogs
            .into_iter()
            .filter(KamailioDialog::is_live)
            .map(|d| d.call_id)
            .collect();
        ids.sort();
        ids.dedup();
        Ok(Some(ids))
    }

    fn health(&self) -> Option<SignallingHealth> {
        Some(self.lock_health().clone())
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;

    use tokio::net::UnixDatagram;
    use tokio::sync::mpsc;

    use super::*;

    /// Observed `dlg.list` entry from Kamailio 5.6.3 (trimmed).
    const LIST: &str = r#"[{"h_entry":566,"h_id":11802,"ref":1,"call-id":"1-12618@127.0.0.1","from_uri":"sip:caller1@example.com","to_uri":"sip:limit3@127.0.0.1:25070","state":5,"start_ts":1795772820},{"h_entry":3908,"h_id":2580,"call-id":"1-28964@127.0.0.1","state":4}]"#;

    #[test]
    fn end_dlg_params_are_positional_integers() {
        assert_eq!(
            end_dlg_params(DialogId::parse("3908:2580").unwrap()).to_string(),
            "[3908,2580]"
        );
    }

    #[test]
    fn answers_are_classified() {
        assert_eq!(
            classify_end(Ok(json!({}))),
            Attempt::Done(EndOutcome::Ended)
        );
        let nf = RpcError::Remote {
            code: 404,
            message: "Dialog not found".into(),
        };
        assert_eq!(classify_end(Err(nf)), Attempt::Done(EndOutcome::NotFound));
        let busy = RpcError::Remote {
            code: 500,
            message: "x".into(),
        };
        assert!(matches!(
            classify_end(Err(busy)),
            Attempt::Retry(SignallingError::Proxy { code: 500, .. })
        ));
        let bad = RpcError::Remote {
            code: 400,
            message: "Invalid params".into(),
        };
        assert!(matches!(classify_end(Err(bad)), Attempt::Fail(_)));
        assert!(matches!(
            classify_end(Err(RpcError::Timeout("s".into()))),
            Attempt::Retry(SignallingError::Timeout)
        ));
    }

    #[test]
    fn dialog_lists_parse() {
        let d = parse_dialogs(&serde_json::from_str(LIST).unwrap()).unwrap();
        assert_eq!(d.len(), 2);
        assert_eq!(d[1].dialog_id, DialogId::new(3908, 2580));
        assert!(!d[0].is_live() && d[1].is_live());
        // `dlg.briefing "cs"` as Kamailio 5.6.3 answers it.
        let b = json!([{"h_entry": 1140, "h_id": 10924, "call-id": "1-927@127.0.0.1", "state": 4}]);
        let d = parse_dialogs(&b).unwrap();
        assert_eq!(
            (d[0].call_id.as_str(), d[0].dialog_id, d[0].state),
            ("1-927@127.0.0.1", DialogId::new(1140, 10924), 4)
        );
        assert!(parse_dialogs(&json!([])).unwrap().is_empty());
        assert!(parse_dialogs(&json!("nonsense")).is_err());
    }

    #[test]
    fn config_reads_milliseconds_and_checks_values() {
        let c: KamailioConfig = serde_json::from_value(
            json!({"socket_path": "/tmp/k.sock", "timeout": "250", "retry_delay": 50}),
        )
        .unwrap();
        assert_eq!(c.timeout, Duration::from_millis(250));
        assert_eq!(c.retry_delay(3), Duration::from_millis(200));
        assert_eq!(c.retries, KamailioConfig::default().retries);
        assert!(c.validate().is_ok());
        let zero = KamailioConfig {
            timeout: Duration::ZERO,
            ..c.clone()
        };
        assert!(zero.validate().unwrap_err().contains("timeout"));
    }

    #[test]
    fn the_pre_fork_connection_is_told_from_workers() {
        let stat = "1234 (kamailio) S 1200 1200 4651 0 -1 4194560";
        assert_eq!(parse_proc_stat(stat), Some(("kamailio".into(), 1200)));
        assert_eq!(
            parse_proc_stat("7 (a (b) c) R 3 7"),
            Some(("a (b) c".into(), 3))
        );
        assert_eq!(parse_proc_stat("garbage"), None);

        // 1 shell, 10 main, 11..13 workers; 20 creator, 21 daemonised main;
        // 30 call-control-cli and 31 python under the shell.
        let table = |pid: u32| -> Option<(String, u32)> {
            match pid {
                1 => Some(("bash".into(), 0)),
                10 => Some(("kamailio".into(), 1)),
                11..=13 => Some(("kamailio".into(), 10)),
                20 => Some(("kamailio".into(), 1)),
                21 => Some(("kamailio".into(), 20)),
                30 => Some(("call-control-cl".into(), 1)),
                31 => Some(("python3".into(), 1)),
                _ => None,
            }
        };
        let all = || [1, 10, 11, 12, 13, 20, 21, 30, 31].into_iter();
        let k = DEFAULT_PROCESS_NAME;
        assert!(
            opened_before_fork_in(10, k, table, all),
            "main started by a shell"
        );
        assert!(!opened_before_fork_in(12, k, table, all), "a worker");
        assert!(
            opened_before_fork_in(21, k, table, all),
            "main under its daemonising parent"
        );
        assert!(!opened_before_fork_in(99, k, table, all), "unknown: keep");
        assert!(
            !opened_before_fork_in(30, k, table, all),
            "call-control-cli started by a shell: keep"
        );
        assert!(
            !opened_before_fork_in(31, k, table, all),
            "any client: keep"
        );
        assert!(!opened_before_fork_in(10, "", table, all), "disabled");
        assert!(!opened_before_fork_in(10, "opensips", table, all));
        // The real thing: this test process is not Kamailio.
        assert!(!opened_before_fork(u32::MAX, k));
        assert!(!opened_before_fork(std::process::id(), k));
    }

    #[test]
    fn only_kamailio_processes_are_judged() {
        // The pure decision: peer name, parent name, same-name siblings.
        assert!(is_pre_fork_main("kamailio", Some("bash"), 0, "kamailio"));
        assert!(is_pre_fork_main("kamailio", Some("systemd"), 0, "kamailio"));
        assert!(is_pre_fork_main(
            "kamailio",
            Some("kamailio"),
            0,
            "kamailio"
        ));
        assert!(!is_pre_fork_main(
            "kamailio",
            Some("kamailio"),
            7,
            "kamailio"
        ));
        assert!(!is_pre_fork_main("kamailio", None, 0, "kamailio"));
        // The bug: any client whose parent has another name was closed.
        assert!(!is_pre_fork_main(
            "call-control-cl",
            Some("bash"),
            0,
            "kamailio"
        ));
        assert!(!is_pre_fork_main("socat", Some("sshd"), 0, "kamailio"));
        assert!(!is_pre_fork_main("kamailio", Some("bash"), 0, ""));
        // A configured name or path; the kernel keeps 15 bytes of it.
        assert!(is_pre_fork_main(
            "kamailio-edge",
            Some("bash"),
            0,
            "/usr/sbin/kamailio-edge"
        ));
        assert!(is_process_name("kamailio-edge-1", "kamailio-edge-12"));
        assert!(!is_process_name("kamailio", "kamailio-edge"));
        assert!(!is_process_name("", "kamailio"));
    }

    /// A fake `jsonrpcs` datagram endpoint: hands each request to the test
    /// with a way to answer it (or not).
    struct FakeRpc {
        requests: mpsc::UnboundedReceiver<(Value, PathBuf)>,
        socket: Arc<UnixDatagram>,
    }

    impl FakeRpc {
        fn bind(path: &Path) -> FakeRpc {
            let socket = Arc::new(UnixDatagram::bind(path).unwrap());
            let (tx, requests) = mpsc::unbounded_channel();
            let s = socket.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                loop {
                    let Ok((n, from)) = s.recv_from(&mut buf).await else {
                        return;
                    };
                    let v: Value = serde_json::from_slice(&buf[..n]).unwrap();
                    let from = from
                        .as_pathname()
                        .expect("client must send from a bound socket")
                        .to_path_buf();
                    if tx.send((v, from)).is_err() {
                        return;
                    }
                }
            });
            FakeRpc { requests, socket }
        }
        async fn next(&mut self) -> (Value, PathBuf) {
            tokio::time::timeout(Duration::from_secs(5), self.requests.recv())
                .await
                .unwrap()
                .unwrap()
        }
        async fn answer(&self, req: &(Value, PathBuf), body: Value) {
            let mut reply = body;
            reply["jsonrpc"] = json!("2.0");
            reply["id"] = req.0["id"].clone();
            self.socket
                .send_to(&serde_json::to_vec(&reply).unwrap(), &req.1)
                .await
                .unwrap();
        }
    }

    fn setup(dir: &Path) -> (FakeRpc, Arc<Kamailio>) {
        let path = dir.join("kamailio_rpc.sock");
        let fake = FakeRpc::bind(&path);
        let k = Kamailio::new(KamailioConfig {
            socket_path: path,
            reply_dir: Some(dir.to_path_buf()),
            timeout: Duration::from_millis(200),
            retries: 2,
            retry_delay: Duration::from_millis(10),
            url: None,
            ..KamailioConfig::default()
        })
        .unwrap();
        (fake, Arc::new(k))
    }

    fn answered(call_id: &str, h_entry: u32, h_id: u32) -> DialogRef {
        DialogRef {
            call_id: CallId::new(call_id),
            dialog_id: Some(DialogId::new(h_entry, h_id)),
        }
    }

    #[tokio::test]
    async fn ends_a_dialog_and_treats_404_as_gone() {
        let dir = tempfile::tempdir().unwrap();
        let (mut fake, k) = setup(dir.path());
        let k2 = k.clone();
        let call = tokio::spawn(async move { k2.end_dialog(&answered("c1", 3908, 2580)).await });
        let req = fake.next().await;
        assert_eq!(req.0["method"], "dlg.end_dlg");
        assert_eq!(req.0["params"], json!([3908, 2580]));
        assert!(req.0["id"].is_u64());
        fake.answer(&req, json!({"result": {}})).await;
        assert_eq!(call.await.unwrap(), Ok(EndOutcome::Ended));

        let k2 = k.clone();
        let call = tokio::spawn(async move { k2.end_dialog(&answered("c2", 1, 1)).await });
        let req = fake.next().await;
        fake.answer(
            &req,
            json!({"error": {"code": 404, "message": "Dialog not found"}}),
        )
        .await;
        assert_eq!(call.await.unwrap(), Ok(EndOutcome::NotFound));
        // 404 is final: no retry was sent.
        assert!(fake.requests.try_recv().is_err());
        assert!(k.health().unwrap().reachable);
    }

    #[tokio::test]
    async fn retries_after_a_timeout_with_a_new_id() {
        let dir = tempfile::tempdir().unwrap();
        let (mut fake, k) = setup(dir.path());
        let k2 = k.clone();
        let call = tokio::spawn(async move { k2.end_dialog(&answered("c3", 7, 9)).await });
        let first = fake.next().await; // never answered
        let second = fake.next().await;
        assert_ne!(first.0["id"], second.0["id"]);
        assert_eq!(second.0["params"], json!([7, 9]));
        fake.answer(&second, json!({"result": {}})).await;
        assert_eq!(call.await.unwrap(), Ok(EndOutcome::Ended));
    }

    #[tokio::test]
    async fn gives_up_after_the_retries() {
        let dir = tempfile::tempdir().unwrap();
        let (mut fake, k) = setup(dir.path());
        let r = k.end_dialog(&answered("c4", 7, 9)).await;
        assert_eq!(r, Err(SignallingError::Timeout));
        for _ in 0..3 {
            fake.next().await;
        }
        assert!(fake.requests.try_recv().is_err(), "1 attempt + 2 retries");
        assert!(!k.health().unwrap().reachable);

        // A refusal other than 404/5xx is final at once.
        let k2 = k.clone();
        let call = tokio::spawn(async move { k2.end_dialog(&answered("c5", 7, 9)).await });
        let req = fake.next().await;
        fake.answer(
            &req,
            json!({"error": {"code": 400, "message": "Invalid params"}}),
        )
        .await;
        assert!(matches!(
            call.await.unwrap(),
            Err(SignallingError::Proxy { code: 400, .. })
        ));
    }

    #[tokio::test]
    async fn missing_socket_is_unreachable() {
        let dir = tempfile::tempdir().unwrap();
        let k = Kamailio::new(KamailioConfig {
            socket_path: dir.path().join("absent.sock"),
            reply_dir: Some(dir.path().to_path_buf()),
            retries: 1,
            retry_delay: Duration::from_millis(1),
            ..KamailioConfig::default()
        })
        .unwrap();
        assert!(matches!(
            k.end_dialog(&answered("c6", 1, 2)).await,
            Err(SignallingError::Unreachable(_))
        ));
    }

    #[tokio::test]
    async fn an_unanswered_call_is_found_by_call_id() {
        let dir = tempfile::tempdir().unwrap();
        let (mut fake, k) = setup(dir.path());
        let k2 = k.clone();
        let unanswered = DialogRef {
            call_id: CallId::new("1-28964@127.0.0.1"),
            dialog_id: None,
        };
        let call = tokio::spawn(async move { k2.end_dialog(&unanswered).await });
        let req = fake.next().await;
        assert_eq!(req.0["method"], "dlg.list_match");
        assert_eq!(
            req.0["params"],
            json!(["callid", "eq", "1-28964@127.0.0.1"])
        );
        fake.answer(
            &req,
            json!({"result": serde_json::from_str::<Value>(LIST).unwrap()}),
        )
        .await;
        // Only the live dialog (state 4) is ended.
        let req = fake.next().await;
        assert_eq!(req.0["params"], json!([3908, 2580]));
        fake.answer(&req, json!({"result": {}})).await;
        assert_eq!(call.await.unwrap(), Ok(EndOutcome::Ended));

        let k2 = k.clone();
        let gone = DialogRef {
            call_id: CallId::new("x"),
            dialog_id: None,
        };
        let call = tokio::spawn(async move { k2.end_dialog(&gone).await });
        let req = fake.next().await;
        fake.answer(&req, json!({"result": []})).await;
        assert_eq!(call.await.unwrap(), Ok(EndOutcome::NotFound));
    }

    #[tokio::test]
    async fn lists_live_dialogs_and_reports_the_version() {
        let dir = tempfile::tempdir().unwrap();
        let (mut fake, k) = setup(dir.path());
        let k2 = k.clone();
        let call = tokio::spawn(async move { k2.list_dialogs().await });
        let req = fake.next().await;
        assert_eq!(req.0["method"], "dlg.briefing");
        fake.answer(
            &req,
            json!({"error": {"code": -32601, "message": "Method Not Found"}}),
        )
        .await;
        let req = fake.next().await;
        assert_eq!(req.0["method"], "dlg.list");
        fake.answer(
            &req,
            json!({"result": serde_json::from_str::<Value>(LIST).unwrap()}),
        )
        .await;
        assert_eq!(
            call.await.unwrap(),
            Ok(Some(vec![CallId::new("1-28964@127.0.0.1")]))
        );

        let k2 = k.clone();
        let call = tokio::spawn(async move { k2.version().await });
        let req = fake.next().await;
        assert_eq!(req.0["method"], "core.version");
        assert!(req.0.get("params").is_none());
        fake.answer(&req, json!({"result": "kamailio 5.6.3 (x86_64/linux) "}))
            .await;
        assert_eq!(
            call.await.unwrap().unwrap(),
            "kamailio 5.6.3 (x86_64/linux)"
        );
        let h = k.health().unwrap();
        assert_eq!(h.version.as_deref(), Some("kamailio 5.6.3 (x86_64/linux)"));
        assert!(h.reachable);
        assert!(h.address.ends_with("kamailio_rpc.sock"));
    }

    /// The whole expiry flow against the engine: Kamailio's module sends
    /// `stop` for the dialog while the daemon's `dlg.end_dlg` is still
    /// waiting for its reply. The engine must answer that `stop` (`Not
    /// found`: it is ending the call itself), and forget the session.
    #[tokio::test]
    async fn stop_before_the_rpc_reply() {
        use callcontrol_core::prelude::*;

        let dir = tempfile::tempdir().unwrap();
        let (mut fake, k) = setup(dir.path());
        let running = driver::spawn(
            Parts {
                config: EngineConfig {
                    limit: Some(600),
                    ..Default::default()
                },
                rating: Arc::new(NoRating),
                signalling: k.clone(),
                store: Box::new(MemoryStore::new()),
                clock: Arc::new(TokioClock::new()),
            },
            CancellationToken::new(),
        )
        .unwrap();
        let h = running.handle.clone();
        let mut init = InitRequest::new(
            "1-28964@127.0.0.1",
            "\"cc test\" <sip:caller1@example.com>",
            "sip:limit3@x",
        );
        init.sip_application = Some("audio".into());
        assert_eq!(h.init(init).await.unwrap(), InitReply::Limited);
        let start = StartRequest {
            call_id: "1-28964@127.0.0.1".into(),
            dialog_id: Some(DialogId::new(3908, 2580)),
        };
        assert_eq!(h.start(start).await.unwrap(), Found::Ok);

        // `terminate` ends the call now, the same way the timer does.
        assert_eq!(h.terminate("1-28964@127.0.0.1").await.unwrap(), Found::Ok);
        let req = fake.next().await;
        assert_eq!(req.0["params"], json!([3908, 2580]));
        // Kamailio sends the BYEs, the module sends `stop`, and only then
        // does the RPC answer.
        assert_eq!(h.stop("1-28964@127.0.0.1").await.unwrap(), Found::NotFound);
        assert!(h.list(None).await.unwrap().is_empty());
        fake.answer(&req, json!({"result": {}})).await;
        // The late RPC reply changes nothing and nothing is retried.
        let status = h.status().await.unwrap();
        assert_eq!(status.stats.end_failures, 0);
        assert!(h.list(None).await.unwrap().is_empty());
        assert!(
            tokio::time::timeout(Duration::from_millis(300), fake.requests.recv())
                .await
                .is_err()
        );
    }
}
