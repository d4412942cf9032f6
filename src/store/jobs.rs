//! The worker's side of the `actions` table. An action is run in short ticks: a worker claims
//! an action that is due (under a lease, so that it has one holder at a time and a stale
//! holder is fenced off), makes the calls that are due, saves where each target is and parks
//! it until it is due again (`progress.rs`). The first claim of an action saves its plan.
//! Also recovery at start, and the end of an action with its instance's new status.

use std::time::Duration;

use rusqlite::{params, OptionalExtension};

use super::end::{end_actions, Which};
use super::instances::{forget_made, parse_build, read_cluster};
use super::progress::{claim_holds, read_targets, write_plan, write_progress, Job, NewStep};
use super::{kind_of, millis, Result, Store};
use crate::model::{ActionKind, ActionState, Status};
use crate::plan::{plan, Cluster};

/// The action due the longest, among those a worker may claim at `?1`: a running one whose
/// due time has come, one whose holder's lease has expired, or (with `?2`) a new one.
macro_rules! due {
    () => {
        concat!(
            "SELECT id FROM actions WHERE ",
            live!(),
            " AND due_at <= ?1
               AND ((state = 'queued' AND ?2) OR (state = 'running' AND claim IS NULL)
                    OR (state = 'running' AND lease_until < ?1))
             ORDER BY due_at, rowid LIMIT 1"
        )
    };
}

