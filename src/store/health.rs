//! Whether the database can be written: a full or read-only disk, as the last write found it.
//!
//! Every write of a [`Database`](super::Database) reports here how it ended. While writes
//! fail for a reason of the disk, new actions are refused with 503 (nothing is accepted that
//! was not committed), `/healthz` says why, and reads go on. The first write that succeeds
//! again, a request's or the health check's own probe, ends it: nothing needs a restart.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use super::{Result, Store, StoreError, SCHEMA_VERSION};
use crate::sync::lock;

/// Why the disk refuses writes, in words for an operator or a client; None for a failure that
/// says nothing about the disk (a constraint, a busy lock).
pub fn disk_trouble(e: &rusqlite::Error) -> Option<&'static str> {
    use rusqlite::ErrorCode;
    match e.sqlite_error_code()? {
        ErrorCode::DiskFull => Some("the disk is full"),
        ErrorCode::ReadOnly => Some("the database is read-only"),
        ErrorCode::SystemIoFailure => Some("the disk cannot be written (I/O error)"),
        ErrorCode::CannotOpen => Some("the database file cannot be opened"),
        _ => None,
    }
}

impl StoreError {
    /// Why the disk refuses writes, if that is what this error is.
    pub fn disk_trouble(&self) -> Option<&'static str> {
        match self {
            StoreError::Sqlite(e) => disk_trouble(e),
            _ => None,
        }
    }
}

#[derive(Debug, Default)]
pub(super) struct WriteHealth {
    /// Whether `trouble` is set: every commit reports here, and a healthy one only reads this.
    troubled: AtomicBool,
    trouble: Mutex<Option<Trouble>>,
}

#[derive(Debug, Clone)]
struct Trouble {
    why: &'static str,
    since: std::time::SystemTime,
}

impl WriteHealth {
    /// Records how a write ended.
    pub(super) fn saw<T>(&self, outcome: &std::result::Result<T, rusqlite::Error>) {
        match outcome {
            Ok(_) => self.succeeded(),
            Err(e) => self.failed(e),
        }
    }

    pub(super) fn failed(&self, e: &rusqlite::Error) {
        let Some(why) = disk_trouble(e) else {
            return;
        };
        let mut trouble = lock(&self.trouble);
        if trouble.is_none() {
            log::error!(
                "database writes fail: {why} ({e}); new actions are refused with 503 until a \
                 write succeeds again"
            );
            *trouble = Some(Trouble {
                why,
                since: std::time::SystemTime::now(),
            });
            self.troubled.store(true, Ordering::Release);
        }
    }

    pub(super) fn succeeded(&self) {
        if !self.troubled.load(Ordering::Acquire) {
            return;
        }
        let mut trouble = lock(&self.trouble);
        self.troubled.store(false, Ordering::Release);
        if let Some(t) = trouble.take() {
            let lasted = t.since.elapsed().unwrap_or_default().as_secs();
            log::warn!(
                "database writes succeed again, after {lasted} s ({})",
                t.why
            );
        }
    }

    fn current(&self) -> Option<String> {
        if !self.troubled.load(Ordering::Acquire) {
            return None;
        }
        lock(&self.trouble).as_ref().map(|t| {
            format!(
                "{} (since {})",
                t.why,
                humantime::format_rfc3339_seconds(t.since)
            )
        })
    }
}

impl Store {
    /// Why writes fail, if the last one failed for a reason of the disk.
    pub fn write_trouble(&self) -> Option<String> {
        self.shared.health.current()
    }

    /// Tries a small write (the schema version, rewritten as it is), so that the end of a
    /// disk's trouble is seen even when nobody sends an action.
    pub fn probe_write(&mut self) -> Result<()> {
        let tx = self.begin_write()?;
        let written = tx.pragma_update(None, "user_version", SCHEMA_VERSION);
        if let Err(e) = &written {
            tx.health.failed(e);
        }
        written?;
        tx.commit()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Database, Synchronous};

    /// A write refused by the file (here a read-only connection, as a read-only mount would)
    /// is recorded with its reason, and the first write that succeeds clears it.
    #[test]
    fn a_refused_write_is_recorded_until_one_succeeds() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::new(dir.path().join("x.db"), Synchronous::Normal);
        let mut store = db.open().unwrap();
        assert_eq!(store.write_trouble(), None);
        let read_only = rusqlite::Connection::open_with_flags(
            dir.path().join("x.db"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .unwrap();
        let healthy = std::mem::replace(&mut store.conn, read_only);
        let e = store.probe_write().unwrap_err();
        assert_eq!(e.disk_trouble(), Some("the database is read-only"), "{e}");
        let trouble = store.write_trouble().unwrap();
        assert!(
            trouble.starts_with("the database is read-only (since "),
            "{trouble}"
        );
        // Another connection of the same database sees it too: /healthz asks any.
        assert!(db.open().unwrap().write_trouble().is_some());
        store.conn = healthy;
        store.probe_write().unwrap();
        assert_eq!(store.write_trouble(), None);
    }

    #[test]
    fn only_the_disk_is_trouble() {
        let busy = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
            None,
        );
        assert_eq!(disk_trouble(&busy), None);
        let full = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
            None,
        );
        assert_eq!(disk_trouble(&full), Some("the disk is full"));
    }
}
