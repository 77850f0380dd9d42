//! `config.ini`: the original daemon's file, read unchanged, plus the new
//! settings in the same file. See `config.ini.sample` for every option.
//!
//! Values: `None` (any case) means unset; `%%` is a literal `%`; keys are
//! case-insensitive. Unknown keys and sections are warned about, not refused,
//! so a file written for the original (or a newer version) still loads. A
//! bad value is refused with a message naming the section, key and value.

use std::path::{Path, PathBuf};
use std::time::Duration;

use callcontrol_core::config::{EngineConfig, RatingFailurePolicy};
use callcontrol_core::journal::FsyncPolicy;

use callcontrol_opensips::kamailio::KamailioConfig;
use callcontrol_opensips::mi::{DialogIdFormat, MiConfig, MiTransport};
use callcontrol_rating::cdrtool::CdrtoolConfig;

use crate::ini;
use crate::web::WebConfig;

/// The default runtime directory.
pub const DEFAULT_RUNTIME_DIR: &str = "/run/callcontrol";
/// The system configuration directory.
pub const SYSTEM_CONFIG_DIR: &str = "/etc/callcontrol";

/// A configuration problem, naming where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file (or `command line`).
    pub origin: String,
    /// `[Section]`, when known.
    pub section: Option<String>,
    /// The key, when known.
    pub key: Option<String>,
    /// The value as written, when known.
    pub value: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: ", self.origin)?;
        match (&self.section, &self.key, &self.value) {
            (Some(s), Some(k), Some(v)) => write!(f, "[{s}] {k} = {v:?}: ")?,
            (Some(s), Some(k), None) => write!(f, "[{s}] {k}: ")?,
            (Some(s), None, _) => write!(f, "[{s}]: ")?,
            _ => {}
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Which proxy the daemon works with (its signalling backend).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyKind {
    /// OpenSIPS: MI `dlg_end_dlg`.
    Opensips,
    /// Kamailio: RPC `dlg.end_dlg`.
    Kamailio,
    /// None: dialogs are not ended by the daemon (log only).
    None,
}

/// `[CallControl]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallControlSection {
    /// `socket`: where OpenSIPS connects; default `<runtime dir>/socket`.
    pub socket: Option<PathBuf>,
    /// `group`: the socket's group (mode 0660); mode 0666 if it does not exist.
    pub group: String,
    /// The engine's policy: `limit`, `prepaid_limit`, `timeout` (stale),
    /// `setup_timeout`, `rating_failure` + `rating_failure_limit`,
    /// `[CDRTool] timeout`.
    pub engine: EngineConfig,
    /// `proxy`: opensips | kamailio | none.
    pub proxy: ProxyKind,
    /// `journal_fsync`: always | interval | never.
    pub journal_fsync: FsyncPolicy,
    /// `rating_failure_limit`: the limit of a prepaid call allowed by
    /// `rating_failure = allow` (default 600 s).
    pub rating_failure_limit: u64,
    /// `timeout_detection`: only `dialog` is supported (the proxy's dialog
    /// module sends `stop`); `radius` is accepted with a warning.
    pub timeout_detection: String,
}

/// `[CDRTool]`: the rating engine client's settings; no addresses means
/// no rating engine.
pub type CdrtoolSection = CdrtoolConfig;

/// The whole file.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Where it was read from (`None` = embedded defaults).
    pub path: Option<PathBuf>,
    /// `[CallControl]`.
    pub call_control: CallControlSection,
    /// `[CDRTool]`.
    pub cdrtool: CdrtoolSection,
    /// `[OpenSIPS]`: the MI client's settings.
    pub opensips: MiConfig,
    /// `[Kamailio]`: the RPC client's settings.
    pub kamailio: KamailioConfig,
    /// `[Web]` (`address`, `port`, `token`): see [`WebConfig`].
    pub web: WebConfig,
    /// Things worth a warning at start (unknown keys, unsupported options).
    pub warnings: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            path: None,
            call_control: CallControlSection {
                socket: None,
                group: "opensips".into(),
                engine: EngineConfig::default(),
                proxy: ProxyKind::Opensips,
                journal_fsync: FsyncPolicy::default(),
                rating_failure_limit: 600,
                timeout_detection: "dialog".into(),
            },
            cdrtool: CdrtoolConfig::default(),
            opensips: MiConfig::default(),
            kamailio: KamailioConfig::default(),
            web: WebConfig::default(),
            warnings: Vec::new(),
        }
    }
}

