//! `lambda-api backup FILE` and `lambda-api restore FILE`: a consistent copy of the live
//! database that holds no token, and putting such a copy back.
//!
//! A backup reads the database with SQLite's online backup in one step (one read
//! transaction: in WAL mode the service goes on writing meanwhile) into memory, and there
//! ends every action that was live: a backup keeps no token, and an action without its token
//! can never run, so it is failed with a message that says so, and its instance is FAILED.
//! Only then is the copy written out (`VACUUM INTO`), so that no token reaches the disk on
//! its way. It costs memory of the database's size while it runs.

use std::fs::File;
use std::path::{Path, PathBuf};

use rusqlite::backup::{Backup, StepResult};
use rusqlite::{params, Connection, OpenFlags};

use super::end::{end_actions, Which};
use super::files::{io_error, parent, private_file, suffixed, sync_dir, sync_file};
use super::migrate::{schema_of, shape};
use super::{Database, Result, StoreError, SCHEMA_VERSION};
use crate::model::ActionState;

/// What an action that was live when the backup was taken says after a restore.
pub const LIVE_AT_BACKUP: &str = "the action was in progress when the backup this database \
     was restored from was taken; backups keep no token, so it was not carried on: send it again";

/// What a backup or a restore did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copied {
    pub instances: u64,
    pub actions: u64,
    /// Actions that were live in the copy, and are failed in it.
    pub ended: u64,
    pub bytes: u64,
}

/// The process's hold on a database: taken by `serve` for its whole life and by `restore`,
/// so that a restore never replaces the file under a running service, and two services never
/// share one file. An advisory lock on `<database>.lock`; the kernel lets it go when the
/// process ends, `kill -9` included.
#[derive(Debug)]
pub struct DatabaseLock {
    file: File,
}

impl Database {
    fn lock_path(&self) -> PathBuf {
        suffixed(&self.path, ".lock")
    }

