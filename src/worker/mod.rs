//! The worker pool: named threads that claim actions from SQLite and run them against
//! ~okeanos. The channel only wakes a worker up; SQLite says what there is to do, so a full
//! channel or a restart loses nothing.

mod run;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{select, Receiver};
use log::{error, info, warn};

use crate::config::Config;
use crate::error::{Error, Report};
use crate::idempotency;
use crate::metrics::Metrics;
use crate::okeanos::Client;
use crate::shutdown::Shutdown;
use crate::store::{Database, Job, Store};
use crate::sync::lock;
use run::{Failure, Stop};

/// How often an idle worker looks at SQLite for work nobody woke it up for (an action whose
/// wake-up did not fit in the channel, or whose lease expired).
const IDLE_TICK: Duration = Duration::from_secs(1);
/// Longest pause between two retries.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// What one run needs to know, taken from the configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    pub poll_interval: Duration,
    pub vm_wait_timeout: Duration,
    pub max_attempts: u32,
    pub retry_base: Duration,
    /// How long a claim holds without renewal: longer than the longest silence of a worker
    /// (one ~okeanos call with its timeout, then a back-off pause or a poll interval).
    pub lease: Duration,
}

impl Settings {
    pub fn from_config(config: &Config) -> Settings {
        // A back-off pause is at most 1.5 times its nominal length (the jitter).
        let longest_pause = config
            .poll_interval()
            .max(MAX_BACKOFF.min(config.retry_base() * 64) * 3 / 2);
        Settings {
            poll_interval: config.poll_interval(),
            vm_wait_timeout: config.vm_wait_timeout(),
            max_attempts: config.max_attempts,
            retry_base: config.retry_base(),
            lease: config.okeanos_timeout() * 2 + longest_pause + Duration::from_secs(10),
        }
    }
}

/// What the workers share with the rest of the service.
pub struct Outside {
    /// The ~okeanos client (its connection pool is shared with identity checks).
    pub client: Client,
    pub metrics: Arc<Metrics>,
    /// Where the workers record how long actions take.
    pub eta: Arc<Eta>,
}

/// The running pool.
pub struct Pool {
    threads: Vec<JoinHandle<()>>,
    abandon: Arc<Shutdown>,
    /// One message per worker thread that has ended.
    done: Receiver<()>,
}

impl Pool {
    /// Opens one database connection per worker and starts the threads.
    pub fn start(
        count: usize,
        database: &Database,
        settings: Settings,
        wakeups: Receiver<String>,
        outside: Outside,
        shutdown: Arc<Shutdown>,
    ) -> Result<Pool, Error> {
        let mut threads = Vec::with_capacity(count);
        let abandon = Arc::new(Shutdown::default());
        let (done_tx, done_rx) = crossbeam_channel::unbounded();
        for n in 0..count {
            let worker = Worker {
                store: database.open()?,
                client: outside.client.clone(),
                settings: settings.clone(),
                metrics: outside.metrics.clone(),
                eta: outside.eta.clone(),
                shutdown: shutdown.clone(),
                abandon: abandon.clone(),
                last_purge: Instant::now(),
                wal_dirty: false,
                last_truncate: Instant::now(),
            };
            let wakeups = wakeups.clone();
            let done = done_tx.clone();
            let name = format!("worker-{n}");
            let thread = std::thread::Builder::new()
                .name(name.clone())
                .spawn(move || {
                    worker.run_loop(&wakeups);
                    let _ = done.send(());
                })
                .map_err(|source| Error::Spawn {
                    thread: name,
                    source,
                })?;
            threads.push(thread);
        }
        Ok(Pool {
            threads,
            abandon,
            done: done_rx,
        })
    }

    /// After shutdown was triggered: gives the workers `grace` to finish the actions they are
    /// running, then makes them hand what is left back to the queue, and waits for them.
    pub fn join(self, grace: Duration) {
        let deadline = Instant::now() + grace;
        let mut finished = 0;
        while finished < self.threads.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.done.recv_timeout(left) {
                Ok(()) => finished += 1,
                Err(_) => break,
            }
        }
        if finished < self.threads.len() {
            info!("shutdown grace over: handing running actions back to the queue");
        }
        self.abandon.trigger();
        for t in self.threads {
            let _ = t.join();
        }
    }
}

struct Worker {
    store: Store,
    client: Client,
    settings: Settings,
    metrics: Arc<Metrics>,
    eta: Arc<Eta>,
    /// Stop taking new actions.
    shutdown: Arc<Shutdown>,
    /// Stop the current run and hand its action back (the shutdown grace period is over).
    abandon: Arc<Shutdown>,
    last_purge: Instant,
    /// An action ended (its token erased) since the WAL was last truncated.
    wal_dirty: bool,
    last_truncate: Instant,
}

