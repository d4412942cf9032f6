//! The `action_vms` table and an action's steps, as a tick saves them: where the run is with
//! each VM, and what it did. Every write checks that the tick's claim still holds.

use std::time::Duration;

use rusqlite::{params, Transaction};

use super::{millis, Result, Store};
use crate::model::ActionKind;

/// Where a run is with one VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmState {
    /// Not looked at yet in this run.
    Todo,
    /// Read at least once; not in its target state yet.
    Waiting,
    /// In its target state.
    Done,
}

impl VmState {
    fn name(self) -> &'static str {
        match self {
            VmState::Todo => "todo",
            VmState::Waiting => "waiting",
            VmState::Done => "done",
        }
    }

    fn parse(name: &str) -> rusqlite::Result<VmState> {
        match name {
            "todo" => Ok(VmState::Todo),
            "waiting" => Ok(VmState::Waiting),
            "done" => Ok(VmState::Done),
            other => Err(super::bad_value(format!("unknown VM state {other:?}"))),
        }
    }
}

/// One VM of a claimed action, and where its run is with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmProgress {
    pub vm: String,
    /// The instance's order: 0 is the master.
    pub position: i64,
    /// 0 goes first; 1 once every VM of phase 0 is done.
    pub phase: i64,
    pub state: VmState,
    /// The action's command was sent to it, or found under way.
    pub sent: bool,
    /// When the wait for it began: the command sent or found under way, or its first read.
    pub since: Option<i64>,
    /// When it is next due.
    pub next_at: i64,
    /// Reads since the wait began.
    pub polls: i64,
    /// Failed tries of the current call.
    pub tries: i64,
}

impl VmProgress {
    /// The VM's command went out (or was found under way) at `at`: its wait starts then.
    pub fn commanded(&mut self, at: i64) {
        self.sent = true;
        self.since = Some(at);
        self.polls = 0;
    }

    /// The VM was read for the first time at `at`.
    pub fn first_read(&mut self, at: i64) {
        self.state = VmState::Waiting;
        self.since = Some(at);
    }
}

/// What a worker needs for a tick of an action it has claimed.
#[derive(Debug, Clone)]
pub struct Job {
    pub action_id: String,
    pub instance_id: String,
    pub owner: String,
    pub action: ActionKind,
    pub token: String,
    pub compute_url: String,
    /// The catalog's network endpoint, for a destroy's floating IP and private network.
    pub network_url: Option<String>,
    pub claim: String,
    /// How many times a run took the action up: 1, then one more for each restart or
    /// takeover of an expired lease.
    pub attempt: i64,
    pub created_at: i64,
    pub vms: Vec<VmProgress>,
}

/// One line of an action's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewStep {
    pub vm: String,
    pub op: String,
    pub result: String,
}

/// Whether `claim` still holds `action_id`; renews its lease if it does.
fn renew(tx: &Transaction, action_id: &str, claim: &str, until: i64) -> Result<bool> {
    Ok(tx
        .prepare_cached(
            "UPDATE actions SET lease_until = ?3 WHERE id = ?1 AND claim = ?2 AND state = 'running'",
        )?
        .execute(params![action_id, claim, until])?
        == 1)
}

impl Store {
    /// Saves what a tick did: the VMs it changed and the steps it took, and renews the
    /// lease. Returns false when the claim is no longer current (the action was taken over):
    /// the caller must stop working on it.
    pub fn save(
        &mut self,
        job: &Job,
        lease: Duration,
        vms: &[VmProgress],
        steps: &[NewStep],
    ) -> Result<bool> {
        let now = self.now_ms();
        let tx = self.begin_write()?;
        if !renew(&tx, &job.action_id, &job.claim, now + millis(lease))?
            || !write_progress(&tx, job, now, vms, steps)?
        {
            return Ok(false);
        }
        tx.commit()?;
        Ok(true)
    }

    /// Saves what a tick did and lets go of the action until `due_at`, when any worker may
    /// take it up again, in one transaction. Returns false when the claim was lost.
    pub fn park(
        &mut self,
        job: &Job,
        due_at: i64,
        vms: &[VmProgress],
        steps: &[NewStep],
    ) -> Result<bool> {
        let now = self.now_ms();
        let tx = self.begin_write()?;
        if !write_progress(&tx, job, now, vms, steps)? {
            return Ok(false);
        }
        tx.prepare_cached(
            "UPDATE actions SET claim = NULL, lease_until = NULL, due_at = ?2 WHERE id = ?1",
        )?
        .execute(params![job.action_id, due_at])?;
        tx.commit()?;
        Ok(true)
    }
}

/// Writes `vms` and `steps` of `job`, if its claim still holds.
pub(super) fn write_progress(
    tx: &Transaction,
    job: &Job,
    now: i64,
    vms: &[VmProgress],
    steps: &[NewStep],
) -> Result<bool> {
    let held: bool = tx
        .prepare_cached(
            "SELECT COUNT(*) > 0 FROM actions WHERE id = ?1 AND claim = ?2 AND state = 'running'",
        )?
        .query_row(params![job.action_id, job.claim], |r| r.get(0))?;
    if !held {
        return Ok(false);
    }
    let mut update = tx.prepare_cached(
        "UPDATE action_vms SET state = ?3, sent = ?4, since = ?5, next_at = ?6,
             polls = ?7, tries = ?8
         WHERE action_id = ?1 AND vm = ?2",
    )?;
    for v in vms {
        update.execute(params![
            job.action_id,
            v.vm,
            v.state.name(),
            v.sent,
            v.since,
            v.next_at,
            v.polls,
            v.tries
        ])?;
    }
    let mut insert = tx.prepare_cached(
        "INSERT INTO action_steps (action_id, seq, vm, op, result, at)
         SELECT ?1, COALESCE(MAX(seq), 0) + 1, ?2, ?3, ?4, ?5
         FROM action_steps WHERE action_id = ?1",
    )?;
    for s in steps {
        insert.execute(params![job.action_id, s.vm, s.op, s.result, now])?;
    }
    Ok(true)
}

/// The VMs of an action, in the instance's order.
pub(super) fn read_vms(tx: &Transaction, action_id: &str) -> Result<Vec<VmProgress>> {
    let vms = tx
        .prepare_cached(
            "SELECT vm, position, phase, state, sent, since, next_at, polls, tries
             FROM action_vms WHERE action_id = ?1 ORDER BY position",
        )?
        .query_map(params![action_id], |r| {
            Ok(VmProgress {
                vm: r.get(0)?,
                position: r.get(1)?,
                phase: r.get(2)?,
                state: VmState::parse(&r.get::<_, String>(3)?)?,
                sent: r.get(4)?,
                since: r.get(5)?,
                next_at: r.get(6)?,
                polls: r.get(7)?,
                tries: r.get(8)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(vms)
}
