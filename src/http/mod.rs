//! The HTTP front of the service: `http_threads` named threads share one server, each with
//! its own database connection, and answer one request at a time: the head is checked, the
//! router picks a handler, the reply is written. The HTTP server library, and every
//! workaround for it, is known only to `tiny/`.

mod action_call;
mod body;
mod create;
mod reads;
pub mod reply;
mod request;
mod routes;
mod tiny;

use std::fmt;
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use log::{error, info};

use crate::auth::Authenticator;
use crate::eta::Eta;
use crate::metrics::Metrics;
use crate::okeanos::Client;
use crate::shutdown::Shutdown;
use crate::store::{Database, Store, StoreError};
use reply::ApiError;
use request::{loggable, Head, MAX_LOGGED, MAX_LOGGED_METHOD};
use routes::Handled;
use tiny::{Exchange, Sent};

/// How often a handler thread looks at the shutdown flag while no request comes.
const ACCEPT_TICK: Duration = Duration::from_millis(200);

pub use create::{ImageChoice, Remembered};

/// What every handler thread shares.
pub struct App {
    pub auth: Authenticator,
    /// ~okeanos, for the checks of a create and the create form's reads.
    pub client: Client,
    /// The image a create makes its VMs of.
    pub image: ImageChoice,
    /// What the create calls remember of ~okeanos for a moment.
    pub remembered: Remembered,
    /// Open connections past which a request gets a fast 503.
    pub max_connections: usize,
    /// Wakes a worker when a new action is committed.
    pub wakeups: Sender<()>,
    pub metrics: Arc<Metrics>,
    /// What `Retry-After` says to a client following an action.
    pub eta: Arc<Eta>,
    pub max_body_bytes: usize,
    /// The address listened on, for links when a request has no usable `Host`.
    pub listen: String,
}

/// The running HTTP server.
pub struct HttpServer {
    server: Arc<tiny::Server>,
    threads: Vec<JoinHandle<()>>,
}

/// Why the server could not start.
#[derive(Debug)]
pub enum StartError {
    /// The address could not be bound.
    Bind {
        listen: String,
        source: tiny::BindError,
    },
    /// A handler's database connection could not be opened.
    Store(StoreError),
    /// A handler thread could not be started.
    Thread {
        thread: String,
        source: std::io::Error,
    },
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::Bind { listen, .. } => write!(f, "cannot listen on {listen}"),
            StartError::Store(_) => write!(f, "cannot open a handler's database connection"),
            StartError::Thread { thread, .. } => write!(f, "cannot start thread {thread}"),
        }
    }
}

