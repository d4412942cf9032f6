//! What stands between the HTTP threads and identity: a token not in the cache costs a call to
//! ~okeanos identity, and that call holds the handler thread that makes it. So calls at once
//! are bounded well below the handler threads (past the bound a request is answered 503 at
//! once), a burst of one token makes one call that the others wait for, and a client address
//! that keeps sending tokens identity rejects is answered 429 for a while, without a call.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::sync::lock;

/// Rejected tokens from one address, within [`STRIKE_WINDOW`], past which it is turned away.
const MAX_STRIKES: u32 = 10;
const STRIKE_WINDOW: Duration = Duration::from_secs(60);
/// How long an address is turned away once it struck out.
pub const BLOCKED_FOR: Duration = Duration::from_secs(60);
/// Addresses remembered at most; past that, the oldest are forgotten.
const MAX_ADDRESSES: usize = 10_000;

/// One call to identity under way, and its outcome once known.
pub(super) struct Flight<T> {
    outcome: Mutex<Option<T>>,
    done: Condvar,
}

impl<T: Clone> Flight<T> {
    /// Waits for the outcome, `patience` at most (None: the leader took too long).
    pub(super) fn wait(&self, patience: Duration) -> Option<T> {
        let deadline = Instant::now() + patience;
        let mut outcome = lock(&self.outcome);
        while outcome.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            outcome = self
                .done
                .wait_timeout(outcome, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        outcome.clone()
    }
}

/// What a request for a token not in the cache is to do.
pub(super) enum Turn<T> {
    /// Call identity, then [`Guard::land`] the outcome.
    Lead(Arc<Flight<T>>),
    /// Another request is calling for the same token: wait for its outcome.
    Follow(Arc<Flight<T>>),
    /// As many calls as allowed are under way: 503 now.
    Busy,
}

/// The calls under way, by key (a token's hash), and the strikes of each client address.
pub(super) struct Guard<K, T> {
    max: usize,
    flights: Mutex<Flights<K, T>>,
    strikes: Mutex<HashMap<IpAddr, Strikes>>,
}

/// The calls under way.
struct Flights<K, T> {
    /// Requests calling or waiting, at most `max`.
    waiting: usize,
    by_key: HashMap<K, Arc<Flight<T>>>,
}

#[derive(Debug, Clone, Copy)]
struct Strikes {
    count: u32,
    since: Instant,
    blocked_until: Option<Instant>,
}

impl<K: std::hash::Hash + Eq + Clone, T: Clone> Guard<K, T> {
    /// A guard letting `max` requests (at least one) call identity or wait for it at once.
    pub(super) fn new(max: usize) -> Guard<K, T> {
        Guard {
            max: max.max(1),
            flights: Mutex::new(Flights {
                waiting: 0,
                by_key: HashMap::new(),
            }),
            strikes: Mutex::new(HashMap::new()),
        }
    }

    /// The turn of a request for `key`; a Lead or a Follow is counted until [`Guard::leave`].
    pub(super) fn turn(&self, key: &K) -> Turn<T> {
        let mut flights = lock(&self.flights);
        if flights.waiting >= self.max {
            return Turn::Busy;
        }
        flights.waiting += 1;
        if let Some(flight) = flights.by_key.get(key) {
            return Turn::Follow(flight.clone());
        }
        let flight = Arc::new(Flight {
            outcome: Mutex::new(None),
            done: Condvar::new(),
        });
        flights.by_key.insert(key.clone(), flight.clone());
        Turn::Lead(flight)
    }

    /// The leader's outcome for `key`: told to the followers, and the flight ended.
    pub(super) fn land(&self, key: &K, flight: &Flight<T>, outcome: T) {
        *lock(&flight.outcome) = Some(outcome);
        flight.done.notify_all();
        lock(&self.flights).by_key.remove(key);
    }

    /// A request that had a Lead or a Follow is done.
    pub(super) fn leave(&self) {
        let mut flights = lock(&self.flights);
        flights.waiting = flights.waiting.saturating_sub(1);
    }

    /// Whether `client` is turned away now, and for how long more.
    pub(super) fn blocked(&self, client: Option<IpAddr>) -> Option<Duration> {
        let client = client?;
        let strikes = lock(&self.strikes);
        let until = strikes.get(&client)?.blocked_until?;
        let left = until.saturating_duration_since(Instant::now());
        (!left.is_zero()).then_some(left)
    }

    /// `client` sent a token identity rejected.
    pub(super) fn strike(&self, client: Option<IpAddr>) {
        let Some(client) = client else {
            return;
        };
        let now = Instant::now();
        let mut all = lock(&self.strikes);
        if all.len() >= MAX_ADDRESSES && !all.contains_key(&client) {
            all.retain(|_, s| now.duration_since(s.since) < STRIKE_WINDOW);
            if all.len() >= MAX_ADDRESSES {
                let oldest = all.iter().min_by_key(|(_, s)| s.since).map(|(a, _)| *a);
                if let Some(oldest) = oldest {
                    all.remove(&oldest);
                }
            }
        }
        let s = all.entry(client).or_insert(Strikes {
            count: 0,
            since: now,
            blocked_until: None,
        });
        if now.duration_since(s.since) >= STRIKE_WINDOW {
            *s = Strikes {
                count: 0,
                since: now,
                blocked_until: s.blocked_until,
            };
        }
        s.count += 1;
        if s.count > MAX_STRIKES {
            s.blocked_until = Some(now + BLOCKED_FOR);
            log::warn!(
                "client {client}: {} rejected tokens in a minute; turned away for {} s",
                s.count,
                BLOCKED_FOR.as_secs()
            );
            *s = Strikes {
                count: 0,
                since: now,
                blocked_until: s.blocked_until,
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_at_once_are_bounded_and_one_key_makes_one_call() {
        let guard: Guard<u8, u32> = Guard::new(2);
        let Turn::Lead(flight) = guard.turn(&1) else {
            panic!("the first leads")
        };
        let Turn::Follow(same) = guard.turn(&1) else {
            panic!("the same key follows")
        };
        assert!(matches!(guard.turn(&2), Turn::Busy), "two at once at most");
        let waiter = std::thread::spawn(move || same.wait(Duration::from_secs(5)));
        guard.land(&1, &flight, 7);
        assert_eq!(waiter.join().unwrap(), Some(7));
        guard.leave();
        guard.leave();
        assert!(
            matches!(guard.turn(&1), Turn::Lead(_)),
            "landed: a new flight"
        );
    }

    #[test]
    fn an_address_that_keeps_sending_rejected_tokens_is_turned_away() {
        let guard: Guard<u8, u32> = Guard::new(2);
        let (bad, other) = (
            Some("10.0.0.1".parse().unwrap()),
            Some("10.0.0.2".parse().unwrap()),
        );
        for _ in 0..MAX_STRIKES {
            guard.strike(bad);
        }
        assert_eq!(guard.blocked(bad), None, "not yet");
        guard.strike(bad);
        assert!(guard.blocked(bad).is_some_and(|d| d <= BLOCKED_FOR));
        assert_eq!(guard.blocked(other), None);
        assert_eq!(
            guard.blocked(None),
            None,
            "an unknown address is never blocked"
        );
    }
}
