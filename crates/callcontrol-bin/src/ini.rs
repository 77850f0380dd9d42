//! A small INI reader with the dialect of Python's `ConfigParser`, which the
//! original daemon's `config.ini` is written in: `[Section]` headers,
//! `key = value` or `key: value`, whole-line comments starting with `;` or
//! `#`, inline comments after whitespace + `;`, indented continuation lines,
//! `%%` for a literal `%`, keys case-insensitive.
//!
//! `serde_ini` (named by the design card) was tried first and set aside: it
//! fails on whitespace-only and indented comment lines, knows no `key: value`
//! form, no continuations and no line numbers for errors.

use std::fmt;

/// One `key = value` with where it was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The key, lower-cased.
    pub key: String,
    /// The value, trimmed, `%%` unescaped.
    pub value: String,
    /// 1-based line number.
    pub line: usize,
}

/// A section and its entries in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    /// The name as written.
    pub name: String,
    /// Its entries.
    pub entries: Vec<Entry>,
}

/// A syntax error with its line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for SyntaxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

/// Parses a whole document.
pub fn parse(text: &str) -> Result<Vec<Section>, SyntaxError> {
    let mut sections: Vec<Section> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with(';') || trimmed.starts_with('#') {
            continue;
        }
        // An indented line continues the previous value (ConfigParser).
        if raw.starts_with([' ', '\t']) {
            if let Some(e) = sections.last_mut().and_then(|s| s.entries.last_mut()) {
                let more = unescape(strip_inline_comment(trimmed));
                if !more.is_empty() {
                    e.value.push('\n');
                    e.value.push_str(&more);
                }
                continue;
            }
        }
        if let Some(rest) = trimmed.strip_prefix('[') {
            let Some(name) = rest.strip_suffix(']') else {
                return Err(SyntaxError {
                    line,
                    message: format!("section header {trimmed:?} has no ']'"),
                });
            };
            sections.push(Section {
                name: name.trim().to_string(),
                entries: Vec::new(),
            });
            continue;
        }
        let Some(pos) = trimmed.find(['=', ':']) else {
            return Err(SyntaxError {
                line,
                message: format!("{trimmed:?} is neither a [section], a comment nor key = value"),
            });
        };
        let Some(section) = sections.last_mut() else {
            return Err(SyntaxError {
                line,
                message: format!("{trimmed:?} comes before any [section]"),
            });
        };
        let key = trimmed[..pos].trim().to_ascii_lowercase();
        if key.is_empty() {
            return Err(SyntaxError {
                line,
                message: "empty key".into(),
            });
        }
        let value = unescape(strip_inline_comment(trimmed[pos + 1..].trim()));
        section.entries.push(Entry { key, value, line });
    }
    Ok(sections)
}

/// Drops ` ; comment` at the end of a value (a `;` preceded by whitespace).
fn strip_inline_comment(v: &str) -> &str {
    let bytes = v.as_bytes();
    for i in 1..bytes.len() {
        if bytes[i] == b';' && (bytes[i - 1] == b' ' || bytes[i - 1] == b'\t') {
            return v[..i].trim_end();
        }
    }
    v
}

fn unescape(v: &str) -> String {
    v.replace("%%", "%")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_configparser_dialect() {
        let text = "; top comment\n\n[CallControl]\n  ; indented comment\nsocket = /run/cc/socket\nLimit: 600 ; ten minutes\n# hash comment\nformat = 100%% sure\nlist = a\n  b\n\n[CDRTool]\naddress=cdrtool.example.com:9024\n";
        let s = parse(text).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].name, "CallControl");
        let kv: Vec<(&str, &str)> = s[0]
            .entries
            .iter()
            .map(|e| (e.key.as_str(), e.value.as_str()))
            .collect();
        assert_eq!(
            kv,
            vec![
                ("socket", "/run/cc/socket"),
                ("limit", "600"),
                ("format", "100% sure"),
                ("list", "a\nb")
            ]
        );
        assert_eq!(s[0].entries[1].line, 6);
        assert_eq!(s[1].entries[0].value, "cdrtool.example.com:9024");
    }

    #[test]
    fn reports_the_line_of_a_syntax_error() {
        let e = parse("[A]\nx = 1\n[B\n").unwrap_err();
        assert_eq!(e.line, 3);
        let e = parse("x = 1\n").unwrap_err();
        assert_eq!(e.line, 1);
        let e = parse("[A]\njust words\n").unwrap_err();
        assert_eq!(e.line, 2);
    }
}
