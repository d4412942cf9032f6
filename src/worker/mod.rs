//! The worker pool: named threads that claim actions from SQLite and run them against
//! ~okeanos, a tick at a time (`run.rs`), each target of an action's plan through one state
//! machine (`target.rs`). The channel only wakes a worker up; SQLite says what there is to
//! do, so a full channel or a restart loses nothing.

mod failure;
mod listing;
mod make;
mod retry_save;
mod run;
mod target;
mod unsaved;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{select, Receiver, Sender};
use log::{error, info, warn};

use crate::config::Config;
use crate::error::Error;
use crate::eta::Eta;
use crate::metrics::Metrics;
use crate::model::ActionKind;
use crate::okeanos::Client;
use crate::report::Report;
use crate::shutdown::Shutdown;
use crate::store::{Database, Job, Store, TargetState};
use failure::{Failure, Stop};
use listing::Listings;
use retry_save::RetrySave;
use run::Tick;
use unsaved::Unsaved;

/// How often an idle worker looks at SQLite for work nobody woke it up for (an action whose
/// wake-up did not fit in the channel, or whose lease expired).
const IDLE_TICK: Duration = Duration::from_secs(1);
/// Longest pause between two retries.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// What one tick needs to know, taken from the configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    pub poll_interval: Duration,
    pub vm_wait_timeout: Duration,
    pub max_attempts: u32,
    pub retry_base: Duration,
    /// How long a claim holds without renewal: longer than the longest silence of a tick
    /// (a listing, then SENDS_PER_SAVE commands and a re-read, each with its timeout).
    pub lease: Duration,
}

impl Settings {
    pub fn from_config(config: &Config) -> Settings {
        Settings {
            poll_interval: config.poll_interval(),
            vm_wait_timeout: config.vm_wait_timeout(),
            max_attempts: config.max_attempts,
            retry_base: config.retry_base(),
            lease: config.okeanos_timeout() * (run::SENDS_PER_SAVE as u32 + 2)
                + Duration::from_secs(10),
        }
    }
}

/// What the workers share with the rest of the service.
pub struct Context {
    /// The ~okeanos client (its connection pool is shared with identity checks).
    pub client: Client,
    pub metrics: Arc<Metrics>,
    /// Where the workers record how long actions take.
    pub eta: Arc<Eta>,
    /// Wakes an idle worker when an action is parked, so that it plans its wait anew.
    pub wake: Sender<()>,
    /// Tells housekeeping that an action ended (its token erased).
    pub ended: Sender<()>,
}

/// The running pool.
pub struct Pool {
    threads: Vec<JoinHandle<()>>,
    /// Triggered when the shutdown grace is over: running ticks stop after their call.
    grace_over: Arc<Shutdown>,
    /// One message per worker thread that has ended.
    done: Receiver<()>,
}

impl Pool {
    /// Opens one database connection per worker and starts the threads.
    pub fn start(
        count: usize,
        database: &Database,
        settings: Settings,
        wakeups: Receiver<()>,
        context: Context,
        shutdown: Arc<Shutdown>,
    ) -> Result<Pool, Error> {
        let mut threads = Vec::with_capacity(count);
        let grace_over = Arc::new(Shutdown::default());
        let (done_tx, done_rx) = crossbeam_channel::unbounded();
        let listings = Arc::new(Listings::default());
        for n in 0..count {
            let worker = Worker {
                store: database.open_for_worker()?,
                client: context.client.clone(),
                settings: settings.clone(),
                metrics: context.metrics.clone(),
                eta: context.eta.clone(),
                wake: context.wake.clone(),
                ended: context.ended.clone(),
                listings: listings.clone(),
                shutdown: shutdown.clone(),
                grace_over: grace_over.clone(),
                retry_saves: Vec::new(),
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
            grace_over,
            done: done_rx,
        })
    }

    /// After shutdown was triggered: gives the workers `grace` to finish the actions already
    /// running (they take no new one), then makes them stop after the call in progress and
    /// leave what is left to the next process, and waits for them.
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
            info!("shutdown grace over: leaving running actions to the next start");
        }
        self.grace_over.trigger();
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
    wake: Sender<()>,
    ended: Sender<()>,
    listings: Arc<Listings>,
    /// Take no new action; finish the running ones.
    shutdown: Arc<Shutdown>,
    /// Stop the current tick after the call in progress (the shutdown grace period is over).
    grace_over: Arc<Shutdown>,
    /// Ends of ticks the database refused, to save again.
    retry_saves: Vec<RetrySave>,
}

impl Worker {
    fn run_loop(mut self, wakeups: &Receiver<()>) {
        while !self.grace_over.is_triggered() {
            self.save_again();
            let stopping = self.shutdown.is_triggered();
            match self.store.claim_due(self.settings.lease, !stopping) {
                Ok(Some(job)) => {
                    self.run_tick(job);
                    continue;
                }
                Ok(None) => {}
                Err(e) => {
                    error!("claiming an action: {}", Report(&e));
                    if self.grace_over.sleep(IDLE_TICK) {
                        break;
                    }
                    continue;
                }
            }
            let next = match self.store.next_due(!stopping) {
                Ok(next) => next,
                Err(e) => {
                    error!("reading when the next action is due: {}", Report(&e));
                    None
                }
            };
            if stopping && next.is_none() {
                break; // Nothing running is left to finish.
            }
            // Until the next due time (never longer than IDLE_TICK, for what another process
            // or a lost wake-up may have left), a wake-up, or the end.
            let wait = next.map_or(IDLE_TICK, |at| {
                let ms = (at - self.store.now_ms()).clamp(0, IDLE_TICK.as_millis() as i64);
                Duration::from_millis(ms as u64)
            });
            if stopping {
                select! {
                    recv(wakeups) -> _ => {},
                    recv(self.grace_over.receiver()) -> _ => break,
                    default(wait) => {}
                }
            } else {
                select! {
                    recv(wakeups) -> msg => if msg.is_err() { break },
                    recv(self.shutdown.receiver()) -> _ => {},
                    default(wait) => {}
                }
            }
        }
    }

