//! Where the `log` facade's lines go: syslog (ident `call-control`, facility
//! daemon) when the daemon forks, stderr in the foreground, and stderr with
//! `<N>` priority prefixes and no timestamps under systemd (journald reads
//! the prefix as the line's priority and adds its own timestamp).

use std::io::Write;
use std::sync::Mutex;

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
pub fn init(target: LogTarget, debug: bool) {
    let level = if debug {
        LevelFilter::Debug
    } else {
        LevelFilter::Info
    };
    let logger: Box<dyn Log> = match target {
        LogTarget::Syslog => match syslog_logger() {
            Ok(l) => l,
            Err(e) => {
                eprintln!("{IDENT}: cannot reach syslog ({e}), logging to stderr");
                Box::new(StderrLogger {
                    journald: false,
                    out: Mutex::new(()),
                })
            }
        },
        LogTarget::Stderr => Box::new(StderrLogger {
            journald: false,
            out: Mutex::new(()),
        }),
        LogTarget::Journald => Box::new(StderrLogger {
            journald: true,
            out: Mutex::new(()),
        }),
    };
    // Only the first call installs a logger; later calls (tests) keep it.
    if log::set_boxed_logger(logger).is_ok() {
        log::set_max_level(level);
    }
}

fn syslog_logger() -> Result<Box<dyn Log>, syslog::Error> {
    let formatter = syslog::Formatter3164 {
        facility: syslog::Facility::LOG_DAEMON,
        hostname: None,
        process: IDENT.into(),
        pid: std::process::id(),
    };
    let logger = syslog::unix(formatter)?;
    Ok(Box::new(SyslogLogger {
        inner: Mutex::new(logger),
    }))
}

/// Keeps only our own crates' debug lines (not hyper's, axum's, …).
fn wanted(metadata: &Metadata<'_>) -> bool {
    metadata.level() <= Level::Info || metadata.target().starts_with("callcontrol")
}

struct SyslogLogger {
    inner: Mutex<syslog::Logger<syslog::LoggerBackend, syslog::Formatter3164>>,
}

impl Log for SyslogLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= log::max_level() && wanted(metadata)
    }
    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let msg = record.args().to_string();
        let mut l = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let _ = match record.level() {
            Level::Error => l.err(msg),
            Level::Warn => l.warning(msg),
            Level::Info => l.info(msg),
            Level::Debug | Level::Trace => l.debug(msg),
        };
    }
    fn flush(&self) {}
}

struct StderrLogger {
    journald: bool,
    out: Mutex<()>,
}

impl Log for StderrLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= log::max_level() && wanted(metadata)
    }
    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let line = format_line(record.level(), &record.args().to_string(), self.journald);
        // One write per line so lines from threads never interleave.
        let _guard = self.out.lock().unwrap_or_else(|p| p.into_inner());
        let _ = std::io::stderr().write_all(line.as_bytes());
    }
    fn flush(&self) {
        let _ = std::io::stderr().flush();
    }
}

/// Formats one line for stderr.
pub fn format_line(level: Level, msg: &str, journald: bool) -> String {
    if journald {
        // sd-daemon(3) priority prefixes.
        let prio = match level {
            Level::Error => 3,
            Level::Warn => 4,
            Level::Info => 6,
            Level::Debug | Level::Trace => 7,
        };
        format!("<{prio}>{msg}\n")
    } else {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let (secs, ms) = (now.as_secs(), now.subsec_millis());
        let (h, m, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
        format!("{h:02}:{m:02}:{s:02}.{ms:03} {:<5} {msg}\n", level.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journald_lines_carry_the_priority_and_no_timestamp() {
        assert_eq!(
            format_line(Level::Warn, "hello (c1)", true),
            "<4>hello (c1)\n"
        );
        assert_eq!(format_line(Level::Error, "x", true), "<3>x\n");
        let l = format_line(Level::Info, "hello", false);
        assert!(l.ends_with("INFO  hello\n"), "{l}");
    }
}
