//! Prometheus metrics (`/metrics`, OpenMetrics text format).
//!
//! Two kinds of metric live here:
//! - **Observed** ones, recorded as things happen: control-socket request
//!   latency per command and protocol errors (fed by the socket server's
//!   hooks, see [`Metrics::instrument_server`]), and rating engine and proxy MI requests,
//!   recorded by the [`Metrics::wrap_rating`] and [`Metrics::wrap_signalling`]
//!   decorators around the real backends.
//! - **Scraped** ones, computed at scrape time from the engine's
//!   [`Status`] and the backends' health: sessions by state and kind, `init`
//!   replies by outcome, debits, timer lateness, connection states.
//!
//! Every label value is from a small fixed set or from the configuration,
//! never from a SIP message, so the number of series stays bounded.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use callcontrol_core::driver::Status;
use callcontrol_core::engine::TIMER_LATENESS_BOUNDS_MS;
use callcontrol_core::error::{RatingError, SignallingError};
use callcontrol_core::prelude::{
    Authorisation, AuthoriseRequest, Balance, BalanceEntry, CallId, DebitOutcome, DebitRequest,
    DialogRef, EndOutcome, InitReply, RatingBackend, RatingHealth, Reply, SignallingBackend,
    SignallingHealth,
};
use callcontrol_opensips::server::ServerConfig;
use callcontrol_opensips::ProtocolError;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

/// The `Content-Type` of `/metrics`.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The control-socket commands that get their own latency series.
const COMMANDS: [&str; 6] = ["init", "start", "stop", "debug", "terminate", "other"];

/// Session states shown in the sessions gauge (ended sessions are forgotten).
const STATES: [&str; 4] = ["pending", "in-progress", "ending", "end-failed"];

