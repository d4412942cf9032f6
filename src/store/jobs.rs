//! The worker's side of the `actions` table. An action is run in short ticks: a worker claims
//! an action that is due (under a lease, so that it has one holder at a time and a stale
//! holder is fenced off), makes the calls that are due, saves where each VM is and parks it
//! until it is due again (`progress.rs`). Also recovery at start, and the end of an action
//! with its instance's new status.

use std::time::Duration;

use rusqlite::{params, OptionalExtension};

use super::progress::{read_vms, write_progress, Job, NewStep};
use super::{kind_of, millis, Result, Store, StoreError};
use crate::model::{ActionKind, Status};

/// The phase of the VM at `position` for `kind`: a start brings the slaves up first, then
/// the master; a stop takes the master down first, then the slaves; a destroy deletes every
/// VM at once (its network resources are phase 1).
fn phase_of(kind: ActionKind, position: i64) -> i64 {
    match (kind, position) {
        (ActionKind::Start, 0) | (ActionKind::Stop, 1..) => 1,
        _ => 0,
    }
}

/// The prefixes of a destroy's phase-1 rows in `action_vms`.
pub const FLOATING_IP: &str = "floatingip/";
pub const NETWORK: &str = "network/";

impl Store {
    /// At start-up, before any worker runs: every live action goes back to the queue (this
    /// process is the database's only user; it will read every VM again before acting), and
    /// an instance left in STARTING or STOPPING with nothing in flight is marked FAILED.
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
            "UPDATE lambda_instances
             SET status = 'FAILED', failure_message = 'interrupted: no action was in flight'
             WHERE status IN ('STARTING', 'STOPPING')
               AND NOT EXISTS (SELECT 1 FROM actions a WHERE a.instance_id = lambda_instances.id
                                                         AND a.state IN ('queued', 'running'))",
            [],
        )?;
        tx.commit()?;
        Ok((requeued, orphaned))
    }

    /// Claims the action due the longest, for `lease`: a running one whose due time has
    /// come, one whose holder's lease has expired, or (with `queued`) a new one. The claim is
    /// fresh, so whoever held the action before can no longer write it.
    pub fn claim_due(&mut self, lease: Duration, queued: bool) -> Result<Option<Job>> {
        const DUE: &str = "SELECT id FROM actions
                 WHERE state IN ('queued', 'running') AND due_at <= ?1
                   AND ((state = 'queued' AND ?2) OR (state = 'running' AND claim IS NULL)
                        OR (state = 'running' AND lease_until < ?1))
                 ORDER BY due_at, rowid LIMIT 1";
        let now = self.now_ms();
        // A look first, without the write lock: an idle worker never holds up a writer.
        let any: Option<String> = self
            .conn
            .prepare_cached(DUE)?
            .query_row(params![now, queued], |r| r.get(0))
            .optional()?;
        if any.is_none() {
            return Ok(None);
        }
        let tx = self.begin_write()?;
        let next: Option<String> = tx
            .prepare_cached(DUE)?
            .query_row(params![now, queued], |r| r.get(0))
            .optional()?;
        let Some(action_id) = next else {
            return Ok(None);
        };
        let claim = uuid::Uuid::new_v4().to_string();
        tx.prepare_cached(
            "UPDATE actions SET attempts = attempts + (state = 'queued' OR claim IS NOT NULL),
                 state = 'running', claim = ?2, lease_until = ?3,
                 started_at = COALESCE(started_at, ?4)
             WHERE id = ?1",
        )?
        .execute(params![action_id, claim, now + millis(lease), now])?;
        let (instance_id, owner, action, token, compute_url, network_url, attempt, created_at): (
            String,
            String,
            String,
            String,
            String,
            Option<String>,
            i64,
            i64,
        ) = tx
            .prepare_cached(
                "SELECT a.instance_id, i.owner, a.action, a.token, a.compute_url, a.network_url,
                        a.attempts, a.created_at
                 FROM actions a JOIN lambda_instances i ON i.id = a.instance_id WHERE a.id = ?1",
            )?
            .query_row(params![action_id], |r| r.try_into())?;
        let action = kind_of(action)?;
        let mut vms = read_vms(&tx, &action_id)?;
        if vms.is_empty() {
            // The first tick of this action: every VM of the instance, nothing done yet.
            tx.prepare_cached(
                "INSERT INTO action_vms (action_id, vm, position, phase, state, next_at)
                 SELECT ?1, server_id, position,
                        CASE WHEN ?2 = 'destroy' THEN 0
                             WHEN (?2 = 'start') = (position = 0) THEN 1 ELSE 0 END, 'todo', ?3
                 FROM instance_servers WHERE instance_id = ?4",
            )?
            .execute(params![action_id, action.name(), now, instance_id])?;
            if action == ActionKind::Destroy {
                // Then the floating IP and the private network, where the instance has them.
                tx.prepare_cached(
                    "INSERT INTO action_vms (action_id, vm, position, phase, state, next_at)
                     SELECT ?1, ?2 || public_ip_id, 1000000, 1, 'todo', ?3
                     FROM lambda_instances WHERE id = ?4 AND public_ip_id IS NOT NULL
                     UNION ALL
                     SELECT ?1, ?5 || network_id, 1000001, 1, 'todo', ?3
                     FROM lambda_instances WHERE id = ?4 AND network_id IS NOT NULL",
                )?
                .execute(params![
                    action_id,
                    FLOATING_IP,
                    now,
                    instance_id,
                    NETWORK
                ])?;
            }
            vms = read_vms(&tx, &action_id)?;
            if vms.is_empty() {
                return Err(StoreError::Corrupt(format!(
                    "instance {instance_id} has no servers"
                )));
            }
            debug_assert!(vms
                .iter()
                .filter(|v| v.position < 1000000)
                .all(|v| v.phase == phase_of(action, v.position)));
        }
        tx.commit()?;
        Ok(Some(Job {
            action_id,
            instance_id,
            owner,
            action,
            token,
            compute_url,
            network_url,
            claim,
            attempt,
            created_at,
            vms,
        }))
    }

    /// Ends a claimed action with its last `steps`: succeeded (`error` None) or failed, in
    /// one transaction with the instance's new status. The token and the VMs' progress are
    /// erased. Returns false when the claim was lost.
    pub fn finish(&mut self, job: &Job, error: Option<&str>, steps: &[NewStep]) -> Result<bool> {
        let now = self.now_ms();
        let tx = self.begin_write()?;
        if !write_progress(&tx, job, now, &[], steps)? {
            return Ok(false);
        }
        let state = if error.is_some() {
            "failed"
        } else {
            "succeeded"
        };
        let held = tx.execute(
            "UPDATE actions SET state = ?3, error = ?4, finished_at = ?5, token = NULL,
                 compute_url = NULL, network_url = NULL, claim = NULL, lease_until = NULL,
                 due_at = NULL
             WHERE id = ?1 AND claim = ?2 AND state = 'running'",
            params![job.action_id, job.claim, state, error, now],
        )? == 1;
        if held {
            let status = match error {
                None => job.action.final_status(),
                Some(_) => Status::Failed,
            };
            tx.execute(
                "UPDATE lambda_instances SET status = ?2, failure_message = ?3 WHERE id = ?1",
                params![job.instance_id, status.name(), error],
            )?;
            tx.execute(
                "DELETE FROM action_vms WHERE action_id = ?1",
                params![job.action_id],
            )?;
        }
        tx.commit()?;
        Ok(held)
    }

    /// When the next unclaimed action falls due (a running one, or with `queued` a new one),
    /// if any; through the due-time index. (A claimed one whose lease expires is found by
    /// the idle workers' regular look.)
    pub fn next_due(&self, queued: bool) -> Result<Option<i64>> {
        let at = self
            .conn
            .prepare_cached(
                "SELECT MIN(due_at) FROM actions
                 WHERE state IN ('queued', 'running') AND claim IS NULL
                   AND (state = 'running' OR ?1)",
            )?
            .query_row(params![queued], |r| r.get(0))?;
        Ok(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ActionState;
    use crate::store::actions::tests::request;
    use crate::store::instances::tests::{instance, status, store, OWNER};
    use crate::store::Requested;
    use crate::store::VmState;

    const LEASE: Duration = Duration::from_secs(60);

    fn step(vm: &str, op: &str, result: &str) -> NewStep {
        NewStep {
            vm: vm.into(),
            op: op.into(),
            result: result.into(),
        }
    }

    #[test]
    fn the_first_claim_lays_out_the_phases() {
        let (mut store, _) = store();
        let id = instance(&mut store, Status::Stopped);
        request(&mut store, &id, ActionKind::Start);
        let job = store.claim_due(LEASE, true).unwrap().unwrap();
        assert_eq!((job.token.as_str(), job.owner.as_str()), ("tok", OWNER));
        let phases: Vec<(&str, i64)> = job.vms.iter().map(|v| (v.vm.as_str(), v.phase)).collect();
        assert_eq!(phases, vec![("m", 1), ("s1", 0), ("s2", 0)], "slaves first");
        assert!(job.vms.iter().all(|v| v.state == VmState::Todo));
        let stop = instance(&mut store, Status::Started);
        request(&mut store, &stop, ActionKind::Stop);
        let job = store.claim_due(LEASE, true).unwrap().unwrap();
        let phases: Vec<i64> = job.vms.iter().map(|v| v.phase).collect();
        assert_eq!(phases, vec![0, 1, 1], "the master first");
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
                public_ip: Some("ip1".into()),
            })
            .unwrap();
        request(&mut store, &id, ActionKind::Destroy);
        assert_eq!(status(&store, &id), Status::Destroying);
        let job = store.claim_due(LEASE, true).unwrap().unwrap();
        let phases: Vec<(&str, i64)> = job.vms.iter().map(|v| (v.vm.as_str(), v.phase)).collect();
        assert_eq!(
            phases,
            vec![
                ("m", 0),
                ("s1", 0),
                ("floatingip/ip1", 1),
                ("network/n1", 1)
            ]
        );
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
        let mut vms = job.vms.clone();
        vms[1].state = VmState::Waiting;
        vms[1].sent = true;
        let steps = [step("s1", "start", "accepted")];
        let due = store.now_ms() + 500;
        assert!(store.park(&job, due, &vms[1..2], &steps).unwrap());
        assert_eq!(store.next_due(true).unwrap(), Some(due));
        assert!(
            store.claim_due(LEASE, true).unwrap().is_none(),
            "not due yet"
        );
        clock.advance(Duration::from_millis(500));
        let again = store.claim_due(LEASE, true).unwrap().unwrap();
        assert_eq!(again.action_id, job.action_id);
        assert_eq!(again.attempt, 1, "a due tick is not a new attempt");
        assert_eq!(again.vms[1], vms[1]);
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
        assert_eq!(count("SELECT COUNT(*) FROM action_vms"), 0);
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
        assert_eq!(again.vms, job.vms, "with the progress kept");
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
