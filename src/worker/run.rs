//! One tick of an action: the ~okeanos calls that are due now, and nothing that waits.
//!
//! A start brings every slave up at once, then (once all are ACTIVE) the master; a stop takes
//! the master down, then (once it is STOPPED) every slave at once. For each VM of the current
//! phase that is due: read it (one `servers/detail` call serves all the VMs of an owner); skip
//! it if it is already there; wait for a task already under way; else send the command. A VM
//! that is not there yet is due again after a pause that grows with each read, and a
//! transient fault after a back-off pause: both are due times saved in SQLite, never a
//! sleeping thread.

use std::sync::Arc;
use std::time::Duration;

use log::warn;

use super::destroy;
use super::failure::{Failure, Stop};
use super::listing::Servers;
use super::unsaved::Unsaved;
use super::Worker;
use crate::model::ActionKind;
use crate::okeanos::{OkeanosError, ServerAction, ServerState};
use crate::store::{Job, VmState};

/// Commands a tick sends between two saves.
pub const SENDS_PER_SAVE: usize = 4;

/// The longest pause between two reads of a VM that is not there yet (or `poll_interval`,
/// if that is longer).
pub const MAX_POLL_PAUSE: Duration = Duration::from_secs(5);

/// What a tick came to.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Tick {
    /// Every VM is in its target state.
    Done,
    /// Nothing more is due before this time (ms since the epoch).
    Wait(i64),
}

/// The server command of a start or a stop; a destroy deletes instead (`destroy.rs`).
fn command(kind: ActionKind) -> Option<ServerAction> {
    match kind {
        ActionKind::Start => Some(ServerAction::Start),
        ActionKind::Stop => Some(ServerAction::Shutdown),
        ActionKind::Destroy => None,
    }
}

/// What a phase does, for its step: "start 2 slaves", "shutdown the master", "delete 3
/// servers".
fn phase_step(kind: ActionKind, vms: &[&str], has_master: bool) -> String {
    let Some(op) = command(kind) else {
        return destroy::phase_step(vms);
    };
    let verb = op.name();
    match (has_master, vms.len()) {
        (true, _) => format!("{verb} the master"),
        (false, 1) => format!("{verb} 1 slave"),
        (false, n) => format!("{verb} {n} slaves"),
    }
}

impl Worker {
    /// The pause after the `polls`-th read of a VM that is not there yet: `poll_interval`,
    /// growing by a fifth with each read, up to [`MAX_POLL_PAUSE`].
    fn poll_pause(&self, polls: i64) -> Duration {
        let first = self.settings.poll_interval;
        let cap = first.max(MAX_POLL_PAUSE);
        first
            .mul_f64(1.2f64.powi(polls.clamp(0, 60) as i32))
            .min(cap)
    }

    /// Saves what the tick did so far (renewing the lease).
    fn flush(&mut self, job: &Job, unsaved: &mut Unsaved) -> Result<(), Stop> {
        if unsaved.changed.is_empty() && unsaved.steps.is_empty() {
            return Ok(());
        }
        let held = self
            .store
            .save(job, self.settings.lease, &unsaved.vms(job), &unsaved.steps)?;
        unsaved.changed.clear();
        unsaved.steps.clear();
        if held {
            Ok(())
        } else {
            Err(Stop::LostClaim)
        }
    }

    /// Before a command: a tick that sends many saves (and renews its lease) every few of
    /// them. A crash before a save is survived by reading the VMs again: a command sent shows
    /// there as a task under way.
    pub(super) fn before_send(
        &mut self,
        job: &Job,
        unsaved: &mut Unsaved,
        i: usize,
    ) -> Result<(), Stop> {
        if unsaved.sends == SENDS_PER_SAVE {
            self.flush(job, unsaved)?;
            unsaved.sends = 0;
        }
        unsaved.sends += 1;
        unsaved.touch(i);
        Ok(())
    }