type Labels = Vec<(&'static str, String)>;
type HistogramFamily = Family<Labels, Histogram, fn() -> Histogram>;

fn request_histogram() -> Histogram {
    // 50 µs .. ~1.6 s: OpenSIPS gives up after 500 ms.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
}

fn backend_histogram() -> Histogram {
    // 0.25 ms .. ~8 s.
    Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
}

/// The metrics registry and the observed metrics. Cheap to clone (shared).
#[derive(Clone, Debug)]
pub struct Metrics {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    registry: Registry,
    rating_latency: HistogramFamily,
    rating_requests: Family<Labels, Counter>,
    mi_latency: HistogramFamily,
    mi_requests: Family<Labels, Counter>,
    protocol_errors: Family<Labels, Counter>,
    /// The request-latency series of each of [`COMMANDS`], resolved once:
    /// observing a request takes no label lookup.
    command_latency: Vec<Histogram>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with the observed metrics registered.
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let request_latency: HistogramFamily = Family::new_with_constructor(request_histogram);
        let rating_latency: HistogramFamily = Family::new_with_constructor(backend_histogram);
        let mi_latency: HistogramFamily = Family::new_with_constructor(backend_histogram);
        let rating_requests = Family::<Labels, Counter>::default();
        let mi_requests = Family::<Labels, Counter>::default();
        let protocol_errors = Family::<Labels, Counter>::default();
        registry.register(
            "callcontrol_request_duration_seconds",
            "Time to answer a control-socket request, by command",
            request_latency.clone(),
        );
        registry.register(
            "callcontrol_rating_request_duration_seconds",
            "Rating engine request latency, by operation",
            rating_latency.clone(),
        );
        registry.register(
            "callcontrol_rating_requests",
            "Rating engine requests by operation and result (ok, error, timeout, unreachable, \
             bad_reply, unsupported)",
            rating_requests.clone(),
        );
        registry.register(
            "callcontrol_mi_request_duration_seconds",
            "Proxy management interface (MI/RPC) request latency, by operation (end_dialog, list_dialogs)",
            mi_latency.clone(),
        );
        registry.register(
            "callcontrol_mi_requests",
            "Proxy management interface (MI/RPC) requests by operation and result (ended, \
             not_found, ok, proxy_error, timeout, unreachable, bad_reply)",
            mi_requests.clone(),
        );
        registry.register(
            "callcontrol_protocol_errors",
            "Control-socket requests that could not be parsed, by kind (too_long, not_utf8, \
             unknown_command, bad_line, missing_key, bad_value)",
            protocol_errors.clone(),
        );
        // Create the series so they show up (as zero) before any traffic.
        let command_latency = COMMANDS
            .iter()
            .map(|c| {
                request_latency
                    .get_or_create(&vec![("command", c.to_string())])
                    .clone()
            })
            .collect();
        Metrics {
            inner: Arc::new(Inner {
                registry,
                rating_latency,
                rating_requests,
                mi_latency,
                mi_requests,
                protocol_errors,
                command_latency,
            }),
        }
    }

    /// Records one control-socket request: its command (`init`, `start`,
    /// `stop`, `debug`, `terminate`; anything else counts as `other`) and the
    /// time from reading it to writing its reply. Meant for the socket
    /// server's observer hook; the reply is accepted for that hook's
    /// signature (`init` outcomes are counted by the engine itself).
    pub fn observe_request(&self, command: &str, latency: Duration, _reply: &Reply) {
        self.observe_command(command, latency);
    }

    /// [`observe_request`](Self::observe_request) without a reply.
    pub fn observe_command(&self, command: &str, latency: Duration) {
        let i = COMMANDS
            .iter()
            .position(|c| c.eq_ignore_ascii_case(command.trim()))
            .unwrap_or(COMMANDS.len() - 1);
        if let Some(h) = self.inner.command_latency.get(i) {
            h.observe(latency.as_secs_f64());
        }
    }

    /// Counts one request the control socket server could not parse.
    pub fn observe_protocol_error(&self, e: &ProtocolError) {
        let kind = match e {
            // `{ .. }` matches whatever fields a variant has.
            ProtocolError::LineTooLong { .. } | ProtocolError::TooManyLines { .. } => "too_long",
            ProtocolError::InvalidUtf8 { .. } => "not_utf8",
            ProtocolError::UnknownCommand { .. } => "unknown_command",
            ProtocolError::BadLine { .. } => "bad_line",
            ProtocolError::MissingKey { .. } => "missing_key",
            ProtocolError::BadValue { .. } => "bad_value",
        };
        self.inner
            .protocol_errors
            .get_or_create(&vec![("kind", kind.to_string())])
            .inc();
    }

    /// Sets the control socket server's metrics hooks (request latency per
    /// command, protocol errors) to this registry:
    /// `server::serve(listener, handle, metrics.instrument_server(ServerConfig::default()), stop)`.
    pub fn instrument_server(&self, mut config: ServerConfig) -> ServerConfig {
        let m = self.clone();
        config.on_request = Some(Arc::new(
            move |command: &'static str, latency, reply: &Reply| {
                m.observe_request(command, latency, reply)
            },
        ));
        let m = self.clone();
        config.on_protocol_error = Some(Arc::new(move |e: &ProtocolError| {
            m.observe_protocol_error(e)
        }));
        config
    }

    /// Wraps a rating backend so that each of its requests is timed and
    /// counted by result. Give the wrapped backend to the engine.
    pub fn wrap_rating(&self, inner: Arc<dyn RatingBackend>) -> Arc<dyn RatingBackend> {
        Arc::new(MeteredRating {
            inner,
            metrics: self.clone(),
        })
    }

    /// Wraps a signalling backend so that each of its requests is timed and
    /// counted by result. Give the wrapped backend to the engine.
    pub fn wrap_signalling(&self, inner: Arc<dyn SignallingBackend>) -> Arc<dyn SignallingBackend> {
        Arc::new(MeteredSignalling {
            inner,
            metrics: self.clone(),
        })
    }

    /// The whole exposition: the observed metrics and those computed from
    /// `scrape`, ending with `# EOF`.
    pub fn encode(&self, scrape: Scrape) -> Result<String, std::fmt::Error> {
        let mut out = String::with_capacity(8192);
        prometheus_client::encoding::text::encode_registry(&mut out, &self.inner.registry)?;
        let mut now = Registry::default();
        now.register_collector(Box::new(ScrapeCollector(scrape)));
        prometheus_client::encoding::text::encode_registry(&mut out, &now)?;
        prometheus_client::encoding::text::encode_eof(&mut out)?;
        Ok(out)
    }

    fn record(
        &self,
        latency: &HistogramFamily,
        counter: &Family<Labels, Counter>,
        op: &'static str,
        result: &'static str,
        elapsed: Duration,
    ) {
        latency
            .get_or_create(&vec![("operation", op.to_string())])
            .observe(elapsed.as_secs_f64());
        counter
            .get_or_create(&vec![
                ("operation", op.to_string()),
                ("result", result.to_string()),
            ])
            .inc();
    }
}

/// What the scrape-time metrics are computed from.
#[derive(Debug, Clone, Default)]
pub struct Scrape {
    /// The engine's status; `None` when the engine has stopped.
    pub status: Option<Status>,
    /// Whether the control socket is accepting connections.
    pub control_socket_up: bool,
    /// Each rating engine connection.
    pub rating: Vec<RatingHealth>,
    /// The proxy management interface, when the backend reports it.
    pub signalling: Option<SignallingHealth>,
}

