//! A durable [`SessionStore`]: an append-only journal plus a snapshot, in the
//! daemon's runtime directory.
//!
//! # Layout on disk
//!
//! - `sessions.snapshot`: the whole state (JSON) as of the last compaction,
//!   with the time it was written and whether the daemon stopped cleanly.
//!   Replaced atomically (write a temporary file, fsync, rename, fsync the
//!   directory).
//! - `sessions.journal`: records appended since, each
//!   `len: u32 LE | crc32(payload): u32 LE | payload` with a postcard (compact binary serde) payload. The
//!   file is mapped shared and its space reserved ahead (`posix_fallocate`),
//!   so its tail is zeros, read as the end. A record whose length is zero,
//!   runs past the end of the file or whose checksum does not match is a
//!   torn write (the process died mid-append or the machine lost power
//!   before the page cache reached the disk): it and everything after it are
//!   dropped at start-up.
//!
//! # Durability
//!
//! [`SessionStore::apply`] encodes the whole batch in place in the mapping:
//! once it returns, the batch is in the page cache and survives `kill -9`
//! and OOM kills, exactly as after a `write()`, without a system call.
//! Surviving power loss needs an `fsync`, per [`FsyncPolicy`]: after every
//! batch, every interval (default 1 s, by a background thread, without the
//! lock), or never. See `docs/adr/0002-journal.md`.
//!
//! # Down time
//!
//! Restart reconciliation needs to know since when the daemon has been
//! down. Every record carries the wall-clock time it was written, the
//! background thread appends a small `Alive` record when nothing else was
//! written for a while, and a clean shutdown appends `Shutdown`; the latest
//! of these is [`Recovery::down_since`].
//!
//! Compaction (snapshot + empty journal) happens at open, at clean close, and
//! when the journal grows past [`JournalOptions::compact_bytes`] (or the last
//! snapshot's size, if larger). The journal keeps no copy of the state: it
//! asks for it ([`SessionStore::wants_state`]) and the driver hands over the
//! engine's records, shared ([`SessionStore::save_state`]).
//!
//! ```
//! use callcontrol_core::journal::{Journal, JournalOptions};
//! use callcontrol_core::store::SessionStore;
//!
//! let dir = std::env::temp_dir().join(format!("cc-journal-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&dir).unwrap();
//! let mut journal = Journal::open(&dir, JournalOptions::default()).unwrap();
//! assert!(journal.load().unwrap().sessions.is_empty());
//! journal.close().unwrap();
//! # std::fs::remove_dir_all(&dir).unwrap();
//! ```

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use log::{debug, error, info, warn};
use serde::{Deserialize, Serialize};

use crate::error::StoreError;
use crate::session::Session;
use crate::store::{OwedDebit, SessionStore, SharedState, Snapshot, StoreChange};
use crate::types::Timestamp;

/// File name of the journal inside the runtime directory.
pub const JOURNAL_FILE: &str = "sessions.journal";
/// The journal being folded into a new snapshot by a background compaction
/// (replayed between the snapshot and the journal if the daemon dies first).
pub const OLD_JOURNAL_FILE: &str = "sessions.journal.old";
/// File name of the snapshot inside the runtime directory.
pub const SNAPSHOT_FILE: &str = "sessions.snapshot";

/// A record is refused at load when its length field is larger than this
/// (a corrupt length must not make us allocate gigabytes).
const MAX_RECORD: u32 = 64 * 1024 * 1024;

/// When the journal is flushed to stable storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// `fdatasync` after every batch: survives power loss, costs a disk
    /// flush per batch (group commit keeps it to one per batch, not per call).
    Always,
    /// `fdatasync` at most this often, from a background thread: a power
    /// loss may lose up to this much; a process crash loses nothing.
    Interval(Duration),
    /// Never (the OS writes back when it likes): a process crash loses
    /// nothing, a power loss may lose up to ~30 s.
    Never,
}

impl Default for FsyncPolicy {
    fn default() -> Self {
        FsyncPolicy::Interval(Duration::from_secs(1))
    }
}

impl FromStr for FsyncPolicy {
    type Err = String;
    /// `always`, `never`, `interval` (1 s) or `interval:<ms>`.
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim().to_ascii_lowercase();
        match s.as_str() {
            "always" => Ok(FsyncPolicy::Always),
            "never" => Ok(FsyncPolicy::Never),
            "interval" => Ok(FsyncPolicy::default()),
            _ => match s.strip_prefix("interval:") {
                Some(ms) => ms
                    .trim()
                    .trim_end_matches("ms")
                    .parse::<u64>()
                    .ok()
                    .filter(|ms| *ms > 0)
                    .map(|ms| FsyncPolicy::Interval(Duration::from_millis(ms)))
                    .ok_or_else(|| {
                        format!("bad fsync interval {s:?} (expected interval:<milliseconds>)")
                    }),
                None => Err(format!(
                    "unknown fsync policy {s:?} (expected always, interval or never)"
                )),
            },
        }
    }
}

/// Settings of a [`Journal`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalOptions {
    /// When to fsync.
    pub fsync: FsyncPolicy,
    /// Compact when the journal file grows past this many bytes.
    pub compact_bytes: u64,
    /// Append an `Alive` record when nothing was written for this long, so
    /// the down time of a crashed daemon is known to within this much.
    pub heartbeat: Duration,
}

impl Default for JournalOptions {
    fn default() -> Self {
        JournalOptions {
            fsync: FsyncPolicy::default(),
            compact_bytes: 8 * 1024 * 1024,
            heartbeat: Duration::from_secs(5),
        }
    }
}

/// What [`Journal::open`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    /// The last moment the previous daemon is known to have been alive
    /// (`None` on a first start).
    pub down_since: Option<Timestamp>,
    /// Whether the previous daemon stopped cleanly.
    pub clean_shutdown: bool,
    /// Journal records replayed on top of the snapshot.
    pub records_replayed: u64,
    /// Bytes dropped from the end of the journal (a torn or corrupt tail).
    pub dropped_bytes: u64,
}

#[derive(Debug, Serialize, Deserialize)]
enum Record<'a> {
    /// A batch of changes, written at `at` (ms since the epoch). Borrowed when
    /// written (no copy of the sessions), owned when read back.
    Changes {
        at: u64,
        changes: std::borrow::Cow<'a, [StoreChange]>,
    },
    /// Nothing changed, the daemon was alive at `at`.
    Alive { at: u64 },
    /// Clean shutdown at `at`.
    Shutdown { at: u64 },
}

#[derive(Debug, Serialize, Deserialize)]
struct SnapshotFile {
    version: u32,
    /// When the snapshot was written (ms since the epoch).
    saved_at: u64,
    /// Written by a clean shutdown.
    clean: bool,
    /// The last moment the daemon was known alive before this snapshot
    /// (kept across the compaction at start-up).
    down_since: Option<u64>,
    state: Snapshot,
}

struct Inner {
    dir: PathBuf,
    seg: Segment,
    opts: JournalOptions,
    dirty: bool,
    /// Records appended so far: the background thread notices when it stops
    /// changing (and writes a heartbeat) without a clock read per append.
    appends: u64,
    closed: bool,
    /// A write failed: the journal on disk misses a batch, so nothing more
    /// is appended (it would leave a gap) until the state the driver hands
    /// over is written as a whole snapshot.
    failed: bool,
    /// While `failed`: when to ask for the state again.
    retry_at: Instant,
    /// While `failed`: when a snapshot was last tried (the space check can
    /// only put a try off, by [`TRY_ANYWAY`] at most).
    tried_at: Instant,
    /// A background compaction is writing a snapshot.
    compacting: bool,
    /// Size of the last snapshot written.
    snapshot_bytes: u64,
    /// Sessions and debits in it (with its size: what a snapshot of the
    /// state takes per item, to know whether one can fit on the disk).
    snapshot_items: u64,
}

/// What the appending side and the background thread share without the lock.
#[derive(Default)]
struct Flags {
    /// The journal wants the state (see [`SessionStore::wants_state`]).
    due: AtomicBool,
    /// Held while the snapshot and journal files are replaced or read as a
    /// whole, so that a reader never sees a half-finished compaction.
    files: Mutex<()>,
}

/// Opens `path` for writing (truncated, or appended to), creating it with
/// mode 0600: the journal and snapshot hold Call-IDs and SIP URIs, which are
/// personal data. A file an older version created with a wider mode is
/// narrowed too. (`.old` is the journal renamed, so it keeps its mode.)
fn create_private(path: &Path, truncate: bool) -> io::Result<File> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut opts = OpenOptions::new();
    opts.create(true).mode(0o600);
    if truncate {
        opts.write(true).truncate(true);
    } else {
        // Read and write: the journal is mapped shared.
        opts.read(true).write(true);
    }
    let file = opts.open(path)?;
    if file.metadata()?.permissions().mode() & 0o077 != 0 {
        file.set_permissions(fs::Permissions::from_mode(0o600))?;
    }
    Ok(file)
}

/// What a snapshot file holds when written (borrowed records, no copies).
#[derive(Serialize)]
struct SnapshotOut<'a> {
    version: u32,
    saved_at: u64,
    clean: bool,
    down_since: Option<u64>,
    state: StateOut<'a>,
}

#[derive(Serialize)]
struct StateOut<'a> {
    sessions: Vec<&'a Session>,
    debits: Vec<&'a OwedDebit>,
}

/// Writes the snapshot file atomically; returns its size.
fn write_snapshot(
    dir: &Path,
    state: StateOut<'_>,
    clean: bool,
    down_since: Option<Timestamp>,
) -> Result<u64, StoreError> {
    let file = SnapshotOut {
        version: 1,
        saved_at: wall_ms(),
        clean,
        down_since: down_since.map(|t| t.0),
        state,
    };
    let tmp = dir.join(format!("{SNAPSHOT_FILE}.tmp"));
    // Streamed to the file a piece at a time: with many sessions the text
    // is tens of megabytes, which would otherwise be held in memory whole
    // and handed to the kernel in one `write()` (a long stretch in the
    // kernel for the thread that writes it, on the CPU the proxy's
    // requests need).
    let written = create_private(&tmp, true).and_then(|f| {
        let mut out = io::BufWriter::with_capacity(SNAPSHOT_CHUNK, f);
        serde_json::to_writer(&mut out, &file)?;
        let f = out.into_inner().map_err(io::IntoInnerError::into_error)?;
        f.sync_all()?;
        Ok(f.metadata()?.len())
    });
    let bytes = match written {
        Ok(bytes) => bytes,
        Err(e) => {
            // A partial temporary file would hold on to the disk space.
            let _ = fs::remove_file(&tmp);
            return Err(e.into());
        }
    };
    fs::rename(&tmp, dir.join(SNAPSHOT_FILE))?;
    sync_dir(dir);
    Ok(bytes)
}

/// Bytes of snapshot text handed to the kernel per `write()`.
const SNAPSHOT_CHUNK: usize = 256 << 10;

fn shared_out(state: &SharedState) -> StateOut<'_> {
    StateOut {
        sessions: state.sessions.iter().map(|s| &**s).collect(),
        debits: state.debits.iter().collect(),
    }
}

fn snapshot_out(state: &Snapshot) -> StateOut<'_> {
    StateOut {
        sessions: state.sessions.iter().collect(),
        debits: state.debits.iter().collect(),
    }
}

enum Msg {
    /// Finish a compaction: flush the renamed journal, write this state as
    /// the snapshot, remove the renamed journal.
    Compact(SharedState, Arc<File>),
    /// The writer nears where the background thread last looked ahead.
    Prepare,
}

