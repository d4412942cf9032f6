//! The action request: decided by [`model::decide`](crate::model::decide) on what the
//! `lambda_instances` and `actions` tables show, and committed by the group commit.

use std::ops::ControlFlow;

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use super::{kind_of, status_of, Result, Store, StoreError};
use crate::model::{decide, ActionKind, Decision, Live, Seen};
use crate::sync::lock;

/// What an action request came to once it went through the database.
#[derive(Debug, Clone, PartialEq)]
pub enum Requested {
    /// No such instance for this owner.
    NotFound,
    /// A new action was committed.
    Created(String),
    /// The action already in flight.
    Merged(String),
    /// Refused by the state table.
    Conflict(String),
}

/// A decision that writes nothing breaks off with its outcome; one to create an action goes
/// on, with the live action the new one supersedes, if any.
fn settle(decision: Decision) -> ControlFlow<Requested, Option<String>> {
    match decision {
        Decision::NotFound => ControlFlow::Break(Requested::NotFound),
        Decision::Merge(id) => ControlFlow::Break(Requested::Merged(id)),
        Decision::Conflict(message) => ControlFlow::Break(Requested::Conflict(message)),
        Decision::Create { supersede } => ControlFlow::Continue(supersede),
    }
}

/// A request for a new action, queued for the group commit.
pub(super) struct NewAction {
    instance_id: String,
    owner: String,
    kind: ActionKind,
    token: String,
    compute_url: String,
    network_url: Option<String>,
}

/// What `conn` sees of `owner`'s instance: its status and its action in flight.
fn read_seen(conn: &Connection, instance_id: &str, owner: &str) -> Result<Option<Seen>> {
    let status: Option<String> = conn
        .prepare_cached(
            "SELECT status FROM lambda_instances
             WHERE id = ?1 AND owner = ?2",
        )?
        .query_row(params![instance_id, owner], |r| r.get(0))
        .optional()?;
    let Some(status) = status else {
        return Ok(None);
    };
    let live = conn
        .prepare_cached(
            "SELECT id, action FROM actions
             WHERE instance_id = ?1 AND state IN ('queued', 'running')",
        )?
        .query_row(params![instance_id], |r| {
            Ok(Live {
                id: r.get(0)?,
                kind: kind_of(r.get(1)?)?,
            })
        })
        .optional()?;
    Ok(Some(Seen {
        status: status_of(status)?,
        live,
    }))
}

/// One request of a batch: decided again under the lock (the instance may have changed
/// since the unlocked read, or by an earlier request of this batch), then written if due.
fn create_one(conn: &Connection, a: &NewAction, now: i64) -> Result<Requested> {
    let seen = read_seen(conn, &a.instance_id, &a.owner)?;
    let supersede = match settle(decide(seen.as_ref(), a.kind)) {
        ControlFlow::Break(done) => return Ok(done),
        ControlFlow::Continue(supersede) => supersede,
    };
    if let Some(stale) = supersede {
        conn.execute(
            "UPDATE actions SET state = 'failed', error = 'superseded by a new action',
                 token = NULL, compute_url = NULL, network_url = NULL, claim = NULL,
                 due_at = NULL, finished_at = ?2
             WHERE id = ?1",
            params![stale, now],
        )?;
    }
    // Time-ordered (version 7): new ids land at the end of the primary key's b-tree, so the
    // actions committed together share its last page instead of each dirtying a random one.
    let id = uuid::Uuid::now_v7().to_string();
    conn.prepare_cached(
        "INSERT INTO actions (id, instance_id, action, state, token, compute_url, network_url,
                              created_at, due_at)
         VALUES (?1, ?2, ?3, 'queued', ?4, ?5, ?6, ?7, ?7)",
    )?
    .execute(params![
        id,
        a.instance_id,
        a.kind.name(),
        a.token,
        a.compute_url,
        a.network_url,
        now
    ])?;
    conn.prepare_cached(
        "UPDATE lambda_instances SET status = ?2, failure_message = NULL WHERE id = ?1",
    )?
    .execute(params![a.instance_id, a.kind.transient_status().name()])?;
    Ok(Requested::Created(id))
}

