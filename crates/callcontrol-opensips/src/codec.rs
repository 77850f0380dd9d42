//! The `call_control` line protocol, without I/O (PROTOCOLS.md §1–2).
//!
//! Server side: a [`Decoder`] is fed bytes as they arrive and yields typed
//! [`Request`]s, or a [`ProtocolError`] that must be answered with
//! [`ProtocolError::reply_bytes`]; [`write_reply`] encodes a [`Reply`]
//! byte-exact. Client side (the CLI, the fake OpenSIPS, the load generator):
//! [`write_request`] encodes a request with OpenSIPS's exact `init` layout and
//! [`ReplyDecoder`] reads one-line replies and `\r\n\r\n`-terminated admin
//! replies back into [`ClientReply`].
//!
//! # Tolerance and bounds
//!
//! Lines may end `\r\n` or `\n`; `key: value` and `key:value`; command and
//! keys in any case; surrounding whitespace is trimmed (the original
//! `strip()`s every line); blank lines between requests are skipped and get
//! no reply. Input may be pipelined or split anywhere.
//!
//! A line longer than [`MAX_LINE`] (OpenSIPS's own buffer) or a block of more
//! than [`MAX_LINES`] lines is answered with one error reply as soon as it is
//! detected, and the decoder then **resynchronises at the next empty line**:
//! everything up to it is discarded as it arrives, so the buffer never holds
//! more than about `MAX_LINES × MAX_LINE` bytes whatever a client sends. We
//! chose resynchronising over closing the connection because OpenSIPS treats
//! a closed connection as −5 for every call of that worker for 10 s, while an
//! error reply costs only the one bad request. Invalid UTF-8 in a block gets
//! an error reply too; the connection stays open.

use bytes::{Buf, BytesMut};

use callcontrol_core::request::{Found, InitReply, Reply, Request};

use crate::cmd;
use crate::error::{ProtocolError, ReplyError};

pub use crate::cmd::debug::{session_from_fields, SessionRow};

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
            let Some(rest) = buf.get(scanned..).filter(|r| !r.is_empty()) else {
                // Nothing new since the last look (which found no line end
                // and checked the line's length), or nothing at all.
                break Scan::More;
            };
            let Some(pos) = find_newline(rest) else {
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
            let Some(line) = buf.get(line_start..end) else {
                break Scan::More;
            };
            let line = trim_cr(line);
            if line.len() > MAX_LINE {
                break Scan::LineTooLong {
                    next: end + 1,
                    mid_line: false,
                };
            }
            if is_blank(line) {
                break if lines == 0 {
                    Scan::Blank(end + 1)
                } else {
                    Scan::Block(end + 1)
                };
            }
            let Some(span) = self.spans.get_mut(lines) else {
                break Scan::TooManyLines(end + 1);
            };
            *span = (line_start, line_start + line.len());
            if lines == 0 {
                self.command = Command::of(line);
            }
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

/// The value of a parameter `line` that starts with `key` (`key:` as
/// OpenSIPS sends it, `key` ending with the `:`), trimmed: what the general
/// split gives, as `key` holds no `:` and starts with no whitespace.
#[inline(always)]
pub(crate) fn value_after<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.strip_prefix(key).map(str::trim_ascii)
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

/// Whether a line is empty or only whitespace (request lines start with
/// a letter: one look is enough for them).
#[inline(always)]
fn is_blank(line: &[u8]) -> bool {
    match line.first() {
        None => true,
        Some(b) if !b.is_ascii_whitespace() => false,
        Some(_) => line.iter().all(u8::is_ascii_whitespace),
    }
}

#[inline(always)]
fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// The `key: value` lines of one command's request, folded as they come: a
/// repeated key's last value wins (as in the original's `dict`), keys are
/// matched case-insensitively, unknown keys are ignored.
pub(crate) trait Fields<'a>: Default {
    /// One `key: value` line, both trimmed.
    fn set(&mut self, key: &'a str, value: &'a str);
    /// One parameter line (not blank, without its line end, not trimmed);
    /// `false` when it has no `:`. A command may recognise the keys as
    /// OpenSIPS sends them (`key:` at the start of the line) before this
    /// general split.
    #[inline]
    fn line(&mut self, line: &'a str) -> bool {
        general_line(self, line)
    }
    /// The request, or what is missing or wrong.
    fn finish(self) -> Result<Request, ProtocolError>;
}

