//! The engine: a state machine without I/O.
//!
//! It is handed requests, backend answers and the time, and it returns what
//! to do as [`Effect`]s (replies, authorisations to ask, debits to send,
//! dialogs to end), the [`StoreChange`]s to persist before any reply goes out,
//! and its next deadline. It never reads the clock and never waits: a rating
//! answer for one session arrives as an event while other sessions go on.
//!
//! All timers of all sessions live in one ordered set of
//! `(deadline, Call-ID)`; see `docs/adr/0001-timer-structure.md`. A session's
//! entry may come before its deadline when the deadline moved later (the
//! setup timeout of an answered call): it is moved when it comes due (see
//! `arm`), so [`Engine::poll_timeout`] may name a time at which
//! [`Engine::handle_timeout`] has nothing to do.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use log::{debug, error, info, warn};
use serde::{Deserialize, Serialize};

use crate::config::{EngineConfig, RatingFailurePolicy};
use crate::error::RequestError;
use crate::error::{RatingError, SignallingError};
use crate::rating::{
    AccountType, Authorisation, AuthoriseRequest, DebitOutcome, DebitRequest, RatedLimit,
};
use crate::request::{
    Found, InitReply, InitRequest, ListQuery, Reply, Request, SessionPage, StartRequest,
};
use crate::session::{Session, SessionInfo};
use crate::signalling::{DialogRef, EndOutcome, LiveDialog};
use crate::store::{OwedDebit, Snapshot, StoreChange};
use crate::types::{BillingParty, CallId, SessionState, Timestamp};

/// Identifies a request whose reply is pending (chosen by the driver).
pub type Token = u64;

/// Something the engine's driver must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Send this reply to the request with this token.
    Reply {
        /// The request's token.
        token: Token,
        /// The reply.
        reply: Reply,
    },
    /// Ask the rating backend; hand the answer to [`Engine::on_authorised`].
    Authorise {
        /// Operation id to pass back.
        op: u64,
        /// The request.
        request: AuthoriseRequest,
        /// How long the answer may take: past it, hand the engine
        /// `Err(RatingError::Timeout)`. For an `init` this keeps the reply
        /// inside the proxy's 500 ms.
        budget: std::time::Duration,
    },
    /// Send a debit; hand the answer to [`Engine::on_debited`].
    Debit {
        /// The debit's sequence number to pass back.
        seq: u64,
        /// The request.
        request: DebitRequest,
    },
    /// End a dialog; hand the answer to [`Engine::on_dialog_ended`].
    EndDialog(DialogRef),
}

/// Counters for monitoring (monotonic unless noted).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineStats {
    /// `init` replies by outcome, indexed like [`InitReply::outcome`] names.
    pub init_replies: BTreeMap<String, u64>,
    /// Sessions ended by their limit.
    pub expired: u64,
    /// Sessions released by the setup timeout.
    pub setup_timeouts: u64,
    /// Sessions ended as stale.
    pub stale: u64,
    /// Dialog end requests sent.
    pub end_requests: u64,
    /// Dialog end requests that failed.
    pub end_failures: u64,
    /// Debits answered `Ok`.
    pub debits_ok: u64,
    /// Debits answered `Failed` (or not prepaid).
    pub debits_failed: u64,
    /// Debit attempts that got no answer (retried).
    pub debit_retries: u64,
    /// Rating failures at `init` (timeouts, errors, nonsense).
    pub rating_failures: u64,
    /// Sum of timer lateness in ms (fired minus due), and number of timers fired.
    pub timer_lateness_ms: u64,
    /// Timers fired.
    pub timers_fired: u64,
    /// Timers fired, by lateness: entry `i` counts the timers whose lateness
    /// was above bound `i - 1` and at most [`TIMER_LATENESS_BOUNDS_MS`]`[i]`;
    /// the last entry counts those later than every bound. Not cumulative.
    #[serde(default)]
    pub timer_lateness_buckets: Vec<u64>,
}

/// Upper bounds, in milliseconds, of the buckets of
/// [`EngineStats::timer_lateness_buckets`] (a final bucket holds the rest).
pub const TIMER_LATENESS_BOUNDS_MS: [u64; 10] = [1, 5, 10, 25, 50, 100, 250, 500, 1000, 5000];

#[derive(Debug)]
enum AuthOp {
    Init {
        token: Token,
        req: InitRequest,
        party: BillingParty,
    },
    Start {
        call_id: CallId,
    },
}

/// A re-rating held until the release of the old authorisation is answered.
#[derive(Debug)]
struct Held {
    op: u64,
    request: AuthoriseRequest,
    arrived: Timestamp,
    deadline: Timestamp,
}

#[derive(Debug)]
struct DebitState {
    owed: OwedDebit,
    in_flight: bool,
    attempts: u32,
    /// Not before this time (a debit the rating engine answered with an error).
    retry_at: Option<Timestamp>,
}

impl DebitState {
    fn new(owed: OwedDebit) -> Self {
        DebitState {
            owed,
            in_flight: false,
            attempts: 0,
            retry_at: None,
        }
    }
}

/// The call-control engine. See the module docs.
#[derive(Debug)]
pub struct Engine {
    config: EngineConfig,
    /// Shared with the store's copies ([`StoreChange::Session`]) and copied
    /// on write: a session changed after it was handed to the store is
    /// copied then, once, and one that is not changed again never is.
    sessions: Sessions,
    timers: BTreeSet<(Timestamp, CallId)>,
    /// Tracked sessions by billing party. A party whose last session ended
    /// keeps its (empty) entry, so that its next call finds its name without
    /// allocating, until there are more such entries than parties with
    /// sessions (see [`Parties::collect`]).
    parties: Parties,
    /// Where an `init`'s billing party is written before it is looked up.
    party_buf: String,
    /// Where the lines logged for every call are composed.
    log_buf: String,
    authorising: HashMap<CallId, u64>,
    ops: HashMap<u64, AuthOp>,
    next_op: u64,
    debits: BTreeMap<u64, DebitState>,
    next_debit: u64,
    debits_in_flight: usize,
    debits_paused_until: Option<Timestamp>,
    /// The earliest `retry_at` of a debit waiting on its own.
    debit_wakeup: Option<Timestamp>,
    /// Re-ratings waiting for a release, by the release's debit sequence.
    held: BTreeMap<u64, Held>,
    effects: VecDeque<Effect>,
    /// Debits owed since the last `take_changes`, in order.
    new_debits: Vec<OwedDebit>,
    /// Debits answered since the last `take_changes`, in order.
    debits_done: Vec<u64>,
    /// Sessions changed (or removed) since the last `take_changes`, in
    /// order; each is recorded once per batch, not once per change.
    dirty: Vec<Dirty>,
    stats: EngineStats,
}

impl Engine {
    /// A new engine with no sessions.
    pub fn new(config: EngineConfig) -> Engine {
        Engine {
            config,
            sessions: Sessions::default(),
            timers: BTreeSet::new(),
            parties: Parties::default(),
            party_buf: String::new(),
            log_buf: String::new(),
            authorising: HashMap::new(),
            ops: HashMap::new(),
            next_op: 1,
            debits: BTreeMap::new(),
            next_debit: 1,
            debits_in_flight: 0,
            debits_paused_until: None,
            debit_wakeup: None,
            held: BTreeMap::new(),
            effects: VecDeque::new(),
            new_debits: Vec::new(),
            debits_done: Vec::new(),
            dirty: Vec::new(),
            stats: EngineStats::default(),
        }
    }

    /// The settings in force.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Replaces the settings (reload). Sessions keep their limits.
    pub fn set_config(&mut self, config: EngineConfig) {
        self.config = config;
    }

    /// Counters.
    pub fn stats(&self) -> &EngineStats {
        &self.stats
    }

    /// Number of tracked sessions.
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    /// Whether no session is tracked.
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// Number of debits owed (not yet answered by the rating engine).
    pub fn debits_owed(&self) -> usize {
        self.debits.len()
    }

    /// A session, by Call-ID.
    pub fn session(&self, call_id: &str) -> Option<&Session> {
        self.sessions.get(call_id).map(|s| &**s)
    }

