//! `[CDRTool]`: where the rating engines are and how to talk to them.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::error::ConfigError;

/// The rating engine's default TCP port.
pub const DEFAULT_PORT: u16 = 9024;

/// One rating engine, `host[:port]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EngineAddress {
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    /// TCP port (9024 when not given).
    pub port: u16,
}

impl EngineAddress {
    /// `host:port` for connecting (IPv6 in brackets).
    pub fn connect_string(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for EngineAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl FromStr for EngineAddress {
    type Err = String;
    /// `host`, `host:port`, `[v6]`, `[v6]:port` or a bare IPv6 address.
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let bad = |why: &str| format!("invalid rating engine address {s:?}: {why}");
        let port = |p: &str| {
            p.parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| bad("bad port"))
        };
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (h, after) = rest.split_once(']').ok_or_else(|| bad("missing ]"))?;
            match after.strip_prefix(':') {
                Some(p) => (h, port(p)?),
                None if after.is_empty() => (h, DEFAULT_PORT),
                None => return Err(bad("junk after ]")),
            }
        } else if s.matches(':').count() > 1 {
            (s, DEFAULT_PORT)
        } else if let Some((h, p)) = s.split_once(':') {
            (h, port(p)?)
        } else {
            (s, DEFAULT_PORT)
        };
        if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c == '/') {
            return Err(bad("bad host"));
        }
        Ok(EngineAddress {
            host: host.to_string(),
            port,
        })
    }
}

/// The CDRTool rating engine client's settings: `config.ini` `[CDRTool]`.
/// Values may be given as INI strings (`timeout = 500`) or typed.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct CdrtoolConfig {
    /// `address`: the rating engines, space-separated `host[:port]` (port 9024
    /// by default). Each billing party is pinned to one of them while it has
    /// sessions. Empty (or `None`) means no rating engine is configured.
    #[serde(deserialize_with = "de_addresses")]
    pub address: Vec<EngineAddress>,
    /// `timeout`: milliseconds to wait for one reply (default 500). On timeout
    /// the connection is closed and reopened, and the engine is probed before
    /// it is used again. Keep it below the engine's rating timeout.
    #[serde(deserialize_with = "de_millis")]
    pub timeout: Duration,
    /// `pool_size`: connections per rating engine (default 4). Each carries
    /// one request at a time; more connections rate more sessions at once.
    #[serde(deserialize_with = "de_usize")]
    pub pool_size: usize,
    /// `reconnect_min`: milliseconds before the first reconnection attempt
    /// after an engine went down (default 100); doubles up to `reconnect_max`.
    #[serde(deserialize_with = "de_millis")]
    pub reconnect_min: Duration,
    /// `reconnect_max`: longest delay between reconnection attempts, in
    /// milliseconds (default 5000).
    #[serde(deserialize_with = "de_millis")]
    pub reconnect_max: Duration,
}

impl Default for CdrtoolConfig {
    fn default() -> Self {
        CdrtoolConfig {
            address: Vec::new(),
            timeout: Duration::from_millis(500),
            pool_size: 4,
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(5),
        }
    }
}

impl CdrtoolConfig {
    /// Settings for engines at `addresses` (space-separated `host[:port]`),
    /// defaults otherwise.
    pub fn with_address(addresses: &str) -> Result<Self, ConfigError> {
        Ok(CdrtoolConfig {
            address: parse_addresses(addresses).map_err(bad("address"))?,
            ..Default::default()
        })
    }

    /// Checks the settings; messages name the section and key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.address.is_empty() {
            return Err(ConfigError::new(
                "address",
                "no rating engine address given",
            ));
        }
        if self.timeout.is_zero() || self.timeout > Duration::from_secs(60) {
            return Err(ConfigError::new(
                "timeout",
                "must be between 1 and 60000 milliseconds",
            ));
        }
        if self.pool_size == 0 || self.pool_size > 256 {
            return Err(ConfigError::new("pool_size", "must be between 1 and 256"));
        }
        if self.reconnect_min.is_zero() {
            return Err(ConfigError::new(
                "reconnect_min",
                "must be at least 1 millisecond",
            ));
        }
        if self.reconnect_max < self.reconnect_min {
            return Err(ConfigError::new(
                "reconnect_max",
                "must not be below reconnect_min",
            ));
        }
        Ok(())
    }
}

