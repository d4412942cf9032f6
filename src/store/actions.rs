//! The action request: decided by [`model::decide`](crate::model::decide) on what the
//! `lambda_instances` and `actions` tables show, with its `Idempotency-Key` looked up and its
//! outcome kept, all in one transaction of the group commit.

use std::ops::ControlFlow;

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use super::end::{end_actions, Which};
use super::idempotency::{self, key_verdict, Answer, KeyUse};
use super::instances::insert_created;
use super::{kind_of, status_of, Result, Store, StoreError, BATCH_CACHE_KIB, CACHE_KIB};
use crate::build::Build;
use crate::model::{decide, ActionKind, ActionState, Decision, LiveAction, Snapshot};
use crate::sync::lock;

/// What an action request came to once it went through the database.
#[derive(Debug, Clone, PartialEq)]
pub enum Requested {
    /// No such instance for this owner.
    NotFound,
    /// A new action was committed.
    Created(String),
    /// A new instance and its create action were committed: (instance, action).
    New { instance: String, action: String },
    /// The action already in flight.
    Merged(String),
    /// Refused by the state table.
    Conflict(String),
    /// The key was used before for the same request: what that came to.
    Replayed(Answer),
    /// The key was used before for another request.
    KeyReused,
    /// The owner holds as many keys as allowed.
    TooManyKeys,
}

/// A new instance for the service to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewCluster {
    pub name: String,
    /// What the owner asked for (JSON), as the details show it.
    pub info: String,
    pub build: Build,
}

/// An action request on an owner's instance, or (with `create`) for a new one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionRequest {
    /// The instance acted on; unused for a create.
    pub instance_id: String,
    pub owner: String,
    pub kind: ActionKind,
    /// What the action keeps while live, to act for the owner.
    pub token: String,
    pub compute_url: String,
    pub network_url: Option<String>,
    pub key: Option<KeyUse>,
    /// The instance to create, for a create.
    pub create: Option<NewCluster>,
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

/// What `conn` sees of `owner`'s instance: its status and its action in flight.
fn read_snapshot(conn: &Connection, instance_id: &str, owner: &str) -> Result<Option<Snapshot>> {
    let row: Option<(String, bool)> = conn
        .prepare_cached(
            "SELECT status, EXISTS (SELECT 1 FROM instance_servers WHERE instance_id = id)
             FROM lambda_instances WHERE id = ?1 AND owner = ?2",
        )?
        .query_row(params![instance_id, owner], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let Some((status, has_servers)) = row else {
        return Ok(None);
    };
    let live = conn
        .prepare_cached(concat!(
            "SELECT id, action FROM actions WHERE instance_id = ?1 AND ",
            live!()
        ))?
        .query_row(params![instance_id], |r| {
            Ok(LiveAction {
                id: r.get(0)?,
                kind: kind_of(r.get(1)?)?,
            })
        })
        .optional()?;
    Ok(Some(Snapshot {
        status: status_of(status)?,
        live,
        has_servers,
    }))
}

/// One request of a batch: the state table applied again under the lock (the instance may
/// have changed since the unlocked read, or by an earlier request of this batch), the action
/// written if due, and the outcome kept under the request's key, unless that key was taken
/// meanwhile. The key was looked up before the batch: here it costs one statement.
fn decide_and_write(conn: &Connection, r: &ActionRequest, now: i64) -> Result<Written> {
    let outcome = match &r.create {
        Some(new) => {
            let instance = insert_created(conn, &new.name, &r.owner, &new.info, &new.build, now)?;
            let action = insert_action(conn, &instance, r, now)?;
            Requested::New { instance, action }
        }
        None => {
            let snapshot = read_snapshot(conn, &r.instance_id, &r.owner)?;
            match settle(decide(snapshot.as_ref(), r.kind)) {
                ControlFlow::Break(done) => done,
                ControlFlow::Continue(supersede) => {
                    Requested::Created(create(conn, r, supersede, now)?)
                }
            }
        }
    };
    if let Some(key) = &r.key {
        let accepted = |instance: &str, action: &str| {
            Some(Answer::Accepted {
                instance: instance.to_string(),
                action: action.to_string(),
                base_url: key.base_url.clone(),
            })
        };
        let answer = match &outcome {
            Requested::Created(id) | Requested::Merged(id) => accepted(&r.instance_id, id),
            Requested::New { instance, action } => accepted(instance, action),
            Requested::Conflict(message) => Some(Answer::Refused(message.clone())),
            _ => None,
        };
        if let Some(answer) = answer {
            let expired = now - key.max_age_ms;
            let kept = idempotency::keep(conn, &r.owner, key, &answer, now, expired)?;
            if !kept {
                return Ok(Written::KeyTaken);
            }
        }
    }
    Ok(Written::Done(outcome))
}

/// One request of a batch, in a savepoint of its own.
fn commit_one(tx: &mut rusqlite::Transaction, r: &ActionRequest, now: i64) -> Result<Requested> {
    let sp = tx.savepoint()?;
    match decide_and_write(&sp, r, now)? {
        Written::Done(outcome) => {
            sp.commit()?;
            Ok(outcome)
        }
        Written::KeyTaken => {
            // Dropped, the savepoint rolls back what was written.
            drop(sp);
            let earlier = match &r.key {
                Some(key) => key_verdict(tx, &r.owner, key, now)?,
                None => None,
            };
            Ok(earlier.unwrap_or(Requested::KeyReused))
        }
    }
}

/// What [`decide_and_write`] came to.
enum Written {
    /// Written (or nothing to write): the outcome.
    Done(Requested),
    /// The request's key was taken meanwhile (by a request committed since the unlocked
    /// look, or earlier in this batch): what was written is to be rolled back, and the key's
    /// earlier use decides.
    KeyTaken,
}

/// Writes a new action of `r` (ending the live one it supersedes first) and the instance's
/// transient status; returns the action's id.
fn create(
    conn: &Connection,
    r: &ActionRequest,
    supersede: Option<String>,
    now: i64,
) -> Result<String> {
    if let Some(stale) = supersede {
        let why = Some("superseded by a new action");
        end_actions(conn, Which::One(&stale), ActionState::Failed, why, now)?;
    }
    let id = insert_action(conn, &r.instance_id, r, now)?;
    conn.prepare_cached(
        "UPDATE lambda_instances SET status = ?2, failure_message = NULL WHERE id = ?1",
    )?
    .execute(params![r.instance_id, r.kind.transient_status().name()])?;
    Ok(id)
}

/// Writes a queued action of `r` on `instance`, due now; returns its id.
fn insert_action(conn: &Connection, instance: &str, r: &ActionRequest, now: i64) -> Result<String> {
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
        instance,
        r.kind.name(),
        r.token,
        r.compute_url,
        r.network_url,
        now
    ])?;
    Ok(id)
}

