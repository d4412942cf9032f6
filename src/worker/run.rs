//! One tick of an action: the ~okeanos calls that are due now, and nothing that waits.
//!
//! The action's plan (`crate::plan`) says which targets it acts on, phase after phase. A tick
//! takes the first phase with a target not done, reads the targets of it that are due (one
//! `servers/detail` call serves all the servers of an owner) and moves each on by the one
//! state machine of `target.rs`. A target that is not there yet is due again after a pause
//! that grows with each read, and a transient fault after a back-off pause: both are due
//! times saved in SQLite, never a sleeping thread.

use std::sync::Arc;
use std::time::Duration;

use log::warn;

use super::failure::{Failure, Stop};
use super::listing::Servers;
use super::target::Observed;
use super::unsaved::Unsaved;
use super::Worker;
use crate::okeanos::OkeanosError;
use crate::plan::{describe, Command, TargetKind};
use crate::store::{Job, TargetState};

/// Commands a tick sends between two saves.
pub const SENDS_PER_SAVE: usize = 4;

/// The longest pause between two reads of a VM that is not there yet (or `poll_interval`,
/// if that is longer).
pub const MAX_POLL_PAUSE: Duration = Duration::from_secs(5);

/// What a tick came to.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Tick {
    /// Every target is where the action takes it.
    Done,
    /// Nothing more is due before this time (ms since the epoch).
    Wait(i64),
}

impl Worker {
    /// The pause after the `polls`-th read of a target that is not there yet:
    /// `poll_interval`, growing by a fifth with each read, up to [`MAX_POLL_PAUSE`].
    pub(super) fn poll_pause(&self, polls: i64) -> Duration {
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
        let held = self.store.save(
            job,
            self.settings.lease,
            &unsaved.targets(job),
            &unsaved.steps,
        )?;
        unsaved.changed.clear();
        unsaved.steps.clear();
        if held {
            Ok(())
        } else {
            Err(Stop::LostClaim)
        }
    }