impl std::error::Error for StartError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StartError::Bind { source, .. } => Some(source.as_ref()),
            StartError::Store(e) => Some(e),
            StartError::Thread { source, .. } => Some(source),
        }
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
        let server = tiny::Server::bind(listen).map_err(|source| StartError::Bind {
            listen: listen.to_string(),
            source,
        })?;
        let server = Arc::new(server);
        let shared = Arc::new(Handlers {
            app,
            database: database.clone(),
            shutdown: shutdown.clone(),
            body_threads: AtomicUsize::new(0),
        });
        let mut handles = Vec::with_capacity(threads);
        for n in 0..threads {
            let mut store = database.open().map_err(StartError::Store)?;
            let (server, shared, shutdown) = (server.clone(), shared.clone(), shutdown.clone());
            let name = format!("http-{n}");
            let handle = std::thread::Builder::new()
                .name(name.clone())
                .spawn(move || {
                    while !shutdown.is_triggered() {
                        match server.recv(ACCEPT_TICK) {
                            Ok(Some(exchange)) => serve_one(&shared, &mut store, exchange),
                            Ok(None) => {}
                            Err(e) => {
                                error!("accepting a request: {e}");
                                shutdown.sleep(ACCEPT_TICK);
                            }
                        }
                    }
                    // Requests already read when shutdown came are answered, not dropped.
                    while let Some(exchange) = server.try_recv() {
                        serve_one(&shared, &mut store, exchange);
                    }
                })
                .map_err(|source| StartError::Thread {
                    thread: name,
                    source,
                })?;
            handles.push(handle);
        }
        Ok(HttpServer {
            server,
            threads: handles,
        })
    }

    /// The TCP address (the real port when configured with port 0), or None on a Unix socket.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.server.local_addr()
    }

    /// Waits for the handler threads to stop (after shutdown was triggered).
    pub fn join(self) {
        self.server.unblock();
        for t in self.threads {
            let _ = t.join();
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

/// A new version-4 uuid for a request. Request ids must be unique, not secret: they come from
/// fastrand's per-thread generator (seeded once from the OS), not from a `getrandom` call
/// per request.
fn new_request_id() -> String {
    uuid::Builder::from_random_bytes(fastrand::u128(..).to_le_bytes())
        .into_uuid()
        .to_string()
}

/// What the handler threads and the body threads share.
struct Handlers {
    app: Arc<App>,
    /// For the body threads' own connections.
    database: Database,
    shutdown: Arc<Shutdown>,
    /// Body threads running now.
    body_threads: AtomicUsize,
}

/// Requests waiting for their bodies on threads of their own, at most; past that, 503.
const MAX_BODY_THREADS: usize = 64;

/// Answers one request. A request whose body is still on the socket is handed to a body
/// thread, so that no handler ever waits for a client: a client that sends a head and then
/// nothing holds a body thread, not one of the `http_threads`.
fn serve_one(shared: &Arc<Handlers>, store: &mut Store, exchange: Exchange) {
    let started = Instant::now();
    let id = request_id(exchange.head());
    if let Some(refused) = refusal(&shared.app, &exchange) {
        // Refused before routing, the connection ends: a head too large is not worth
        // reading another of, and an overloaded service sheds the connection too.
        return finish(shared, exchange, started, &id, refused, true);
    }
    if exchange.body_on_socket() {
        return hand_off(shared, exchange, started, id);
    }
    route_and_finish(shared, store, exchange, started, &id);
}

/// The answer to a request refused on its head alone, if it is.
fn refusal(app: &App, exchange: &Exchange) -> Option<Handled> {
    let refused = if exchange.on_closed_connection() {
        (
            ApiError::BadRequest(tiny::CLOSED_CONNECTION.into()),
            "closed",
        )
    } else if exchange.head_too_large() {
        (ApiError::HeadTooLarge(tiny::MAX_HEAD_BYTES), "too_large")
    } else if exchange.upgrade_requested() {
        let e = ApiError::BadRequest("This API has no protocol upgrade.".into());
        (e, "upgrade")
    } else if let Some(why) = exchange.framing_error() {
        (ApiError::BadRequest(why.into()), "framing")
    } else if exchange.expects_continue_over_http_1_0() {
        let e = ApiError::ExpectationFailed(
            "An HTTP/1.0 request cannot expect 100 Continue; send it without Expect.".into(),
        );
        (e, "expect")
    } else if overloaded(app, exchange) {
        let e = ApiError::Unavailable("Too many connections; try again later.".into());
        (e, "overload")
    } else {
        return None;
    };
    Some(Handled::unrouted(refused.0.reply(), refused.1))
}

fn route_and_finish(
    shared: &Handlers,
    store: &mut Store,
    mut exchange: Exchange,
    started: Instant,
    id: &str,
) {
    let (head, mut body) = exchange.parts();
    let served = match catch_unwind(AssertUnwindSafe(|| {
        routes::handle(&shared.app, store, head, &mut body)
    })) {
        Ok(handled) => handled,
        Err(_) => {
            error!(
                "request {id}: {} {}: handler panicked",
                loggable(&head.method, MAX_LOGGED_METHOD),
                loggable(&head.path, MAX_LOGGED)
            );
            Handled::unrouted(ApiError::Internal.reply(), "unknown")
        }
    };
    finish(shared, exchange, started, id, served, false);
}

/// Runs a request whose body is still on the socket on a body thread of its own, with its
/// own database connection; past [`MAX_BODY_THREADS`], answers 503 at once.
fn hand_off(shared: &Arc<Handlers>, exchange: Exchange, started: Instant, id: String) {
    let busy = |exchange: Exchange| {
        let e = ApiError::Unavailable(
            "Too many requests are waiting for their bodies; try again later.".into(),
        );
        finish(
            shared,
            exchange,
            started,
            &id,
            Handled::unrouted(e.reply(), "body_wait"),
            true,
        );
    };
    if shared.body_threads.fetch_add(1, Ordering::SeqCst) >= MAX_BODY_THREADS {
        shared.body_threads.fetch_sub(1, Ordering::SeqCst);
        return busy(exchange);
    }
    // Through a channel, so that the exchange comes back if the thread cannot start.
    let (tx, rx) = crossbeam_channel::bounded::<Exchange>(1);
    let _ = tx.send(exchange);
    let (mine, on_thread, thread_id) = (shared.clone(), rx.clone(), id.clone());
    let spawned = std::thread::Builder::new()
        .name("body".into())
        .spawn(move || {
            if let Ok(exchange) = on_thread.try_recv() {
                match mine.database.open() {
                    Ok(mut store) => {
                        route_and_finish(&mine, &mut store, exchange, started, &thread_id)
                    }
                    Err(e) => {
                        let served = Handled::unrouted(ApiError::from(e).reply(), "unknown");
                        finish(&mine, exchange, started, &thread_id, served, true);
                    }
                }
            }
            mine.body_threads.fetch_sub(1, Ordering::SeqCst);
        });
    if let Err(e) = spawned {
        shared.body_threads.fetch_sub(1, Ordering::SeqCst);
        error!("starting a body thread: {e}");
        if let Ok(exchange) = rx.try_recv() {
            busy(exchange);
        }
    }
}

/// Counts, logs and writes a reply. `close` ends the connection.
fn finish(
    shared: &Handlers,
    exchange: Exchange,
    started: Instant,
    id: &str,
    served: Handled,
    close: bool,
) {
    let head = exchange.head();
    let status = served.reply.status;
    shared
        .app
        .metrics
        .request(served.route, status, started.elapsed());
    info!(
        "{} {} {} {:.1}ms id={} route={} user={}",
        loggable(&head.method, MAX_LOGGED_METHOD),
        loggable(&head.path, MAX_LOGGED),
        status,
        started.elapsed().as_secs_f64() * 1000.0,
        id,
        served.route,
        served.user.as_deref().unwrap_or("-")
    );
    let reply = served.reply.with_header("X-Request-Id", id);
    if let Sent::Abandoned { held } = exchange.respond(reply, close) {
        shared.app.metrics.abandoned_connection();
        if held >= tiny::MAX_ABANDONED {
            shared.shutdown.restart(format!(
                "{held} connections were abandoned with bodies that cannot be drained (see \
                 the threat model); only a new process lets them go"
            ));
        }
    }
}

/// Past `max_connections` open connections, a request gets a fast 503.
fn overloaded(app: &App, exchange: &Exchange) -> bool {
    exchange
        .open_connections()
        .is_some_and(|n| n > app.max_connections)
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
