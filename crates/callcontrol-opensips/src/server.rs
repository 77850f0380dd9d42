//! The `call_control` Unix stream socket server.
//!
//! OpenSIPS keeps one persistent connection per worker and is strictly
//! request → reply on each, blocking a SIP worker until the reply line or its
//! 500 ms timeout; the `init`, `start` and `stop` of one call usually come on
//! different connections. So: one task per connection, requests of a
//! connection served in order (its replies must be in order), every
//! connection independent of the others — a slow rating answer holds only
//! the connection waiting for it, since the engine serves other requests
//! meanwhile. Replies are gathered in a buffer and written when no complete
//! request is left in the input, so a pipelining client gets its replies in
//! one write. Accepted connections are registered with the reactor for read
//! readiness only ([`ReadInterestStream`]).
//!
//! [`serve_connection`] is generic over `AsyncRead + AsyncWrite`, so tests
//! can drive it with `tokio::io::duplex`.

use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use log::{debug, error, info, warn};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, Interest, ReadBuf};
use tokio::net::UnixListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

use callcontrol_core::driver::Handle;
use callcontrol_core::error::DriverError;
use callcontrol_core::request::{ListQuery, Reply, Request};
use callcontrol_core::types::CallId;

use crate::cmd::debug as debug_cmd;
use crate::codec::{command_name, write_reply, Decoder, ReplyFraming};
use crate::error::ProtocolError;

/// Called after every reply with the command (`init`, `start`, `stop`,
/// `debug`, `terminate`), the time from a complete request to its reply, and
/// the reply — for metrics.
pub type RequestObserver = Arc<dyn Fn(&'static str, Duration, &Reply) + Send + Sync>;
/// Called for every request answered with an error reply.
pub type ProtocolErrorObserver = Arc<dyn Fn(&ProtocolError) + Send + Sync>;

/// Decides, as a connection is accepted, to close it at once (e.g.
/// [`kamailio::close_pre_fork_connection`](crate::kamailio::close_pre_fork_connection)).
pub type AcceptFilter = Arc<dyn Fn(&tokio::net::UnixStream) -> bool + Send + Sync>;

/// Settings of the server.
#[derive(Clone, Default)]
pub struct ServerConfig {
    /// Most connections served at once (0: no limit). Further clients wait
    /// in the listen backlog until a connection closes.
    pub max_connections: usize,
    /// Metrics hook, called after every reply.
    pub on_request: Option<RequestObserver>,
    /// Metrics hook, called for every protocol error.
    pub on_protocol_error: Option<ProtocolErrorObserver>,
    /// Connections for which this answers `true` are closed as soon as
    /// they are accepted.
    pub close_at_accept: Option<AcceptFilter>,
}

impl std::fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConfig")
            .field("max_connections", &self.max_connections)
            .field("on_request", &self.on_request.is_some())
            .field("on_protocol_error", &self.on_protocol_error.is_some())
            .field("close_at_accept", &self.close_at_accept.is_some())
            .finish()
    }
}

/// Creates the listening socket as the original did: a stale socket file is
/// removed, the socket is made group-owned by `group` with mode 0660, or
/// mode 0666 when that group does not exist (a failure to change ownership is
/// logged, not fatal). Refuses to start when another process still answers
/// on `path`. Must be called inside a tokio runtime.
pub fn bind_socket(path: &Path, group: Option<&str>) -> io::Result<UnixListener> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    if std::fs::symlink_metadata(path).is_ok() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("another process is listening on {}", path.display()),
            ));
        }
        info!("Removing stale socket {}", path.display());
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    restrict_to_group(path, group);
    Ok(listener)
}

/// Gives the socket file at `path` to `group` with mode 0660, or mode 0666
/// when there is no such group (failures are logged, not fatal): the rule
/// for every socket the proxy must reach (the control socket, the MI /
/// JSON-RPC reply socket).
pub(crate) fn restrict_to_group(path: &Path, group: Option<&str>) {
    let gid = group.and_then(|g| match nix::unistd::Group::from_name(g) {
        Ok(Some(g)) => Some(g.gid.as_raw()),
        Ok(None) => None,
        Err(e) => {
            warn!("Cannot look up group {g}: {e}");
            None
        }
    });
    let mode = match gid {
        Some(gid) => match std::os::unix::fs::chown(path, None, Some(gid)) {
            Ok(()) => 0o660,
            Err(e) => {
                warn!(
                    "Cannot give {} to group {}: {e}; the proxy may not be able to connect",
                    path.display(),
                    group.unwrap_or("")
                );
                0o660
            }
        },
        None => 0o666,
    };
    if let Err(e) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)) {
        warn!("Cannot set the mode of {}: {e}", path.display());
    }
}

