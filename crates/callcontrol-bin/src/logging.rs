//! Where the `log` facade's lines go: syslog (ident `call-control`, facility
//! daemon) when the daemon forks, stderr in the foreground, and stderr with
//! `<N>` priority prefixes and no timestamps under systemd (journald reads
//! the prefix as the line's priority and adds its own timestamp).

use std::io::Write;
use std::sync::{Arc, Mutex};

use log::{Level, LevelFilter, Log, Metadata, Record};

/// Where log lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogTarget {
    /// The local syslog daemon (`/dev/log`), facility daemon.
    Syslog,
    /// Standard error, with a timestamp and the level.
    Stderr,
    /// Standard error for journald: `<N>message`.
    Journald,
}

/// The name the daemon logs as.
pub const IDENT: &str = "call-control";

/// Installs the logger. `debug` lowers the level to `Debug` (which adds the
/// request/reply traces). Falls back to stderr when syslog is unreachable.
///
/// Messages are formatted where they are logged and appended, with their
/// level and time, to one shared buffer; a thread of its own adds the
/// prefixes and writes them every 20 ms, many per `write()`: the thread that
/// answers the proxy makes no syscall, no allocation and wakes no thread to
/// log.
/// `log::logger().flush()` writes every line so far (the daemon calls it
/// before exiting).
pub fn init(target: LogTarget, debug: bool) {
    let level = if debug {
        LevelFilter::Debug
    } else {
        LevelFilter::Info
    };
    let sink = match target {
        LogTarget::Syslog => match syslog_sink() {
            Ok(s) => s,
            Err(e) => {
                eprintln!("{IDENT}: cannot reach syslog ({e}), logging to stderr");
                Sink::stderr(false)
            }
        },
        LogTarget::Stderr => Sink::stderr(false),
        LogTarget::Journald => Sink::stderr(true),
    };
    let journald = matches!(sink, Sink::Stderr { journald: true, .. });
    let shared = Arc::new(Shared {
        queue: Mutex::new(Queue::default()),
        spare: Mutex::new(Queue::default()),
        sink: Mutex::new(sink),
    });
    let writer = shared.clone();
    let spawned = std::thread::Builder::new()
        .name("log-writer".into())
        .spawn(move || loop {
            std::thread::sleep(WRITE_EVERY);
            writer.write_queued();
        });
    if spawned.is_err() {
        eprintln!("{IDENT}: cannot start the log writer thread");
    }
    let logger = BufferedLogger { shared, journald };
    // Only the first call installs a logger; later calls (tests) keep it.
    if log::set_boxed_logger(Box::new(logger)).is_ok() {
        log::set_max_level(level);
    }
}

/// How often the writer thread writes what was logged: lines are queued in
/// memory by the threads that log (no syscall, no wake-up) and written in
/// one `write()` per tick.
const WRITE_EVERY: std::time::Duration = std::time::Duration::from_millis(20);

/// Past this many queued lines the logging thread writes them itself
/// (lines are never dropped: they are the record of what was done to calls).
const MAX_QUEUED: usize = 16_384;

/// Lines logged and not written yet: their messages one after the other in
/// `text`, and for each its level, time (ms since the epoch) and end.
#[derive(Default)]
struct Queue {
    text: String,
    lines: Vec<(Level, u64, usize)>,
}

impl Queue {
    fn push(&mut self, level: Level, at: u64, message: &str) {
        self.text.push_str(message);
        self.lines.push((level, at, self.text.len()));
    }
    /// The queued lines: level, time, message.
    fn iter(&self) -> impl Iterator<Item = (Level, u64, &str)> + '_ {
        let mut start = 0;
        self.lines.iter().map(move |&(level, at, end)| {
            let m = &self.text[start..end];
            start = end;
            (level, at, m)
        })
    }
}

struct Shared {
    queue: Mutex<Queue>,
    /// The buffers last written, kept for the next swap.
    spare: Mutex<Queue>,
    sink: Mutex<Sink>,
}

