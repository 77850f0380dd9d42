//! Prepaid account names and credit amounts, checked before they reach the
//! rating engine. Amounts stay decimal strings end to end: a float would
//! round money, and CDRTool takes the value as text anyway.

use std::fmt;

/// Most digits before the decimal point.
const MAX_INT_DIGITS: usize = 12;
/// Most digits after the decimal point.
const MAX_FRAC_DIGITS: usize = 6;
/// Longest account name.
const MAX_ACCOUNT_LEN: usize = 255;

/// Why an account name or amount is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    /// Not `user@domain`, or unsafe for the rating engine's protocol.
    #[error("bad account {0:?}: expected user@domain without spaces or '='")]
    Account(String),
    /// Not a positive decimal number like `10` or `12.50`.
    #[error(
        "bad amount {0:?}: expected a positive decimal number like 10 or 12.50 \
         (at most 12 digits before and 6 after the point)"
    )]
    Amount(String),
}

/// A positive decimal amount, kept as the text the operator wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Amount(String);

impl Amount {
    /// Parses `10`, `10.5`, `0.25`; refuses signs, exponents, `NaN`, `.5`,
    /// `5.`, zero and anything longer than 12+6 digits.
    pub fn parse(s: &str) -> Result<Amount, InputError> {
        let t = s.trim();
        let bad = || InputError::Amount(s.to_string());
        let (int, frac) = match t.split_once('.') {
            Some((i, f)) => (i, Some(f)),
            None => (t, None),
        };
        let digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
        if !digits(int) || int.len() > MAX_INT_DIGITS {
            return Err(bad());
        }
        if let Some(f) = frac {
            if !digits(f) || f.len() > MAX_FRAC_DIGITS {
                return Err(bad());
            }
        }
        let nonzero = int
            .bytes()
            .chain(frac.unwrap_or("").bytes())
            .any(|b| b != b'0');
        if !nonzero {
            return Err(bad());
        }
        Ok(Amount(t.to_string()))
    }

    /// The amount as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Checks a prepaid account name and returns it as `user@domain` (a leading
/// `sip:`/`sips:` is dropped). CDRTool splits its requests on whitespace and
/// `=`, so neither may appear.
pub fn parse_account(s: &str) -> Result<String, InputError> {
    let t = s.trim();
    let t = t
        .strip_prefix("sip:")
        .or_else(|| t.strip_prefix("sips:"))
        .unwrap_or(t);
    let bad = || InputError::Account(s.to_string());
    if t.is_empty() || t.len() > MAX_ACCOUNT_LEN {
        return Err(bad());
    }
    if t.chars()
        .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '=' | '/' | '?' | '#'))
    {
        return Err(bad());
    }
    match t.split_once('@') {
        Some((u, d)) if !u.is_empty() && !d.is_empty() && !d.contains('@') => Ok(t.to_string()),
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts() {
        for ok in [
            "10",
            "10.5",
            "0.25",
            "000001",
            "999999999999.999999",
            " 7.00 ",
        ] {
            assert!(Amount::parse(ok).is_ok(), "{ok}");
        }
        assert_eq!(Amount::parse(" 7.00 ").unwrap().as_str(), "7.00");
        for bad in [
            "",
            "0",
            "0.000",
            "-1",
            "+1",
            "1e3",
            "NaN",
            "inf",
            ".5",
            "5.",
            "1,5",
            "1.2.3",
            "1234567890123",
            "1.1234567",
            "１",
            "10 0",
        ] {
            assert!(Amount::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn accounts() {
        assert_eq!(
            parse_account("alice@example.com").unwrap(),
            "alice@example.com"
        );
        assert_eq!(
            parse_account("sip:alice@example.com").unwrap(),
            "alice@example.com"
        );
        for bad in [
            "",
            "alice",
            "@example.com",
            "alice@",
            "a b@c",
            "a=b@c",
            "a@b@c",
            "a/b@c",
        ] {
            assert!(parse_account(bad).is_err(), "{bad:?}");
        }
    }
}
