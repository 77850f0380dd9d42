//! Persistence: the engine describes every change of its durable state (the
//! sessions acknowledged to the proxy and the debits owed) as a
//! [`StoreChange`]; its driver applies them to a [`SessionStore`] *before*
//! sending the replies that acknowledge them, so nothing acknowledged is lost.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::StoreError;
use crate::rating::DebitRequest;
use crate::session::Session;
use crate::types::{CallId, DialogId, SessionState, Timestamp};

/// A debit the engine owes the rating engine until it answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwedDebit {
    /// Sequence number: debits go out in this order (the order sessions ended).
    pub seq: u64,
    /// What to send.
    pub request: DebitRequest,
    /// When the session ended.
    pub ended: Timestamp,
}

/// One change of the durable state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StoreChange {
    /// A session was created or changed (shared, so a store can keep it
    /// without copying it).
    Session(Arc<Session>),
    /// A session is over (its debit, if any, is recorded separately first).
    RemoveSession(CallId),
    /// A debit became owed.
    Debit(OwedDebit),
    /// A debit was answered by the rating engine (Ok or Failed).
    DebitDone(u64),
    /// A session already recorded changed: its fields that can change after
    /// `init` (the rest never do), so that a `start` is not the whole
    /// session again.
    Update(SessionUpdate),
}

/// The fields of a session that change after it is created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionUpdate {
    /// Which session.
    pub call_id: CallId,
    /// [`Session::state`].
    pub state: SessionState,
    /// [`Session::limit`].
    pub limit: Option<u64>,
    /// [`Session::dialog_id`].
    pub dialog_id: Option<DialogId>,
    /// [`Session::answered`].
    pub answered: Option<Timestamp>,
    /// [`Session::deadline`].
    pub deadline: Option<Timestamp>,
    /// [`Session::end_attempts`].
    pub end_attempts: u32,
}

impl SessionUpdate {
    /// The changeable fields of `s`.
    pub fn of(s: &Session) -> SessionUpdate {
        SessionUpdate {
            call_id: s.call_id.clone(),
            state: s.state,
            limit: s.limit,
            dialog_id: s.dialog_id,
            answered: s.answered,
            deadline: s.deadline,
            end_attempts: s.end_attempts,
        }
    }
    /// Sets them on `s`.
    pub fn apply_to(&self, s: &mut Session) {
        s.state = self.state;
        s.limit = self.limit;
        s.dialog_id = self.dialog_id;
        s.answered = self.answered;
        s.deadline = self.deadline;
        s.end_attempts = self.end_attempts;
    }
}

impl From<Session> for StoreChange {
    fn from(s: Session) -> StoreChange {
        StoreChange::Session(Arc::new(s))
    }
}

/// The whole durable state, as loaded at start-up.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Sessions by Call-ID.
    pub sessions: Vec<Session>,
    /// Debits owed, in order.
    pub debits: Vec<OwedDebit>,
}

/// Where the engine's durable state lives.
#[cfg_attr(feature = "mock", mockall::automock)]
pub trait SessionStore: Send + 'static {
    /// Applies a batch of changes atomically enough that, once this returns
    /// `Ok`, they survive a crash of the process (for durable stores).
    fn apply(&mut self, changes: &[StoreChange]) -> Result<(), StoreError>;
    /// Loads the state saved so far.
    fn load(&mut self) -> Result<Snapshot, StoreError>;
    /// Called at a clean shutdown, after the last `apply`.
    fn close(&mut self) -> Result<(), StoreError> {
        Ok(())
    }
    /// Whether every `apply` flushes to stable storage (e.g. an `fsync`), so
    /// that the driver should batch requests and apply each batch once
    /// (group commit) rather than serve each request inline. Read once, when
    /// the driver starts.
    fn group_commit(&self) -> bool {
        false
    }
    /// Whether the store wants the whole state now (e.g. a journal that
    /// grew past its size, to write a snapshot). The driver asks after every
    /// `apply` and, when so, hands it over with [`SessionStore::save_state`].
    fn wants_state(&self) -> bool {
        false
    }
    /// The whole state, consistent with every change applied so far (the
    /// records are the engine's own, shared: taking it costs reference
    /// counts, not copies). Called only after `wants_state` said so.
    fn save_state(&mut self, state: SharedState) -> Result<(), StoreError> {
        let _ = state;
        Ok(())
    }
    /// [`SessionStore::close`], given the whole state (the driver's way to
    /// close: a store that writes a final snapshot need not rebuild it).
    fn close_with(&mut self, state: SharedState) -> Result<(), StoreError> {
        let _ = state;
        self.close()
    }
}

/// The whole durable state at one moment, sharing the engine's records.
#[derive(Debug, Clone, Default)]
pub struct SharedState {
    /// Every session.
    pub sessions: Vec<Arc<Session>>,
    /// Debits owed, in order.
    pub debits: Vec<OwedDebit>,
}

/// A store in memory: it survives nothing, but it lets tests see exactly what
/// the engine would persist.
#[derive(Debug, Default, Clone)]
pub struct MemoryStore {
    sessions: HashMap<CallId, Arc<Session>>,
    debits: BTreeMap<u64, OwedDebit>,
    applied: u64,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
    /// The state it holds.
    pub fn snapshot(&self) -> Snapshot {
        let mut sessions: Vec<Session> = self.sessions.values().map(|s| (**s).clone()).collect();
        sessions.sort_by(|a, b| a.call_id.cmp(&b.call_id));
        Snapshot {
            sessions,
            debits: self.debits.values().cloned().collect(),
        }
    }
    /// How many changes were applied.
    pub fn changes_applied(&self) -> u64 {
        self.applied
    }
}

impl SessionStore for MemoryStore {
    fn apply(&mut self, changes: &[StoreChange]) -> Result<(), StoreError> {
        for c in changes {
            self.applied += 1;
            match c {
                StoreChange::Session(s) => match self.sessions.get_mut(s.call_id.as_str()) {
                    Some(slot) => *slot = s.clone(),
                    None => {
                        self.sessions.insert(s.call_id.clone(), s.clone());
                    }
                },
                StoreChange::RemoveSession(id) => {
                    self.sessions.remove(id);
                }
                StoreChange::Debit(d) => {
                    self.debits.insert(d.seq, d.clone());
                }
                StoreChange::DebitDone(seq) => {
                    self.debits.remove(seq);
                }
                StoreChange::Update(u) => {
                    if let Some(slot) = self.sessions.get_mut(u.call_id.as_str()) {
                        u.apply_to(Arc::make_mut(slot));
                    }
                }
            }
        }
        Ok(())
    }
    fn load(&mut self) -> Result<Snapshot, StoreError> {
        Ok(self.snapshot())
    }
}

/// Applies changes to a snapshot (for stores that replay a journal).
pub fn replay(snapshot: &mut Snapshot, changes: impl IntoIterator<Item = StoreChange>) {
    let mut store = MemoryStore::new();
    let _ = store.apply(
        &snapshot
            .sessions
            .drain(..)
            .map(StoreChange::from)
            .chain(snapshot.debits.drain(..).map(StoreChange::Debit))
            .collect::<Vec<_>>(),
    );
    let changes: Vec<StoreChange> = changes.into_iter().collect();
    let _ = store.apply(&changes);
    *snapshot = store.snapshot();
}