/// How long [`serve`] waits, once shut down, for the connections to finish
/// the requests they are serving before dropping them.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Serves connections until `shutdown` is cancelled, then ends every
/// connection's reading (`shutdown(2)`): each answers what its client had
/// sent, including a request waiting for the rating engine, and closes (for
/// at most [`SHUTDOWN_GRACE`]). Then the socket file is removed.
pub async fn serve(
    listener: UnixListener,
    handle: Handle,
    config: ServerConfig,
    shutdown: CancellationToken,
) -> io::Result<()> {
    // Connection tasks; aborted if still busy when the shutdown grace
    // period is over (a client that does not read its replies).
    let mut tasks = JoinSet::new();
    // The open connections' sockets, to end their reading at shutdown.
    let mut open: Vec<Weak<StdUnixStream>> = Vec::new();
    let limit =
        (config.max_connections > 0).then(|| Arc::new(Semaphore::new(config.max_connections)));
    let config = Arc::new(config);
    loop {
        let permit = match &limit {
            Some(sem) => tokio::select! {
                p = sem.clone().acquire_owned() => p.ok(),
                _ = shutdown.cancelled() => break,
            },
            None => None,
        };
        let stream = tokio::select! {
            r = listener.accept() => r,
            _ = shutdown.cancelled() => break,
        };
        let stream = match stream {
            Ok((s, _)) => s,
            Err(e) => {
                // Out of file descriptors and the like: wait, do not spin.
                error!("Cannot accept a connection on the call_control socket: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if config
            .close_at_accept
            .as_ref()
            .is_some_and(|close| close(&stream))
        {
            continue;
        }
        let stream = match ReadInterestStream::new(stream) {
            Ok(s) => s,
            Err(e) => {
                error!("Cannot register a call_control connection: {e}");
                continue;
            }
        };
        let (handle, config) = (handle.clone(), config.clone());
        // Reap the connections that have closed.
        while tasks.try_join_next().is_some() {}
        open.retain(|s| s.strong_count() > 0);
        open.push(stream.socket());
        tasks.spawn(async move {
            let _permit = permit;
            if let Err(e) = serve_stream(stream, handle, &config, None).await {
                info!("call_control connection closed: {e}");
            }
        });
    }
    // Each connection reads what its client had sent, answers it, then
    // reads the end of the stream and closes. A connection waits for no
    // cancellation signal while it reads: that would cost a poll per read.
    for socket in open.iter().filter_map(Weak::upgrade) {
        let _ = socket.shutdown(std::net::Shutdown::Read);
    }
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        warn!(
            "Closing {} call_control connections still busy {} s after the shutdown \
             (their clients do not read the replies)",
            tasks.len(),
            SHUTDOWN_GRACE.as_secs()
        );
        tasks.shutdown().await;
    }
    if let Ok(addr) = listener.local_addr() {
        if let Some(path) = addr.as_pathname() {
            let _ = std::fs::remove_file(path);
        }
    }
    Ok(())
}

/// Serves one connection until the client closes it or `shutdown` is
/// cancelled (the request being served is answered first). An `Err` is an
/// I/O failure, typically the client gone before its reply; the request was
/// still served, so no session is lost.
pub async fn serve_connection<S>(
    stream: S,
    handle: Handle,
    config: &ServerConfig,
    shutdown: CancellationToken,
) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // Registered once for the connection's life, not once per read.
    let cancelled = shutdown.cancelled();
    tokio::pin!(cancelled);
    serve_stream(stream, handle, config, Some(cancelled)).await
}

/// [`serve_connection`], with the shutdown signal optional: the server's
/// own connections get none (it ends their reading instead).
async fn serve_stream<S>(
    mut stream: S,
    handle: Handle,
    config: &ServerConfig,
    mut cancelled: Option<Pin<&mut WaitForCancellationFuture<'_>>>,
) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut decoder = Decoder::new();
    // Replies not written yet: those of the requests read together go out
    // in one write (a pipelining client's too, by up to `OUT_BUFFER` bytes).
    let mut out = Vec::with_capacity(256);
    loop {
        while let Some(frame) = decoder.decode() {
            match frame {
                Ok(request) => {
                    let name = command_name(&request);
                    let framing = ReplyFraming::of(&request);
                    let call_id = call_id_of(&request);
                    let started = config.on_request.as_ref().map(|_| Instant::now());
                    if let Request::List { user } = request {
                        send(&mut stream, &mut out).await?;
                        // Streamed page by page: the engine is never busy
                        // with more than a page while `init`s wait.
                        match write_list_paged(&mut stream, &handle, user).await {
                            Ok(Ok(())) => {}
                            Ok(Err((e, nothing_sent))) => {
                                warn!("{e}: answering {name} with Error ({call_id})");
                                if nothing_sent {
                                    stream.write_all(b"Error\r\n\r\n").await?;
                                }
                                stream.flush().await?;
                                return Ok(());
                            }
                            Err(e) => {
                                warn!("Client gone before the reply to {name} ({call_id}): {e}");
                                return Err(e);
                            }
                        }
                        if let (Some(hook), Some(t)) = (&config.on_request, started) {
                            hook(name, t.elapsed(), &Reply::Sessions(Vec::new()));
                        }
                        continue;
                    }
                    let reply = match handle.request(request).await {
                        Ok(r) => r,
                        Err(e) => {
                            // The engine is stopping: answer, then close.
                            warn!("{e}: answering {name} with Error ({call_id})");
                            out.extend_from_slice(if framing == ReplyFraming::Block {
                                b"Error\r\n\r\n"
                            } else {
                                b"Error\r\n"
                            });
                            send(&mut stream, &mut out).await?;
                            stream.flush().await?;
                            return Ok(());
                        }
                    };
                    write_reply(&reply, Some(call_id.as_str()), &mut out);
                    if out.len() >= OUT_BUFFER {
                        if let Err(e) = send(&mut stream, &mut out).await {
                            warn!("Client gone before the reply to {name} ({call_id}): {e}");
                            return Err(e);
                        }
                    }
                    if let (Some(hook), Some(t)) = (&config.on_request, started) {
                        hook(name, t.elapsed(), &reply);
                    }
                }
                Err(e) => {
                    warn!("Bad request on the call_control socket, answered Error: {e}");
                    if let Some(hook) = &config.on_protocol_error {
                        hook(&e);
                    }
                    out.extend_from_slice(e.reply_bytes());
                    if out.len() >= OUT_BUFFER {
                        send(&mut stream, &mut out).await?;
                    }
                }
            }
        }
        if let Err(e) = send(&mut stream, &mut out).await {
            warn!("Client gone before its reply was sent: {e}");
            return Err(e);
        }
        let buf = decoder.buffer_mut();
        buf.reserve(4096);
        let n = match cancelled.as_mut() {
            Some(cancelled) => tokio::select! {
                biased;
                r = stream.read_buf(buf) => r?,
                _ = cancelled => return Ok(()),
            },
            None => stream.read_buf(buf).await?,
        };
        if n == 0 {
            if decoder.in_request() {
                warn!("Client closed its call_control connection in the middle of a request");
            } else {
                debug!("call_control client disconnected");
            }
            return Ok(());
        }
    }
}

