//! The `idempotency_keys` table: what each owner's key came to the first time, kept for a
//! while. The key is looked up, and its outcome kept, in the transaction of the request it
//! comes with (`actions.rs`); what a key means is `crate::idempotency`'s.

use rusqlite::{params, Connection, OptionalExtension};

use super::{Requested, Result, Store};

/// What a request sent with a key came to, kept to be answered again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// 202 with this action (created, or the one in flight) on this instance, its links
    /// under `base_url` as the first answer's were.
    Accepted {
        instance: String,
        action: String,
        base_url: String,
    },
    /// 409 with this sentence.
    Refused(String),
}

/// An `Idempotency-Key` a request comes with, and the rules it is held to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyUse {
    pub key: String,
    /// What makes two requests the same request.
    pub fingerprint: String,
    /// Where the answer's links point, kept so that a replay points where the first answer
    /// did.
    pub base_url: String,
    /// How long (ms) a use of the key counts.
    pub max_age_ms: i64,
    /// How many keys an owner may hold at once.
    pub max_per_owner: u64,
}

/// What an earlier use of the request's key decides, if it decides anything: the same
/// request is answered as it was, another is refused, and an owner with too many keys gets
/// no new one.
pub(super) fn key_verdict(
    conn: &Connection,
    owner: &str,
    key: &KeyUse,
    now: i64,
) -> Result<Option<Requested>> {
    let since = now - key.max_age_ms;
    Ok(match find(conn, owner, &key.key, since)? {
        Some(kept) if kept.fingerprint == key.fingerprint => Some(Requested::Replayed(kept.answer)),
        Some(_) => Some(Requested::KeyReused),
        None if count(conn, owner, since)? >= key.max_per_owner => Some(Requested::TooManyKeys),
        None => None,
    })
}

/// A key's row: the request it was used for, and what that came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Kept {
    pub(super) fingerprint: String,
    pub(super) answer: Answer,
}

/// `owner`'s `key`, if it was used at or after `since` (ms since the epoch).
pub(super) fn find(conn: &Connection, owner: &str, key: &str, since: i64) -> Result<Option<Kept>> {
    type Row = (String, i64, Option<String>, Option<String>, Option<String>);
    let row: Option<(Row, Option<String>)> = conn
        .prepare_cached(
            "SELECT fingerprint, status, action_id, base_url, message, instance_id
             FROM idempotency_keys WHERE owner = ?1 AND key = ?2 AND created_at >= ?3",
        )?
        .query_row(params![owner, key, since], |r| {
            let row = (r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?);
            Ok((row, r.get(5)?))
        })
        .optional()?;
    Ok(row.map(
        |((fingerprint, status, action_id, base_url, message), instance)| {
            let answer = match (status, action_id) {
                (202, Some(action)) => Answer::Accepted {
                    instance: instance.unwrap_or_default(),
                    action,
                    base_url: base_url.unwrap_or_default(),
                },
                _ => Answer::Refused(message.unwrap_or_default()),
            };
            Kept {
                fingerprint,
                answer,
            }
        },
    ))
}

/// How many keys `owner` used at or after `since`.
pub(super) fn count(conn: &Connection, owner: &str, since: i64) -> Result<u64> {
    let n: i64 = conn
        .prepare_cached(
            "SELECT COUNT(*) FROM idempotency_keys WHERE owner = ?1 AND created_at >= ?2",
        )?
        .query_row(params![owner, since], |r| r.get(0))?;
    Ok(n as u64)
}

