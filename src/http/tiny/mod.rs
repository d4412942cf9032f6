//! tiny_http 0.12, quarantined: the only file of the service that names it. The rest of the
//! HTTP side sees a [`Server`] that hands out [`Exchange`]s: a checked request head, a body to
//! read once the head is accepted, and a way to answer. Every behaviour of tiny_http 0.12
//! that the service works around is here, each with its reason:
//!
//! - `num_connections()` panics (unimplemented): open connections are counted from the
//!   kernel's socket tables instead, per server ([`Connections`]).
//! - It reads a request's whole head with no limit: a head past [`MAX_HEAD_BYTES`] is
//!   answered 431 and its connection closed (the memory was already taken by then).
//! - Dropping a request with its body unread makes it allocate the whole remaining
//!   `Content-Length` at once to drain it (10^12 aborts the process): small remainders are
//!   drained on a bounded set of drainer threads, larger ones are abandoned.
//! - Its pool counts idle threads racily, so a new connection can wait behind a busy
//!   keep-alive one: one response in [`CLOSE_EVERY`] ends its connection.
//! - It writes a response's head and a body over about a kilobyte in two writes on a socket
//!   with Nagle's algorithm on: the body then waits 40 ms for the client's delayed ACK. Every
//!   response is written by hand, whole, in one write (which also lets it say `Connection:
//!   close`, a header tiny_http drops).
//! - It cannot close a connection from the server's side, and reads on after an answer that
//!   says `Connection: close`: the peer is remembered, and nothing more is answered on that
//!   connection but a 400 (`write.rs`).
//! - It would send `100 Continue` to an HTTP/1.0 client: such a request is refused (417).
//! - Its TLS feature is built on a vulnerable rustls: it is never enabled (Cargo.toml).

mod connections;
mod write;

use std::io::Read;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::reply::Reply;
use super::request::{loggable, BodySource, Head, MAX_LOGGED, MAX_LOGGED_METHOD};
use connections::{Connections, Source};
pub use write::CLOSED_CONNECTION;
use write::{into_response, respond, write_whole, Ending};

/// Largest request head (request line and headers) answered normally; nginx's default
/// `large_client_header_buffers` is as big.
pub const MAX_HEAD_BYTES: usize = 8 * 1024;
/// tiny_http reads bodies up to this size (without `Expect: 100-continue`) before handing the
/// request over; larger ones stay on the socket.
const BUFFERED_BY_TINY_HTTP: u64 = 1024;
/// Up to this many unread body bytes, a request is drained (on a drainer thread) rather than
/// abandoned.
const MAX_DRAIN: u64 = 16 << 20;
/// Drainer threads of one server at once; past that, the handler drains itself.
/// As many as the default connection cap lets clients hold; past that, a request with a
/// body left unread is abandoned rather than drained on a handler, which would block it.
const MAX_DRAINERS: usize = 1024;
/// One response in this many asks its client to close the connection.
const CLOSE_EVERY: u64 = 1000;
/// Abandoned connections a server holds before the service restarts to let them go.
pub const MAX_ABANDONED: usize = 256;

/// A listening tiny_http server and what the service keeps about it.
pub struct Server {
    inner: tiny_http::Server,
    addr: Option<SocketAddr>,
    connections: Connections,
    /// Drainer threads running now.
    drainers: Arc<AtomicUsize>,
    /// Responses written, for the keep-alive policy.
    responses: AtomicU64,
    /// Connections abandoned (see [`abandon`]): held, with their thread, until the process
    /// ends.
    abandoned: AtomicUsize,
}

/// How a response left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// Written (or the client was gone).
    Written,
    /// Not written: the request declared a body too large to drain, and its connection is
    /// held until the process ends; `held` such connections are now.
    Abandoned { held: usize },
}

impl Server {
    /// Binds `host:port`, or `unix:/path` (a stale socket file is replaced; the new one is
    /// made mode 0660, for a front such as nginx in the same group).
    pub fn bind(listen: &str) -> Result<Server, BindError> {
        let (inner, source) = match listen.strip_prefix("unix:") {
            None => {
                let inner = tiny_http::Server::http(listen)?;
                let port = inner.server_addr().to_ip().map(|a| a.port());
                (inner, port.map(Source::Tcp))
            }
            Some(path) => (bind_unix(path)?, Some(Source::Unix(path.to_string()))),
        };
        let connections = Connections::start(source);
        if let Some(why) = connections.cannot_count() {
            log::warn!("max_connections is not enforced on {listen}: {why}");
        }
        Ok(Server {
            addr: inner.server_addr().to_ip(),
            inner,
            connections,
            drainers: Arc::default(),
            responses: AtomicU64::new(0),
            abandoned: AtomicUsize::new(0),
        })
    }

