//! The thin tokio driver that owns an [`Engine`] and performs its effects.
//!
//! One task owns the engine. Requests arrive on a channel with a oneshot for
//! the reply; backend calls run as spawned tasks whose answers come back as
//! events, so a slow rating engine delays only the sessions waiting for it.
//! After every batch of inputs the driver persists the engine's changes
//! (group commit) and only then sends the replies that acknowledge them.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use log::{error, info};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::config::EngineConfig;
use crate::engine::{Effect, Engine, EngineStats, Token};
use crate::error::{DriverError, RatingError, SignallingError, StoreError};
use crate::rating::{Authorisation, DebitOutcome, RatingBackend};
use crate::request::{
    Found, InitReply, InitRequest, ListQuery, Reply, Request, SessionPage, StartRequest,
};
use crate::session::SessionInfo;
use crate::signalling::{EndOutcome, LiveDialog, SignallingBackend};
use crate::store::SessionStore;
use crate::types::{CallId, Timestamp};

/// A summary of the engine, for health and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// Counters.
    pub stats: EngineStats,
    /// Sessions by `(state, prepaid)`: key is e.g. `in-progress/prepaid`.
    pub sessions: BTreeMap<String, u64>,
    /// Debits owed and not yet answered.
    pub debits_owed: u64,
    /// Requests whose reply is not sent yet (mostly `init`s waiting for the
    /// rating engine).
    pub requests_waiting: u64,
}

enum Command {
    Request(Request, oneshot::Sender<Reply>),
    Status(oneshot::Sender<Status>),
    Reload(EngineConfig),
}

enum Event {
    Authorised(u64, Result<Authorisation, RatingError>),
    Debited(u64, Result<DebitOutcome, RatingError>),
    Ended(CallId, Result<EndOutcome, SignallingError>),
}

/// A cheap, cloneable handle to a running engine.
#[derive(Clone, Debug)]
pub struct Handle {
    tx: mpsc::Sender<Command>,
}

impl Handle {
    /// Sends any request and waits for its reply.
    pub async fn request(&self, request: Request) -> Result<Reply, DriverError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Command::Request(request, tx))
            .await
            .map_err(|_| DriverError::Stopped)?;
        rx.await.map_err(|_| DriverError::Stopped)
    }
    /// `init`.
    pub async fn init(&self, req: InitRequest) -> Result<InitReply, DriverError> {
        match self.request(Request::Init(req)).await? {
            Reply::Init(r) => Ok(r),
            _ => Ok(InitReply::Error),
        }
    }
    /// `start`.
    pub async fn start(&self, req: StartRequest) -> Result<Found, DriverError> {
        match self.request(Request::Start(req)).await? {
            Reply::Start(f) => Ok(f),
            _ => Ok(Found::NotFound),
        }
    }
    /// `stop`.
    pub async fn stop(&self, call_id: impl Into<CallId>) -> Result<Found, DriverError> {
        match self
            .request(Request::Stop {
                call_id: call_id.into(),
            })
            .await?
        {
            Reply::Stop(f) => Ok(f),
            _ => Ok(Found::NotFound),
        }
    }
    /// `terminate`.
    pub async fn terminate(&self, call_id: impl Into<CallId>) -> Result<Found, DriverError> {
        match self
            .request(Request::Terminate {
                call_id: call_id.into(),
            })
            .await?
        {
            Reply::Terminate(f) => Ok(f),
            _ => Ok(Found::NotFound),
        }
    }
    /// The sessions, optionally of one user (prefix of `user@host`).
    pub async fn list(&self, user: Option<&str>) -> Result<Vec<SessionInfo>, DriverError> {
        match self
            .request(Request::List {
                user: user.map(str::to_string),
            })
            .await?
        {
            Reply::Sessions(v) => Ok(v),
            _ => Ok(Vec::new()),
        }
    }
    /// One page of the sessions matching `query` (see [`ListQuery`]); the
    /// engine clones only the page, so this is cheap on a busy daemon.
    pub async fn page(&self, query: ListQuery) -> Result<SessionPage, DriverError> {
        match self.request(Request::Page(query)).await? {
            Reply::Page(p) => Ok(p),
            _ => Ok(SessionPage::default()),
        }
    }
    /// One session.
    pub async fn show(
        &self,
        call_id: impl Into<CallId>,
    ) -> Result<Option<SessionInfo>, DriverError> {
        match self
            .request(Request::Show {
                call_id: call_id.into(),
            })
            .await?
        {
            Reply::Session(s) => Ok(s.map(|s| *s)),
            _ => Ok(None),
        }
    }
    /// Counters and gauges.
    pub async fn status(&self) -> Result<Status, DriverError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Command::Status(tx))
            .await
            .map_err(|_| DriverError::Stopped)?;
        rx.await.map_err(|_| DriverError::Stopped)
    }
    /// Replaces the engine's settings.
    pub async fn reload(&self, config: EngineConfig) -> Result<(), DriverError> {
        self.tx
            .send(Command::Reload(config))
            .await
            .map_err(|_| DriverError::Stopped)
    }
}

