//! The worker's side of the `actions` table: recovery at start, claims with leases (so that
//! an action has one holder at a time, and a stale holder is fenced off), steps, and the end
//! of an action with its instance's new status.

use std::time::Duration;

use rusqlite::{params, OptionalExtension};

use super::{kind_of, Result, Store};
use crate::model::{ActionKind, Status};

/// What the worker needs to run an action it has claimed.
#[derive(Debug, Clone)]
pub struct Job {
    pub action_id: String,
    pub instance_id: String,
    pub action: ActionKind,
    pub token: String,
    pub compute_url: String,
    pub master: String,
    pub slaves: Vec<String>,
    pub claim: String,
    pub attempt: i64,
    pub created_at: i64,
}

fn millis(d: Duration) -> i64 {
    d.as_millis() as i64
}

impl Store {
    /// At start-up, before any worker runs: every action a previous process was running goes
    /// back to the queue (this process is the database's only user), and an instance left in
    /// STARTING or STOPPING with nothing in flight is marked FAILED.
    pub fn recover(&mut self) -> Result<(usize, usize)> {
        let tx = self.begin_write()?;
        let requeued = tx.execute(
            "UPDATE actions SET state = 'queued', claim = NULL, lease_until = NULL
             WHERE state = 'running'",
            [],
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

    /// Claims the oldest queued action, or a running one whose lease has expired, for
    /// `lease`. The claim is fresh, so whoever held the action before can no longer write it.
    pub fn claim_next(&mut self, lease: Duration) -> Result<Option<Job>> {
        let now = self.now_ms();
        let tx = self.begin_write()?;
        let next: Option<String> = tx
            .prepare_cached(
                "SELECT id FROM actions
                 WHERE state = 'queued' OR (state = 'running' AND lease_until < ?1)
                 ORDER BY created_at, rowid LIMIT 1",
            )?
            .query_row(params![now], |r| r.get(0))
            .optional()?;
        let Some(action_id) = next else {
            return Ok(None);
        };
        let claim = uuid::Uuid::new_v4().to_string();
        tx.execute(
            "UPDATE actions SET state = 'running', claim = ?2, lease_until = ?3,
                 attempts = attempts + 1, started_at = COALESCE(started_at, ?4)
             WHERE id = ?1",
            params![action_id, claim, now + millis(lease), now],
        )?;
        let (instance_id, action, token, compute_url, attempt, created_at): (
            String,
            String,
            String,
            String,
            i64,
            i64,
        ) = tx
            .prepare_cached(
                "SELECT instance_id, action, token, compute_url, attempts, created_at
                 FROM actions WHERE id = ?1",
            )?
            .query_row(params![action_id], |r| r.try_into())?;
        tx.commit()?;
        let (master, slaves) = self.servers(&instance_id)?;
        Ok(Some(Job {
            action_id,
            instance_id,
            action: kind_of(action)?,
            token,
            compute_url,
            master,
            slaves,
            claim,
            attempt,
            created_at,
        }))
    }

    /// Records a step of a claimed action and renews its lease. Returns false when the claim
    /// is no longer current (the action was taken over): the caller must stop working on it.
    pub fn record_step(
        &mut self,
        job: &Job,
        lease: Duration,
        vm: &str,
        op: &str,
        result: &str,
    ) -> Result<bool> {
        let now = self.now_ms();
        let tx = self.begin_write()?;
        let held = tx.execute(
            "UPDATE actions SET lease_until = ?3 WHERE id = ?1 AND claim = ?2 AND state = 'running'",
            params![job.action_id, job.claim, now + millis(lease)],
        )? == 1;
        if held {
            tx.execute(
                "INSERT INTO action_steps (action_id, seq, vm, op, result, at)
                 SELECT ?1, COALESCE(MAX(seq), 0) + 1, ?2, ?3, ?4, ?5
                 FROM action_steps WHERE action_id = ?1",
                params![job.action_id, vm, op, result, now],
            )?;
        }
        tx.commit()?;
        Ok(held)
    }

    /// Renews the lease of a claimed action; false when the claim is no longer current.
    pub fn renew(&mut self, job: &Job, lease: Duration) -> Result<bool> {
        let until = self.now_ms() + millis(lease);
        let tx = self.begin_write()?;
        let n = tx.execute(
            "UPDATE actions SET lease_until = ?3 WHERE id = ?1 AND claim = ?2 AND state = 'running'",
            params![job.action_id, job.claim, until],
        )?;
        tx.commit()?;
        Ok(n == 1)
    }

    /// Ends a claimed action: succeeded (`error` None) or failed, in one transaction with the
    /// instance's new status. The token is erased. Returns false when the claim was lost.
    pub fn finish(&mut self, job: &Job, error: Option<&str>) -> Result<bool> {
        let now = self.now_ms();
        let tx = self.begin_write()?;
        let state = if error.is_some() {
            "failed"
        } else {
            "succeeded"
        };
        let held = tx.execute(
            "UPDATE actions SET state = ?3, error = ?4, finished_at = ?5, token = NULL,
                 compute_url = NULL, claim = NULL, lease_until = NULL
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
        }
        tx.commit()?;
        Ok(held)
    }

    /// Hands a claimed action back to the queue (the process is shutting down); the next
    /// process, or another worker, takes it up again.
    pub fn release(&mut self, job: &Job) -> Result<bool> {
        let tx = self.begin_write()?;
        let n = tx.execute(
            "UPDATE actions SET state = 'queued', claim = NULL, lease_until = NULL
             WHERE id = ?1 AND claim = ?2 AND state = 'running'",
            params![job.action_id, job.claim],
        )?;
        tx.commit()?;
        Ok(n == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ActionState;
    use crate::store::actions::tests::request;
    use crate::store::instances::tests::{instance, status, store, OWNER};
    use crate::store::Requested;

    const LEASE: Duration = Duration::from_secs(60);

    #[test]
    fn claim_finish_erases_token() {
        let (mut store, _) = store();
        let id = instance(&mut store, Status::Stopped);
        request(&mut store, &id, ActionKind::Start);
        let job = store.claim_next(LEASE).unwrap().unwrap();
        assert_eq!(job.token, "tok");
        assert_eq!((job.master.as_str(), job.slaves.len()), ("m", 2));
        assert!(store.claim_next(LEASE).unwrap().is_none(), "claimed twice");
        assert!(store
            .record_step(&job, LEASE, "s1", "status", "STOPPED")
            .unwrap());
        assert!(store.finish(&job, None).unwrap());
        assert_eq!(status(&store, &id), Status::Started);
        let tokens: i64 = store
            .conn
            .query_row(
                "SELECT COUNT(*) FROM actions WHERE token IS NOT NULL",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(tokens, 0);
        let record = store.action(&id, &job.action_id).unwrap().unwrap();
        assert_eq!(record.state, ActionState::Succeeded);
        assert_eq!(record.steps.len(), 1);
    }

    #[test]
    fn an_expired_lease_is_taken_over_and_fences_the_old_holder() {
        let (mut store, clock) = store();
        let id = instance(&mut store, Status::Started);
        request(&mut store, &id, ActionKind::Stop);
        let old = store.claim_next(LEASE).unwrap().unwrap();
        assert!(
            store.claim_next(LEASE).unwrap().is_none(),
            "lease still held"
        );
        clock.advance(LEASE + Duration::from_millis(1));
        let new = store.claim_next(LEASE).unwrap().unwrap();
        assert_eq!(new.action_id, old.action_id);
        assert_eq!(new.attempt, 2);
        assert!(!store
            .record_step(&old, LEASE, "m", "status", "ACTIVE")
            .unwrap());
        assert!(!store.renew(&old, LEASE).unwrap());
        assert!(!store.finish(&old, Some("late")).unwrap());
        assert!(store.finish(&new, Some("413 overLimit (quota)")).unwrap());
        let i = store.owned_instance(&id, OWNER).unwrap().unwrap();
        assert_eq!(i.status, Status::Failed);
        assert_eq!(i.failure_message.as_deref(), Some("413 overLimit (quota)"));
    }

    #[test]
    fn a_step_renews_the_lease() {
        let (mut store, clock) = store();
        let id = instance(&mut store, Status::Stopped);
        request(&mut store, &id, ActionKind::Start);
        let job = store.claim_next(LEASE).unwrap().unwrap();
        clock.advance(LEASE - Duration::from_secs(1));
        assert!(store
            .record_step(&job, LEASE, "m", "status", "STOPPED")
            .unwrap());
        clock.advance(Duration::from_secs(2));
        assert!(store.claim_next(LEASE).unwrap().is_none(), "renewed lease");
    }

    #[test]
    fn recover_requeues_running_and_fails_orphans() {
        let (mut store, _) = store();
        let a = instance(&mut store, Status::Stopped);
        request(&mut store, &a, ActionKind::Start);
        store.claim_next(LEASE).unwrap().unwrap();
        let orphan = instance(&mut store, Status::Stopping);
        assert_eq!(store.recover().unwrap(), (1, 1));
        assert_eq!(status(&store, &orphan), Status::Failed);
        assert_eq!(status(&store, &a), Status::Starting);
        assert!(store.claim_next(LEASE).unwrap().is_some());
    }

    #[test]
    fn actions_newest_first() {
        let (mut store, clock) = store();
        let id = instance(&mut store, Status::Stopped);
        let Requested::Created(first) = request(&mut store, &id, ActionKind::Start) else {
            panic!()
        };
        let job = store.claim_next(LEASE).unwrap().unwrap();
        store.finish(&job, None).unwrap();
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

    #[test]
    fn release_puts_it_back() {
        let (mut store, _) = store();
        let id = instance(&mut store, Status::Stopped);
        request(&mut store, &id, ActionKind::Start);
        let job = store.claim_next(LEASE).unwrap().unwrap();
        assert!(store.release(&job).unwrap());
        let again = store.claim_next(LEASE).unwrap().unwrap();
        assert_eq!(again.action_id, job.action_id);
    }
}
