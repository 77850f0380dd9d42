//! The `call-control` daemon: arguments, assembly, signals, restart.
//!
//! `main.rs` calls [`main`]. It parses the arguments, loads and checks
//! `config.ini` (a bad value stops it here, exit code 2), forks when asked
//! (before any thread exists), sets up logging, then runs [`run`] on a tokio
//! runtime. [`run`] is also what the tests drive, with a [`Control`] instead
//! of signals.
//!
//! Start-up order matters for "nothing acknowledged is lost": the journal is
//! opened and replayed first; the proxy's dialog list is fetched (when the
//! signalling backend can list dialogs) so that calls that ended while the
//! daemon was down are reconciled *before* any restored timer fires; only
//! then does the engine start and the socket open.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use clap::Parser;
use log::{error, info, warn};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use callcontrol_core::clock::{Clock, TokioClock};
use callcontrol_core::config::RatingFailurePolicy;
use callcontrol_core::driver::{self, Parts, Reconcile};
use callcontrol_core::journal::{Journal, JournalOptions};
use callcontrol_core::rating::{NoRating, RatingBackend};
use callcontrol_core::signalling::SignallingBackend;
use callcontrol_core::store::SessionStore;
use callcontrol_core::types::SessionState;
use callcontrol_core::LogSignalling;
use callcontrol_opensips::kamailio::Kamailio;
use callcontrol_opensips::mi::{MiClient, MiConfig, MiTransport};
use callcontrol_opensips::server::{self, ServerConfig};

use crate::config::{self, Config, ConfigError, ProxyKind};
use crate::fork::{self, Ready};
use crate::logging::{self, LogTarget};

/// The PID file's name in the runtime directory (when forked, without --pid).
const PID_FILE: &str = "call-control.pid";
/// The lock file in the runtime directory: held (flock, exclusive) for the
/// daemon's lifetime, so that a second daemon never opens the journal.
pub const LOCK_FILE: &str = "call-control.lock";

const ABOUT: &str = "Call Control: limits the duration of SIP calls for OpenSIPS/Kamailio, \
                     with prepaid balances from CDRTool";

const LONG_ABOUT: &str = "\
call-control limits the duration of SIP sessions. The proxy's call_control module asks it about
every new call on a UNIX socket; call-control answers with the call's limit (from the CDRTool
rating engine for prepaid calls, from [CallControl] limit for the others), keeps a timer per call,
ends calls that reach their limit through the proxy's management interface (OpenSIPS MI or
Kamailio RPC), and debits prepaid calls when they end.

Sessions and owed debits are kept in a journal in the runtime directory: a restart, a crash or a
kill -9 loses no call and no debit.";

const AFTER_HELP: &str = "\
FILES:
    <config dir>/config.ini        settings (see config.ini.sample); then /etc/callcontrol/config.ini
    <runtime dir>/socket           the socket the proxy connects to ([CallControl] socket)
    <runtime dir>/call-control.pid PID file when forked (--pid)
    <runtime dir>/call-control.lock
                                   locked while a daemon runs on this directory (one at a time)
    <runtime dir>/sessions.journal, sessions.snapshot
                                   saved sessions and owed debits (do not delete while calls run)

SIGNALS:
    SIGTERM  stop gracefully: stop accepting, answer the requests in flight, save, exit
    SIGINT   stop fast: save and exit without waiting for requests in flight
    SIGHUP   reload the live settings (limit, prepaid_limit, timeout, setup_timeout,
             rating_failure, rating_failure_limit, [CDRTool] timeout) and log what changed

EXIT STATUS:
    0  stopped normally
    1  could not start or failed while running (socket, runtime directory, journal)
    2  bad command line or configuration (the message names the section, key and value)

EXAMPLES:
    call-control --no-fork --runtime-dir /tmp/cc          foreground, embedded defaults
    call-control --systemd                                under systemd (Type=simple)
    call-control --config /etc/callcontrol/config.ini --limit 3600";

