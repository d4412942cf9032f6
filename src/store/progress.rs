//! The `action_targets` table and an action's steps, as a tick saves them: where the run is
//! with each target of its plan, and what it did. Every write checks that the tick's claim
//! still holds.

use std::time::Duration;

use rusqlite::{params, Connection};

use super::instances::record_made;
use super::{bad_value, millis, Result, Store};
use crate::build::Build;
use crate::model::ActionKind;
use crate::plan::{Command, Plan, Target, TargetKind};

/// Where a run is with one target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetState {
    /// Not looked at yet in this run.
    Todo,
    /// Looked at (read, or its command sent); not where the action takes it yet.
    Waiting,
    /// Where the action takes it.
    Done,
}

impl TargetState {
    fn name(self) -> &'static str {
        match self {
            TargetState::Todo => "todo",
            TargetState::Waiting => "waiting",
            TargetState::Done => "done",
        }
    }

    fn parse(name: &str) -> rusqlite::Result<TargetState> {
        match name {
            "todo" => Ok(TargetState::Todo),
            "waiting" => Ok(TargetState::Waiting),
            "done" => Ok(TargetState::Done),
            other => Err(bad_value(format!("unknown target state {other:?}"))),
        }
    }
}

/// One target of a claimed action, and where its run is with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetProgress {
    pub target: Target,
    /// What the action does to it.
    pub command: Command,
    /// 0 goes first; each phase once every target of the one before is done.
    pub phase: u32,
    pub state: TargetState,
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

impl TargetProgress {
    /// The target's command went out (or was found under way) at `at`: its wait starts then.
    pub fn commanded(&mut self, at: i64) {
        self.sent = true;
        self.since = Some(at);
        self.polls = 0;
    }

    /// The target was read for the first time at `at`.
    pub fn first_read(&mut self, at: i64) {
        self.state = TargetState::Waiting;
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
    /// The catalog's network endpoint, for floating IPs and private networks.
    pub network_url: Option<String>,
    pub claim: String,
    /// How many times a run took the action up: 1, then one more for each restart or
    /// takeover of an expired lease.
    pub attempt: i64,
    pub created_at: i64,
    /// How the instance is built, for a create (and the undoing of one).
    pub build: Option<Build>,
    /// Why a create failed, while what it made is being deleted.
    pub undoing: Option<String>,
    /// The plan's targets, in its order.
    pub targets: Vec<TargetProgress>,
}

impl Job {
    /// The id of the target of `kind` at `slot`, once known.
    pub fn made(&self, kind: TargetKind, slot: u32) -> Option<&str> {
        self.targets
            .iter()
            .find(|t| t.target.kind == kind && t.target.slot == slot)
            .and_then(|t| t.target.id.as_deref())
    }
}

/// What [`Store::take_floating_ip`] came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Took {
    /// This IP, now the target's.
    One(String),
    /// Every candidate is held by an action or an instance.
    NoneFree,
    /// The claim was lost: nothing was taken.
    LostClaim,
}

/// One line of an action's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewStep {
    /// The target's label ([`Target::label`]), or several of them joined by commas.
    pub vm: String,
    pub op: String,
    pub result: String,
}

/// Whether `claim` still holds `action_id`; renews its lease to `until` if given.
fn holds(conn: &Connection, action_id: &str, claim: &str, until: Option<i64>) -> Result<bool> {
    Ok(conn
        .prepare_cached(
            "UPDATE actions SET lease_until = COALESCE(?3, lease_until)
             WHERE id = ?1 AND claim = ?2 AND state = 'running'",
        )?
        .execute(params![action_id, claim, until])?
        == 1)
}

impl Store {
    /// Saves what a tick did: the targets it changed and the steps it took, and renews the
    /// lease. Returns false when the claim is no longer current (the action was taken over):
    /// the caller must stop working on it.
    pub fn save(
        &mut self,
        job: &Job,
        lease: Duration,
        targets: &[TargetProgress],
        steps: &[NewStep],
    ) -> Result<bool> {
        let now = self.now_ms();
        let tx = self.begin_write()?;
        if !holds(&tx, &job.action_id, &job.claim, Some(now + millis(lease)))? {
            return Ok(false);
        }
        write_progress(&tx, job, now, targets, steps)?;
        tx.commit()?;
        Ok(true)
    }