impl Shared {
    /// Writes every queued line. The sink's lock is taken first, so batches
    /// from the writer thread and from a flush never interleave.
    fn write_queued(&self) {
        let mut sink = self.sink.lock().unwrap_or_else(|p| p.into_inner());
        // Swapped with the buffers written last time, emptied: the threads
        // that log keep appending without allocating.
        let mut queue = std::mem::take(&mut *self.spare.lock().unwrap_or_else(|p| p.into_inner()));
        queue.text.clear();
        queue.lines.clear();
        std::mem::swap(
            &mut queue,
            &mut *self.queue.lock().unwrap_or_else(|p| p.into_inner()),
        );
        if queue.lines.is_empty() {
            *self.spare.lock().unwrap_or_else(|p| p.into_inner()) = queue;
            return;
        }
        match &mut *sink {
            Sink::Stderr { journald, batch } => {
                format_batch(&queue, *journald, batch);
                let mut err = std::io::stderr().lock();
                let _ = err.write_all(batch.as_bytes());
                let _ = err.flush();
            }
            Sink::Syslog(l) => l.send(queue.iter()),
        }
        *self.spare.lock().unwrap_or_else(|p| p.into_inner()) = queue;
    }
}

/// The queued lines with their prefixes, into `batch` (cleared first). The
/// lines of one millisecond share their prefix, formatted once.
fn format_batch(queue: &Queue, journald: bool, batch: &mut String) {
    batch.clear();
    batch.reserve(queue.text.len() + 24 * queue.lines.len());
    let mut prefix = String::new();
    let mut last = None;
    for (level, at, message) in queue.iter() {
        if last != Some((level, at)) {
            prefix.clear();
            write_prefix(&mut prefix, level, at, journald);
            last = Some((level, at));
        }
        batch.push_str(&prefix);
        batch.push_str(message);
        batch.push('\n');
    }
}

enum Sink {
    /// `batch`: the text of the last write, kept for its allocation.
    Stderr {
        journald: bool,
        batch: String,
    },
    Syslog(Box<crate::syslog::Syslog>),
}

impl Sink {
    fn stderr(journald: bool) -> Sink {
        Sink::Stderr {
            journald,
            batch: String::new(),
        }
    }
}

fn syslog_sink() -> std::io::Result<Sink> {
    let paths = crate::syslog::PATHS.map(std::path::Path::new);
    let syslog = crate::syslog::Syslog::connect(&paths, IDENT)?;
    Ok(Sink::Syslog(Box::new(syslog)))
}

/// Keeps only our own crates' debug lines (not hyper's, axum's, …).
fn wanted(metadata: &Metadata<'_>) -> bool {
    metadata.level() <= Level::Info || metadata.target().starts_with("callcontrol")
}

struct BufferedLogger {
    shared: Arc<Shared>,
    journald: bool,
}

impl Log for BufferedLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= log::max_level() && wanted(metadata)
    }
    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        thread_local! {
            static MESSAGE: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
        }
        let at = if self.journald { 0 } else { now_ms() };
        let queue = |message: &str| {
            let mut q = self.shared.queue.lock().unwrap_or_else(|p| p.into_inner());
            q.push(record.level(), at, message);
            q.lines.len() >= MAX_QUEUED
        };
        // Formatted outside the queue's lock, into a buffer reused by this
        // thread (a fresh one if a message's formatting logs in turn).
        let full = MESSAGE.with(|m| match m.try_borrow_mut() {
            Ok(mut m) => {
                m.clear();
                let _ = std::fmt::Write::write_fmt(&mut *m, *record.args());
                queue(&m)
            }
            Err(_) => queue(&record.args().to_string()),
        });
        if full {
            self.shared.write_queued();
        }
    }
    fn flush(&self) {
        self.shared.write_queued();
    }
}

