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

/// Appends `user@host` (or `host`) of the From header's SIP URI to `out`.
/// One pass over bytes and no allocation besides `out`: this runs for every
/// `init`.
pub(crate) fn write_party(from: &str, out: &mut String) -> Option<()> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
