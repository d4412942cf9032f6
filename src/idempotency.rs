//! `Idempotency-Key` (IETF httpapi draft): a client that sends the same key with the same
//! request within [`TTL`] gets the first answer again; the same key with another request is
//! refused. What the key means lives here: its syntax, what makes two requests the same, its
//! lifetime and limits, and the purge of expired keys. The key is looked up, and the outcome
//! kept, in the transaction of its request (`store/actions.rs`).

use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::model::ActionKind;
use crate::store::{KeyUse, Store, StoreError};

/// How long an answer is replayed.
pub const TTL: Duration = Duration::from_secs(24 * 3600);
/// How often expired keys are deleted, and how many at a time.
pub const PURGE_EVERY: Duration = Duration::from_secs(60);
const PURGE_BATCH: u64 = 500;

/// Why a key is refused (400), for a person.
pub const BAD_KEY: &str = "Idempotency-Key must be 1 to 255 printable ASCII characters.";
/// Why a key is refused when its owner has too many (429), for a person.
pub const TOO_MANY: &str = "Too many Idempotency-Keys in the last 24 hours; reuse one, or send \
     the request without one.";
/// Keys an owner may hold at once. Each costs about 0.3 KiB of database (the key, the
/// fingerprint, the action id and the primary key's and the age index's entries), so an
/// owner's keys cost at most about 0.3 MiB.
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

/// What an action call asks for, as its fingerprint is taken of: what makes two calls the
/// same request, not their bytes (curl -F picks a new multipart boundary on every call, and a
/// retry must still match).
pub fn action_request(instance_id: &str, kind: ActionKind) -> String {
    format!("{instance_id} {}", kind.name())
}

/// The fingerprint of a request, from what it asks for ([`action_request`], or a create's
/// fields).
pub fn fingerprint(request: &str) -> String {
    format!("{:x}", Sha256::digest(request))
}

/// The use of `key` by `request` (what it asks for), under this module's rules; its answer's
/// links point under `base_url`.
pub fn key_use(key: &str, request: &str, base_url: &str) -> KeyUse {
    KeyUse {
        key: key.to_string(),
        fingerprint: fingerprint(request),
        base_url: base_url.to_string(),
        max_age_ms: ttl_ms(),
        max_per_owner: MAX_KEYS_PER_OWNER,
    }
}

/// Deletes one batch of expired keys; returns how many went.
pub fn purge(store: &mut Store) -> Result<usize, StoreError> {
    store.purge_keys(ttl_ms(), PURGE_BATCH)
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
        let print = |id, kind| fingerprint(&action_request(id, kind));
        let start = print("i", ActionKind::Start);
        assert_eq!(start, print("i", ActionKind::Start));
        assert_ne!(start, print("i", ActionKind::Stop));
        assert_ne!(start, print("j", ActionKind::Start));
    }
}