    /// One tick of `job`: the calls due now, phase after phase. What it did is left in
    /// `unsaved`, for the caller to save with the action's parking or end.
    pub(super) fn tick(&mut self, job: &mut Job, unsaved: &mut Unsaved) -> Result<Tick, Stop> {
        loop {
            if self.abandon.is_triggered() {
                return Err(Stop::Interrupted);
            }
            let now = self.store.now_ms();
            let Some(phase) = job
                .vms
                .iter()
                .filter(|v| v.state != VmState::Done)
                .map(|v| v.phase)
                .min()
            else {
                return Ok(Tick::Done);
            };
            let current: Vec<usize> = (0..job.vms.len())
                .filter(|i| job.vms[*i].phase == phase && job.vms[*i].state != VmState::Done)
                .collect();
            let due: Vec<usize> = current
                .iter()
                .copied()
                .filter(|i| job.vms[*i].next_at <= now)
                .collect();
            if due.is_empty() {
                let next = current.iter().map(|i| job.vms[*i].next_at).min();
                return Ok(Tick::Wait(next.unwrap_or(now)));
            }
            let fresh_phase = (0..job.vms.len())
                .filter(|i| job.vms[*i].phase == phase)
                .all(|i| job.vms[i].state == VmState::Todo && job.vms[i].tries == 0);
            if fresh_phase {
                let names: Vec<&str> = current.iter().map(|i| job.vms[*i].vm.as_str()).collect();
                let has_master = current.iter().any(|i| job.vms[*i].position == 0);
                let what = phase_step(job.action, &names, has_master);
                unsaved.step(&names.join(","), "phase", what);
            }
            if due.iter().all(|i| destroy::is_resource(&job.vms[*i].vm)) {
                for i in due {
                    self.delete_resource(job, unsaved, i)?;
                }
                continue;
            }
            let due_at = due.iter().map(|i| job.vms[*i].next_at).max().unwrap_or(now);
            let servers = match self.read_servers(job, due_at) {
                Ok(servers) => servers,
                Err(error) => {
                    self.retry_or_fail(job, unsaved, &due, "status", error)?;
                    continue;
                }
            };
            for i in due {
                let state = servers.get(&job.vms[i].vm).cloned();
                let Some(op) = command(job.action) else {
                    self.advance_delete(job, unsaved, i, state, now)?;
                    continue;
                };
                let state = state.ok_or_else(|| OkeanosError::Fault {
                    status: 404,
                    name: "itemNotFound".into(),
                    message: format!("Server {} not found", job.vms[i].vm),
                });
                match state {
                    Ok(state) => self.advance(job, unsaved, i, op, state, now)?,
                    Err(error) => {
                        let vm = job.vms[i].vm.clone();
                        unsaved.step(&vm, "status", error.to_string());
                        let failure = Failure::Okeanos {
                            vm,
                            op: "status",
                            error,
                        };
                        return Err(Stop::Failed(failure));
                    }
                }
            }
        }
    }

    /// Every VM of the job's owner, as seen at `due` or later: a listing another tick asked
    /// for since, or a new one.
    fn read_servers(&self, job: &Job, due: i64) -> Result<Servers, OkeanosError> {
        if let Some(servers) = self.listings.get(&job.compute_url, &job.owner, due) {
            return Ok(servers);
        }
        let asked = self.store.now_ms();
        let servers = Arc::new(self.client.servers_detail(&job.compute_url, &job.token)?);
        self.listings
            .put(&job.compute_url, &job.owner, asked, servers.clone());
        Ok(servers)
    }

    /// A call on the VMs `due` failed: each is due again after a back-off pause, or, when
    /// the fault is permanent or the tries are spent, the action fails with ~okeanos's own
    /// message.
    pub(super) fn retry_or_fail(
        &mut self,
        job: &mut Job,
        unsaved: &mut Unsaved,
        due: &[usize],
        op: &'static str,
        error: OkeanosError,
    ) -> Result<(), Stop> {
        // The pause runs from the failure, however long the failed call took.
        let now = self.store.now_ms();
        let names: Vec<&str> = due.iter().map(|i| job.vms[*i].vm.as_str()).collect();
        let names = names.join(",");
        let tries = due.iter().map(|i| job.vms[*i].tries).max().unwrap_or(0) + 1;
        if !error.is_transient() || tries >= i64::from(self.settings.max_attempts) {
            unsaved.step(&names, op, error.to_string());
            let vm = job.vms[due[0]].vm.clone();
            return Err(Stop::Failed(destroy::failure(vm, op, error)));
        }
        let pause = super::backoff(self.settings.retry_base, tries as u32);
        warn!(
            "action {}: {op} of server {names}: {error}; try {tries} of {}, next in {} ms",
            job.action_id,
            self.settings.max_attempts,
            pause.as_millis()
        );
        unsaved.step(
            &names,
            op,
            format!("{error}; retrying in {} ms", pause.as_millis()),
        );
        for i in due {
            let v = &mut job.vms[*i];
            v.tries = tries;
            v.next_at = now + pause.as_millis() as i64;
            unsaved.touch(*i);
        }
        Ok(())
    }

