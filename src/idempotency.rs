//! `Idempotency-Key` (IETF httpapi draft): a client that sends the same key with the same
//! request within [`TTL`] gets the first answer again; the same key with another request is
//! refused. Everything the key means lives here: its syntax, what makes two requests the
//! same, the lookup, what is kept, and the purge of expired keys. The table is
//! `store/idempotency.rs`'s.

use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::model::ActionKind;
use crate::store::{KeyClaim, Store, StoreError, StoredAnswer};

/// How long an answer is replayed.
pub const TTL: Duration = Duration::from_secs(24 * 3600);
/// How often an idle worker deletes expired keys, and how many at a time.
pub const PURGE_EVERY: Duration = Duration::from_secs(60);
const PURGE_BATCH: u64 = 500;

/// Why a key is refused (400), for a person.
pub const BAD_KEY: &str = "Idempotency-Key must be 1 to 255 printable ASCII characters.";
/// Why a key in use by a request still being processed is refused (409), for a person.
pub const IN_PROGRESS: &str = "A request with this Idempotency-Key is in progress; try again.";
/// Why a key is refused when its owner has too many (429), for a person.
pub const TOO_MANY: &str = "Too many Idempotency-Keys in the last 24 hours; reuse one, or send \
     the request without one.";
/// Keys an owner may hold at once. Each costs about 0.6 KiB of database (its answer, about
/// 300 bytes, the key and the fingerprint, and the primary key's entry), so an owner's keys
/// cost at most about 0.6 MiB.
pub const MAX_KEYS_PER_OWNER: u64 = 1000;
/// Why a reused key is refused (422), for a person.
pub const REUSED: &str =
    "This Idempotency-Key was used with a different request in the last 24 hours.";

fn ttl_ms() -> i64 {
    TTL.as_millis() as i64
}

/// The key in an `Idempotency-Key` header value, or None when it is empty, too long or not
/// plain text. The draft makes the key an sf-string, `"..."`; a bare token is accepted too.
pub fn parse_key(raw: &str) -> Option<&str> {
    let key = raw
        .strip_prefix('"')
        .and_then(|k| k.strip_suffix('"'))
        .unwrap_or(raw);
    let plain = key.bytes().all(|b| (0x20..0x7f).contains(&b));
    (!key.is_empty() && key.len() <= 255 && plain).then_some(key)
}

/// What makes two action calls the same request: what they ask for, not their bytes (curl
/// -F picks a new multipart boundary on every call, and a retry must still match).
pub fn fingerprint(instance_id: &str, kind: ActionKind) -> String {
    format!(
        "{:x}",
        Sha256::digest(format!("{instance_id} {}", kind.name()))
    )
}

/// What a key was used for before.
#[derive(Debug, Clone, PartialEq)]
pub enum Prior {
    /// Never, or so long ago that it has expired: it is claimed for this request, which is
    /// to be processed, then [`keep`]t or [`release`]d.
    None,
    /// The same request: answer with this.
    Replay(StoredAnswer),
    /// Another request: refuse this one (422).
    Reused,
    /// The same request, still being processed (409).
    InProgress,
    /// The owner has [`MAX_KEYS_PER_OWNER`] keys already (429).
    TooMany,
}

/// Claims `owner`'s `key` for this request, or says why not: before the request is
/// processed, so that two requests sent at once with one key are never both processed.
pub fn claim(
    store: &mut Store,
    owner: &str,
    key: &str,
    fingerprint: &str,
) -> Result<Prior, StoreError> {
    let claim = store.claim_key(owner, key, fingerprint, ttl_ms(), MAX_KEYS_PER_OWNER)?;
    Ok(match claim {
        KeyClaim::Claimed => Prior::None,
        KeyClaim::Answered(stored) if stored.fingerprint == fingerprint => Prior::Replay(stored),
        KeyClaim::InProgress(f) if f == fingerprint => Prior::InProgress,
        KeyClaim::Answered(_) | KeyClaim::InProgress(_) => Prior::Reused,
        KeyClaim::Full => Prior::TooMany,
    })
}

/// Lets go of a claimed key whose request came to no answer worth keeping (a 5xx).
pub fn release(store: &mut Store, owner: &str, key: &str) -> Result<(), StoreError> {
    store.release_key(owner, key)
}

/// Whether an answer is kept for replay: the state table's answers are; a 503 (the database
/// failing) or a 5xx is not an answer to the request.
pub fn is_kept(status: u16) -> bool {
    matches!(status, 202 | 409)
}

/// Keeps the first answer to `owner`'s `key`.
pub fn keep(
    store: &mut Store,
    owner: &str,
    key: &str,
    answer: &StoredAnswer,
) -> Result<(), StoreError> {
    store.store_answer(owner, key, answer, ttl_ms())
}

/// Deletes one batch of expired keys; returns how many went.
pub fn purge(store: &mut Store) -> Result<usize, StoreError> {
    store.purge_answers(ttl_ms(), PURGE_BATCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        assert_eq!(parse_key("abc"), Some("abc"));
        assert_eq!(parse_key("\"abc\""), Some("abc"));
        assert_eq!(parse_key("a b-1"), Some("a b-1"));
        for bad in ["", "\"\"", "a\tb", "\u{e9}", &"k".repeat(256)] {
            assert_eq!(parse_key(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn fingerprints_follow_the_request_not_its_bytes() {
        let start = fingerprint("i", ActionKind::Start);
        assert_eq!(start, fingerprint("i", ActionKind::Start));
        assert_ne!(start, fingerprint("i", ActionKind::Stop));
        assert_ne!(start, fingerprint("j", ActionKind::Start));
    }
}