    /// Whether the claim of `job` still holds, read without a write: a create asks after
    /// each thing it makes, so that one it makes after a destroy took over is deleted at
    /// once.
    pub fn still_holds(&self, job: &Job) -> Result<bool> {
        let held: bool = self
            .conn
            .prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM actions
                                WHERE id = ?1 AND claim = ?2 AND state = 'running')",
            )?
            .query_row(params![job.action_id, job.claim], |r| r.get(0))?;
        Ok(held)
    }

    /// Takes for target `slot` of `job` (a floating IP to make) the first of `candidates`
    /// (free floating IPs of the owner's) that no action and no instance holds, and records it
    /// on the instance at once: an IP is told from any other of the owner's only by this
    /// record.
    pub fn take_floating_ip(
        &mut self,
        job: &Job,
        slot: u32,
        candidates: &[String],
    ) -> Result<Took> {
        let tx = self.begin_write()?;
        if !holds(&tx, &job.action_id, &job.claim, None)? {
            return Ok(Took::LostClaim);
        }
        let mut held = tx.prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM action_targets
                            WHERE kind = 'floating_ip' AND target_id = ?1)
                 OR EXISTS (SELECT 1 FROM instance_floating_ips WHERE floating_ip_id = ?1)",
        )?;
        let mut taken = None;
        for candidate in candidates {
            if !held.query_row(params![candidate], |r| r.get::<_, bool>(0))? {
                taken = Some(candidate.clone());
                break;
            }
        }
        drop(held);
        if let Some(ip) = &taken {
            tx.prepare_cached(
                "UPDATE action_targets SET target_id = ?3
                 WHERE action_id = ?1 AND kind = 'floating_ip' AND slot = ?2",
            )?
            .execute(params![job.action_id, slot, ip])?;
            let target = Target {
                kind: TargetKind::FloatingIp,
                slot,
                id: Some(ip.clone()),
            };
            record_made(&tx, &job.instance_id, &target)?;
        }
        tx.commit()?;
        Ok(taken.map_or(Took::NoneFree, Took::One))
    }

    /// Saves what a tick did and lets go of the action until `due_at`, when any worker may
    /// take it up again, in one transaction. Returns false when the claim was lost.
    pub fn park(
        &mut self,
        job: &Job,
        due_at: i64,
        targets: &[TargetProgress],
        steps: &[NewStep],
    ) -> Result<bool> {
        let now = self.now_ms();
        let tx = self.begin_write()?;
        if !holds(&tx, &job.action_id, &job.claim, None)? {
            return Ok(false);
        }
        write_progress(&tx, job, now, targets, steps)?;
        tx.prepare_cached(
            "UPDATE actions SET claim = NULL, lease_until = NULL, due_at = ?2 WHERE id = ?1",
        )?
        .execute(params![job.action_id, due_at])?;
        tx.commit()?;
        Ok(true)
    }
}

/// Whether `claim` holds `action_id` now, without renewing it.
pub(super) fn claim_holds(conn: &Connection, action_id: &str, claim: &str) -> Result<bool> {
    holds(conn, action_id, claim, None)
}

/// Writes `targets` and `steps` of `job`; the caller has checked its claim. What a create
/// has made is recorded on its instance there and then.
pub(super) fn write_progress(
    conn: &Connection,
    job: &Job,
    now: i64,
    targets: &[TargetProgress],
    steps: &[NewStep],
) -> Result<()> {
    let action_id = &job.action_id;
    let mut update = conn.prepare_cached(
        "UPDATE action_targets SET target_id = ?4, state = ?5, sent = ?6, since = ?7,
             next_at = ?8, polls = ?9, tries = ?10
         WHERE action_id = ?1 AND kind = ?2 AND slot = ?3",
    )?;
    for t in targets {
        update.execute(params![
            action_id,
            t.target.kind.name(),
            t.target.slot,
            t.target.id,
            t.state.name(),
            t.sent,
            t.since,
            t.next_at,
            t.polls,
            t.tries
        ])?;
        if t.command == Command::Create {
            record_made(conn, &job.instance_id, &t.target)?;
        }
    }
    let mut insert = conn.prepare_cached(
        "INSERT INTO action_steps (action_id, seq, vm, op, result, at)
         SELECT ?1, COALESCE(MAX(seq), 0) + 1, ?2, ?3, ?4, ?5
         FROM action_steps WHERE action_id = ?1",
    )?;
    for s in steps {
        insert.execute(params![action_id, s.vm, s.op, s.result, now])?;
    }
    Ok(())
}

/// Saves `plan` as the targets of `action_id`, each to do from `now`.
pub(super) fn write_plan(conn: &Connection, action_id: &str, plan: &Plan, now: i64) -> Result<()> {
    let mut insert = conn.prepare_cached(
        "INSERT INTO action_targets (action_id, kind, slot, target_id, command, phase, seq,
                                     state, next_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'todo', ?8)",
    )?;
    for (seq, (phase, t)) in plan.targets().enumerate() {
        insert.execute(params![
            action_id,
            t.kind.name(),
            t.slot,
            t.id,
            plan.command.name(),
            phase,
            seq as i64,
            now
        ])?;
    }
    Ok(())
}

/// The targets of an action, in its plan's order.
pub(super) fn read_targets(conn: &Connection, action_id: &str) -> Result<Vec<TargetProgress>> {
    let targets = conn
        .prepare_cached(
            "SELECT kind, slot, target_id, phase, state, sent, since, next_at, polls, tries,
                    command
             FROM action_targets WHERE action_id = ?1 ORDER BY seq",
        )?
        .query_map(params![action_id], |r| {
            let kind: String = r.get(0)?;
            let command: String = r.get(10)?;
            Ok(TargetProgress {
                command: Command::parse(&command)
                    .ok_or_else(|| bad_value(format!("unknown command {command:?}")))?,
                target: Target {
                    kind: TargetKind::parse(&kind)
                        .ok_or_else(|| bad_value(format!("unknown target kind {kind:?}")))?,
                    slot: r.get(1)?,
                    id: r.get(2)?,
                },
                phase: r.get(3)?,
                state: TargetState::parse(&r.get::<_, String>(4)?)?,
                sent: r.get(5)?,
                since: r.get(6)?,
                next_at: r.get(7)?,
                polls: r.get(8)?,
                tries: r.get(9)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(targets)
}