    /// The durable state (every session, shared, and the debits owed), for a
    /// store that compacts ([`SessionStore::save_state`](crate::store::SessionStore::save_state)).
    pub fn shared_state(&self) -> crate::store::SharedState {
        crate::store::SharedState {
            sessions: self.sessions.values().cloned().collect(),
            debits: self.debits.values().map(|d| d.owed.clone()).collect(),
        }
    }

    /// Every session, in no particular order.
    pub fn sessions(&self) -> impl Iterator<Item = &Session> {
        self.sessions.values().map(|s| &**s)
    }

    /// The next effect to perform, in order.
    pub fn poll_effect(&mut self) -> Option<Effect> {
        self.effects.pop_front()
    }

    /// The durable-state changes since the last call. The driver must persist
    /// them before it performs the effects that follow (replies acknowledge).
    pub fn take_changes(&mut self) -> Vec<StoreChange> {
        let mut out = Vec::new();
        self.take_changes_into(&mut out);
        out
    }

    /// [`Engine::take_changes`], appended to `out`: a driver reuses one
    /// buffer rather than allocate one per request.
    pub fn take_changes_into(&mut self, out: &mut Vec<StoreChange>) {
        // Owed debits come first: if a store loses the tail of a batch, a
        // session may come back (and be debited again, which the rating
        // engine refuses as a repeat) but a debit is never lost.
        out.reserve(self.new_debits.len() + self.dirty.len() + self.debits_done.len());
        out.extend(self.new_debits.drain(..).map(StoreChange::Debit));
        let dirty = &self.dirty;
        // A session the store has gets only the fields that change; one
        // created in this batch, all of it.
        let record = |d: &Dirty, removed: bool, new: bool| match self
            .sessions
            .find(d.hash, &d.id)
            .filter(|_| !removed)
        {
            Some(s) if new => StoreChange::Session(Arc::clone(s)),
            Some(s) => StoreChange::Update(crate::store::SessionUpdate::of(s)),
            None => StoreChange::RemoveSession(d.id.clone()),
        };
        if dirty.len() <= 8 {
            // Small batches (the usual case: one request) dedup by scanning;
            // a session whose last mark is its removal needs no lookup.
            for (i, d) in dirty.iter().enumerate() {
                if dirty[..i].iter().any(|e| e.id == d.id) {
                    continue;
                }
                let last = dirty[i..].iter().rfind(|e| e.id == d.id).unwrap_or(d);
                let new = dirty[i..].iter().any(|e| e.id == d.id && e.new);
                out.push(record(d, last.removed, new));
            }
        } else {
            let created: std::collections::HashSet<&CallId> =
                dirty.iter().filter(|d| d.new).map(|d| &d.id).collect();
            let mut seen = std::collections::HashSet::with_capacity(dirty.len());
            for d in dirty {
                if seen.insert(&d.id) {
                    out.push(record(d, false, created.contains(&d.id)));
                }
            }
        }
        self.dirty.clear();
        out.extend(self.debits_done.drain(..).map(StoreChange::DebitDone));
    }

    /// Whether changes are waiting to be persisted.
    pub fn has_changes(&self) -> bool {
        !self.dirty.is_empty() || !self.new_debits.is_empty() || !self.debits_done.is_empty()
    }

