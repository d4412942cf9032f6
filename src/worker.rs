//! The worker pool: named threads that claim actions from SQLite and run them against
//! ~okeanos. The channel only wakes a worker up; SQLite says what there is to do, so a full
//! channel or a restart loses nothing.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{select, Receiver};
use log::{error, info, warn};

use crate::config::Config;
use crate::metrics::Metrics;
use crate::model::{now_ms, ActionKind};
use crate::okeanos::{Client, OkeanosError, ServerAction, ServerState};
use crate::shutdown::Shutdown;
use crate::store::{Database, Job, Store, StoreError};

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
        client: Client,
        wakeups: Receiver<String>,
        metrics: Arc<Metrics>,
        shutdown: Arc<Shutdown>,
    ) -> Result<Pool, StoreError> {
        let mut threads = Vec::with_capacity(count);
        let abandon = Arc::new(Shutdown::default());
        let (done_tx, done_rx) = crossbeam_channel::unbounded();
        for n in 0..count {
            let worker = Worker {
                store: database.open()?,
                client: client.clone(),
                settings: settings.clone(),
                metrics: metrics.clone(),
                shutdown: shutdown.clone(),
                abandon: abandon.clone(),
                last_purge: Instant::now(),
                wal_dirty: false,
                last_truncate: Instant::now(),
            };
            let wakeups = wakeups.clone();
            let done = done_tx.clone();
            let thread = std::thread::Builder::new()
                .name(format!("worker-{n}"))
                .spawn(move || {
                    worker.run_loop(&wakeups);
                    let _ = done.send(());
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
    /// Stop taking new actions.
    shutdown: Arc<Shutdown>,
    /// Stop the current run and hand its action back (the shutdown grace period is over).
    abandon: Arc<Shutdown>,
    last_purge: Instant,
    /// An action ended (its token erased) since the WAL was last truncated.
    wal_dirty: bool,
    last_truncate: Instant,
}

/// How long an `Idempotency-Key` answer is replayed.
pub const IDEMPOTENCY_TTL_MS: i64 = 24 * 3600 * 1000;
/// Under steady load (no idle moment), the WAL is still truncated this often.
const TRUNCATE_EVERY: Duration = Duration::from_secs(5);
/// How often an idle worker deletes expired idempotency keys, and how many at a time.
const PURGE_EVERY: Duration = Duration::from_secs(60);
const PURGE_BATCH: u64 = 500;

/// Why a run stopped before the action succeeded.
#[derive(Debug)]
enum Stop {
    /// The action failed for good, with this message for the user.
    Failed(String),
    /// Shutdown: hand the action back.
    Interrupted,
    /// Another worker holds the action now; this one must let go without writing.
    LostClaim,
    /// The database failed; the lease will expire and the action will be taken up again.
    Store(StoreError),
}

impl From<StoreError> for Stop {
    fn from(e: StoreError) -> Stop {
        Stop::Store(e)
    }
}

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
                    error!("claiming an action: {e}");
                    if self.shutdown.sleep(IDLE_TICK) {
                        break;
                    }
                    continue;
                }
            }
            if self.last_purge.elapsed() >= PURGE_EVERY {
                self.last_purge = Instant::now();
                match self.store.purge_answers(IDEMPOTENCY_TTL_MS, PURGE_BATCH) {
                    Ok(0) => {}
                    Ok(n) => info!("purged {n} expired idempotency key(s)"),
                    Err(e) => warn!("purging idempotency keys: {e}"),
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
            Err(e) => warn!("truncating the WAL: {e}"),
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
            Ok(Err(Stop::Failed(message))) => {
                let r = self.store.finish(&job, Some(&message));
                (r, Some(message))
            }
            Ok(Err(Stop::Interrupted)) => {
                info!("action {id}: handed back at shutdown");
                if let Err(e) = self.store.release(&job) {
                    error!("action {id}: handing back: {e}");
                }
                return;
            }
            Ok(Err(Stop::LostClaim)) => {
                warn!("action {id}: another worker took it over; letting go");
                return;
            }
            Ok(Err(Stop::Store(e))) => {
                error!("action {id}: {e}; it will be taken up again when its lease expires");
                return;
            }
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                let message = format!("internal error while running the action: {what}");
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
            let since_accepted = Duration::from_millis((now_ms() - job.created_at).max(0) as u64);
            self.metrics.action_finished(state, since_accepted);
        }
        match (result, error) {
            (Ok(true), None) => info!("action {id}: succeeded in {took} ms"),
            (Ok(true), Some(e)) => warn!("action {id}: failed in {took} ms: {e}"),
            (Ok(false), _) => warn!("action {id}: taken over before it could be finished"),
            (Err(e), _) => error!("action {id}: recording its end: {e}; it will be taken up again"),
        }
    }

    /// One run: the slaves then the master to start, the master then the slaves to stop.
    fn run(&mut self, job: &Job) -> Result<(), Stop> {
        let (op, order): (ServerAction, Vec<&String>) = match job.action {
            ActionKind::Start => (
                ServerAction::Start,
                job.slaves
                    .iter()
                    .chain(std::iter::once(&job.master))
                    .collect(),
            ),
            ActionKind::Stop => (
                ServerAction::Shutdown,
                std::iter::once(&job.master)
                    .chain(job.slaves.iter())
                    .collect(),
            ),
        };
        for vm in order {
            self.bring(job, vm, op)?;
        }
        Ok(())
    }

    /// Brings one VM to the action's target state: read first, act only if needed, then poll.
    /// A task already under way for the same action (`SNF:task_state`), such as a start sent
    /// by a run that crashed, is waited for, not sent again.
    fn bring(&mut self, job: &Job, vm: &str, op: ServerAction) -> Result<(), Stop> {
        let (target, source) = (op.target(), op.source());
        let deadline = Instant::now() + self.settings.vm_wait_timeout;
        let mut state = self.read(job, vm)?;
        self.step(job, vm, "status", &state.to_string())?;
        if state.status == target && state.task.is_empty() {
            return self.step(job, vm, op.name(), &format!("skipped: already {target}"));
        }
        let mut sent = false;
        let mut polls = 0u32;
        loop {
            if state.status == target && state.task.is_empty() {
                return self.step(job, vm, "wait", &format!("{target} after {polls} polls"));
            }
            if state.status == "ERROR" || state.status == "DELETED" {
                let msg = format!("server {vm} is {}; cannot {}", state.status, op.name());
                self.step(job, vm, "wait", &msg)?;
                return Err(Stop::Failed(msg));
            }
            if state.task == op.task() && !sent {
                self.step(job, vm, op.name(), "already under way")?;
                sent = true;
            }
            if state.status == source && state.task.is_empty() && !sent {
                sent = true;
                let result = self.call(job, vm, op.name(), |c| {
                    c.server_action(&job.compute_url, &job.token, vm, op)
                });
                match result {
                    Ok(()) => self.step(job, vm, op.name(), "accepted")?,
                    // Synnefo answers 400 when the server is not in a state the action
                    // applies to; that may be because it just moved. Read it again.
                    Err(Stop::Failed(msg)) if msg.starts_with("400 ") => {
                        state = self.read(job, vm)?;
                        self.step(job, vm, "status", &state.to_string())?;
                        if state.status == source && state.task.is_empty() {
                            return Err(Stop::Failed(msg));
                        }
                        continue;
                    }
                    Err(other) => return Err(other),
                }
            }
            if Instant::now() >= deadline {
                let msg = format!(
                    "server {vm} did not become {target} within {} s (last status {state})",
                    self.settings.vm_wait_timeout.as_secs()
                );
                self.step(job, vm, "wait", &msg)?;
                return Err(Stop::Failed(msg));
            }
            if self.abandon.sleep(self.settings.poll_interval) {
                return Err(Stop::Interrupted);
            }
            if !self.store.renew(job, self.settings.lease)? {
                return Err(Stop::LostClaim);
            }
            polls += 1;
            state = self.read(job, vm)?;
        }
    }

    fn read(&mut self, job: &Job, vm: &str) -> Result<ServerState, Stop> {
        self.call(job, vm, "status", |c| {
            c.server_status(&job.compute_url, &job.token, vm)
        })
    }

    /// One ~okeanos call, retried on transient faults with exponential back-off and jitter.
    /// A permanent fault, or a transient one past `max_attempts`, fails the action with
    /// ~okeanos's own message first.
    fn call<T>(
        &mut self,
        job: &Job,
        vm: &str,
        op: &str,
        f: impl Fn(&Client) -> Result<T, OkeanosError>,
    ) -> Result<T, Stop> {
        let mut attempt = 1;
        loop {
            match f(&self.client) {
                Ok(v) => return Ok(v),
                Err(e) if e.is_transient() && attempt < self.settings.max_attempts => {
                    let pause = backoff(self.settings.retry_base, attempt);
                    warn!(
                        "action {}: {op} of server {vm}: {e}; try {attempt} of {}, next in {} ms",
                        job.action_id,
                        self.settings.max_attempts,
                        pause.as_millis()
                    );
                    self.step(
                        job,
                        vm,
                        op,
                        &format!("{e}; retrying in {} ms", pause.as_millis()),
                    )?;
                    if self.abandon.sleep(pause) {
                        return Err(Stop::Interrupted);
                    }
                    attempt += 1;
                }
                Err(e) => {
                    let msg = format!("{e} on {op} of server {vm}");
                    self.step(job, vm, op, &e.to_string())?;
                    return Err(Stop::Failed(msg));
                }
            }
        }
    }

    fn step(&mut self, job: &Job, vm: &str, op: &str, result: &str) -> Result<(), Stop> {
        if self
            .store
            .record_step(job, self.settings.lease, vm, op, result)?
        {
            Ok(())
        } else {
            Err(Stop::LostClaim)
        }
    }
}