/// Everything the driver needs.
pub struct Parts {
    /// The engine's settings.
    pub config: EngineConfig,
    /// Rates prepaid sessions and takes debits.
    pub rating: Arc<dyn RatingBackend>,
    /// Ends dialogs.
    pub signalling: Arc<dyn SignallingBackend>,
    /// Persists sessions and owed debits.
    pub store: Box<dyn SessionStore>,
    /// The time.
    pub clock: Arc<dyn Clock>,
}

/// A running engine: its handle and its task.
pub struct Running {
    /// Sends requests.
    pub handle: Handle,
    /// Ends when the engine stops (after `shutdown` is cancelled).
    pub task: tokio::task::JoinHandle<Result<(), StoreError>>,
}

/// Loads the store's saved state into a new engine and starts its driver
/// task. Cancel `shutdown` to stop it: it finishes the requests it has,
/// persists, closes the store and returns.
pub fn spawn(parts: Parts, shutdown: CancellationToken) -> Result<Running, StoreError> {
    spawn_reconciled(parts, shutdown, None)
}

/// What the proxy said at start-up, for [`spawn_reconciled`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reconcile {
    /// The dialogs the proxy has now.
    pub live: Vec<LiveDialog>,
    /// The last moment the previous run was known to be alive.
    pub down_since: Timestamp,
}

/// Like [`spawn`], and reconciles the restored sessions with the proxy's
/// dialog list ([`Engine::reconcile`]) before any restored timer fires, so a
/// call that ended while the daemon was down is debited for the time it ran,
/// not ended again at its limit.
pub fn spawn_reconciled(
    mut parts: Parts,
    shutdown: CancellationToken,
    reconcile: Option<Reconcile>,
) -> Result<Running, StoreError> {
    let snapshot = parts.store.load()?;
    let mut engine = Engine::new(parts.config.clone());
    let now = parts.clock.now();
    if !snapshot.sessions.is_empty() || !snapshot.debits.is_empty() {
        info!(
            "Restoring {} sessions and {} owed debits",
            snapshot.sessions.len(),
            snapshot.debits.len()
        );
    }
    engine.restore(now, snapshot);
    if let Some(r) = reconcile {
        engine.reconcile_dialogs(now, &r.live, r.down_since);
    }
    let (tx, rx) = mpsc::channel(4096);
    let driver = Driver {
        engine,
        rating: parts.rating,
        signalling: parts.signalling,
        store: parts.store,
        clock: parts.clock,
        pending: HashMap::new(),
        next_token: 1,
        events: mpsc::unbounded_channel(),
    };
    let task = tokio::spawn(driver.run(rx, shutdown));
    Ok(Running {
        handle: Handle { tx },
        task,
    })
}

struct Driver {
    engine: Engine,
    rating: Arc<dyn RatingBackend>,
    signalling: Arc<dyn SignallingBackend>,
    store: Box<dyn SessionStore>,
    clock: Arc<dyn Clock>,
    pending: HashMap<Token, oneshot::Sender<Reply>>,
    next_token: Token,
    events: (mpsc::UnboundedSender<Event>, mpsc::UnboundedReceiver<Event>),
}

/// Commands taken from the channel per batch before persisting and replying.
const BATCH: usize = 256;

