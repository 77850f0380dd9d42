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
    async fn start(&self) -> Daemon {
        let _ = std::fs::remove_file(self.socket());
        let child = Command::new(DAEMON)
            .args(["--no-fork", "--debug", "--config-dir"])
            .arg(self.dir.path())
            .arg("--runtime-dir")
            .arg(self.run_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(if std::env::var_os("CC_TEST_LOG").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .spawn()
            .unwrap();
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