/// Where to find `config.ini`: `--config FILE` if given (it must exist),
/// else `<config dir>/config.ini`, else `/etc/callcontrol/config.ini`, else
/// none (the embedded defaults).
pub fn locate(
    config_file: Option<&Path>,
    config_dir: Option<&Path>,
) -> Result<Option<PathBuf>, ConfigError> {
    if let Some(f) = config_file {
        if !f.is_file() {
            return Err(ConfigError {
                origin: f.display().to_string(),
                section: None,
                key: None,
                value: None,
                message: "no such file".into(),
            });
        }
        return Ok(Some(f.to_path_buf()));
    }
    let mut candidates = Vec::new();
    if let Some(d) = config_dir {
        candidates.push(d.join("config.ini"));
    }
    candidates.push(Path::new(SYSTEM_CONFIG_DIR).join("config.ini"));
    Ok(candidates.into_iter().find(|p| p.is_file()))
}

impl Config {
    /// Reads a file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            origin: path.display().to_string(),
            section: None,
            key: None,
            value: None,
            message: e.to_string(),
        })?;
        let mut c = Config::parse(&text, &path.display().to_string())?;
        c.path = Some(path.to_path_buf());
        Ok(c)
    }

    /// Parses the text of a file; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let sections = ini::parse(text).map_err(|e| ConfigError {
            origin: format!("{origin}, line {}", e.line),
            section: None,
            key: None,
            value: None,
            message: e.message,
        })?;
        let mut c = Config::default();
        // Whether `[CallControl] limit` was set, for the prepaid_limit default.
        for section in &sections {
            for e in &section.entries {
                let bad = |message: String| ConfigError {
                    origin: format!("{origin}, line {}", e.line),
                    section: Some(section.name.clone()),
                    key: Some(e.key.clone()),
                    value: Some(e.value.clone()),
                    message,
                };
                c.set(&section.name, &e.key, &e.value).map_err(bad)?;
            }
        }
        c.validate()
            .map_err(|(section, key, message)| ConfigError {
                origin: origin.to_string(),
                section: Some(section.into()),
                key: Some(key.into()),
                value: None,
                message,
            })?;
        Ok(c)
    }

    /// Sets one option from its text (the file, or a command-line override).
    pub fn set(&mut self, section: &str, key: &str, value: &str) -> Result<(), String> {
        let v = value.trim();
        let none = v.eq_ignore_ascii_case("none");
        match (
            section.to_ascii_lowercase().as_str(),
            key.to_ascii_lowercase().as_str(),
        ) {
            ("callcontrol", "socket") => {
                self.call_control.socket = (!none).then(|| PathBuf::from(v))
            }
            ("callcontrol", "group") => self.call_control.group = v.to_string(),
            ("callcontrol", "limit") => self.call_control.engine.limit = parse_limit(v)?,
            ("callcontrol", "prepaid_limit") => {
                self.call_control.engine.prepaid_limit = parse_limit(v)?
            }
            ("callcontrol", "timeout") => {
                self.call_control.engine.stale_timeout = Duration::from_secs(parse_secs(v)?)
            }
            ("callcontrol", "setup_timeout") | ("callcontrol", "setuptime") => {
                self.call_control.engine.setup_timeout = Duration::from_secs(parse_secs(v)?)
            }
            ("callcontrol", "timeout_detection") => {
                let d = v.to_ascii_lowercase();
                match d.as_str() {
                    "dialog" => {}
                    "radius" => self.warnings.push(
                        "[CallControl] timeout_detection = radius is not supported: calls that time \
                         out are detected by the proxy's dialog module (stop), as with `dialog`"
                            .into(),
                    ),
                    _ => return Err("expected dialog or radius".into()),
                }
                self.call_control.timeout_detection = d;
            }
            ("callcontrol", "rating_failure") => {
                let limit = self.call_control.rating_failure_limit;
                self.call_control.engine.rating_failure = match v.to_ascii_lowercase().as_str() {
                    "reject" => RatingFailurePolicy::Reject,
                    "allow" => RatingFailurePolicy::Allow(limit),
                    _ => return Err("expected reject or allow".into()),
                };
            }
            ("callcontrol", "rating_failure_limit") => {
                let secs = parse_secs(v)?;
                if let RatingFailurePolicy::Allow(l) = &mut self.call_control.engine.rating_failure
                {
                    *l = secs;
                }
                self.call_control.rating_failure_limit = secs;
            }
            ("callcontrol", "proxy") => {
                self.call_control.proxy = match v.to_ascii_lowercase().as_str() {
                    "opensips" => ProxyKind::Opensips,
                    "kamailio" => ProxyKind::Kamailio,
                    "none" => ProxyKind::None,
                    _ => return Err("expected opensips, kamailio or none".into()),
                }
            }
            ("callcontrol", "journal_fsync") => self.call_control.journal_fsync = v.parse()?,
            ("callcontrol", "checkinterval") => self
                .warnings
                .push("[CallControl] checkInterval is ignored: timers are exact".into()),
            ("cdrtool", "address") => {
                if v.contains('<') {
                    return Err(
                        "replace the placeholder with the rating engine's host[:port]".into(),
                    );
                }
                self.cdrtool.address = if none || v.is_empty() {
                    Vec::new()
                } else {
                    CdrtoolConfig::with_address(&v.replace(',', " "))
                        .map_err(|e| e.to_string())?
                        .address
                };
            }
            ("cdrtool", "pool_size") => {
                self.cdrtool.pool_size = v
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or("expected a positive number")?
            }
            ("cdrtool", "reconnect_min") => self.cdrtool.reconnect_min = parse_millis(v)?,
            ("cdrtool", "reconnect_max") => self.cdrtool.reconnect_max = parse_millis(v)?,
            ("cdrtool", "timeout") => {
                let ms = parse_millis(v)?;
                self.cdrtool.timeout = ms;
                self.call_control.engine.rating_timeout = ms;
            }
            ("opensips", "socket_path") => self.opensips.socket_path = PathBuf::from(v),
            ("opensips", "max_connections") => {
                self.opensips.max_connections = v
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or("expected a positive number")?
            }
            ("opensips", "transport") | ("opensips", "mi_transport") => {
                self.opensips.transport = match v.to_ascii_lowercase().as_str() {
                    "datagram" | "mi_datagram" => MiTransport::Datagram,
                    "http" | "mi_http" => MiTransport::Http,
                    _ => return Err("expected datagram or http".into()),
                }
            }
            ("opensips", "url") | ("opensips", "mi_url") => self.opensips.url = v.to_string(),
            ("opensips", "dialog_id_format") => {
                self.opensips.dialog_id_format = match v.to_ascii_lowercase().as_str() {
                    "auto" => DialogIdFormat::Auto,
                    "did" => DialogIdFormat::Did,
                    "numeric" => DialogIdFormat::Numeric,
                    "callid" => DialogIdFormat::Callid,
                    _ => return Err("expected auto, did, numeric or callid".into()),
                }
            }
            ("opensips", "timeout") | ("opensips", "mi_timeout") => {
                self.opensips.timeout = v
                    .parse::<f64>()
                    .ok()
                    .filter(|t| *t > 0.0 && *t <= 60.0)
                    .ok_or("expected seconds, more than 0 and at most 60")?
            }
            ("opensips", "retries") | ("opensips", "mi_retries") => {
                self.opensips.retries = v
                    .parse()
                    .ok()
                    .filter(|n| *n <= 10)
                    .ok_or("expected 0 to 10")?
            }
            ("opensips", "reply_dir") | ("opensips", "mi_reply_dir") => {
                self.opensips.reply_dir = (!none && !v.is_empty()).then(|| PathBuf::from(v))
            }
            ("kamailio", "socket_path") => self.kamailio.socket_path = PathBuf::from(v),
            ("kamailio", "url") => {
                self.kamailio.url = (!none && !v.is_empty()).then(|| v.to_string())
            }
            ("kamailio", "reply_dir") => {
                self.kamailio.reply_dir = (!none && !v.is_empty()).then(|| PathBuf::from(v))
            }
            ("kamailio", "timeout") => self.kamailio.timeout = parse_millis(v)?,
            ("kamailio", "retries") => {
                self.kamailio.retries = v.parse().map_err(|_| "expected a number of retries")?
            }
            ("kamailio", "retry_delay") => self.kamailio.retry_delay = parse_millis(v)?,
            // Kamailio's command name; empty or None: close no connection at accept.
            ("kamailio", "process_name") => {
                self.kamailio.process_name = if none { String::new() } else { v.to_string() }
            }
            ("web", "address") => self.web.address = v.to_string(),
            ("web", "port") => {
                self.web.port = if none || v.is_empty() {
                    None
                } else {
                    Some(
                        v.parse()
                            .map_err(|_| "expected a TCP port number, or None")?,
                    )
                }
            }
            ("web", "token") => self.web.token = (!none && !v.is_empty()).then(|| v.to_string()),
            ("radiusdatabase", _) => {
                let w = "[RadiusDatabase] is not supported and is ignored (timed-out calls are \
                         detected by the proxy's dialog module)";
                if !self.warnings.iter().any(|x| x == w) {
                    self.warnings.push(w.into());
                }
            }
            (s, k) => {
                let known = ["callcontrol", "cdrtool", "opensips", "kamailio", "web"];
                self.warnings.push(if known.contains(&s) {
                    format!("[{section}] {k}: unknown option, ignored")
                } else {
                    format!("[{section}]: unknown section, ignored ({k})")
                });
            }
        }
        Ok(())
    }

    fn validate(&self) -> Result<(), (&'static str, &'static str, String)> {
        if self.call_control.engine.setup_timeout.is_zero() {
            return Err((
                "CallControl",
                "setup_timeout",
                "must be at least 1 second".into(),
            ));
        }
        if self.call_control.engine.stale_timeout.is_zero() {
            return Err(("CallControl", "timeout", "must be at least 1 second".into()));
        }
        if let Err(e) = self.opensips.validate() {
            return Err(("OpenSIPS", "", e));
        }
        if let Err(e) = self.kamailio.validate() {
            return Err(("Kamailio", "", e));
        }
        if let Err(e) = self.web.validate() {
            return Err(("Web", e.key, e.message));
        }
        if self.cdrtool.timeout.is_zero() {
            return Err((
                "CDRTool",
                "timeout",
                "must be at least 1 millisecond".into(),
            ));
        }
        Ok(())
    }

    /// The socket OpenSIPS connects to.
    pub fn socket(&self, runtime_dir: &Path) -> PathBuf {
        self.call_control
            .socket
            .clone()
            .unwrap_or_else(|| runtime_dir.join("socket"))
    }

    /// The settings a `SIGHUP` may change, as `key = value` lines (to log
    /// what a reload changed).
    pub fn live_settings(&self) -> Vec<(String, String)> {
        let e = &self.call_control.engine;
        let opt = |v: Option<u64>| v.map_or("None".to_string(), |v| v.to_string());
        vec![
            ("limit".into(), opt(e.limit)),
            ("prepaid_limit".into(), opt(e.prepaid_limit)),
            ("timeout".into(), e.stale_timeout.as_secs().to_string()),
            (
                "setup_timeout".into(),
                e.setup_timeout.as_secs().to_string(),
            ),
            (
                "rating_failure".into(),
                match e.rating_failure {
                    RatingFailurePolicy::Reject => "reject".into(),
                    RatingFailurePolicy::Allow(l) => format!("allow ({l} s)"),
                },
            ),
            (
                "cdrtool timeout".into(),
                format!("{} ms", e.rating_timeout.as_millis()),
            ),
        ]
    }
}

