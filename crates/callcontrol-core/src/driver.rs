//! The thin tokio driver that owns an [`Engine`] and performs its effects.
//!
//! The engine, its store and the replies it owes live behind one mutex
//! (never held across an `.await`). A request is served **inline** by the
//! task that sends it: [`Handle::request`] locks, hands the request to the
//! engine, persists the changes, performs the effects and, when the reply is
//! ready at once (every reply but an `init` waiting for the rating engine),
//! returns it without any task switch. A durable store's `apply` puts the
//! changes in the kernel before the reply is returned, so nothing
//! acknowledged is lost.
//!
//! One driver task fires the engine's timers and takes the backends'
//! answers: backend calls run as spawned tasks whose answers come back as
//! events, so a slow rating engine delays only the sessions waiting for it.
//!
//! A store that flushes to disk on every apply ([`SessionStore::group_commit`],
//! e.g. the journal with `fsync = always`) is served in batches instead:
//! requests go to the driver task over a channel, and each batch is
//! persisted with one flush before its replies are sent (group commit).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use log::{error, info};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, Notify};
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
use crate::store::{SessionStore, StoreChange};
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

/// A request sent to the driver task (group commit), with where its reply goes.
type Command = (Request, oneshot::Sender<Reply>);

enum Event {
    Authorised(u64, Result<Authorisation, RatingError>),
    Debited(u64, Result<DebitOutcome, RatingError>),
    Ended(CallId, Result<EndOutcome, SignallingError>),
}

/// What the handles and the driver task share.
struct Shared {
    core: Mutex<Core>,
    /// Wakes the driver when a request moved the engine's next deadline
    /// before the one its timer is armed for.
    rearm: Notify,
    rating: Arc<dyn RatingBackend>,
    signalling: Arc<dyn SignallingBackend>,
    clock: Arc<dyn Clock>,
    events: mpsc::UnboundedSender<Event>,
    /// Requests go through the driver task in batches (group commit).
    batched: bool,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("batched", &self.batched)
            .finish_non_exhaustive()
    }
}

/// The engine and what it needs to persist and reply, under the mutex.
struct Core {
    engine: Engine,
    store: Box<dyn SessionStore>,
    pending: HashMap<Token, oneshot::Sender<Reply>>,
    next_token: Token,
    /// The deadline the driver's timer is armed for.
    armed: Option<Timestamp>,
    /// The driver is stopping: new requests are refused.
    closed: bool,
    /// The changes being persisted (kept for its allocation).
    changes: Vec<StoreChange>,
}

/// A cheap, cloneable handle to a running engine.
#[derive(Clone, Debug)]
pub struct Handle {
    shared: Arc<Shared>,
    tx: mpsc::Sender<Command>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Core> {
        // A panic while holding the lock leaves the engine as it was between
        // two of its own calls: go on rather than take the daemon down.
        self.core.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Handle {
    /// Sends any request and waits for its reply.
    pub async fn request(&self, request: Request) -> Result<Reply, DriverError> {
        if self.shared.batched {
            let (tx, rx) = oneshot::channel();
            self.tx
                .send((request, tx))
                .await
                .map_err(|_| DriverError::Stopped)?;
            return rx.await.map_err(|_| DriverError::Stopped);
        }
        let rx = {
            let mut core = self.shared.lock();
            if core.closed {
                return Err(DriverError::Stopped);
            }
            let token = core.next_token;
            core.next_token += 1;
            let now = self.shared.clock.now();
            core.fire_due_timers(now);
            core.engine.handle(now, token, request);
            let reply = core.flush(&self.shared, Some(token));
            core.wake_driver_if_sooner(&self.shared);
            if let Some(reply) = reply {
                return Ok(reply);
            }
            let (tx, rx) = oneshot::channel();
            core.pending.insert(token, tx);
            rx
        };
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
        let mut core = self.shared.lock();
        if core.closed {
            return Err(DriverError::Stopped);
        }
        if core.fire_due_timers(self.shared.clock.now()) {
            core.flush(&self.shared, None);
        }
        Ok(core.status())
    }
    /// Replaces the engine's settings.
    pub async fn reload(&self, config: EngineConfig) -> Result<(), DriverError> {
        let mut core = self.shared.lock();
        if core.closed {
            return Err(DriverError::Stopped);
        }
        core.engine.set_config(config);
        core.wake_driver_if_sooner(&self.shared);
        Ok(())
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
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let batched = parts.store.group_commit();
    let shared = Arc::new(Shared {
        core: Mutex::new(Core {
            engine,
            store: parts.store,
            pending: HashMap::new(),
            next_token: 1,
            armed: None,
            closed: false,
            changes: Vec::new(),
        }),
        rearm: Notify::new(),
        rating: parts.rating,
        signalling: parts.signalling,
        clock: parts.clock,
        events: events_tx,
        batched,
    });
    let task = tokio::spawn(run(shared.clone(), rx, events_rx, shutdown));
    Ok(Running {
        handle: Handle { shared, tx },
        task,
    })
}

/// Commands taken from the channel per batch before persisting and replying.
const BATCH: usize = 256;

async fn run(
    shared: Arc<Shared>,
    mut rx: mpsc::Receiver<Command>,
    mut events: mpsc::UnboundedReceiver<Event>,
    shutdown: CancellationToken,
) -> Result<(), StoreError> {
    // However the driver ends (a panic included), requests are refused from
    // then on rather than served without timers or backend answers.
    let _closing = CloseOnDrop(shared.clone());
    shared.lock().flush(&shared, None);
    // One timer and one cancellation future for the whole life of the loop:
    // the timer is only re-armed when the engine's next deadline changes,
    // not on every request.
    let cancelled = shutdown.cancelled();
    tokio::pin!(cancelled);
    let sleep = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(sleep);
    loop {
        let armed = {
            let mut core = shared.lock();
            let now = shared.clock.now();
            if core.fire_due_timers(now) {
                core.flush(&shared, None);
                continue;
            }
            let next = core.engine.poll_timeout();
            if next != core.armed {
                if let Some(t) = next {
                    let wait = Duration::from_millis(t.millis_since(now));
                    sleep.as_mut().reset(tokio::time::Instant::now() + wait);
                }
                core.armed = next;
            }
            core.armed
        };
        tokio::select! {
            biased;
            _ = &mut cancelled => break,
            Some(ev) = events.recv() => {
                let mut core = shared.lock();
                core.event(&shared, ev);
                while let Ok(ev) = events.try_recv() {
                    core.event(&shared, ev);
                }
                core.flush(&shared, None);
            }
            cmd = rx.recv() => {
                let Some(cmd) = cmd else { break };
                let mut core = shared.lock();
                core.command(&shared, cmd);
                for _ in 1..BATCH {
                    match rx.try_recv() {
                        Ok(cmd) => core.command(&shared, cmd),
                        Err(_) => break,
                    }
                }
                core.flush(&shared, None);
            }
            _ = &mut sleep, if armed.is_some() => {
                let mut core = shared.lock();
                core.armed = None;
                let now = shared.clock.now();
                core.engine.handle_timeout(now);
                core.flush(&shared, None);
            }
            _ = shared.rearm.notified() => {}
        }
    }
    // Graceful stop: refuse new requests, serve what is queued, then give
    // rating answers in flight a bounded time so every `init` gets its reply.
    rx.close();
    let grace = {
        let mut core = shared.lock();
        core.closed = true;
        while let Ok(cmd) = rx.try_recv() {
            core.command(&shared, cmd);
        }
        core.flush(&shared, None);
        core.engine.config().rating_timeout + Duration::from_millis(100)
    };
    let deadline = tokio::time::Instant::now() + grace;
    while !shared.lock().pending.is_empty() {
        let ev = match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(ev)) => ev,
            _ => break,
        };
        let mut core = shared.lock();
        core.event(&shared, ev);
        core.flush(&shared, None);
    }
    let mut core = shared.lock();
    core.flush(&shared, None);
    core.pending.clear();
    let state = core.engine.shared_state();
    core.store.close_with(state)
}

/// Marks the engine closed and drops the replies owed (their callers get
/// [`DriverError::Stopped`]) when the driver task ends.
struct CloseOnDrop(Arc<Shared>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        let mut core = self.0.lock();
        core.closed = true;
        core.pending.clear();
    }
}