    /// Takes the hold on the database, or says who has it.
    pub fn lock(&self) -> Result<DatabaseLock> {
        let path = self.lock_path();
        let file = private_file(&path, false).map_err(|e| io_error(&path, e))?;
        match file.try_lock() {
            Ok(()) => Ok(DatabaseLock { file }),
            Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::InUse(self.path.clone())),
            Err(std::fs::TryLockError::Error(e)) => Err(io_error(&path, e)),
        }
    }

    /// Writes a consistent, token-free copy of the database to `dest`, which must not exist.
    /// The service may be running.
    pub fn backup(&self, dest: &Path) -> Result<Copied> {
        if dest.exists() {
            return Err(StoreError::Backup(format!(
                "{} exists; name a new file",
                dest.display()
            )));
        }
        if !self.path.exists() {
            return Err(StoreError::Backup(format!(
                "there is no database at {}",
                self.path.display()
            )));
        }
        let source = self.open()?;
        let mut copy = Connection::open_in_memory()?;
        {
            let backup = Backup::new(&source.conn, &mut copy)?;
            // All pages in one step: one read transaction, so a consistent snapshot that a
            // busy writer cannot make restart. Busy is only possible while another process
            // holds an exclusive lock (a checkpoint that truncates, say).
            let mut tries = 0;
            loop {
                match backup.step(-1)? {
                    StepResult::Done => break,
                    StepResult::More => {}
                    StepResult::Busy | StepResult::Locked if tries < 100 => {
                        tries += 1;
                        std::thread::sleep(std::time::Duration::from_millis(50));
                    }
                    _ => return Err(StoreError::Backup("the database stayed locked".into())),
                }
            }
        }
        let ended = end_live_actions(&copy, source.now_ms(), LIVE_AT_BACKUP)?;
        check(&copy)?;
        let tmp = suffixed(dest, ".partial");
        let _ = std::fs::remove_file(&tmp);
        private_file(&tmp, true).map_err(|e| io_error(&tmp, e))?;
        let written = (|| -> Result<()> {
            let name = tmp.to_str().ok_or_else(|| {
                StoreError::Backup(format!("{} is not valid UTF-8", tmp.display()))
            })?;
            copy.execute("VACUUM INTO ?1", params![name])?;
            sync_file(&tmp)?;
            std::fs::rename(&tmp, dest).map_err(|e| io_error(dest, e))?;
            sync_dir(dest)
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written?;
        let mut copied = counts(&copy)?;
        copied.ended = ended;
        copied.bytes = std::fs::metadata(dest)
            .map_err(|e| io_error(dest, e))?
            .len();
        Ok(copied)
    }

    /// Replaces the database with `backup`, once the file has passed every check. The
    /// service must be stopped (its lock says so). The database it replaces is kept beside it
    /// as `<database>.replaced-<seconds since the epoch>`; that name is returned.
    pub fn restore(&self, backup: &Path) -> Result<(Copied, Option<PathBuf>)> {
        let locked = self.lock()?;
        let file = Connection::open_with_flags(
            backup,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| StoreError::Unreadable {
            path: backup.to_path_buf(),
            source: std::sync::Arc::new(e),
        })?;
        check(&file).map_err(|e| {
            StoreError::Backup(format!("{} is not a usable backup: {e}", backup.display()))
        })?;
        let copied = counts(&file)?;
        drop(file);

        // The restored file, its lock and its folder's files belong to whoever owned the
        // database it replaces (or its folder): a restore run by root must not lock the
        // service's user out.
        let owner = std::fs::metadata(&self.path)
            .or_else(|_| std::fs::metadata(parent(&self.path)))
            .map_err(|e| io_error(&self.path, e))?;
        give(&locked.file, &self.lock_path(), &owner)?;
        let incoming = suffixed(&self.path, ".restoring");
        let _ = std::fs::remove_file(&incoming);
        if let Err(e) = copy_in(backup, &incoming, &owner) {
            let _ = std::fs::remove_file(&incoming);
            return Err(e);
        }

        let replaced = if self.path.exists() {
            let aside = set_aside(&self.path)?;
            for log in ["-wal", "-shm"] {
                let _ = std::fs::remove_file(suffixed(&self.path, log));
            }
            Some(aside)
        } else {
            None
        };
        std::fs::rename(&incoming, &self.path).map_err(|e| io_error(&self.path, e))?;
        sync_dir(&self.path)?;
        Ok((copied, replaced))
    }
}

/// Gives `file` (at `path`) to `owner`'s user and group, through its open descriptor.
fn give(file: &File, path: &Path, owner: &std::fs::Metadata) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    std::os::unix::fs::fchown(file, Some(owner.uid()), Some(owner.gid()))
        .map_err(|e| io_error(path, e))
}

/// Copies `backup` into a new file at `incoming`, private and given to `owner`: created
/// exclusively (no file or link already there is followed), and changed only through its
/// open descriptor, so that nothing swapped in at that path meanwhile is touched.
fn copy_in(backup: &Path, incoming: &Path, owner: &std::fs::Metadata) -> Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut to = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc_o_nofollow())
        .open(incoming)
        .map_err(|e| io_error(incoming, e))?;
    let mut from = File::open(backup).map_err(|e| io_error(backup, e))?;
    std::io::copy(&mut from, &mut to).map_err(|e| io_error(incoming, e))?;
    to.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(|e| io_error(incoming, e))?;
    give(&to, incoming, owner)?;
    to.sync_all().map_err(|e| io_error(incoming, e))
}

/// `O_NOFOLLOW`, which std does not name: 0o400000 on Linux.
fn libc_o_nofollow() -> i32 {
    0o400000
}

