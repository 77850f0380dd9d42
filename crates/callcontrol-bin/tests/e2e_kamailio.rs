//! End to end with a real SIP proxy: the real `call-control` daemon, Kamailio
//! running `docs/kamailio.cfg` (its `call_control`, `dialog` and `jsonrpcs`
//! modules), and SIPp callers and callees (`tests/e2e/*.xml`), all on
//! loopback, each process in a temporary directory of its own.
//!
//! Checks, with times taken from SIPp's own logs (each scenario logs
//! `ANSWER`/`BYE`/`HANGUP <call-id> <sec> <usec>` from SIPp's clock):
//! 1. a limited call (limit 3 s) gets a BYE at both the caller and the
//!    callee 3 s (± 0.5 s) after the answer;
//! 2. a call the caller hangs up after 1 s reaches the daemon as `stop`, and
//!    the daemon sends no `dlg.end_dlg` for it (its log);
//! 3. 20 concurrent limited calls are all cut at both ends;
//! 4. a call the daemon refuses gets the SIP error the config maps it to
//!    (`Error` → −5 → 500);
//! 5. afterwards Kamailio holds no dialog (`dlg.list` over `jsonrpcs`).
//!
//! Needs `kamailio` and `sipp` (Debian: `kamailio`, `sip-tester`;
//! `.ci/e2e-kamailio` installs them). Without them the test prints a loud
//! SKIPPED message and passes, unless `CALLCONTROL_E2E_REQUIRED=1`, which
//! the CI script sets so that a missing tool fails the run. Takes ~10 s.
//! The logs of every process are kept (and their place printed) when the
//! test fails, or always with `CALLCONTROL_E2E_KEEP=1`.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::net::UdpSocket;
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// The daemon's fixed limit, seconds.
const LIMIT: f64 = 3.0;
/// Allowed deviation of the measured cut from the limit, seconds.
const TOLERANCE: f64 = 0.5;
/// Concurrent calls in the load phase.
const CONCURRENT: usize = 20;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

/// A free UDP port on loopback (released at once; the race is harmless on a
/// test machine).
fn free_port() -> u16 {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind a UDP port");
    s.local_addr().expect("local address").port()
}

/// A child process in a process group of its own, stopped with SIGTERM (then
/// SIGKILL) on drop, so that Kamailio's worker processes go with it.
struct Proc {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn spawn(name: &'static str, cmd: &mut Command, log: &Path) -> Proc {
        let out = fs::File::create(log).expect("create log file");
        let err = out.try_clone().expect("clone log file");
        cmd.stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Proc {
            name,
            child,
            log: log.to_path_buf(),
        }
    }