/// The daemon's command line.
#[derive(Debug, Clone, Parser)]
#[command(name = "call-control", version, about = ABOUT, long_about = LONG_ABOUT, after_help = AFTER_HELP)]
pub struct Args {
    /// Directory holding config.ini [default: /etc/callcontrol]
    #[arg(long, value_name = "DIR")]
    pub config_dir: Option<PathBuf>,
    /// Read this file instead of <config dir>/config.ini (it must exist)
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Runtime directory: socket, PID file, session journal
    #[arg(long, value_name = "DIR", default_value = config::DEFAULT_RUNTIME_DIR)]
    pub runtime_dir: PathBuf,
    /// Run in the foreground, logging to stderr
    #[arg(long)]
    pub no_fork: bool,
    /// Run under systemd: foreground, journald-style log lines (implies --no-fork)
    #[arg(long)]
    pub systemd: bool,
    /// Log debug lines, including every request and reply
    #[arg(long)]
    pub debug: bool,
    /// PID file when forked [default: <runtime dir>/call-control.pid]
    #[arg(long, value_name = "FILE")]
    pub pid: Option<PathBuf>,
    /// Check the configuration, print the effective settings and exit
    #[arg(long)]
    pub check_config: bool,
    /// Override [CallControl] socket
    #[arg(long, value_name = "PATH", help_heading = "Overrides")]
    pub socket: Option<String>,
    /// Override [CallControl] group
    #[arg(long, value_name = "GROUP", help_heading = "Overrides")]
    pub group: Option<String>,
    /// Override [CallControl] limit (seconds, or None)
    #[arg(long, value_name = "SECONDS", help_heading = "Overrides")]
    pub limit: Option<String>,
    /// Override [CallControl] prepaid_limit (seconds, or None)
    #[arg(long, value_name = "SECONDS", help_heading = "Overrides")]
    pub prepaid_limit: Option<String>,
    /// Override [CallControl] rating_failure (reject or allow)
    #[arg(long, value_name = "POLICY", help_heading = "Overrides")]
    pub rating_failure: Option<String>,
    /// Override [CallControl] proxy (opensips, kamailio or none)
    #[arg(long, value_name = "PROXY", help_heading = "Overrides")]
    pub proxy: Option<String>,
    /// Override [CallControl] journal_fsync (always, interval, interval:<ms>, never)
    #[arg(long, value_name = "POLICY", help_heading = "Overrides")]
    pub journal_fsync: Option<String>,
    /// Override [CDRTool] address (host[:port] ..., or None)
    #[arg(long, value_name = "ADDRESS", help_heading = "Overrides")]
    pub cdrtool: Option<String>,
    /// Override [OpenSIPS] socket_path (the MI datagram socket)
    #[arg(long, value_name = "PATH", help_heading = "Overrides")]
    pub mi_socket: Option<String>,
    /// Override [Web] port (or None)
    #[arg(long, value_name = "PORT", help_heading = "Overrides")]
    pub web_port: Option<String>,
}

impl Args {
    /// The overrides as `(section, key, value)`.
    fn overrides(&self) -> Vec<(&'static str, &'static str, String)> {
        let pairs: [(&str, &str, &Option<String>); 10] = [
            ("CallControl", "socket", &self.socket),
            ("CallControl", "group", &self.group),
            ("CallControl", "limit", &self.limit),
            ("CallControl", "prepaid_limit", &self.prepaid_limit),
            ("CallControl", "rating_failure", &self.rating_failure),
            ("CallControl", "proxy", &self.proxy),
            ("CallControl", "journal_fsync", &self.journal_fsync),
            ("CDRTool", "address", &self.cdrtool),
            ("OpenSIPS", "socket_path", &self.mi_socket),
            ("Web", "port", &self.web_port),
        ];
        pairs
            .iter()
            .filter_map(|(s, k, v)| v.as_ref().map(|v| (*s, *k, v.clone())))
            .collect()
    }

    /// Makes every path given on the command line absolute (against the
    /// current directory), so that it still names the same file after the
    /// daemon has forked and changed to `/` (a reload re-reads the file).
    pub fn absolutize_paths(&mut self) -> std::io::Result<()> {
        for p in [&mut self.config_dir, &mut self.config, &mut self.pid]
            .into_iter()
            .flatten()
        {
            *p = std::path::absolute(&*p)?;
        }
        self.runtime_dir = std::path::absolute(&self.runtime_dir)?;
        for v in [&mut self.socket, &mut self.mi_socket]
            .into_iter()
            .flatten()
        {
            let path = Path::new(v.as_str());
            if !v.is_empty() && !v.eq_ignore_ascii_case("none") && path.is_relative() {
                *v = std::path::absolute(path)?.display().to_string();
            }
        }
        Ok(())
    }