/// Keeps what `owner`'s key came to, over a use of the same key older than `expired`;
/// returns false, keeping nothing, when a younger use holds the key.
pub(super) fn keep(
    conn: &Connection,
    owner: &str,
    key: &KeyUse,
    answer: &Answer,
    now: i64,
    expired: i64,
) -> Result<bool> {
    let (status, instance, action_id, base_url, message) = match answer {
        Answer::Accepted {
            instance,
            action,
            base_url,
        } => (202, Some(instance), Some(action), Some(base_url), None),
        Answer::Refused(m) => (409, None, None, None, Some(m)),
    };
    let kept = conn
        .prepare_cached(
            "INSERT INTO idempotency_keys (owner, key, fingerprint, status, instance_id,
                 action_id, base_url, message, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
             ON CONFLICT (owner, key) DO UPDATE SET fingerprint = excluded.fingerprint,
                 status = excluded.status, instance_id = excluded.instance_id,
                 action_id = excluded.action_id, base_url = excluded.base_url,
                 message = excluded.message, created_at = excluded.created_at
             WHERE idempotency_keys.created_at < ?10",
        )?
        .execute(params![
            owner,
            key.key,
            key.fingerprint,
            status,
            instance,
            action_id,
            base_url,
            message,
            now,
            expired
        ])?;
    Ok(kept == 1)
}

