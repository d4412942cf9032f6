//! The `idempotency_keys` table: the first answer to each owner's key, kept for a while.
//! What a key means, how long it lives and when it is replayed is `crate::idempotency`'s.

use rusqlite::{params, OptionalExtension};

use super::{Result, Store};

/// A stored answer to an action call made with an `Idempotency-Key`.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredAnswer {
    pub fingerprint: String,
    pub status: u16,
    pub body: String,
    pub location: Option<String>,
}

/// What a key was when a request came to claim it.
#[derive(Debug, Clone, PartialEq)]
pub enum KeyClaim {
    /// Free (never used, or expired): it is now this request's, in progress.
    Claimed,
    /// Answered before.
    Answered(StoredAnswer),
    /// Claimed by a request still being processed, with this fingerprint.
    InProgress(String),
    /// The owner already has `max_per_owner` live keys.
    Full,
}

/// The `status` of a claimed key whose request has not been answered yet.
const IN_PROGRESS: i64 = 0;
/// A claim this old (ms) was left by a request that never finished (a crash): free again.
const ABANDONED_MS: i64 = 60_000;

impl Store {
    /// Claims `owner`'s `key` for a request with `fingerprint`, before the request is
    /// processed, so that a concurrent request with the same key learns it is in progress.
    /// A key counts for `max_age_ms`; an owner holds at most `max_per_owner` of them.
    pub fn claim_key(
        &mut self,
        owner: &str,
        key: &str,
        fingerprint: &str,
        max_age_ms: i64,
        max_per_owner: u64,
    ) -> Result<KeyClaim> {
        let now = self.now_ms();
        let tx = self.begin_write()?;
        let row: Option<(String, i64, String, Option<String>, i64)> = tx
            .prepare_cached(
                "SELECT fingerprint, status, body, location, created_at FROM idempotency_keys
                 WHERE owner = ?1 AND key = ?2",
            )?
            .query_row(params![owner, key], |r| r.try_into())
            .optional()?;
        if let Some((fingerprint, status, body, location, at)) = row {
            if status != IN_PROGRESS && at >= now - max_age_ms {
                let answer = StoredAnswer {
                    fingerprint,
                    status: status as u16,
                    body,
                    location,
                };
                return Ok(KeyClaim::Answered(answer));
            }
            if status == IN_PROGRESS && at >= now - ABANDONED_MS {
                return Ok(KeyClaim::InProgress(fingerprint));
            }
        }
        let live: i64 = tx
            .prepare_cached(
                "SELECT COUNT(*) FROM idempotency_keys WHERE owner = ?1 AND created_at >= ?2",
            )?
            .query_row(params![owner, now - max_age_ms], |r| r.get(0))?;
        if live as u64 >= max_per_owner {
            return Ok(KeyClaim::Full);
        }
        tx.prepare_cached(
            "INSERT OR REPLACE INTO idempotency_keys
                 (owner, key, fingerprint, status, body, location, created_at)
             VALUES (?1, ?2, ?3, ?4, '', NULL, ?5)",
        )?
        .execute(params![owner, key, fingerprint, IN_PROGRESS, now])?;
        tx.commit()?;
        Ok(KeyClaim::Claimed)
    }

    /// Lets go of a claimed key whose request came to no answer worth keeping.
    pub fn release_key(&mut self, owner: &str, key: &str) -> Result<()> {
        let tx = self.begin_write()?;
        tx.prepare_cached(
            "DELETE FROM idempotency_keys WHERE owner = ?1 AND key = ?2 AND status = ?3",
        )?
        .execute(params![owner, key, IN_PROGRESS])?;
        tx.commit()
    }

    /// The answer stored for `owner`'s `key`, if it is younger than `max_age_ms`.
    #[cfg(test)]
    pub fn stored_answer(
        &self,
        owner: &str,
        key: &str,
        max_age_ms: i64,
    ) -> Result<Option<StoredAnswer>> {
        let row = self
            .conn
            .prepare_cached(
                "SELECT fingerprint, status, body, location FROM idempotency_keys
                 WHERE owner = ?1 AND key = ?2 AND created_at >= ?3",
            )?
            .query_row(params![owner, key, self.now_ms() - max_age_ms], |r| {
                Ok(StoredAnswer {
                    fingerprint: r.get(0)?,
                    status: r.get::<_, i64>(1)? as u16,
                    body: r.get(2)?,
                    location: r.get(3)?,
                })
            })
            .optional()?;
        Ok(row)
    }

