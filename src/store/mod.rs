//! SQLite: the one source of truth, and the only place that writes SQL.
//!
//! Each thread opens its own [`Store`] from the process's one [`Database`]. Writes run in
//! `BEGIN IMMEDIATE` transactions, so that a writer waits for the lock under `busy_timeout`
//! instead of failing when it upgrades a read lock. The files of this folder follow the
//! tables: `instances.rs`, `actions.rs` (the action request, with its idempotency key),
//! `history.rs` (reading actions and their steps), `jobs.rs` (the worker's claims and
//! leases), `progress.rs` (a plan's targets, and what a tick saves), `end.rs` (an action's
//! end), `idempotency.rs`; `commit.rs` is the group commit, with no SQL in it.
//!
//! Queries are functions of the connection (or transaction) they run in, so that a method of
//! [`Store`] composes several of them in one transaction.

/// The one spelling of "a live action" in SQL: queued or running. (The partial indexes of
/// `schema.sql` repeat it, as SQLite matches their condition to a query's by its text.)
macro_rules! live {
    () => {
        "state IN ('queued', 'running')"
    };
}

mod actions;
mod backup;
mod commit;
mod end;
mod files;
mod health;
mod history;
mod idempotency;
mod instances;
mod jobs;
mod migrate;
mod progress;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::{Connection, TransactionBehavior};

pub use actions::{ActionRequest, NewCluster, Requested};
pub use backup::{Copied, DatabaseLock, LIVE_AT_BACKUP};
pub use history::{ActionRecord, Step};
pub use idempotency::{Answer, KeyUse};
pub use instances::{Instance, NewInstance, Summary};
pub use progress::{Job, NewStep, TargetProgress, TargetState, Took};

use crate::clock::Clock;
use crate::model::{ActionKind, ActionState, Status};
use crate::sync::lock;
use commit::GroupCommit;

pub use migrate::SCHEMA_VERSION;
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// SQLite's page cache per connection, in KiB (written negative, as the pragma takes it).
const CACHE_KIB: i64 = -64;
/// The page cache of the connection leading a group commit, while it commits: a batch
/// touches many pages of several b-trees, each more than once, and its dirty pages must stay
/// in memory until the commit. Measured, it raised the write path by a fifth.
const BATCH_CACHE_KIB: i64 = -512;

/// A database failure. The service answers 503 for it: the database may come back.
#[derive(Debug, Clone)]
pub enum StoreError {
    /// SQLite failed a statement (shared, so that every request of a failed batch gets it).
    Sqlite(Arc<rusqlite::Error>),
    /// The database file could not be created.
    Create {
        path: PathBuf,
        source: Arc<std::io::Error>,
    },
    /// A file next to the database (its lock, a backup) could not be read or written.
    File {
        path: PathBuf,
        source: Arc<std::io::Error>,
    },
    /// Another process holds the database: a running `lambda-api serve`.
    InUse(PathBuf),
    /// A backup could not be made, or a file given to restore is not a usable backup.
    Backup(String),
    /// A file given to restore cannot be read as a database.
    Unreadable {
        path: PathBuf,
        source: Arc<rusqlite::Error>,
    },
    /// The file was written by a newer lambda-api; it is left untouched.
    NewerSchema { found: i64, known: i64 },
    /// A row breaks an invariant of the schema, e.g. an instance without servers.
    Corrupt(String),
    /// A queued action request lost its batch: the request leading it panicked.
    Abandoned,
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Sqlite(_) => write!(f, "database"),
            StoreError::Create { path, .. } => write!(f, "cannot create {}", path.display()),
            StoreError::File { path, .. } => write!(f, "{}", path.display()),
            StoreError::InUse(path) => write!(
                f,
                "{} is in use by a running lambda-api serve; stop it first",
                path.display()
            ),
            StoreError::Backup(why) => write!(f, "{why}"),
            StoreError::Unreadable { path, .. } => {
                write!(f, "{} cannot be read as a database", path.display())
            }
            StoreError::NewerSchema { found, known } => write!(
                f,
                "database schema version {found} is newer than this binary's {known}"
            ),
            StoreError::Corrupt(why) => write!(f, "database: {why}"),
            StoreError::Abandoned => write!(f, "a queued action request was abandoned"),
        }
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StoreError::Sqlite(e) | StoreError::Unreadable { source: e, .. } => Some(e.as_ref()),
            StoreError::Create { source, .. } | StoreError::File { source, .. } => {
                Some(source.as_ref())
            }
            _ => None,
        }
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> StoreError {
        StoreError::Sqlite(Arc::new(e))
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// How hard a commit waits for the disk (SQLite's `synchronous`, in WAL mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Synchronous {
    /// Every commit is on disk before it returns: a 202 survives a power cut.
    #[default]
    Full,
    /// Commits reach the disk at checkpoints: a 202 survives a crash of the process, but the
    /// last commits may be lost to a power cut or a kernel crash. Faster.
    Normal,
}