/// Replies kept for one write at most (a pipelining client's are written
/// each time this much is waiting).
const OUT_BUFFER: usize = 8 * 1024;

/// Writes the replies waiting in `out`, if any, and empties it.
async fn send<S: AsyncWrite + Unpin>(stream: &mut S, out: &mut Vec<u8>) -> io::Result<()> {
    if !out.is_empty() {
        stream.write_all(out).await?;
        out.clear();
    }
    Ok(())
}

/// A connection registered with the reactor for read readiness only, as
/// long as its client reads its replies.
///
/// A reactor registration for both directions (what `tokio::net::UnixStream`
/// does) costs a wake-up of this process every time the client reads a
/// reply and frees socket buffer space, and of the client every time we read
/// a request: on a busy proxy, one needless event per request on each side.
/// A reply is a few bytes and is written straight away; only when the
/// socket buffer is full (a client that does not read) is the connection
/// registered for write readiness too, and it stays so.
pub struct ReadInterestStream {
    io: Option<AsyncFd<Arc<StdUnixStream>>>,
    writable: bool,
    /// Read into, then copied out: the caller's buffer is uninitialised
    /// memory, and zeroing it on every read would cost more than the copy.
    scratch: Box<[u8]>,
}

impl ReadInterestStream {
    /// Re-registers an accepted connection for read readiness only.
    pub fn new(stream: tokio::net::UnixStream) -> io::Result<Self> {
        let std = stream.into_std()?;
        std.set_nonblocking(true)?;
        Ok(ReadInterestStream {
            io: Some(register(Arc::new(std), Interest::READABLE)?),
            writable: false,
            scratch: vec![0; 8 * 1024].into_boxed_slice(),
        })
    }

    fn io(&self) -> io::Result<&AsyncFd<Arc<StdUnixStream>>> {
        self.io.as_ref().ok_or_else(lost_registration)
    }