/// Formats one line for stderr, timed now.
pub fn format_line(level: Level, msg: &str, journald: bool) -> String {
    let mut line = String::with_capacity(msg.len() + 24);
    write_prefix(&mut line, level, now_ms(), journald);
    line.push_str(msg);
    line.push('\n');
    line
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `<N>` (journald: sd-daemon(3) priority) or `hh:mm:ss.mmm LEVEL ` (UTC),
/// `at` in ms since the epoch.
fn write_prefix(out: &mut String, level: Level, at: u64, journald: bool) {
    use std::fmt::Write as _;
    if journald {
        let _ = write!(out, "<{}>", severity(level));
    } else {
        let (secs, ms) = (at / 1000, at % 1000);
        // By hand rather than `write!`: this runs for every line logged.
        out.extend(hms(secs).map(char::from));
        out.push('.');
        for d in [ms / 100, ms / 10 % 10, ms % 10] {
            out.push(char::from(b'0' + d as u8));
        }
        out.push(' ');
        out.push_str(match level {
            Level::Error => "ERROR ",
            Level::Warn => "WARN  ",
            Level::Info => "INFO  ",
            Level::Debug => "DEBUG ",
            Level::Trace => "TRACE ",
        });
    }
}

/// The syslog severity of a level (also journald's and sd-daemon(3)'s).
pub(crate) fn severity(level: Level) -> u8 {
    match level {
        Level::Error => 3,
        Level::Warn => 4,
        Level::Info => 6,
        Level::Debug | Level::Trace => 7,
    }
}

/// `hh:mm:ss` (UTC) of `secs` since the epoch.
pub(crate) fn hms(secs: u64) -> [u8; 8] {
    let two = |v: u64| [b'0' + (v / 10 % 10) as u8, b'0' + (v % 10) as u8];
    let [h0, h1] = two(secs / 3600 % 24);
    let [m0, m1] = two(secs / 60 % 60);
    let [s0, s1] = two(secs % 60);
    [h0, h1, b':', m0, m1, b':', s0, s1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prefix_is_the_time_of_the_line_and_its_level() {
        let mut out = String::new();
        // 01:02:03.045 UTC on 1970-01-02.
        write_prefix(&mut out, Level::Info, 86_400_000 + 3_723_045, false);
        assert_eq!(out, "01:02:03.045 INFO  ");
        out.clear();
        write_prefix(&mut out, Level::Error, 59, false);
        assert_eq!(out, "00:00:00.059 ERROR ");
    }

    #[test]
    fn queued_lines_keep_their_level_time_and_text() {
        let mut q = Queue::default();
        q.push(Level::Info, 1, "first (c1)");
        q.push(Level::Warn, 2, "");
        q.push(Level::Error, 3, "third");
        let got: Vec<(Level, u64, &str)> = q.iter().collect();
        assert_eq!(
            got,
            vec![
                (Level::Info, 1, "first (c1)"),
                (Level::Warn, 2, ""),
                (Level::Error, 3, "third")
            ]
        );
    }

    #[test]
    fn a_batch_is_each_line_with_its_own_prefix() {
        let mut q = Queue::default();
        let lines = [
            (Level::Info, 1_000, "a"),
            (Level::Info, 1_000, "b"),
            (Level::Warn, 1_000, "c"),
            (Level::Warn, 1_001, ""),
            (Level::Info, 61_001, "e (c1)"),
        ];
        for (level, at, m) in lines {
            q.push(level, at, m);
        }
        for journald in [false, true] {
            let mut want = String::new();
            for (level, at, m) in lines {
                write_prefix(&mut want, level, at, journald);
                want.push_str(m);
                want.push('\n');
            }
            let mut got = String::from("left over");
            format_batch(&q, journald, &mut got);
            assert_eq!(got, want);
            if !journald {
                // Four distinct prefixes among the five lines.
                let prefixes: std::collections::HashSet<&str> =
                    got.lines().map(|l| &l[..19]).collect();
                assert_eq!(prefixes.len(), 4, "{got}");
            }
        }
    }

    #[test]
    fn journald_lines_carry_the_priority_and_no_timestamp() {
        assert_eq!(
            format_line(Level::Warn, "hello (c1)", true),
            "<4>hello (c1)\n"
        );
        assert_eq!(format_line(Level::Error, "x", true), "<3>x\n");
        let l = format_line(Level::Info, "hello", false);
        assert!(l.ends_with(" INFO  hello\n"), "{l}");
        // hh:mm:ss.mmm
        let b = l.as_bytes();
        assert_eq!((b[2], b[5], b[8], b[12]), (b':', b':', b'.', b' '), "{l}");
        assert!(
            l[..12].bytes().filter(u8::is_ascii_digit).count() == 9,
            "{l}"
        );
        assert!(format_line(Level::Warn, "w", false).ends_with(" WARN  w\n"));
    }
}