    /// When [`Engine::handle_timeout`] must next be called.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        let timer = self.timers.first().map(|(t, _)| *t);
        if self.debits.is_empty() && self.held.is_empty() {
            // The usual case (no debit owed, no re-rating held): the timers.
            return timer;
        }
        let paused = self.debits_paused_until.filter(|_| !self.debits.is_empty());
        // While every debit is paused, single retries wait for the pause too.
        let wakeup = self
            .debit_wakeup
            .filter(|_| self.debits_paused_until.is_none());
        let held = self.held.values().map(|h| h.deadline).min();
        [timer, paused, wakeup, held].into_iter().flatten().min()
    }

    /// Serves a request. The reply comes out as an [`Effect::Reply`] with
    /// `token`, at once or after a rating answer.
    pub fn handle(&mut self, now: Timestamp, token: Token, request: Request) {
        match request {
            Request::Init(req) => self.init(now, token, req),
            Request::Start(req) => self.start(now, token, req),
            Request::Stop { call_id } => self.stop(now, token, &call_id),
            Request::List { user } => {
                let reply = Reply::Sessions(self.list(now, user.as_deref()));
                self.reply(token, reply);
            }
            Request::Show { call_id } => {
                let info = self.sessions.get(&call_id).map(|s| s.info(now));
                self.reply(token, Reply::Session(info.map(Box::new)));
            }
            Request::Terminate { call_id } => self.terminate(now, token, &call_id),
            Request::Page(query) => {
                let reply = Reply::Page(self.page(now, &query));
                self.reply(token, reply);
            }
        }
    }

    /// One page of the sessions matching `query`, ordered by
    /// `(created, call_id)`. One pass over references and a bounded
    /// selection (no sort of all sessions); only the page is cloned.
    pub fn page(&self, now: Timestamp, query: &ListQuery) -> SessionPage {
        let text = query
            .text
            .as_deref()
            .filter(|t| !t.is_empty())
            .map(str::to_lowercase);
        let after = query.after.as_ref().map(|(t, id)| (*t, id));
        let end = query.offset.saturating_add(query.limit);
        let mut picker = Picker::new(end);
        let mut matched = 0;
        for s in self.sessions.values().map(|s| &**s) {
            let keep = query
                .user
                .as_deref()
                .is_none_or(|u| s.party.user_host().starts_with(u))
                && query.states.as_ref().is_none_or(|v| v.contains(&s.state))
                && query.prepaid.is_none_or(|p| s.is_prepaid() == p)
                && text.as_deref().is_none_or(|t| {
                    [s.call_id.as_str(), s.party.user_host(), &s.from, &s.ruri]
                        .into_iter()
                        .any(|f| contains_ignore_case(f, t))
                });
            if !keep {
                continue;
            }
            matched += 1;
            if after.is_some_and(|a| (s.created, &s.call_id) <= a) {
                continue;
            }
            picker.push(s);
        }
        let sessions = picker
            .into_sorted(query.offset)
            .into_iter()
            .map(|s| s.info(now))
            .collect();
        SessionPage {
            total: self.sessions.len(),
            matched,
            sessions,
        }
    }

    /// Sessions as admin views, oldest first, optionally only those whose
    /// billing party (`user@host`) starts with `user`.
    pub fn list(&self, now: Timestamp, user: Option<&str>) -> Vec<SessionInfo> {
        let mut v: Vec<&Session> = self
            .sessions
            .values()
            .map(|s| &**s)
            .filter(|s| user.is_none_or(|u| s.party.user_host().starts_with(u)))
            .collect();
        v.sort_by(|a, b| (a.created, &a.call_id).cmp(&(b.created, &b.call_id)));
        v.into_iter().map(|s| s.info(now)).collect()
    }

    fn reply(&mut self, token: Token, reply: Reply) {
        self.effects.push_back(Effect::Reply { token, reply });
    }

    fn reply_init(&mut self, token: Token, reply: InitReply) {
        match self.stats.init_replies.get_mut(reply.outcome()) {
            Some(n) => *n += 1,
            None => {
                self.stats
                    .init_replies
                    .insert(reply.outcome().to_string(), 1);
            }
        }
        self.reply(token, Reply::Init(reply));
    }

    // ---- init -------------------------------------------------------------

    fn init(&mut self, now: Timestamp, token: Token, req: InitRequest) {
        let Some((party, party_hash, mut tracked)) = self.billing_party(&req) else {
            let e = RequestError::BadFrom(req.from);
            error!("Refused call: {e} ({})", req.call_id);
            return self.reply_init(token, InitReply::Error);
        };
        // The Duration=0 release of a re-sent INVITE's old authorisation.
        let mut release = None;
        if !self.authorising.is_empty() && self.authorising.contains_key(&req.call_id) {
            // A second init while the first is still being rated: OpenSIPS
            // blocks on the first, so this is another proxy or a replay.
            let same = self.ops.values().any(|op| {
                matches!(op, AuthOp::Init { req: r, .. }
                if r.call_id == req.call_id && r.call_token == req.call_token)
            });
            let reply = if same {
                InitReply::Error
            } else {
                InitReply::DuplicatedCallId
            };
            warn!(
                "init for a call still being rated: {} ({})",
                reply.as_str(),
                req.call_id
            );
            return self.reply_init(token, reply);
        }
        let hash = self.sessions.hash(&req.call_id);
        if let Some(existing) = self.sessions.find(hash, &req.call_id) {
            if existing.token.as_deref() != req.call_token.as_deref() {
                warn!("Duplicated callid with a different token ({})", req.call_id);
                return self.reply_init(token, InitReply::DuplicatedCallId);
            }
            let changed = existing.ruri.as_ref() != req.ruri
                || existing.diverter.as_deref() != req.diverter.as_deref();
            if existing.state != SessionState::Pending || !changed {
                debug!(
                    "init re-sent for a known call, keeping it ({})",
                    req.call_id
                );
                return self.reply_init(token, InitReply::Limited);
            }
            // An INVITE re-sent (after an auth challenge) to a new
            // destination: release the old authorisation and rate it again.
            info!(
                "init re-sent with a new destination, rating it again ({})",
                req.call_id
            );
            if let Some(old) = self.remove_hashed(hash, &req.call_id) {
                if old.is_prepaid() {
                    release = Some(self.release_now(now, &old));
                }
            }
            tracked = self.party_sessions(&party);
        }
        if req.prepaid.is_prepaid() && rated_request_len(&req, &party) > MAX_RATED_REQUEST {
            // The rating engine reads at most 4 KiB per request: a longer one
            // would be split in two and answered twice (see PROTOCOLS.md §5).
            error!(
                "Refused prepaid call from {party}: its Call-ID and URIs are too long to rate ({})",
                req.call_id
            );
            return self.reply_init(token, InitReply::Error);
        }
        if req.prepaid.is_prepaid() {
            let op = self.next_op;
            self.next_op += 1;
            let request = AuthoriseRequest {
                call_id: req.call_id.clone(),
                party: party.clone(),
                to: req.ruri.clone(),
                gateway: req.source_ip.clone(),
                max_duration: self.config.prepaid_cap(),
                application: application(req.sip_application.as_deref()),
                connected: false,
            };
            self.authorising.insert(req.call_id.clone(), op);
            self.ops.insert(op, AuthOp::Init { token, req, party });
            match release {
                // Rate it again only once the release is answered: a release
                // arriving after the new authorisation would cancel it, and
                // the call's debit would then fail.
                Some(seq) => {
                    let deadline = now.plus_millis(self.init_budget().as_millis() as u64 / 2);
                    self.held.insert(
                        seq,
                        Held {
                            op,
                            request,
                            arrived: now,
                            deadline,
                        },
                    );
                }
                None => {
                    let budget = self.init_budget();
                    self.effects.push_back(Effect::Authorise {
                        op,
                        request,
                        budget,
                    });
                }
            }
        } else {
            let limit = self.config.limit;
            let place = Placement {
                hash,
                party_hash,
                tracked,
            };
            self.decide(now, token, req, party, place, (false, limit), false);
        }
    }

    /// The billing party of an `init` (`None`: no usable From URI) and how
    /// many tracked sessions it has. A party known to the engine costs one
    /// lookup and no allocation: its name is shared with its sessions.
    /// Also returns the party's hash in `parties`.
    fn billing_party(&mut self, req: &InitRequest) -> Option<(BillingParty, u64, usize)> {
        let buf = &mut self.party_buf;
        if !crate::party::write_billing_party(&req.from, req.diverter.as_deref(), buf) {
            return None;
        }
        let hash = self.parties.hash(buf.as_str());
        Some(match self.parties.find(hash, buf.as_str()) {
            Some(p) => (p.name.clone(), hash, p.ids.len()),
            None => (BillingParty::new(buf.as_str()), hash, 0),
        })
    }

    /// Where the session of an `init` answered later goes.
    fn placement(&self, call_id: &CallId, party: &BillingParty) -> Placement {
        let party_hash = self.parties.hash(party.as_str());
        Placement {
            hash: self.sessions.hash(call_id),
            party_hash,
            tracked: self
                .parties
                .find(party_hash, party.as_str())
                .map_or(0, |p| p.ids.len()),
        }
    }

    /// How long an `init` may wait for the rating engine.
    fn init_budget(&self) -> std::time::Duration {
        self.config
            .rating_timeout
            .min(self.config.init_reply_budget)
    }

    /// Owes the Duration=0 release of `s`'s authorisation and sends it now,
    /// ahead of the queue (a re-rating waits for it). Returns its sequence.
    fn release_now(&mut self, now: Timestamp, s: &Session) -> u64 {
        let seq = self.next_debit;
        self.owe_debit(now, s, 0);
        if let Some(d) = self.debits.get_mut(&seq) {
            if !d.in_flight {
                d.in_flight = true;
                self.debits_in_flight += 1;
                let request = d.owed.request.clone();
                self.effects.push_back(Effect::Debit { seq, request });
            }
        }
        seq
    }

    /// Refuses an `init` whose re-rating could not go ahead safely.
    fn fail_held(&mut self, op: u64, why: &str) {
        if let Some(AuthOp::Init { token, req, party }) = self.ops.remove(&op) {
            self.authorising.remove(&req.call_id);
            error!(
                "Could not release the previous authorisation of {party} before rating the call                  again ({why}): refusing it ({})",
                req.call_id
            );
            self.reply_init(token, InitReply::Error);
        }
    }

    /// Hands the engine the rating backend's answer to [`Effect::Authorise`].
    /// The driver turns a timeout into `Err(RatingError::Timeout)`.
    pub fn on_authorised(
        &mut self,
        now: Timestamp,
        op: u64,
        result: Result<Authorisation, RatingError>,
    ) {
        match self.ops.remove(&op) {
            Some(AuthOp::Init { token, req, party }) => {
                self.authorising.remove(&req.call_id);
                self.finish_init(now, token, req, party, result)
            }
            Some(AuthOp::Start { call_id }) => self.finish_start(now, &call_id, result),
            None => debug!("rating answer for unknown operation {op}"),
        }
    }

    fn finish_init(
        &mut self,
        now: Timestamp,
        token: Token,
        req: InitRequest,
        party: BillingParty,
        result: Result<Authorisation, RatingError>,
    ) {
        let auth = match result {
            Ok(a) if a.account == Some(AccountType::Postpaid) => {
                error!(
                    "Configuration mismatch: the proxy marked {party} prepaid but the rating \
                     engine says postpaid ({})",
                    req.call_id
                );
                return self.reply_init(token, InitReply::Error);
            }
            Ok(a) => a,
            Err(e) => {
                self.stats.rating_failures += 1;
                return match self.config.rating_failure {
                    RatingFailurePolicy::Reject => {
                        error!(
                            "Rating failed for {party}, refusing the call: {e} ({})",
                            req.call_id
                        );
                        if matches!(e, RatingError::Timeout | RatingError::BadReply(_)) {
                            // The request may have reached the engine and
                            // counted against the account: release it.
                            self.owe_debit_for(now, &req, &party, 0);
                        }
                        self.reply_init(token, InitReply::Error)
                    }
                    RatingFailurePolicy::Allow(limit) => {
                        warn!(
                            "Rating failed for {party}, allowing the call for {limit} seconds \
                             (fail-open policy): {e} ({})",
                            req.call_id
                        );
                        let place = self.placement(&req.call_id, &party);
                        self.decide(now, token, req, party, place, (false, Some(limit)), false)
                    }
                };
            }
        };
        let cap = self.config.prepaid_cap();
        let (locked, limit) = match auth.limit {
            RatedLimit::Locked => (true, None),
            RatedLimit::Seconds(n) => (false, Some(n.min(cap))),
            RatedLimit::Unlimited => (false, self.config.limit),
        };
        let place = self.placement(&req.call_id, &party);
        self.decide(now, token, req, party, place, (locked, limit), true);
    }

    /// The decision of BEHAVIOUR.md `init` step 3, in its order. `place`: the
    /// hashes and the party's tracked sessions; `(locked, limit)`: the rating.
    #[allow(clippy::too_many_arguments)]
    fn decide(
        &mut self,
        now: Timestamp,
        token: Token,
        req: InitRequest,
        party: BillingParty,
        place: Placement,
        (locked, limit): (bool, Option<u64>),
        authorised: bool,
    ) {
        let reply = if req.call_limit > 0 && place.tracked >= req.call_limit as usize {
            InitReply::CallLimitReached
        } else if locked {
            InitReply::Locked
        } else if limit == Some(0) {
            InitReply::NoCredit
        } else if req.call_limit > 0 || limit.is_some() {
            InitReply::Limited
        } else {
            InitReply::NoLimit
        };
        match reply {
            InitReply::Limited => {
                let session = Session {
                    call_id: req.call_id,
                    party,
                    ruri: req.ruri.into(),
                    from: req.from.into(),
                    from_tag: req.from_tag.into(),
                    source_ip: req.source_ip.into(),
                    diverter: req.diverter.map(Into::into),
                    token: req.call_token.map(Into::into),
                    application: req.sip_application.map(Into::into),
                    prepaid: req.prepaid,
                    call_limit: req.call_limit,
                    limit,
                    dialog_id: None,
                    state: SessionState::Pending,
                    created: now,
                    answered: None,
                    deadline: None,
                    end_attempts: 0,
                };
                let setup = now.plus_millis(self.config.setup_timeout.as_millis() as u64);
                debug!(
                    "Call from {} to {} authorised, limit {} ({})",
                    session.party,
                    session.ruri,
                    limit.map_or("none".to_string(), |l| format!("{l} s")),
                    session.call_id
                );
                self.insert_session(place.hash, place.party_hash, session, Some(setup));
            }
            refused => {
                if refused != InitReply::NoLimit {
                    info!(
                        "Call from {party} to {} refused: {} ({})",
                        req.ruri,
                        refused.as_str(),
                        req.call_id
                    );
                }
                if authorised {
                    self.owe_debit_for(now, &req, &party, 0);
                }
            }
        }
        self.reply_init(token, reply);
    }

    // ---- start ------------------------------------------------------------

    fn start(&mut self, now: Timestamp, token: Token, req: StartRequest) {
        // One lookup: the session, its timer and its record are updated
        // through it.
        let hash = self.sessions.hash(&req.call_id);
        let Some(slot) = self.sessions.find_slot(hash, &req.call_id) else {
            debug!("start for an unknown call ({})", req.call_id);
            return self.reply(token, Reply::Start(Found::NotFound));
        };
        if slot.s.state != SessionState::Pending {
            debug!("start repeated, nothing changes ({})", req.call_id);
            return self.reply(token, Reply::Start(Found::Ok));
        }
        let s = Arc::make_mut(&mut slot.s);
        s.state = SessionState::InProgress;
        s.answered = Some(now);
        s.dialog_id = req.dialog_id.or(s.dialog_id);
        let deadline = match s.limit {
            Some(l) => now.plus_secs(l),
            None => now.plus_millis(self.config.stale_timeout.as_millis() as u64),
        };
        let prepaid = s.is_prepaid();
        // "Call from {user} to {ruri} started for maximum {l} seconds ({id})"
        // or "… started ({id})".
        let (user, ruri, id) = (s.party.user_host(), &*s.ruri, s.call_id.as_str());
        let buf = &mut self.log_buf;
        match s.limit {
            Some(l) => info!(
                "{}",
                compose(
                    buf,
                    &[
                        Text("Call from "),
                        Text(user),
                        Text(" to "),
                        Text(ruri),
                        Text(" started for maximum "),
                        Number(l),
                        Text(" seconds ("),
                        Text(id),
                        Text(")"),
                    ]
                )
            ),
            None => info!(
                "{}",
                compose(
                    buf,
                    &[
                        Text("Call from "),
                        Text(user),
                        Text(" to "),
                        Text(ruri),
                        Text(" started ("),
                        Text(id),
                        Text(")"),
                    ]
                )
            ),
        }
        let request = prepaid.then(|| AuthoriseRequest {
            call_id: s.call_id.clone(),
            party: s.party.clone(),
            to: s.ruri.to_string(),
            gateway: s.source_ip.to_string(),
            max_duration: self.config.prepaid_cap(),
            application: application(s.application.as_deref()),
            connected: true,
        });
        s.deadline = Some(deadline);
        arm(
            &mut self.timers,
            &mut slot.armed,
            &req.call_id,
            Some(deadline),
        );
        self.persist_hashed(hash, &req.call_id);
        if let Some(request) = request {
            let op = self.next_op;
            self.next_op += 1;
            self.ops.insert(
                op,
                AuthOp::Start {
                    call_id: req.call_id,
                },
            );
            let budget = self.config.rating_timeout;
            self.effects.push_back(Effect::Authorise {
                op,
                request,
                budget,
            });
        }
        self.reply(token, Reply::Start(Found::Ok));
    }

    fn finish_start(
        &mut self,
        now: Timestamp,
        call_id: &CallId,
        result: Result<Authorisation, RatingError>,
    ) {
        let Some(party) = self.sessions.get(call_id).map(|s| s.party.clone()) else {
            return;
        };
        match result {
            Ok(Authorisation {
                limit: RatedLimit::Seconds(n),
                ..
            }) => self.reset_party(now, &party, n.min(self.config.prepaid_cap()), call_id),
            Ok(_) => debug!("re-rating at answer changed nothing ({call_id})"),
            Err(e) => warn!("re-rating at answer failed, keeping the limit: {e} ({call_id})"),
        }
    }

    /// Every in-progress prepaid session of `party` now ends `secs` from now:
    /// the rating engine's shared limit for all of them running.
    fn reset_party(&mut self, now: Timestamp, party: &BillingParty, secs: u64, why: &CallId) {
        let ids: Vec<CallId> = self
            .parties
            .get(party)
            .map(<[_]>::to_vec)
            .unwrap_or_default();
        for id in ids {
            let Some(entry) = self.sessions.get_mut(&id) else {
                continue;
            };
            if entry.state != SessionState::InProgress || !entry.is_prepaid() {
                continue;
            }
            let Some(answered) = entry.answered else {
                continue;
            };
            let s = Arc::make_mut(entry);
            let deadline = now.plus_secs(secs);
            s.limit = Some(deadline.secs_since(answered));
            info!(
                "Shared balance of {party}: call ends in {secs} seconds, limit now {} seconds \
                 (after {why}) ({id})",
                deadline.secs_since(answered)
            );
            self.set_deadline(&id, Some(deadline));
            self.persist(&id);
        }
    }

    // ---- stop / terminate -------------------------------------------------

    fn stop(&mut self, now: Timestamp, token: Token, call_id: &CallId) {
        let Some(s) = self.remove_hashed(self.sessions.hash(call_id), call_id) else {
            debug!("stop for an unknown call ({call_id})");
            return self.reply(token, Reply::Stop(Found::NotFound));
        };
        match s.state {
            SessionState::Ending | SessionState::EndFailed | SessionState::Ended => {
                // The proxy confirms the end the daemon asked for. Like the
                // original (which forgot the call at expiry) answer Not found.
                info!(
                    "Call from {} to {} confirmed ended by the proxy ({call_id})",
                    s.party.user_host(),
                    &*s.ruri
                );
                self.reply(token, Reply::Stop(Found::NotFound));
            }
            SessionState::Pending | SessionState::InProgress => {
                let duration = duration_at(&s, now);
                match s.answered {
                    // "Call from {user} to {ruri} was stopped after
                    // {duration} seconds ({call_id})"
                    Some(_) => info!(
                        "{}",
                        compose(
                            &mut self.log_buf,
                            &[
                                Text("Call from "),
                                Text(s.party.user_host()),
                                Text(" to "),
                                Text(&s.ruri),
                                Text(" was stopped after "),
                                Number(duration),
                                Text(" seconds ("),
                                Text(call_id.as_str()),
                                Text(")"),
                            ]
                        )
                    ),
                    None => info!(
                        "Call from {} to {} canceled by user ({call_id})",
                        s.party.user_host(),
                        &*s.ruri
                    ),
                }
                if s.is_prepaid() {
                    self.owe_debit(now, &s, duration);
                }
                self.reply(token, Reply::Stop(Found::Ok));
            }
        }
    }

    fn terminate(&mut self, now: Timestamp, token: Token, call_id: &CallId) {
        let Some(s) = self.sessions.get(call_id) else {
            return self.reply(token, Reply::Terminate(Found::NotFound));
        };
        match s.state {
            SessionState::Pending | SessionState::InProgress => {
                let duration = duration_at(s, now);
                info!(
                    "Call from {} to {} terminated by administrator after {duration} seconds ({call_id})",
                    s.party.user_host(),
                    s.ruri
                );
                self.end_session(now, call_id, duration);
            }
            SessionState::EndFailed => self.send_end(call_id),
            SessionState::Ending | SessionState::Ended => {}
        }
        self.reply(token, Reply::Terminate(Found::Ok));
    }

    /// Asks the proxy to end the dialog and owes the debit of `duration`.
    fn end_session(&mut self, now: Timestamp, call_id: &CallId, duration: u64) {
        let Some(entry) = self.sessions.get_mut(call_id) else {
            return;
        };
        Arc::make_mut(entry).state = SessionState::Ending;
        if entry.is_prepaid() {
            let s = Arc::clone(entry);
            self.owe_debit(now, &s, duration);
        }
        self.set_deadline(call_id, None);
        self.persist(call_id);
        self.send_end(call_id);
    }

    fn send_end(&mut self, call_id: &CallId) {
        let Some(s) = self.sessions.get_mut(call_id).map(Arc::make_mut) else {
            return;
        };
        s.state = SessionState::Ending;
        s.end_attempts += 1;
        self.stats.end_requests += 1;
        let dialog = DialogRef {
            call_id: call_id.clone(),
            dialog_id: s.dialog_id,
        };
        self.effects.push_back(Effect::EndDialog(dialog));
    }

    /// Hands the engine the signalling backend's answer to [`Effect::EndDialog`].
    pub fn on_dialog_ended(
        &mut self,
        now: Timestamp,
        call_id: &CallId,
        result: Result<EndOutcome, SignallingError>,
    ) {
        let Some(s) = self.sessions.get(call_id) else {
            debug!("dialog end answered for a call already stopped ({call_id})");
            return;
        };
        if s.state != SessionState::Ending {
            return;
        }
        match result {
            Ok(outcome) => {
                if outcome == EndOutcome::NotFound {
                    info!("The proxy no longer had the dialog; call considered ended ({call_id})");
                }
                self.remove_session(call_id);
            }
            Err(e) => {
                self.stats.end_failures += 1;
                let attempts = s.end_attempts;
                let retry = self.config.retry_delay(attempts);
                error!(
                    "Could not end the dialog (attempt {attempts}), retrying in {} s: {e} ({call_id})",
                    retry.as_secs()
                );
                if let Some(s) = self.sessions.get_mut(call_id).map(Arc::make_mut) {
                    s.state = SessionState::EndFailed;
                }
                self.set_deadline(call_id, Some(now.plus_millis(retry.as_millis() as u64)));
                self.persist(call_id);
            }
        }
    }

    // ---- timers -----------------------------------------------------------

    /// Fires every deadline that is due at `now`.
    pub fn handle_timeout(&mut self, now: Timestamp) {
        let expired: Vec<u64> = self
            .held
            .iter()
            .filter(|(_, h)| h.deadline <= now)
            .map(|(seq, _)| *seq)
            .collect();
        for seq in expired {
            if let Some(h) = self.held.remove(&seq) {
                self.fail_held(h.op, "the release was not answered in time");
            }
        }
        while let Some((due, id)) = self.timers.first().cloned() {
            if due > now {
                break;
            }
            self.timers.pop_first();
            let Some(slot) = self.sessions.slot(&id) else {
                continue;
            };
            slot.armed = None;
            match slot.s.deadline {
                // Armed early: the deadline moved later since. Moved there.
                Some(d) if d > due => {
                    self.timers.insert((d, id));
                    slot.armed = Some(d);
                    continue;
                }
                Some(_) => {}
                None => continue,
            }
            self.stats.timers_fired += 1;
            let late = now.millis_since(due);
            self.stats.timer_lateness_ms += late;
            let bucket = TIMER_LATENESS_BOUNDS_MS
                .iter()
                .position(|&b| late <= b)
                .unwrap_or(TIMER_LATENESS_BOUNDS_MS.len());
            let buckets = &mut self.stats.timer_lateness_buckets;
            if buckets.len() <= TIMER_LATENESS_BOUNDS_MS.len() {
                buckets.resize(TIMER_LATENESS_BOUNDS_MS.len() + 1, 0);
            }
            buckets[bucket] += 1;
            let Some(s) = self.sessions.get_mut(&id).map(Arc::make_mut) else {
                continue;
            };
            s.deadline = None;
            match (s.state, s.answered, s.limit) {
                (SessionState::Pending, _, _) => {
                    self.stats.setup_timeouts += 1;
                    info!(
                        "Call from {} to {} not answered within {} seconds, released ({id})",
                        s.party.user_host(),
                        s.ruri,
                        self.config.setup_timeout.as_secs()
                    );
                    if let Some(s) = self.remove_session(&id) {
                        if s.is_prepaid() {
                            self.owe_debit(now, &s, 0);
                        }
                    }
                }
                (SessionState::InProgress, Some(answered), Some(limit)) => {
                    self.stats.expired += 1;
                    // Exactly the limit: not the time the BYEs take.
                    let duration = limit;
                    let _ = answered;
                    info!(
                        "Call from {} to {} disconnected by call control after {duration} seconds ({id})",
                        s.party.user_host(),
                        s.ruri
                    );
                    self.end_session(now, &id, duration);
                }
                (SessionState::InProgress, answered, None) => {
                    self.stats.stale += 1;
                    let duration = answered.map_or(0, |a| due.secs_since(a));
                    warn!(
                        "Call from {} to {} is stale after {duration} seconds, ending it ({id})",
                        s.party.user_host(),
                        s.ruri
                    );
                    self.end_session(now, &id, duration);
                }
                (SessionState::EndFailed, _, _) => self.send_end(&id),
                _ => {}
            }
        }
        if self.debits_paused_until.is_some_and(|t| t <= now) {
            self.debits_paused_until = None;
        }
        self.pump_debits(now);
    }

    fn set_deadline(&mut self, id: &CallId, deadline: Option<Timestamp>) {
        let Some(slot) = self.sessions.slot(id) else {
            return;
        };
        Arc::make_mut(&mut slot.s).deadline = deadline;
        arm(&mut self.timers, &mut slot.armed, id, deadline);
    }

    // ---- sessions ---------------------------------------------------------

    fn insert_session(
        &mut self,
        hash: u64,
        party_hash: u64,
        mut session: Session,
        deadline: Option<Timestamp>,
    ) {
        let id = session.call_id.clone();
        // One allocation of the party's name, shared by all its sessions.
        let party_pos = self.parties.add(party_hash, &mut session.party, id.clone());
        session.deadline = deadline;
        if let Some(d) = deadline {
            self.timers.insert((d, id.clone()));
        }
        let slot = Slot {
            s: Arc::new(session),
            hash,
            armed: deadline,
            party_hash,
            party_pos,
        };
        if let Some(old) = self.sessions.insert(hash, slot) {
            // The engine removes a session before it tracks another one
            // with the same Call-ID; should one be replaced all the same, it
            // leaves its party's sessions too.
            self.unlist(old.party_hash, &old.s, old.party_pos);
        }
        self.dirty.push(Dirty {
            id,
            hash,
            removed: false,
            new: true,
        });
    }

    /// Takes a session out of its party's sessions (`pos` is where it is
    /// there), and notes the new position of the one moved into its place.
    fn unlist(&mut self, party_hash: u64, s: &Session, pos: usize) {
        if let Some(moved) = self.parties.remove(party_hash, &s.party, &s.call_id, pos) {
            if let Some(slot) = self.sessions.slot(&moved) {
                slot.party_pos = pos;
            }
        }
    }

    fn remove_session(&mut self, id: &CallId) -> Option<Arc<Session>> {
        self.remove_hashed(self.sessions.hash(id), id)
    }

    /// [`Engine::remove_session`] with the Call-ID's hash at hand.
    fn remove_hashed(&mut self, hash: u64, id: &CallId) -> Option<Arc<Session>> {
        let Slot {
            s,
            armed,
            party_hash,
            party_pos,
            ..
        } = self.sessions.remove(hash, id)?;
        if let Some(a) = armed {
            self.timers.remove(&(a, id.clone()));
        }
        self.unlist(party_hash, &s, party_pos);
        self.dirty.push(Dirty {
            id: id.clone(),
            hash,
            removed: true,
            new: false,
        });
        Some(s)
    }

    fn persist(&mut self, id: &CallId) {
        self.persist_hashed(self.sessions.hash(id), id);
    }

    /// [`Engine::persist`] with the Call-ID's hash at hand.
    fn persist_hashed(&mut self, hash: u64, id: &CallId) {
        if !self.dirty.last().is_some_and(|d| d.id == *id && !d.removed) {
            self.dirty.push(Dirty {
                id: id.clone(),
                hash,
                removed: false,
                new: false,
            });
        }
    }

    /// Tracked sessions of a billing party.
    pub fn party_sessions(&self, party: &BillingParty) -> usize {
        self.parties.get(party).map_or(0, <[_]>::len)
    }

    // ---- debits -----------------------------------------------------------

    fn owe_debit(&mut self, now: Timestamp, s: &Session, duration: u64) {
        let request = DebitRequest {
            call_id: s.call_id.clone(),
            party: s.party.clone(),
            to: s.ruri.to_string(),
            gateway: s.source_ip.to_string(),
            duration,
            application: application(s.application.as_deref()),
        };
        self.push_debit(now, request);
    }

    fn owe_debit_for(
        &mut self,
        now: Timestamp,
        req: &InitRequest,
        party: &BillingParty,
        duration: u64,
    ) {
        let request = DebitRequest {
            call_id: req.call_id.clone(),
            party: party.clone(),
            to: req.ruri.clone(),
            gateway: req.source_ip.clone(),
            duration,
            application: application(req.sip_application.as_deref()),
        };
        self.push_debit(now, request);
    }

    fn push_debit(&mut self, now: Timestamp, request: DebitRequest) {
        let seq = self.next_debit;
        self.next_debit += 1;
        let owed = OwedDebit {
            seq,
            request,
            ended: now,
        };
        self.new_debits.push(owed.clone());
        self.debits.insert(seq, DebitState::new(owed));
        self.pump_debits(now);
    }

    /// Starts owed debits, oldest first, up to the window, unless paused by a
    /// failure (then they wait, still in order, for the retry deadline).
    fn pump_debits(&mut self, now: Timestamp) {
        if self.debits_paused_until.is_some() {
            return;
        }
        self.debit_wakeup = None;
        for (seq, d) in self.debits.iter_mut() {
            if let Some(t) = d.retry_at.filter(|t| *t > now) {
                self.debit_wakeup = Some(self.debit_wakeup.map_or(t, |w| w.min(t)));
                continue;
            }
            if d.in_flight || self.debits_in_flight >= self.config.debit_window.max(1) {
                continue;
            }
            d.in_flight = true;
            self.debits_in_flight += 1;
            self.effects.push_back(Effect::Debit {
                seq: *seq,
                request: d.owed.request.clone(),
            });
        }
    }

    /// Hands the engine the rating backend's answer to [`Effect::Debit`].
    pub fn on_debited(
        &mut self,
        now: Timestamp,
        seq: u64,
        result: Result<DebitOutcome, RatingError>,
    ) {
        if let Some(h) = self.held.remove(&seq) {
            match &result {
                Ok(_) => {
                    let spent = std::time::Duration::from_millis(now.millis_since(h.arrived));
                    let budget = self.init_budget().saturating_sub(spent);
                    let (op, request) = (h.op, h.request);
                    self.effects.push_back(Effect::Authorise {
                        op,
                        request,
                        budget,
                    });
                }
                Err(e) => self.fail_held(h.op, &e.to_string()),
            }
        }
        let Some(d) = self.debits.get_mut(&seq) else {
            return;
        };
        if d.in_flight {
            d.in_flight = false;
            self.debits_in_flight -= 1;
        }
        let req = &d.owed.request;
        match result {
            Err(e) => {
                d.attempts += 1;
                self.stats.debit_retries += 1;
                let delay = self.config.retry_delay(d.attempts);
                warn!(
                    "Debit of {} seconds for {} not delivered (attempt {}), retrying in {} ms: {e} ({})",
                    req.duration,
                    req.party,
                    d.attempts,
                    delay.as_millis(),
                    req.call_id
                );
                let until = now.plus_millis(delay.as_millis() as u64);
                if matches!(e, RatingError::Unreachable(_) | RatingError::Timeout) {
                    // The rating engine is out of reach: every debit waits,
                    // so they still go out in the order owed.
                    self.debits_paused_until =
                        Some(self.debits_paused_until.map_or(until, |t| t.max(until)));
                } else {
                    // The engine answered, with an error about this debit:
                    // retry it on its own, without holding up the others.
                    d.retry_at = Some(until);
                    self.pump_debits(now);
                }
                return;
            }
            Ok(DebitOutcome::Debited {
                max_session_time,
                price,
            }) => {
                self.stats.debits_ok += 1;
                if req.duration > 0 {
                    info!(
                        "Debited {} seconds from {}, call price is {} ({})",
                        req.duration,
                        req.party,
                        price.as_deref().unwrap_or("unknown"),
                        req.call_id
                    );
                } else {
                    debug!("Released authorisation of {} ({})", req.party, req.call_id);
                }
                if let Some(n) = max_session_time {
                    let (party, id) = (req.party.clone(), req.call_id.clone());
                    let cap = self.config.prepaid_cap();
                    self.reset_party(now, &party, n.min(cap), &id);
                }
            }
            Ok(DebitOutcome::Failed { reason }) => {
                self.stats.debits_failed += 1;
                if req.duration > 0 {
                    error!(
                        "Debit of {} seconds from {} failed: {reason} ({})",
                        req.duration, req.party, req.call_id
                    );
                } else {
                    debug!(
                        "Release of {} answered {reason} ({})",
                        req.party, req.call_id
                    );
                }
            }
            Ok(DebitOutcome::NotPrepaid) => {
                if req.duration > 0 {
                    warn!(
                        "Debit of {} seconds: {} is not prepaid ({})",
                        req.duration, req.party, req.call_id
                    );
                }
            }
        }
        self.debits.remove(&seq);
        self.debits_done.push(seq);
        self.pump_debits(now);
    }

    // ---- restart ----------------------------------------------------------

    /// Restores saved state at start-up. Timers are re-armed by the wall
    /// clock: sessions whose limit passed while the daemon was down end at
    /// the next [`Engine::handle_timeout`] (dialog ended, limit debited), and
    /// unanswered ones past the setup timeout are released. Sessions that
    /// were being ended are asked to end again; owed debits go out in order.
    pub fn restore(&mut self, now: Timestamp, snapshot: Snapshot) {
        for mut s in snapshot.sessions {
            let deadline = match s.state {
                SessionState::Pending => Some(
                    s.created
                        .plus_millis(self.config.setup_timeout.as_millis() as u64),
                ),
                SessionState::InProgress => s.deadline,
                SessionState::Ending | SessionState::EndFailed => {
                    s.state = SessionState::EndFailed;
                    Some(now)
                }
                SessionState::Ended => continue,
            };
            s.deadline = None;
            info!(
                "Restored {} session of {} ({})",
                s.state,
                s.party.user_host(),
                s.call_id
            );
            let hash = self.sessions.hash(&s.call_id);
            let party_hash = self.parties.hash(s.party.as_str());
            let changed = s.state == SessionState::EndFailed;
            self.insert_session(hash, party_hash, s, deadline);
            if !changed {
                // The store has it as it is: no need to record it again (a
                // restart with many sessions would write one huge record).
                self.dirty.pop();
            } else if let Some(d) = self.dirty.last_mut() {
                d.new = false;
            }
        }
        for owed in snapshot.debits {
            self.next_debit = self.next_debit.max(owed.seq + 1);
            info!(
                "Restored owed debit of {} seconds for {} ({})",
                owed.request.duration, owed.request.party, owed.request.call_id
            );
            self.debits.insert(owed.seq, DebitState::new(owed));
        }
        self.pump_debits(now);
    }

    /// Reconciles restored sessions with the proxy's dialog list: an answered
    /// session whose dialog the proxy no longer has ended while the daemon was
    /// down. It is debited for the time it is known to have run (until
    /// `down_since`, capped by its limit), which never overcharges.
    pub fn reconcile(&mut self, now: Timestamp, live: &[CallId], down_since: Timestamp) {
        self.reconcile_dialogs(
            now,
            &live
                .iter()
                .map(|c| LiveDialog {
                    call_id: c.clone(),
                    dialog_id: None,
                    answered: None,
                })
                .collect::<Vec<_>>(),
            down_since,
        )
    }

    /// [`Engine::reconcile`] with the dialogs' states: a restored session
    /// still pending whose dialog the proxy lists as answered (its `start`
    /// was lost while the daemon was down) is started at its real answer
    /// time, so it is limited and charged like any other call.
    pub fn reconcile_dialogs(
        &mut self,
        now: Timestamp,
        live: &[LiveDialog],
        down_since: Timestamp,
    ) {
        for d in live {
            let Some(answered) = d.answered else { continue };
            let Some(entry) = self.sessions.get_mut(&d.call_id) else {
                continue;
            };
            if entry.state != SessionState::Pending {
                continue;
            }
            let s = Arc::make_mut(entry);
            s.state = SessionState::InProgress;
            s.answered = Some(answered);
            s.dialog_id = d.dialog_id.or(s.dialog_id);
            let deadline = match s.limit {
                Some(l) => answered.plus_secs(l),
                None => answered.plus_millis(self.config.stale_timeout.as_millis() as u64),
            };
            warn!(
                "Call from {} to {} was answered while call control was down; timing it from                  its answer ({})",
                s.party.user_host(),
                s.ruri,
                d.call_id
            );
            let id = d.call_id.clone();
            self.set_deadline(&id, Some(deadline));
            self.persist(&id);
        }
        let live: Vec<CallId> = live.iter().map(|d| d.call_id.clone()).collect();
        self.reconcile_ended(now, &live, down_since);
    }

    fn reconcile_ended(&mut self, now: Timestamp, live: &[CallId], down_since: Timestamp) {
        let live: std::collections::HashSet<&CallId> = live.iter().collect();
        let gone: Vec<CallId> = self
            .sessions
            .values()
            .filter(|s| s.state == SessionState::InProgress && !live.contains(&s.call_id))
            .map(|s| s.call_id.clone())
            .collect();
        for id in gone {
            if let Some(s) = self.remove_session(&id) {
                let duration = duration_at(&s, down_since);
                warn!(
                    "Call from {} to {} ended while call control was down; debiting {duration} \
                     seconds ({id})",
                    s.party.user_host(),
                    s.ruri
                );
                if s.is_prepaid() {
                    self.owe_debit(now, &s, duration);
                }
            }
        }
    }
}

