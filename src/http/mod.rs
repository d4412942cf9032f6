//! The HTTP front of the service: a tiny_http server shared by `http_threads` named threads,
//! each with its own database connection. The only module (with the simulator) that knows
//! tiny_http.

mod body;
pub mod reply;
pub mod routes;

use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use log::{error, info};

use crate::auth::Authenticator;
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;
use crate::store::{Database, Store, StoreError};
use reply::{ApiError, Reply};
use routes::{BodySource, Head};

/// How often a handler thread looks at the shutdown flag while no request comes.
const ACCEPT_TICK: Duration = Duration::from_millis(200);

/// tiny_http reads bodies up to this size (without `Expect: 100-continue`) before handing the
/// request over; larger ones stay on the socket.
const BUFFERED_BY_TINY_HTTP: u64 = 1024;
/// When a request is dropped with its body unread, tiny_http allocates the whole remainder at
/// once and reads it. Up to this many bytes, that is done on a drainer thread.
const MAX_DRAIN: u64 = 16 << 20;
/// Drainer threads at once; past that, the handler drains itself.
const MAX_DRAINERS: usize = 64;
/// One response in this many asks its client to close the connection (see [`KeepAlive`]).
const CLOSE_EVERY: u64 = 1000;

/// What every handler thread shares.
pub struct App {
    pub auth: Authenticator,
    /// Open connections past which a request gets a fast 503.
    pub max_connections: usize,
    pub connections: Connections,
    /// Which responses end their keep-alive connection.
    pub keep_alive: KeepAlive,
    pub wakeups: Sender<String>,
    pub metrics: Arc<Metrics>,
    pub max_body_bytes: usize,
    /// The address listened on, for links when a request has no usable `Host`.
    pub listen: String,
}

/// A request's body, remembering whether the handler started reading it.
struct Body<'a> {
    request: &'a mut tiny_http::Request,
    touched: bool,
}

impl BodySource for Body<'_> {
    fn reader(&mut self) -> &mut dyn std::io::Read {
        self.touched = true;
        self.request.as_reader()
    }
}

/// Drainer threads running now.
static DRAINERS: AtomicUsize = AtomicUsize::new(0);

/// Open connections, estimated. tiny_http 0.12 runs one thread per connection but its
/// `num_connections()` is unimplemented (it panics), so the estimate is the process's thread
/// count above what it was when the server started, read from /proc at most every 100 ms.
pub struct Connections {
    baseline: AtomicUsize,
    sample: std::sync::Mutex<Option<(Instant, usize)>>,
}

/// When to end a keep-alive connection: one response in [`CLOSE_EVERY`] asks its client to
/// close. tiny_http 0.12 serves each connection as one task of a thread pool whose `spawn`
/// counts idle threads racily: in a burst of new connections, some are queued with no
/// thread and wait until a served connection ends, which a busy keep-alive client never
/// does. Ending a connection now and then frees a thread within milliseconds under load, as
/// nginx's `keepalive_requests` does. (Public for the benchmark's bare responder, which
/// must serve connections the same way.)
#[derive(Default)]
pub struct KeepAlive {
    responses: AtomicU64,
}

impl KeepAlive {
    /// Counts a response; true if it is to ask the client to close.
    pub fn close_due(&self) -> bool {
        self.responses.fetch_add(1, Ordering::Relaxed) % CLOSE_EVERY == CLOSE_EVERY - 1
    }
}

impl Connections {
    /// Takes the baseline: called once every thread of the service runs.
    fn set_baseline(&self) {
        self.baseline
            .store(process_threads().unwrap_or(0), Ordering::SeqCst);
    }

    pub fn open(&self) -> usize {
        let mut sample = self.sample.lock().unwrap_or_else(|e| e.into_inner());
        match *sample {
            Some((at, n)) if at.elapsed() < Duration::from_millis(100) => n,
            _ => {
                let baseline = self.baseline.load(Ordering::SeqCst);
                let n = process_threads()
                    .unwrap_or(baseline)
                    .saturating_sub(baseline);
                *sample = Some((Instant::now(), n));
                n
            }
        }
    }
}

impl Default for Connections {
    fn default() -> Connections {
        Connections {
            baseline: AtomicUsize::new(usize::MAX),
            sample: std::sync::Mutex::new(None),
        }
    }
}

/// The `Threads:` line of /proc/self/status.
fn process_threads() -> Option<usize> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
}

/// The running HTTP server.
pub struct HttpServer {
    server: Arc<tiny_http::Server>,
    threads: Vec<JoinHandle<()>>,
    /// The TCP address, or None on a Unix socket.
    addr: Option<SocketAddr>,
}

/// Binds `host:port`, or `unix:/path` (a stale socket file is replaced; the new one is made
/// mode 0660, for a front such as nginx in the same group).
fn bind(listen: &str) -> Result<tiny_http::Server, String> {
    let Some(path) = listen.strip_prefix("unix:") else {
        return tiny_http::Server::http(listen).map_err(|e| e.to_string());
    };
    let path = std::path::Path::new(path);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{FileTypeExt, PermissionsExt};
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if !meta.file_type().is_socket() {
                return Err(format!("{} exists and is not a socket", path.display()));
            }
            std::fs::remove_file(path).map_err(|e| e.to_string())?;
        }
        let server = tiny_http::Server::http_unix(path).map_err(|e| e.to_string())?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
            .map_err(|e| e.to_string())?;
        Ok(server)
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        Err("Unix sockets are not available here".into())
    }
}