impl Store {
    /// At start-up, before any worker runs: every live action goes back to the queue (this
    /// process is the database's only user; it will read every target again before acting),
    /// and an instance left in STARTING or STOPPING with nothing in flight is marked FAILED.
    /// Returns how many actions were taken up again and how many instances failed.
    pub fn recover(&mut self) -> Result<(usize, usize)> {
        let now = self.now_ms();
        let tx = self.begin_write()?;
        let requeued = tx.execute(
            "UPDATE actions SET state = 'queued', claim = NULL, lease_until = NULL, due_at = ?1
             WHERE state = 'running'",
            params![now],
        )?;
        let orphaned = tx.execute(
            concat!(
                "UPDATE lambda_instances
                 SET status = 'FAILED', failure_message = 'interrupted: no action was in flight'
                 WHERE status IN ('STARTING', 'STOPPING')
                   AND NOT EXISTS (SELECT 1 FROM actions a
                                   WHERE a.instance_id = lambda_instances.id AND a.",
                live!(),
                ")"
            ),
            [],
        )?;
        tx.commit()?;
        Ok((requeued, orphaned))
    }

    /// Claims the action due the longest, for `lease` (see [`due!`]; with `queued`, a new
    /// one too). The claim is fresh, so whoever held the action before can no longer write
    /// it. The first claim of an action saves its plan.
    pub fn claim_due(&mut self, lease: Duration, queued: bool) -> Result<Option<Job>> {
        let now = self.now_ms();
        // A look first, without the write lock: an idle worker never holds up a writer.
        let any: Option<String> = self
            .conn
            .prepare_cached(due!())?
            .query_row(params![now, queued], |r| r.get(0))
            .optional()?;
        if any.is_none() {
            return Ok(None);
        }
        let claim = uuid::Uuid::new_v4().to_string();
        let tx = self.begin_write()?;
        let claimed = tx
            .prepare_cached(concat!(
                "UPDATE actions SET attempts = attempts + (state = 'queued' OR claim IS NOT NULL),
                     state = 'running', claim = ?3, lease_until = ?4,
                     started_at = COALESCE(started_at, ?1)
                 WHERE id = (",
                due!(),
                ")
                 RETURNING id, instance_id,
                     (SELECT owner FROM lambda_instances i WHERE i.id = instance_id),
                     action, token, compute_url, network_url, attempts, created_at, error,
                     (SELECT build FROM lambda_instances i WHERE i.id = instance_id)"
            ))?
            .query_row(params![now, queued, claim, now + millis(lease)], |r| {
                let build: Option<String> = r.get(10)?;
                Ok((
                    Job {
                        action_id: r.get(0)?,
                        instance_id: r.get(1)?,
                        owner: r.get(2)?,
                        action: kind_of(r.get(3)?)?,
                        token: r.get(4)?,
                        compute_url: r.get(5)?,
                        network_url: r.get(6)?,
                        claim: claim.clone(),
                        attempt: r.get(7)?,
                        created_at: r.get(8)?,
                        undoing: r.get(9)?,
                        build: None,
                        targets: Vec::new(),
                    },
                    build,
                ))
            })
            .optional()?;
        let Some((mut job, build)) = claimed else {
            return Ok(None);
        };
        job.build = build.as_deref().map(parse_build).transpose()?;
        job.targets = read_targets(&tx, &job.action_id)?;
        let first = job.targets.is_empty() && job.undoing.is_none();
        if first {
            // The first tick of this action: its plan, nothing done yet. (A plan may be
            // empty: destroying an instance whose creation left nothing.)
            let cluster = match (&job.build, job.action) {
                (Some(build), ActionKind::Create) => Cluster::to_build(build),
                _ => read_cluster(&tx, &job.instance_id)?,
            };
            write_plan(&tx, &job.action_id, &plan(job.action, &cluster), now)?;
            job.targets = read_targets(&tx, &job.action_id)?;
        }
        tx.commit()?;
        Ok(Some(job))
    }

    /// Ends a claimed action with its last `steps`: succeeded (`error` None) or failed, in
    /// one transaction with the instance's new status. A create being undone ends failed,
    /// with why it failed; once undone, what it had made is forgotten (it is all deleted).
    /// Returns false when the claim was lost.
    pub fn finish(&mut self, job: &Job, error: Option<&str>, steps: &[NewStep]) -> Result<bool> {
        let now = self.now_ms();
        let tx = self.begin_write()?;
        if !claim_holds(&tx, &job.action_id, &job.claim)? {
            return Ok(false);
        }
        write_progress(&tx, job, now, &[], steps)?;
        let undone;
        let error = match (&job.undoing, error) {
            (None, error) => error,
            (Some(why), None) => {
                forget_made(&tx, &job.instance_id)?;
                Some(why.as_str())
            }
            (Some(why), Some(also)) => {
                undone = format!("{why}; deleting what it made failed: {also}");
                Some(undone.as_str())
            }
        };
        let (state, status) = match error {
            None => (ActionState::Succeeded, job.action.final_status()),
            Some(_) => (ActionState::Failed, Status::Failed),
        };
        let which = Which::Claimed {
            id: &job.action_id,
            claim: &job.claim,
        };
        if end_actions(&tx, which, state, error, now)?.is_empty() {
            return Ok(false);
        }
        tx.prepare_cached(
            "UPDATE lambda_instances SET status = ?2, failure_message = ?3 WHERE id = ?1",
        )?
        .execute(params![job.instance_id, status.name(), error])?;
        tx.commit()?;
        Ok(true)
    }

    /// Turns a claimed create that failed (`why`) into the undoing of what it made: the rest
    /// of its plan gives way to a destroy's plan of the instance as recorded (with a look for
    /// what was made and not recorded), due at once, and `why` is kept for its end. The claim
    /// is let go. Returns false when the claim was lost.
    pub fn undo(&mut self, job: &Job, why: &str, steps: &[NewStep]) -> Result<bool> {
        let now = self.now_ms();
        let tx = self.begin_write()?;
        if !claim_holds(&tx, &job.action_id, &job.claim)? {
            return Ok(false);
        }
        write_progress(&tx, job, now, &[], steps)?;
        tx.prepare_cached("DELETE FROM action_targets WHERE action_id = ?1")?
            .execute(params![job.action_id])?;
        let cluster = read_cluster(&tx, &job.instance_id)?;
        write_plan(
            &tx,
            &job.action_id,
            &plan(ActionKind::Destroy, &cluster),
            now,
        )?;
        tx.prepare_cached(
            "UPDATE actions SET error = ?2, claim = NULL, lease_until = NULL, due_at = ?3
             WHERE id = ?1",
        )?
        .execute(params![job.action_id, why, now])?;
        tx.commit()?;
        Ok(true)
    }

    /// When the next unclaimed action falls due (a running one, or with `queued` a new one),
    /// if any; through the due-time index. (A claimed one whose lease expires is found by
    /// the idle workers' regular look.)
    pub fn next_due(&self, queued: bool) -> Result<Option<i64>> {
        let at = self
            .conn
            .prepare_cached(concat!(
                "SELECT MIN(due_at) FROM actions WHERE ",
                live!(),
                " AND claim IS NULL AND (state = 'running' OR ?1)"
            ))?
            .query_row(params![queued], |r| r.get(0))?;
        Ok(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ActionKind, ActionState};
    use crate::store::actions::tests::request;
    use crate::store::instances::tests::{instance, status, store, OWNER};
    use crate::store::Requested;
    use crate::store::TargetState;

    const LEASE: Duration = Duration::from_secs(60);

    fn step(vm: &str, op: &str, result: &str) -> NewStep {
        NewStep {
            vm: vm.into(),
            op: op.into(),
            result: result.into(),
        }
    }

    /// The job's targets by label, with their phases: `s1:0 m:1`.
    fn phases(job: &Job) -> String {
        let labels: Vec<String> = job
            .targets
            .iter()
            .map(|t| format!("{}:{}", t.target.label(), t.phase))
            .collect();
        labels.join(" ")
    }

    #[test]
    fn the_first_claim_lays_out_the_phases() {
        let (mut store, _) = store();
        let id = instance(&mut store, Status::Stopped);
        request(&mut store, &id, ActionKind::Start);
        let job = store.claim_due(LEASE, true).unwrap().unwrap();
        assert_eq!((job.token.as_str(), job.owner.as_str()), ("tok", OWNER));
        assert_eq!(phases(&job), "s1:0 s2:0 m:1", "slaves first");
        assert!(job.targets.iter().all(|t| t.state == TargetState::Todo));
        let stop = instance(&mut store, Status::Started);
        request(&mut store, &stop, ActionKind::Stop);
        let job = store.claim_due(LEASE, true).unwrap().unwrap();
        assert_eq!(phases(&job), "m:0 s1:1 s2:1", "the master first");
    }

    #[test]
    fn a_destroy_deletes_the_vms_then_the_network_resources() {
        let (mut store, _) = store();
        let id = store
            .add_instance(&crate::store::NewInstance {
                name: "d".into(),
                owner: OWNER.into(),
                master: "m".into(),
                slaves: vec!["s1".into()],
                status: Status::Started,
                network: Some("n1".into()),
                floating_ips: vec!["ip1".into()],
            })
            .unwrap();
        request(&mut store, &id, ActionKind::Destroy);
        assert_eq!(status(&store, &id), Status::Destroying);
        let job = store.claim_due(LEASE, true).unwrap().unwrap();
        assert_eq!(phases(&job), "m:0 s1:0 floatingip/ip1:1 network/n1:1");
        assert!(store.finish(&job, None, &[]).unwrap());
        assert_eq!(status(&store, &id), Status::Destroyed);
    }

    #[test]
    fn a_parked_action_waits_for_its_due_time() {
        let (mut store, clock) = store();
        let id = instance(&mut store, Status::Stopped);
        request(&mut store, &id, ActionKind::Start);
        let job = store.claim_due(LEASE, true).unwrap().unwrap();
        assert!(
            store.claim_due(LEASE, true).unwrap().is_none(),
            "claimed twice"
        );
        let mut targets = job.targets.clone();
        targets[0].state = TargetState::Waiting;
        targets[0].sent = true;
        let steps = [step("s1", "start", "accepted")];
        let due = store.now_ms() + 500;
        assert!(store.park(&job, due, &targets[0..1], &steps).unwrap());
        assert_eq!(store.next_due(true).unwrap(), Some(due));
        assert!(
            store.claim_due(LEASE, true).unwrap().is_none(),
            "not due yet"
        );
        clock.advance(Duration::from_millis(500));
        let again = store.claim_due(LEASE, true).unwrap().unwrap();
        assert_eq!(again.action_id, job.action_id);
        assert_eq!(again.attempt, 1, "a due tick is not a new attempt");
        assert_eq!(again.targets[0], targets[0]);
        assert!(
            !store.park(&job, due, &[], &[]).unwrap(),
            "the old claim is fenced off"
        );
    }

    #[test]
    fn finishing_erases_the_token_and_the_progress() {
        let (mut store, _) = store();
        let id = instance(&mut store, Status::Stopped);
        request(&mut store, &id, ActionKind::Start);
        let job = store.claim_due(LEASE, true).unwrap().unwrap();
        let steps = [step("s1", "status", "STOPPED")];
        assert!(store.save(&job, LEASE, &[], &steps).unwrap());
        assert!(store.finish(&job, None, &[]).unwrap());
        assert_eq!(status(&store, &id), Status::Started);
        let count = |sql: &str| -> i64 { store.conn.query_row(sql, [], |r| r.get(0)).unwrap() };
        assert_eq!(
            count("SELECT COUNT(*) FROM actions WHERE token IS NOT NULL"),
            0
        );
        assert_eq!(count("SELECT COUNT(*) FROM action_targets"), 0);
        let record = store.action(&id, &job.action_id).unwrap().unwrap();
        assert_eq!(record.state, ActionState::Succeeded);
        assert_eq!(record.steps.len(), 1);
        assert_eq!(store.next_due(true).unwrap(), None);
    }

    #[test]
    fn an_expired_lease_is_taken_over_and_fences_the_old_holder() {
        let (mut store, clock) = store();
        let id = instance(&mut store, Status::Started);
        request(&mut store, &id, ActionKind::Stop);
        let old = store.claim_due(LEASE, true).unwrap().unwrap();
        assert!(
            store.claim_due(LEASE, true).unwrap().is_none(),
            "lease still held"
        );
        clock.advance(LEASE + Duration::from_millis(1));
        let new = store.claim_due(LEASE, true).unwrap().unwrap();
        assert_eq!(new.action_id, old.action_id);
        assert_eq!(new.attempt, 2);
        assert!(!store.save(&old, LEASE, &[], &[]).unwrap());
        assert!(!store.finish(&old, Some("late"), &[]).unwrap());
        assert!(store
            .finish(&new, Some("413 overLimit (quota)"), &[])
            .unwrap());
        let i = store.owned_instance(&id, OWNER).unwrap().unwrap();
        assert_eq!(i.status, Status::Failed);
        assert_eq!(i.failure_message.as_deref(), Some("413 overLimit (quota)"));
    }

    #[test]
    fn a_save_renews_the_lease() {
        let (mut store, clock) = store();
        let id = instance(&mut store, Status::Stopped);
        request(&mut store, &id, ActionKind::Start);
        let job = store.claim_due(LEASE, true).unwrap().unwrap();
        clock.advance(LEASE - Duration::from_secs(1));
        assert!(store.save(&job, LEASE, &[], &[]).unwrap());
        clock.advance(Duration::from_secs(2));
        assert!(
            store.claim_due(LEASE, true).unwrap().is_none(),
            "renewed lease"
        );
    }

    #[test]
    fn without_queued_only_running_actions_are_claimed() {
        let (mut store, _) = store();
        let a = instance(&mut store, Status::Stopped);
        request(&mut store, &a, ActionKind::Start);
        assert!(store.claim_due(LEASE, false).unwrap().is_none());
        let job = store.claim_due(LEASE, true).unwrap().unwrap();
        store.park(&job, 0, &[], &[]).unwrap();
        assert!(store.claim_due(LEASE, false).unwrap().is_some());
    }

    #[test]
    fn recover_requeues_live_actions_and_fails_orphans() {
        let (mut store, _) = store();
        let a = instance(&mut store, Status::Stopped);
        request(&mut store, &a, ActionKind::Start);
        let job = store.claim_due(LEASE, true).unwrap().unwrap();
        let orphan = instance(&mut store, Status::Stopping);
        assert_eq!(store.recover().unwrap(), (1, 1));
        assert_eq!(status(&store, &orphan), Status::Failed);
        assert_eq!(status(&store, &a), Status::Starting);
        let again = store.claim_due(LEASE, true).unwrap().unwrap();
        assert_eq!(again.attempt, 2, "a restart is a new attempt");
        assert_eq!(again.targets, job.targets, "with the progress kept");
    }

    #[test]
    fn actions_newest_first() {
        let (mut store, clock) = store();
        let id = instance(&mut store, Status::Stopped);
        let Requested::Created(first) = request(&mut store, &id, ActionKind::Start) else {
            panic!()
        };
        let job = store.claim_due(LEASE, true).unwrap().unwrap();
        store.finish(&job, None, &[]).unwrap();
        clock.advance(Duration::from_millis(1));
        let Requested::Created(second) = request(&mut store, &id, ActionKind::Stop) else {
            panic!()
        };
        let ids: Vec<String> = store
            .list_actions(&id, 10, 0)
            .unwrap()
            .into_iter()
            .map(|a| a.id)
            .collect();
        assert_eq!(ids, vec![second, first]);
        assert_eq!(store.count_actions(&id).unwrap(), 2);
        assert_eq!(store.live_counts().unwrap(), (1, 0));
    }
}
