//! The HTTP front of the service: `http_threads` named threads share one server, each with
//! its own database connection, and answer one request at a time: the head is checked, the
//! router picks a handler, the reply is written. tiny_http itself is known only to
//! `tiny.rs`.

mod action_call;
mod body;
mod reads;
pub mod reply;
mod request;
mod routes;
mod tiny;

use std::fmt;
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use log::{error, info};

use crate::auth::Authenticator;
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;
use crate::store::{Database, Store, StoreError};
use crate::worker::eta::Eta;
use reply::ApiError;
use request::{loggable, Head, MAX_LOGGED, MAX_LOGGED_METHOD};
use tiny::{Exchange, Sent};

/// How often a handler thread looks at the shutdown flag while no request comes.
const ACCEPT_TICK: Duration = Duration::from_millis(200);

/// What every handler thread shares.
pub struct App {
    pub auth: Authenticator,
    /// Open connections past which a request gets a fast 503.
    pub max_connections: usize,
    pub wakeups: Sender<String>,
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
    Bind { listen: String, reason: String },
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
            StartError::Bind { listen, reason } => write!(f, "cannot listen on {listen}: {reason}"),
            StartError::Store(_) => write!(f, "cannot open a handler's database connection"),
            StartError::Thread { thread, .. } => write!(f, "cannot start thread {thread}"),
        }
    }
}

impl std::error::Error for StartError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StartError::Bind { .. } => None,
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
        let server = tiny::Server::bind(listen).map_err(|reason| StartError::Bind {
            listen: listen.to_string(),
            reason,
        })?;
        let server = Arc::new(server);
        let mut handles = Vec::with_capacity(threads);
        for n in 0..threads {
            let mut store = database.open().map_err(StartError::Store)?;
            let (server, app, shutdown) = (server.clone(), app.clone(), shutdown.clone());
            let name = format!("http-{n}");
            let handle = std::thread::Builder::new()
                .name(name.clone())
                .spawn(move || {
                    while !shutdown.is_triggered() {
                        match server.recv(ACCEPT_TICK) {
                            Ok(Some(exchange)) => serve_one(&app, &mut store, exchange),
                            Ok(None) => {}
                            Err(e) => {
                                error!("accepting a request: {e}");
                                shutdown.sleep(ACCEPT_TICK);
                            }
                        }
                    }
                    // Requests already read when shutdown came are answered, not dropped.
                    while let Some(exchange) = server.try_recv() {
                        serve_one(&app, &mut store, exchange);
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

fn serve_one(app: &App, store: &mut Store, mut exchange: Exchange) {
    let started = Instant::now();
    let too_large = exchange.head_too_large();
    let upgrade = exchange.upgrade_requested();
    let framing = exchange.framing_error();
    let refused = too_large || upgrade || framing.is_some();
    let overloaded = !refused && overloaded(app, &exchange);
    let (head, mut body) = exchange.parts();
    let id = request_id(head);
    let (reply, route, user) = if too_large {
        let e = ApiError::HeadTooLarge(tiny::MAX_HEAD_BYTES);
        (e.reply(), "too_large", None)
    } else if upgrade {
        let e = ApiError::BadRequest("This API has no protocol upgrade.".into());
        (e.reply(), "upgrade", None)
    } else if let Some(why) = framing {
        (ApiError::BadRequest(why.into()).reply(), "framing", None)
    } else if overloaded {
        let e = ApiError::Unavailable("Too many connections; try again later.".into());
        (e.reply(), "overload", None)
    } else {
        match catch_unwind(AssertUnwindSafe(|| {
            routes::handle(app, store, head, &mut body)
        })) {
            Ok(h) => (h.reply, h.route, h.user),
            Err(_) => {
                error!(
                    "request {id}: {} {}: handler panicked",
                    loggable(&head.method, MAX_LOGGED_METHOD),
                    loggable(&head.path, MAX_LOGGED)
                );
                (ApiError::Internal.reply(), "unknown", None)
            }
        }
    };
    let status = reply.status;
    app.metrics.request(route, status, started.elapsed());
    info!(
        "{} {} {} {:.1}ms id={} route={} user={}",
        loggable(&head.method, MAX_LOGGED_METHOD),
        loggable(&head.path, MAX_LOGGED),
        status,
        started.elapsed().as_secs_f64() * 1000.0,
        id,
        route,
        user.as_deref().unwrap_or("-")
    );
    let reply = reply.with_header("X-Request-Id", id);
    // An overloaded service also sheds the connection of a client it turns away, and a head
    // too large is not worth reading another of.
    if exchange.respond(reply, refused || overloaded) == Sent::Abandoned {
        app.metrics.abandoned_connection();
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