    /// The socket, for the server to end its reading at shutdown.
    fn socket(&self) -> Weak<StdUnixStream> {
        self.io
            .as_ref()
            .map_or_else(Weak::new, |io| Arc::downgrade(io.get_ref()))
    }

    /// From now on, also wait for write readiness.
    fn register_writable(&mut self) -> io::Result<()> {
        debug!("A call_control client is not reading its replies: waiting until it does");
        let io = self.io.take().ok_or_else(lost_registration)?;
        let std = io.into_inner();
        self.io = Some(register(std, Interest::READABLE | Interest::WRITABLE)?);
        self.writable = true;
        Ok(())
    }
}

/// A failed re-registration left the connection without one.
fn lost_registration() -> io::Error {
    io::Error::other("connection lost its registration")
}

/// Registers a connection with the reactor.
#[allow(unsafe_code)]
fn register(
    stream: Arc<StdUnixStream>,
    interest: Interest,
) -> io::Result<AsyncFd<Arc<StdUnixStream>>> {
    // SAFETY: the `UnixStream` owns its file descriptor, and it is neither
    // closed nor replaced while registered: it moves into the `AsyncFd` and
    // comes out only through `into_inner`, which deregisters it first. The
    // other holders of the `Arc` (the server, briefly, at shutdown) only
    // call `shutdown(2)` on it, which does not close the descriptor, and
    // it is closed only when the last of them lets go.
    unsafe { AsyncFd::register_with_interest(stream, interest) }.map_err(io::Error::from)
}

impl AsyncRead for ReadInterestStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let io = this.io.as_ref().ok_or_else(lost_registration)?;
        let want = buf.remaining().min(this.scratch.len());
        let scratch = &mut this.scratch[..want];
        loop {
            let mut guard = ready!(io.poll_read_ready(cx))?;
            match guard.try_io(|s| (&**s.get_ref()).read(scratch)) {
                Ok(Ok(n)) => {
                    // A short read drained the socket: wait for the next
                    // event rather than find out with one more read.
                    if n > 0 && n < want {
                        guard.clear_ready();
                    }
                    buf.put_slice(&scratch[..n]);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for ReadInterestStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            if self.writable {
                let io = self.io()?;
                let mut guard = ready!(io.poll_write_ready(cx))?;
                match guard.try_io(|s| (&**s.get_ref()).write(data)) {
                    Ok(r) => return Poll::Ready(r),
                    Err(_would_block) => continue,
                }
            }
            match (&**self.io()?.get_ref()).write(data) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.register_writable()?,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                r => return Poll::Ready(r),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.io()?.get_ref().shutdown(std::net::Shutdown::Write))
    }
}

fn call_id_of(request: &Request) -> CallId {
    match request {
        Request::Init(r) => r.call_id.clone(),
        Request::Start(r) => r.call_id.clone(),
        Request::Stop { call_id } | Request::Show { call_id } | Request::Terminate { call_id } => {
            call_id.clone()
        }
        Request::List { .. } | Request::Page(_) => CallId::new("-"),
    }
}

/// Rows per engine request when the session list is streamed.
const LIST_PAGE: usize = 1000;

/// Writes the `debug` / `show: sessions` reply, byte for byte the same as
/// [`write_reply`] of the whole list, fetching it from the engine a page at a
/// time (cursor on `(created, call_id)`) and writing each page before asking
/// for the next. The inner `Err` is the engine stopping, with whether
/// nothing was written yet.
async fn write_list_paged<W>(
    stream: &mut W,
    handle: &Handle,
    user: Option<String>,
) -> io::Result<Result<(), (DriverError, bool)>>
where
    W: AsyncWrite + Unpin,
{
    let mut query = ListQuery {
        user,
        ..ListQuery::first(LIST_PAGE)
    };
    let mut first = true;
    let mut out = Vec::new();
    loop {
        let page = match handle.page(query.clone()).await {
            Ok(p) => p,
            Err(e) => return Ok(Err((e, first))),
        };
        out.clear();
        debug_cmd::write_list_rows(&page.sessions, first, &mut out);
        first = first && page.sessions.is_empty();
        match page.sessions.last() {
            Some(last) if page.sessions.len() >= LIST_PAGE => {
                query = query.next_after(last);
                stream.write_all(&out).await?;
                // Let the runtime poll its sockets before the next page: on
                // a current-thread runtime this task and the engine's could
                // otherwise keep each other ready for many pages while an
                // `init` waits unread.
                tokio::task::yield_now().await;
            }
            _ => {
                debug_cmd::write_list_end(&mut out);
                stream.write_all(&out).await?;
                return Ok(Ok(()));
            }
        }
    }
}