impl Store {
    /// The instance's status and action in flight, read together, if `owner` has it: what an
    /// action request is decided on.
    pub fn seen(&mut self, id: &str, owner: &str) -> Result<Option<Seen>> {
        let tx = self.conn.transaction()?;
        read_seen(&tx, id, owner)
    }

    /// Decides an action request on what was `seen` and, when a new action is due, commits it
    /// (the status change and the action row together). When this returns `Created`, the
    /// action is on disk. `endpoints` are the owner's compute and network URLs, which the
    /// action keeps with the token while it is live.
    pub fn request_action(
        &mut self,
        seen: Option<&Seen>,
        instance_id: &str,
        owner: &str,
        kind: ActionKind,
        token: &str,
        endpoints: (&str, Option<&str>),
    ) -> Result<Requested> {
        // Most repeated requests change nothing (a merge, a conflict): they are answered from
        // the unlocked read. Only a new action goes on to be written.
        if let ControlFlow::Break(done) = settle(decide(seen, kind)) {
            return Ok(done);
        }
        let new = NewAction {
            instance_id: instance_id.to_string(),
            owner: owner.to_string(),
            kind,
            token: token.to_string(),
            compute_url: endpoints.0.to_string(),
            network_url: endpoints.1.map(str::to_string),
        };
        let shared = self.shared.clone();
        shared
            .requests
            .submit(new, |batch| {
                let _writing = lock(&shared.writer);
                self.create_batch(batch)
            })
            .unwrap_or(Err(StoreError::Abandoned))
    }