/// Under steady load (no idle moment), the WAL is still truncated this often.
const TRUNCATE_EVERY: Duration = Duration::from_secs(5);
impl Worker {
    fn run_loop(mut self, wakeups: &Receiver<String>) {
        while !self.shutdown.is_triggered() {
            match self.store.claim_next(self.settings.lease) {
                Ok(Some(job)) => {
                    self.run_job(job);
                    if self.last_truncate.elapsed() >= TRUNCATE_EVERY {
                        self.truncate_wal();
                    }
                    continue;
                }
                Ok(None) => self.truncate_wal(),
                Err(e) => {
                    error!("claiming an action: {}", Report(&e));
                    if self.shutdown.sleep(IDLE_TICK) {
                        break;
                    }
                    continue;
                }
            }
            if self.last_purge.elapsed() >= idempotency::PURGE_EVERY {
                self.last_purge = Instant::now();
                match idempotency::purge(&mut self.store) {
                    Ok(0) => {}
                    Ok(n) => info!("purged {n} expired idempotency key(s)"),
                    Err(e) => warn!("purging idempotency keys: {}", Report(&e)),
                }
            }
            select! {
                recv(wakeups) -> msg => if msg.is_err() { break },
                recv(self.shutdown.receiver()) -> _ => break,
                default(IDLE_TICK) => {}
            }
        }
    }

    /// Erased tokens may still sit in WAL frames; once an action has ended, the WAL is
    /// checkpointed and truncated when this worker is idle, or every few seconds under load.
    fn truncate_wal(&mut self) {
        if !self.wal_dirty {
            return;
        }
        self.last_truncate = Instant::now();
        match self.store.truncate_wal() {
            Ok(true) => self.wal_dirty = false,
            Ok(false) => log::debug!("WAL truncation blocked by readers; will try again"),
            Err(e) => warn!("truncating the WAL: {}", Report(&e)),
        }
    }

    fn run_job(&mut self, job: Job) {
        let id = job.action_id.clone();
        info!(
            "action {id}: {} instance {} (attempt {})",
            job.action.name(),
            job.instance_id,
            job.attempt
        );
        let started = Instant::now();
        let outcome = catch_unwind(AssertUnwindSafe(|| self.run(&job)));
        let (result, error) = match outcome {
            Ok(Ok(())) => (self.store.finish(&job, None), None),
            Ok(Err(Stop::Failed(failure))) => {
                let message = failure.to_string();
                (self.store.finish(&job, Some(&message)), Some(message))
            }
            Ok(Err(Stop::Interrupted)) => {
                info!("action {id}: handed back at shutdown");
                if let Err(e) = self.store.release(&job) {
                    error!("action {id}: handing back: {}", Report(&e));
                }
                return;
            }
            Ok(Err(Stop::LostClaim)) => {
                warn!("action {id}: another worker took it over; letting go");
                return;
            }
            Ok(Err(Stop::Store(e))) => {
                error!(
                    "action {id}: {}; it will be taken up again when its lease expires",
                    Report(&e)
                );
                return;
            }
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                let message = Failure::Panicked(what).to_string();
                error!("action {id}: {message}");
                (self.store.finish(&job, Some(&message)), Some(message))
            }
        };
        let took = started.elapsed().as_millis();
        if let Ok(true) = result {
            self.wal_dirty = true;
            let state = if error.is_some() {
                "failed"
            } else {
                "succeeded"
            };
            let since_accepted = self.store.now_ms() - job.created_at;
            let since_accepted = Duration::from_millis(since_accepted.max(0) as u64);
            self.metrics.action_finished(state);
            self.eta.record(since_accepted);
        }
        match (result, error) {
            (Ok(true), None) => info!("action {id}: succeeded in {took} ms"),
            (Ok(true), Some(e)) => warn!("action {id}: failed in {took} ms: {e}"),
            (Ok(false), _) => warn!("action {id}: taken over before it could be finished"),
            (Err(e), _) => error!(
                "action {id}: recording its end: {}; it will be taken up again",
                Report(&e)
            ),
        }
    }
}

/// How long actions take, from acceptance to their end: what `Retry-After` tells a client
/// following one. A moving average of the recent ones.
#[derive(Default)]
pub struct Eta {
    average_ms: std::sync::Mutex<Option<f64>>,
}

/// What `Retry-After` says while there is no history to go by.
const DEFAULT_ETA: Duration = Duration::from_secs(5);

impl Eta {
    /// An action ended `took` after it was accepted.
    pub fn record(&self, took: Duration) {
        let ms = took.as_secs_f64() * 1000.0;
        let mut avg = lock(&self.average_ms);
        *avg = Some(avg.map_or(ms, |a| 0.8 * a + 0.2 * ms));
    }

    /// Seconds a client should wait before asking again about an action accepted `age` ago:
    /// what recent actions took, less its age, from 1 to 30.
    pub fn retry_after(&self, age: Duration) -> u64 {
        let eta =
            lock(&self.average_ms).map_or(DEFAULT_ETA, |ms| Duration::from_secs_f64(ms / 1000.0));
        eta.saturating_sub(age)
            .as_secs_f64()
            .ceil()
            .clamp(1.0, 30.0) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_follows_recent_actions() {
        let eta = Eta::default();
        assert_eq!(eta.retry_after(Duration::ZERO), 5);
        eta.record(Duration::from_secs(12));
        assert_eq!(eta.retry_after(Duration::ZERO), 12);
        assert_eq!(eta.retry_after(Duration::from_secs(4)), 8);
        assert_eq!(eta.retry_after(Duration::from_secs(60)), 1);
        eta.record(Duration::from_secs(3600));
        assert_eq!(eta.retry_after(Duration::ZERO), 30);
    }

    #[test]
    fn lease_outlasts_a_call_and_a_pause() {
        let config = Config::default();
        let s = Settings::from_config(&config);
        assert!(s.lease > config.okeanos_timeout() + MAX_BACKOFF);
        assert!(s.lease > config.okeanos_timeout() + config.poll_interval());
    }
}