    /// Before a command: a tick that sends many saves (and renews its lease) every few of
    /// them. A crash before a save is survived by reading the targets again: a command sent
    /// shows there as a task under way.
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
            if self.grace_over.is_triggered() {
                return Err(Stop::Interrupted);
            }
            let now = self.store.now_ms();
            let targets = &job.targets;
            let Some(phase) = targets
                .iter()
                .filter(|t| t.state != TargetState::Done)
                .map(|t| t.phase)
                .min()
            else {
                return Ok(Tick::Done);
            };
            let in_phase = |i: &usize| targets[*i].phase == phase;
            let current: Vec<usize> = (0..targets.len())
                .filter(in_phase)
                .filter(|i| targets[*i].state != TargetState::Done)
                .collect();
            let due: Vec<usize> = current
                .iter()
                .copied()
                .filter(|i| targets[*i].next_at <= now)
                .collect();
            if due.is_empty() {
                let next = current.iter().map(|i| targets[*i].next_at).min();
                return Ok(Tick::Wait(next.unwrap_or(now)));
            }
            let fresh_phase = (0..targets.len())
                .filter(in_phase)
                .all(|i| targets[i].state == TargetState::Todo && targets[i].tries == 0);
            let deletes_resources = current.iter().all(|i| {
                let t = &targets[*i];
                t.command == Command::Delete && t.target.kind != TargetKind::Server
            });
            // Every time, as a server made by a superseded create may land at any moment.
            if deletes_resources && job.build.is_some() && self.stray_servers(job, unsaved, now)? {
                continue;
            }
            let targets = &job.targets;
            if fresh_phase {
                let opened: Vec<_> = current.iter().map(|i| &targets[*i].target).collect();
                let labels: Vec<String> = opened.iter().map(|t| t.label()).collect();
                let command = targets[current[0]].command;
                unsaved.step(&labels.join(","), "phase", describe(command, &opened));
            }
            let (servers, others): (Vec<usize>, Vec<usize>) = due
                .into_iter()
                .partition(|i| targets[*i].target.kind == TargetKind::Server);
            for i in others {
                self.advance(job, unsaved, i, Observed::Unread, now)?;
            }
            if servers.is_empty() {
                continue;
            }
            let due_at = servers.iter().map(|i| job.targets[*i].next_at).max();
            let listed = match self.read_servers(job, due_at.unwrap_or(now)) {
                Ok(listed) => listed,
                Err(error) => {
                    self.retry_or_fail(job, unsaved, &servers, "status", error)?;
                    continue;
                }
            };
            for i in servers {
                let t = &mut job.targets[i];
                if t.target.id.is_none() {
                    // Made and not recorded (a call that timed out, a run that did not live
                    // to save it): found by the metadata that names its instance and slot.
                    if let Some(found) = listed.made_for(&job.instance_id, t.target.slot) {
                        let label = t.target.label();
                        t.target.id = Some(found.clone());
                        unsaved.touch(i);
                        unsaved.step(&label, "status", format!("found server {found}"));
                    }
                }
                let id = job.targets[i].target.id.as_deref();
                let seen = Observed::Server(id.and_then(|id| listed.by_id.get(id).cloned()));
                self.advance(job, unsaved, i, seen, now)?;
            }
        }
    }

    /// Before a built cluster's floating IPs and network are deleted: a server a superseded
    /// create made after this destroy had listed the servers (its call was in flight) would
    /// hold an IP. Any server whose metadata names the instance and that is still listed is
    /// put back in the plan, to be deleted first (or waited for, if the superseded create's
    /// worker is deleting it already). Returns whether one was.
    fn stray_servers(
        &mut self,
        job: &mut Job,
        unsaved: &mut Unsaved,
        now: i64,
    ) -> Result<bool, Stop> {
        let listed = match self.read_servers(job, now) {
            Ok(listed) => listed,
            Err(error) => {
                let first: Vec<usize> = (0..job.targets.len())
                    .filter(|i| job.targets[*i].target.kind != TargetKind::Server)
                    .take(1)
                    .collect();
                self.retry_or_fail(job, unsaved, &first, "status", error)?;
                return Ok(false);
            }
        };
        let mut found = false;
        for i in 0..job.targets.len() {
            let t = &job.targets[i];
            // Every server of the plan is deleted by now: one listed is another.
            let listed_now = (t.target.kind == TargetKind::Server)
                .then(|| listed.made_for(&job.instance_id, t.target.slot))
                .flatten();
            let Some(id) = listed_now else {
                continue;
            };
            let label = t.target.label();
            let t = &mut job.targets[i];
            t.target.id = Some(id.clone());
            t.state = TargetState::Todo;
            t.sent = false;
            t.tries = 0;
            t.polls = 0;
            t.next_at = now;
            unsaved.touch(i);
            unsaved.step(
                &label,
                "status",
                format!("found server {id}, made meanwhile"),
            );
            found = true;
        }
        Ok(found)
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

    /// A call on the targets `due` failed: each is due again after a back-off pause, or,
    /// when the fault is permanent or the tries are spent, the action fails with ~okeanos's
    /// own message.
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
        let labels: Vec<String> = due.iter().map(|i| job.targets[*i].target.label()).collect();
        let labels = labels.join(",");
        let tries = due.iter().map(|i| job.targets[*i].tries).max().unwrap_or(0) + 1;
        if !error.is_transient() || tries >= i64::from(self.settings.max_attempts) {
            unsaved.step(&labels, op, error.to_string());
            let target = job.targets[due[0]].target.clone();
            return Err(Stop::Failed(Failure::Okeanos { target, op, error }));
        }
        let pause = super::backoff(self.settings.retry_base, tries as u32);
        warn!(
            "action {}: {op} of {labels}: {}; try {tries} of {}, next in {} ms",
            job.action_id,
            crate::report::escaped(&error.to_string()),
            self.settings.max_attempts,
            pause.as_millis()
        );
        unsaved.step(
            &labels,
            op,
            format!("{error}; retrying in {} ms", pause.as_millis()),
        );
        for i in due {
            let t = &mut job.targets[*i];
            t.tries = tries;
            t.next_at = now + pause.as_millis() as i64;
            unsaved.touch(*i);
        }
        Ok(())
    }
}