impl Store {
    /// The instance's status and action in flight, read together, if `owner` has it: what an
    /// action request is decided on.
    pub fn snapshot(&mut self, id: &str, owner: &str) -> Result<Option<Snapshot>> {
        let tx = self.conn.transaction()?;
        read_snapshot(&tx, id, owner)
    }

    /// Decides `request` on what was seen of its instance (`snapshot`) and, when it writes
    /// anything (a new action, or the outcome kept under its key), commits it with the group
    /// commit. When this returns `Created`, the action is on disk.
    pub fn request_action(
        &mut self,
        snapshot: Option<&Snapshot>,
        request: ActionRequest,
    ) -> Result<Requested> {
        // Most requests that change nothing (a merge, a conflict, a replay) are answered from
        // unlocked reads. A request with a key that is new has its outcome kept, and so goes
        // on to be written, as does a new action.
        let creates = request.create.is_some();
        match &request.key {
            Some(key) => {
                let now = self.now_ms();
                if let Some(done) = key_verdict(&self.conn, &request.owner, key, now)? {
                    return Ok(done);
                }
                if snapshot.is_none() && !creates {
                    return Ok(Requested::NotFound);
                }
            }
            None if creates => {}
            None => {
                if let ControlFlow::Break(done) = settle(decide(snapshot, request.kind)) {
                    return Ok(done);
                }
            }
        }
        let shared = self.shared.clone();
        shared
            .requests
            .submit(request, |batch| {
                let _writing = lock(&shared.writer);
                self.commit_batch(batch)
            })
            .unwrap_or(Err(StoreError::Abandoned))
    }

    /// Applies [`decide_and_write`] to each request of `batch`, all in one transaction with a
    /// savepoint each; the caller holds the write lock.
    fn commit_batch(&mut self, batch: &[ActionRequest]) -> Vec<Result<Requested>> {
        // A larger cache while leading (see BATCH_CACHE_KIB); a pragma that fails only
        // leaves the cache as it was.
        let _ = self.conn.pragma_update(None, "cache_size", BATCH_CACHE_KIB);
        let outcomes = self.commit_batch_inner(batch);
        let _ = self.conn.pragma_update(None, "cache_size", CACHE_KIB);
        outcomes
    }

    fn commit_batch_inner(&mut self, batch: &[ActionRequest]) -> Vec<Result<Requested>> {
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
        for r in batch {
            outcomes.push(commit_one(&mut tx, r, now));
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

    /// A request of `owner`'s on instance `id`, without a key.
    pub(crate) fn ask(id: &str, owner: &str, kind: ActionKind) -> ActionRequest {
        ActionRequest {
            instance_id: id.into(),
            owner: owner.into(),
            kind,
            token: "tok".into(),
            compute_url: "http://c".into(),
            network_url: None,
            key: None,
            create: None,
        }
    }

    pub(crate) fn request_as(
        store: &mut Store,
        id: &str,
        owner: &str,
        kind: ActionKind,
    ) -> Requested {
        let snapshot = store.snapshot(id, owner).unwrap();
        store
            .request_action(snapshot.as_ref(), ask(id, owner, kind))
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
        let stale = store.snapshot(&id, OWNER).unwrap();
        let Requested::Created(a) = request(&mut store, &id, ActionKind::Start) else {
            panic!("not created")
        };
        let again = store
            .request_action(stale.as_ref(), ask(&id, OWNER, ActionKind::Start))
            .unwrap();
        assert_eq!(again, Requested::Merged(a));
    }

    pub(crate) fn on_disk(dir: &std::path::Path) -> Database {
        Database::new(dir.join("g.db"), Synchronous::Normal)
    }

    pub(crate) fn stopped(n: usize) -> Vec<NewInstance> {
        (0..n)
            .map(|i| NewInstance {
                name: format!("g{i}"),
                owner: OWNER.into(),
                master: "m".into(),
                slaves: vec![],
                status: Status::Stopped,
                network: None,
                floating_ips: Vec::new(),
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
                    let snapshot = store.snapshot(&id, OWNER).unwrap();
                    barrier.wait();
                    let r =
                        store.request_action(snapshot.as_ref(), ask(&id, OWNER, ActionKind::Start));
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
}