    /// Loads the configuration file (if any) and applies the overrides.
    pub fn load_config(&self) -> Result<Config, ConfigError> {
        match config::locate(self.config.as_deref(), self.config_dir.as_deref())? {
            Some(path) => self.load_config_from(Some(&path)),
            None => self.load_config_from(None),
        }
    }

    /// Loads `path` (the embedded defaults for `None`) and applies the
    /// overrides; a missing file is an error, never the defaults.
    pub fn load_config_from(&self, path: Option<&Path>) -> Result<Config, ConfigError> {
        let mut c = match path {
            Some(path) => Config::load(path)?,
            None => Config::default(),
        };
        for (section, key, value) in self.overrides() {
            c.set(section, key, &value).map_err(|message| ConfigError {
                origin: "command line".into(),
                section: Some(section.into()),
                key: Some(key.into()),
                value: Some(value.clone()),
                message,
            })?;
        }
        Ok(c)
    }
}

/// The daemon's entry point (`main.rs` calls only this).
pub fn main() -> ExitCode {
    let mut args = Args::parse();
    if let Err(e) = args.absolutize_paths() {
        eprintln!("call-control: cannot resolve the paths on the command line: {e}");
        return ExitCode::from(2);
    }
    let config = match args.load_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("call-control: {e}");
            return ExitCode::from(2);
        }
    };
    if args.check_config {
        print_settings(&config, &args.runtime_dir);
        return ExitCode::SUCCESS;
    }
    let fork = !(args.no_fork || args.systemd);
    let mut ready = if fork {
        match fork::daemonize() {
            Ok(r) => r,
            Err(e) => {
                eprintln!("call-control: cannot fork: {e}");
                return ExitCode::from(1);
            }
        }
    } else {
        Ready::none()
    };
    let target = match (fork, args.systemd) {
        (true, _) => LogTarget::Syslog,
        (false, true) => LogTarget::Journald,
        (false, false) => LogTarget::Stderr,
    };
    logging::init(target, args.debug);
    let pid_file = fork.then(|| {
        args.pid
            .clone()
            .unwrap_or_else(|| args.runtime_dir.join(PID_FILE))
    });
    // One thread serves the proxy, the engine and the web interface: every
    // request is a few microseconds of work between socket reads and writes,
    // and a single-threaded runtime measured 1.5-2x less CPU per call than a
    // work-stealing one (no cross-thread wake-ups). Log output and journal
    // fsyncs have threads of their own.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            ready.report(Err(format!("cannot start the runtime: {e}")));
            error!("Cannot start the runtime: {e}");
            log::logger().flush();
            return ExitCode::from(1);
        }
    };
    let options = RunOptions {
        runtime_dir: args.runtime_dir.clone(),
        args: Some(args),
        pid_file,
    };
    // run() removes the PID file it wrote; one it did not write (start-up
    // failed, e.g. another daemon owns the runtime directory) is left alone.
    let result = runtime.block_on(async move {
        let control = Control::from_signals()?;
        run(config, options, control, ready).await
    });
    if let Err(e) = &result {
        error!("{e:#}");
    }
    log::logger().flush();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) => ExitCode::from(1),
    }
}

fn print_settings(c: &Config, runtime_dir: &Path) {
    println!(
        "config file: {}",
        c.path
            .as_ref()
            .map_or("none (embedded defaults)".into(), |p| p
                .display()
                .to_string())
    );
    println!("socket: {}", c.socket(runtime_dir).display());
    println!("group: {}", c.call_control.group);
    for (k, v) in c.live_settings() {
        println!("{k}: {v}");
    }
    println!(
        "rating engine: {}",
        if c.cdrtool.address.is_empty() {
            "none".to_string()
        } else {
            c.cdrtool
                .address
                .iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(" ")
        }
    );
    println!("proxy: {:?}", c.call_control.proxy);
    println!("journal fsync: {:?}", c.call_control.journal_fsync);
    for w in &c.warnings {
        println!("warning: {w}");
    }
}

/// How to stop or reload a running daemon (signals, or a test).
#[derive(Debug)]
pub struct Control {
    /// Cancel to stop gracefully (SIGTERM).
    pub graceful: CancellationToken,
    /// Cancel to stop fast (SIGINT).
    pub fast: CancellationToken,
    /// Send to reload (SIGHUP).
    pub reload: mpsc::Receiver<()>,
}