/// [`Fields::line`]'s general split: the key up to the first `:`, the
/// value after it, both trimmed.
#[inline]
pub(crate) fn general_line<'a, F: Fields<'a>>(fields: &mut F, line: &'a str) -> bool {
    let Some(colon) = find_colon(line.as_bytes()) else {
        return false;
    };
    fields.set(line[..colon].trim_ascii(), line[colon + 1..].trim_ascii());
    true
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
    fold_command(command, params, || parse_block(block))
}

/// The request of a `command` from its parameter lines; `unknown` answers
/// for [`Command::Unknown`]. The request is built where it is returned (no
/// `Option` around it to unwrap, which cost a copy of it per request).
fn fold_command<'a>(
    command: Command,
    lines: impl Iterator<Item = &'a str>,
    unknown: impl FnOnce() -> Result<Request, ProtocolError>,
) -> Result<Request, ProtocolError> {
    match command {
        Command::Init => fold::<cmd::init::InitFields>(lines, "init"),
        Command::Start => fold::<cmd::start::StartFields>(lines, "start"),
        Command::Stop => fold::<cmd::stop::StopFields>(lines, "stop"),
        Command::Debug => fold::<cmd::debug::DebugFields>(lines, "debug"),
        Command::Terminate => fold::<cmd::terminate::TerminateFields>(lines, "terminate"),
        Command::Unknown => unknown(),
    }
}