impl Core {
    fn command(&mut self, shared: &Shared, (req, reply): Command) {
        let token = self.next_token;
        self.next_token += 1;
        self.pending.insert(token, reply);
        let now = shared.clock.now();
        self.engine.handle(now, token, req);
    }

    /// Fires the engine's timers that are due (the driver's timer may not
    /// have woken yet), so a request sees the state as of `now`.
    fn fire_due_timers(&mut self, now: Timestamp) -> bool {
        let due = self.engine.poll_timeout().is_some_and(|t| t <= now);
        if due {
            self.engine.handle_timeout(now);
        }
        due
    }

    /// Wakes the driver when the engine's next deadline is now before the
    /// one its timer is armed for (a request never waits for a timer).
    fn wake_driver_if_sooner(&self, shared: &Shared) {
        if let Some(t) = self.engine.poll_timeout() {
            if self.armed.is_none_or(|a| t < a) {
                shared.rearm.notify_one();
            }
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

    fn event(&mut self, shared: &Shared, ev: Event) {
        let now = shared.clock.now();
        match ev {
            Event::Authorised(op, r) => self.engine.on_authorised(now, op, r),
            Event::Debited(seq, r) => self.engine.on_debited(now, seq, r),
            Event::Ended(id, r) => self.engine.on_dialog_ended(now, &id, r),
        }
    }

    /// Persists, then performs the effects (replies last in causal order).
    /// The reply for `mine`, if the engine gave it, is returned instead of
    /// being sent to a waiting handle.
    fn flush(&mut self, shared: &Shared, mine: Option<Token>) -> Option<Reply> {
        if self.engine.has_changes() {
            let mut changes = std::mem::take(&mut self.changes);
            self.engine.take_changes_into(&mut changes);
            if let Err(e) = self.store.apply(&changes) {
                error!("Could not persist {} session changes: {e}", changes.len());
            }
            changes.clear();
            self.changes = changes;
            if self.store.wants_state() {
                let state = self.engine.shared_state();
                if let Err(e) = self.store.save_state(state) {
                    error!("Could not compact the session store: {e}");
                }
            }
        }
        let mut own = None;
        while let Some(effect) = self.engine.poll_effect() {
            match effect {
                Effect::Reply { token, reply } => {
                    if Some(token) == mine {
                        own = Some(reply);
                    } else if let Some(tx) = self.pending.remove(&token) {
                        let _ = tx.send(reply);
                    }
                }
                Effect::Authorise {
                    op,
                    request,
                    budget: timeout,
                } => {
                    let rating = shared.rating.clone();
                    let events = shared.events.clone();
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
                    let rating = shared.rating.clone();
                    let events = shared.events.clone();
                    tokio::spawn(async move {
                        let r = rating.debit(&request).await;
                        let _ = events.send(Event::Debited(seq, r));
                    });
                }
                Effect::EndDialog(dialog) => {
                    let signalling = shared.signalling.clone();
                    let events = shared.events.clone();
                    tokio::spawn(async move {
                        let r = signalling.end_dialog(&dialog).await;
                        let _ = events.send(Event::Ended(dialog.call_id, r));
                    });
                }
            }
        }
        own
    }
}
