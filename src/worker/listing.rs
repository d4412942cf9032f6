//! Recent `servers/detail` listings, by owner: one call reads every VM of an owner, and the
//! ticks of that owner's other actions read the same answer instead of calling again, as
//! long as it was asked for no earlier than their VMs fell due. A listing so shared is
//! never older than what the VMs waited for, so it never hides an arrival a poll would see.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::okeanos::Listing;
use crate::sync::lock;

/// An owner's servers, shared.
pub type Servers = Arc<Listing>;

/// How long (ms) a listing is kept at most.
const KEEP_MS: i64 = 1000;

/// The listings of the last moment.
#[derive(Default)]
pub struct Listings {
    /// By (compute URL, owner): when the listing was asked for (ms since the epoch), and it.
    recent: Mutex<HashMap<(String, String), (i64, Servers)>>,
}

impl Listings {
    /// `owner`'s listing, if one was asked for at or after `due` (ms since the epoch).
    pub fn get(&self, compute: &str, owner: &str, due: i64) -> Option<Servers> {
        let key = (compute.to_string(), owner.to_string());
        match lock(&self.recent).get(&key) {
            Some((asked, servers)) if *asked >= due => Some(servers.clone()),
            _ => None,
        }
    }

    /// Keeps `servers`, asked for at `asked` (ms since the epoch).
    pub fn put(&self, compute: &str, owner: &str, asked: i64, servers: Servers) {
        let mut recent = lock(&self.recent);
        // Old entries go whenever one comes: the map holds the owners of the last moment.
        recent.retain(|_, (at, _)| *at >= asked - KEEP_MS);
        let key = (compute.to_string(), owner.to_string());
        match recent.get(&key) {
            Some((newer, _)) if *newer > asked => {}
            _ => {
                recent.insert(key, (asked, servers));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listing_serves_what_fell_due_before_it_was_asked_for() {
        let listings = Listings::default();
        listings.put("c", "u1", 1000, Arc::new(Listing::default()));
        assert!(listings.get("c", "u1", 1000).is_some());
        assert!(listings.get("c", "u1", 900).is_some());
        assert!(
            listings.get("c", "u1", 1001).is_none(),
            "older than the wait"
        );
        assert!(listings.get("c", "u2", 0).is_none());
        assert!(listings.get("other", "u1", 0).is_none());
        // An older answer arriving late does not replace a newer one.
        listings.put("c", "u1", 500, Arc::new(Listing::default()));
        assert!(listings.get("c", "u1", 1000).is_some());
        // Another owner's listing much later drops this one.
        listings.put("c", "u2", 5000, Arc::new(Listing::default()));
        assert!(listings.get("c", "u1", 0).is_none());
    }
}