fn bad(key: &'static str) -> impl Fn(String) -> ConfigError {
    move |m| ConfigError::new(key, m)
}

/// Parses a space-separated address list; `None` or empty means none.
pub fn parse_addresses(s: &str) -> Result<Vec<EngineAddress>, String> {
    let s = s.trim();
    if s.is_empty() || s.eq_ignore_ascii_case("none") {
        return Ok(Vec::new());
    }
    s.split_whitespace().map(str::parse).collect()
}

#[derive(Deserialize)]
#[serde(untagged)]
enum StrOrList {
    Str(String),
    List(Vec<String>),
}

fn de_addresses<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<EngineAddress>, D::Error> {
    let v = match StrOrList::deserialize(d)? {
        StrOrList::Str(s) => parse_addresses(&s),
        StrOrList::List(l) => parse_addresses(&l.join(" ")),
    };
    v.map_err(|e| serde::de::Error::custom(format!("[CDRTool] address: {e}")))
}

#[derive(Deserialize)]
#[serde(untagged)]
enum StrOrNum {
    Num(u64),
    Str(String),
}

fn number<'de, D: Deserializer<'de>>(d: D, what: &str) -> Result<u64, D::Error> {
    match StrOrNum::deserialize(d)? {
        StrOrNum::Num(n) => Ok(n),
        StrOrNum::Str(s) => s.trim().parse().map_err(|_| {
            serde::de::Error::custom(format!("[CDRTool] {what}: {s:?} is not a whole number"))
        }),
    }
}

fn de_millis<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    number(d, "timeout/reconnect (milliseconds)").map(Duration::from_millis)
}

fn de_usize<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    number(d, "pool_size").map(|n| n as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_like_the_original() {
        let a = parse_addresses("127.0.0.1 cdrtool.example.com:9025 [::1]:7 ::1").unwrap();
        assert_eq!(
            a[0],
            EngineAddress {
                host: "127.0.0.1".into(),
                port: 9024
            }
        );
        assert_eq!(
            a[1],
            EngineAddress {
                host: "cdrtool.example.com".into(),
                port: 9025
            }
        );
        assert_eq!(
            a[2],
            EngineAddress {
                host: "::1".into(),
                port: 7
            }
        );
        assert_eq!(
            a[3],
            EngineAddress {
                host: "::1".into(),
                port: 9024
            }
        );
        assert_eq!(a[2].to_string(), "[::1]:7");
        assert_eq!(parse_addresses("None").unwrap(), vec![]);
        assert!(parse_addresses("host:0").is_err());
        assert!(parse_addresses("host:x").is_err());
    }

    #[test]
    fn deserialises_ini_strings_and_validates() {
        let c: CdrtoolConfig = serde_json::from_str(
            r#"{"address": "10.0.0.1 10.0.0.2:9000", "timeout": "250", "pool_size": "2"}"#,
        )
        .unwrap();
        assert_eq!(c.address.len(), 2);
        assert_eq!(c.timeout, Duration::from_millis(250));
        assert_eq!(c.pool_size, 2);
        assert_eq!(c.reconnect_max, Duration::from_secs(5));
        c.validate().unwrap();
        let c: CdrtoolConfig = serde_json::from_str(r#"{"timeout": 500}"#).unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("[CDRTool] address"), "{e}");
        let e = serde_json::from_str::<CdrtoolConfig>(r#"{"timeout": "fast"}"#).unwrap_err();
        assert!(e.to_string().contains("[CDRTool]"), "{e}");
        let c = CdrtoolConfig {
            pool_size: 0,
            ..CdrtoolConfig::with_address("x").unwrap()
        };
        assert!(c.validate().unwrap_err().to_string().contains("pool_size"));
    }
}