impl Driver {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Command>,
        shutdown: CancellationToken,
    ) -> Result<(), StoreError> {
        self.flush();
        // One timer and one cancellation future for the whole life of the
        // loop: the timer is only re-armed when the engine's next deadline
        // changes, not on every request.
        let cancelled = shutdown.cancelled();
        tokio::pin!(cancelled);
        let sleep = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(sleep);
        let mut armed: Option<Timestamp> = None;
        loop {
            let now = self.clock.now();
            let next = self.engine.poll_timeout();
            if next.is_some_and(|t| t <= now) {
                self.engine.handle_timeout(now);
                self.flush();
                continue;
            }
            if next != armed {
                if let Some(t) = next {
                    let wait = Duration::from_millis(t.millis_since(now));
                    sleep.as_mut().reset(tokio::time::Instant::now() + wait);
                }
                armed = next;
            }
            tokio::select! {
                biased;
                _ = &mut cancelled => break,
                Some(ev) = self.events.1.recv() => {
                    self.event(ev);
                    while let Ok(ev) = self.events.1.try_recv() {
                        self.event(ev);
                    }
                }
                cmd = rx.recv() => {
                    let Some(cmd) = cmd else { break };
                    self.command(cmd);
                    for _ in 1..BATCH {
                        match rx.try_recv() {
                            Ok(cmd) => self.command(cmd),
                            Err(_) => break,
                        }
                    }
                }
                _ = &mut sleep, if armed.is_some() => {
                    armed = None;
                    let now = self.clock.now();
                    self.engine.handle_timeout(now);
                }
            }
            self.flush();
        }
        // Graceful stop: serve what is queued, then give rating answers in
        // flight a bounded time so every `init` gets its reply.
        rx.close();
        while let Ok(cmd) = rx.try_recv() {
            self.command(cmd);
        }
        self.flush();
        let grace = self.engine.config().rating_timeout + Duration::from_millis(100);
        let deadline = tokio::time::Instant::now() + grace;
        while !self.pending.is_empty() {
            match tokio::time::timeout_at(deadline, self.events.1.recv()).await {
                Ok(Some(ev)) => self.event(ev),
                _ => break,
            }
            self.flush();
        }
        self.flush();
        self.store.close()
    }

    fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Request(req, reply) => {
                let token = self.next_token;
                self.next_token += 1;
                self.pending.insert(token, reply);
                let now = self.clock.now();
                self.engine.handle(now, token, req);
            }
            Command::Status(tx) => {
                let _ = tx.send(self.status());
            }
            Command::Reload(config) => self.engine.set_config(config),
        }
    }

    fn status(&self) -> Status {
        let mut sessions = BTreeMap::new();
        for s in self.engine.sessions() {
            let kind = if s.is_prepaid() {
                "prepaid"
            } else {
                "postpaid"
            };
            *sessions.entry(format!("{}/{kind}", s.state)).or_default() += 1;
        }
        Status {
            stats: self.engine.stats().clone(),
            sessions,
            debits_owed: self.engine.debits_owed() as u64,
            requests_waiting: self.pending.len() as u64,
        }
    }

    fn event(&mut self, ev: Event) {
        let now = self.clock.now();
        match ev {
            Event::Authorised(op, r) => self.engine.on_authorised(now, op, r),
            Event::Debited(seq, r) => self.engine.on_debited(now, seq, r),
            Event::Ended(id, r) => self.engine.on_dialog_ended(now, &id, r),
        }
    }

    /// Persists, then performs the effects (replies last in causal order).
    fn flush(&mut self) {
        if self.engine.has_changes() {
            let changes = self.engine.take_changes();
            if let Err(e) = self.store.apply(&changes) {
                error!("Could not persist {} session changes: {e}", changes.len());
            }
        }
        while let Some(effect) = self.engine.poll_effect() {
            match effect {
                Effect::Reply { token, reply } => {
                    if let Some(tx) = self.pending.remove(&token) {
                        let _ = tx.send(reply);
                    }
                }
                Effect::Authorise {
                    op,
                    request,
                    budget: timeout,
                } => {
                    let rating = self.rating.clone();
                    let events = self.events.0.clone();
                    tokio::spawn(async move {
                        let r =
                            match tokio::time::timeout(timeout, rating.authorise(&request)).await {
                                Ok(r) => r,
                                Err(_) => Err(RatingError::Timeout),
                            };
                        let _ = events.send(Event::Authorised(op, r));
                    });
                }
                Effect::Debit { seq, request } => {
                    let rating = self.rating.clone();
                    let events = self.events.0.clone();
                    tokio::spawn(async move {
                        let r = rating.debit(&request).await;
                        let _ = events.send(Event::Debited(seq, r));
                    });
                }
                Effect::EndDialog(dialog) => {
                    let signalling = self.signalling.clone();
                    let events = self.events.0.clone();
                    tokio::spawn(async move {
                        let r = signalling.end_dialog(&dialog).await;
                        let _ = events.send(Event::Ended(dialog.call_id, r));
                    });
                }
            }
        }
    }
}