/// The longest Call-ID + party + R-URI + source IP (bytes) of a prepaid call:
/// the rating engine takes each read of at most 4096 bytes as one request,
/// and rating clients may escape bytes (up to 3x).
pub const MAX_RATED_REQUEST: usize = 1200;

/// Keeps `id`'s entry in the timer set at or before `deadline` (none when
/// `None`). A deadline that moves later leaves the entry where it is: when
/// it comes due, `handle_timeout` moves it to the deadline. So a call
/// answered before its setup timeout, then stopped, costs one insertion and
/// one removal, not two of each.
fn arm(
    timers: &mut BTreeSet<(Timestamp, CallId)>,
    armed: &mut Option<Timestamp>,
    id: &CallId,
    deadline: Option<Timestamp>,
) {
    match (*armed, deadline) {
        (Some(a), Some(d)) if a <= d => {}
        (old, new) => {
            if let Some(a) = old {
                timers.remove(&(a, id.clone()));
            }
            if let Some(d) = new {
                timers.insert((d, id.clone()));
            }
            *armed = new;
        }
    }
}

/// A piece of a log line for [`compose`].
enum Piece<'a> {
    Text(&'a str),
    Number(u64),
}
use Piece::{Number, Text};

/// Writes a log line into `buf` (cleared first) and returns it: the lines
/// logged for every call are handed to the logger as one string, without
/// the `Formatter` machinery (padding, integer formatting) of one argument
/// each. Same text as the equivalent `format_args!`. Call it only where the
/// line is logged (as an argument of `info!`, which evaluates it only when
/// the level is enabled).
fn compose<'b>(buf: &'b mut String, pieces: &[Piece<'_>]) -> &'b str {
    buf.clear();
    for piece in pieces {
        match piece {
            Text(s) => buf.push_str(s),
            Number(n) => {
                let mut digits = [0u8; 20];
                let mut i = digits.len();
                let mut v = *n;
                loop {
                    i -= 1;
                    digits[i] = b'0' + (v % 10) as u8;
                    v /= 10;
                    if v == 0 {
                        break;
                    }
                }
                for &d in &digits[i..] {
                    buf.push(char::from(d));
                }
            }
        }
    }
    buf
}

/// Parties without sessions kept in any case (see `Parties::collect`).
const EMPTY_PARTIES_KEPT: usize = 1024;

/// A session changed (or removed) since the last `take_changes`.
#[derive(Debug)]
struct Dirty {
    id: CallId,
    /// The Call-ID's hash in [`Sessions`].
    hash: u64,
    removed: bool,
    /// Created by this batch: the store gets the whole session, not an
    /// update of one it has.
    new: bool,
}

/// The sessions by Call-ID. The engine hashes a request's Call-ID once
/// (SipHash with random keys, as `HashMap` does: Call-IDs are chosen by
/// callers) and reuses the hash for every lookup the request makes and for
/// the store record of the batch.
#[derive(Debug, Default)]
struct Sessions {
    table: hashbrown::HashTable<Slot>,
    keys: std::hash::RandomState,
}

/// A session and its entry in the timer set.
#[derive(Debug)]
struct Slot {
    s: Arc<Session>,
    /// The Call-ID's hash. Kept: when the table grows, each slot moves by
    /// its hash, and recomputing it would read every session's Call-ID (a
    /// few cache misses each) and hash it: growing past 114,688 sessions
    /// held one request 59–100 ms, every connection waiting behind it.
    hash: u64,
    /// Where the session's entry in `Engine::timers` is: at its deadline, or
    /// before it when the deadline moved later since (the entry is moved
    /// when it comes due, see `Engine::arm`). `None`: no entry.
    armed: Option<Timestamp>,
    /// The hash of the session's party in `Engine::parties`.
    party_hash: u64,
    /// Where the session is in its party's sessions there.
    party_pos: usize,
}

/// Where the session of an `init` goes: its Call-ID's hash, its party's, and
/// how many tracked sessions the party has.
#[derive(Debug, Clone, Copy)]
struct Placement {
    hash: u64,
    party_hash: u64,
    tracked: usize,
}

/// The tracked sessions of each billing party, hashed like [`Sessions`]
/// (once per `init`; a session keeps its party's hash for its removal).
#[derive(Debug, Default)]
struct Parties {
    table: hashbrown::HashTable<Party>,
    keys: std::hash::RandomState,
    /// Entries without sessions.
    empty: usize,
}

/// A billing party and its tracked sessions.
#[derive(Debug)]
struct Party {
    /// The name's hash: kept, so that the table grows without reading and
    /// hashing every name again (see [`Slot::hash`]).
    hash: u64,
    name: BillingParty,
    ids: Vec<CallId>,
}

impl Parties {
    fn hash(&self, party: &str) -> u64 {
        std::hash::BuildHasher::hash_one(&self.keys, party)
    }
    fn find(&self, hash: u64, party: &str) -> Option<&Party> {
        self.table.find(hash, |p| p.name.as_str() == party)
    }
    fn get(&self, party: &BillingParty) -> Option<&[CallId]> {
        let found = self.find(self.hash(party.as_str()), party.as_str())?;
        Some(&found.ids)
    }
    /// Adds `id` to `party`'s sessions, and makes `party` the shared name.
    /// Returns where `id` is in them.
    fn add(&mut self, hash: u64, party: &mut BillingParty, id: CallId) -> usize {
        let entry = self.table.entry(hash, |p| p.name == *party, |p| p.hash);
        match entry {
            hashbrown::hash_table::Entry::Occupied(mut o) => {
                let Party { name, ids, .. } = o.get_mut();
                *party = name.clone();
                if ids.is_empty() {
                    self.empty = self.empty.saturating_sub(1);
                }
                ids.push(id);
                ids.len() - 1
            }
            hashbrown::hash_table::Entry::Vacant(v) => {
                v.insert(Party {
                    hash,
                    name: party.clone(),
                    ids: vec![id],
                });
                0
            }
        }
    }
    /// Removes `id`, found at `pos` in `party`'s sessions, by moving the
    /// last of them into its place: the same cost whatever the number of
    /// calls a party has in progress (a trunk's can be thousands). Returns
    /// the session moved to `pos`, if any, for the caller to note where it
    /// is now. A party left without sessions keeps its entry until
    /// [`Parties::collect`].
    fn remove(
        &mut self,
        hash: u64,
        party: &BillingParty,
        id: &CallId,
        pos: usize,
    ) -> Option<CallId> {
        let ids = &mut self.table.find_mut(hash, |p| p.name == *party)?.ids;
        let pos = if ids.get(pos) == Some(id) {
            pos
        } else {
            // The engine keeps every session's position up to date: this
            // is a bug, answered by a search rather than a wrong removal.
            debug_assert!(false, "{id} is not at {pos} in the sessions of {party}");
            ids.iter().position(|c| c == id)?
        };
        ids.swap_remove(pos);
        let moved = ids.get(pos).cloned();
        if ids.is_empty() {
            self.empty += 1;
            self.collect();
        }
        moved
    }
    /// Forgets the parties without sessions once they outnumber those with
    /// sessions (and are more than [`EMPTY_PARTIES_KEPT`]): memory stays
    /// bounded by the parties in use, and the cost is amortised.
    fn collect(&mut self) {
        if self.empty > EMPTY_PARTIES_KEPT && self.empty * 2 > self.table.len() {
            self.table.retain(|p| !p.ids.is_empty());
            self.empty = 0;
        }
    }
}

impl Sessions {
    fn hash<Q: std::borrow::Borrow<str> + ?Sized>(&self, id: &Q) -> u64 {
        std::hash::BuildHasher::hash_one(&self.keys, id.borrow())
    }
    fn len(&self) -> usize {
        self.table.len()
    }
    fn is_empty(&self) -> bool {
        self.table.is_empty()
    }
    fn values(&self) -> impl Iterator<Item = &Arc<Session>> {
        self.table.iter().map(|slot| &slot.s)
    }
    fn find<Q: std::borrow::Borrow<str> + ?Sized>(
        &self,
        hash: u64,
        id: &Q,
    ) -> Option<&Arc<Session>> {
        let id = id.borrow();
        let slot = self
            .table
            .find(hash, |slot| slot.s.call_id.as_str() == id)?;
        Some(&slot.s)
    }
    fn find_slot<Q: std::borrow::Borrow<str> + ?Sized>(
        &mut self,
        hash: u64,
        id: &Q,
    ) -> Option<&mut Slot> {
        let id = id.borrow();
        self.table
            .find_mut(hash, |slot| slot.s.call_id.as_str() == id)
    }
    fn find_mut<Q: std::borrow::Borrow<str> + ?Sized>(
        &mut self,
        hash: u64,
        id: &Q,
    ) -> Option<&mut Arc<Session>> {
        Some(&mut self.find_slot(hash, id)?.s)
    }
    fn get<Q: std::borrow::Borrow<str> + ?Sized>(&self, id: &Q) -> Option<&Arc<Session>> {
        self.find(self.hash(id), id)
    }
    fn get_mut<Q: std::borrow::Borrow<str> + ?Sized>(
        &mut self,
        id: &Q,
    ) -> Option<&mut Arc<Session>> {
        self.find_mut(self.hash(id), id)
    }
    fn slot<Q: std::borrow::Borrow<str> + ?Sized>(&mut self, id: &Q) -> Option<&mut Slot> {
        self.find_slot(self.hash(id), id)
    }
    /// Inserts (or replaces) the session whose Call-ID hashes to `hash`;
    /// returns the one replaced.
    fn insert(&mut self, hash: u64, slot: Slot) -> Option<Slot> {
        let entry = self
            .table
            .entry(hash, |e| e.s.call_id == slot.s.call_id, |e| e.hash);
        match entry {
            hashbrown::hash_table::Entry::Occupied(mut o) => {
                Some(std::mem::replace(o.get_mut(), slot))
            }
            hashbrown::hash_table::Entry::Vacant(v) => {
                v.insert(slot);
                None
            }
        }
    }
    fn remove(&mut self, hash: u64, id: &CallId) -> Option<Slot> {
        let entry = self.table.find_entry(hash, |e| e.s.call_id == *id).ok()?;
        Some(entry.remove().0)
    }
}

/// A session ordered by `(created, call_id)`, for [`Picker`].
struct ByAge<'a>(&'a Session);

