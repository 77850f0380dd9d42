//! Scriptable fakes for tests (feature `test-kit`), in the manner of
//! tower-test: a test decides what a backend answers, when, and sees what it
//! was asked. The mockall mocks (feature `mock`) are `MockRatingBackend`,
//! `MockSignallingBackend`, `MockSessionStore` and `MockClock`.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use crate::error::{RatingError, SignallingError};
use crate::rating::{Authorisation, AuthoriseRequest, DebitOutcome, DebitRequest, RatingBackend};
use crate::signalling::{DialogRef, EndOutcome, SignallingBackend};

/// One scripted answer: what to return and after how long (virtual time).
#[derive(Debug, Clone)]
pub struct Scripted<T> {
    /// The answer.
    pub answer: T,
    /// How long to wait before answering.
    pub delay: Duration,
}

impl<T> Scripted<T> {
    /// Answer at once.
    pub fn now(answer: T) -> Self {
        Scripted {
            answer,
            delay: Duration::ZERO,
        }
    }
    /// Answer after `delay`.
    pub fn after(delay: Duration, answer: T) -> Self {
        Scripted { answer, delay }
    }
}

type AuthAnswer = Result<Authorisation, RatingError>;
type DebitAnswer = Result<DebitOutcome, RatingError>;

#[derive(Default)]
struct RatingScript {
    default_auth: Option<Scripted<AuthAnswer>>,
    auth_queue: VecDeque<Scripted<AuthAnswer>>,
    auth_by_call: HashMap<String, VecDeque<Scripted<AuthAnswer>>>,
    default_debit: Option<Scripted<DebitAnswer>>,
    debit_queue: VecDeque<Scripted<DebitAnswer>>,
    authorisations: Vec<AuthoriseRequest>,
    debits: Vec<DebitRequest>,
}

/// A rating backend whose answers, delays and failures the test controls.
/// Answers are taken from, in order: a queue for that Call-ID, the general
/// queue, the default (prepaid 3600 s / debited, unless changed).
#[derive(Clone, Default)]
pub struct FakeRating {
    inner: Arc<Mutex<RatingScript>>,
}

impl FakeRating {
    /// A fake that authorises 3600 s and debits successfully.
    pub fn new() -> Self {
        Self::default()
    }
    fn with<R>(&self, f: impl FnOnce(&mut RatingScript) -> R) -> R {
        f(&mut self.inner.lock().unwrap_or_else(|e| e.into_inner()))
    }
    /// The answer to every authorisation not otherwise scripted.
    pub fn set_default_authorise(&self, a: Scripted<AuthAnswer>) {
        self.with(|s| s.default_auth = Some(a));
    }
    /// The answer to the next authorisation.
    pub fn push_authorise(&self, a: Scripted<AuthAnswer>) {
        self.with(|s| s.auth_queue.push_back(a));
    }
    /// The answer to the next authorisation of this Call-ID.
    pub fn push_authorise_for(&self, call_id: &str, a: Scripted<AuthAnswer>) {
        self.with(|s| {
            s.auth_by_call
                .entry(call_id.to_string())
                .or_default()
                .push_back(a)
        });
    }
    /// The answer to every debit not otherwise scripted.
    pub fn set_default_debit(&self, a: Scripted<DebitAnswer>) {
        self.with(|s| s.default_debit = Some(a));
    }
    /// The answer to the next debit.
    pub fn push_debit(&self, a: Scripted<DebitAnswer>) {
        self.with(|s| s.debit_queue.push_back(a));
    }
    /// Every authorisation asked so far.
    pub fn authorisations(&self) -> Vec<AuthoriseRequest> {
        self.with(|s| s.authorisations.clone())
    }
    /// Every debit attempt so far (retries included).
    pub fn debits(&self) -> Vec<DebitRequest> {
        self.with(|s| s.debits.clone())
    }
}

#[async_trait]
impl RatingBackend for FakeRating {
    async fn authorise(&self, req: &AuthoriseRequest) -> Result<Authorisation, RatingError> {
        let scripted = self.with(|s| {
            s.authorisations.push(req.clone());
            s.auth_by_call
                .get_mut(req.call_id.as_str())
                .and_then(VecDeque::pop_front)
                .or_else(|| s.auth_queue.pop_front())
                .or_else(|| s.default_auth.clone())
                .unwrap_or_else(|| Scripted::now(Ok(Authorisation::prepaid(3600))))
        });
        tokio::time::sleep(scripted.delay).await;
        scripted.answer
    }
    async fn debit(&self, req: &DebitRequest) -> Result<DebitOutcome, RatingError> {
        let scripted = self.with(|s| {
            s.debits.push(req.clone());
            s.debit_queue
                .pop_front()
                .or_else(|| s.default_debit.clone())
                .unwrap_or_else(|| {
                    Scripted::now(Ok(DebitOutcome::Debited {
                        max_session_time: None,
                        price: None,
                    }))
                })
        });
        tokio::time::sleep(scripted.delay).await;
        scripted.answer
    }
}

type EndAnswer = Result<EndOutcome, SignallingError>;

#[derive(Default)]
struct SignallingScript {
    queue: VecDeque<Scripted<EndAnswer>>,
    default: Option<Scripted<EndAnswer>>,
    asked: Vec<DialogRef>,
}

/// A signalling backend that records every dialog it is asked to end and
/// answers as scripted (by default: ended, at once).
#[derive(Clone, Default)]
pub struct RecordingSignalling {
    inner: Arc<Mutex<SignallingScript>>,
}

impl RecordingSignalling {
    /// A recorder that answers `Ended`.
    pub fn new() -> Self {
        Self::default()
    }
    fn with<R>(&self, f: impl FnOnce(&mut SignallingScript) -> R) -> R {
        f(&mut self.inner.lock().unwrap_or_else(|e| e.into_inner()))
    }
    /// The answer to the next request.
    pub fn push(&self, a: Scripted<EndAnswer>) {
        self.with(|s| s.queue.push_back(a));
    }
    /// The answer to every request not otherwise scripted.
    pub fn set_default(&self, a: Scripted<EndAnswer>) {
        self.with(|s| s.default = Some(a));
    }
    /// Every dialog asked to end, in order.
    pub fn ended(&self) -> Vec<DialogRef> {
        self.with(|s| s.asked.clone())
    }
}

#[async_trait]
impl SignallingBackend for RecordingSignalling {
    async fn end_dialog(&self, dialog: &DialogRef) -> Result<EndOutcome, SignallingError> {
        let scripted = self.with(|s| {
            s.asked.push(dialog.clone());
            s.queue
                .pop_front()
                .or_else(|| s.default.clone())
                .unwrap_or_else(|| Scripted::now(Ok(EndOutcome::Ended)))
        });
        tokio::time::sleep(scripted.delay).await;
        scripted.answer
    }
}
