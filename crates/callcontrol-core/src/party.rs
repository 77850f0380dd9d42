//! Billing-party derivation from a SIP From header value.
//!
//! The From value arrives without its `;tag=` (OpenSIPS sends it as
//! `fromtag`), but may still have a display name (quoted or not, possibly
//! containing `<`, `>` or `"` inside quotes), angle brackets, a `sip:` or
//! `sips:` scheme, a password, a port, URI parameters, URI headers and header
//! parameters. The result is `user@host` (or `host` for a URI without user).

/// Returns `user@host` of the `sip:`/`sips:` URI in a From header value, or
/// `None` when there is no usable SIP URI (empty, `tel:`, garbage).
pub fn from_header_party(from: &str) -> Option<String> {
    let mut out = String::new();
    write_party(from, &mut out)?;
    Some(out)
}

/// Writes the billing party of an `init` into `out` (cleared first): `sip:`
/// and the diverter when it is set (not `None`), else `sip:` and the From
/// URI reduced to `user@host`. Returns `false` when there is no diverter
/// and no usable SIP URI in From. No allocation besides `out`'s growth: the
/// engine reuses one buffer for every `init`.
pub(crate) fn write_billing_party(from: &str, diverter: Option<&str>, out: &mut String) -> bool {
    out.clear();
    out.push_str("sip:");
    if let Some(d) = diverter
        .map(str::trim)
        .filter(|d| !d.is_empty() && *d != "None")
    {
        let d = d
            .strip_prefix("sip:")
            .or_else(|| d.strip_prefix("sips:"))
            .unwrap_or(d);
        out.push_str(d);
        return true;
    }
    write_party(from, out).is_some()
}

/// Appends `user@host` (or `host`) of the From header's SIP URI to `out`.
/// No allocation besides `out`, and few passes over short strings (plain
/// byte loops: cheaper than `memchr`'s set-up at these lengths): this runs
/// for every `init`.
pub(crate) fn write_party(from: &str, out: &mut String) -> Option<()> {
    let uri = extract_uri(from.trim())?;
    let rest = strip_scheme(uri)?;
    // URI headers (`?subject=..`) and URI parameters (`;transport=..`) end the
    // host part; a user part may itself contain `;` (user params) before `@`.
    // Delimiters are ASCII, so slicing at them is slicing at char boundaries.
    // One pass finds the end of the URI proper and the last `@` before it.
    let mut end = rest.len();
    let mut at = None;
    for (i, c) in rest.bytes().enumerate() {
        match c {
            b'?' => {
                end = i;
                break;
            }
            b'@' => at = Some(i),
            _ => {}
        }
    }
    let (user, hostport) = match at {
        Some(at) => (Some(&rest[..at]), &rest[at + 1..end]),
        None => (None, &rest[..end]),
    };
    let host = strip_port(hostport)?;
    if host.is_empty() || has_whitespace(host) {
        return None;
    }
    if let Some(u) = user {
        // `user:password@host`: the password is not part of the party.
        let u = before(u, b':');
        if u.is_empty() || has_whitespace(u) {
            return None;
        }
        out.reserve(u.len() + 1 + host.len());
        out.push_str(u);
        out.push('@');
    }
    let start = out.len();
    out.push_str(host);
    out[start..].make_ascii_lowercase();
    Some(())
}

/// `s` up to the first `delim` (all of it when there is none).
fn before(s: &str, delim: u8) -> &str {
    match s.bytes().position(|b| b == delim) {
        Some(i) => &s[..i],
        None => s,
    }
}

/// Whether `s` contains a char for which `char::is_whitespace` holds
/// (bytes when `s` is ASCII, the usual case).
fn has_whitespace(s: &str) -> bool {
    if s.is_ascii() {
        s.bytes().any(|b| matches!(b, b'\t'..=b'\r' | b' '))
    } else {
        s.contains(char::is_whitespace)
    }
}