/// The other ends of a [`Control`], for tests.
#[derive(Debug, Clone)]
pub struct Controller {
    /// Stop gracefully.
    pub graceful: CancellationToken,
    /// Stop fast.
    pub fast: CancellationToken,
    /// Reload.
    pub reload: mpsc::Sender<()>,
}

impl Control {
    /// A control and its controller (no signals).
    pub fn new() -> (Control, Controller) {
        let (tx, rx) = mpsc::channel(4);
        let (g, f) = (CancellationToken::new(), CancellationToken::new());
        (
            Control {
                graceful: g.clone(),
                fast: f.clone(),
                reload: rx,
            },
            Controller {
                graceful: g,
                fast: f,
                reload: tx,
            },
        )
    }

    /// A control driven by SIGTERM, SIGINT and SIGHUP.
    pub fn from_signals() -> anyhow::Result<Control> {
        use tokio::signal::unix::{signal, SignalKind};
        let (control, c) = Control::new();
        let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
        let mut hup = signal(SignalKind::hangup()).context("SIGHUP handler")?;
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = term.recv() => { info!("SIGTERM received, stopping gracefully"); c.graceful.cancel(); }
                    _ = int.recv() => { info!("SIGINT received, stopping"); c.fast.cancel(); }
                    _ = hup.recv() => { let _ = c.reload.try_send(()); }
                }
            }
        });
        Ok(control)
    }
}

/// What [`run`] needs besides the configuration.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// The runtime directory (journal; default socket).
    pub runtime_dir: PathBuf,
    /// The command line, to re-read the configuration on reload (`None`:
    /// reload keeps the current settings).
    pub args: Option<Args>,
    /// PID file to write once serving.
    pub pid_file: Option<PathBuf>,
}

/// Runs the daemon until `control` says stop. `ready` is told when the
/// socket is open (or why start-up failed).
pub async fn run(
    config: Config,
    options: RunOptions,
    mut control: Control,
    mut ready: Ready,
) -> anyhow::Result<()> {
    let started = start(&config, &options).await;
    let daemon = match started {
        Ok(d) => d,
        Err(e) => {
            ready.report(Err(format!("{e:#}")));
            return Err(e);
        }
    };
    let mut pid_written = None;
    if let Some(p) = &options.pid_file {
        match std::fs::write(p, format!("{}\n", std::process::id())) {
            Ok(()) => pid_written = Some(p),
            Err(e) => warn!("Cannot write PID file {}: {e}", p.display()),
        }
    }
    ready.report(Ok(()));
    let mut current = config;
    let fast = loop {
        tokio::select! {
            _ = control.graceful.cancelled() => break false,
            _ = control.fast.cancelled() => break true,
            Some(()) = control.reload.recv() => reload(&mut current, &options, &daemon.handle).await,
        }
    };
    let stopped = daemon.stop(fast).await;
    if let Some(p) = pid_written {
        let _ = std::fs::remove_file(p);
    }
    stopped
}

struct Daemon {
    handle: driver::Handle,
    engine_stop: CancellationToken,
    engine: tokio::task::JoinHandle<Result<(), callcontrol_core::error::StoreError>>,
    server_stop: CancellationToken,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    web_stop: CancellationToken,
    web: Option<tokio::task::JoinHandle<()>>,
    socket: PathBuf,
    /// The runtime directory's lock, released when the daemon is gone
    /// (after the sessions are saved).
    _lock: std::fs::File,
}

impl Daemon {
    async fn stop(self, fast: bool) -> anyhow::Result<()> {
        self.server_stop.cancel();
        self.web_stop.cancel();
        if fast {
            // Do not wait for the requests in flight: what was acknowledged
            // is in the journal already.
            self.server.abort();
            let _ = std::fs::remove_file(&self.socket);
        } else {
            // Stop accepting, answer what is in flight; serve() removes the socket.
            match self.server.await {
                Ok(Err(e)) => warn!("call_control server: {e}"),
                Err(e) if !e.is_cancelled() => warn!("call_control server: {e}"),
                _ => {}
            }
        }
        if let Some(web) = self.web {
            let _ = tokio::time::timeout(Duration::from_secs(2), web).await;
        }
        self.engine_stop.cancel();
        let saved = self.engine.await.map_err(|e| anyhow!("engine task: {e}"))?;
        saved.context("saving the sessions")?;
        info!("Call Control stopped");
        Ok(())
    }
}

