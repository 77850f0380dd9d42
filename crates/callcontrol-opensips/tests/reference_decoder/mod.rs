//! A verbatim copy of the request decoder as it was before the
//! instruction-count work on it (commit 5eff0e7), kept as the reference that
//! the optimised decoder must match byte for byte: same requests, same
//! errors, same resynchronisation. Only the module paths differ (the
//! `cmd/` field folders are inlined as modules below). Do not "improve"
//! this file: its value is that it is the old code.
#![allow(dead_code, unused_imports, clippy::all)]

use bytes::{Buf, BytesMut};

use callcontrol_core::request::Request;
use callcontrol_opensips::ProtocolError;

mod cmd {
    /// `None` (any case) or empty → `None`.
    pub(crate) fn none_or(v: Option<&str>) -> Option<String> {
        // What OpenSIPS sends, without trimming again.
        if v == Some("None") {
            return None;
        }
        v.map(str::trim)
            .filter(|v| !v.is_empty() && !v.eq_ignore_ascii_case("none"))
            .map(str::to_string)
    }

    /// The only key of `stop` and `terminate`: `callid`, required.
    #[derive(Default)]
    pub(crate) struct CallIdField<'a>(Option<&'a str>);

    impl<'a> CallIdField<'a> {
        /// Takes `value` if `key` is `callid` (the last one wins).
        pub(crate) fn set(&mut self, key: &'a str, value: &'a str) {
            if is_callid(key) {
                self.0 = Some(value);
            }
        }
        /// The Call-ID, or the error naming `command`.
        pub(crate) fn require(
            self,
            command: &'static str,
        ) -> Result<callcontrol_core::types::CallId, callcontrol_opensips::ProtocolError> {
            self.0.map(callcontrol_core::types::CallId::new).ok_or(
                callcontrol_opensips::ProtocolError::MissingKey("callid", command),
            )
        }
    }

    /// Whether a key is `callid` (any case).
    pub(crate) fn is_callid(key: &str) -> bool {
        key.len() == 6 && super::eq_key(key.as_bytes(), "callid")
    }

    pub(crate) mod init {
        use callcontrol_core::request::{InitRequest, Request};
        use callcontrol_core::types::{CallId, Prepaid};

        use super::super::Fields;
        use super::none_or;
        use callcontrol_opensips::ProtocolError;

        /// The original requires `callid`, `diverter`, `ruri`, `sourceip` and `from`
        /// (OpenSIPS and Kamailio always send them); the rest are optional, and a
        /// value that cannot be used falls back the way the original's did:
        /// `prepaid` other than true/false is `unknown`, `call_limit` that is not a
        /// positive integer is 0 (no limit), `call_token` `None` or empty is none.
        #[derive(Default)]
        pub(crate) struct InitFields<'a> {
            call_id: Option<&'a str>,
            ruri: Option<&'a str>,
            from: Option<&'a str>,
            source_ip: Option<&'a str>,
            diverter: Option<&'a str>,
            from_tag: Option<&'a str>,
            prepaid: Option<&'a str>,
            call_limit: Option<&'a str>,
            call_token: Option<&'a str>,
            app: Option<&'a str>,
        }

        impl<'a> Fields<'a> for InitFields<'a> {
            fn set(&mut self, k: &'a str, v: &'a str) {
                // This runs for every line of every call: the keys as OpenSIPS
                // sends them first, then any case.
                let slot = match k.as_bytes() {
                    b"ruri" => &mut self.ruri,
                    b"diverter" => &mut self.diverter,
                    b"sourceip" => &mut self.source_ip,
                    b"callid" => &mut self.call_id,
                    b"from" => &mut self.from,
                    b"fromtag" => &mut self.from_tag,
                    b"prepaid" => &mut self.prepaid,
                    b"call_limit" => &mut self.call_limit,
                    b"call_token" => &mut self.call_token,
                    b"sip_application" => &mut self.app,
                    _ => match self.slot_any_case(k) {
                        Some(slot) => slot,
                        None => return,
                    },
                };
                *slot = Some(v);
            }

            fn finish(self) -> Result<Request, ProtocolError> {
                let call_id = need(self.call_id, "callid")?;
                let ruri = need(self.ruri, "ruri")?;
                let from = need(self.from, "from")?;
                let source_ip = need(self.source_ip, "sourceip")?;
                let diverter = none_or(Some(need(self.diverter, "diverter")?));
                if call_id.is_empty() {
                    return Err(ProtocolError::BadValue("callid", String::new(), "init"));
                }
                Ok(Request::Init(InitRequest {
                    ruri: ruri.to_owned(),
                    diverter,
                    source_ip: source_ip.to_owned(),
                    call_id: CallId::new(call_id),
                    from: from.to_owned(),
                    from_tag: self.from_tag.unwrap_or("").to_owned(),
                    prepaid: self.prepaid.map_or(Prepaid::Unknown, parse_prepaid),
                    call_limit: self
                        .call_limit
                        .and_then(|v| v.parse::<u32>().ok())
                        .unwrap_or(0),
                    call_token: none_or(self.call_token),
                    sip_application: none_or(self.app),
                }))
            }
        }

        impl<'a> InitFields<'a> {
            fn slot_any_case(&mut self, k: &str) -> Option<&mut Option<&'a str>> {
                let is = |name: &str| k.eq_ignore_ascii_case(name);
                let first = k.as_bytes().first().map_or(0, u8::to_ascii_lowercase);
                Some(match (k.len(), first) {
                    (4, b'r') if is("ruri") => &mut self.ruri,
                    (4, b'f') if is("from") => &mut self.from,
                    (6, b'c') if is("callid") => &mut self.call_id,
                    (7, b'f') if is("fromtag") => &mut self.from_tag,
                    (7, b'p') if is("prepaid") => &mut self.prepaid,
                    (8, b'd') if is("diverter") => &mut self.diverter,
                    (8, b's') if is("sourceip") => &mut self.source_ip,
                    (10, b'c') if is("call_limit") => &mut self.call_limit,
                    (10, b'c') if is("call_token") => &mut self.call_token,
                    (15, b's') if is("sip_application") => &mut self.app,
                    _ => return None,
                })
            }
        }

        /// [`Prepaid::parse`] with what cannot be used as `unknown`; OpenSIPS sends
        /// `unknown` unless a `prepaid_account_flag` is configured.
        fn parse_prepaid(v: &str) -> Prepaid {
            if v.len() == 7 && v.eq_ignore_ascii_case("unknown") {
                return Prepaid::Unknown;
            }
            Prepaid::parse(v).unwrap_or_default()
        }

        fn need<'a>(v: Option<&'a str>, key: &'static str) -> Result<&'a str, ProtocolError> {
            v.ok_or(ProtocolError::MissingKey(key, "init"))
        }
    }
    pub(crate) mod start {
        use callcontrol_core::error::RequestError;
        use callcontrol_core::request::{Request, StartRequest};
        use callcontrol_core::types::{CallId, DialogId};

        use super::super::{eq_key, Fields};
        use callcontrol_opensips::ProtocolError;

        /// `callid` is required. `dialogid` (decimal u64 or `h_entry:h_id`) is
        /// optional, and one that does not parse is logged and dropped rather than
        /// refused: refusing `start` would leave the call untimed, while without a
        /// dialog id the call can still be ended by its Call-ID.
        #[derive(Default)]
        pub(crate) struct StartFields<'a> {
            call_id: Option<&'a str>,
            dialog_id: Option<&'a str>,
        }

        impl<'a> Fields<'a> for StartFields<'a> {
            fn set(&mut self, key: &'a str, value: &'a str) {
                if super::is_callid(key) {
                    self.call_id = Some(value);
                } else if key.len() == 8 && eq_key(key.as_bytes(), "dialogid") {
                    self.dialog_id = Some(value);
                }
            }
            fn finish(self) -> Result<Request, ProtocolError> {
                let call_id = self
                    .call_id
                    .ok_or(ProtocolError::MissingKey("callid", "start"))?;
                let dialog_id = match self.dialog_id {
                    None => None,
                    Some(d) => {
                        match parse_dialog_id(d) {
                            Ok(d) => Some(d),
                            Err(e) => {
                                log::warn!("start with {e}; the call will be ended by its Call-ID ({call_id})");
                                None
                            }
                        }
                    }
                };
                Ok(Request::Start(StartRequest {
                    call_id: CallId::new(call_id),
                    dialog_id,
                }))
            }
        }

        /// [`DialogId::parse`], with a shortcut for what OpenSIPS ≥ 2.3 sends: up to
        /// 19 decimal digits cannot overflow a u64.
        fn parse_dialog_id(s: &str) -> Result<DialogId, RequestError> {
            if (1..=19).contains(&s.len()) {
                let mut v = 0u64;
                for b in s.bytes() {
                    let digit = b.wrapping_sub(b'0');
                    if digit > 9 {
                        return DialogId::parse(s);
                    }
                    v = v * 10 + u64::from(digit);
                }
                return Ok(DialogId::new((v >> 32) as u32, v as u32));
            }
            DialogId::parse(s)
        }
    }
    pub(crate) mod stop {
        use callcontrol_core::request::Request;

        use super::super::Fields;
        use super::CallIdField;
        use callcontrol_opensips::ProtocolError;

        /// `callid` is required.
        #[derive(Default)]
        pub(crate) struct StopFields<'a>(CallIdField<'a>);

        impl<'a> Fields<'a> for StopFields<'a> {
            fn set(&mut self, key: &'a str, value: &'a str) {
                self.0.set(key, value);
            }
            fn finish(self) -> Result<Request, ProtocolError> {
                Ok(Request::Stop {
                    call_id: self.0.require("stop")?,
                })
            }
        }
    }
    pub(crate) mod terminate {
        use callcontrol_core::request::Request;

        use super::super::Fields;
        use super::CallIdField;
        use callcontrol_opensips::ProtocolError;

        /// `callid` is required.
        #[derive(Default)]
        pub(crate) struct TerminateFields<'a>(CallIdField<'a>);

        impl<'a> Fields<'a> for TerminateFields<'a> {
            fn set(&mut self, key: &'a str, value: &'a str) {
                self.0.set(key, value);
            }
            fn finish(self) -> Result<Request, ProtocolError> {
                Ok(Request::Terminate {
                    call_id: self.0.require("terminate")?,
                })
            }
        }
    }
    pub(crate) mod debug {
        use std::fmt::Write as _;

        use serde::Serialize;

        use callcontrol_core::request::{ListQuery, Request};
        use callcontrol_core::session::SessionInfo;
        use callcontrol_core::types::{CallId, DialogId, SessionState, Timestamp};

        use super::super::{eq_key, Fields};
        use super::none_or;
        use callcontrol_opensips::ProtocolError;

        /// `show` is `sessions` or `session` (any case); `session` needs `callid`.
        #[derive(Default)]
        pub(crate) struct DebugFields<'a> {
            show: Option<&'a str>,
            user: Option<&'a str>,
            call_id: Option<&'a str>,
        }

        impl<'a> Fields<'a> for DebugFields<'a> {
            fn set(&mut self, key: &'a str, value: &'a str) {
                let slot = if eq_key(key.as_bytes(), "show") {
                    &mut self.show
                } else if eq_key(key.as_bytes(), "user") {
                    &mut self.user
                } else if super::is_callid(key) {
                    &mut self.call_id
                } else {
                    return;
                };
                *slot = Some(value);
            }

            fn finish(self) -> Result<Request, ProtocolError> {
                let show = self
                    .show
                    .ok_or(ProtocolError::MissingKey("show", "debug"))?;
                if show.eq_ignore_ascii_case("sessions") {
                    Ok(Request::List {
                        user: none_or(self.user),
                    })
                } else if show.eq_ignore_ascii_case("session") {
                    let call_id = self
                        .call_id
                        .ok_or(ProtocolError::MissingKey("callid", "debug"))?;
                    if call_id.is_empty() {
                        return Err(ProtocolError::MissingKey("callid", "debug"));
                    }
                    Ok(Request::Show {
                        call_id: CallId::new(call_id),
                    })
                } else {
                    Err(ProtocolError::BadValue("show", show.to_string(), "debug"))
                }
            }
        }
    }
}

