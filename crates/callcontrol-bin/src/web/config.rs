//! The `[Web]` section of `config.ini`.
//!
//! The HTTP interface is **off unless configured**: it starts only when
//! `[Web] port` is set. When it is on, it binds to the loopback address
//! unless `address` says otherwise, and a non-loopback address is refused
//! without a `token`, because the API can end calls and add credit.
//!
//! ```ini
//! [Web]
//! ; off unless a port is given
//! port = 9080
//! ; 127.0.0.1 by default; anything else needs a token
//! address = 127.0.0.1
//! ; clients send "Authorization: Bearer <token>"
//! token = change-me-to-a-long-random-string
//! ```

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

/// The shortest bearer token accepted.
pub const MIN_TOKEN_LEN: usize = 16;

/// Settings of the HTTP interface (JSON API, `/metrics`, the sessions page).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, rename_all = "snake_case")]
pub struct WebConfig {
    /// The address to listen on. Default `127.0.0.1`; `localhost` means
    /// `127.0.0.1`. A non-loopback address requires a `token`.
    pub address: String,
    /// The TCP port. `None` (the default, also the INI value `None` or an
    /// empty value) leaves the HTTP interface off.
    #[serde(deserialize_with = "de_opt_port")]
    pub port: Option<u16>,
    /// The bearer token every API and `/metrics` request must carry
    /// (`Authorization: Bearer <token>`), at least 16 characters. `None`
    /// (the default) means no authentication, allowed on loopback only.
    #[serde(deserialize_with = "de_opt_string")]
    pub token: Option<String>,
}

impl Default for WebConfig {
    fn default() -> Self {
        WebConfig {
            address: "127.0.0.1".into(),
            port: None,
            token: None,
        }
    }
}

/// A `[Web]` setting that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("[Web] {key}: {message}")]
pub struct WebConfigError {
    /// The key at fault.
    pub key: &'static str,
    /// What is wrong and what to do.
    pub message: String,
}

impl WebConfig {
    /// Whether the HTTP interface is configured to run.
    pub fn enabled(&self) -> bool {
        self.port.is_some()
    }

    /// The IP address to bind to.
    pub fn ip(&self) -> Result<IpAddr, WebConfigError> {
        let a = self.address.trim();
        if a.is_empty() || a.eq_ignore_ascii_case("localhost") {
            return Ok(IpAddr::V4(Ipv4Addr::LOCALHOST));
        }
        a.trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .map_err(|_| WebConfigError {
                key: "address",
                message: format!("{a:?} is not an IP address (use e.g. 127.0.0.1 or ::1)"),
            })
    }

    /// The socket address to bind to, `None` when the interface is off.
    pub fn bind_addr(&self) -> Result<Option<SocketAddr>, WebConfigError> {
        match self.port {
            None => Ok(None),
            Some(p) => Ok(Some(SocketAddr::new(self.ip()?, p))),
        }
    }

    /// The token, when one is set (empty and `None` values count as unset).
    pub fn token(&self) -> Option<&str> {
        self.token
            .as_deref()
            .map(str::trim)
            .filter(|t| !t.is_empty())
    }

    /// Checks the settings; the error names the key and what to do. A
    /// non-loopback bind without a token is refused: anyone who can reach
    /// the port could end calls and add credit.
    pub fn validate(&self) -> Result<(), WebConfigError> {
        let Some(port) = self.port else { return Ok(()) };
        if port == 0 {
            return Err(WebConfigError {
                key: "port",
                message: "0 is not a usable port (leave it unset to turn the web interface off)"
                    .into(),
            });
        }
        let ip = self.ip()?;
        if let Some(t) = self.token() {
            if t.chars().count() < MIN_TOKEN_LEN {
                return Err(WebConfigError {
                    key: "token",
                    message: format!("too short: use at least {MIN_TOKEN_LEN} random characters"),
                });
            }
            if t.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(WebConfigError {
                    key: "token",
                    message: "must not contain whitespace or control characters".into(),
                });
            }
        } else if !ip.is_loopback() {
            return Err(WebConfigError {
                key: "token",
                message: format!(
                    "the web interface would listen on {ip}, which is not a loopback address, \
                     without credentials: set [Web] token (at least {MIN_TOKEN_LEN} random \
                     characters) or bind to 127.0.0.1"
                ),
            });
        }
        Ok(())
    }
}