    /// Moves VM `i` on from what was just read of it: done, a command sent, or due again.
    fn advance(
        &mut self,
        job: &mut Job,
        unsaved: &mut Unsaved,
        i: usize,
        op: ServerAction,
        mut state: ServerState,
        now: i64,
    ) -> Result<(), Stop> {
        let (target, source) = (op.target(), op.source());
        let vm = job.vms[i].vm.clone();
        unsaved.touch(i);
        let first_read = job.vms[i].state == VmState::Todo;
        if first_read {
            unsaved.step(&vm, "status", state.to_string());
            job.vms[i].first_read(now);
        }
        job.vms[i].tries = 0;
        if state.status == target && state.task.is_empty() {
            let v = &mut job.vms[i];
            v.state = VmState::Done;
            if first_read && !v.sent {
                unsaved.step(&vm, op.name(), format!("skipped: already {target}"));
            } else {
                let polls = v.polls;
                unsaved.step(&vm, "wait", format!("{target} after {polls} polls"));
            }
            return Ok(());
        }
        if state.status == "ERROR" || state.status == "DELETED" {
            let failure = Failure::Stuck {
                vm: vm.clone(),
                status: state.status,
                op: op.name(),
            };
            unsaved.step(&vm, "wait", failure.to_string());
            return Err(Stop::Failed(failure));
        }
        if state.task == op.task() && !job.vms[i].sent {
            unsaved.step(&vm, op.name(), "already under way");
            job.vms[i].commanded(now);
        }
        if state.status == source && state.task.is_empty() && !job.vms[i].sent {
            self.before_send(job, unsaved, i)?;
            match self
                .client
                .server_action(&job.compute_url, &job.token, &vm, op)
            {
                Ok(()) => {
                    unsaved.step(&vm, op.name(), "accepted");
                    // The wait counts from the command, however long the tick took to get
                    // to it.
                    let sent_at = self.store.now_ms();
                    job.vms[i].commanded(sent_at);
                    return self.schedule_poll(job, unsaved, i, sent_at, state, target);
                }
                // Synnefo answers 400 when the server is not in a state the action applies
                // to; that may be because it just moved. Read it again before failing.
                Err(error) if error.status() == Some(400) => {
                    match self.client.server_status(&job.compute_url, &job.token, &vm) {
                        Ok(fresh) => {
                            unsaved.step(&vm, "status", fresh.to_string());
                            if fresh.status == source && fresh.task.is_empty() {
                                unsaved.step(&vm, op.name(), error.to_string());
                                let failure = Failure::Okeanos {
                                    vm,
                                    op: op.name(),
                                    error,
                                };
                                return Err(Stop::Failed(failure));
                            }
                            state = fresh;
                            if state.status == target && state.task.is_empty() {
                                job.vms[i].state = VmState::Done;
                                unsaved.step(&vm, "wait", format!("{target} after 0 polls"));
                                return Ok(());
                            }
                        }
                        Err(e) => return self.retry_or_fail(job, unsaved, &[i], "status", e),
                    }
                }
                Err(error) => {
                    return self.retry_or_fail(job, unsaved, &[i], op.name(), error);
                }
            }
        }
        self.schedule_poll(job, unsaved, i, now, state, target)
    }

    /// VM `i` is not there yet at `now`: it fails if its wait is over, else it is due again
    /// after a pause that grows with each read.
    pub(super) fn schedule_poll(
        &mut self,
        job: &mut Job,
        unsaved: &mut Unsaved,
        i: usize,
        now: i64,
        state: ServerState,
        target: &'static str,
    ) -> Result<(), Stop> {
        let vm = job.vms[i].vm.clone();
        let v = &mut job.vms[i];
        let waited = now - v.since.unwrap_or(now);
        if waited >= self.settings.vm_wait_timeout.as_millis() as i64 {
            let failure = Failure::TimedOut {
                vm: vm.clone(),
                target,
                secs: self.settings.vm_wait_timeout.as_secs(),
                last: state,
            };
            unsaved.step(&vm, "wait", failure.to_string());
            return Err(Stop::Failed(failure));
        }
        let pause = self.poll_pause(v.polls);
        v.polls += 1;
        // On a grid, so that the VMs commanded in one tick, and the other actions of their
        // owner, fall due together and share one listing.
        let grid = (self.settings.poll_interval.as_millis() as i64 / 2).clamp(1, 20);
        let due = (now + pause.as_millis() as i64 + grid - 1) / grid * grid;
        // Never past the wait's end, so that a VM that never arrives fails on time.
        let deadline = v.since.unwrap_or(now) + self.settings.vm_wait_timeout.as_millis() as i64;
        v.next_at = due.min(deadline);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_are_named_for_people() {
        assert_eq!(
            phase_step(ActionKind::Start, &["2", "3"], false),
            "start 2 slaves"
        );
        assert_eq!(
            phase_step(ActionKind::Start, &["1"], true),
            "start the master"
        );
        assert_eq!(
            phase_step(ActionKind::Stop, &["1"], true),
            "shutdown the master"
        );
        assert_eq!(
            phase_step(ActionKind::Stop, &["3"], false),
            "shutdown 1 slave"
        );
    }
}