    /// The TCP address (the real port when bound to port 0), or None on a Unix socket.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.addr
    }

    /// The next request, waiting at most `timeout`.
    pub fn recv(self: &Arc<Self>, timeout: Duration) -> std::io::Result<Option<Exchange>> {
        Ok(self
            .inner
            .recv_timeout(timeout)?
            .map(|r| Exchange::new(self.clone(), r)))
    }

    /// A request already read, if any.
    pub fn try_recv(self: &Arc<Self>) -> Option<Exchange> {
        self.inner
            .try_recv()
            .ok()
            .flatten()
            .map(|r| Exchange::new(self.clone(), r))
    }

    /// Wakes every thread waiting in [`Server::recv`].
    pub fn unblock(&self) {
        self.inner.unblock();
    }

    /// Connections open to this server now (counted at most 250 ms ago), or None where they
    /// cannot be counted. Abandoned connections are left out: they stay in the kernel's table
    /// for good, and counting them would turn everybody away once enough were held.
    pub fn open_connections(&self) -> Option<usize> {
        let abandoned = self.abandoned.load(Ordering::Relaxed);
        self.connections.open().map(|n| n.saturating_sub(abandoned))
    }

    /// Leaves a request unanswered, its body unread and its connection open: the last resort
    /// where draining would block a thread or abort the process. tiny_http 0.12 allocates a
    /// request's whole unread `Content-Length` when the request is dropped (and so when its
    /// body is read to an early end, or its connection shut): past the machine's memory that
    /// aborts the process. So the request is never dropped, and its connection and
    /// tiny_http's thread for it are held until the process ends. They are counted, and
    /// [`MAX_ABANDONED`] of them make the service restart (see `http/mod.rs`).
    fn abandon(&self, request: tiny_http::Request, head: &Head, why: &str) -> Sent {
        let held = self.abandoned.fetch_add(1, Ordering::Relaxed) + 1;
        log::warn!(
            "{} {}: abandoning the connection ({held} held): {why}",
            loggable(&head.method, MAX_LOGGED_METHOD),
            loggable(&head.path, MAX_LOGGED)
        );
        std::mem::forget(request);
        Sent::Abandoned { held }
    }

    /// Counts a response; true if it is to ask the client to close. Ending a connection now
    /// and then frees a pool thread within milliseconds under load, as nginx's
    /// `keepalive_requests` does.
    fn close_due(&self) -> bool {
        self.responses.fetch_add(1, Ordering::Relaxed) % CLOSE_EVERY == CLOSE_EVERY - 1
    }
}

/// Why an address could not be listened on: tiny_http's error, or the socket file's.
pub type BindError = Box<dyn std::error::Error + Send + Sync + 'static>;

#[cfg(unix)]
fn bind_unix(path: &str) -> Result<tiny_http::Server, BindError> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let path = std::path::Path::new(path);
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(format!("{} exists and is not a socket", path.display()).into());
        }
        std::fs::remove_file(path)?;
    }
    let server = tiny_http::Server::http_unix(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    Ok(server)
}

#[cfg(not(unix))]
fn bind_unix(_: &str) -> Result<tiny_http::Server, BindError> {
    Err("Unix sockets are not available here".into())
}

/// One request and its answer.
pub struct Exchange {
    server: Arc<Server>,
    request: tiny_http::Request,
    /// The client's address (None on a Unix socket).
    peer: Option<SocketAddr>,
    head: Head,
    head_bytes: usize,
    /// The handler started reading the body.
    touched: bool,
}

