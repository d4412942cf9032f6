//! lambda-api: starts and stops ~okeanos lambda instances (a master VM and its slaves) for
//! their owners. See README.md for the architecture; `Service` is the whole service, started
//! in-process by `lambda-api serve` and by the integration tests.

#![forbid(unsafe_code)]

mod auth;
mod build;
pub mod cli;
mod clock;
pub mod config;
mod create;
pub mod error;
mod eta;
mod housekeeping;
mod http;
mod idempotency;
mod metrics;
pub mod model;
mod okeanos;
mod plan;
pub mod report;
mod shutdown;
pub mod store;
mod sync;
mod worker;

use std::net::SocketAddr;
use std::sync::Arc;

use crate::auth::Authenticator;
use crate::config::Config;
use crate::error::Error;
use crate::eta::Eta;
use crate::http::{App, HttpServer};
use crate::shutdown::Shutdown;
use crate::worker::{Context, Pool, Settings};

/// The log targets that must never log below `info`, whatever `RUST_LOG` says: the HTTP
/// client's, which would write whole requests and answers, tokens included.
pub fn quiet_log_targets() -> &'static [&'static str] {
    &okeanos::NOISY_LOG_TARGETS
}

/// The running service: HTTP threads and workers over one SQLite file.
pub struct Service {
    http: HttpServer,
    pool: Pool,
    housekeeping: std::thread::JoinHandle<()>,
    shutdown: Arc<Shutdown>,
    grace: std::time::Duration,
    /// Keeps other processes from serving or restoring this database; let go last.
    _lock: store::DatabaseLock,
}

impl Service {
    /// Opens (and migrates) the database, takes up actions a previous process left, and starts
    /// the workers and the HTTP threads.
    pub fn start(config: &Config) -> Result<Service, Error> {
        // One Database for the whole process: its clones share the write lock.
        let database = config.db();
        let lock = database.lock()?;
        let (requeued, orphaned) = database.open()?.recover()?;
        if requeued > 0 || orphaned > 0 {
            log::info!(
                "recovery: {requeued} interrupted action(s) queued again, \
                 {orphaned} instance(s) with nothing in flight marked FAILED"
            );
        }
        let metrics = Arc::new(metrics::Metrics::default());
        let eta = Arc::new(Eta::default());
        let client = okeanos::Client::new(config.okeanos_timeout(), metrics.clone());
        let (wakeups, queue) = crossbeam_channel::bounded(config.queue_capacity);
        let shutdown = Arc::new(Shutdown::default());
        let (ended, endings) = crossbeam_channel::bounded(config.queue_capacity);
        let housekeeping = housekeeping::start(&database, endings, shutdown.clone())?;
        let pool = Pool::start(
            config.workers,
            &database,
            Settings::from_config(config),
            queue,
            Context {
                client: client.clone(),
                metrics: metrics.clone(),
                eta: eta.clone(),
                wake: wakeups.clone(),
                ended,
            },
            shutdown.clone(),
        )?;
        let app = Arc::new(App {
            max_connections: config.max_connections,
            client: client.clone(),
            image: http::ImageChoice {
                id: config.image_id.clone(),
                name: config.image_name.clone(),
            },
            remembered: http::Remembered::default(),
            auth: Authenticator::new(
                client,
                &config.astakos_url,
                &config.compute_url,
                std::time::Duration::from_secs(config.token_cache_ttl_secs),
                // Identity calls (and requests waiting for one) may hold half of the
                // handler threads at most.
                ((config.http_threads / 2).max(1), config.okeanos_timeout()),
            ),
            wakeups,
            metrics,
            eta,
            max_body_bytes: config.max_body_bytes,
            listen: config.listen.clone(),
        });
        let http = match HttpServer::start(
            &config.listen,
            config.http_threads,
            &database,
            app,
            shutdown.clone(),
        ) {
            Ok(http) => http,
            Err(e) => {
                shutdown.trigger();
                pool.join(std::time::Duration::ZERO);
                let _ = housekeeping.join();
                return Err(e.into());
            }
        };
        Ok(Service {
            http,
            pool,
            housekeeping,
            shutdown,
            grace: std::time::Duration::from_secs(config.shutdown_grace_secs),
            _lock: lock,
        })
    }

    /// The TCP address the HTTP API listens on (the real port when configured with port 0),
    /// or None when it listens on a Unix socket.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.http.local_addr()
    }

    /// A handle that stops the service when triggered.
    pub fn shutdown_handle(&self) -> Arc<Shutdown> {
        self.shutdown.clone()
    }

    /// Blocks until shutdown is triggered, then stops. Returns why the service asked to be
    /// started again, if that is why it stopped.
    pub fn wait(self) -> Option<String> {
        let _ = self.shutdown.receiver().recv();
        let restart = self.shutdown.restart_reason();
        self.stop();
        restart
    }

    /// Stops taking requests (answering those already read), gives running actions
    /// `shutdown_grace_secs` to finish, leaves the rest to the next start (they are rows,
    /// due again), and waits for every thread. The database connections close with their
    /// threads.
    pub fn stop(self) {
        self.shutdown.trigger();
        self.http.join();
        self.pool.join(self.grace);
        let _ = self.housekeeping.join();
    }
}
