//! The real `call-control` and `call-control-cli` binaries, driven by fake
//! OpenSIPS workers on the control socket and a fake OpenSIPS MI endpoint.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use callcontrol_core::request::{Found, InitReply};
use callcontrol_core::types::{CallId, DialogId};
use callcontrol_opensips::testkit::{opensips_init, FakeMi, MiVersion, Worker};

const DAEMON: &str = env!("CARGO_BIN_EXE_call-control");
const CLI: &str = env!("CARGO_BIN_EXE_call-control-cli");

struct Setup {
    dir: tempfile::TempDir,
    mi: FakeMi,
    _mi_task: tokio::task::JoinHandle<()>,
}

impl Setup {
    fn new(call_control: &str) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let mi = FakeMi::new(MiVersion::V3_6);
        let mi_task = mi.serve_datagram(dir.path().join("mi.sock")).unwrap();
        let config = format!(
            "[CallControl]\ngroup = None\n{call_control}\n[OpenSIPS]\nsocket_path = {}\nreply_dir = {}\ntimeout = 0.5\n",
            dir.path().join("mi.sock").display(),
            dir.path().display()
        );
        std::fs::write(dir.path().join("config.ini"), config).unwrap();
        Setup {
            dir,
            mi,
            _mi_task: mi_task,
        }
    }
    fn run_dir(&self) -> PathBuf {
        self.dir.path().join("run")
    }
    fn socket(&self) -> PathBuf {
        self.run_dir().join("socket")
    }
    /// `call-control --no-fork --debug` on this setup's files.
    fn command(&self) -> Command {
        let mut cmd = Command::new(DAEMON);
        cmd.args(["--no-fork", "--debug", "--config-dir"])
            .arg(self.dir.path())
            .arg("--runtime-dir")
            .arg(self.run_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(if std::env::var_os("CC_TEST_LOG").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            });
        cmd
    }
    async fn start(&self) -> Daemon {
        let _ = std::fs::remove_file(self.socket());
        self.spawn(self.command()).await
    }
    /// Spawns `cmd` and waits for the socket.
    async fn spawn(&self, mut cmd: Command) -> Daemon {
        let child = cmd.spawn().unwrap();
        let mut d = Daemon { child };
        eventually("the daemon's socket", || {
            std::os::unix::net::UnixStream::connect(self.socket()).is_ok()
        })
        .await;
        assert!(d.child.try_wait().unwrap().is_none(), "the daemon exited");
        d
    }
    async fn worker(&self) -> Worker {
        Worker::connect(self.socket()).await.unwrap()
    }
    fn cli(&self, args: &[&str]) -> Output {
        Command::new(CLI)
            .arg("--runtime-dir")
            .arg(self.run_dir())
            .args(args)
            .output()
            .unwrap()
    }
    async fn ended(&self, call_id: &str) -> bool {
        self.mi.ended().contains(&CallId::new(call_id))
    }
}

struct Daemon {
    child: Child,
}