impl HttpServer {
    /// Binds `listen` and starts `threads` handler threads.
    pub fn start(
        listen: &str,
        threads: usize,
        database: &Database,
        app: Arc<App>,
        shutdown: Arc<Shutdown>,
    ) -> Result<HttpServer, StartError> {
        let server = bind(listen).map_err(|e| StartError::Bind(listen.to_string(), e))?;
        let addr = server.server_addr().to_ip();
        let server = Arc::new(server);
        let mut handles = Vec::with_capacity(threads);
        for n in 0..threads {
            let mut store = database.open()?;
            let (server, app, shutdown) = (server.clone(), app.clone(), shutdown.clone());
            let handle = std::thread::Builder::new()
                .name(format!("http-{n}"))
                .spawn(move || {
                    while !shutdown.is_triggered() {
                        match server.recv_timeout(ACCEPT_TICK) {
                            Ok(Some(request)) => serve_one(&app, &mut store, request),
                            Ok(None) => {}
                            Err(e) => {
                                error!("accepting a request: {e}");
                                shutdown.sleep(ACCEPT_TICK);
                            }
                        }
                    }
                    // Requests already read when shutdown came are answered, not dropped.
                    while let Ok(Some(request)) = server.try_recv() {
                        serve_one(&app, &mut store, request);
                    }
                })
                .map_err(StoreError::from)?;
            handles.push(handle);
        }
        app.connections.set_baseline();
        Ok(HttpServer {
            server,
            threads: handles,
            addr,
        })
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.addr
    }

    /// Waits for the handler threads to stop (after shutdown was triggered).
    pub fn join(self) {
        self.server.unblock();
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// Why the server could not start.
#[derive(Debug)]
pub enum StartError {
    /// The address could not be bound.
    Bind(String, String),
    /// A handler's database connection could not be opened.
    Store(StoreError),
}

impl From<StoreError> for StartError {
    fn from(e: StoreError) -> StartError {
        StartError::Store(e)
    }
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Bind(addr, why) => write!(f, "cannot listen on {addr}: {why}"),
            StartError::Store(e) => write!(f, "{e}"),
        }
    }
}

/// A client-chosen request id is echoed if it is short and plain; otherwise a new one is made.
fn request_id(head: &Head) -> String {
    match head.header("x-request-id") {
        Some(id)
            if !id.is_empty()
                && id.len() <= 128
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b)) =>
        {
            id.to_string()
        }
        _ => new_request_id(),
    }
}