/// The longest request line accepted, in bytes (without its line end).
pub const MAX_LINE: usize = 8 * 1024;
/// The most lines a request block may have (command line included).
pub const MAX_LINES: usize = 64;

/// Incremental request decoder for one connection. See the module docs.
#[derive(Debug)]
pub struct Decoder {
    buf: BytesMut,
    /// Bytes of `buf` already searched for a line end.
    scanned: usize,
    /// Start of the line being received (all earlier lines belong to the block).
    line_start: usize,
    /// Non-blank lines of the block so far.
    lines: usize,
    /// Skipping input until the next empty line (after an oversized request).
    discarding: bool,
    /// While discarding: whether the current line has anything but whitespace.
    discard_content: bool,
    /// The command of the block being received, once its first line is in.
    command: Command,
    /// Each line of the block as `start..end` in `buf`, without its line
    /// end: recorded while looking for the block's end, so that the block
    /// is parsed without scanning for line ends again.
    spans: [(usize, usize); MAX_LINES],
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder {
            buf: BytesMut::new(),
            scanned: 0,
            line_start: 0,
            lines: 0,
            discarding: false,
            discard_content: false,
            command: Command::Unknown,
            spans: [(0, 0); MAX_LINES],
        }
    }
}

impl Decoder {
    /// A decoder with an empty buffer.
    pub fn new() -> Self {
        Decoder {
            buf: BytesMut::with_capacity(4096),
            ..Default::default()
        }
    }