/// Escapes a label value for the text format (the encoder writes it raw).
fn esc(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c if c.is_control() => {}
            c => s.push(c),
        }
    }
    s
}

#[derive(Debug)]
struct ScrapeCollector(Scrape);

fn counter(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[(Labels, u64)],
) -> std::fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    if let [(labels, v)] = rows {
        if labels.is_empty() {
            return ConstCounter::new(*v).encode(m);
        }
    }
    for (labels, v) in rows {
        ConstCounter::new(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

fn gauge(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[(Labels, i64)],
) -> std::fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    if let [(labels, v)] = rows {
        if labels.is_empty() {
            return ConstGauge::new(*v).encode(m);
        }
    }
    for (labels, v) in rows {
        ConstGauge::new(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

impl Collector for ScrapeCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let s = &self.0;
        gauge(
            &mut enc,
            "callcontrol_control_socket_up",
            "Whether the control socket for the proxy's call_control module is accepting \
             connections",
            &[(vec![], i64::from(s.control_socket_up))],
        )?;
        gauge(
            &mut enc,
            "callcontrol_rating_engine_connected",
            "Whether each rating engine connection is up (1) or down (0)",
            &s.rating
                .iter()
                .map(|h| (vec![("address", esc(&h.address))], i64::from(h.connected)))
                .collect::<Vec<_>>(),
        )?;
        if let Some(h) = &s.signalling {
            gauge(
                &mut enc,
                "callcontrol_mi_reachable",
                "Whether the proxy management interface answered its last request",
                &[(vec![("address", esc(&h.address))], i64::from(h.reachable))],
            )?;
        }
        gauge(
            &mut enc,
            "callcontrol_engine_up",
            "Whether the call control engine is running",
            &[(vec![], i64::from(s.status.is_some()))],
        )?;
        let Some(st) = &s.status else { return Ok(()) };

        let mut sessions = Vec::new();
        for state in STATES {
            for kind in ["prepaid", "postpaid"] {
                let n = st
                    .sessions
                    .get(&format!("{state}/{kind}"))
                    .copied()
                    .unwrap_or(0);
                sessions.push((
                    vec![("state", state.to_string()), ("kind", kind.to_string())],
                    n as i64,
                ));
            }
        }
        gauge(
            &mut enc,
            "callcontrol_sessions",
            "Tracked sessions by state and kind",
            &sessions,
        )?;

        let outcomes = [
            InitReply::NoLimit,
            InitReply::Limited,
            InitReply::NoCredit,
            InitReply::Locked,
            InitReply::DuplicatedCallId,
            InitReply::CallLimitReached,
            InitReply::Error,
        ];
        let mut rows: Vec<(Labels, u64)> = outcomes
            .iter()
            .map(|o| {
                let n = st.stats.init_replies.get(o.outcome()).copied().unwrap_or(0);
                (vec![("outcome", o.outcome().to_string())], n)
            })
            .collect();
        for (k, v) in &st.stats.init_replies {
            if !outcomes.iter().any(|o| o.outcome() == k) {
                rows.push((vec![("outcome", esc(k))], *v));
            }
        }
        counter(
            &mut enc,
            "callcontrol_init_replies",
            "init replies by outcome",
            &rows,
        )?;

        counter(
            &mut enc,
            "callcontrol_sessions_ended",
            "Sessions ended by the daemon itself, by reason (expired: limit reached; \
             setup_timeout: not answered in time; stale: no limit and too old)",
            &[
                (vec![("reason", "expired".into())], st.stats.expired),
                (
                    vec![("reason", "setup_timeout".into())],
                    st.stats.setup_timeouts,
                ),
                (vec![("reason", "stale".into())], st.stats.stale),
            ],
        )?;
        counter(
            &mut enc,
            "callcontrol_dialog_end_requests",
            "Requests to the proxy to end a dialog, by result as the engine saw it",
            &[
                (vec![("result", "sent".into())], st.stats.end_requests),
                (vec![("result", "failed".into())], st.stats.end_failures),
            ],
        )?;
        counter(
            &mut enc,
            "callcontrol_debits",
            "Debits answered by the rating engine: ok (charged) or failed (refused: already \
             debited, unknown session or not ratable)",
            &[
                (vec![("result", "ok".into())], st.stats.debits_ok),
                (vec![("result", "failed".into())], st.stats.debits_failed),
            ],
        )?;
        counter(
            &mut enc,
            "callcontrol_debit_retries",
            "Debit attempts that got no answer and were retried",
            &[(vec![], st.stats.debit_retries)],
        )?;
        gauge(
            &mut enc,
            "callcontrol_debits_pending",
            "Debits owed to the rating engine and not yet answered",
            &[(vec![], st.debits_owed as i64)],
        )?;
        counter(
            &mut enc,
            "callcontrol_rating_failures",
            "init requests whose rating failed (timeout, error, nonsense answer)",
            &[(vec![], st.stats.rating_failures)],
        )?;
        gauge(
            &mut enc,
            "callcontrol_requests_waiting",
            "Requests waiting for their reply (mostly for the rating engine)",
            &[(vec![], st.requests_waiting as i64)],
        )?;

        // Timer lateness: how long after its due time each timer fired.
        let mut buckets: Vec<(f64, u64)> = TIMER_LATENESS_BOUNDS_MS
            .iter()
            .enumerate()
            .map(|(i, b)| {
                (
                    *b as f64 / 1000.0,
                    st.stats.timer_lateness_buckets.get(i).copied().unwrap_or(0),
                )
            })
            .collect();
        let counted: u64 = buckets.iter().map(|b| b.1).sum();
        // Timers fired before the buckets existed (restored stats) land in +Inf.
        buckets.push((f64::MAX, st.stats.timers_fired.saturating_sub(counted)));
        let mut m = enc.encode_descriptor(
            "callcontrol_timer_lateness_seconds",
            "How late session timers fired (fired minus due)",
            None,
            MetricType::Histogram,
        )?;
        m.encode_histogram::<Labels>(
            st.stats.timer_lateness_ms as f64 / 1000.0,
            st.stats.timers_fired,
            &buckets,
            None,
        )?;
        Ok(())
    }
}

/// Runs `f` timed; the guard records "timeout" if the caller drops the
/// future (the engine driver enforces the rating timeout that way).
struct Timed<'a> {
    metrics: &'a Metrics,
    latency: &'a HistogramFamily,
    counter: &'a Family<Labels, Counter>,
    op: &'static str,
    start: Instant,
    done: bool,
}

impl<'a> Timed<'a> {
    fn finish(mut self, result: &'static str) {
        self.done = true;
        self.metrics.record(
            self.latency,
            self.counter,
            self.op,
            result,
            self.start.elapsed(),
        );
    }
}

impl Drop for Timed<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.metrics.record(
                self.latency,
                self.counter,
                self.op,
                "timeout",
                self.start.elapsed(),
            );
        }
    }
}