/// A new version-4 uuid for a request. Request ids must be unique, not secret, so they come
/// from a per-thread SplitMix64 stream seeded once from the OS, not from a `getrandom` call
/// per request.
fn new_request_id() -> String {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new(uuid::Uuid::new_v4().as_u64_pair().0);
    }
    fn next(state: &Cell<u64>) -> u64 {
        let s = state.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        state.set(s);
        let z = (s ^ (s >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        let z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    let (hi, lo) = STATE.with(|s| (next(s), next(s)));
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&hi.to_be_bytes());
    bytes[8..].copy_from_slice(&lo.to_be_bytes());
    uuid::Builder::from_random_bytes(bytes)
        .into_uuid()
        .to_string()
}

fn serve_one(app: &App, store: &mut Store, mut request: tiny_http::Request) {
    let started = Instant::now();
    let headers = request
        .headers()
        .iter()
        .map(|h| {
            (
                h.field.as_str().as_str().to_string(),
                h.value.as_str().to_string(),
            )
        })
        .collect();
    let head = Head::new(request.method().as_str(), request.url(), headers);
    let id = request_id(&head);
    let mut body = Body {
        request: &mut request,
        touched: false,
    };
    let overloaded = app.connections.open() > app.max_connections;
    let (reply, route, user) = if overloaded {
        let e = ApiError::Unavailable("Too many connections; try again later.".into());
        (e.reply(), "overload", None)
    } else {
        match catch_unwind(AssertUnwindSafe(|| {
            routes::handle(app, store, &head, &mut body)
        })) {
            Ok(h) => (h.reply, h.route, h.user),
            Err(_) => {
                error!(
                    "request {id}: {} {}: handler panicked",
                    head.method, head.path
                );
                (ApiError::Internal.reply(), "unknown", None)
            }
        }
    };
    let touched = body.touched;
    let status = reply.status;
    app.metrics.request(route, status, started.elapsed());
    info!(
        "{} {} {} {:.1}ms id={} route={} user={}",
        head.method,
        head.path,
        status,
        started.elapsed().as_secs_f64() * 1000.0,
        id,
        route,
        user.as_deref().unwrap_or("-")
    );
    let reply = reply.with_header("X-Request-Id", id);
    match unread_body(&head, touched) {
        // An overloaded service also sheds the connection of a client it turns away.
        0 if overloaded || app.keep_alive.close_due() => {
            respond_closing(request, &reply, head.method == "HEAD")
        }
        0 => respond(request, into_response(reply)),
        n if n <= MAX_DRAIN => {
            let response = into_response(reply);
            // Dropping the request drains the body: off this thread, so that a client that
            // declares a body and never sends it holds a drainer, not a handler.
            if DRAINERS.fetch_add(1, Ordering::SeqCst) < MAX_DRAINERS {
                let spawned = std::thread::Builder::new()
                    .name("drain".into())
                    .spawn(move || {
                        respond(request, response);
                        DRAINERS.fetch_sub(1, Ordering::SeqCst);
                    });
                if let Err(e) = spawned {
                    DRAINERS.fetch_sub(1, Ordering::SeqCst);
                    error!("starting a drainer: {e}");
                }
            } else {
                DRAINERS.fetch_sub(1, Ordering::SeqCst);
                respond(request, response);
            }
        }
        n => {
            // tiny_http would allocate all n bytes at once to drain them (and abort the
            // process when it cannot): the request is abandoned instead, unanswered. Its
            // connection stays open until the client goes. The nginx front refuses such
            // requests before they get here.
            log::warn!(
                "{} {}: abandoning a connection that declared a {n}-byte body",
                head.method,
                head.path
            );
            app.metrics.abandoned_connection();
            drop(reply);
            std::mem::forget(request);
        }
    }
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

/// Writes a response; a panic while tiny_http drains what is left of the request (it panics
/// on a length it cannot even allocate) is contained.
fn respond(request: tiny_http::Request, response: tiny_http::Response<std::io::Cursor<Vec<u8>>>) {
    match catch_unwind(AssertUnwindSafe(|| request.respond(response))) {
        Ok(Ok(())) => {}
        Ok(Err(e)) => log::debug!("writing a response: {e}"),
        Err(_) => error!("writing a response: tiny_http panicked while draining a body"),
    }
}

/// Writes a response with `Connection: close`. tiny_http drops that header from a
/// `Response`, so this one is written by hand on the request's raw writer, with the headers
/// tiny_http would add (`Date`, `Content-Length`). The client closes the connection on
/// reading it; one that sends another request anyway is still served.
pub fn respond_closing(request: tiny_http::Request, reply: &Reply, head_only: bool) {
    use std::io::Write;
    let reason = tiny_http::StatusCode(reply.status).default_reason_phrase();
    let mut out = Vec::with_capacity(256 + reply.body.len());
    let _ = write!(out, "HTTP/1.1 {} {reason}\r\n", reply.status);
    for (name, value) in &reply.headers {
        // As in into_response: a value that cannot be a header is left out.
        if value
            .bytes()
            .all(|b| b == b'\t' || (b' '..=b'~').contains(&b))
        {
            let _ = write!(out, "{name}: {value}\r\n");
        }
    }
    let _ = write!(
        out,
        "Date: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        httpdate::fmt_http_date(std::time::SystemTime::now()),
        reply.body.len()
    );
    if !head_only {
        out.extend_from_slice(&reply.body);
    }
    // As in respond: a panic while tiny_http drains the rest of the request is contained.
    let written = catch_unwind(AssertUnwindSafe(move || {
        let mut writer = request.into_writer();
        writer.write_all(&out).and_then(|()| writer.flush())
    }));
    match written {
        Ok(Ok(())) => {}
        Ok(Err(e)) => log::debug!("writing a response: {e}"),
        Err(_) => error!("writing a response: tiny_http panicked while draining a body"),
    }
}

fn into_response(reply: Reply) -> tiny_http::Response<std::io::Cursor<Vec<u8>>> {
    let mut response = tiny_http::Response::from_data(reply.body).with_status_code(reply.status);
    for (name, value) in reply.headers {
        // Every name is a constant and every value is checked or made here; a value that still
        // cannot be a header is left out rather than failing the whole reply.
        if let Ok(h) = tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes()) {
            response.add_header(h);
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_distinct_v4_uuids() {
        let threads: Vec<_> = (0..4)
            .map(|_| std::thread::spawn(|| (0..1000).map(|_| new_request_id()).collect::<Vec<_>>()))
            .collect();
        let ids: Vec<String> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        let unique: std::collections::HashSet<&String> = ids.iter().collect();
        assert_eq!(unique.len(), 4000);
        for id in &ids {
            let u = uuid::Uuid::parse_str(id).unwrap();
            assert_eq!(u.get_version_num(), 4, "{id}");
            assert_eq!(u.get_variant(), uuid::Variant::RFC4122, "{id}");
        }
    }

    #[test]
    fn sane_client_ids_are_echoed() {
        let head = |v: &str| Head::new("GET", "/", vec![("X-Request-Id".into(), v.into())]);
        assert_eq!(request_id(&head("abc-123_x.y:z")), "abc-123_x.y:z");
        for bad in ["", "a b", "x\u{e9}", &"a".repeat(129)] {
            assert_ne!(request_id(&head(bad)), bad);
        }
    }
}