/// Feeds the parameter lines of a `command` block to its [`Fields`].
fn fold<'a, F: Fields<'a>>(
    lines: impl Iterator<Item = &'a str>,
    command: &'static str,
) -> Result<Request, ProtocolError> {
    let mut fields = F::default();
    for line in lines {
        if !fields.line(line) {
            return Err(ProtocolError::BadLine(
                truncate(line.trim_ascii(), 64),
                command,
            ));
        }
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
    fold_command(Command::of(word.as_bytes()), lines, || {
        Err(ProtocolError::UnknownCommand(truncate(word, 64)))
    })
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

/// The name of a request's command, for logs and metrics.
pub fn command_name(request: &Request) -> &'static str {
    match request {
        Request::Init(_) => "init",
        Request::Start(_) => "start",
        Request::Stop { .. } => "stop",
        Request::List { .. } | Request::Show { .. } | Request::Page(_) => "debug",
        Request::Terminate { .. } => "terminate",
    }
}

/// Appends the reply to `out`, byte-exact. `call_id` is the request's
/// Call-ID, needed only for the `Call id … does not exist` admin replies.
pub fn write_reply(reply: &Reply, call_id: Option<&str>, out: &mut Vec<u8>) {
    match reply {
        Reply::Init(r) => {
            out.extend_from_slice(r.as_str().as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        Reply::Start(f) | Reply::Stop(f) => out.extend_from_slice(found_line(*f)),
        Reply::Sessions(list) => cmd::debug::write_list(list, out),
        Reply::Page(page) => cmd::debug::write_list(&page.sessions, out),
        Reply::Session(s) => cmd::debug::write_show(s.as_deref(), call_id.unwrap_or(""), out),
        Reply::Terminate(f) => cmd::terminate::write_reply(*f, call_id.unwrap_or(""), out),
    }
}

/// The reply as bytes (allocating form of [`write_reply`]).
pub fn encode_reply(reply: &Reply, call_id: Option<&str>) -> Vec<u8> {
    let mut out = Vec::with_capacity(32);
    write_reply(reply, call_id, &mut out);
    out
}

fn found_line(f: Found) -> &'static [u8] {
    match f {
        Found::Ok => b"Ok\r\n",
        Found::NotFound => b"Not found\r\n",
    }
}

/// Appends the request as a client sends it (`init` in OpenSIPS's fixed
/// field order; every line `\r\n`, then an empty line).
pub fn write_request(request: &Request, out: &mut Vec<u8>) {
    match request {
        Request::Init(r) => cmd::init::write_request(r, out),
        Request::Start(r) => cmd::start::write_request(r, out),
        Request::Stop { call_id } => cmd::stop::write_request(call_id.as_str(), out),
        Request::List { .. } | Request::Show { .. } | Request::Page(_) => {
            cmd::debug::write_request(request, out)
        }
        Request::Terminate { call_id } => cmd::terminate::write_request(call_id.as_str(), out),
    }
}

/// The request as bytes (allocating form of [`write_request`]).
pub fn encode_request(request: &Request) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    write_request(request, &mut out);
    out
}

/// A reply as a client reads it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "reply", content = "value")]
pub enum ClientReply {
    /// The answer to `init`.
    Init(#[serde(with = "init_reply_serde")] InitReply),
    /// `Ok` / `Not found` to `start` or `stop`.
    Found(#[serde(with = "found_serde")] Found),
    /// The session list (`debug` / `show: sessions`).
    Sessions(Vec<SessionRow>),
    /// One session's `key: value` fields (`debug` / `show: session`).
    Session(Vec<(String, String)>),
    /// `Ok` to `terminate`.
    Terminated,
    /// `Call id <id> does not exist` (show or terminate).
    NoSuchCall(String),
    /// `Error` (or `Error` + empty line for admin commands).
    Error,
}

mod init_reply_serde {
    use callcontrol_core::request::InitReply;
    pub fn serialize<S: serde::Serializer>(r: &InitReply, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(r.as_str())
    }
}
mod found_serde {
    use callcontrol_core::request::Found;
    pub fn serialize<S: serde::Serializer>(f: &Found, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(if *f == Found::Ok { "Ok" } else { "Not found" })
    }
}

/// How the reply to a request is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyFraming {
    /// One line (`init`, `start`, `stop`).
    Line,
    /// Lines ending with an empty line (`debug`, `terminate`).
    Block,
}

impl ReplyFraming {
    /// The framing of the reply to `request`.
    pub fn of(request: &Request) -> ReplyFraming {
        match request {
            Request::Init(_) | Request::Start(_) | Request::Stop { .. } => ReplyFraming::Line,
            _ => ReplyFraming::Block,
        }
    }
}

/// The longest reply a [`ReplyDecoder`] accepts by default (an admin list of
/// many sessions can be large).
pub const MAX_REPLY: usize = 64 * 1024 * 1024;

/// Client-side reply decoder: feed it bytes, then ask for the reply to the
/// request you sent.
#[derive(Debug)]
pub struct ReplyDecoder {
    buf: BytesMut,
    max: usize,
    /// Bytes of `buf` already scanned for the end of a reply with this
    /// framing (no end in them), so each byte is looked at about once
    /// however the reply is split into reads.
    scanned: (usize, ReplyFraming),
}

impl Default for ReplyDecoder {
    fn default() -> Self {
        ReplyDecoder::new()
    }
}

impl ReplyDecoder {
    /// A decoder accepting replies up to [`MAX_REPLY`] bytes.
    pub fn new() -> Self {
        ReplyDecoder {
            buf: BytesMut::with_capacity(512),
            max: MAX_REPLY,
            scanned: (0, ReplyFraming::Line),
        }
    }
    /// Appends received bytes.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }
    /// The buffer to read into; only append to it.
    pub fn buffer_mut(&mut self) -> &mut BytesMut {
        &mut self.buf
    }
    /// Bytes received and not yet decoded.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The raw reply with the given framing: one line without its line end,
    /// or the lines of a block (empty lines dropped).
    pub fn decode_raw(&mut self, framing: ReplyFraming) -> Option<Result<Vec<String>, ReplyError>> {
        // Resume where the last call stopped: a line end found there may
        // start the block's end, so back up over the last two bytes.
        let scanned = if self.scanned.1 == framing {
            self.scanned.0
        } else {
            0
        };
        let from = scanned.saturating_sub(2).min(self.buf.len());
        let end = match framing {
            ReplyFraming::Line => {
                memchr::memchr(b'\n', &self.buf[from..]).map(|i| (from + i, from + i + 1))
            }
            // The end of a block is a line end, an optional CR, a line end.
            ReplyFraming::Block => memchr::memchr_iter(b'\n', &self.buf[from..])
                .map(|i| from + i)
                .find_map(|i| match (self.buf.get(i + 1), self.buf.get(i + 2)) {
                    (Some(b'\n'), _) => Some((i, i + 2)),
                    (Some(b'\r'), Some(b'\n')) => Some((i, i + 3)),
                    _ => None,
                }),
        };
        let Some((content_end, consumed)) = end else {
            if self.buf.len() > self.max {
                self.buf.clear();
                self.scanned.0 = 0;
                return Some(Err(ReplyError::TooLong(self.max)));
            }
            self.scanned = (self.buf.len(), framing);
            return None;
        };
        self.scanned.0 = 0;
        let text = std::str::from_utf8(&self.buf[..content_end]).map(|t| {
            t.split('\n')
                .map(|l| l.trim_end_matches('\r'))
                .filter(|l| !l.trim().is_empty())
                .map(str::to_string)
                .collect::<Vec<_>>()
        });
        self.buf.advance(consumed);
        Some(text.map_err(|_| ReplyError::InvalidUtf8))
    }

    /// The typed reply to `request`, or `None` when more input is needed.
    pub fn decode(&mut self, request: &Request) -> Option<Result<ClientReply, ReplyError>> {
        let lines = match self.decode_raw(ReplyFraming::of(request))? {
            Ok(l) => l,
            Err(e) => return Some(Err(e)),
        };
        Some(interpret(request, lines))
    }
}

fn interpret(request: &Request, lines: Vec<String>) -> Result<ClientReply, ReplyError> {
    let first = lines.first().map(|l| l.trim()).unwrap_or("");
    if first.eq_ignore_ascii_case("error") {
        return Ok(ClientReply::Error);
    }
    if let Some(rest) = first.strip_prefix("Call id ") {
        if let Some(id) = rest.strip_suffix(" does not exist") {
            if !matches!(request, Request::List { .. } | Request::Page(_)) {
                return Ok(ClientReply::NoSuchCall(id.to_string()));
            }
        }
    }
    match request {
        Request::Init(_) => parse_init_reply(first)
            .map(ClientReply::Init)
            .ok_or_else(|| ReplyError::Unexpected(first.to_string())),
        Request::Start(_) | Request::Stop { .. } => match first {
            f if f.eq_ignore_ascii_case("ok") => Ok(ClientReply::Found(Found::Ok)),
            f if f.eq_ignore_ascii_case("not found") => Ok(ClientReply::Found(Found::NotFound)),
            f => Err(ReplyError::Unexpected(f.to_string())),
        },
        Request::Terminate { .. } if first.eq_ignore_ascii_case("ok") => {
            Ok(ClientReply::Terminated)
        }
        Request::Terminate { .. } => Err(ReplyError::Unexpected(first.to_string())),
        Request::List { .. } | Request::Page(_) => lines
            .iter()
            .map(|l| SessionRow::parse(l).ok_or_else(|| ReplyError::Unexpected(l.clone())))
            .collect::<Result<Vec<_>, _>>()
            .map(ClientReply::Sessions),
        Request::Show { .. } => Ok(ClientReply::Session(
            lines
                .iter()
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .collect(),
        )),
    }
}

/// Parses an `init` reply line (case-insensitively, as the module does).
pub fn parse_init_reply(line: &str) -> Option<InitReply> {
    use InitReply::*;
    [
        NoLimit,
        Limited,
        NoCredit,
        Locked,
        DuplicatedCallId,
        CallLimitReached,
        Error,
    ]
    .into_iter()
    .find(|r| r.as_str().eq_ignore_ascii_case(line.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use callcontrol_core::request::{InitRequest, StartRequest};
    use callcontrol_core::types::{CallId, DialogId, Prepaid};

    const INIT: &[u8] = b"init\r\nruri: sip:1000@127.0.0.1:5060\r\ndiverter: None\r\nsourceip: 127.0.0.1\r\ncallid: 1-1469@127.0.0.1\r\nfrom: \"cc test\" <sip:caller1@example.com>\r\nfromtag: 1469SIPpTag001\r\nprepaid: unknown\r\ncall_limit: 0\r\ncall_token: None\r\n\r\n";

    fn decode_all(input: &[u8]) -> Vec<Result<Request, ProtocolError>> {
        let mut d = Decoder::new();
        d.feed(input);
        std::iter::from_fn(|| d.decode()).collect()
    }

    fn opensips_init() -> InitRequest {
        InitRequest {
            ruri: "sip:1000@127.0.0.1:5060".into(),
            diverter: None,
            source_ip: "127.0.0.1".into(),
            call_id: CallId::new("1-1469@127.0.0.1"),
            from: "\"cc test\" <sip:caller1@example.com>".into(),
            from_tag: "1469SIPpTag001".into(),
            prepaid: Prepaid::Unknown,
            call_limit: 0,
            call_token: None,
            sip_application: None,
        }
    }

    #[test]
    fn reply_decoder_finds_block_ends_split_across_reads() {
        let list = Request::List { user: None };
        let init = Request::Init(opensips_init());
        for end in [&b"\n\n"[..], b"\r\n\r\n", b"\n\r\n"] {
            let mut bytes = b"Call id a of u@h to sip:x@y: pending\r\n\
                              Call id b of u@h to sip:x@y: pending"
                .to_vec();
            bytes.extend_from_slice(end);
            bytes.extend_from_slice(b"Limited\r\n");
            for size in 1..=5 {
                let mut d = ReplyDecoder::new();
                let mut got = None;
                for chunk in bytes.chunks(size) {
                    d.feed(chunk);
                    if got.is_none() {
                        got = d.decode(&list);
                    }
                }
                let Some(Ok(ClientReply::Sessions(rows))) = got else {
                    panic!("{end:?} in reads of {size}: {got:?}");
                };
                assert_eq!(rows.len(), 2, "{end:?} in reads of {size}");
                assert_eq!(
                    d.decode(&init),
                    Some(Ok(ClientReply::Init(InitReply::Limited)))
                );
                assert_eq!(d.buffered(), 0);
            }
        }
    }

    #[test]
    fn word_at_a_time_searches_agree_with_a_plain_scan() {
        let plain = |h: &[u8], b: u8| h.iter().position(|&x| x == b);
        let mut hay = Vec::new();
        for len in 0..200usize {
            for at in [
                None,
                Some(0),
                Some(len / 3),
                Some(len / 2),
                Some(len.saturating_sub(1)),
            ] {
                hay.clear();
                hay.extend((0..len).map(|i| [b'a', 0x80, 0x0b, 0xff, b'9'][i % 5]));
                if let Some(at) = at.filter(|&a| a < len) {
                    hay[at] = b'\n';
                    hay[len - 1 - at] = b':';
                }
                assert_eq!(find_newline(&hay), plain(&hay, b'\n'), "{hay:?}");
                assert_eq!(find_colon(&hay), plain(&hay, b':'), "{hay:?}");
            }
        }
        // Several matches: the first one counts.
        assert_eq!(find_newline(b"abcdefg\n\n"), Some(7));
        assert_eq!(find_newline(b"\n\n"), Some(0));
        assert_eq!(find_colon(b"a::b"), Some(1));
        assert_eq!(find_colon(b"0123456789abcdef:"), Some(16));
    }

    #[test]
    fn decodes_the_observed_init() {
        assert_eq!(decode_all(INIT), vec![Ok(Request::Init(opensips_init()))]);
    }

    #[test]
    fn encodes_init_in_opensips_byte_layout() {
        assert_eq!(encode_request(&Request::Init(opensips_init())), INIT);
    }

    #[test]
    fn decodes_byte_by_byte_and_pipelined() {
        let mut input = INIT.to_vec();
        input.extend_from_slice(
            b"\r\n\nstart\r\ncallid: 1-1469@127.0.0.1\r\ndialogid: 11111181033451\r\n\r\n",
        );
        input.extend_from_slice(b"STOP\nCallID:1-1469@127.0.0.1\n\n");
        let mut d = Decoder::new();
        let mut out = Vec::new();
        for b in &input {
            d.feed(std::slice::from_ref(b));
            while let Some(r) = d.decode() {
                out.push(r.unwrap());
            }
        }
        assert_eq!(out.len(), 3);
        assert_eq!(
            out[1],
            Request::Start(StartRequest {
                call_id: CallId::new("1-1469@127.0.0.1"),
                dialog_id: Some(DialogId::new(0xa1b, 0x5ff9feb)),
            })
        );
        assert_eq!(
            out[2],
            Request::Stop {
                call_id: CallId::new("1-1469@127.0.0.1")
            }
        );
        assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn decodes_kamailio_init_and_pair_dialog_id() {
        let k = b"init\r\nruri: sip:limit3@127.0.0.1:5062\r\ndiverter: None\r\nsourceip: 127.0.0.1\r\ncallid: 1-28964@127.0.0.1\r\nfrom: \"cc test\" <sip:caller1@example.com>\r\nfromtag: 28964SIPpTag001\r\nsip_application: audio\r\n\r\nstart\r\ncallid: 1-28964@127.0.0.1\r\ndialogid: 3908:2580\r\n\r\n";
        let out = decode_all(k);
        let Ok(Request::Init(i)) = &out[0] else {
            panic!("{out:?}")
        };
        assert_eq!(i.prepaid, Prepaid::Unknown);
        assert_eq!(i.call_limit, 0);
        assert_eq!(i.call_token, None);
        assert_eq!(i.sip_application.as_deref(), Some("audio"));
        let Ok(Request::Start(s)) = &out[1] else {
            panic!("{out:?}")
        };
        assert_eq!(s.dialog_id, Some(DialogId::new(3908, 2580)));
    }

    #[test]
    fn admin_requests() {
        let out = decode_all(
            b"debug\r\nshow: sessions\r\n\r\ndebug\r\nshow: sessions\r\nuser: alice\r\n\r\n\
              debug\r\nshow: session\r\ncallid: c1\r\n\r\nterminate\r\ncallid: c1\r\n\r\n",
        );
        assert_eq!(
            out,
            vec![
                Ok(Request::List { user: None }),
                Ok(Request::List {
                    user: Some("alice".into())
                }),
                Ok(Request::Show {
                    call_id: CallId::new("c1")
                }),
                Ok(Request::Terminate {
                    call_id: CallId::new("c1")
                }),
            ]
        );
    }

    #[test]
    fn errors_are_typed_and_framed() {
        let out = decode_all(
            b"bogus\r\n\r\nstop\r\n\r\ndebug\r\nshow: nothing\r\n\r\nterminate\r\n\r\n\xff\xfe\r\n\r\n\
              terminate\r\ncallid: \xff\r\n\r\n",
        );
        assert_eq!(out[5], Err(ProtocolError::InvalidUtf8("terminate")));
        assert_eq!(out[5].as_ref().unwrap_err().reply_bytes(), b"Error\r\n\r\n");
        assert!(matches!(out[0], Err(ProtocolError::UnknownCommand(_))));
        assert_eq!(out[0].as_ref().unwrap_err().reply_bytes(), b"Error\r\n");
        assert_eq!(out[1], Err(ProtocolError::MissingKey("callid", "stop")));
        assert_eq!(out[2].as_ref().unwrap_err().reply_bytes(), b"Error\r\n\r\n");
        assert_eq!(out[3].as_ref().unwrap_err().reply_bytes(), b"Error\r\n\r\n");
        assert_eq!(out[4], Err(ProtocolError::InvalidUtf8("")));
        assert_eq!(out.len(), 6);
    }

    #[test]
    fn oversized_line_is_answered_once_and_resynchronised() {
        let mut d = Decoder::new();
        d.feed(b"init\r\nruri: ");
        assert!(d.decode().is_none());
        let big = vec![b'a'; MAX_LINE + 10];
        d.feed(&big);
        assert_eq!(
            d.decode(),
            Some(Err(ProtocolError::LineTooLong(MAX_LINE, "init")))
        );
        // More of the same request: discarded, bounded.
        for _ in 0..100 {
            d.feed(&big);
            assert_eq!(d.decode(), None);
            assert!(d.buffered() <= MAX_LINE * 2);
        }
        d.feed(b"\r\nfrom: x\r\n\r\nstop\r\ncallid: c\r\n\r\n");
        assert_eq!(
            d.decode(),
            Some(Ok(Request::Stop {
                call_id: CallId::new("c")
            }))
        );
        assert_eq!(d.decode(), None);
    }

    #[test]
    fn too_many_lines_is_answered_once_and_resynchronised() {
        let mut input = b"start\r\ncallid: c\r\n".to_vec();
        for i in 0..200 {
            input.extend_from_slice(format!("x{i}: y\r\n").as_bytes());
        }
        input.extend_from_slice(b"\r\nstop\r\ncallid: c\r\n\r\n");
        let out = decode_all(&input);
        assert_eq!(
            out,
            vec![
                Err(ProtocolError::TooManyLines(MAX_LINES, "start")),
                Ok(Request::Stop {
                    call_id: CallId::new("c")
                })
            ]
        );
    }

    #[test]
    fn replies_are_byte_exact() {
        let r = |reply: Reply, id| encode_reply(&reply, id);
        assert_eq!(r(Reply::Init(InitReply::NoLimit), None), b"No limit\r\n");
        assert_eq!(r(Reply::Init(InitReply::Limited), None), b"Limited\r\n");
        assert_eq!(r(Reply::Init(InitReply::NoCredit), None), b"No credit\r\n");
        assert_eq!(r(Reply::Init(InitReply::Locked), None), b"Locked\r\n");
        assert_eq!(
            r(Reply::Init(InitReply::DuplicatedCallId), None),
            b"Duplicated callid\r\n"
        );
        assert_eq!(
            r(Reply::Init(InitReply::CallLimitReached), None),
            b"Call limit reached\r\n"
        );
        assert_eq!(r(Reply::Init(InitReply::Error), None), b"Error\r\n");
        assert_eq!(r(Reply::Start(Found::Ok), None), b"Ok\r\n");
        assert_eq!(r(Reply::Stop(Found::NotFound), None), b"Not found\r\n");
        assert_eq!(r(Reply::Terminate(Found::Ok), Some("c")), b"Ok\r\n\r\n");
        assert_eq!(
            r(Reply::Terminate(Found::NotFound), Some("c")),
            b"Call id c does not exist\r\n\r\n"
        );
        assert_eq!(
            r(Reply::Session(None), Some("c")),
            b"Call id c does not exist\r\n\r\n"
        );
        assert_eq!(r(Reply::Sessions(vec![]), None), b"\r\n\r\n");
    }

    #[test]
    fn reply_decoder_reads_lines_and_blocks() {
        let mut d = ReplyDecoder::new();
        d.feed(b"Limited\r\n\r\n\r\nCall id c does not exist\r\n\r\nOk\r\n\r\n");
        let init = Request::Init(opensips_init());
        assert_eq!(
            d.decode(&init),
            Some(Ok(ClientReply::Init(InitReply::Limited)))
        );
        let list = Request::List { user: None };
        assert_eq!(d.decode(&list), Some(Ok(ClientReply::Sessions(vec![]))));
        let term = Request::Terminate {
            call_id: CallId::new("c"),
        };
        assert_eq!(
            d.decode(&term),
            Some(Ok(ClientReply::NoSuchCall("c".into())))
        );
        assert_eq!(d.decode(&term), Some(Ok(ClientReply::Terminated)));
        assert_eq!(d.decode(&term), None);
    }
}