fn rating_result<T>(r: &Result<T, RatingError>) -> &'static str {
    match r {
        Ok(_) => "ok",
        Err(RatingError::Timeout) => "timeout",
        Err(RatingError::Unreachable(_)) => "unreachable",
        Err(RatingError::BadReply(_)) => "bad_reply",
        Err(RatingError::Engine(_)) => "error",
        Err(RatingError::Unsupported) => "unsupported",
    }
}

fn signalling_error(e: &SignallingError) -> &'static str {
    match e {
        SignallingError::Unreachable(_) => "unreachable",
        SignallingError::Timeout => "timeout",
        SignallingError::Proxy { .. } => "proxy_error",
        SignallingError::BadReply(_) => "bad_reply",
    }
}

/// A rating backend that times and counts the requests of another.
struct MeteredRating {
    inner: Arc<dyn RatingBackend>,
    metrics: Metrics,
}

impl MeteredRating {
    fn timed(&self, op: &'static str) -> Timed<'_> {
        Timed {
            metrics: &self.metrics,
            latency: &self.metrics.inner.rating_latency,
            counter: &self.metrics.inner.rating_requests,
            op,
            start: Instant::now(),
            done: false,
        }
    }
}

#[async_trait]
impl RatingBackend for MeteredRating {
    async fn authorise(&self, req: &AuthoriseRequest) -> Result<Authorisation, RatingError> {
        let t = self.timed("authorise");
        let r = self.inner.authorise(req).await;
        t.finish(rating_result(&r));
        r
    }
    async fn debit(&self, req: &DebitRequest) -> Result<DebitOutcome, RatingError> {
        let t = self.timed("debit");
        let r = self.inner.debit(req).await;
        let result = match &r {
            Ok(DebitOutcome::Failed { .. }) => "failed",
            other => rating_result(other),
        };
        t.finish(result);
        r
    }
    async fn balance(&self, account: &str) -> Result<Balance, RatingError> {
        let t = self.timed("get_balance");
        let r = self.inner.balance(account).await;
        t.finish(rating_result(&r));
        r
    }
    async fn add_balance(&self, account: &str, amount: &str) -> Result<Balance, RatingError> {
        let t = self.timed("add_balance");
        let r = self.inner.add_balance(account, amount).await;
        t.finish(rating_result(&r));
        r
    }
    async fn balance_history(&self, account: &str) -> Result<Vec<BalanceEntry>, RatingError> {
        let t = self.timed("get_balance_history");
        let r = self.inner.balance_history(account).await;
        t.finish(rating_result(&r));
        r
    }
    fn health(&self) -> Vec<RatingHealth> {
        self.inner.health()
    }
}

/// A signalling backend that times and counts the requests of another.
struct MeteredSignalling {
    inner: Arc<dyn SignallingBackend>,
    metrics: Metrics,
}

impl MeteredSignalling {
    fn timed(&self, op: &'static str) -> Timed<'_> {
        Timed {
            metrics: &self.metrics,
            latency: &self.metrics.inner.mi_latency,
            counter: &self.metrics.inner.mi_requests,
            op,
            start: Instant::now(),
            done: false,
        }
    }
}

#[async_trait]
impl SignallingBackend for MeteredSignalling {
    async fn end_dialog(&self, dialog: &DialogRef) -> Result<EndOutcome, SignallingError> {
        let t = self.timed("end_dialog");
        let r = self.inner.end_dialog(dialog).await;
        t.finish(match &r {
            Ok(EndOutcome::Ended) => "ended",
            Ok(EndOutcome::NotFound) => "not_found",
            Err(e) => signalling_error(e),
        });
        r
    }
    async fn list_dialogs(&self) -> Result<Option<Vec<CallId>>, SignallingError> {
        let t = self.timed("list_dialogs");
        let r = self.inner.list_dialogs().await;
        t.finish(match &r {
            Ok(_) => "ok",
            Err(e) => signalling_error(e),
        });
        r
    }
    async fn list_live_dialogs(
        &self,
    ) -> Result<Option<Vec<callcontrol_core::signalling::LiveDialog>>, SignallingError> {
        let t = self.timed("list_dialogs");
        let r = self.inner.list_live_dialogs().await;
        t.finish(match &r {
            Ok(_) => "ok",
            Err(e) => signalling_error(e),
        });
        r
    }
    fn health(&self) -> Option<SignallingHealth> {
        self.inner.health()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_observed_and_scraped() {
        let m = Metrics::new();
        m.observe_command("init", Duration::from_millis(2));
        m.observe_command("INIT", Duration::from_millis(3));
        m.observe_command("bogus<script>", Duration::from_millis(3));
        let mut st = Status::default();
        st.sessions.insert("in-progress/prepaid".into(), 3);
        st.stats.init_replies.insert("limited".into(), 5);
        st.stats.timers_fired = 2;
        st.stats.timer_lateness_ms = 7;
        st.stats.timer_lateness_buckets = vec![1, 0, 1];
        let text = m
            .encode(Scrape {
                status: Some(st),
                control_socket_up: true,
                rating: vec![RatingHealth {
                    address: "a\"b".into(),
                    connected: true,
                }],
                signalling: None,
            })
            .unwrap();
        assert!(
            text.contains("callcontrol_request_duration_seconds_count{command=\"init\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("callcontrol_request_duration_seconds_count{command=\"other\"} 1\n"));
        assert!(!text.contains("script"));
        assert!(text.contains("callcontrol_sessions{state=\"in-progress\",kind=\"prepaid\"} 3\n"));
        assert!(text.contains("callcontrol_init_replies_total{outcome=\"limited\"} 5\n"));
        assert!(text.contains("callcontrol_init_replies_total{outcome=\"error\"} 0\n"));
        assert!(text.contains("callcontrol_rating_engine_connected{address=\"a\\\"b\"} 1\n"));
        assert!(text.contains("callcontrol_timer_lateness_seconds_count 2\n"));
        assert!(text.contains("callcontrol_timer_lateness_seconds_bucket{le=\"0.005\"} 1\n"));
        assert!(text.contains("callcontrol_timer_lateness_seconds_bucket{le=\"0.01\"} 2\n"));
        assert!(text.contains("callcontrol_timer_lateness_seconds_bucket{le=\"+Inf\"} 2\n"));
        assert!(text.ends_with("# EOF\n"));
        assert_eq!(text.matches("# EOF").count(), 1);
    }
}
