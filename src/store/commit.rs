//! Group commit: requests that each need a small write join a queue, and one of them, the
//! leader, commits the whole queue in one transaction (one fsync for all). No SQL here: the
//! leader is handed a function that writes a batch.
//!
//! A request that finds no leader leads: it takes the queue, itself included, commits it, and
//! tells every other request its outcome on that request's own channel. Otherwise it waits to
//! be told its outcome, or that it leads the next batch, made of everything that queued while
//! the last one committed. Each request is woken as soon as its batch is done, never by
//! polling a lock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crossbeam_channel::{bounded, Sender};

use crate::sync::lock;

/// A queue of items of type `T`, each answered with an outcome of type `R`.
pub(super) struct GroupCommit<T, R> {
    queue: Mutex<Queue<T, R>>,
    tickets: AtomicU64,
}

impl<T, R> Default for GroupCommit<T, R> {
    fn default() -> Self {
        GroupCommit {
            queue: Mutex::new(Queue {
                pending: Vec::new(),
                leading: false,
            }),
            tickets: AtomicU64::new(0),
        }
    }
}

struct Queue<T, R> {
    pending: Vec<Pending<T, R>>,
    /// A leader is committing, or has been named and will take `pending` next.
    leading: bool,
}

/// An item on its way to the database, and where its turn is told.
struct Pending<T, R> {
    item: T,
    /// Tells this request apart in the batch its leader takes.
    ticket: u64,
    turn: Sender<Turn<R>>,
}

/// A queued request's ticket and where to tell it its turn.
type Waiter<R> = (u64, Sender<Turn<R>>);

/// What a queued request is told.
enum Turn<R> {
    /// Its batch is committed (or failed): here is its outcome.
    Done(R),
    /// It leads the next batch.
    Lead,
}

/// Held by a leader while it commits. However the leader leaves (even by a panic), the next
/// request in the queue is named leader, or the queue is marked leaderless.
struct Leading<'q, T, R>(&'q Mutex<Queue<T, R>>);

impl<T, R> Drop for Leading<'_, T, R> {
    fn drop(&mut self) {
        let mut queue = lock(self.0);
        loop {
            let Some(next) = queue.pending.first() else {
                queue.leading = false;
                return;
            };
            if next.turn.send(Turn::Lead).is_ok() {
                return;
            }
            // Its requester is gone (it cannot be, as it waits; but never wedge the queue).
            queue.pending.remove(0);
        }
    }
}

impl<T, R> GroupCommit<T, R> {
    /// Queues `item` and returns its outcome once its batch is committed. Whichever request
    /// leads calls `commit` with the whole batch, in queue order; it must return one outcome
    /// per item, in the same order. None: the batch was lost, because its leader panicked.
    pub(super) fn submit(&self, item: T, commit: impl FnOnce(&[T]) -> Vec<R>) -> Option<R> {
        let ticket = self.tickets.fetch_add(1, Ordering::Relaxed);
        let (turn, mine) = bounded(1);
        let leads = {
            let mut queue = lock(&self.queue);
            queue.pending.push(Pending { item, ticket, turn });
            !std::mem::replace(&mut queue.leading, true)
        };
        if !leads {
            // If the leader fails without an answer (a panic), the channel closes.
            match mine.recv() {
                Ok(Turn::Done(outcome)) => return Some(outcome),
                Ok(Turn::Lead) => {}
                Err(_) => return None,
            }
        }
        let leading = Leading(&self.queue);
        let batch = std::mem::take(&mut lock(&self.queue).pending);
        let (items, waiters): (Vec<T>, Vec<Waiter<R>>) = batch
            .into_iter()
            .map(|p| (p.item, (p.ticket, p.turn)))
            .unzip();
        let outcomes = commit(&items);
        let mut own = None;
        for ((t, turn), outcome) in waiters.into_iter().zip(outcomes) {
            if t == ticket {
                own = Some(outcome);
            } else {
                let _ = turn.send(Turn::Done(outcome));
            }
        }
        drop(leading);
        own
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ActionKind;
    use crate::store::actions::tests::{request, stopped};
    use crate::store::Requested;
    use std::sync::Arc;
    use std::time::Duration;

    /// Eight threads submitting 200 items each, back to back: leadership passes from batch to
    /// batch, every item gets its own outcome, and no request is left waiting (a lost
    /// hand-off would hang, hence the deadline).
    #[test]
    fn every_item_gets_its_own_outcome() {
        let group = Arc::new(GroupCommit::<u32, u32>::default());
        let batches = Arc::new(Mutex::new(Vec::new()));
        let (done, finished) = crossbeam_channel::unbounded();
        for t in 0..8u32 {
            let (group, batches, done) = (group.clone(), batches.clone(), done.clone());
            std::thread::spawn(move || {
                for i in 0..200 {
                    let item = t * 1000 + i;
                    let outcome = group.submit(item, |batch| {
                        lock(&batches).push(batch.len());
                        batch.iter().map(|x| x * 2).collect()
                    });
                    assert_eq!(outcome, Some(item * 2));
                }
                let _ = done.send(());
            });
        }
        for _ in 0..8 {
            finished
                .recv_timeout(Duration::from_secs(60))
                .expect("a request was left waiting");
        }
        assert_eq!(lock(&batches).iter().sum::<usize>(), 1600);
    }

    /// A leader that panics loses its own batch (its requests learn it), and hands the lead
    /// on: the next request is committed.
    #[test]
    fn a_panicking_leader_hands_the_lead_on() {
        let group = GroupCommit::<u32, u32>::default();
        let lost = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            group.submit(1, |_| panic!("the commit failed"))
        }));
        assert!(lost.is_err());
        assert_eq!(group.submit(2, |b| b.to_vec()), Some(2));
    }

    /// Eight threads making 40 actions each, back to back, through the real database: every
    /// one is committed and none is left waiting.
    #[test]
    fn group_commit_hands_the_lead_on() {
        let dir = tempfile::tempdir().unwrap();
        let db =
            crate::store::Database::new(dir.path().join("g.db"), crate::store::Synchronous::Normal);
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