/// Moves the database at `path` aside, as `<path>.replaced-<seconds since the epoch>`, once
/// its write-ahead log is folded into it (so that the copy kept is whole) and every live
/// action in it is ended (so that it keeps no token); returns the new name.
fn set_aside(path: &Path) -> Result<PathBuf> {
    {
        let old = Connection::open(path)?;
        old.pragma_update(None, "secure_delete", "ON")?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        end_live_actions(&old, now, REPLACED)?;
        old.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let aside = suffixed(path, &format!(".replaced-{now}"));
    std::fs::rename(path, &aside).map_err(|e| io_error(&aside, e))?;
    Ok(aside)
}

/// What an action that was live in a database a restore replaced says there.
const REPLACED: &str = "the database was replaced by a restore while the action was in \
     progress; the copy kept keeps no token";

/// Fails every live action of a copy, erasing what it held for the run, and the instances
/// those actions were acting on, saying `why`. Returns how many it ended.
fn end_live_actions(copy: &Connection, now: i64, why: &str) -> Result<u64> {
    copy.pragma_update(None, "foreign_keys", "ON")?;
    let tx = copy.unchecked_transaction()?;
    let ended = end_actions(&tx, Which::AllLive, ActionState::Failed, Some(why), now)?;
    for (_, instance) in &ended {
        tx.execute(
            "UPDATE lambda_instances SET status = 'FAILED', failure_message = ?2 WHERE id = ?1",
            params![instance, why],
        )?;
    }
    tx.commit()?;
    Ok(ended.len() as u64)
}

/// What a restore asks of a file: SQLite finds it whole, its rows keep their references, it
/// is a lambda-api database this binary can open, and it holds no token.
fn check(db: &Connection) -> Result<()> {
    let fail = |why: String| Err(StoreError::Backup(why));
    let integrity: String = db.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
    if integrity != "ok" {
        return fail(format!("integrity check: {integrity}"));
    }
    let version: i64 = db.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if !(1..=SCHEMA_VERSION).contains(&version) {
        return fail(format!(
            "schema version {version}; this binary knows 1 to {SCHEMA_VERSION}"
        ));
    }
    let tables: i64 = db.query_row(
        "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table'
           AND name IN ('lambda_instances', 'instance_servers', 'actions', 'action_steps')",
        [],
        |r| r.get(0),
    )?;
    if tables != 4 {
        return fail("not a lambda-api database (its tables are missing)".into());
    }
    // Exactly the objects of its version's schema: no trigger, view, table or index of its
    // own (a trigger would run with the service's rights on every write).
    let fresh = Connection::open_in_memory()?;
    fresh.execute_batch(schema_of(version).unwrap_or_default())?;
    let (want, got) = (shape(&fresh)?, shape(db)?);
    if let Some(odd) = got
        .iter()
        .find(|(name, columns)| want.get(*name) != Some(*columns))
        .map(|(name, _)| name.clone())
        .or_else(|| want.keys().find(|k| !got.contains_key(*k)).cloned())
    {
        return fail(format!(
            "its schema is not version {version}'s: {odd} differs"
        ));
    }
    let dangling: i64 = db.query_row("SELECT COUNT(*) FROM pragma_foreign_key_check", [], |r| {
        r.get(0)
    })?;
    if dangling != 0 {
        return fail(format!(
            "{dangling} row(s) refer to rows that are not there"
        ));
    }
    let tokens: i64 = db.query_row(
        "SELECT COUNT(*) FROM actions WHERE token IS NOT NULL",
        [],
        |r| r.get(0),
    )?;
    if tokens != 0 {
        return fail(format!(
            "{tokens} action(s) hold a token: a backup never does (make one with `lambda-api backup`)"
        ));
    }
    Ok(())
}

fn counts(db: &Connection) -> Result<Copied> {
    let count = |table: &str| -> Result<u64> {
        let n: i64 = db.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))?;
        Ok(n as u64)
    };
    Ok(Copied {
        instances: count("lambda_instances")?,
        actions: count("actions")?,
        ended: 0,
        bytes: 0,
    })
}