impl Synchronous {
    pub fn name(self) -> &'static str {
        match self {
            Synchronous::Full => "full",
            Synchronous::Normal => "normal",
        }
    }
}

/// The database of a process: where it is, how every connection to it is opened, and what
/// those connections share. Open it once and clone it; each clone shares the write lock and
/// the group commit.
#[derive(Clone)]
pub struct Database {
    path: PathBuf,
    synchronous: Synchronous,
    shared: Arc<Shared>,
    clock: Arc<dyn Clock>,
}

/// What the connections of one [`Database`] share.
#[derive(Default)]
struct Shared {
    /// Taken by every write, before `BEGIN IMMEDIATE`. Writers queue here and wake as soon
    /// as it is free, where SQLite's busy handler would make them sleep and poll (1, 2, 5
    /// ... 100 ms): that showed as a p99 near a second under 32 writers. Another process
    /// still meets `busy_timeout`.
    writer: Mutex<()>,
    /// Action requests waiting to be committed together.
    requests: GroupCommit<ActionRequest, Result<Requested>>,
    /// Whether the last write found the disk writable.
    health: health::WriteHealth,
}

impl fmt::Debug for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Database")
            .field("path", &self.path)
            .field("synchronous", &self.synchronous)
            .finish_non_exhaustive()
    }
}

impl Database {
    pub fn new(path: impl Into<PathBuf>, synchronous: Synchronous) -> Database {
        Database {
            path: path.into(),
            synchronous,
            shared: Arc::default(),
            clock: crate::clock::system(),
        }
    }

    /// Where the database file is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens a connection, creating the file (mode 0600) and migrating it if needed.
    pub fn open(&self) -> Result<Store> {
        self.open_with(self.synchronous)
    }

    /// Opens a connection for a worker. What a worker writes (claims, progress, an action's
    /// end) can be found again by reading the VMs, so its commits do not wait for the disk
    /// (`synchronous = normal`): a power cut may cost a re-read, never a promise. They stay
    /// atomic and in order, and the next commit that does wait for the disk (an accepted
    /// action's) takes them along. Their fsyncs would otherwise compete with the 202s'.
    pub fn open_for_worker(&self) -> Result<Store> {
        self.open_with(Synchronous::Normal)
    }

    fn open_with(&self, synchronous: Synchronous) -> Result<Store> {
        files::create_private(&self.path)?;
        let conn = Connection::open(&self.path)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        // Before anything that writes (even the journal mode is kept in the file): a
        // database from a newer binary is left exactly as it is.
        let version = migrate::checked_version(&conn)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", synchronous.name())?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        // Erased tokens are overwritten on disk, not merely unlinked from the b-tree.
        conn.pragma_update(None, "secure_delete", "ON")?;
        // Each thread has its own connection, and SQLite's default cache is 2 MiB per
        // connection: with a dozen threads that was most of the service's memory. A big cache
        // buys little here: status polls hit random rows, and any commit by another
        // connection empties the cache of every other one. The file's pages stay in the OS
        // page cache, a pread away; measured, 2 MiB, 128 KiB and 64 KiB served the status
        // poll equally fast.
        conn.pragma_update(None, "cache_size", CACHE_KIB)?;
        let mut store = Store {
            conn,
            shared: self.shared.clone(),
            clock: self.clock.clone(),
        };
        if version != SCHEMA_VERSION {
            store.migrate()?;
        }
        Ok(store)
    }