    /// Waits for the process to exit by itself.
    fn wait(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() > deadline {
                panic!(
                    "{} did not finish within {limit:?}; log:\n{}",
                    self.name,
                    tail(&self.log, 40)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn signal_group(&self, sig: &str) {
        let _ = Command::new("kill")
            .args([sig, "--", &format!("-{}", self.child.id())])
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.running() {
            self.signal_group("-TERM");
            let deadline = Instant::now() + Duration::from_secs(5);
            while self.running() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        // Whatever is left of the group (workers), and the leader if stuck.
        self.signal_group("-KILL");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let mut s = String::new();
    if let Ok(mut f) = fs::File::open(path) {
        let _ = f.read_to_string(&mut s);
    }
    let all: Vec<&str> = s.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn wait_for(what: &str, limit: Duration, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One JSON-RPC request to Kamailio's `jsonrpcs` datagram socket, from a
/// bound socket of our own (Kamailio answers to the sender's address).
fn rpc(dir: &Path, socket: &Path, method: &str, params: Value) -> Result<Value, String> {
    let me = dir.join(format!("test-rpc-{}.sock", std::process::id()));
    let _ = fs::remove_file(&me);
    let s = UnixDatagram::bind(&me).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    let mut req = json!({"jsonrpc": "2.0", "method": method, "id": 1});
    if !params.is_null() {
        req["params"] = params;
    }
    s.send_to(req.to_string().as_bytes(), socket)
        .map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 65536];
    let n = s.recv(&mut buf).map_err(|e| e.to_string());
    let _ = fs::remove_file(&me);
    let v: Value = serde_json::from_slice(&buf[..n?]).map_err(|e| e.to_string())?;
    match v.get("result") {
        Some(r) => Ok(r.clone()),
        None => Err(v.to_string()),
    }
}

/// The `<log>` lines of a SIPp run: event → Call-ID → seconds.
#[derive(Debug, Default)]
struct Events(BTreeMap<String, BTreeMap<String, f64>>);

impl Events {
    fn read(path: &Path) -> Events {
        let mut ev = Events::default();
        let text = fs::read_to_string(path).unwrap_or_default();
        for line in text.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() == 4 {
                let (Ok(s), Ok(us)) = (f[2].parse::<f64>(), f[3].parse::<f64>()) else {
                    continue;
                };
                ev.0.entry(f[0].to_string())
                    .or_default()
                    .insert(f[1].to_string(), s + us / 1e6);
            } else if f.len() == 3 {
                ev.0.entry(f[0].to_string())
                    .or_default()
                    .insert(f[1].to_string(), f[2].parse().unwrap_or(0.0));
            }
        }
        ev
    }

    fn get(&self, event: &str) -> BTreeMap<String, f64> {
        self.0.get(event).cloned().unwrap_or_default()
    }

    /// BYE time minus ANSWER time, per Call-ID.
    fn cut_after_answer(&self) -> BTreeMap<String, f64> {
        let answers = self.get("ANSWER");
        self.get("BYE")
            .into_iter()
            .filter_map(|(id, bye)| answers.get(&id).map(|a| (id, bye - a)))
            .collect()
    }
}

struct Rig {
    dir: PathBuf,
    sipp: PathBuf,
    sip_port: u16,
    rpc_socket: PathBuf,
    /// Field order matters for drop: Kamailio stops before the daemon.
    kamailio: Proc,
    daemon: Proc,
}

impl Rig {
    /// Runs `uac` against a fresh UAS: `calls` calls, all at once.
    fn calls(
        &self,
        phase: &str,
        uac: &str,
        service: &str,
        calls: usize,
        with_uas: bool,
    ) -> (Events, Events) {
        let e2e = repo().join("tests/e2e");
        let uas_port = free_port();
        let uas_log = self.dir.join(format!("{phase}-uas.log"));
        let uac_log = self.dir.join(format!("{phase}-uac.log"));
        let sipp = |scenario: &Path, port: u16, log: &Path| {
            let mut c = Command::new(&self.sipp);
            c.arg("-sf").arg(scenario);
            c.args(["-i", "127.0.0.1", "-p", &port.to_string()]);
            c.args([
                "-nostdin",
                "-trace_logs",
                "-timeout",
                "40s",
                "-timeout_error",
            ]);
            c.arg("-log_file").arg(log);
            c.args(["-trace_err", "-error_file"])
                .arg(log.with_extension("err"));
            c
        };
        let mut uas = with_uas.then(|| {
            let mut c = sipp(&e2e.join("uas.xml"), uas_port, &uas_log);
            c.args(["-m", &calls.to_string()]);
            Proc::spawn(
                "SIPp UAS",
                &mut c,
                &self.dir.join(format!("{phase}-uas.out")),
            )
        });
        // No need to wait for the UAS to listen: Kamailio's transaction
        // layer retransmits the INVITE until it answers.
        let mut c = sipp(&e2e.join(uac), free_port(), &uac_log);
        c.arg(format!("127.0.0.1:{}", self.sip_port));
        c.args([
            "-s",
            service,
            "-key",
            "uas",
            &format!("127.0.0.1:{uas_port}"),
        ]);
        c.args([
            "-m",
            &calls.to_string(),
            "-l",
            &calls.to_string(),
            "-r",
            "100",
            "-rp",
            "1000",
        ]);
        let mut caller = Proc::spawn(
            "SIPp UAC",
            &mut c,
            &self.dir.join(format!("{phase}-uac.out")),
        );
        let status = caller.wait(Duration::from_secs(45));
        assert!(
            status.success(),
            "{phase}: SIPp UAC failed ({status}):\n{}\n{}\nKamailio:\n{}\nDaemon:\n{}",
            tail(&uac_log.with_extension("err"), 30),
            tail(&caller.log, 30),
            tail(&self.kamailio.log, 30),
            tail(&self.daemon.log, 30),
        );
        if let Some(uas) = uas.as_mut() {
            let status = uas.wait(Duration::from_secs(20));
            assert!(
                status.success(),
                "{phase}: SIPp UAS failed ({status}):\n{}",
                tail(&uas_log.with_extension("err"), 30)
            );
        }
        (Events::read(&uac_log), Events::read(&uas_log))
    }
}

fn summary(cuts: &BTreeMap<String, f64>) -> String {
    let v: Vec<f64> = cuts.values().copied().collect();
    if v.is_empty() {
        return "none".into();
    }
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    format!(
        "n={} min={min:.3} s mean={mean:.3} s max={max:.3} s",
        v.len()
    )
}

fn assert_cut_in_time(what: &str, cuts: &BTreeMap<String, f64>) {
    for (id, t) in cuts {
        assert!(
            (t - LIMIT).abs() <= TOLERANCE,
            "{what}: call {id} cut {t:.3} s after the answer, expected {LIMIT} ± {TOLERANCE} s"
        );
    }
}

#[test]
fn kamailio_sipp_and_the_real_daemon() {
    let required = std::env::var("CALLCONTROL_E2E_REQUIRED").is_ok_and(|v| v == "1");
    let (Some(kamailio), Some(sipp)) = (which("kamailio"), which("sipp")) else {
        let msg = "\n\n\
            ************************************************************************\n\
            ***  SKIPPED: Kamailio end-to-end test — `kamailio` and/or `sipp` are  ***\n\
            ***  not installed. Run .ci/e2e-kamailio (apt-get install kamailio     ***\n\
            ***  sip-tester) to run it.                                            ***\n\
            ************************************************************************\n";
        assert!(
            !required,
            "CALLCONTROL_E2E_REQUIRED=1 but kamailio/sipp missing{msg}"
        );
        eprintln!("{msg}");
        return;
    };
    let started = Instant::now();
    let tmp = tempfile::Builder::new()
        .prefix("cc-e2e-kamailio-")
        .tempdir()
        .expect("temp dir");
    let dir = tmp.path().to_path_buf();
    let _scratch = Scratch(Some(tmp));
    let run_dir = dir.join("run");
    let daemon_dir = dir.join("daemon");
    fs::create_dir_all(&run_dir).unwrap();
    fs::create_dir_all(&daemon_dir).unwrap();
    let cc_socket = daemon_dir.join("socket");
    let rpc_socket = run_dir.join("kamailio_rpc.sock");
    let sip_port = free_port();

    // 1. The daemon first: Kamailio's module connects at start-up.
    let ini = daemon_dir.join("config.ini");
    fs::write(
        &ini,
        format!(
            "[CallControl]\nsocket = {}\nlimit = {LIMIT}\nproxy = kamailio\n\n[Kamailio]\nsocket_path = {}\nreply_dir = {}\ntimeout = 1000\n",
            cc_socket.display(),
            rpc_socket.display(),
            daemon_dir.display()
        ),
    )
    .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_call-control"));
    cmd.args(daemon_args(&ini, &daemon_dir));
    cmd.env("RUST_LOG", "debug");
    let mut daemon = Proc::spawn("call-control", &mut cmd, &dir.join("daemon.log"));
    wait_for("the daemon's socket", Duration::from_secs(10), || {
        assert!(
            daemon.running(),
            "the daemon exited:\n{}",
            tail(&dir.join("daemon.log"), 30)
        );
        std::os::unix::net::UnixStream::connect(&cc_socket).is_ok()
    });

    // 2. Kamailio with the example configuration, parametrised by defines.
    let mut cmd = Command::new(kamailio);
    cmd.arg("-f").arg(repo().join("docs/kamailio.cfg"));
    cmd.args(["-DD", "-E", "-n", "4"]);
    cmd.arg("-P").arg(run_dir.join("kamailio.pid"));
    cmd.arg("-A")
        .arg(format!("CC_LISTEN=udp:127.0.0.1:{sip_port}"));
    cmd.arg("-A")
        .arg(format!("CC_RUNDIR=\"{}\"", run_dir.display()));
    cmd.arg("-A")
        .arg(format!("CC_SOCKET=\"{}\"", cc_socket.display()));
    cmd.arg("-A")
        .arg(format!("CC_RPC_SOCKET=\"{}\"", rpc_socket.display()));
    let mut kamailio = Proc::spawn("kamailio", &mut cmd, &dir.join("kamailio.log"));
    wait_for("Kamailio's RPC socket", Duration::from_secs(15), || {
        assert!(
            kamailio.running(),
            "Kamailio exited:\n{}",
            tail(&dir.join("kamailio.log"), 30)
        );
        rpc(&dir, &rpc_socket, "core.version", Value::Null).is_ok()
    });
    let version = rpc(&dir, &rpc_socket, "core.version", Value::Null).unwrap();
    eprintln!(
        "e2e: {} on udp:127.0.0.1:{sip_port}, daemon limit {LIMIT} s",
        version.as_str().unwrap_or("?").trim()
    );

    let rig = Rig {
        dir: dir.clone(),
        sipp,
        sip_port,
        rpc_socket,
        kamailio,
        daemon,
    };

    // Phase 1: one limited call.
    let (uac, uas) = rig.calls("limited", "uac_limited.xml", "limit3", 1, true);
    let (caller_cut, callee_cut) = (uac.cut_after_answer(), uas.cut_after_answer());
    eprintln!(
        "e2e: single call, BYE after answer: caller {}, callee {}",
        summary(&caller_cut),
        summary(&callee_cut)
    );
    assert_eq!(
        (caller_cut.len(), callee_cut.len()),
        (1, 1),
        "the call must be cut at both ends"
    );
    assert_cut_in_time("caller", &caller_cut);
    assert_cut_in_time("callee", &callee_cut);

    // Phase 2: the caller hangs up at 1 s.
    let (uac, uas) = rig.calls("hangup", "uac_hangup.xml", "limit3", 1, true);
    let hung_up: Vec<String> = uac.get("HANGUP").into_keys().collect();
    assert_eq!(hung_up.len(), 1);
    assert_eq!(uas.get("BYE").len(), 1, "the callee gets the caller's BYE");

    // Phase 3: concurrent limited calls (also gives the phase-2 call time
    // to pass its limit, had the daemon not been told).
    let (uac, uas) = rig.calls("concurrent", "uac_limited.xml", "limit3", CONCURRENT, true);
    let (caller_cut, callee_cut) = (uac.cut_after_answer(), uas.cut_after_answer());
    eprintln!(
        "e2e: {CONCURRENT} concurrent calls, BYE after answer: caller {}, callee {}",
        summary(&caller_cut),
        summary(&callee_cut)
    );
    assert_eq!(caller_cut.len(), CONCURRENT, "every caller gets a BYE");
    assert_eq!(callee_cut.len(), CONCURRENT, "every callee gets a BYE");
    assert_cut_in_time("concurrent caller", &caller_cut);
    assert_cut_in_time("concurrent callee", &callee_cut);

    // Phase 4: a call the daemon refuses.
    let (uac, _) = rig.calls("refused", "uac_refused.xml", "limit3", 1, false);
    let refused = uac.get("REFUSED");
    assert_eq!(
        refused.values().copied().collect::<Vec<_>>(),
        vec![500.0],
        "refused with 500"
    );
    eprintln!("e2e: refused call answered 500 by Kamailio");

    // Phase 2's checks, now that its limit would have passed: the daemon got
    // `stop` and never asked Kamailio to end that dialog.
    let log = fs::read_to_string(&rig.daemon.log).unwrap_or_default();
    let id = &hung_up[0];
    let about: Vec<&str> = log.lines().filter(|l| l.contains(id.as_str())).collect();
    assert!(
        !about.is_empty(),
        "the daemon never heard of the hung-up call {id}:\n{}",
        tail(&rig.daemon.log, 40)
    );
    assert!(
        about.iter().any(|l| l.contains("stopped")),
        "no sign of the `stop` for the hung-up call {id}:\n{}",
        about.join("\n")
    );
    assert!(
        !about.iter().any(|l| l.contains("dlg.end_dlg")),
        "the daemon sent dlg.end_dlg for a call the caller ended:\n{}",
        about.join("\n")
    );
    let ended: usize = log
        .lines()
        .filter(|l| l.contains("Sending dlg.end_dlg"))
        .count();
    eprintln!("e2e: hung-up call got stop, no dlg.end_dlg; dlg.end_dlg sent {ended} times in all");
    assert_eq!(ended, 1 + CONCURRENT, "one dlg.end_dlg per limited call");

    // No call but the refused one got −5 (a crossed or lost reply on the
    // call_control socket shows up here).
    let klog = fs::read_to_string(&rig.kamailio.log).unwrap_or_default();
    let errors: Vec<&str> = klog
        .lines()
        .filter(|l| l.contains("call control: error") || l.contains("send_command"))
        .collect();
    assert_eq!(
        errors.len(),
        1,
        "call_control failures in Kamailio:\n{}",
        errors.join("\n")
    );

    // Finally Kamailio must hold no dialog (ended ones linger a moment).
    let t = Instant::now();
    let mut last = Value::Null;
    let drained = (0..600).any(|_| {
        last = rpc(&dir, &rig.rpc_socket, "dlg.list", Value::Null).unwrap_or(Value::Null);
        if last.as_array().is_some_and(Vec::is_empty) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
        false
    });
    assert!(drained, "dialogs left in Kamailio: {last}");
    eprintln!(
        "e2e: dlg.list empty after {:.1} s; whole test {:.1} s",
        t.elapsed().as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    drop(rig);
}

/// The test's directory; kept (and named) when the test fails or
/// `CALLCONTROL_E2E_KEEP` is set, removed otherwise.
struct Scratch(Option<tempfile::TempDir>);

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("CALLCONTROL_E2E_KEEP").is_some() {
            if let Some(t) = self.0.take() {
                eprintln!("e2e: logs kept in {}", t.keep().display());
            }
        }
    }
}

/// The daemon's command line: foreground, logging to stderr at debug level,
/// the test's config file and runtime directory.
fn daemon_args(ini: &Path, runtime_dir: &Path) -> Vec<String> {
    vec![
        "--config".into(),
        ini.display().to_string(),
        "--runtime-dir".into(),
        runtime_dir.display().to_string(),
        "--no-fork".into(),
        "--debug".into(),
    ]
}