impl Daemon {
    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(sig)
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(ok.success());
    }
    async fn wait(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(Instant::now() < deadline, "the daemon did not exit");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    async fn terminate(&mut self) -> std::process::ExitStatus {
        self.signal("-TERM");
        self.wait().await
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn wall() -> Duration {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap()
}

async fn answered_call(setup: &Setup, call_id: &str, d: DialogId) {
    let mut w = setup.worker().await;
    assert_eq!(
        w.init(opensips_init(call_id, "caller1")).await.unwrap(),
        InitReply::Limited
    );
    setup.mi.add_dialog(call_id, d);
    assert_eq!(w.start(call_id, d).await.unwrap(), Found::Ok);
}

#[tokio::test]
async fn list_show_terminate_through_the_cli_then_sigterm_saves_and_removes_the_socket() {
    let setup = Setup::new("limit = 600");
    let mut daemon = setup.start().await;
    answered_call(&setup, "c1@h", DialogId::new(0xb61, 0x41fa2203)).await;
    let mut w = setup.worker().await;
    assert_eq!(
        w.init(opensips_init("c2@h", "bob")).await.unwrap(),
        InitReply::Limited
    );

    let o = setup.cli(&["list"]);
    assert_eq!(o.status.code(), Some(0));
    let text = stdout(&o);
    assert!(
        text.contains(
            "Call id c1@h of caller1@example.com to sip:1000@127.0.0.1:5060: in-progress"
        ),
        "{text}"
    );
    assert!(text.contains("Call id c2@h of bob@example.com"), "{text}");

    let o = setup.cli(&["list", "bob", "--json"]);
    assert_eq!(o.status.code(), Some(0));
    let rows: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 1, "{rows}");
    assert_eq!(rows[0]["call_id"], "c2@h");
    assert_eq!(rows[0]["state"], "pending");

    let o = setup.cli(&["show", "c1@h"]);
    assert_eq!(o.status.code(), Some(0));
    assert!(stdout(&o).contains("c1@h"), "{}", stdout(&o));
    let o = setup.cli(&["show", "c1@h", "--json"]);
    let fields: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(
        fields.as_object().unwrap().values().any(|v| v == "c1@h"),
        "{fields}"
    );

    let o = setup.cli(&["show", "nope"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).contains("Call id nope does not exist"));

    let o = setup.cli(&["terminate", "c1@h"]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    eventually("the BYE for c1", || {
        setup.mi.ended().contains(&CallId::new("c1@h"))
    })
    .await;
    // The DID form for OpenSIPS 3.6.
    assert!(
        setup.mi.end_requests().iter().any(|p| p == "16b.3022af14"),
        "{:?}",
        setup.mi.end_requests()
    );

    let status = daemon.terminate().await;
    assert!(status.success(), "{status:?}");
    assert!(!setup.socket().exists(), "the socket is removed");
    let saved = std::fs::read_to_string(setup.run_dir().join("sessions.snapshot")).unwrap();
    assert!(saved.contains("c2@h"), "the pending call is saved: {saved}");
    assert!(saved.contains("\"clean\":true"));
}

#[tokio::test]
async fn a_restart_restores_sessions_and_their_timers_fire_on_the_wall_clock() {
    let setup = Setup::new("limit = 3");
    let mut daemon = setup.start().await;
    let answered_at = wall();
    answered_call(&setup, "r1@h", DialogId::new(1, 2)).await;
    assert!(daemon.terminate().await.success());
    assert!(!setup.ended("r1@h").await, "not ended by the shutdown");

    let mut daemon = setup.start().await;
    let o = setup.cli(&["list", "--json"]);
    let rows: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(rows[0]["call_id"], "r1@h", "{rows}");
    assert_eq!(rows[0]["state"], "in-progress");

    eventually("the restored timer", || {
        setup.mi.ended().contains(&CallId::new("r1@h"))
    })
    .await;
    let fired = wall() - answered_at;
    assert!(
        fired >= Duration::from_secs(3),
        "fired after {fired:?}, before the 3 s limit"
    );
    assert!(daemon.terminate().await.success());
}

#[tokio::test]
async fn a_call_that_expired_while_the_daemon_was_down_is_ended_at_start() {
    let setup = Setup::new("limit = 1");
    let mut daemon = setup.start().await;
    answered_call(&setup, "x1@h", DialogId::new(3, 4)).await;
    assert!(daemon.terminate().await.success());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!setup.ended("x1@h").await);

    let mut daemon = setup.start().await;
    eventually("the expired call ended at start", || {
        setup.mi.ended().contains(&CallId::new("x1@h"))
    })
    .await;
    assert!(daemon.terminate().await.success());
}

#[tokio::test]
async fn kill_9_then_restart_loses_nothing() {
    let setup = Setup::new("limit = 600");
    let daemon = setup.start().await;
    answered_call(&setup, "k1@h", DialogId::new(5, 6)).await;
    let mut w = setup.worker().await;
    assert_eq!(
        w.init(opensips_init("k2@h", "bob")).await.unwrap(),
        InitReply::Limited
    );
    // SIGKILL right after the replies: they were acknowledged, so they must
    // have been written.
    drop(daemon);

    let mut daemon = setup.start().await;
    let o = setup.cli(&["list", "--json"]);
    let rows: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let mut ids: Vec<String> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["call_id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    assert_eq!(ids, vec!["k1@h", "k2@h"]);
    // Each as it was acknowledged: the answered call's `start` (journalled
    // as an update of its `init` record) was not lost either.
    let state = |id: &str| {
        rows.as_array()
            .unwrap()
            .iter()
            .find(|r| r["call_id"] == id)
            .unwrap()["state"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(state("k1@h"), "in-progress");
    assert_eq!(state("k2@h"), "pending");
    // And the calls go on: the proxy's stop is recognised.
    let mut w = setup.worker().await;
    assert_eq!(w.stop("k1@h").await.unwrap(), Found::Ok);
    assert!(daemon.terminate().await.success());
}

#[tokio::test]
async fn a_bad_config_value_exits_2_naming_section_key_and_value() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("config.ini"),
        "[CallControl]\nlimit = ten\n",
    )
    .unwrap();
    let o = Command::new(DAEMON)
        .args(["--no-fork", "--config-dir"])
        .arg(dir.path())
        .arg("--runtime-dir")
        .arg(dir.path().join("run"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("[CallControl] limit = \"ten\""), "{err}");
    assert!(!dir.path().join("run").join("socket").exists());
}

#[tokio::test]
async fn the_cli_without_a_daemon_says_so_and_does_not_hang() {
    let dir = tempfile::tempdir().unwrap();
    let o = Command::new(CLI)
        .arg("--runtime-dir")
        .arg(dir.path())
        .arg("list")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("not running"));

    // A socket nobody answers on: the timeout, not a hang.
    let path = dir.path().join("socket");
    let _listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let o = Command::new(CLI)
        .args(["--timeout", "0.3", "--socket"])
        .arg(&path)
        .args(["show", "x"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("did not answer"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[tokio::test]
async fn the_shipped_sample_config_runs() {
    let dir = tempfile::tempdir().unwrap();
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config.ini.sample");
    let o = Command::new(DAEMON)
        .arg("--config")
        .arg(&sample)
        .arg("--check-config")
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(stdout(&o).contains("limit: None"));
    drop(dir);
}

/// The sessions the daemon lists, as (call id, limit).
fn listed(setup: &Setup) -> Vec<(String, Option<u64>)> {
    let o = setup.cli(&["list", "--json"]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let rows: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let mut rows: Vec<(String, Option<u64>)> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["call_id"].as_str().unwrap().to_string(),
                r["limit"].as_u64(),
            )
        })
        .collect();
    rows.sort();
    rows
}

fn limit_of(setup: &Setup, call_id: &str) -> Option<u64> {
    listed(setup)
        .into_iter()
        .find(|(id, _)| id == call_id)
        .unwrap_or_else(|| panic!("{call_id} is not listed"))
        .1
}

#[tokio::test]
async fn a_second_daemon_on_the_same_runtime_dir_refuses_and_leaves_the_journal_alone() {
    let setup = Setup::new("limit = 600");
    let daemon = setup.start().await;
    answered_call(&setup, "s1@h", DialogId::new(7, 8)).await;
    let mut w = setup.worker().await;
    assert_eq!(
        w.init(opensips_init("s2@h", "bob")).await.unwrap(),
        InitReply::Limited
    );

    let o = setup.command().stderr(Stdio::piped()).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("another call-control is already running"),
        "{err}"
    );
    assert!(err.contains("call-control.lock"), "{err}");

    // The first daemon goes on, and its journal still records.
    assert_eq!(
        w.init(opensips_init("s3@h", "carol")).await.unwrap(),
        InitReply::Limited
    );
    drop(daemon); // kill -9

    let mut daemon = setup.start().await;
    let ids: Vec<String> = listed(&setup).into_iter().map(|r| r.0).collect();
    assert_eq!(ids, vec!["s1@h", "s2@h", "s3@h"]);
    assert!(daemon.terminate().await.success());
}

/// A daemon started in the background (the default mode): killed on drop.
struct Forked {
    pid: String,
}

impl Forked {
    fn alive(&self) -> bool {
        Path::new("/proc").join(&self.pid).exists()
            && !std::fs::read_to_string(Path::new("/proc").join(&self.pid).join("stat"))
                .is_ok_and(|s| s.contains(") Z "))
    }
}

impl Drop for Forked {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-KILL", &self.pid]).status();
    }
}

#[tokio::test]
async fn forked_with_relative_paths_reload_reads_the_same_file_and_a_refused_start_keeps_the_pid_file(
) {
    let setup = Setup::new("limit = 100");
    let forked = || {
        Command::new(DAEMON)
            .current_dir(setup.dir.path())
            .args(["--config-dir", ".", "--runtime-dir", "run"])
            .output()
            .unwrap()
    };
    let o = forked();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let pid_file = setup.run_dir().join("call-control.pid");
    let pid = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .to_string();
    let daemon = Forked { pid: pid.clone() };
    assert!(daemon.alive());

    let mut w = setup.worker().await;
    assert_eq!(
        w.init(opensips_init("f0@h", "alice")).await.unwrap(),
        InitReply::Limited
    );
    assert_eq!(limit_of(&setup, "f0@h"), Some(100));

    // The daemon runs in /: the relative --config-dir was resolved at start.
    let config = setup.dir.path().join("config.ini");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("limit = 100", "limit = 200")).unwrap();
    let ok = Command::new("kill").args(["-HUP", &pid]).status().unwrap();
    assert!(ok.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    for n in 1.. {
        let id = format!("f{n}@h");
        assert_eq!(
            w.init(opensips_init(&id, "alice")).await.unwrap(),
            InitReply::Limited
        );
        if limit_of(&setup, &id) == Some(200) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the reload was not applied: {:?}",
            listed(&setup)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A second daemon is refused, and the first one's PID file stays.
    let o = forked();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("already running"), "{err}");
    assert_eq!(std::fs::read_to_string(&pid_file).unwrap().trim(), pid);
    assert!(daemon.alive());

    let ok = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(ok.success());
    eventually("the daemon to exit", || !daemon.alive()).await;
    assert!(!pid_file.exists(), "the daemon removes its PID file");
    assert!(!setup.socket().exists());
}

#[tokio::test]
async fn sighup_rereads_the_file_found_at_start_and_keeps_the_settings_when_it_is_gone() {
    let setup = Setup::new("limit = 100");
    let log = setup.dir.path().join("daemon.log");
    let mut cmd = Command::new(DAEMON);
    cmd.current_dir(setup.dir.path())
        .args(["--no-fork", "--config-dir", ".", "--runtime-dir", "run"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    let mut daemon = setup.spawn(cmd).await;
    let logged = |what: &str| std::fs::read_to_string(&log).unwrap().contains(what);
    let mut w = setup.worker().await;
    assert_eq!(
        w.init(opensips_init("h1@h", "alice")).await.unwrap(),
        InitReply::Limited
    );
    assert_eq!(limit_of(&setup, "h1@h"), Some(100));

    let config = setup.dir.path().join("config.ini");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("limit = 100", "limit = 200")).unwrap();
    daemon.signal("-HUP");
    eventually("the reload", || logged("Reloaded the configuration")).await;
    assert!(
        logged("limit 100 -> 200"),
        "{}",
        std::fs::read_to_string(&log).unwrap()
    );
    assert_eq!(
        w.init(opensips_init("h2@h", "alice")).await.unwrap(),
        InitReply::Limited
    );
    assert_eq!(limit_of(&setup, "h2@h"), Some(200));

    // The file is gone: no fallback to another file or to the defaults.
    std::fs::remove_file(&config).unwrap();
    daemon.signal("-HUP");
    eventually("the refused reload", || logged("Reload failed")).await;
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("Reload failed, keeping the current settings") && text.contains("config.ini"),
        "{text}"
    );
    assert_eq!(
        w.init(opensips_init("h3@h", "alice")).await.unwrap(),
        InitReply::Limited
    );
    assert_eq!(limit_of(&setup, "h3@h"), Some(200));
    assert!(daemon.terminate().await.success());
}

#[tokio::test]
async fn sigterm_with_a_client_that_never_reads_its_replies_still_exits() {
    use std::io::Write;
    let setup = Setup::new("limit = 600");
    let mut daemon = setup.start().await;
    let mut stream = std::os::unix::net::UnixStream::connect(setup.socket()).unwrap();
    stream
        .set_write_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let batch: Vec<u8> = (0..100)
        .flat_map(|i| format!("stop\r\ncallid: never-read-{i}\r\n\r\n").into_bytes())
        .collect();
    // Pipeline requests until both socket buffers are full: the daemon is
    // then stuck writing replies nobody reads.
    let mut written = 0usize;
    while stream.write_all(&batch).is_ok() {
        written += batch.len();
        assert!(written < 512 << 20, "the daemon never stopped reading");
    }

    let status = daemon.terminate().await;
    assert!(status.success(), "{status:?}");
    assert!(!setup.socket().exists(), "the socket is removed");
    let saved = std::fs::read_to_string(setup.run_dir().join("sessions.snapshot")).unwrap();
    assert!(saved.contains("\"clean\":true"), "{saved}");
    drop(stream);
}

#[test]
fn the_cli_refuses_a_timeout_that_is_not_a_positive_number() {
    for bad in ["nan", "inf", "-1", "0", "soon"] {
        let o = Command::new(CLI)
            .args(["--timeout", bad, "list"])
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2), "--timeout {bad}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("--timeout"), "{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

/// A tmpfs mounted for the life of a test (root only), unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `size` on `path`; `None` when not allowed.
    fn mount(path: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(path).unwrap();
        let mounted = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(path)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        mounted.then(|| Tmpfs(path.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills the filesystem of `path` (a file written until it is full).
fn fill(path: &Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0xa5u8; 16 * 1024];
    while f.write_all(&chunk).is_ok() {}
    // The last partial chunk may have been kept by the page cache only.
    let _ = f.sync_all();
}

/// A call with a long request URI: its `init` takes about 7 KB of journal.
fn bulky_init(call_id: &str) -> callcontrol_core::request::InitRequest {
    let mut req = opensips_init(call_id, "filler");
    req.ruri = format!("sip:{}@example.com", "7".repeat(7000));
    req
}

#[tokio::test]
async fn a_full_disk_loses_no_session_once_there_is_room_again() {
    let setup = Setup::new("limit = 600");
    let Some(_tmpfs) = Tmpfs::mount(&setup.run_dir(), "8m") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI runs the tests as root: mounting a tmpfs must work there"
        );
        eprintln!("skipped: mounting a tmpfs for the runtime directory needs root");
        return;
    };
    let log = setup.dir.path().join("daemon.log");
    let mut cmd = setup.command();
    cmd.stderr(std::fs::File::create(&log).unwrap());
    let daemon = setup.spawn(cmd).await;
    let logged = |what: &str| std::fs::read_to_string(&log).unwrap().contains(what);
    answered_call(&setup, "before@h", DialogId::new(1, 1)).await;

    // The disk fills up; calls go on until the journal outgrows the space it
    // had reserved.
    let ballast = setup.dir.path().join("run").join("ballast");
    fill(&ballast);
    let mut w = setup.worker().await;
    let mut n = 0;
    while !logged("Session journal write failed") {
        assert!(n < 2_000, "the journal never found the disk full");
        let id = format!("filler-{n}@h");
        assert_eq!(w.init(bulky_init(&id)).await.unwrap(), InitReply::Limited);
        assert_eq!(w.stop(&id).await.unwrap(), Found::Ok);
        n += 1;
    }
    // The whole state is not even serialised while it cannot fit.
    assert!(logged("not tried"));
    assert!(!setup.run_dir().join("sessions.snapshot.tmp").exists());
    // Still answering, and what it acknowledges now is kept in memory.
    for k in 0..3 {
        answered_call(&setup, &format!("full-{k}@h"), DialogId::new(2, k)).await;
    }
    let mut listed_ids: Vec<String> = listed(&setup).into_iter().map(|(id, _)| id).collect();
    assert_eq!(listed_ids, ["before@h", "full-0@h", "full-1@h", "full-2@h"]);

    // Room again: a request after the retry period has the whole state
    // written, and journalling resumes.
    std::fs::remove_file(&ballast).unwrap();
    let mut probe = 0;
    while !logged("Session journal writable again") {
        assert!(probe < 100, "the state was never written again");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let id = format!("probe-{probe}@h");
        assert_eq!(
            w.init(opensips_init(&id, "p")).await.unwrap(),
            InitReply::Limited
        );
        assert_eq!(w.stop(&id).await.unwrap(), Found::Ok);
        probe += 1;
    }
    answered_call(&setup, "after@h", DialogId::new(3, 1)).await;

    // kill -9: every call acknowledged, before, during and after the full
    // disk, is there after a restart.
    drop(daemon);
    let mut daemon = setup.start().await;
    listed_ids = listed(&setup).into_iter().map(|(id, _)| id).collect();
    assert_eq!(
        listed_ids,
        ["after@h", "before@h", "full-0@h", "full-1@h", "full-2@h"]
    );
    assert!(daemon.terminate().await.success());
}