/// The URI inside a name-addr (`"Name" <uri>`) or an addr-spec (`uri;params`).
fn extract_uri(s: &str) -> Option<&str> {
    // Skip a quoted display name, honouring backslash escapes, so that a `<`
    // inside the quotes is not taken for the start of the URI. Delimiters are
    // ASCII, so scanning bytes is safe in UTF-8.
    let bytes = s.as_bytes();
    let mut i = 0;
    while let Some(j) = memchr::memchr2(b'"', b'<', &bytes[i..]) {
        let k = i + j;
        if bytes[k] == b'<' {
            let inner = &s[k + 1..];
            let end = memchr::memchr(b'>', inner.as_bytes())?;
            return Some(inner[..end].trim());
        }
        // A quoted string: up to its closing quote (none: no URI).
        let mut m = k + 1;
        loop {
            let p = m + memchr::memchr2(b'\\', b'"', bytes.get(m..)?)?;
            if bytes[p] == b'"' {
                i = p + 1;
                break;
            }
            m = p + 2;
        }
    }
    // addr-spec without angle brackets: parameters after `;` belong to the
    // header (RFC 3261 §20.10) and are cut after the host by the caller.
    s.split_whitespace().next()
}

fn strip_scheme(uri: &str) -> Option<&str> {
    let colon = uri.bytes().position(|b| b == b':')?;
    let (scheme, rest) = (&uri[..colon], &uri[colon + 1..]);
    if scheme.eq_ignore_ascii_case("sip") || scheme.eq_ignore_ascii_case("sips") {
        Some(rest)
    } else {
        None
    }
}