/// Accepts a port as a number or a string; `None`, `none` and empty mean unset.
fn de_opt_port<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u16>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Option<u16>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a TCP port number or None")
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(V)
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
            u16::try_from(v)
                .map(Some)
                .map_err(|_| E::custom(format!("port {v} is out of range")))
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
            u16::try_from(v)
                .map(Some)
                .map_err(|_| E::custom(format!("port {v} is out of range")))
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            let v = v.trim();
            if v.is_empty() || v.eq_ignore_ascii_case("none") {
                return Ok(None);
            }
            v.parse::<u16>()
                .map(Some)
                .map_err(|_| E::custom(format!("{v:?} is not a TCP port")))
        }
    }
    d.deserialize_any(V)
}

/// Accepts a string; `None` and empty mean unset.
fn de_opt_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let v: Option<String> = Option::deserialize(d)?;
    Ok(v.map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty() && s != "None"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(address: &str, port: Option<u16>, token: Option<&str>) -> WebConfig {
        WebConfig {
            address: address.into(),
            port,
            token: token.map(str::to_string),
        }
    }

    #[test]
    fn off_by_default() {
        let c = WebConfig::default();
        assert!(!c.enabled());
        assert_eq!(c.bind_addr().unwrap(), None);
        c.validate().unwrap();
    }

    #[test]
    fn loopback_without_token_is_fine() {
        cfg("127.0.0.1", Some(9080), None).validate().unwrap();
        cfg("::1", Some(9080), None).validate().unwrap();
        cfg("localhost", Some(9080), None).validate().unwrap();
    }

    #[test]
    fn public_bind_without_token_is_refused() {
        let e = cfg("0.0.0.0", Some(9080), None).validate().unwrap_err();
        assert_eq!(e.key, "token");
        assert!(e.to_string().contains("[Web] token"), "{e}");
        assert!(e.to_string().contains("not a loopback address"), "{e}");
        cfg("0.0.0.0", Some(9080), Some("0123456789abcdef0123"))
            .validate()
            .unwrap();
    }

    #[test]
    fn bad_values_are_named() {
        assert_eq!(
            cfg("nonsense", Some(1), None).validate().unwrap_err().key,
            "address"
        );
        assert_eq!(
            cfg("127.0.0.1", Some(0), None).validate().unwrap_err().key,
            "port"
        );
        assert_eq!(
            cfg("127.0.0.1", Some(1), Some("short"))
                .validate()
                .unwrap_err()
                .key,
            "token"
        );
        let spaced = cfg("127.0.0.1", Some(1), Some("0123456789 abcdef0123"));
        assert_eq!(spaced.validate().unwrap_err().key, "token");
    }

    #[test]
    fn deserializes_ini_style_strings() {
        let c: WebConfig = serde_json::from_str(r#"{"port": "None", "token": "None"}"#).unwrap();
        assert_eq!(c, WebConfig::default());
        let c: WebConfig =
            serde_json::from_str(r#"{"address": "::1", "port": "9080", "token": ""}"#).unwrap();
        assert_eq!(c.port, Some(9080));
        assert_eq!(c.token, None);
        let c: WebConfig = serde_json::from_str(r#"{"port": 9081}"#).unwrap();
        assert_eq!(
            c.bind_addr().unwrap(),
            Some("127.0.0.1:9081".parse().unwrap())
        );
        assert!(serde_json::from_str::<WebConfig>(r#"{"port": "http"}"#).is_err());
    }
}