impl PartialEq for ByAge<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other).is_eq()
    }
}
impl Eq for ByAge<'_> {}
impl PartialOrd for ByAge<'_> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for ByAge<'_> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.0.created, &self.0.call_id).cmp(&(other.0.created, &other.0.call_id))
    }
}

/// Keeps the `keep` oldest of the sessions pushed, without sorting them all:
/// a max-heap of `keep` references for small windows (most sessions cost one
/// comparison with its top), else every reference and a linear selection.
enum Picker<'a> {
    Heap(std::collections::BinaryHeap<ByAge<'a>>, usize),
    All(Vec<&'a Session>, usize),
}

/// Windows up to this size use the heap.
const HEAP_WINDOW: usize = 4096;

impl<'a> Picker<'a> {
    fn new(keep: usize) -> Self {
        if keep <= HEAP_WINDOW {
            Picker::Heap(std::collections::BinaryHeap::with_capacity(keep), keep)
        } else {
            Picker::All(Vec::new(), keep)
        }
    }

    fn push(&mut self, s: &'a Session) {
        match self {
            Picker::Heap(heap, keep) => {
                if heap.len() < *keep {
                    heap.push(ByAge(s));
                } else if let Some(mut top) = heap.peek_mut() {
                    if ByAge(s) < *top {
                        *top = ByAge(s);
                    }
                }
            }
            Picker::All(v, _) => v.push(s),
        }
    }

    /// The kept sessions from position `skip` on, oldest first.
    fn into_sorted(self, skip: usize) -> Vec<&'a Session> {
        match self {
            Picker::Heap(heap, _) => heap
                .into_sorted_vec()
                .into_iter()
                .skip(skip)
                .map(|k| k.0)
                .collect(),
            Picker::All(mut v, keep) => {
                let order = |a: &&Session, b: &&Session| ByAge(a).cmp(&ByAge(b));
                if keep < v.len() {
                    v.select_nth_unstable_by(keep, order);
                    v.truncate(keep);
                }
                if skip >= v.len() {
                    return Vec::new();
                }
                if skip > 0 {
                    v.select_nth_unstable_by(skip, order);
                }
                let mut page = v.split_off(skip);
                page.sort_unstable_by(order);
                page
            }
        }
    }
}