/// The host of `host[:port][;params]`, an IPv6 reference with its brackets.
fn strip_port(hostport: &str) -> Option<&str> {
    let hostport = before(hostport, b';');
    if let Some(v6) = hostport.strip_prefix('[') {
        let end = v6.bytes().position(|b| b == b']')?;
        return Some(&hostport[..end + 2]);
    }
    Some(before(hostport, b':'))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The implementation this module had before it scanned with `memchr`:
    /// the property test below checks the two agree on any input.
    mod reference {
        pub fn write_party(from: &str, out: &mut String) -> Option<()> {
            let uri = extract_uri(from.trim())?;
            let rest = strip_scheme(uri)?;
            // URI headers (`?subject=..`) and URI parameters (`;transport=..`) end the
            // host part; a user part may itself contain `;` (user params) before `@`.
            let rest = rest.split('?').next().unwrap_or(rest);
            let (user, hostport) = match rest.rfind('@') {
                Some(at) => (Some(&rest[..at]), &rest[at + 1..]),
                None => (None, rest),
            };
            let hostport = hostport.split(';').next().unwrap_or(hostport);
            let host = strip_port(hostport)?;
            if host.is_empty() || host.contains(char::is_whitespace) {
                return None;
            }
            if let Some(u) = user {
                // `user:password@host`: the password is not part of the party.
                let u = u.split(':').next().unwrap_or(u);
                if u.is_empty() || u.contains(char::is_whitespace) {
                    return None;
                }
                out.reserve(u.len() + 1 + host.len());
                out.push_str(u);
                out.push('@');
            }
            if host.bytes().any(|b| b.is_ascii_uppercase()) {
                out.push_str(&host.to_ascii_lowercase());
            } else {
                out.push_str(host);
            }
            Some(())
        }

        /// The URI inside a name-addr (`"Name" <uri>`) or an addr-spec (`uri;params`).
        fn extract_uri(s: &str) -> Option<&str> {
            // Skip a quoted display name, honouring backslash escapes, so that a `<`
            // inside the quotes is not taken for the start of the URI. Delimiters are
            // ASCII, so scanning bytes is safe in UTF-8.
            let bytes = s.as_bytes();
            let mut in_quotes = false;
            let mut escaped = false;
            for (i, &c) in bytes.iter().enumerate() {
                if in_quotes {
                    match (escaped, c) {
                        (true, _) => escaped = false,
                        (false, b'\\') => escaped = true,
                        (false, b'"') => in_quotes = false,
                        _ => {}
                    }
                    continue;
                }
                match c {
                    b'"' => in_quotes = true,
                    b'<' => {
                        let inner = &s[i + 1..];
                        let end = inner.find('>')?;
                        return Some(inner[..end].trim());
                    }
                    _ => {}
                }
            }
            if in_quotes {
                return None;
            }
            // addr-spec without angle brackets: parameters after `;` belong to the
            // header (RFC 3261 §20.10) and are cut after the host by the caller.
            s.split_whitespace().next()
        }

        fn strip_scheme(uri: &str) -> Option<&str> {
            let (scheme, rest) = uri.split_once(':')?;
            if scheme.eq_ignore_ascii_case("sip") || scheme.eq_ignore_ascii_case("sips") {
                Some(rest)
            } else {
                None
            }
        }

        fn strip_port(hostport: &str) -> Option<&str> {
            if let Some(v6) = hostport.strip_prefix('[') {
                let end = v6.find(']')?;
                return Some(&hostport[..end + 2]);
            }
            Some(hostport.split(':').next().unwrap_or(hostport))
        }
    }

    proptest::proptest! {
        #[test]
        fn agrees_with_the_reference(
            display in "[ a-z\"<>\\\\]{0,6}",
            scheme in "(sip|SIPS|sips|tel|x)?:?",
            uri in "[ a-zA-Z0-9@:;?.<>\\[\\]\"\\\\\t\u{b}\u{a0}é]{0,24}",
            tail in "[ >;a-z=]{0,4}",
        ) {
            for from in [
                format!("{display}<{scheme}{uri}>{tail}"),
                format!("{scheme}{uri}{tail}"),
                format!("{display}{scheme}{uri}"),
            ] {
                let mut new = String::from("x");
                let mut old = String::from("x");
                let a = write_party(&from, &mut new);
                let b = reference::write_party(&from, &mut old);
                proptest::prop_assert_eq!(a, b, "From: {:?}", from);
                if a.is_some() {
                    proptest::prop_assert_eq!(&new, &old, "From: {:?}", from);
                }
            }
        }
    }

    #[test]
    fn billing_party_from_diverter_or_from() {
        let mut out = String::from("stale");
        assert!(write_billing_party(
            "<sip:a@b>",
            Some(" sip:d@e "),
            &mut out
        ));
        assert_eq!(out, "sip:d@e");
        assert!(write_billing_party("<sip:a@B>", Some("None"), &mut out));
        assert_eq!(out, "sip:a@b");
        assert!(write_billing_party("<tel:1>", Some("sips:x@y"), &mut out));
        assert_eq!(out, "sip:x@y");
        assert!(!write_billing_party("<tel:1>", None, &mut out));
    }

    #[test]
    fn real_world_from_headers() {
        let table: &[(&str, Option<&str>)] = &[
            (
                r#""cc test" <sip:caller1@example.com>"#,
                Some("caller1@example.com"),
            ),
            ("<sip:alice@example.com>", Some("alice@example.com")),
            ("sip:alice@example.com", Some("alice@example.com")),
            (
                "sip:alice@example.com;user=phone",
                Some("alice@example.com"),
            ),
            (
                "sips:bob@secure.example.com",
                Some("bob@secure.example.com"),
            ),
            (
                "Bob <sips:bob@Example.COM:5061;transport=tls>",
                Some("bob@example.com"),
            ),
            (
                "<sip:+31201234567@10.0.0.1:5060;user=phone>;x-param=1",
                Some("+31201234567@10.0.0.1"),
            ),
            (
                r#""Smith, John" <sip:john@example.com>"#,
                Some("john@example.com"),
            ),
            (
                r#""a <sip:fake@evil.com>" <sip:real@example.com>"#,
                Some("real@example.com"),
            ),
            (
                r#""quote \" inside" <sip:q@example.com>"#,
                Some("q@example.com"),
            ),
            (
                "Anonymous <sip:anonymous@anonymous.invalid>",
                Some("anonymous@anonymous.invalid"),
            ),
            ("<sip:alice:secret@example.com>", Some("alice@example.com")),
            (
                "<sip:alice@example.com?subject=hi>",
                Some("alice@example.com"),
            ),
            ("<sip:[2001:db8::1]:5060>", Some("[2001:db8::1]")),
            (
                "<sip:alice@[2001:db8::1]:5060>",
                Some("alice@[2001:db8::1]"),
            ),
            ("<sip:example.com>", Some("example.com")),
            ("  <SIP:Alice@example.com>  ", Some("Alice@example.com")),
            ("<tel:+31201234567>", None),
            ("tel:+31201234567", None),
            ("", None),
            ("Alice", None),
            (r#""unterminated <sip:a@b>"#, None),
            ("<sip:alice@example.com", None),
            ("<>", None),
            ("<sip:@example.com>", None),
            ("<sip:>", None),
        ];
        for (from, want) in table {
            assert_eq!(from_header_party(from).as_deref(), *want, "From: {from}");
        }
    }
}