async fn start(config: &Config, options: &RunOptions) -> anyhow::Result<Daemon> {
    info!("Starting Call Control {}", env!("CARGO_PKG_VERSION"));
    match &config.path {
        Some(p) => info!("Configuration read from {}", p.display()),
        None => info!("No config.ini found: running on the embedded defaults"),
    }
    for w in &config.warnings {
        warn!("{w}");
    }
    std::fs::create_dir_all(&options.runtime_dir).with_context(|| {
        format!(
            "cannot create the runtime directory {}",
            options.runtime_dir.display()
        )
    })?;
    // Before the journal is opened (opening compacts it): a second daemon on
    // the same runtime directory must not touch the first one's sessions.
    let lock = lock_runtime_dir(&options.runtime_dir)?;

    let journal_opts = JournalOptions {
        fsync: config.call_control.journal_fsync,
        ..Default::default()
    };
    let journal = Journal::open(&options.runtime_dir, journal_opts).with_context(|| {
        format!(
            "cannot open the session journal in {}",
            options.runtime_dir.display()
        )
    })?;
    let recovery = journal.recovery().clone();
    let saved = journal.snapshot();
    if recovery.down_since.is_some() {
        let how = if recovery.clean_shutdown {
            "stopped cleanly"
        } else {
            "did not stop cleanly"
        };
        info!(
            "The previous run {how}; restoring {} sessions and {} owed debits from the journal",
            saved.sessions.len(),
            saved.debits.len()
        );
    }

    let mut rating = build_rating(config)?;
    let mut signalling = build_signalling(config, &options.runtime_dir)?;
    // With the web interface on, the backends are metered for /metrics.
    let metrics = config.web.enabled().then(crate::web::Metrics::new);
    if let Some(m) = &metrics {
        rating = m.wrap_rating(rating);
        signalling = m.wrap_signalling(signalling);
    }

    // Reconcile with the proxy before any restored timer fires.
    let clock: Arc<dyn Clock> = Arc::new(TokioClock::new());
    let mut reconcile = None;
    let answered = saved
        .sessions
        .iter()
        .filter(|s| matches!(s.state, SessionState::InProgress | SessionState::Pending))
        .count();
    if let (Some(down_since), true) = (recovery.down_since, answered > 0) {
        match tokio::time::timeout(Duration::from_secs(3), signalling.list_live_dialogs()).await {
            Ok(Ok(Some(live))) => {
                info!(
                    "The proxy has {} dialogs; reconciling {answered} restored calls",
                    live.len()
                );
                reconcile = Some(Reconcile { live, down_since });
            }
            Ok(Ok(None)) => {}
            Ok(Err(e)) => {
                warn!("Cannot list the proxy's dialogs, restored calls are not reconciled: {e}")
            }
            Err(_) => warn!(
                "The proxy did not list its dialogs in time, restored calls are not reconciled"
            ),
        }
    }

    let engine_stop = CancellationToken::new();
    let store: Box<dyn SessionStore> = Box::new(journal);
    let running = driver::spawn_reconciled(
        Parts {
            config: config.call_control.engine.clone(),
            rating: rating.clone(),
            signalling: signalling.clone(),
            store,
            clock,
        },
        engine_stop.clone(),
        reconcile,
    )
    .context("cannot load the saved sessions")?;
    let handle = running.handle.clone();

    let socket = config.socket(&options.runtime_dir);
    let group = Some(config.call_control.group.as_str()).filter(|g| !g.is_empty());
    let listener = match server::bind_socket(&socket, group) {
        Ok(l) => l,
        Err(e) => {
            engine_stop.cancel();
            let _ = running.task.await;
            return Err(anyhow!("cannot listen on {}: {e}", socket.display()));
        }
    };
    info!("Listening for the proxy on {}", socket.display());
    let socket_up = Arc::new(AtomicBool::new(true));
    let server_stop = CancellationToken::new();
    let mut server_cfg = ServerConfig {
        max_connections: 0,
        ..ServerConfig::default()
    };
    if config.call_control.proxy == ProxyKind::Kamailio {
        // Kamailio's module shares one pre-fork connection between all its
        // processes unless the daemon closes it (docs/kamailio.md).
        server_cfg.close_at_accept = Some(callcontrol_opensips::kamailio::pre_fork_filter(
            &config.kamailio.process_name,
        ));
    }
    if let Some(m) = &metrics {
        server_cfg = m.instrument_server(server_cfg);
    }
    let server = {
        let (handle, stop, up) = (handle.clone(), server_stop.clone(), socket_up.clone());
        tokio::spawn(async move {
            let r = server::serve(listener, handle, server_cfg, stop).await;
            up.store(false, Ordering::SeqCst);
            r
        })
    };
    let web_stop = CancellationToken::new();
    let web = if let Some(metrics) = metrics {
        let parts = crate::web::WebParts {
            handle: handle.clone(),
            rating: rating.clone(),
            signalling: signalling.clone(),
            control_socket_up: Arc::new(move || socket_up.load(Ordering::SeqCst)),
            metrics,
            token: config.web.token().map(str::to_string),
        };
        let (web_cfg, stop) = (config.web.clone(), web_stop.clone());
        Some(tokio::spawn(async move {
            if let Err(e) = crate::web::bind_and_serve(&web_cfg, parts, stop).await {
                error!("Web interface: {e}");
            }
        }))
    } else {
        None
    };
    Ok(Daemon {
        handle,
        engine_stop,
        engine: running.task,
        server_stop,
        server,
        web_stop,
        web,
        socket,
        _lock: lock,
    })
}

