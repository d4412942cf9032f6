//! Housekeeping: what the service does now and then, on a thread of its own, so that no
//! worker and no handler spends its turn on it.
//!
//! - Erased tokens may still sit in old frames of SQLite's write-ahead log: once actions have
//!   ended, the log is checkpointed and truncated as soon as ends quiet down, and at least
//!   every few seconds under a steady stream of them.
//! - Idempotency keys older than their lifetime are deleted, a batch at a time.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{select, Receiver};
use log::{debug, info, warn};

use crate::error::Error;
use crate::idempotency;
use crate::report::Report;
use crate::shutdown::Shutdown;
use crate::store::{Database, Store};

/// How long after the last end the log is truncated: ends come in bursts.
const QUIET: Duration = Duration::from_millis(200);
/// Under a steady stream of ends, the log is still truncated this often.
const TRUNCATE_EVERY: Duration = Duration::from_secs(5);

/// Starts the housekeeping thread, with its own connection. Every message on `ended` says an
/// action ended (its token erased); it stops at shutdown.
pub fn start(
    database: &Database,
    ended: Receiver<()>,
    shutdown: Arc<Shutdown>,
) -> Result<JoinHandle<()>, Error> {
    let store = database.open_for_worker()?;
    std::thread::Builder::new()
        .name("housekeeping".into())
        .spawn(move || run(store, &ended, &shutdown))
        .map_err(|source| Error::Spawn {
            thread: "housekeeping".into(),
            source,
        })
}

fn run(mut store: Store, ended: &Receiver<()>, shutdown: &Shutdown) {
    let mut last_end: Option<Instant> = None;
    let mut last_truncate = Instant::now();
    let mut last_purge = Instant::now();
    loop {
        let wait = match last_end {
            Some(at) => QUIET.saturating_sub(at.elapsed()),
            None => idempotency::PURGE_EVERY.saturating_sub(last_purge.elapsed()),
        };
        select! {
            recv(ended) -> msg => match msg {
                Ok(()) => {
                    last_end = Some(Instant::now());
                    if last_truncate.elapsed() < TRUNCATE_EVERY {
                        continue;
                    }
                }
                Err(_) => break,
            },
            recv(shutdown.receiver()) -> _ => break,
            default(wait) => {}
        }
        if last_end.is_some() {
            last_truncate = Instant::now();
            // Tried again a moment later when it does not complete.
            last_end = match store.truncate_wal() {
                Ok(true) => None,
                Ok(false) => {
                    debug!("WAL truncation blocked by readers; will try again");
                    Some(Instant::now())
                }
                Err(e) => {
                    warn!("truncating the WAL: {}", Report(&e));
                    Some(Instant::now())
                }
            };
        }
        if last_purge.elapsed() >= idempotency::PURGE_EVERY {
            last_purge = Instant::now();
            match idempotency::purge(&mut store) {
                Ok(0) => {}
                Ok(n) => info!("purged {n} expired idempotency key(s)"),
                Err(e) => warn!("purging idempotency keys: {}", Report(&e)),
            }
        }
    }
}