/// Whether `hay` contains `needle_lower` (already lower-case), ignoring case;
/// no allocation when both are ASCII (candidates found by `memchr` on the
/// needle's first byte in either case).
fn contains_ignore_case(hay: &str, needle_lower: &str) -> bool {
    let (h, n) = (hay.as_bytes(), needle_lower.as_bytes());
    let Some(&first) = n.first() else {
        return true;
    };
    if !(hay.is_ascii() && needle_lower.is_ascii()) {
        return hay.to_lowercase().contains(needle_lower);
    }
    if h.len() < n.len() {
        return false;
    }
    let last_start = h.len() - n.len();
    memchr::memchr2_iter(first, first.to_ascii_uppercase(), &h[..=last_start])
        .any(|i| h[i..i + n.len()].eq_ignore_ascii_case(n))
}

fn rated_request_len(req: &InitRequest, party: &BillingParty) -> usize {
    req.call_id.as_str().len()
        + party.as_str().len()
        + req.ruri.len()
        + req.source_ip.len()
        + req.sip_application.as_deref().map_or(0, str::len)
}

/// Seconds a session has run at `now`, capped by its limit.
fn duration_at(s: &Session, now: Timestamp) -> u64 {
    let d = s.answered.map_or(0, |a| now.secs_since(a));
    s.limit.map_or(d, |l| d.min(l))
}

fn application(app: Option<&str>) -> String {
    app.filter(|a| !a.is_empty()).unwrap_or("audio").to_string()
}