/// Takes the runtime directory's lock (see [`LOCK_FILE`]), or says which
/// daemon holds it.
fn lock_runtime_dir(dir: &Path) -> anyhow::Result<std::fs::File> {
    let path = dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("cannot open the lock file {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(anyhow!(
            "another call-control is already running on the runtime directory {} \
             ({} is locked); stop it first or use another --runtime-dir",
            dir.display(),
            path.display()
        )),
        Err(std::fs::TryLockError::Error(e)) => Err(anyhow!("cannot lock {}: {e}", path.display())),
    }
}

fn build_rating(config: &Config) -> anyhow::Result<Arc<dyn RatingBackend>> {
    if config.cdrtool.address.is_empty() {
        let what = match config.call_control.engine.rating_failure {
            RatingFailurePolicy::Reject => "refused (rating_failure = reject)".to_string(),
            RatingFailurePolicy::Allow(l) => {
                format!("allowed for {l} seconds (rating_failure = allow)")
            }
        };
        info!("No [CDRTool] address: calls get the fixed limit; prepaid calls are {what}");
        return Ok(Arc::new(NoRating));
    }
    let client = callcontrol_rating::CdrtoolClient::new(config.cdrtool.clone())
        .map_err(|e| anyhow!("[CDRTool]: {e}"))?;
    info!(
        "Prepaid calls are rated by CDRTool at {}",
        config
            .cdrtool
            .address
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(" ")
    );
    Ok(Arc::new(client))
}

/// The proxy's backend. Its datagram reply socket goes in `runtime_dir`
/// unless `reply_dir` is set, and gets the control socket's group and mode.
fn build_signalling(
    config: &Config,
    runtime_dir: &Path,
) -> anyhow::Result<Arc<dyn SignallingBackend>> {
    let group = Some(config.call_control.group.as_str()).filter(|g| !g.is_empty());
    match config.call_control.proxy {
        ProxyKind::None => {
            warn!("[CallControl] proxy = none: calls that reach their limit are not ended");
            Ok(Arc::new(LogSignalling))
        }
        ProxyKind::Opensips => {
            let mut mi_config = config.opensips.clone();
            mi_config
                .reply_dir
                .get_or_insert_with(|| runtime_dir.to_path_buf());
            let mi = MiClient::with_reply_group(mi_config, group)
                .map_err(|e| anyhow!("[OpenSIPS]: cannot set up the MI client: {e}"))?;
            info!(
                "Calls are ended through the OpenSIPS MI ({})",
                mi_target(&config.opensips)
            );
            Ok(Arc::new(mi))
        }
        ProxyKind::Kamailio => {
            let mut k_config = config.kamailio.clone();
            k_config
                .reply_dir
                .get_or_insert_with(|| runtime_dir.to_path_buf());
            let backend = Kamailio::with_reply_group(k_config, group)
                .map_err(|e| anyhow!("[Kamailio]: cannot bind the RPC reply socket: {e}"))?;
            info!(
                "Dialogs are ended with dlg.end_dlg through Kamailio's jsonrpcs interface {}",
                config.kamailio.url.clone().unwrap_or_else(|| config
                    .kamailio
                    .socket_path
                    .display()
                    .to_string())
            );
            Ok(Arc::new(backend))
        }
    }
}