impl Exchange {
    fn new(server: Arc<Server>, request: tiny_http::Request) -> Exchange {
        // As sent, give or take whitespace: the request line, each header line, the blank line.
        let head_bytes = request.method().as_str().len()
            + request.url().len()
            + 12
            + request
                .headers()
                .iter()
                .map(|h| h.field.as_str().as_str().len() + h.value.as_str().len() + 4)
                .sum::<usize>()
            + 2;
        // A head over the limit is answered 431 from its method and a cut path: its headers
        // and the rest of its URL are not copied (tiny_http's own copy is freed with it).
        let head = if head_bytes > MAX_HEAD_BYTES {
            let url = request.url();
            let cut = url
                .char_indices()
                .nth(MAX_LOGGED + 1)
                .map_or(url.len(), |(i, _)| i);
            Head::new(request.method().as_str(), &url[..cut], Vec::new())
        } else {
            let headers = request
                .headers()
                .iter()
                .map(|h| (h.field.as_str().to_string(), h.value.to_string()))
                .collect();
            Head::new(request.method().as_str(), request.url(), headers)
        };
        let peer = request.remote_addr().copied();
        let mut head = head;
        head.client = client_address(peer, &head);
        Exchange {
            server,
            peer,
            request,
            head,
            head_bytes,
            touched: false,
        }
    }

    /// The request's head.
    pub fn head(&self) -> &Head {
        &self.head
    }

    /// The head, and the body to read once the head is accepted.
    pub fn parts(&mut self) -> (&Head, Body<'_>) {
        let body = Body {
            request: &mut self.request,
            touched: &mut self.touched,
        };
        (&self.head, body)
    }

    /// Connections open to this request's server now, or None where they cannot be counted.
    pub fn open_connections(&self) -> Option<usize> {
        self.server.open_connections()
    }

    /// Whether the client asks to switch protocols. The API has no upgrade, and tiny_http
    /// 0.12 hands such a request's socket over whole as its body (`Connection: upgrade`):
    /// a read would wait for the client, past any Content-Length.
    pub fn upgrade_requested(&self) -> bool {
        upgrade(&self.head)
    }

    /// What is wrong with how the request says its body is framed, if anything (RFC 9112
    /// §6.1, §6.3). tiny_http 0.12 decodes any Transfer-Encoding as chunked and then ignores
    /// Content-Length, and reads the first of two Content-Length values: what one reading
    /// leaves over would be read as the next request by another.
    pub fn framing_error(&self) -> Option<&'static str> {
        let head = &self.head;
        let te = head.header("transfer-encoding");
        let lengths: Vec<&str> = head
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .map(|(_, v)| v.trim())
            .collect();
        if te.is_some_and(|t| !t.trim().eq_ignore_ascii_case("chunked")) {
            Some("A Transfer-Encoding other than chunked is not accepted.")
        } else if lengths.iter().any(|l| l.parse::<u64>().is_err()) {
            // Where this body ends cannot be known: the connection cannot go on.
            Some("Content-Length is not a number.")
        } else if te.is_some() && !lengths.is_empty() {
            Some("Transfer-Encoding and Content-Length together are not accepted.")
        } else if lengths.windows(2).any(|w| w[0] != w[1]) {
            Some("Two different Content-Length values are not accepted.")
        } else {
            None
        }
    }

    /// Whether reading the body would wait on the client: a chunked body, or one tiny_http
    /// did not read with the head (over 1 KiB, or sent only after `100 Continue`).
    pub fn body_on_socket(&self) -> bool {
        self.head.header("transfer-encoding").is_some() || unread_body(&self.head, false) > 0
    }

    /// Whether this request came on a connection the service told to close. tiny_http 0.12
    /// cannot close a connection from the server's side and reads on: what comes after such
    /// an answer (the rest of an ambiguous body, say) is refused, not served.
    pub fn on_closed_connection(&self) -> bool {
        self.peer
            .is_some_and(|p| self.server.connections.was_told_to_close(&p))
    }

    /// Whether an HTTP/1.0 request expects `100 Continue`. tiny_http 0.12 would send one
    /// when the body is read, and an HTTP/1.0 client must get no 1xx answer (RFC 9110
    /// §15.2); it cannot be made to ignore the expectation instead.
    pub fn expects_continue_over_http_1_0(&self) -> bool {
        *self.request.http_version() == tiny_http::HTTPVersion(1, 0)
            && self.head.header("expect").is_some()
    }

    /// Whether the head is larger than [`MAX_HEAD_BYTES`].
    pub fn head_too_large(&self) -> bool {
        self.head_bytes > MAX_HEAD_BYTES
    }

    /// Writes `reply`, ending the connection if `close` (or if the keep-alive policy says
    /// so), and disposes of whatever body the handler left unread.
    pub fn respond(self, reply: Reply, close: bool) -> Sent {
        let Exchange {
            server,
            request,
            peer,
            head,
            touched,
            ..
        } = self;
        // An upgrade's body is the raw socket: never read, never drained; the connection ends
        // with the answer.
        let unread = if upgrade(&head) {
            0
        } else {
            unread_body(&head, touched)
        };
        match unread {
            0 => {
                let ending = if client_closes(&head, &request) {
                    Ending::ClientCloses
                } else if close || server.close_due() {
                    Ending::ServerCloses
                } else {
                    Ending::KeepAlive
                };
                let head_only = head.method == "HEAD";
                let guard = (&server.connections, peer);
                write_whole(request, &reply, head_only, ending, guard);
                Sent::Written
            }
            n if n <= MAX_DRAIN => {
                match drain_elsewhere(&server.drainers, request, into_response(reply)) {
                    None => Sent::Written,
                    Some(request) => server.abandon(request, &head, "every drainer is busy"),
                }
            }
            // tiny_http would allocate all n bytes at once to drain them (and abort the
            // process when it cannot). The nginx front refuses such requests before they
            // get here.
            n => server.abandon(request, &head, &format!("it declared a {n}-byte body")),
        }
    }
}