    /// An in-memory database on `clock`, for unit tests: one connection, nothing shared.
    #[cfg(test)]
    pub(crate) fn in_memory(clock: Arc<dyn Clock>) -> Store {
        let conn = Connection::open_in_memory().unwrap();
        conn.pragma_update(None, "foreign_keys", "ON").unwrap();
        let mut store = Store {
            conn,
            shared: Arc::default(),
            clock,
        };
        store.migrate().unwrap();
        store
    }
}

/// One connection to the database.
pub struct Store {
    conn: Connection,
    shared: Arc<Shared>,
    clock: Arc<dyn Clock>,
}

/// A write transaction and the write lock of its database.
struct Writing<'c> {
    // Dropped first: an uncommitted transaction rolls back before the lock is released.
    tx: rusqlite::Transaction<'c>,
    _lock: MutexGuard<'c, ()>,
    health: &'c health::WriteHealth,
}

impl<'c> std::ops::Deref for Writing<'c> {
    type Target = rusqlite::Transaction<'c>;
    fn deref(&self) -> &Self::Target {
        &self.tx
    }
}

impl Writing<'_> {
    fn commit(self) -> Result<()> {
        let Writing { tx, _lock, health } = self;
        let committed = tx.commit();
        health.saw(&committed);
        Ok(committed?)
    }
}

impl Store {
    /// Milliseconds since the epoch, by this store's clock.
    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    fn begin_write(&mut self) -> Result<Writing<'_>> {
        let lock = lock(&self.shared.writer);
        let health = &self.shared.health;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate);
        if let Err(e) = &tx {
            health.failed(e);
        }
        Ok(Writing {
            tx: tx?,
            _lock: lock,
            health,
        })
    }

    /// Answers whether the database is reachable and readable.
    pub fn ping(&self) -> Result<()> {
        self.conn.query_row("SELECT 1", [], |_| Ok(()))?;
        Ok(())
    }

    /// Checkpoints the whole WAL into the database file and truncates the WAL to nothing, so
    /// that erased tokens do not linger in old WAL frames. Returns false when readers kept it
    /// from completing (try again later).
    pub fn truncate_wal(&mut self) -> Result<bool> {
        let busy: i64 = self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))?;
        Ok(busy == 0)
    }
}

fn millis(d: Duration) -> i64 {
    d.as_millis() as i64
}

fn status_of(name: String) -> rusqlite::Result<Status> {
    Status::parse(&name).ok_or_else(|| bad_value(format!("unknown status {name:?}")))
}

fn kind_of(name: String) -> rusqlite::Result<ActionKind> {
    ActionKind::parse(&name).ok_or_else(|| bad_value(format!("unknown action {name:?}")))
}

fn state_of(name: String) -> rusqlite::Result<ActionState> {
    ActionState::parse(&name).ok_or_else(|| bad_value(format!("unknown state {name:?}")))
}

fn bad_value(msg: String) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, msg.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    /// The build flags in .cargo/config.toml reached SQLite: without them every connection
    /// shares one page cache behind a global mutex, and holds more memory.
    #[test]
    fn sqlite_is_built_with_the_flags_of_cargo_config() {
        let store = Database::in_memory(ManualClock::at(0));
        let options: Vec<String> = store
            .conn
            .prepare("PRAGMA compile_options")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert!(
            !options.iter().any(|o| o == "ENABLE_MEMORY_MANAGEMENT"),
            "{options:?}"
        );
        for wanted in [
            "DEFAULT_MEMSTATUS=0",
            "DEFAULT_LOOKASIDE=1200,10",
            "DEFAULT_PCACHE_INITSZ=0",
        ] {
            assert!(options.iter().any(|o| o == wanted), "{wanted}: {options:?}");
        }
    }
}
