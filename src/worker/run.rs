//! One run of an action: the VMs in the action's order, each read before it is acted on,
//! every ~okeanos call retried on transient faults, every step recorded under the claim.

use std::time::{Duration, Instant};

use log::warn;

use super::{Worker, MAX_BACKOFF};
use crate::model::ActionKind;
use crate::okeanos::{Client, OkeanosError, ServerAction, ServerState};
use crate::store::Job;

/// Why an action failed for good: what its user reads in `error` and `failure_message`.
#[derive(Debug)]
pub enum Failure {
    /// ~okeanos refused a call for good, or kept failing past `max_attempts`.
    Okeanos {
        vm: String,
        op: &'static str,
        error: OkeanosError,
    },
    /// The VM is in a state waiting cannot leave (ERROR, DELETED).
    Stuck {
        vm: String,
        status: String,
        op: &'static str,
    },
    /// The VM did not reach its target within `vm_wait_timeout_secs`.
    TimedOut {
        vm: String,
        target: &'static str,
        secs: u64,
        last: ServerState,
    },
    /// The run panicked: a bug, contained.
    Panicked(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            // ~okeanos's own message first: it says what the user can do about it.
            Failure::Okeanos { vm, op, error } => write!(f, "{error} on {op} of server {vm}"),
            Failure::Stuck { vm, status, op } => {
                write!(f, "server {vm} is {status}; cannot {op}")
            }
            Failure::TimedOut {
                vm,
                target,
                secs,
                last,
            } => write!(
                f,
                "server {vm} did not become {target} within {secs} s (last status {last})"
            ),
            Failure::Panicked(what) => {
                write!(f, "internal error while running the action: {what}")
            }
        }
    }
}

impl std::error::Error for Failure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Failure::Okeanos { error, .. } => Some(error),
            _ => None,
        }
    }
}

/// Why a run stopped before the action succeeded.
#[derive(Debug)]
pub(super) enum Stop {
    /// The action failed for good.
    Failed(Failure),
    /// Shutdown: hand the action back.
    Interrupted,
    /// Another worker holds the action now; this one must let go without writing.
    LostClaim,
    /// The database failed; the lease will expire and the action will be taken up again.
    Store(crate::store::StoreError),
}

impl From<crate::store::StoreError> for Stop {
    fn from(e: crate::store::StoreError) -> Stop {
        Stop::Store(e)
    }
}

impl Failure {
    /// Synnefo's 400: the server is not in a state the action applies to, which may be
    /// because it just moved; worth a fresh read before failing.
    fn is_bad_request(&self) -> bool {
        matches!(self, Failure::Okeanos { error, .. } if error.status() == Some(400))
    }
}

impl Worker {
    /// One run: the slaves then the master to start, the master then the slaves to stop.
    pub(super) fn run(&mut self, job: &Job) -> Result<(), Stop> {
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
                let failure = Failure::Stuck {
                    vm: vm.to_string(),
                    status: state.status,
                    op: op.name(),
                };
                self.step(job, vm, "wait", &failure.to_string())?;
                return Err(Stop::Failed(failure));
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
                    Err(Stop::Failed(failure)) if failure.is_bad_request() => {
                        state = self.read(job, vm)?;
                        self.step(job, vm, "status", &state.to_string())?;
                        if state.status == source && state.task.is_empty() {
                            return Err(Stop::Failed(failure));
                        }
                        continue;
                    }
                    Err(other) => return Err(other),
                }
            }
            if Instant::now() >= deadline {
                let failure = Failure::TimedOut {
                    vm: vm.to_string(),
                    target,
                    secs: self.settings.vm_wait_timeout.as_secs(),
                    last: state,
                };
                self.step(job, vm, "wait", &failure.to_string())?;
                return Err(Stop::Failed(failure));
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
        op: &'static str,
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
                Err(error) => {
                    self.step(job, vm, op, &error.to_string())?;
                    return Err(Stop::Failed(Failure::Okeanos {
                        vm: vm.to_string(),
                        op,
                        error,
                    }));
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
}