/// The pause before try `attempt + 1`: `base · 2^(attempt-1)`, capped, then scaled by a random
/// factor in [0.5, 1.5) so that workers retrying together spread out.
pub fn backoff(base: Duration, attempt: u32) -> Duration {
    let exp = base
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
        .min(MAX_BACKOFF);
    let random = (uuid::Uuid::new_v4().as_u128() as u64 % 1000) as f64 / 1000.0;
    exp.mul_f64(0.5 + random)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_a_cap() {
        let base = Duration::from_millis(100);
        for attempt in 1..=4 {
            let nominal = base * (1 << (attempt - 1));
            let samples: Vec<Duration> = (0..50).map(|_| backoff(base, attempt)).collect();
            assert!(
                samples
                    .iter()
                    .all(|d| *d >= nominal / 2 && *d < nominal * 3 / 2),
                "{samples:?}"
            );
            assert!(
                samples.iter().any(|d| *d != samples[0]),
                "no jitter: {samples:?}"
            );
        }
        assert!(backoff(base, 40) < MAX_BACKOFF * 3 / 2);
    }

    #[test]
    fn lease_outlasts_a_call_and_a_pause() {
        let config = Config::default();
        let s = Settings::from_config(&config);
        assert!(s.lease > config.okeanos_timeout() + MAX_BACKOFF);
        assert!(s.lease > config.okeanos_timeout() + config.poll_interval());
    }
}