    /// Applies [`create_one`] to each request of `batch`, all in one transaction with a
    /// savepoint each; the caller holds the write lock.
    fn create_batch(&mut self, batch: &[NewAction]) -> Vec<Result<Requested>> {
        let now = self.now_ms();
        let all_failed = |e: rusqlite::Error| {
            let e = StoreError::from(e);
            batch.iter().map(|_| Err(e.clone())).collect()
        };
        let health = &self.shared.health;
        let mut tx = match self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
        {
            Ok(tx) => tx,
            Err(e) => {
                health.failed(&e);
                return all_failed(e);
            }
        };
        let mut outcomes = Vec::with_capacity(batch.len());
        for a in batch {
            let one = tx.savepoint().map_err(StoreError::from).and_then(|sp| {
                let r = create_one(&sp, a, now)?;
                sp.commit()?;
                Ok(r)
            });
            outcomes.push(one);
        }
        let committed = tx.commit();
        health.saw(&committed);
        match committed {
            Ok(()) => outcomes,
            Err(e) => all_failed(e),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::model::Status;
    use crate::store::instances::tests::{instance, status, store, OWNER};
    use crate::store::{Database, NewInstance, Synchronous};
    use std::time::Duration;

    pub(crate) fn request_as(
        store: &mut Store,
        id: &str,
        owner: &str,
        kind: ActionKind,
    ) -> Requested {
        let seen = store.seen(id, owner).unwrap();
        store
            .request_action(seen.as_ref(), id, owner, kind, "tok", ("http://c", None))
            .unwrap()
    }

    pub(crate) fn request(store: &mut Store, id: &str, kind: ActionKind) -> Requested {
        request_as(store, id, OWNER, kind)
    }

    #[test]
    fn create_then_merge() {
        let (mut store, _) = store();
        let id = instance(&mut store, Status::Stopped);
        let Requested::Created(a) = request(&mut store, &id, ActionKind::Start) else {
            panic!("not created")
        };
        assert_eq!(status(&store, &id), Status::Starting);
        assert_eq!(
            request(&mut store, &id, ActionKind::Start),
            Requested::Merged(a)
        );
        assert!(matches!(
            request(&mut store, &id, ActionKind::Stop),
            Requested::Conflict(_)
        ));
    }

    #[test]
    fn destroyed_is_a_conflict_and_foreign_is_not_found() {
        let (mut store, _) = store();
        let id = instance(&mut store, Status::Destroyed);
        assert!(matches!(
            request(&mut store, &id, ActionKind::Start),
            Requested::Conflict(_)
        ));
        let id = instance(&mut store, Status::Stopped);
        let r = request_as(&mut store, &id, "intruder", ActionKind::Start);
        assert_eq!(r, Requested::NotFound);
    }

    /// A decision made on a stale read is made again under the lock.
    #[test]
    fn a_stale_read_is_decided_again() {
        let (mut store, _) = store();
        let id = instance(&mut store, Status::Stopped);
        let stale = store.seen(&id, OWNER).unwrap();
        let Requested::Created(a) = request(&mut store, &id, ActionKind::Start) else {
            panic!("not created")
        };
        let again = store
            .request_action(
                stale.as_ref(),
                &id,
                OWNER,
                ActionKind::Start,
                "t",
                ("c", None),
            )
            .unwrap();
        assert_eq!(again, Requested::Merged(a));
    }

    fn on_disk(dir: &std::path::Path) -> Database {
        Database::new(dir.join("g.db"), Synchronous::Normal)
    }

    fn stopped(n: usize) -> Vec<NewInstance> {
        (0..n)
            .map(|i| NewInstance {
                name: format!("g{i}"),
                owner: OWNER.into(),
                master: "m".into(),
                slaves: vec![],
                status: Status::Stopped,
                network: None,
                public_ip: None,
            })
            .collect()
    }

    /// 16 threads on one instance and 16 on others of their own, each with its connection:
    /// whatever batches they are committed in, one action per instance, the rest merged.
    #[test]
    fn group_commit_decides_each_request_in_turn() {
        let dir = tempfile::tempdir().unwrap();
        let db = on_disk(dir.path());
        let mut store = db.open().unwrap();
        let ids = store.add_instances(&stopped(17)).unwrap();
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(32));
        let threads: Vec<_> = (0..32)
            .map(|t| {
                let id = if t % 2 == 0 {
                    ids[0].clone()
                } else {
                    ids[1 + t / 2].clone()
                };
                let (db, barrier) = (db.clone(), barrier.clone());
                std::thread::spawn(move || {
                    let mut store = db.open().unwrap();
                    barrier.wait();
                    // Every thread saw the instances STOPPED before any request was made.
                    let seen = store.seen(&id, OWNER).unwrap();
                    barrier.wait();
                    let r = store.request_action(
                        seen.as_ref(),
                        &id,
                        OWNER,
                        ActionKind::Start,
                        "t",
                        ("c", None),
                    );
                    (id, r.unwrap())
                })
            })
            .collect();
        let results: Vec<(String, Requested)> =
            threads.into_iter().map(|t| t.join().unwrap()).collect();
        let on_shared: Vec<&Requested> = results
            .iter()
            .filter(|(id, _)| *id == ids[0])
            .map(|(_, r)| r)
            .collect();
        let created: Vec<&String> = on_shared
            .iter()
            .filter_map(|r| match r {
                Requested::Created(a) => Some(a),
                _ => None,
            })
            .collect();
        assert_eq!(created.len(), 1, "{on_shared:?}");
        for r in &on_shared {
            assert!(
                matches!(r, Requested::Created(a) | Requested::Merged(a) if a == created[0]),
                "{r:?}"
            );
        }
        for (id, r) in results.iter().filter(|(id, _)| *id != ids[0]) {
            assert!(matches!(r, Requested::Created(_)), "{id}: {r:?}");
        }
        assert_eq!(store.live_counts().unwrap(), (17, 0));
    }

    /// Eight threads making 40 actions each, back to back, through the real database: every
    /// one is committed and none is left waiting.
    #[test]
    fn group_commit_hands_the_lead_on() {
        let dir = tempfile::tempdir().unwrap();
        let db = on_disk(dir.path());
        let mut store = db.open().unwrap();
        let (done, finished) = crossbeam_channel::unbounded();
        for _ in 0..8 {
            let mine = store.add_instances(&stopped(40)).unwrap();
            let (db, done) = (db.clone(), done.clone());
            std::thread::spawn(move || {
                let mut store = db.open().unwrap();
                let created = mine
                    .iter()
                    .filter(|id| {
                        let r = request(&mut store, id, ActionKind::Start);
                        matches!(r, Requested::Created(_))
                    })
                    .count();
                let _ = done.send(created);
            });
        }
        for _ in 0..8 {
            let created = finished
                .recv_timeout(Duration::from_secs(60))
                .expect("a request was left waiting");
            assert_eq!(created, 40);
        }
        assert_eq!(store.live_counts().unwrap(), (320, 0));
    }
}