    /// Stores the first answer to `owner`'s `key` (over its claim); an answer already there
    /// (an expired one not yet purged) is replaced only if expired.
    pub fn store_answer(
        &mut self,
        owner: &str,
        key: &str,
        answer: &StoredAnswer,
        max_age_ms: i64,
    ) -> Result<()> {
        let now = self.now_ms();
        let tx = self.begin_write()?;
        tx.prepare_cached(
            "INSERT INTO idempotency_keys (owner, key, fingerprint, status, body, location, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT (owner, key) DO UPDATE SET
                 fingerprint = excluded.fingerprint, status = excluded.status,
                 body = excluded.body, location = excluded.location,
                 created_at = excluded.created_at
             WHERE idempotency_keys.created_at < ?8 OR idempotency_keys.status = 0",
        )?
        .execute(params![
            owner,
            key,
            answer.fingerprint,
            answer.status as i64,
            answer.body,
            answer.location,
            now,
            now - max_age_ms
        ])?;
        tx.commit()
    }

    /// Deletes at most `batch` keys older than `max_age_ms`, oldest first, through the age
    /// index (never a scan of the table). Returns how many went.
    pub fn purge_answers(&mut self, max_age_ms: i64, batch: u64) -> Result<usize> {
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
    use crate::store::instances::tests::{store, OWNER};
    use std::time::Duration;

    const TTL: i64 = 1000;

    #[test]
    fn a_key_is_claimed_before_its_request_is_answered() {
        let (mut store, clock) = store();
        let claim =
            |store: &mut Store, key: &str, f: &str| store.claim_key(OWNER, key, f, TTL, 2).unwrap();
        assert_eq!(claim(&mut store, "k", "f"), KeyClaim::Claimed);
        assert_eq!(
            claim(&mut store, "k", "f"),
            KeyClaim::InProgress("f".into()),
            "a concurrent request"
        );
        let answer = StoredAnswer {
            fingerprint: "f".into(),
            status: 202,
            body: "{}".into(),
            location: None,
        };
        store.store_answer(OWNER, "k", &answer, TTL).unwrap();
        assert_eq!(claim(&mut store, "k", "f"), KeyClaim::Answered(answer));
        // A request that came to nothing lets go of its key.
        assert_eq!(claim(&mut store, "j", "g"), KeyClaim::Claimed);
        store.release_key(OWNER, "j").unwrap();
        assert_eq!(claim(&mut store, "j", "g"), KeyClaim::Claimed);
        // Two live keys per owner here: a third is refused, another owner's is not.
        assert_eq!(claim(&mut store, "i", "h"), KeyClaim::Full);
        assert_eq!(
            store.claim_key("other", "i", "h", TTL, 2).unwrap(),
            KeyClaim::Claimed
        );
        // A claim left by a crash is free again after a minute.
        clock.advance(Duration::from_millis(ABANDONED_MS as u64 + 1));
        assert_eq!(claim(&mut store, "j", "g"), KeyClaim::Claimed);
    }

    #[test]
    fn answers_are_kept_then_purged() {
        let (mut store, clock) = store();
        let answer = StoredAnswer {
            fingerprint: "f".into(),
            status: 202,
            body: "{}".into(),
            location: Some("http://x".into()),
        };
        store.store_answer(OWNER, "k", &answer, TTL).unwrap();
        assert_eq!(
            store.stored_answer(OWNER, "k", TTL).unwrap(),
            Some(answer.clone())
        );
        assert_eq!(store.stored_answer("other", "k", TTL).unwrap(), None);
        // A second answer for a live key does not replace the first.
        let later = StoredAnswer {
            status: 409,
            ..answer.clone()
        };
        store.store_answer(OWNER, "k", &later, TTL).unwrap();
        let kept = store.stored_answer(OWNER, "k", TTL).unwrap().unwrap();
        assert_eq!(kept.status, 202);
        assert_eq!(store.purge_answers(TTL, 100).unwrap(), 0, "still young");
        clock.advance(Duration::from_millis(TTL as u64 + 1));
        assert_eq!(
            store.stored_answer(OWNER, "k", TTL).unwrap(),
            None,
            "expired keys are not replayed"
        );
        // An expired answer is replaced by the next one.
        store.store_answer(OWNER, "k", &later, TTL).unwrap();
        let replaced = store.stored_answer(OWNER, "k", TTL).unwrap().unwrap();
        assert_eq!(replaced.status, 409);
        clock.advance(Duration::from_millis(TTL as u64 + 1));
        assert_eq!(store.purge_answers(TTL, 100).unwrap(), 1);
        assert_eq!(store.purge_answers(TTL, 100).unwrap(), 0);
    }
}