fn mi_target(c: &MiConfig) -> String {
    match c.transport {
        MiTransport::Datagram => c.socket_path.display().to_string(),
        MiTransport::Http => c.url.clone(),
    }
}

async fn reload(current: &mut Config, options: &RunOptions, handle: &driver::Handle) {
    let Some(args) = &options.args else {
        info!("SIGHUP: no configuration file to reload");
        return;
    };
    // Re-read the file read at start (its path is absolute): if it is gone
    // or bad, keep running on the current settings rather than on whatever
    // another lookup would find (or the embedded defaults). A daemon started
    // on the defaults looks for a file again.
    let loaded = match &current.path {
        Some(path) => args.load_config_from(Some(path)),
        None => args.load_config(),
    };
    let new = match loaded {
        Ok(c) => c,
        Err(e) => {
            error!("Reload failed, keeping the current settings: {e}");
            return;
        }
    };
    let (old_live, new_live) = (current.live_settings(), new.live_settings());
    let changed: Vec<String> = old_live
        .iter()
        .zip(&new_live)
        .filter(|(a, b)| a.1 != b.1)
        .map(|(a, b)| format!("{} {} -> {}", a.0, a.1, b.1))
        .collect();
    if handle
        .reload(new.call_control.engine.clone())
        .await
        .is_err()
    {
        error!("Reload failed: the engine is stopping");
        return;
    }
    if changed.is_empty() {
        info!("Reloaded the configuration: no live setting changed");
    } else {
        info!("Reloaded the configuration: {}", changed.join(", "));
    }
    let not_live = changed_until_restart(current, &new, &options.runtime_dir);
    if !not_live.is_empty() {
        warn!(
            "Changed settings that take effect only after a restart: {}",
            not_live.join(", ")
        );
    }
    *current = new;
}

/// The settings that differ between `current` and `new` and are read only
/// at start (everything but the live `[CallControl]` settings, and the
/// engine's wait for a rating answer, `[CDRTool] timeout`, which the rating
/// client's own reply timeout keeps until a restart).
fn changed_until_restart(current: &Config, new: &Config, runtime_dir: &Path) -> Vec<&'static str> {
    let (c, n) = (&current.call_control, &new.call_control);
    let cdrtool_but_timeout = {
        let mut n = new.cdrtool.clone();
        n.timeout = current.cdrtool.timeout;
        n != current.cdrtool
    };
    [
        (
            "socket",
            current.socket(runtime_dir) != new.socket(runtime_dir),
        ),
        ("group", c.group != n.group),
        ("proxy", c.proxy != n.proxy),
        ("journal_fsync", c.journal_fsync != n.journal_fsync),
        ("[CDRTool]", cdrtool_but_timeout),
        (
            "the rating client's reply timeout (the engine's rating timeout applies now)",
            current.cdrtool.timeout != new.cdrtool.timeout,
        ),
        ("[OpenSIPS]", current.opensips != new.opensips),
        ("[Kamailio]", current.kamailio != new.kamailio),
        ("[Web]", current.web != new.web),
    ]
    .into_iter()
    .filter_map(|(name, changed)| changed.then_some(name))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reload_names_every_changed_setting_that_needs_a_restart() {
        let dir = Path::new("/run/callcontrol");
        let current = Config::default();
        assert!(changed_until_restart(&current, &current.clone(), dir).is_empty());
        let mut new = current.clone();
        new.cdrtool.pool_size = 9;
        new.call_control.group = "voip".into();
        new.web.port = Some(9001);
        assert_eq!(
            changed_until_restart(&current, &new, dir),
            ["group", "[CDRTool]", "[Web]"]
        );
        // `[CDRTool] timeout` is the engine's (live) and the client's.
        let mut new = current.clone();
        new.cdrtool.timeout = Duration::from_millis(900);
        new.call_control.engine.rating_timeout = Duration::from_millis(900);
        assert_eq!(
            changed_until_restart(&current, &new, dir),
            ["the rating client's reply timeout (the engine's rating timeout applies now)"]
        );
        // The live settings are not among them.
        let mut live = current.clone();
        live.call_control.engine.limit = Some(60);
        assert!(changed_until_restart(&current, &live, dir).is_empty());
    }
}