impl Store {
    /// Deletes at most `batch` keys older than `max_age_ms`, oldest first, through the age
    /// index (never a scan of the table). Returns how many went.
    pub fn purge_keys(&mut self, max_age_ms: i64, batch: u64) -> Result<usize> {
        let cutoff = self.now_ms() - max_age_ms;
        let tx = self.begin_write()?;
        let n = tx
            .prepare_cached(
                "DELETE FROM idempotency_keys WHERE (owner, key) IN (
                 SELECT owner, key FROM idempotency_keys WHERE created_at < ?1
                 ORDER BY created_at LIMIT ?2)",
            )?
            .execute(params![cutoff, batch as i64])?;
        tx.commit()?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ActionKind, Status};
    use crate::store::actions::tests::ask;
    use crate::store::instances::tests::{instance, store, OWNER};
    use crate::store::{ActionRequest, KeyUse, Requested};
    use std::time::Duration;

    /// `kind` on `id` with `key`, whose owner may hold two keys of a second's age.
    fn keyed(store: &mut Store, id: &str, kind: ActionKind, key: &str) -> Requested {
        let snapshot = store.snapshot(id, OWNER).unwrap();
        let request = ActionRequest {
            key: Some(KeyUse {
                key: key.into(),
                fingerprint: format!("{id} {}", kind.name()),
                base_url: "http://h".into(),
                max_age_ms: 1000,
                max_per_owner: 2,
            }),
            ..ask(id, OWNER, kind)
        };
        store.request_action(snapshot.as_ref(), request).unwrap()
    }

    #[test]
    fn a_key_replays_its_first_outcome_and_refuses_other_requests() {
        let (mut store, clock) = store();
        let id = instance(&mut store, Status::Stopped);
        let Requested::Created(a) = keyed(&mut store, &id, ActionKind::Start, "k") else {
            panic!("not created")
        };
        let accepted = Requested::Replayed(Answer::Accepted {
            instance: id.clone(),
            action: a.clone(),
            base_url: "http://h".into(),
        });
        assert_eq!(keyed(&mut store, &id, ActionKind::Start, "k"), accepted);
        assert_eq!(
            keyed(&mut store, &id, ActionKind::Stop, "k"),
            Requested::KeyReused
        );
        // A refusal is kept as well, and replayed even once the state has changed.
        let Requested::Conflict(why) = keyed(&mut store, &id, ActionKind::Stop, "j") else {
            panic!("not refused")
        };
        let job = store
            .claim_due(Duration::from_secs(60), true)
            .unwrap()
            .unwrap();
        assert!(store.finish(&job, None, &[]).unwrap());
        let refused = Requested::Replayed(Answer::Refused(why));
        assert_eq!(keyed(&mut store, &id, ActionKind::Stop, "j"), refused);
        // Two keys per owner here: a third is refused until the first ones expire.
        assert_eq!(
            keyed(&mut store, &id, ActionKind::Stop, "i"),
            Requested::TooManyKeys
        );
        clock.advance(Duration::from_millis(1001));
        assert!(matches!(
            keyed(&mut store, &id, ActionKind::Stop, "i"),
            Requested::Created(_)
        ));
        assert!(matches!(
            keyed(&mut store, &id, ActionKind::Start, "k"),
            Requested::Conflict(_)
        ));
    }

    /// Sixteen requests with one key at once, every one having looked the key up before any
    /// was committed: one action, and every other request answered with it.
    #[test]
    fn one_key_at_once_is_one_action() {
        use crate::store::actions::tests::{on_disk, stopped};
        let dir = tempfile::tempdir().unwrap();
        let db = on_disk(dir.path());
        let id = db
            .open()
            .unwrap()
            .add_instances(&stopped(1))
            .unwrap()
            .remove(0);
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(16));
        let threads: Vec<_> = (0..16)
            .map(|_| {
                let (db, id, barrier) = (db.clone(), id.clone(), barrier.clone());
                std::thread::spawn(move || {
                    let mut store = db.open().unwrap();
                    barrier.wait();
                    let snapshot = store.snapshot(&id, OWNER).unwrap();
                    let request = ActionRequest {
                        key: Some(KeyUse {
                            key: "same".into(),
                            fingerprint: "f".into(),
                            base_url: "http://h".into(),
                            max_age_ms: 60_000,
                            max_per_owner: 10,
                        }),
                        ..ask(&id, OWNER, ActionKind::Start)
                    };
                    store.request_action(snapshot.as_ref(), request).unwrap()
                })
            })
            .collect();
        let outcomes: Vec<Requested> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        let created: Vec<&String> = outcomes
            .iter()
            .filter_map(|o| match o {
                Requested::Created(a) => Some(a),
                _ => None,
            })
            .collect();
        assert_eq!(created.len(), 1, "{outcomes:?}");
        for o in &outcomes {
            let same = match o {
                Requested::Created(a) => a == created[0],
                Requested::Replayed(Answer::Accepted { action, .. }) => action == created[0],
                _ => false,
            };
            assert!(same, "{o:?} among {outcomes:?}");
        }
    }

    #[test]
    fn outcomes_are_kept_then_purged() {
        let (mut store, clock) = store();
        let now = store.now_ms();
        let key = |k: &str, f: &str| KeyUse {
            key: k.into(),
            fingerprint: f.into(),
            base_url: String::new(),
            max_age_ms: 1000,
            max_per_owner: 10,
        };
        let accepted = Answer::Accepted {
            instance: "i1".into(),
            action: "a1".into(),
            base_url: "http://h".into(),
        };
        assert!(keep(
            &store.conn,
            OWNER,
            &key("k", "f"),
            &accepted,
            now,
            now - 1000
        )
        .unwrap());
        let refused = Answer::Refused("already started".into());
        assert!(keep(
            &store.conn,
            OWNER,
            &key("j", "g"),
            &refused,
            now,
            now - 1000
        )
        .unwrap());
        assert!(
            !keep(
                &store.conn,
                OWNER,
                &key("j", "h"),
                &refused,
                now,
                now - 1000
            )
            .unwrap(),
            "a live key is not taken over"
        );
        let kept = find(&store.conn, OWNER, "k", now).unwrap().unwrap();
        assert_eq!((kept.fingerprint.as_str(), kept.answer), ("f", accepted));
        let kept = find(&store.conn, OWNER, "j", now).unwrap().unwrap();
        assert_eq!(kept.answer, refused);
        assert_eq!(find(&store.conn, "other", "k", now).unwrap(), None);
        assert_eq!(count(&store.conn, OWNER, now).unwrap(), 2);
        assert_eq!(store.purge_keys(1000, 100).unwrap(), 0, "still young");
        clock.advance(Duration::from_millis(1001));
        let later = store.now_ms();
        assert_eq!(count(&store.conn, OWNER, later - 1000).unwrap(), 0);
        assert_eq!(find(&store.conn, OWNER, "k", later - 1000).unwrap(), None);
        assert_eq!(store.purge_keys(1000, 1).unwrap(), 1, "one batch");
        assert_eq!(store.purge_keys(1000, 100).unwrap(), 1);
        assert_eq!(store.purge_keys(1000, 100).unwrap(), 0);
    }
}