/// The body of an exchange, borrowed beside its head.
pub struct Body<'a> {
    request: &'a mut tiny_http::Request,
    touched: &'a mut bool,
}

impl BodySource for Body<'_> {
    fn reader(&mut self) -> &mut dyn Read {
        // tiny_http sends `100 Continue` here, when the body is first asked for.
        *self.touched = true;
        self.request.as_reader()
    }
}

/// Answers a request whose body is left unread, on a drainer thread: dropping the request
/// drains the body, so a client that declares a body and never sends it holds a drainer, not
/// a handler. The request comes back when every drainer is busy: no handler ever drains.
fn drain_elsewhere(
    drainers: &Arc<AtomicUsize>,
    request: tiny_http::Request,
    response: tiny_http::Response<std::io::Cursor<Vec<u8>>>,
) -> Option<tiny_http::Request> {
    if drainers.fetch_add(1, Ordering::SeqCst) >= MAX_DRAINERS {
        drainers.fetch_sub(1, Ordering::SeqCst);
        return Some(request);
    }
    let mine = drainers.clone();
    let spawned = std::thread::Builder::new()
        .name("drain".into())
        .spawn(move || {
            respond(request, response);
            mine.fetch_sub(1, Ordering::SeqCst);
        });
    // A thread that cannot start drops its request here, unanswered: the drain happens on
    // this thread, as it would have without drainers.
    if let Err(e) = spawned {
        drainers.fetch_sub(1, Ordering::SeqCst);
        log::error!("starting a drainer: {e}");
    }
    None
}

/// How many declared body bytes are still on the socket: those of a body tiny_http did not
/// buffer and the handler did not read.
fn unread_body(head: &Head, touched: bool) -> u64 {
    if touched || head.header("transfer-encoding").is_some() {
        return 0;
    }
    let declared = head
        .header("content-length")
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    let expects_continue = head
        .header("expect")
        .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
    if declared > BUFFERED_BY_TINY_HTTP || (expects_continue && declared > 0) {
        declared
    } else {
        0
    }
}

/// The client's address: the peer's, or, when the peer is the front (on loopback, or on the
/// Unix socket, where tiny_http 0.12 gives no peer), the one it says in `X-Real-IP`.
fn client_address(peer: Option<SocketAddr>, head: &Head) -> Option<std::net::IpAddr> {
    let front = peer.is_none_or(|p| p.ip().is_loopback());
    let said = head
        .header("x-real-ip")
        .and_then(|v| v.trim().parse::<std::net::IpAddr>().ok());
    match (front, said) {
        (true, Some(said)) => Some(said),
        _ => peer.map(|p| p.ip()),
    }
}

/// Whether `head` asks to switch protocols.
fn upgrade(head: &Head) -> bool {
    head.header("upgrade").is_some()
        || head
            .header("connection")
            .is_some_and(|c| c.to_ascii_lowercase().contains("upgrade"))
}

/// Whether tiny_http ends the connection after this request, as its client asked.
fn client_closes(head: &Head, request: &tiny_http::Request) -> bool {
    let connection = head.header("connection").map(str::to_ascii_lowercase);
    let http_1_0 = *request.http_version() == tiny_http::HTTPVersion(1, 0);
    match connection {
        Some(c) if c.contains("close") || c.contains("upgrade") => true,
        Some(c) => http_1_0 && !c.contains("keep-alive"),
        None => http_1_0,
    }
}
