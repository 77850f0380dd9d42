//! A harness that drives the sans-IO engine by hand: the test is the driver.
#![allow(dead_code)]

use callcontrol_core::engine::{Effect, Engine};
use callcontrol_core::prelude::*;
use callcontrol_core::store::MemoryStore;

pub const T0: Timestamp = Timestamp(1_700_000_000_000);

pub struct Harness {
    pub engine: Engine,
    pub now: Timestamp,
    pub store: MemoryStore,
    next_token: u64,
    /// Effects not consumed yet.
    pub pending: Vec<Effect>,
}

impl Harness {
    pub fn new(config: EngineConfig) -> Self {
        Harness {
            engine: Engine::new(config),
            now: T0,
            store: MemoryStore::new(),
            next_token: 1,
            pending: Vec::new(),
        }
    }

    pub fn fixed(limit: Option<u64>) -> Self {
        Self::new(EngineConfig {
            limit,
            ..Default::default()
        })
    }

    fn pump(&mut self) {
        let changes = self.engine.take_changes();
        self.store.apply(&changes).unwrap();
        while let Some(e) = self.engine.poll_effect() {
            self.pending.push(e);
        }
    }

    /// Sends a request and returns its reply if it came at once.
    pub fn request(&mut self, req: Request) -> Option<Reply> {
        let token = self.next_token;
        self.next_token += 1;
        self.engine.handle(self.now, token, req);
        self.pump();
        self.take_reply(token)
    }

    pub fn take_reply(&mut self, token: u64) -> Option<Reply> {
        let i = self
            .pending
            .iter()
            .position(|e| matches!(e, Effect::Reply { token: t, .. } if *t == token))?;
        match self.pending.remove(i) {
            Effect::Reply { reply, .. } => Some(reply),
            _ => unreachable!(),
        }
    }

    pub fn last_token(&self) -> u64 {
        self.next_token - 1
    }

    pub fn init(&mut self, req: InitRequest) -> Option<InitReply> {
        match self.request(Request::Init(req))? {
            Reply::Init(r) => Some(r),
            other => panic!("unexpected reply {other:?}"),
        }
    }

    /// init of a non-prepaid call: the reply comes at once.
    pub fn init_now(&mut self, req: InitRequest) -> InitReply {
        self.init(req).expect("immediate init reply")
    }

    pub fn start(&mut self, call_id: &str, dialog: Option<DialogId>) -> Found {
        let req = StartRequest {
            call_id: CallId::new(call_id),
            dialog_id: dialog,
        };
        match self.request(Request::Start(req)) {
            Some(Reply::Start(f)) => f,
            other => panic!("unexpected reply {other:?}"),
        }
    }

    pub fn stop(&mut self, call_id: &str) -> Found {
        match self.request(Request::Stop {
            call_id: CallId::new(call_id),
        }) {
            Some(Reply::Stop(f)) => f,
            other => panic!("unexpected reply {other:?}"),
        }
    }

    pub fn terminate(&mut self, call_id: &str) -> Found {
        match self.request(Request::Terminate {
            call_id: CallId::new(call_id),
        }) {
            Some(Reply::Terminate(f)) => f,
            other => panic!("unexpected reply {other:?}"),
        }
    }

    pub fn list(&mut self, user: Option<&str>) -> Vec<SessionInfo> {
        match self.request(Request::List {
            user: user.map(str::to_string),
        }) {
            Some(Reply::Sessions(v)) => v,
            other => panic!("unexpected reply {other:?}"),
        }
    }

    /// Moves time forward, firing due timers on the way (in deadline order).
    pub fn advance_secs(&mut self, secs: u64) {
        self.advance_millis(secs * 1000);
    }

    pub fn advance_millis(&mut self, ms: u64) {
        let end = self.now.plus_millis(ms);
        while let Some(t) = self.engine.poll_timeout() {
            if t > end {
                break;
            }
            self.now = self.now.max(t);
            self.engine.handle_timeout(self.now);
            self.pump();
        }
        self.now = end;
    }

    /// Takes the pending Authorise effects (op, request).
    pub fn take_authorisations(&mut self) -> Vec<(u64, AuthoriseRequest)> {
        let mut out = Vec::new();
        self.pending.retain(|e| match e {
            Effect::Authorise { op, request, .. } => {
                out.push((*op, request.clone()));
                false
            }
            _ => true,
        });
        out
    }

    pub fn take_debits(&mut self) -> Vec<(u64, DebitRequest)> {
        let mut out = Vec::new();
        self.pending.retain(|e| match e {
            Effect::Debit { seq, request } => {
                out.push((*seq, request.clone()));
                false
            }
            _ => true,
        });
        out
    }

    pub fn take_ends(&mut self) -> Vec<DialogRef> {
        let mut out = Vec::new();
        self.pending.retain(|e| match e {
            Effect::EndDialog(d) => {
                out.push(d.clone());
                false
            }
            _ => true,
        });
        out
    }

    pub fn authorised(&mut self, op: u64, result: Result<Authorisation, RatingError>) {
        self.engine.on_authorised(self.now, op, result);
        self.pump();
    }

    pub fn debited(&mut self, seq: u64, result: Result<DebitOutcome, RatingError>) {
        self.engine.on_debited(self.now, seq, result);
        self.pump();
    }

    pub fn dialog_ended(&mut self, call_id: &str, result: Result<EndOutcome, SignallingError>) {
        self.engine
            .on_dialog_ended(self.now, &CallId::new(call_id), result);
        self.pump();
    }

    /// A prepaid init answered by the rating engine with `answer`.
    pub fn prepaid_init(
        &mut self,
        req: InitRequest,
        answer: Result<Authorisation, RatingError>,
    ) -> InitReply {
        assert!(
            self.init(req).is_none(),
            "prepaid init must wait for the rating engine"
        );
        let token = self.last_token();
        let auths = self.take_authorisations();
        assert_eq!(auths.len(), 1, "one authorisation asked");
        self.authorised(auths[0].0, answer);
        match self.take_reply(token) {
            Some(Reply::Init(r)) => r,
            other => panic!("unexpected reply {other:?}"),
        }
    }

    pub fn deadline_of(&self, call_id: &str) -> Option<Timestamp> {
        self.engine.session(call_id).and_then(|s| s.deadline)
    }

    pub fn state_of(&self, call_id: &str) -> Option<SessionState> {
        self.engine.session(call_id).map(|s| s.state)
    }
}

pub fn call(id: &str) -> InitRequest {
    InitRequest::new(
        id,
        "\"Alice\" <sip:alice@example.com>",
        "sip:0031201234567@example.com",
    )
}

pub fn call_from(id: &str, user: &str) -> InitRequest {
    InitRequest::new(
        id,
        format!("<sip:{user}@example.com>"),
        "sip:0031201234567@example.com",
    )
}

pub fn debited(mst: Option<u64>) -> Result<DebitOutcome, RatingError> {
    Ok(DebitOutcome::Debited {
        max_session_time: mst,
        price: Some("0.1000".into()),
    })
}