    /// One tick of a claimed action, and what becomes of the action: parked until it is due
    /// again, or ended.
    fn run_tick(&mut self, mut job: Job) {
        let id = job.action_id.clone();
        if job
            .targets
            .iter()
            .all(|t| t.state == TargetState::Todo && t.tries == 0)
        {
            info!(
                "action {id}: {} instance {} (attempt {})",
                job.action.name(),
                job.instance_id,
                job.attempt
            );
        }
        let mut unsaved = Unsaved::default();
        let outcome = catch_unwind(AssertUnwindSafe(|| self.tick(&mut job, &mut unsaved)));
        let error = match outcome {
            Ok(Ok(Tick::Done)) => None,
            Ok(Ok(Tick::Wait(at))) => {
                log::debug!(
                    "action {id}: parked, due again in {} ms",
                    at - self.store.now_ms()
                );
                let targets = unsaved.targets(&job);
                match self.store.park(&job, at, &targets, &unsaved.steps) {
                    Ok(true) => {
                        let _ = self.wake.try_send(());
                    }
                    Ok(false) => warn!("action {id}: taken over before it could be parked"),
                    Err(e) => {
                        error!("action {id}: parking it: {}; trying again", Report(&e));
                        self.retry_saves.push(RetrySave::Park {
                            job,
                            at,
                            targets,
                            steps: unsaved.steps,
                        });
                    }
                }
                return;
            }
            Ok(Err(Stop::Failed(failure))) => Some(failure.to_string()),
            Ok(Err(Stop::Interrupted)) => {
                info!("action {id}: left to the next start at shutdown");
                let now = self.store.now_ms();
                if let Err(e) = self
                    .store
                    .park(&job, now, &unsaved.targets(&job), &unsaved.steps)
                {
                    error!("action {id}: leaving it: {}", Report(&e));
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
                Some(message)
            }
        };
        if let (ActionKind::Create, None, Some(why)) = (job.action, &job.undoing, &error) {
            // A create that fails deletes what it made before it ends.
            warn!(
                "action {id}: the create failed: {}; deleting what it made",
                crate::report::escaped(why)
            );
            match self.store.undo(&job, why, &unsaved.steps) {
                Ok(true) => {
                    let _ = self.wake.try_send(());
                }
                Ok(false) => warn!("action {id}: taken over before it could be undone"),
                Err(e) => {
                    error!("action {id}: undoing it: {}; trying again", Report(&e));
                    let why = why.clone();
                    self.retry_saves.push(RetrySave::Undo {
                        job,
                        why,
                        steps: unsaved.steps,
                    });
                }
            }
            return;
        }
        match self.store.finish(&job, error.as_deref(), &unsaved.steps) {
            Ok(true) => self.ended(&job, error.as_deref()),
            Ok(false) => warn!("action {id}: taken over before it could be finished"),
            Err(e) => {
                error!(
                    "action {id}: recording its end: {}; trying again",
                    Report(&e)
                );
                self.retry_saves.push(RetrySave::Finish {
                    job,
                    error,
                    steps: unsaved.steps,
                });
            }
        }
    }

    /// What follows an action's end, once it is saved.
    fn ended(&mut self, job: &Job, error: Option<&str>) {
        let id = &job.action_id;
        // A create undone ends failed, with why it failed.
        let error = error.or(job.undoing.as_deref());
        let took = Duration::from_millis((self.store.now_ms() - job.created_at).max(0) as u64);
        let _ = self.ended.try_send(());
        let state = if error.is_some() {
            "failed"
        } else {
            "succeeded"
        };
        self.metrics.action_finished(state);
        self.eta.record(took);
        match error {
            None => info!(
                "action {id}: succeeded {} ms after it was accepted",
                took.as_millis()
            ),
            Some(e) => warn!(
                "action {id}: failed {} ms after it was accepted: {}",
                took.as_millis(),
                crate::report::escaped(e)
            ),
        }
    }
}

/// The pause before try `attempt + 1`: `base · 2^(attempt-1)`, capped, then scaled by a random
/// factor in [0.5, 1.5) so that workers retrying together spread out.
pub fn backoff(base: Duration, attempt: u32) -> Duration {
    let exp = base
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
        .min(MAX_BACKOFF);
    exp.mul_f64(0.5 + fastrand::f64())
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
    fn the_lease_outlasts_the_calls_of_a_tick_between_two_saves() {
        let config = Config::default();
        let s = Settings::from_config(&config);
        let calls = run::SENDS_PER_SAVE as u32 + 2;
        assert!(s.lease > config.okeanos_timeout() * calls);
    }
}