    /// Appends received bytes.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The buffer to read into (e.g. with `AsyncReadExt::read_buf`); only
    /// append to it.
    pub fn buffer_mut(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// Bytes held (for tests of the memory bound).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Whether a partial request is buffered (a client closing now vanished
    /// mid-request).
    pub fn in_request(&self) -> bool {
        self.lines > 0
            || self.buf[self.line_start..]
                .iter()
                .any(|b| !b.is_ascii_whitespace())
    }

    /// The next complete request, an error to answer, or `None` when more
    /// input is needed.
    pub fn decode(&mut self) -> Option<Result<Request, ProtocolError>> {
        loop {
            if self.discarding && !self.skip_to_empty_line() {
                return None;
            }
            return match self.scan() {
                Scan::More => None,
                Scan::Blank(next) => {
                    // A blank line between requests: no reply of its own.
                    self.consume(next);
                    continue;
                }
                Scan::Block(next) => {
                    let result = parse_lines(
                        &self.buf[..self.line_start],
                        &self.spans[..self.lines],
                        self.command,
                    );
                    self.consume(next);
                    Some(result)
                }
                Scan::LineTooLong { next, mid_line } => {
                    // The line cannot become valid: answer now, drop what we
                    // have and skip to the next empty line.
                    let command = self.command.name();
                    self.start_discarding(next, mid_line);
                    Some(Err(ProtocolError::LineTooLong(MAX_LINE, command)))
                }
                Scan::TooManyLines(next) => {
                    let command = self.command.name();
                    self.start_discarding(next, false);
                    Some(Err(ProtocolError::TooManyLines(MAX_LINES, command)))
                }
            };
        }
    }

    /// Reads lines up to the end of the block, the end of the input or a
    /// bound, recording each line's span (one pass over the bytes).
    fn scan(&mut self) -> Scan {
        let buf = &self.buf[..];
        let (mut scanned, mut line_start, mut lines) = (self.scanned, self.line_start, self.lines);
        let scan = loop {
            if scanned == buf.len() {
                // Nothing new since the last look (which found no line end
                // and checked the line's length), or nothing at all.
                break Scan::More;
            }
            let Some(pos) = find_newline(&buf[scanned..]) else {
                scanned = buf.len();
                // A trailing CR may be the start of the line end: a line of
                // exactly MAX_LINE bytes is not too long until what follows
                // its CR says so.
                if trim_cr(&buf[line_start..]).len() > MAX_LINE {
                    break Scan::LineTooLong {
                        next: buf.len(),
                        mid_line: true,
                    };
                }
                break Scan::More;
            };
            let end = scanned + pos;
            let line = trim_cr(&buf[line_start..end]);
            if line.len() > MAX_LINE {
                break Scan::LineTooLong {
                    next: end + 1,
                    mid_line: false,
                };
            }
            if line.iter().all(u8::is_ascii_whitespace) {
                break if lines == 0 {
                    Scan::Blank(end + 1)
                } else {
                    Scan::Block(end + 1)
                };
            }
            if lines == MAX_LINES {
                break Scan::TooManyLines(end + 1);
            }
            if lines == 0 {
                self.command = Command::of(line);
            }
            self.spans[lines] = (line_start, line_start + line.len());
            lines += 1;
            line_start = end + 1;
            scanned = end + 1;
        };
        self.scanned = scanned;
        self.line_start = line_start;
        self.lines = lines;
        scan
    }

    fn consume(&mut self, n: usize) {
        if n == self.buf.len() {
            // The usual case (one request per read): keeps the buffer's
            // start where it is, which costs less than moving it.
            self.buf.clear();
        } else {
            self.buf.advance(n);
        }
        self.scanned = 0;
        self.line_start = 0;
        self.lines = 0;
        self.command = Command::Unknown;
    }

    fn start_discarding(&mut self, n: usize, mid_line: bool) {
        self.consume(n);
        self.discarding = true;
        self.discard_content = mid_line;
    }

    /// Drops input up to and including the next empty line; true once found.
    fn skip_to_empty_line(&mut self) -> bool {
        for i in 0..self.buf.len() {
            match self.buf[i] {
                b'\n' if !self.discard_content => {
                    self.consume(i + 1);
                    self.discarding = false;
                    return true;
                }
                b'\n' => self.discard_content = false,
                b if b.is_ascii_whitespace() => {}
                _ => self.discard_content = true,
            }
        }
        let n = self.buf.len();
        self.consume(n);
        false
    }
}

/// What [`Decoder::scan`] found; `next` is where the input after it starts.
enum Scan {
    /// More input is needed.
    More,
    /// A blank line outside a block.
    Blank(usize),
    /// A block's terminating empty line.
    Block(usize),
    /// A line longer than [`MAX_LINE`] (`mid_line`: its end not yet seen).
    LineTooLong { next: usize, mid_line: bool },
    /// A block of more than [`MAX_LINES`] lines.
    TooManyLines(usize),
}

/// The commands, as the decoder recognises them from a block's first line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Command {
    /// None of them (or not yet known).
    Unknown,
    Init,
    Start,
    Stop,
    Debug,
    Terminate,
}