/// The durable session store. See the module docs.
pub struct Journal {
    inner: Arc<Mutex<Inner>>,
    flags: Arc<Flags>,
    recovery: Recovery,
    /// The state found at open, until the driver has loaded it.
    loaded: Option<Snapshot>,
    tx: Option<mpsc::Sender<Msg>>,
    worker: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("recovery", &self.recovery)
            .finish_non_exhaustive()
    }
}

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The wall clock to the kernel's tick (a few ms): all a batch's record
/// needs, since its time only says when the daemon was last alive, read on
/// the request path for a fraction of a precise reading's cost.
fn coarse_wall_ms() -> u64 {
    use nix::time::{clock_gettime, ClockId};
    match clock_gettime(ClockId::CLOCK_REALTIME_COARSE) {
        Ok(t) => t.tv_sec() as u64 * 1000 + t.tv_nsec() as u64 / 1_000_000,
        Err(_) => wall_ms(),
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves the state consistent enough to
    // go on: every mutation is a whole append or a whole compaction.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Journal {
    /// Opens (creating if needed) the journal in `dir`: loads the snapshot,
    /// replays the journal, drops a torn tail, compacts, and starts the
    /// background fsync/heartbeat thread.
    pub fn open(dir: &Path, opts: JournalOptions) -> Result<Journal, StoreError> {
        fs::create_dir_all(dir)?;
        let (snapshot, mut recovery) = recover(dir)?;
        // Not emptied yet: the compaction below empties it only once the
        // snapshot that replaces it is written.
        let ahead = Arc::new(Ahead::default());
        let seg = Segment::create(&dir.join(JOURNAL_FILE), ahead.clone())?;
        let mut inner = Inner {
            dir: dir.to_path_buf(),
            seg,
            opts: opts.clone(),
            dirty: false,
            appends: 0,
            closed: false,
            failed: false,
            retry_at: Instant::now(),
            tried_at: Instant::now(),
            compacting: false,
            snapshot_bytes: 0,
            snapshot_items: 0,
        };
        // Start from a fresh snapshot and an empty journal, remembering when
        // the previous run was last alive.
        inner.compact(snapshot_out(&snapshot), false, recovery.down_since)?;
        if recovery.dropped_bytes > 0 {
            warn!(
                "Session journal: dropped a torn or corrupt tail of {} bytes",
                recovery.dropped_bytes
            );
        }
        let (tx, rx) = mpsc::channel::<Msg>();
        let inner = Arc::new(Mutex::new(inner));
        let flags = Arc::new(Flags::default());
        let worker = {
            let (inner, flags) = (inner.clone(), flags.clone());
            std::thread::Builder::new()
                .name("journal-sync".into())
                .spawn(move || background(inner, flags, &ahead, rx))?
        };
        recovery.down_since = recovery.down_since.filter(|t| t.0 > 0);
        Ok(Journal {
            inner,
            flags,
            recovery,
            loaded: Some(snapshot),
            tx: Some(tx),
            worker: Some(worker),
        })
    }

    /// What was found at open.
    pub fn recovery(&self) -> &Recovery {
        &self.recovery
    }

    /// The state as it is now: as found at open until the first change,
    /// then as the files on disk hold it.
    pub fn snapshot(&self) -> Snapshot {
        match &self.loaded {
            Some(s) => s.clone(),
            None => self.state_on_disk().unwrap_or_else(|e| {
                error!("Session journal: cannot read the state back: {e}");
                Snapshot::default()
            }),
        }
    }

    /// The state the snapshot and journal files hold.
    fn state_on_disk(&self) -> Result<Snapshot, StoreError> {
        let dir = lock(&self.inner).dir.clone();
        let _files = lock(&self.flags.files);
        Ok(recover(&dir)?.0)
    }

    /// Writes a snapshot (of the state on disk) and empties the journal now.
    pub fn compact(&self) -> Result<(), StoreError> {
        let _files = lock(&self.flags.files);
        let mut inner = lock(&self.inner);
        let state = recover(&inner.dir)?.0;
        inner.compact(snapshot_out(&state), false, None)
    }

    /// Bytes of records in the journal file (the file itself is reserved
    /// ahead and is larger).
    pub fn journal_len(&self) -> u64 {
        lock(&self.inner).seg.len as u64
    }

    fn stop_worker(&mut self) {
        self.tx.take();
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        // No compaction here: a drop without `close` is treated like a crash
        // (the journal on disk is already complete).
        self.stop_worker();
    }
}

impl SessionStore for Journal {
    fn apply(&mut self, changes: &[StoreChange]) -> Result<(), StoreError> {
        if changes.is_empty() {
            return Ok(());
        }
        self.loaded = None;
        let mut inner = lock(&self.inner);
        if inner.failed {
            // Appending after a lost batch would leave a gap in the middle;
            // the state handed over next holds this batch too.
            if Instant::now() >= inner.retry_at {
                self.flags.due.store(true, Ordering::Release);
            }
            return Ok(());
        }
        let appended = inner.append(&Record::Changes {
            at: coarse_wall_ms(),
            changes: std::borrow::Cow::Borrowed(changes),
        });
        if let Err(e) = appended {
            // The driver hands over the whole state right after this apply
            // (`wants_state`), and it is written as a snapshot at once.
            error!("Session journal write failed, writing a full snapshot instead: {e}");
            inner.failed = true;
            inner.tried_at = Instant::now();
            self.flags.due.store(true, Ordering::Release);
            return Ok(());
        }
        if inner.seg.wants_next_mapping() {
            if let Some(tx) = &self.tx {
                let _ = tx.send(Msg::Prepare);
            }
        }
        if inner.opts.fsync == FsyncPolicy::Always {
            inner.seg.file.sync_data()?;
            inner.dirty = false;
        }
        Ok(())
    }

    fn load(&mut self) -> Result<Snapshot, StoreError> {
        match self.loaded.take() {
            Some(s) => Ok(s),
            None => self.state_on_disk(),
        }
    }

    fn group_commit(&self) -> bool {
        lock(&self.inner).opts.fsync == FsyncPolicy::Always
    }

    fn wants_state(&self) -> bool {
        self.flags.due.load(Ordering::Acquire)
    }

    fn save_state(&mut self, state: SharedState) -> Result<(), StoreError> {
        self.flags.due.store(false, Ordering::Release);
        let whole = {
            let inner = lock(&self.inner);
            inner.failed || inner.dir.join(OLD_JOURNAL_FILE).exists()
        };
        if whole {
            // After a failed write, or if a background compaction did not
            // finish: a whole compaction, now. (A background compaction
            // still queued finds `.old` gone and gives way.)
            let _files = lock(&self.flags.files);
            let mut inner = lock(&self.inner);
            if inner.failed {
                // While the disk stays full, each retry would serialise the
                // whole state (40 MB of JSON with 100,000 sessions, on the
                // thread that answers the proxy) only to fail writing it:
                // not tried until the snapshot can fit.
                let items = (state.sessions.len() + state.debits.len()) as u64;
                let now = Instant::now();
                if now < inner.tried_at + TRY_ANYWAY {
                    if let Some(short) = inner.space_short_of_snapshot(items) {
                        inner.retry_at = now + RETRY_FAILED;
                        return Err(short.into());
                    }
                }
                inner.tried_at = now;
            }
            return match inner.compact(shared_out(&state), false, None) {
                Ok(()) => {
                    if inner.failed {
                        info!("Session journal writable again: full snapshot written");
                    }
                    inner.failed = false;
                    Ok(())
                }
                Err(e) => {
                    // Nothing is appended meanwhile; asked again in a second.
                    inner.failed = true;
                    inner.retry_at = Instant::now() + RETRY_FAILED;
                    Err(e)
                }
            };
        }
        let mut inner = lock(&self.inner);
        let old = inner.rotate()?;
        match &self.tx {
            Some(tx) if tx.send(Msg::Compact(state, old)).is_ok() => Ok(()),
            _ => {
                inner.compacting = false;
                Err(StoreError::Corrupt("journal background thread gone".into()))
            }
        }
    }

    fn close(&mut self) -> Result<(), StoreError> {
        self.close_from(None)
    }

    fn close_with(&mut self, state: SharedState) -> Result<(), StoreError> {
        self.close_from(Some(state))
    }
}

impl Journal {
    /// Appends `Shutdown`, then writes the final snapshot (marked clean) of
    /// `state`, or of the state on disk.
    fn close_from(&mut self, state: Option<SharedState>) -> Result<(), StoreError> {
        // Lets the background thread finish a compaction it was given.
        self.stop_worker();
        let _files = lock(&self.flags.files);
        let mut inner = lock(&self.inner);
        if inner.closed {
            return Ok(());
        }
        inner.closed = true;
        let now = wall_ms();
        // The Shutdown record first (cheap, durable even if the snapshot
        // write fails), then the snapshot marked clean.
        inner.append(&Record::Shutdown { at: now })?;
        inner.seg.file.sync_data()?;
        let down = Some(Timestamp(now));
        let (sessions, debits) = match state {
            Some(state) => {
                inner.compact(shared_out(&state), true, down)?;
                (state.sessions.len(), state.debits.len())
            }
            None => {
                let state = recover(&inner.dir)?.0;
                inner.compact(snapshot_out(&state), true, down)?;
                (state.sessions.len(), state.debits.len())
            }
        };
        info!("Saved {sessions} sessions and {debits} owed debits");
        Ok(())
    }
}

impl Inner {
    /// Appends one record: a copy into the mapped journal.
    fn append(&mut self, record: &Record<'_>) -> Result<(), StoreError> {
        self.seg.append(record)?;
        self.dirty = true;
        self.appends += 1;
        Ok(())
    }

    /// Replaces the snapshot with `state` and empties the journal (the
    /// caller holds the files lock).
    /// Crash-safe in every order: until the rename the old snapshot and the
    /// full journal are there; after it, replaying the old journal on top of
    /// the new snapshot gives the same state (every record is an upsert or a
    /// removal by key, and the snapshot is the result of all of them).
    fn compact(
        &mut self,
        state: StateOut<'_>,
        clean: bool,
        down_since: Option<Timestamp>,
    ) -> Result<(), StoreError> {
        let items = (state.sessions.len() + state.debits.len()) as u64;
        self.snapshot_bytes = write_snapshot(&self.dir, state, clean, down_since)?;
        self.snapshot_items = items;
        // The snapshot holds everything: a journal left by an unfinished
        // background compaction is no longer needed.
        match fs::remove_file(self.dir.join(OLD_JOURNAL_FILE)) {
            Ok(()) => sync_dir(&self.dir),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        // Reopened by name rather than emptied through the handle: after a
        // rotation that renamed the journal but could not create the new
        // one, the handle is of the file just removed as `.old`.
        self.seg = Segment::open(&self.dir.join(JOURNAL_FILE), self.seg.ahead.clone())?;
        self.seg.file.sync_all()?;
        self.dirty = false;
        Ok(())
    }

    /// Starts a background compaction: the journal is renamed aside and a
    /// new one started (a few syscalls). The background thread then flushes
    /// the renamed journal and writes the snapshot, without the lock, so
    /// `apply` never waits for either.
    fn rotate(&mut self) -> Result<Arc<File>, StoreError> {
        if self.opts.fsync == FsyncPolicy::Always {
            self.seg.file.sync_data()?;
        }
        fs::rename(self.dir.join(JOURNAL_FILE), self.dir.join(OLD_JOURNAL_FILE))?;
        let seg = Segment::open(&self.dir.join(JOURNAL_FILE), self.seg.ahead.clone())?;
        if self.opts.fsync == FsyncPolicy::Always {
            // Every apply flushes the new journal: its name must be durable
            // first. Otherwise the background thread makes it durable (with
            // the snapshot's directory flush) before it next flushes the
            // journal, and a directory flush under the lock would stall
            // requests for a disk round trip.
            sync_dir(&self.dir);
        }
        let old = std::mem::replace(&mut self.seg, seg);
        // The renamed journal is flushed by the background thread before it
        // flushes anything newer.
        self.dirty = false;
        self.compacting = true;
        Ok(old.file)
    }

    /// When the filesystem of the journal has less room than a snapshot of
    /// `items` sessions and debits needs (estimated from the last one's size
    /// per item): the error to return instead of trying. `None` when it has
    /// room, or cannot say. (The new journal's reservation needs no more: it
    /// is made after the failed journal's is freed.)
    fn space_short_of_snapshot(&self, items: u64) -> Option<io::Error> {
        let per_item = match self.snapshot_items {
            0 => SNAPSHOT_BYTES_PER_ITEM,
            n => self.snapshot_bytes / n + 1,
        };
        let needed = items.saturating_mul(per_item);
        let fs = nix::sys::statvfs::statvfs(&self.dir).ok()?;
        // The blocks kept for root count when the daemon runs as root.
        let blocks = if nix::unistd::geteuid().is_root() {
            fs.blocks_free()
        } else {
            fs.blocks_available()
        };
        let free = blocks.saturating_mul(fs.fragment_size());
        (free < needed).then(|| {
            io::Error::new(
                io::ErrorKind::StorageFull,
                format!(
                    "{free} bytes free in {}, a snapshot of {items} sessions and debits needs \
                     about {needed}: not tried",
                    self.dir.display()
                ),
            )
        })
    }

    /// Journal size past which the background thread compacts: the
    /// configured size, or the last snapshot's if larger, so that with many
    /// sessions in progress a compaction (which rewrites all of them) is not
    /// redone every few megabytes of journal.
    fn compact_threshold(&self) -> u64 {
        self.opts.compact_bytes.max(self.snapshot_bytes)
    }
}

/// Finishes a background compaction started by [`Inner::rotate`]: the new
/// snapshot replaces the old one, then the renamed journal goes. Crash-safe
/// in every order: before the snapshot's rename, old snapshot + old journal +
/// journal are complete; after it, replaying the old journal on the new
/// snapshot changes nothing (the snapshot is the result of all of it).
/// Returns the snapshot's size and its sessions and debits.
fn finish_compaction(
    dir: &Path,
    state: &SharedState,
    old: Arc<File>,
) -> Result<(u64, u64), StoreError> {
    // The renamed journal is flushed before anything newer is: until the
    // snapshot replaces the old one, a power loss needs all of it.
    old.sync_data()?;
    drop(old);
    let bytes = write_snapshot(dir, shared_out(state), false, None)?;
    fs::remove_file(dir.join(OLD_JOURNAL_FILE))?;
    sync_dir(dir);
    Ok((bytes, (state.sessions.len() + state.debits.len()) as u64))
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// When the journal has been quiet for a heartbeat period, seen from the
/// background thread's ticks: the append count at the last tick, and since
/// when it has not changed.
struct Quiet {
    appends: u64,
    since: Instant,
}

impl Quiet {
    fn new(now: Instant) -> Quiet {
        Quiet {
            appends: 0,
            since: now,
        }
    }

    /// `appends` records so far, as of `now`.
    fn seen(&mut self, appends: u64, now: Instant) {
        if appends != self.appends {
            (self.appends, self.since) = (appends, now);
        }
    }

    /// Whether nothing was appended for `heartbeat`, given the count now.
    fn heartbeat_due(&mut self, appends: u64, now: Instant, heartbeat: Duration) -> bool {
        self.seen(appends, now);
        now.saturating_duration_since(self.since) >= heartbeat
    }
}

fn background(inner: Arc<Mutex<Inner>>, flags: Arc<Flags>, ahead: &Ahead, rx: mpsc::Receiver<Msg>) {
    let tick = {
        let i = lock(&inner);
        let sync = match i.opts.fsync {
            FsyncPolicy::Interval(d) => d,
            _ => i.opts.heartbeat,
        };
        sync.min(i.opts.heartbeat).max(Duration::from_millis(10))
    };
    ahead.prepare();
    let mut next_tick = Instant::now() + tick;
    let mut quiet = Quiet::new(Instant::now());
    loop {
        // Messages (asked to look ahead several times a second under load)
        // do not put off the tick.
        let wait = next_tick.saturating_duration_since(Instant::now());
        match rx.recv_timeout(wait) {
            Ok(Msg::Prepare) => {
                ahead.prepare();
                if Instant::now() < next_tick {
                    continue;
                }
            }
            Ok(Msg::Compact(state, old)) => {
                // The new journal's next mapping first: the writer is in it.
                ahead.prepare();
                let dir = lock(&inner).dir.clone();
                let result = {
                    let _files = lock(&flags.files);
                    if dir.join(OLD_JOURNAL_FILE).exists() {
                        finish_compaction(&dir, &state, old).map(Some)
                    } else {
                        // A whole compaction since (after a failed write)
                        // wrote a newer snapshot: this one would undo it.
                        Ok(None)
                    }
                };
                drop(state);
                let mut i = lock(&inner);
                i.compacting = false;
                match result {
                    Ok(Some((bytes, items))) => {
                        i.snapshot_bytes = bytes;
                        i.snapshot_items = items;
                    }
                    Ok(None) => {}
                    Err(e) => {
                        error!("Session journal: compaction failed, retrying in full: {e}");
                        flags.due.store(true, Ordering::Release);
                    }
                }
                if Instant::now() < next_tick {
                    continue;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            // Sender dropped: the journal is closing.
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
        next_tick = Instant::now() + tick;
        // Before the flush below (and the kernel's own writeback, with
        // `journal_fsync = never`) write-protects the filled pages one by one.
        ahead.unmap_written();
        let mut i = lock(&inner);
        if i.closed {
            return;
        }
        if quiet.heartbeat_due(i.appends, Instant::now(), i.opts.heartbeat) {
            if let Err(e) = i.append(&Record::Alive { at: wall_ms() }) {
                error!("Session journal: could not write heartbeat: {e}");
            }
            // The heartbeat is not activity: the next one is due a
            // heartbeat period from now, not from the next tick.
            quiet.seen(i.appends, Instant::now());
        }
        // Not while a compaction is queued: the renamed journal must reach
        // the disk before anything newer does.
        if matches!(i.opts.fsync, FsyncPolicy::Interval(_)) && i.dirty && !i.compacting {
            // The flush runs without the lock (it can take milliseconds on a
            // busy disk, and every request appends under the lock). A record
            // appended meanwhile marks the journal dirty again.
            let f = i.seg.file.clone();
            i.dirty = false;
            drop(i);
            if let Err(e) = f.sync_data() {
                error!("Session journal: fsync failed: {e}");
                lock(&inner).dirty = true;
            }
            i = lock(&inner);
            if i.closed {
                return;
            }
        }
        if i.seg.len as u64 > i.compact_threshold() && !i.compacting {
            debug!(
                "Session journal reached {} bytes, asking for the state to compact",
                i.seg.len
            );
            flags.due.store(true, Ordering::Release);
        }
        drop(i);
        // Unmaps retired mappings, prepares the next one if it is time.
        ahead.prepare();
    }
}

/// While the journal cannot be written: how long before the state is asked
/// for again.
const RETRY_FAILED: Duration = Duration::from_secs(1);

/// A session's size in a snapshot, before the first snapshot tells.
const SNAPSHOT_BYTES_PER_ITEM: u64 = 1024;

/// While the journal cannot be written, a snapshot is tried at least this
/// often whatever the space check says (its estimate may be wrong).
const TRY_ANYWAY: Duration = Duration::from_secs(30);

/// Bytes reserved for a new journal file; doubled as it fills.
const FIRST_RESERVE: usize = 1 << 20;

/// The largest reservation: past it, a record is larger than replay accepts.
const MAX_RESERVE: usize = 4 * MAX_RECORD as usize;

/// The background thread prepares the next mapping once the writer is
/// within this of the end of its own (a few tens of milliseconds of records
/// at full load)…
const AHEAD: usize = 512 << 10;
/// … and the writer asks it to look again when it has come this close to
/// where it last looked.
const AHEAD_LOW: usize = 256 << 10;

/// The journal file, mapped into memory (`MAP_SHARED`). Appending a record
/// is a copy into the page cache, with no system call, and survives
/// `kill -9` as a `write()` does. Space is reserved ahead with
/// `posix_fallocate`, so a full disk fails the reservation with an error
/// and never a store into the mapping; the reserved tail is zeros, which
/// replay reads as the end of the journal.
///
/// Growing the reservation (`posix_fallocate`, a new mapping) and unmapping
/// the old mapping are done by the background thread ([`Ahead`]), before the
/// writer needs the next, doubled, reservation; so are bringing the pages
/// ahead of the writer into the page cache ([`read_ahead`]) and dropping the
/// page table entries of the pages filled before each flush
/// ([`Ahead::unmap_written`]). The pages are mapped as records reach them:
/// populating the mapping ahead from the background thread
/// (`MADV_POPULATE_WRITE`) was tried and measured worse (see ADR 0002).
struct Segment {
    file: Arc<File>,
    map: Option<WriterMap>,
    /// Bytes of records.
    len: usize,
    /// Bytes reserved (the file's size).
    cap: usize,
    ahead: Arc<Ahead>,
}

impl Segment {
    /// Opens (creating) `path`, as it is and not mapped yet.
    fn create(path: &Path, ahead: Arc<Ahead>) -> io::Result<Segment> {
        Ok(Segment {
            file: Arc::new(create_private(path, false)?),
            map: None,
            len: 0,
            cap: 0,
            ahead,
        })
    }

    /// Opens (creating) `path` and empties it.
    fn open(path: &Path, ahead: Arc<Ahead>) -> io::Result<Segment> {
        let mut seg = Segment::create(path, ahead)?;
        seg.reset()?;
        Ok(seg)
    }

    /// Empties the file and reserves [`FIRST_RESERVE`] bytes of zeros.
    fn reset(&mut self) -> io::Result<()> {
        // No mapping of the writer's outlives the file's length. If the file
        // cannot be emptied, the writer goes on at its position (it maps
        // again as it grows), never over records already written.
        self.map = None;
        self.ahead.publish(None, &self.file, self.len, 0);
        self.file.set_len(0)?;
        self.len = 0;
        self.cap = 0;
        self.reserve(FIRST_RESERVE)
    }

    /// Grows the file to `cap` bytes (allocated on disk) and maps it; the
    /// writer asks the background thread to look ahead at once.
    fn reserve(&mut self, cap: usize) -> io::Result<()> {
        let _reserving = lock(&self.ahead.reserving);
        fallocate(&self.file, self.cap, cap)?;
        let map = Arc::new(map_file(&self.file, cap)?);
        self.ahead
            .publish(Some(map.clone()), &self.file, self.len, 0);
        self.map = Some(WriterMap(map));
        self.cap = cap;
        Ok(())
    }

    /// Grows to `cap` bytes: into the mapping the background thread
    /// prepared (file grown, mapped) if it did, or now.
    fn grow(&mut self, cap: usize) -> io::Result<()> {
        // One the background thread is still preparing is waited for.
        let prepared = {
            let _reserving = lock(&self.ahead.reserving);
            self.ahead.take_next(cap)
        };
        match prepared {
            Some(map) => {
                self.ahead
                    .publish(Some(map.clone()), &self.file, self.len, 0);
                self.map = Some(WriterMap(map));
                self.cap = cap;
                Ok(())
            }
            None => self.reserve(cap),
        }
    }

    /// Appends one record: `len | crc32 | payload`. The payload is encoded in
    /// place, and the length is stored last, so a record cut short by a
    /// crash reads as the end of the journal (and the checksum catches what
    /// a power loss may reorder).
    fn append(&mut self, record: &Record<'_>) -> Result<(), StoreError> {
        loop {
            let start = self.len;
            if let Some(map) = self.map.as_mut().filter(|_| start + 8 < self.cap) {
                let map = map.bytes();
                let encoded = encode(record, &mut map[start + 8..]);
                match encoded.map(|n| &map[start + 8..start + 8 + n]) {
                    Ok(payload) if payload.len() > MAX_RECORD as usize => {
                        // Replay would refuse it as corrupt: fail instead (the
                        // state is then written as a whole snapshot).
                        map[start..].fill(0);
                        return Err(StoreError::Corrupt(format!(
                            "journal record larger than {MAX_RECORD} bytes"
                        )));
                    }
                    Ok(payload) => {
                        let n = payload.len();
                        let crc = crc32(payload);
                        map[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
                        std::sync::atomic::compiler_fence(std::sync::atomic::Ordering::SeqCst);
                        map[start..start + 4].copy_from_slice(&(n as u32).to_le_bytes());
                        self.len = start + 8 + n;
                        self.ahead.pos.store(self.len, Ordering::Relaxed);
                        return Ok(());
                    }
                    Err(postcard::Error::SerializeBufferFull) => {
                        // Leave zeros after the last record, then grow.
                        map[start..].fill(0);
                    }
                    Err(e) => return Err(StoreError::Corrupt(e.to_string())),
                }
            }
            let want = (self.cap * 2).max(FIRST_RESERVE);
            if want > MAX_RESERVE {
                return Err(StoreError::Corrupt(format!(
                    "journal record larger than {MAX_RECORD} bytes"
                )));
            }
            self.grow(want)?;
        }
    }

    /// Whether the writer is within [`AHEAD_LOW`] of where the background
    /// thread last looked ahead and should ask it to look again (true once
    /// per request).
    fn wants_next_mapping(&self) -> bool {
        self.len + AHEAD_LOW > self.ahead.ready.load(Ordering::Relaxed)
            && !self.ahead.asked.swap(true, Ordering::Relaxed)
    }
}

/// What the writer and the background thread share so that the background
/// thread prepares the writer's next mapping ahead of it, and unmaps the old
/// ones, without the journal's lock (reserving and mapping a few megabytes,
/// or unmapping them, takes up to a millisecond).
#[derive(Default)]
struct Ahead {
    /// The writer's position in its mapping (`Segment::len`).
    pos: AtomicUsize,
    /// The background thread has looked ahead up to here (and prepared the
    /// next mapping if this is past the end of the writer's, or failed to):
    /// the writer asks again when it comes within [`AHEAD_LOW`] of it.
    ready: AtomicUsize,
    /// The writer asked (cleared when the background thread starts on it).
    asked: AtomicBool,
    slot: Mutex<Slot>,
    /// Held while the file is grown (`posix_fallocate`) and mapped, by
    /// either side: the writer never stores into a range the background
    /// thread is still reserving (glibc's emulation of `fallocate`, on a
    /// filesystem without it, writes a zero byte into each block).
    reserving: Mutex<()>,
}

/// The writer's mapping as the background thread sees it.
#[derive(Default)]
struct Slot {
    /// Changes with every new mapping of the writer's: what the background
    /// thread computed for an older one is dropped.
    generation: u64,
    map: Option<Arc<memmap2::MmapRaw>>,
    file: Option<Arc<File>>,
    /// The next, doubled, mapping, prepared by the background thread (the
    /// file grown to its size).
    next: Option<Arc<memmap2::MmapRaw>>,
    /// Mappings the writer no longer uses: unmapped by the background thread
    /// (unmapping a few megabytes of written pages is not free).
    retired: Vec<Arc<memmap2::MmapRaw>>,
    /// The writer's mapping has no page table entries below this (see
    /// [`Ahead::unmap_written`]).
    unmapped: usize,
    /// The file's pages are in the page cache up to here (see
    /// [`Ahead::prepare`]).
    cached: usize,
}

impl Ahead {
    /// The writer's mapping is now `map`, at `pos`, looked ahead up to
    /// `ready`.
    fn publish(
        &self,
        map: Option<Arc<memmap2::MmapRaw>>,
        file: &Arc<File>,
        pos: usize,
        ready: usize,
    ) {
        let mut slot = lock(&self.slot);
        slot.generation += 1;
        let old = [slot.map.take(), slot.next.take()];
        slot.retired.extend(old.into_iter().flatten());
        slot.map = map;
        // A new mapping has entries only where the writer stores from now on.
        slot.unmapped = page_floor(pos);
        slot.cached = slot.unmapped;
        slot.file = Some(file.clone());
        self.pos.store(pos, Ordering::Relaxed);
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// The prepared mapping, if it is `cap` bytes long.
    fn take_next(&self, cap: usize) -> Option<Arc<memmap2::MmapRaw>> {
        let mut slot = lock(&self.slot);
        match &slot.next {
            Some(map) if map.len() == cap => slot.next.take(),
            _ => None,
        }
    }

    /// Runs on the background thread at each tick, before the flush: drops
    /// the page table entries of the pages the writer has filled (it only
    /// ever stores past its position). Otherwise the flush write-protects
    /// each dirty page through them, one TLB shootdown (an interrupt to the
    /// CPU the writer runs on) per page, and the writer takes a fault the
    /// next time it stores into the last one; here it is one shootdown for
    /// them all.
    #[allow(unsafe_code)]
    fn unmap_written(&self) {
        let (generation, map, from) = {
            let slot = lock(&self.slot);
            (slot.generation, slot.map.clone(), slot.unmapped)
        };
        let Some(map) = map else {
            return;
        };
        let to = page_floor(self.pos.load(Ordering::Relaxed)).min(map.len());
        if to <= from {
            return;
        }
        // SAFETY: the mapping is of a file, shared: `MADV_DONTNEED` drops
        // the page table entries of the range and leaves the pages (dirty
        // or not) in the page cache, so the bytes stay the file's and are
        // faulted back in if anything touches them again; no reference into
        // the mapping is held across this call (the writer copies into it
        // through raw pointers, past `pos`).
        let dropped = unsafe {
            map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, from, to - from)
        };
        if let Err(e) = dropped {
            debug!("Session journal: cannot drop written pages from the mapping: {e}");
            return;
        }
        let mut slot = lock(&self.slot);
        if slot.generation == generation {
            slot.unmapped = to;
        }
    }

    /// Runs on the background thread: when the writer is within [`AHEAD`]
    /// of the end of its mapping, grows the file and prepares the next,
    /// doubled, mapping; brings the pages of the [`AHEAD`] past the writer
    /// into the page cache; unmaps retired mappings.
    fn prepare(&self) {
        let (generation, map, has_next, file, retired, cached) = {
            let mut slot = lock(&self.slot);
            (
                slot.generation,
                slot.map.clone(),
                slot.next.is_some(),
                slot.file.clone(),
                std::mem::take(&mut slot.retired),
                slot.cached,
            )
        };
        drop(retired);
        self.asked.store(false, Ordering::Relaxed);
        let (Some(map), Some(file)) = (map, file) else {
            return;
        };
        let end = self.pos.load(Ordering::Relaxed).saturating_add(AHEAD);
        let cap = map.len() * 2;
        let reserving = lock(&self.reserving);
        let next = if !has_next && end > map.len() && cap <= MAX_RESERVE {
            match fallocate(&file, map.len(), cap).and_then(|()| map_file(&file, cap)) {
                Ok(next) => Some(Arc::new(next)),
                Err(e) => {
                    // The writer will meet it (and report it) itself.
                    debug!("Session journal: cannot reserve {cap} bytes ahead: {e}");
                    None
                }
            }
        } else {
            None
        };
        let file_len = if has_next || next.is_some() {
            cap
        } else {
            map.len()
        };
        let mut slot = lock(&self.slot);
        drop(reserving);
        if slot.generation != generation {
            return;
        }
        // Even after a failure: the writer asks again only so far on.
        self.ready.store(end, Ordering::Relaxed);
        if next.is_some() {
            slot.next = next;
        }
        drop(slot);
        let to = end.min(file_len);
        let cached = read_ahead(&file, cached.max(self.pos.load(Ordering::Relaxed)), to);
        let mut slot = lock(&self.slot);
        if slot.generation == generation {
            slot.cached = slot.cached.max(cached);
        }
    }
}

/// Reserves `len` bytes of the file on disk (from its start).
/// Allocates bytes `from..to` of the file (growing it to `to`). Only that
/// range: where the filesystem has no `fallocate`, glibc emulates it by
/// rewriting a zero byte in every block of the range, which must not meet a
/// block the writer is storing into (the background thread reserves ahead
/// while the writer writes below `from`).
fn fallocate(file: &File, from: usize, to: usize) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let (offset, len) = file_range(from, to)?;
    if len == 0 {
        return Ok(());
    }
    nix::fcntl::posix_fallocate(file.as_raw_fd(), offset, len).map_err(io::Error::from)
}

/// Bytes `from..to` of the journal file as the `off_t` offset and length
/// the system calls take.
fn file_range(from: usize, to: usize) -> io::Result<(i64, i64)> {
    let too_large = |_| io::Error::other("journal too large");
    let offset = i64::try_from(from).map_err(too_large)?;
    let len = i64::try_from(to.saturating_sub(from)).map_err(too_large)?;
    Ok((offset, len))
}

/// Brings bytes `from..to` of the journal file into the page cache
/// (`POSIX_FADV_WILLNEED`, a piece at a time), so that the writer's first
/// store into each page finds it there; returns how far it got. Otherwise
/// that store's page fault reads the page in, and the kernel's read-around
/// for a mapping with it, up to the device's read-ahead size (8 MiB here:
/// milliseconds of zeroing pages on the thread that answers the proxy); the
/// mapping has read-around turned off as well ([`map_file`]). Reading a
/// page into the cache changes no byte of it: the writer's stores into
/// pages already there are kept.
fn read_ahead(file: &File, from: usize, to: usize) -> usize {
    use nix::fcntl::{posix_fadvise, PosixFadviseAdvice};
    use std::os::fd::AsRawFd;
    const PIECE: usize = 256 << 10;
    let mut at = page_floor(from);
    while at < to {
        let len = (to - at).min(PIECE);
        let advised = file_range(at, at + len).and_then(|(offset, n)| {
            let advice = PosixFadviseAdvice::POSIX_FADV_WILLNEED;
            posix_fadvise(file.as_raw_fd(), offset, n, advice).map_err(io::Error::from)
        });
        if let Err(e) = advised {
            debug!("Session journal: cannot read ahead: {e}");
            break;
        }
        at += len;
    }
    at
}

/// `n` rounded down to a page boundary.
fn page_floor(n: usize) -> usize {
    n & !(page_size() - 1)
}

/// The size of a memory page (4 KiB where it cannot be found).
fn page_size() -> usize {
    static PAGE: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *PAGE.get_or_init(|| {
        nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
            .ok()
            .flatten()
            .and_then(|n| usize::try_from(n).ok())
            .filter(|n| n.is_power_of_two())
            .unwrap_or(4096)
    })
}

/// Maps the first `len` bytes of the journal file read-write and shared.
fn map_file(file: &File, len: usize) -> io::Result<memmap2::MmapRaw> {
    let map = memmap2::MmapOptions::new().len(len).map_raw(file)?;
    if let Err(e) = map.advise(memmap2::Advice::Random) {
        debug!("Session journal: cannot turn off read-around for the mapping: {e}");
    }
    Ok(map)
}

/// The writer's mapping: the one handle to it through which its bytes are
/// read or written (never cloned; the background thread holds the same
/// mapping as a bare `MmapRaw`, only to create it ahead of the writer and to
/// unmap it after).
struct WriterMap(Arc<memmap2::MmapRaw>);

impl WriterMap {
    /// The mapping's bytes.
    #[allow(unsafe_code)]
    fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: the pointer and length are those of a live mapping (the
        // `Arc` keeps it mapped for as long as the slice is borrowed from
        // `self`), read-write and shared, of a file at least as long: the
        // file only shrinks in `Segment::reset`, which drops the writer's
        // mapping first, and only this process writes to it (mode 0600, in
        // the daemon's runtime directory, whose lock file the daemon holds
        // for its whole life). The slice is the only reference to these
        // bytes: `WriterMap` is not `Clone`, each wraps a mapping of its own
        // (fresh from `map_file`, or prepared by the background thread and
        // handed over once, `Ahead::take_next`), and the slice borrows it
        // mutably. The other holders of the mapping (the background thread)
        // never form a reference to its bytes: they only unmap it when they
        // drop it, and drop the page table entries of the pages the writer
        // filled (`Ahead::unmap_written`), which leaves every byte as it is.
        unsafe { std::slice::from_raw_parts_mut(self.0.as_mut_ptr(), self.0.len()) }
    }
}

/// Encodes `record` at the start of `buf` as `postcard::to_slice` does (the
/// same bytes; replay decodes them with `postcard::from_bytes`), and returns
/// its length; `SerializeBufferFull` if it does not fit.
fn encode(record: &Record<'_>, buf: &mut [u8]) -> postcard::Result<usize> {
    postcard::serialize_with_flavor(record, MapFlavor { buf, pos: 0 })
}

/// The postcard output flavor that encodes a record in place in the
/// mapping: the bytes are exactly `postcard::to_slice`'s (the serializer is
/// postcard's own; only the copies differ), but the short copies it makes
/// (every varint, and most strings, are a few bytes) are inline loads and
/// stores instead of a `memcpy` call each, which cost most of the encoding.
struct MapFlavor<'a> {
    buf: &'a mut [u8],
    /// Bytes written.
    pos: usize,
}

impl postcard::ser_flavors::Flavor for MapFlavor<'_> {
    /// Bytes written.
    type Output = usize;

    #[inline(always)]
    fn try_push(&mut self, b: u8) -> postcard::Result<()> {
        let slot = self
            .buf
            .get_mut(self.pos)
            .ok_or(postcard::Error::SerializeBufferFull)?;
        *slot = b;
        self.pos += 1;
        Ok(())
    }

    #[inline(always)]
    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        let end = self.pos + data.len();
        let dst = self
            .buf
            .get_mut(self.pos..end)
            .ok_or(postcard::Error::SerializeBufferFull)?;
        copy_short(dst, data);
        self.pos = end;
        Ok(())
    }

    fn finalize(self) -> postcard::Result<usize> {
        Ok(self.pos)
    }
}

/// `dst.copy_from_slice(src)` (same lengths) for the short slices a record
/// is made of, as fixed-size loads and stores (two overlapping ones cover
/// any length between one size and the next) that the compiler keeps
/// inline, where `copy_from_slice` of a length unknown at compile time is a
/// call into libc's `memcpy`. Longer slices still go to `memcpy`.
#[inline(always)]
fn copy_short(dst: &mut [u8], src: &[u8]) {
    /// The first and the last `K` bytes; `false` if shorter than `K`.
    #[inline(always)]
    fn ends<const K: usize>(dst: &mut [u8], src: &[u8]) -> bool {
        match (dst.first_chunk_mut::<K>(), src.first_chunk::<K>()) {
            (Some(d), Some(s)) => *d = *s,
            _ => return false,
        }
        match (dst.last_chunk_mut::<K>(), src.last_chunk::<K>()) {
            (Some(d), Some(s)) => *d = *s,
            _ => return false,
        }
        true
    }
    let copied = match src.len() {
        0 => true,
        1 => ends::<1>(dst, src),
        2..=3 => ends::<2>(dst, src),
        4..=7 => ends::<4>(dst, src),
        8..=16 => ends::<8>(dst, src),
        17..=32 => ends::<16>(dst, src),
        33..=64 => ends::<32>(dst, src),
        _ => false,
    };
    if !copied {
        dst.copy_from_slice(src);
    }
}

/// Decodes records from the start of `buf`; returns them and the length of
/// the valid prefix (anything after it is a torn or corrupt tail).
fn decode_records(buf: &[u8]) -> (Vec<Record<'static>>, usize) {
    let mut out = Vec::new();
    let mut pos = 0;
    while buf.len() - pos >= 8 {
        let len = u32::from_le_bytes([buf[pos], buf[pos + 1], buf[pos + 2], buf[pos + 3]]);
        let crc = u32::from_le_bytes([buf[pos + 4], buf[pos + 5], buf[pos + 6], buf[pos + 7]]);
        if len == 0 || len > MAX_RECORD || buf.len() - pos - 8 < len as usize {
            break;
        }
        let payload = &buf[pos + 8..pos + 8 + len as usize];
        if crc32(payload) != crc {
            break;
        }
        match postcard::from_bytes::<Record>(payload) {
            Ok(r) => out.push(r),
            Err(_) => break,
        }
        pos += 8 + len as usize;
    }
    (out, pos)
}

fn recover(dir: &Path) -> Result<(Snapshot, Recovery), StoreError> {
    let mut recovery = Recovery::default();
    let mut snapshot = Snapshot::default();
    let mut last_alive: u64 = 0;
    match fs::read(dir.join(SNAPSHOT_FILE)) {
        Ok(bytes) => {
            let f: SnapshotFile = serde_json::from_slice(&bytes).map_err(|e| {
                StoreError::Corrupt(format!("{}: {e}", dir.join(SNAPSHOT_FILE).display()))
            })?;
            snapshot = f.state;
            recovery.clean_shutdown = f.clean;
            // A snapshot written at start-up is not proof of life later on;
            // it carries the previous run's down time forward instead.
            last_alive = if f.clean {
                f.saved_at
            } else {
                f.down_since.unwrap_or(0)
            };
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e.into()),
    }
    // A journal renamed aside by an unfinished compaction comes first.
    let mut records = Vec::new();
    for name in [OLD_JOURNAL_FILE, JOURNAL_FILE] {
        let mut buf = Vec::new();
        match File::open(dir.join(name)) {
            Ok(mut f) => {
                f.read_to_end(&mut buf)?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e.into()),
        }
        let (r, valid) = decode_records(&buf);
        // The reserved tail is zeros; anything else after the last whole
        // record is a torn or corrupt write.
        let tail = &buf[valid..];
        recovery.dropped_bytes += tail.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1) as u64;
        records.extend(r);
    }
    let mut changes = Vec::new();
    for r in records {
        recovery.records_replayed += 1;
        match r {
            Record::Changes { at, changes: c } => {
                recovery.clean_shutdown = false;
                last_alive = last_alive.max(at);
                changes.extend(c.into_owned());
            }
            Record::Alive { at } => {
                recovery.clean_shutdown = false;
                last_alive = last_alive.max(at);
            }
            Record::Shutdown { at } => {
                recovery.clean_shutdown = true;
                last_alive = last_alive.max(at);
            }
        }
    }
    crate::store::replay(&mut snapshot, changes);
    recovery.down_since = (last_alive > 0).then_some(Timestamp(last_alive));
    Ok((snapshot, recovery))
}

/// CRC-32 (IEEE 802.3, reflected, as zlib): enough to tell a torn write
/// from a whole one.
fn crc32(data: &[u8]) -> u32 {
    crc32fast::hash(data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rating::DebitRequest;
    use crate::session::Session;
    use crate::store::OwedDebit;
    use crate::types::{BillingParty, CallId, Prepaid, SessionState};

    fn tmp() -> PathBuf {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let d = std::env::temp_dir().join(format!(
            "cc-journal-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    fn session(id: &str) -> Session {
        Session {
            call_id: CallId::new(id),
            party: BillingParty::new("sip:alice@example.com"),
            ruri: "sip:bob@example.com".into(),
            from: "<sip:alice@example.com>".into(),
            from_tag: "t".into(),
            source_ip: "127.0.0.1".into(),
            diverter: None,
            token: None,
            application: None,
            prepaid: Prepaid::True,
            call_limit: 0,
            limit: Some(600),
            dialog_id: None,
            state: SessionState::Pending,
            created: Timestamp(1_000),
            answered: None,
            deadline: None,
            end_attempts: 0,
        }
    }

    fn debit(seq: u64, id: &str) -> OwedDebit {
        OwedDebit {
            seq,
            request: DebitRequest {
                call_id: CallId::new(id),
                party: BillingParty::new("sip:alice@example.com"),
                to: "sip:bob@example.com".into(),
                gateway: "127.0.0.1".into(),
                duration: 60,
                application: "audio".into(),
            },
            ended: Timestamp(2_000),
        }
    }

    /// A journal used as the driver uses it: after every apply, the state is
    /// handed over when the journal asks for it.
    struct Driven {
        j: Journal,
        mem: crate::store::MemoryStore,
    }

    impl Driven {
        fn apply(&mut self, changes: &[StoreChange]) {
            self.mem.apply(changes).unwrap();
            self.j.apply(changes).unwrap();
            self.hand_over();
        }
        fn hand_over(&mut self) {
            if self.j.wants_state() {
                let s = self.mem.snapshot();
                let state = SharedState {
                    sessions: s.sessions.into_iter().map(Arc::new).collect(),
                    debits: s.debits,
                };
                self.j.save_state(state).unwrap();
            }
        }
    }

    fn opts() -> JournalOptions {
        JournalOptions {
            fsync: FsyncPolicy::Never,
            ..Default::default()
        }
    }

    fn text() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        // Every length `copy_short` tells apart, and past it; any chars
        // (multi-byte ones too).
        proptest::collection::vec(any::<char>(), 0..90).prop_map(String::from_iter)
    }

    fn arb_session() -> impl proptest::strategy::Strategy<Value = Session> {
        use proptest::prelude::*;
        let state = prop_oneof![
            Just(SessionState::Pending),
            Just(SessionState::InProgress),
            Just(SessionState::Ending),
            Just(SessionState::EndFailed),
            Just(SessionState::Ended),
        ];
        let prepaid = prop_oneof![
            Just(Prepaid::True),
            Just(Prepaid::False),
            Just(Prepaid::Unknown)
        ];
        let dialog = proptest::option::of((any::<u32>(), any::<u32>()))
            .prop_map(|d| d.map(|(e, i)| crate::types::DialogId::new(e, i)));
        let ts = || any::<u64>().prop_map(Timestamp);
        (
            (text(), text(), text(), text(), text(), text()),
            (
                proptest::option::of(text()),
                proptest::option::of(text()),
                proptest::option::of(text()),
            ),
            (
                prepaid,
                any::<u32>(),
                proptest::option::of(any::<u64>()),
                dialog,
            ),
            (
                state,
                ts(),
                proptest::option::of(ts()),
                proptest::option::of(ts()),
                any::<u32>(),
            ),
        )
            .prop_map(
                |(
                    (call_id, party, ruri, from, from_tag, source_ip),
                    (diverter, token, application),
                    (prepaid, call_limit, limit, dialog_id),
                    (state, created, answered, deadline, end_attempts),
                )| Session {
                    call_id: CallId::new(call_id),
                    party: BillingParty::new(party),
                    ruri: ruri.into(),
                    from: from.into(),
                    from_tag: from_tag.into(),
                    source_ip: source_ip.into(),
                    diverter: diverter.map(Into::into),
                    token: token.map(Into::into),
                    application: application.map(Into::into),
                    prepaid,
                    call_limit,
                    limit,
                    dialog_id,
                    state,
                    created,
                    answered,
                    deadline,
                    end_attempts,
                },
            )
    }

    fn arb_change() -> impl proptest::strategy::Strategy<Value = StoreChange> {
        use proptest::prelude::*;
        let debit = (
            any::<u64>(),
            (text(), text(), text(), text(), any::<u64>(), text()),
            any::<u64>(),
        )
            .prop_map(
                |(seq, (id, party, to, gateway, duration, application), ended)| OwedDebit {
                    seq,
                    request: DebitRequest {
                        call_id: CallId::new(id),
                        party: BillingParty::new(party),
                        to,
                        gateway,
                        duration,
                        application,
                    },
                    ended: Timestamp(ended),
                },
            );
        prop_oneof![
            arb_session().prop_map(StoreChange::from),
            arb_session().prop_map(|s| StoreChange::Update(crate::store::SessionUpdate::of(&s))),
            text().prop_map(|id| StoreChange::RemoveSession(CallId::new(id))),
            debit.prop_map(StoreChange::Debit),
            any::<u64>().prop_map(StoreChange::DebitDone),
        ]
    }

    fn arb_record() -> impl proptest::strategy::Strategy<Value = Record<'static>> {
        use proptest::prelude::*;
        prop_oneof![
            (any::<u64>(), proptest::collection::vec(arb_change(), 0..6)).prop_map(
                |(at, changes)| Record::Changes {
                    at,
                    changes: std::borrow::Cow::Owned(changes),
                }
            ),
            any::<u64>().prop_map(|at| Record::Alive { at }),
            any::<u64>().prop_map(|at| Record::Shutdown { at }),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

        /// The journal's encoder writes exactly the bytes `postcard::to_slice`
        /// writes (older journals replay, and replay uses postcard), and
        /// nothing past them.
        #[test]
        fn the_encoder_writes_postcards_bytes(record in arb_record(), cut in 0usize..64) {
            let mut want = vec![0u8; 64 * 1024];
            let want = postcard::to_slice(&record, &mut want).unwrap().to_vec();
            let mut got = vec![0xA5u8; want.len() + 32];
            let n = encode(&record, &mut got).unwrap();
            proptest::prop_assert_eq!(&got[..n], &want[..]);
            proptest::prop_assert!(got[n..].iter().all(|&b| b == 0xA5));
            // It decodes as replay decodes it.
            let back: Record = postcard::from_bytes(&got[..n]).unwrap();
            proptest::prop_assert_eq!(format!("{back:?}"), format!("{record:?}"));
            // Too short a buffer: `SerializeBufferFull`, as `to_slice`, and
            // nothing written past the buffer.
            let short = want.len().saturating_sub(cut + 1);
            if short < want.len() {
                let mut buf = vec![0xA5u8; want.len()];
                let r = encode(&record, &mut buf[..short]);
                proptest::prop_assert!(
                    matches!(r, Err(postcard::Error::SerializeBufferFull)),
                    "{:?}", r
                );
                proptest::prop_assert!(buf[short..].iter().all(|&b| b == 0xA5));
            }
        }
    }

    #[test]
    fn copy_short_copies_every_length() {
        let src: Vec<u8> = (1..=200).collect();
        for n in 0..=200 {
            let mut dst = vec![0u8; n];
            copy_short(&mut dst, &src[..n]);
            assert_eq!(dst, &src[..n], "length {n}");
        }
    }

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn an_unfinished_background_compaction_loses_nothing() {
        let dir = tmp();
        {
            let mut j = Journal::open(&dir, opts()).unwrap();
            j.apply(&[
                StoreChange::from(session("a")),
                StoreChange::from(session("b")),
            ])
            .unwrap();
            // The background thread renames the journal aside and takes the
            // state; the daemon dies before the snapshot is written.
            let old = lock(&j.inner).rotate().unwrap();
            assert!(dir.join(OLD_JOURNAL_FILE).exists());
            j.apply(&[StoreChange::RemoveSession(CallId::new("a"))])
                .unwrap();
            j.apply(&[StoreChange::Debit(debit(7, "a"))]).unwrap();
            drop(old);
        }
        let j = Journal::open(&dir, opts()).unwrap();
        let s = j.snapshot();
        let ids: Vec<&str> = s.sessions.iter().map(|s| s.call_id.as_str()).collect();
        assert_eq!(ids, vec!["b"]);
        assert_eq!(s.debits, vec![debit(7, "a")]);
        assert!(!dir.join(OLD_JOURNAL_FILE).exists(), "folded in at open");
    }

    #[test]
    fn a_finished_background_compaction_then_crash_replays_to_the_same_state() {
        let dir = tmp();
        {
            let mut j = Journal::open(&dir, opts()).unwrap();
            j.apply(&[StoreChange::from(session("a"))]).unwrap();
            j.apply(&[StoreChange::RemoveSession(CallId::new("a"))])
                .unwrap();
            j.apply(&[StoreChange::from(session("b"))]).unwrap();
            let _old = lock(&j.inner).rotate().unwrap();
            // Snapshot written, then death before the old journal is removed.
            let state = SharedState {
                sessions: vec![Arc::new(session("b"))],
                debits: vec![],
            };
            write_snapshot(&dir, shared_out(&state), false, None).unwrap();
            j.apply(&[StoreChange::from(session("c"))]).unwrap();
        }
        let j = Journal::open(&dir, opts()).unwrap();
        let ids: Vec<String> = j
            .snapshot()
            .sessions
            .iter()
            .map(|s| s.call_id.to_string())
            .collect();
        assert_eq!(ids, vec!["b", "c"]);
    }

    #[test]
    fn the_background_thread_compacts_without_losing_a_batch() {
        let dir = tmp();
        let o = JournalOptions {
            compact_bytes: 2_000,
            heartbeat: Duration::from_millis(20),
            ..opts()
        };
        let mut compactions = 0;
        {
            let mut d = Driven {
                j: Journal::open(&dir, o.clone()).unwrap(),
                mem: Default::default(),
            };
            for i in 0..300 {
                compactions += u32::from(d.j.wants_state());
                d.apply(&[StoreChange::from(session(&format!("s{i}")))]);
                if i % 50 == 0 {
                    std::thread::sleep(Duration::from_millis(30));
                }
            }
            // Crash.
        }
        assert!(compactions > 0, "the journal asked for the state");
        let j = Journal::open(&dir, o).unwrap();
        assert_eq!(j.snapshot().sessions.len(), 300);
    }

    #[test]
    fn replays_what_was_applied_after_a_crash() {
        let dir = tmp();
        {
            let mut j = Journal::open(&dir, opts()).unwrap();
            let mut a = session("a");
            j.apply(&[
                StoreChange::from(a.clone()),
                StoreChange::from(session("b")),
            ])
            .unwrap();
            a.state = SessionState::InProgress;
            j.apply(&[StoreChange::from(a)]).unwrap();
            j.apply(&[
                StoreChange::RemoveSession(CallId::new("b")),
                StoreChange::Debit(debit(1, "b")),
            ])
            .unwrap();
            j.apply(&[StoreChange::Debit(debit(2, "c"))]).unwrap();
            j.apply(&[StoreChange::DebitDone(2)]).unwrap();
            // Dropped without close: a crash.
        }
        let mut j = Journal::open(&dir, opts()).unwrap();
        assert!(!j.recovery().clean_shutdown);
        assert_eq!(j.recovery().records_replayed, 5);
        assert!(j.recovery().down_since.is_some());
        let s = j.load().unwrap();
        assert_eq!(s.sessions.len(), 1);
        assert_eq!(s.sessions[0].call_id.as_str(), "a");
        assert_eq!(s.sessions[0].state, SessionState::InProgress);
        assert_eq!(s.debits, vec![debit(1, "b")]);
    }

    #[test]
    fn an_update_replays_onto_the_session_of_the_snapshot_or_the_journal() {
        let dir = tmp();
        let mut a = session("a");
        let mut b = session("b");
        {
            let mut j = Journal::open(&dir, opts()).unwrap();
            j.apply(&[StoreChange::from(a.clone())]).unwrap();
            j.compact().unwrap(); // `a` is in the snapshot now
            j.apply(&[StoreChange::from(b.clone())]).unwrap();
            for s in [&mut a, &mut b] {
                s.state = SessionState::InProgress;
                s.answered = Some(Timestamp(5_000));
                s.deadline = Some(Timestamp(65_000));
            }
            j.apply(&[
                StoreChange::Update(crate::store::SessionUpdate::of(&a)),
                StoreChange::Update(crate::store::SessionUpdate::of(&b)),
            ])
            .unwrap();
            // Crash.
        }
        let j = Journal::open(&dir, opts()).unwrap();
        assert_eq!(j.snapshot().sessions, vec![a, b]);
    }

    #[test]
    fn a_snapshot_that_cannot_be_written_at_open_leaves_the_journal_whole() {
        let dir = tmp();
        {
            let mut j = Journal::open(&dir, opts()).unwrap();
            j.apply(&[StoreChange::from(session("a"))]).unwrap();
            j.apply(&[StoreChange::Debit(debit(1, "a"))]).unwrap();
            // Crash.
        }
        // The start-up compaction cannot write its snapshot (here: the
        // temporary file's name is taken by a directory).
        let tmp_name = dir.join(format!("{SNAPSHOT_FILE}.tmp"));
        fs::create_dir(&tmp_name).unwrap();
        assert!(Journal::open(&dir, opts()).is_err());
        fs::remove_dir(&tmp_name).unwrap();
        let j = Journal::open(&dir, opts()).unwrap();
        let s = j.snapshot();
        assert_eq!(s.sessions.len(), 1, "the journal was not emptied first");
        assert_eq!(s.debits, vec![debit(1, "a")]);
    }

    #[test]
    fn drops_a_torn_tail_and_keeps_the_rest() {
        let dir = tmp();
        let used;
        {
            let mut j = Journal::open(&dir, opts()).unwrap();
            j.apply(&[StoreChange::from(session("a"))]).unwrap();
            j.apply(&[StoreChange::from(session("b"))]).unwrap();
            used = j.journal_len();
        }
        // Cut the last record in the middle, as a torn write would.
        let path = dir.join(JOURNAL_FILE);
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(used - 5).unwrap();
        drop(f);
        let mut j = Journal::open(&dir, opts()).unwrap();
        assert!(j.recovery().dropped_bytes > 0);
        let s = j.load().unwrap();
        assert_eq!(s.sessions.len(), 1);
        assert_eq!(s.sessions[0].call_id.as_str(), "a");
        // And the journal is usable again afterwards.
        j.apply(&[StoreChange::from(session("c"))]).unwrap();
        drop(j);
        let j = Journal::open(&dir, opts()).unwrap();
        assert_eq!(j.snapshot().sessions.len(), 2);
    }

    #[test]
    fn a_flipped_byte_is_detected_by_the_checksum() {
        let dir = tmp();
        let used;
        {
            let mut j = Journal::open(&dir, opts()).unwrap();
            j.apply(&[StoreChange::from(session("a"))]).unwrap();
            j.apply(&[StoreChange::from(session("b"))]).unwrap();
            used = j.journal_len() as usize;
        }
        let path = dir.join(JOURNAL_FILE);
        let mut bytes = fs::read(&path).unwrap();
        let last = used - 3;
        bytes[last] ^= 0x20;
        fs::write(&path, &bytes).unwrap();
        let j = Journal::open(&dir, opts()).unwrap();
        assert_eq!(j.snapshot().sessions.len(), 1);
        assert!(j.recovery().dropped_bytes > 0);
    }

    #[test]
    fn a_record_whose_length_was_not_stored_yet_is_the_end_of_the_journal() {
        // The process dies in the middle of an append: the payload is in the
        // mapping, the length (stored last) is still zero.
        let dir = tmp();
        let used;
        {
            let mut j = Journal::open(&dir, opts()).unwrap();
            j.apply(&[StoreChange::from(session("a"))]).unwrap();
            let first = j.journal_len() as usize;
            j.apply(&[StoreChange::from(session("b"))]).unwrap();
            used = j.journal_len() as usize;
            let path = dir.join(JOURNAL_FILE);
            let mut bytes = fs::read(&path).unwrap();
            bytes[first..first + 4].fill(0);
            fs::write(&path, &bytes).unwrap();
        }
        let j = Journal::open(&dir, opts()).unwrap();
        let ids: Vec<String> = j
            .snapshot()
            .sessions
            .iter()
            .map(|s| s.call_id.to_string())
            .collect();
        assert_eq!(ids, vec!["a"]);
        assert!(j.recovery().dropped_bytes > 0);
        assert!(j.recovery().dropped_bytes <= used as u64);
    }

    #[test]
    fn the_mapped_journal_grows_past_its_first_reservation() {
        let dir = tmp();
        let o = JournalOptions {
            compact_bytes: u64::MAX,
            ..opts()
        };
        let mut n = 0;
        {
            let mut j = Journal::open(&dir, o.clone()).unwrap();
            while j.journal_len() as usize <= 2 * FIRST_RESERVE {
                j.apply(&[StoreChange::from(session(&format!("grow{n}")))])
                    .unwrap();
                n += 1;
            }
            let file = fs::metadata(dir.join(JOURNAL_FILE)).unwrap().len();
            assert!(file >= j.journal_len(), "reserved ahead");
            // Crash: nothing but the mapping wrote the records.
        }
        let j = Journal::open(&dir, o).unwrap();
        assert_eq!(j.snapshot().sessions.len(), n);
        assert_eq!(j.recovery().dropped_bytes, 0, "the zero tail is not a tear");
    }

    fn one_session_record(i: usize) -> Record<'static> {
        Record::Changes {
            at: 1_790_000_000_000 + i as u64,
            changes: std::borrow::Cow::Owned(vec![StoreChange::from(session(&format!(
                "record-{i}"
            )))]),
        }
    }

    #[test]
    fn the_writer_asks_the_thread_to_look_ahead_once_and_again_near_where_it_looked() {
        let dir = tmp();
        let ahead = Arc::new(Ahead::default());
        let mut seg = Segment::open(&dir.join(JOURNAL_FILE), ahead.clone()).unwrap();
        assert!(seg.wants_next_mapping(), "nothing looked at yet: asks");
        assert!(!seg.wants_next_mapping(), "asks once");
        // What the background thread does when asked.
        ahead.prepare();
        assert!(!seg.wants_next_mapping(), "looked ahead from here");
        assert!(lock(&ahead.slot).next.is_none(), "far from the end");
        let mut n = 0;
        while !seg.wants_next_mapping() {
            assert!(seg.len < FIRST_RESERVE, "never asked again");
            seg.append(&one_session_record(n)).unwrap();
            n += 1;
        }
        assert!(seg.len + AHEAD_LOW > AHEAD && seg.len <= AHEAD);
        let (back, valid) = decode_records(&fs::read(dir.join(JOURNAL_FILE)).unwrap());
        assert_eq!((back.len(), valid), (n, seg.len));
    }

    /// A segment filled until the background thread, looking [`AHEAD`] of
    /// the writer, reaches past its first reservation; and the records
    /// written.
    fn a_segment_near_its_end(dir: &Path) -> (Arc<Ahead>, Segment, usize) {
        let ahead = Arc::new(Ahead::default());
        let mut seg = Segment::open(&dir.join(JOURNAL_FILE), ahead.clone()).unwrap();
        let mut n = 0;
        while seg.len + AHEAD <= FIRST_RESERVE {
            seg.append(&one_session_record(n)).unwrap();
            n += 1;
        }
        (ahead, seg, n)
    }

    #[test]
    fn the_writer_grows_into_the_mapping_prepared_ahead() {
        let dir = tmp();
        let (ahead, mut seg, mut n) = a_segment_near_its_end(&dir);
        ahead.prepare();
        let prepared = lock(&ahead.slot)
            .next
            .as_ref()
            .map(|m| m.as_ptr())
            .expect("the next mapping is prepared");
        // The file is grown ahead of the writer: zeros, still the end.
        let file = fs::metadata(dir.join(JOURNAL_FILE)).unwrap().len();
        assert_eq!(file as usize, 2 * FIRST_RESERVE);
        while seg.len <= FIRST_RESERVE {
            seg.append(&one_session_record(n)).unwrap();
            n += 1;
        }
        assert_eq!(seg.cap, 2 * FIRST_RESERVE);
        let map = seg.map.as_ref().map(|m| m.0.as_ptr());
        assert_eq!(map, Some(prepared), "the prepared mapping is the writer's");
        assert!(
            lock(&ahead.slot).retired.len() == 1,
            "the old one is retired"
        );
        ahead.prepare();
        assert!(
            lock(&ahead.slot).retired.is_empty(),
            "and unmapped off the writer"
        );
        let (back, valid) = decode_records(&fs::read(dir.join(JOURNAL_FILE)).unwrap());
        assert_eq!((back.len(), valid), (n, seg.len));
    }

    /// Whether the page at `addr` is in this process's page tables
    /// (`/proc/self/pagemap`: bit 63 of the page's entry).
    fn page_present(addr: *const u8) -> bool {
        use std::os::unix::fs::FileExt;
        let page = page_size();
        let mut entry = [0u8; 8];
        fs::File::open("/proc/self/pagemap")
            .unwrap()
            .read_exact_at(&mut entry, (addr as usize / page * 8) as u64)
            .unwrap();
        u64::from_le_bytes(entry) >> 63 == 1
    }

    #[test]
    fn filled_pages_leave_the_page_tables_before_a_flush_and_keep_their_bytes() {
        let dir = tmp();
        let (ahead, mut seg, mut n) = a_segment_near_its_end(&dir);
        let base = seg.map.as_ref().map(|m| m.0.as_ptr()).unwrap();
        let page = page_size();
        assert!(page_present(base), "written through the mapping");
        ahead.unmap_written();
        let unmapped = lock(&ahead.slot).unmapped;
        assert_eq!(unmapped, seg.len / page * page, "up to the writer's page");
        assert!(!page_present(base));
        assert!(!page_present(base.wrapping_add(unmapped - page)));
        let mapped = seg.map.as_mut().unwrap().bytes()[..seg.len].to_vec();
        let file = fs::read(dir.join(JOURNAL_FILE)).unwrap();
        assert_eq!(&file[..seg.len], &mapped[..], "the bytes are the file's");
        let (back, valid) = decode_records(&file);
        assert_eq!((back.len(), valid), (n, seg.len));
        // The writer goes on where it was, and the next call starts there.
        for _ in 0..100 {
            seg.append(&one_session_record(n)).unwrap();
            n += 1;
        }
        ahead.unmap_written();
        assert_eq!(lock(&ahead.slot).unmapped, seg.len / page * page);
        let (back, valid) = decode_records(&fs::read(dir.join(JOURNAL_FILE)).unwrap());
        assert_eq!((back.len(), valid), (n, seg.len));
    }

    #[test]
    fn the_pages_ahead_of_the_writer_are_read_in_keeping_the_written_ones() {
        let dir = tmp();
        let ahead = Arc::new(Ahead::default());
        let mut seg = Segment::open(&dir.join(JOURNAL_FILE), ahead.clone()).unwrap();
        let mut n = 0;
        while seg.len < 100 << 10 {
            seg.append(&one_session_record(n)).unwrap();
            n += 1;
        }
        assert_eq!(lock(&ahead.slot).cached, 0);
        ahead.prepare();
        assert_eq!(lock(&ahead.slot).cached, seg.len + AHEAD);
        let (back, valid) = decode_records(&fs::read(dir.join(JOURNAL_FILE)).unwrap());
        assert_eq!((back.len(), valid), (n, seg.len), "no written byte changed");
        // Into the part read in; the next look starts where this one ended
        // and stops at the end of the file.
        while seg.len + AHEAD <= FIRST_RESERVE {
            seg.append(&one_session_record(n)).unwrap();
            n += 1;
        }
        ahead.prepare();
        assert!(lock(&ahead.slot).next.is_some());
        assert_eq!(lock(&ahead.slot).cached, seg.len + AHEAD);
        let (back, valid) = decode_records(&fs::read(dir.join(JOURNAL_FILE)).unwrap());
        assert_eq!((back.len(), valid), (n, seg.len));
    }

    #[test]
    fn a_mapping_prepared_before_a_reset_is_not_used_after_it() {
        let dir = tmp();
        let (ahead, mut seg, _) = a_segment_near_its_end(&dir);
        ahead.prepare();
        assert!(lock(&ahead.slot).next.is_some());
        seg.reset().unwrap();
        assert!(
            lock(&ahead.slot).next.is_none(),
            "dropped with its generation"
        );
        let mut n = 0;
        while seg.len <= FIRST_RESERVE {
            seg.append(&one_session_record(n)).unwrap();
            n += 1;
        }
        let (back, valid) = decode_records(&fs::read(dir.join(JOURNAL_FILE)).unwrap());
        assert_eq!((back.len(), valid), (n, seg.len));
    }

    #[test]
    fn with_many_sessions_compaction_waits_for_a_journal_as_big_as_the_snapshot() {
        let dir = tmp();
        let o = JournalOptions {
            compact_bytes: 1_000,
            ..opts()
        };
        let mut j = Journal::open(&dir, o).unwrap();
        assert_eq!(lock(&j.inner).compact_threshold(), 1_000);
        for i in 0..100 {
            j.apply(&[StoreChange::from(session(&format!("t{i}")))])
                .unwrap();
        }
        j.compact().unwrap();
        let snapshot = fs::metadata(dir.join(SNAPSHOT_FILE)).unwrap().len();
        assert!(snapshot > 10_000);
        assert_eq!(lock(&j.inner).compact_threshold(), snapshot);
    }

    #[test]
    fn journal_and_snapshot_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: PathBuf| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let dir = tmp();
        // A journal an older version left world-readable is narrowed.
        fs::write(dir.join(JOURNAL_FILE), b"").unwrap();
        fs::set_permissions(dir.join(JOURNAL_FILE), fs::Permissions::from_mode(0o644)).unwrap();
        let mut j = Journal::open(&dir, opts()).unwrap();
        j.apply(&[StoreChange::from(session("p1"))]).unwrap();
        j.compact().unwrap();
        assert_eq!(mode(dir.join(JOURNAL_FILE)), 0o600);
        assert_eq!(mode(dir.join(SNAPSHOT_FILE)), 0o600);
        drop(j);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn compaction_keeps_the_state_and_empties_the_journal() {
        let dir = tmp();
        let o = JournalOptions {
            compact_bytes: 2_000,
            heartbeat: Duration::from_millis(10),
            ..opts()
        };
        let mut d = Driven {
            j: Journal::open(&dir, o.clone()).unwrap(),
            mem: Default::default(),
        };
        for i in 0..50 {
            let id = format!("s{i}");
            d.apply(&[StoreChange::from(session(&id))]);
            if i % 2 == 0 {
                d.apply(&[StoreChange::RemoveSession(CallId::new(&id))]);
            }
        }
        // The background thread asks for the state within ticks, and
        // compacts off the apply path.
        for _ in 0..200 {
            d.hand_over();
            if d.j.journal_len() <= 2_000 {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let j = d.j;
        assert!(
            j.journal_len() <= 2_000 + 1_000,
            "journal is {} bytes",
            j.journal_len()
        );
        assert_eq!(j.snapshot().sessions.len(), 25);
        drop(j);
        let j = Journal::open(&dir, o).unwrap();
        assert_eq!(j.snapshot().sessions.len(), 25);
        assert_eq!(j.journal_len(), 0);
    }

    #[test]
    fn the_coarse_clock_is_at_most_a_tick_behind() {
        for _ in 0..100 {
            let coarse = coarse_wall_ms();
            let precise = wall_ms();
            // Never ahead of a later precise reading, never a second behind.
            assert!(
                coarse <= precise && precise - coarse < 1000,
                "{coarse} {precise}"
            );
        }
    }

    #[test]
    fn clean_close_is_recorded_with_its_time() {
        let dir = tmp();
        let before = wall_ms();
        {
            let mut j = Journal::open(&dir, opts()).unwrap();
            j.apply(&[StoreChange::from(session("a"))]).unwrap();
            j.close().unwrap();
        }
        let j = Journal::open(&dir, opts()).unwrap();
        assert!(j.recovery().clean_shutdown);
        assert!(j.recovery().down_since.unwrap().0 >= before);
        assert_eq!(j.snapshot().sessions.len(), 1);
        // Opening again (after a crash of this run, say) keeps the down time.
        let first = j.recovery().down_since;
        drop(j);
        let j = Journal::open(&dir, opts()).unwrap();
        assert_eq!(j.recovery().down_since, first);
        assert!(!j.recovery().clean_shutdown);
    }

    #[test]
    fn heartbeats_come_a_heartbeat_period_apart_and_not_while_appending() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let hb = Duration::from_secs(5);
        let mut q = Quiet::new(t0);
        let mut appends = 0;
        let mut beats = Vec::new();
        // Ticks every second; records appended until second 3.
        for tick in 1..=22 {
            if tick <= 3 {
                appends += 1;
            }
            if q.heartbeat_due(appends, at(tick), hb) {
                beats.push(tick);
                appends += 1; // the heartbeat itself
                q.seen(appends, at(tick));
            }
        }
        assert_eq!(beats, vec![8, 13, 18]);
    }

    /// A rotation renamed the journal aside but could not create the new
    /// one (disk full): the writer went on in the renamed file. The whole
    /// compaction that follows removes that file, and what is appended after
    /// it must land in a journal that is still there.
    #[test]
    fn appends_after_a_failed_rotation_and_a_whole_compaction_are_kept() {
        let dir = tmp();
        {
            let mut j = Journal::open(&dir, opts()).unwrap();
            j.apply(&[StoreChange::from(session("a"))]).unwrap();
            fs::rename(dir.join(JOURNAL_FILE), dir.join(OLD_JOURNAL_FILE)).unwrap();
            j.apply(&[StoreChange::from(session("b"))]).unwrap();
            let state = SharedState {
                sessions: vec![Arc::new(session("a")), Arc::new(session("b"))],
                debits: vec![],
            };
            j.save_state(state).unwrap();
            assert!(!dir.join(OLD_JOURNAL_FILE).exists());
            j.apply(&[StoreChange::from(session("c"))]).unwrap();
            // Dropped without closing: a kill -9.
        }
        let j = Journal::open(&dir, opts()).unwrap();
        assert_eq!(session_ids(&j), ["a", "b", "c"]);
    }

    /// The Call-IDs of the sessions `j` recovered, sorted.
    fn session_ids(j: &Journal) -> Vec<String> {
        let mut ids: Vec<String> = j
            .snapshot()
            .sessions
            .iter()
            .map(|s| s.call_id.as_str().to_string())
            .collect();
        ids.sort();
        ids
    }

    #[test]
    fn a_snapshot_that_cannot_fit_on_the_disk_is_not_tried_until_it_can() {
        let dir = tmp();
        let mut j = Journal::open(&dir, opts()).unwrap();
        j.apply(&[StoreChange::from(session("a"))]).unwrap();
        let before = fs::read(dir.join(SNAPSHOT_FILE)).unwrap();
        let state = || SharedState {
            sessions: vec![Arc::new(session("a")), Arc::new(session("b"))],
            debits: vec![debit(3, "c")],
        };
        // A write failed; the last snapshot says a session takes more than
        // any disk holds.
        {
            let mut i = lock(&j.inner);
            i.failed = true;
            (i.snapshot_bytes, i.snapshot_items) = (u64::MAX / 2, 1);
        }
        let e = j.save_state(state()).unwrap_err();
        assert!(
            matches!(&e, StoreError::Io(io) if io.kind() == io::ErrorKind::StorageFull),
            "{e}"
        );
        assert_eq!(fs::read(dir.join(SNAPSHOT_FILE)).unwrap(), before);
        assert!(!dir.join(format!("{SNAPSHOT_FILE}.tmp")).exists());
        {
            let i = lock(&j.inner);
            assert!(i.failed);
            assert!(i.retry_at > Instant::now());
        }
        // Nothing is appended meanwhile (it would leave a gap).
        j.apply(&[StoreChange::from(session("d"))]).unwrap();
        assert!(!j.wants_state(), "asked again only after a retry period");
        // The estimate cannot put a try off for longer than TRY_ANYWAY.
        {
            let mut i = lock(&j.inner);
            i.tried_at = Instant::now().checked_sub(TRY_ANYWAY).unwrap();
        }
        j.save_state(state()).unwrap();
        assert!(!lock(&j.inner).failed, "tried anyway, and there was room");
        lock(&j.inner).failed = true;
        // Room again: the state is written whole and appends resume.
        {
            let mut i = lock(&j.inner);
            (i.snapshot_bytes, i.snapshot_items) = (500, 1);
        }
        j.save_state(state()).unwrap();
        assert!(!lock(&j.inner).failed);
        assert_eq!(lock(&j.inner).snapshot_items, 3);
        j.apply(&[StoreChange::from(session("e"))]).unwrap();
        drop(j);
        let j = Journal::open(&dir, opts()).unwrap();
        assert_eq!(session_ids(&j), ["a", "b", "e"]);
        assert_eq!(j.snapshot().debits.len(), 1);
    }

    #[test]
    fn the_space_a_snapshot_needs_is_its_size_per_item_times_the_items() {
        let dir = tmp();
        let j = Journal::open(&dir, opts()).unwrap();
        let mut i = lock(&j.inner);
        (i.snapshot_bytes, i.snapshot_items) = (1000, 10);
        assert!(i.space_short_of_snapshot(10).is_none());
        assert!(i.space_short_of_snapshot(u64::MAX / 200).is_some());
        (i.snapshot_bytes, i.snapshot_items) = (0, 0);
        assert!(i.space_short_of_snapshot(1).is_none());
        assert!(i.space_short_of_snapshot(u64::MAX / 2000).is_some());
    }

    #[test]
    fn closing_with_the_state_writes_it_as_the_clean_snapshot() {
        let dir = tmp();
        {
            let mut j = Journal::open(&dir, opts()).unwrap();
            j.apply(&[
                StoreChange::from(session("a")),
                StoreChange::from(session("b")),
            ])
            .unwrap();
            j.apply(&[StoreChange::RemoveSession(CallId::new("a"))])
                .unwrap();
            let state = SharedState {
                sessions: vec![Arc::new(session("b"))],
                debits: vec![debit(3, "a")],
            };
            j.close_with(state).unwrap();
        }
        assert!(fs::read_to_string(dir.join(SNAPSHOT_FILE))
            .unwrap()
            .contains("\"clean\":true"));
        let j = Journal::open(&dir, opts()).unwrap();
        assert!(j.recovery().clean_shutdown);
        let s = j.snapshot();
        assert_eq!(s.sessions.len(), 1);
        assert_eq!(s.sessions[0].call_id.as_str(), "b");
        assert_eq!(s.debits, vec![debit(3, "a")]);
    }

    #[test]
    fn heartbeat_records_keep_down_since_current() {
        let dir = tmp();
        let o = JournalOptions {
            fsync: FsyncPolicy::Interval(Duration::from_millis(10)),
            heartbeat: Duration::from_millis(20),
            ..Default::default()
        };
        let j = Journal::open(&dir, o.clone()).unwrap();
        let start = wall_ms();
        while j.journal_len() == 0 {
            std::thread::sleep(Duration::from_millis(5));
        }
        drop(j);
        let j = Journal::open(&dir, o).unwrap();
        assert!(j.recovery().down_since.unwrap().0 >= start);
    }

    #[test]
    fn fsync_policy_parses() {
        assert_eq!("always".parse(), Ok(FsyncPolicy::Always));
        assert_eq!(" Never".parse(), Ok(FsyncPolicy::Never));
        assert_eq!(
            "interval".parse(),
            Ok(FsyncPolicy::Interval(Duration::from_secs(1)))
        );
        assert_eq!(
            "interval:250".parse(),
            Ok(FsyncPolicy::Interval(Duration::from_millis(250)))
        );
        assert!("sometimes".parse::<FsyncPolicy>().is_err());
        assert!("interval:0".parse::<FsyncPolicy>().is_err());
    }

    /// The records of one call (init, start, stop), as the engine writes
    /// them under `loadgen`.
    fn one_call() -> Vec<Record<'static>> {
        let mut s = session("loadgen-3-123456@127.0.0.1");
        let at = 1_790_000_000_000;
        let init = Record::Changes {
            at,
            changes: std::borrow::Cow::Owned(vec![StoreChange::from(s.clone())]),
        };
        s.state = SessionState::InProgress;
        s.dialog_id = Some(crate::types::DialogId::new(0xb61, 0x41fa_2203));
        s.answered = Some(Timestamp(at + 10));
        s.deadline = Some(Timestamp(at + 3_600_010));
        let start = Record::Changes {
            at: at + 10,
            changes: std::borrow::Cow::Owned(vec![StoreChange::Update(
                crate::store::SessionUpdate::of(&s),
            )]),
        };
        let stop = Record::Changes {
            at: at + 20,
            changes: std::borrow::Cow::Owned(vec![StoreChange::RemoveSession(s.call_id)]),
        };
        vec![init, start, stop]
    }

    /// Instructions per record of the encoder against `postcard::to_slice`,
    /// under callgrind (not a pass/fail test):
    /// `valgrind --tool=callgrind --toggle-collect='*encode_cost_*' <test binary> journal::tests::measure_encode_cost --ignored --exact`
    /// then `callgrind_annotate --inclusive=yes` for `encode_cost_ours` and
    /// `encode_cost_postcard` (each encodes one call's 3 records 10,000 times).
    #[test]
    #[ignore]
    fn measure_encode_cost() {
        #[inline(never)]
        fn encode_cost_ours(records: &[Record<'_>], buf: &mut [u8]) -> usize {
            let mut n = 0;
            for _ in 0..10_000 {
                for r in records {
                    n += encode(std::hint::black_box(r), buf).unwrap();
                }
            }
            n
        }
        #[inline(never)]
        fn encode_cost_postcard(records: &[Record<'_>], buf: &mut [u8]) -> usize {
            let mut n = 0;
            for _ in 0..10_000 {
                for r in records {
                    n += postcard::to_slice(std::hint::black_box(r), buf)
                        .unwrap()
                        .len();
                }
            }
            n
        }
        let records = one_call();
        let mut buf = vec![0u8; 4096];
        let a = encode_cost_ours(&records, &mut buf);
        let b = encode_cost_postcard(&records, &mut buf);
        assert_eq!(a, b);
        println!("{} bytes per call", a / 10_000);
    }

    /// Figures for docs/adr/0002-journal.md (not a pass/fail test):
    /// `cargo test -p callcontrol-core --release --lib journal::tests::measure -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn measure_apply_cost_per_policy() {
        for (name, fsync) in [
            ("never", FsyncPolicy::Never),
            ("interval", FsyncPolicy::default()),
            ("always", FsyncPolicy::Always),
        ] {
            let dir = tmp();
            let mut j = Journal::open(
                &dir,
                JournalOptions {
                    fsync,
                    ..Default::default()
                },
            )
            .unwrap();
            let n = 2000;
            let t = Instant::now();
            for i in 0..n {
                j.apply(&[StoreChange::from(session(&format!("m{i}")))])
                    .unwrap();
            }
            let per = t.elapsed() / n;
            let bytes = j.journal_len() / n as u64;
            j.close().unwrap();
            println!("fsync={name}: {per:?} per one-session batch, {bytes} bytes per record");
        }
    }
}
