//! The HTTP front of the service: a tiny_http server shared by `http_threads` named threads,
//! each with its own database connection. The only module (with the simulator) that knows
//! tiny_http.

mod body;
pub mod reply;
pub mod routes;

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
use reply::{ApiError, Reply};
use routes::{BodySource, Head};

/// How often a handler thread looks at the shutdown flag while no request comes.
const ACCEPT_TICK: Duration = Duration::from_millis(200);

/// What every handler thread shares.
pub struct App {
    pub auth: Authenticator,
    pub wakeups: Sender<String>,
    pub metrics: Arc<Metrics>,
    pub max_body_bytes: usize,
    /// The address listened on, for links when a request has no usable `Host`.
    pub listen: String,
}

impl BodySource for tiny_http::Request {
    fn reader(&mut self) -> &mut dyn std::io::Read {
        self.as_reader()
    }
}

/// The running HTTP server.
pub struct HttpServer {
    server: Arc<tiny_http::Server>,
    threads: Vec<JoinHandle<()>>,
    addr: SocketAddr,
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
        let server = tiny_http::Server::http(listen)
            .map_err(|e| StartError::Bind(listen.to_string(), e.to_string()))?;
        let addr = server
            .server_addr()
            .to_ip()
            .ok_or_else(|| StartError::Bind(listen.to_string(), "not an IP address".into()))?;
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
        Ok(HttpServer {
            server,
            threads: handles,
            addr,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
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
        _ => uuid::Uuid::new_v4().to_string(),
    }
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
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        routes::handle(app, store, &head, &mut request)
    }));
    let (reply, route, user) = match outcome {
        Ok(h) => (h.reply, h.route, h.user),
        Err(_) => {
            error!(
                "request {id}: {} {}: handler panicked",
                head.method, head.path
            );
            (ApiError::Internal.reply(), "unknown", None)
        }
    };
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
    if let Err(e) = request.respond(into_response(reply.with_header("X-Request-Id", id))) {
        log::debug!("writing a response: {e}");
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