impl Command {
    /// The command named by a first line (any case, surrounding whitespace
    /// ignored).
    fn of(line: &[u8]) -> Command {
        let word = line.trim_ascii();
        match word {
            b"init" => return Command::Init,
            b"start" => return Command::Start,
            b"stop" => return Command::Stop,
            _ => {}
        }
        let is = |name: &str| word.eq_ignore_ascii_case(name.as_bytes());
        match (word.len(), word.first().map(u8::to_ascii_lowercase)) {
            (4, Some(b'i')) if is("init") => Command::Init,
            (5, Some(b's')) if is("start") => Command::Start,
            (4, Some(b's')) if is("stop") => Command::Stop,
            (5, Some(b'd')) if is("debug") => Command::Debug,
            (9, Some(b't')) if is("terminate") => Command::Terminate,
            _ => Command::Unknown,
        }
    }

    /// The name in error messages (`""` for none).
    fn name(self) -> &'static str {
        match self {
            Command::Unknown => "",
            Command::Init => "init",
            Command::Start => "start",
            Command::Stop => "stop",
            Command::Debug => "debug",
            Command::Terminate => "terminate",
        }
    }
}

/// `word.eq_ignore_ascii_case(name)` for a lowercase `name`, trying the
/// exact bytes first: OpenSIPS sends commands and keys in lowercase.
#[inline]
pub(crate) fn eq_key(word: &[u8], name: &str) -> bool {
    word == name.as_bytes() || word.eq_ignore_ascii_case(name.as_bytes())
}