fn parse_limit(v: &str) -> Result<Option<u64>, String> {
    if v.eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    v.parse::<u64>()
        .map(Some)
        .map_err(|_| "expected a number of seconds (0 or more) or None".into())
}

fn parse_secs(v: &str) -> Result<u64, String> {
    v.parse::<u64>()
        .map_err(|_| "expected a number of seconds".into())
}

fn parse_millis(v: &str) -> Result<Duration, String> {
    v.trim_end_matches("ms")
        .trim()
        .parse::<u64>()
        .map(Duration::from_millis)
        .map_err(|_| "expected a number of milliseconds".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORIGINAL: &str = "\
;
; Configuration file for Call Control
;

[CallControl]
;socket            = /var/run/callcontrol/socket
socket = /run/callcontrol/socket
group  = opensips
limit  = None
timeout_detection = dialog

[CDRTool]
;address = cdrtool.<localdomain>
address = cdrtool.example.com
timeout = 500

[RadiusDatabase]
user = dbuser
password = dbpass
host = dbhost
database = radius
table = radacct%%Y%%m

[OpenSIPS]
socket_path = /var/run/opensips/socket
max_connections = 10
";

    #[test]
    fn loads_the_original_file_unchanged() {
        let c = Config::parse(ORIGINAL, "config.ini").unwrap();
        assert_eq!(
            c.call_control.socket.as_deref(),
            Some(Path::new("/run/callcontrol/socket"))
        );
        assert_eq!(c.call_control.engine.limit, None);
        assert_eq!(c.cdrtool.address.len(), 1);
        assert_eq!(c.cdrtool.address[0].to_string(), "cdrtool.example.com:9024");
        assert_eq!(c.cdrtool.timeout, Duration::from_millis(500));
        assert_eq!(
            c.opensips.socket_path,
            Path::new("/var/run/opensips/socket")
        );
        assert_eq!(c.opensips.max_connections, 10);
        assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
        assert!(c.warnings[0].contains("RadiusDatabase"));
    }

    #[test]
    fn a_bad_value_names_section_key_and_value() {
        let e = Config::parse("[CallControl]\nlimit = ten\n", "x.ini").unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("[CallControl] limit = \"ten\""), "{msg}");
        assert!(msg.contains("line 2"), "{msg}");
        let e = Config::parse("[OpenSIPS]\ndialog_id_format = hex\n", "x.ini").unwrap_err();
        assert!(e
            .to_string()
            .contains("[OpenSIPS] dialog_id_format = \"hex\""));
    }

    #[test]
    fn new_settings() {
        let c = Config::parse(
            "[CallControl]\nlimit = 3600\nprepaid_limit = 7200\nrating_failure = allow\nrating_failure_limit = 120\nproxy = kamailio\njournal_fsync = always\nsetup_timeout = 30\n[Web]\nport = 8080\n[OpenSIPS]\ntransport = http\nurl = http://127.0.0.1:8888/mi\ndialog_id_format = did\n",
            "x.ini",
        )
        .unwrap();
        let e = &c.call_control.engine;
        assert_eq!(e.limit, Some(3600));
        assert_eq!(e.prepaid_limit, Some(7200));
        assert_eq!(e.rating_failure, RatingFailurePolicy::Allow(120));
        assert_eq!(e.setup_timeout, Duration::from_secs(30));
        assert_eq!(c.call_control.proxy, ProxyKind::Kamailio);
        assert_eq!(c.call_control.journal_fsync, FsyncPolicy::Always);
        assert_eq!(
            c.web.bind_addr().unwrap(),
            Some("127.0.0.1:8080".parse().unwrap())
        );
        assert_eq!(c.opensips.transport, MiTransport::Http);
        assert_eq!(c.opensips.dialog_id_format, DialogIdFormat::Did);
        assert!(c.warnings.is_empty());
    }

    #[test]
    fn the_shipped_sample_loads_with_the_defaults() {
        let text = include_str!("../../../config.ini.sample");
        let c = Config::parse(text, "config.ini.sample").unwrap();
        let d = Config {
            warnings: c.warnings.clone(),
            ..Default::default()
        };
        assert_eq!(c, d, "the sample must document the defaults");
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    }
}
