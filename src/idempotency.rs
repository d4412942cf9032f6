//! `Idempotency-Key` (IETF httpapi draft): a client that sends the same key with the same
//! request within [`TTL`] gets the first answer again; the same key with another request is
//! refused. Everything the key means lives here: its syntax, what makes two requests the
//! same, the lookup, what is kept, and the purge of expired keys. The table is
//! `store/idempotency.rs`'s.

use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::model::ActionKind;
use crate::store::{Store, StoreError, StoredAnswer};

/// How long an answer is replayed.
pub const TTL: Duration = Duration::from_secs(24 * 3600);
/// How often an idle worker deletes expired keys, and how many at a time.
pub const PURGE_EVERY: Duration = Duration::from_secs(60);
const PURGE_BATCH: u64 = 500;

/// Why a key is refused (400), for a person.
pub const BAD_KEY: &str = "Idempotency-Key must be 1 to 255 printable ASCII characters.";
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
    /// Never, or so long ago that it has expired: process the request.
    None,
    /// The same request: answer with this.
    Replay(StoredAnswer),
    /// Another request: refuse this one.
    Reused,
}

pub fn prior(
    store: &Store,
    owner: &str,
    key: &str,
    fingerprint: &str,
) -> Result<Prior, StoreError> {
    Ok(match store.stored_answer(owner, key, ttl_ms())? {
        None => Prior::None,
        Some(stored) if stored.fingerprint == fingerprint => Prior::Replay(stored),
        Some(_) => Prior::Reused,
    })
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