/// The first `\n` in `hay`. Request lines are short: the first 64 bytes
/// are searched a word at a time, which costs less than setting up a
/// vectorised search; `memchr` takes over for long lines.
fn find_newline(hay: &[u8]) -> Option<usize> {
    let head = hay.len().min(64);
    let mut chunks = hay[..head].chunks_exact(8);
    let mut at = 0;
    for chunk in chunks.by_ref() {
        if let Some(i) = find_byte_in_word(chunk, b'\n') {
            return Some(at + i);
        }
        at += 8;
    }
    if let Some(i) = chunks.remainder().iter().position(|&b| b == b'\n') {
        return Some(at + i);
    }
    if head == hay.len() {
        return None;
    }
    memchr::memchr(b'\n', &hay[head..]).map(|i| head + i)
}

/// The first `:` in a line: keys are short, so the first 16 bytes are
/// looked at a word at a time.
fn find_colon(line: &[u8]) -> Option<usize> {
    let mut at = 0;
    for chunk in line.chunks_exact(8).take(2) {
        if let Some(i) = find_byte_in_word(chunk, b':') {
            return Some(at + i);
        }
        at += 8;
    }
    line[at..].iter().position(|&b| b == b':').map(|i| at + i)
}

/// The first `byte` in an 8-byte `chunk`.
#[inline(always)]
fn find_byte_in_word(chunk: &[u8], byte: u8) -> Option<usize> {
    const ONES: u64 = u64::from_le_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_le_bytes([0x80; 8]);
    let w = u64::from_le_bytes(chunk.try_into().unwrap_or_default()) ^ (ONES * u64::from(byte));
    // A byte of `w` is zero where `chunk` has `byte`; the lowest flagged byte
    // is exact (borrows only propagate upwards).
    let zero = w.wrapping_sub(ONES) & !w & HIGH;
    (zero != 0).then(|| (zero.trailing_zeros() / 8) as usize)
}

fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// The `key: value` lines of one command's request, folded as they come: a
/// repeated key's last value wins (as in the original's `dict`), keys are
/// matched case-insensitively, unknown keys are ignored.
pub(crate) trait Fields<'a>: Default {
    /// One `key: value` line, both trimmed.
    fn set(&mut self, key: &'a str, value: &'a str);
    /// The request, or what is missing or wrong.
    fn finish(self) -> Result<Request, ProtocolError>;
}

/// Parses a block whose lines the [`Decoder`] has already found: `spans`
/// holds each line's `start..end` in `block` without its line end (at least
/// one line, none blank; the block ends with the last one's `\n`).
fn parse_lines(
    block: &[u8],
    spans: &[(usize, usize)],
    command: Command,
) -> Result<Request, ProtocolError> {
    if command == Command::Unknown {
        // An error either way; the general path has the exact one.
        return parse_block(block);
    }
    let Ok(text) = std::str::from_utf8(block) else {
        return Err(ProtocolError::InvalidUtf8(command.name()));
    };
    // Line ends are ASCII, so every span is on char boundaries.
    let params = spans[1..].iter().map(|&(start, end)| &text[start..end]);
    fold_command(command, params).unwrap_or_else(|| parse_block(block))
}

/// The request of a known `command` from its parameter lines (`None` for
/// [`Command::Unknown`]).
fn fold_command<'a>(
    command: Command,
    lines: impl Iterator<Item = &'a str>,
) -> Option<Result<Request, ProtocolError>> {
    Some(match command {
        Command::Init => fold::<cmd::init::InitFields>(lines, "init"),
        Command::Start => fold::<cmd::start::StartFields>(lines, "start"),
        Command::Stop => fold::<cmd::stop::StopFields>(lines, "stop"),
        Command::Debug => fold::<cmd::debug::DebugFields>(lines, "debug"),
        Command::Terminate => fold::<cmd::terminate::TerminateFields>(lines, "terminate"),
        Command::Unknown => return None,
    })
}

/// Feeds the parameter lines of a `command` block to its [`Fields`].
fn fold<'a, F: Fields<'a>>(
    lines: impl Iterator<Item = &'a str>,
    command: &'static str,
) -> Result<Request, ProtocolError> {
    let mut fields = F::default();
    for line in lines {
        let Some(colon) = find_colon(line.as_bytes()) else {
            return Err(ProtocolError::BadLine(
                truncate(line.trim_ascii(), 64),
                command,
            ));
        };
        fields.set(line[..colon].trim_ascii(), line[colon + 1..].trim_ascii());
    }
    fields.finish()
}

/// Parses one complete block (without its terminating empty line): any
/// bytes, blank lines skipped, no bound on the number of lines.
fn parse_block(block: &[u8]) -> Result<Request, ProtocolError> {
    let text = std::str::from_utf8(block).map_err(|_| {
        let first = block
            .split(|&b| b == b'\n')
            .find(|l| !l.trim_ascii().is_empty());
        ProtocolError::InvalidUtf8(Command::of(first.unwrap_or_default()).name())
    })?;
    let mut lines = Lines { text, pos: 0 };
    let word = lines.next().unwrap_or("");
    fold_command(Command::of(word.as_bytes()), lines)
        .unwrap_or_else(|| Err(ProtocolError::UnknownCommand(truncate(word, 64))))
}

/// The non-blank lines of a block, trimmed.
struct Lines<'a> {
    text: &'a str,
    pos: usize,
}

impl<'a> Iterator for Lines<'a> {
    type Item = &'a str;
    fn next(&mut self) -> Option<&'a str> {
        let bytes = self.text.as_bytes();
        while self.pos < bytes.len() {
            let start = self.pos;
            let end = memchr::memchr(b'\n', &bytes[start..]).map_or(bytes.len(), |e| start + e);
            self.pos = end + 1;
            // `\n` is ASCII, so `start..end` are char boundaries.
            let line = self.text[start..end].trim_ascii();
            if !line.is_empty() {
                return Some(line);
            }
        }
        None
    }
}

fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// Parses one complete request block, e.g. `"stop\r\ncallid: x\r\n"` (the
/// terminating empty line is optional). For tests, fuzzing and tools.
pub fn parse_request(block: &[u8]) -> Result<Request, ProtocolError> {
    parse_block(block)
}
