//! SQLite: the one source of truth. Every SQL statement of the service is in this file.
//!
//! Each thread opens its own [`Store`] with [`open`]. Writes run in `BEGIN IMMEDIATE`
//! transactions, so that a writer waits for the lock under `busy_timeout` instead of failing
//! when it upgrades a read lock.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use crate::model::{now_ms, verdict, ActionKind, ActionState, Status, Verdict};

const SCHEMA: &str = include_str!("../schema.sql");
const SCHEMA_VERSION: i64 = 2;
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// SQLite's page cache per connection, in KiB (written negative, as the pragma takes it).
const CACHE_KIB: i64 = -64;

/// A database failure. The service answers 503 for it (the database may come back); the
/// message is for the log.
#[derive(Debug, Clone)]
pub struct StoreError(pub String);

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "database: {}", self.0)
    }
}

impl std::error::Error for StoreError {}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> StoreError {
        StoreError(e.to_string())
    }
}

impl From<std::io::Error> for StoreError {
    fn from(e: std::io::Error) -> StoreError {
        StoreError(e.to_string())
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// A lambda instance as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Instance {
    pub id: String,
    pub name: String,
    pub owner: String,
    pub status: Status,
    pub failure_message: Option<String>,
    pub master: String,
    pub slaves: Vec<String>,
    pub created_at: i64,
}

/// One step a run took on one VM.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub vm: String,
    pub op: String,
    pub result: String,
    pub at: i64,
}

/// An action as the read API shows it (never with its token).
#[derive(Debug, Clone, PartialEq)]
pub struct ActionRecord {
    pub id: String,
    pub instance_id: String,
    pub action: ActionKind,
    pub state: ActionState,
    pub attempts: i64,
    pub error: Option<String>,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub steps: Vec<Step>,
}

/// An instance as the list shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub id: String,
    pub name: String,
    pub status: Status,
    pub failure_message: Option<String>,
}

/// A stored answer to an action call made with an `Idempotency-Key`.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredAnswer {
    pub fingerprint: String,
    pub status: u16,
    pub body: String,
    pub location: Option<String>,
}

/// What the worker needs to run an action it has claimed.
#[derive(Debug, Clone)]
pub struct Job {
    pub action_id: String,
    pub instance_id: String,
    pub action: ActionKind,
    pub token: String,
    pub compute_url: String,
    pub master: String,
    pub slaves: Vec<String>,
    pub claim: String,
    pub attempt: i64,
    pub created_at: i64,
}

/// What an accepted (or refused) action request came to.
#[derive(Debug, Clone, PartialEq)]
pub enum Requested {
    /// No such instance for this owner.
    NotFound,
    /// A new action was committed.
    Created(String),
    /// The action already in flight.
    Merged(String),
    /// Refused by the state table.
    Conflict(String),
}

/// One connection to the database.
pub struct Store {
    conn: Connection,
    /// What every connection of this process to this database shares: the write lock, and
    /// the action requests waiting to be committed together.
    shared: &'static Shared,
}

/// Per database file, for the whole process.
struct Shared {
    /// Taken by every write, before `BEGIN IMMEDIATE`.
    writer: Mutex<()>,
    /// New actions waiting to be committed together (group commit).
    queue: Mutex<Queue>,
}

/// The group commit's queue: requests wait here while one of them, the leader, commits.
#[derive(Default)]
struct Queue {
    pending: Vec<Pending>,
    /// A leader is committing, or has been named and will take `pending` next.
    leading: bool,
}

/// A new action on its way to the database, and where its turn is told.
struct Pending {
    instance_id: String,
    owner: String,
    kind: ActionKind,
    token: String,
    compute_url: String,
    /// Tells this request apart in the batch its leader takes.
    ticket: u64,
    turn: crossbeam_channel::Sender<Turn>,
}

/// What a queued request is told.
enum Turn {
    /// Its batch is committed (or failed): here is its outcome.
    Done(Result<Requested>),
    /// It leads the next batch: it takes the queue, itself included, and commits it.
    Lead,
}

/// Held by a leader while it commits. However the leader leaves (even by a panic), the
/// next request in the queue is named leader, or the queue is marked leaderless.
struct Leading<'s>(&'s Mutex<Queue>);

impl Drop for Leading<'_> {
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

/// A write transaction and the process's write lock for its database. Writers queue on the
/// lock and wake as soon as it is free, where SQLite's busy handler would make them sleep
/// and poll (1, 2, 5 ... 100 ms): that showed as a p99 near a second under 32 writers.
/// Another process still meets `busy_timeout`.
struct Writing<'c> {
    // Dropped first: an uncommitted transaction rolls back before the lock is released.
    tx: rusqlite::Transaction<'c>,
    _lock: MutexGuard<'static, ()>,
}

impl<'c> std::ops::Deref for Writing<'c> {
    type Target = rusqlite::Transaction<'c>;
    fn deref(&self) -> &Self::Target {
        &self.tx
    }
}

impl Writing<'_> {
    fn commit(self) -> Result<()> {
        let Writing { tx, _lock } = self;
        tx.commit()?;
        Ok(())
    }
}

/// The shared state of the database at `path` (one per file for the whole process, kept for
/// its life; an in-memory database gets its own).
fn shared_for(path: Option<&Path>) -> &'static Shared {
    static ALL: OnceLock<Mutex<HashMap<PathBuf, &'static Shared>>> = OnceLock::new();
    let new = || -> &'static Shared {
        Box::leak(Box::new(Shared {
            writer: Mutex::new(()),
            queue: Mutex::new(Queue::default()),
        }))
    };
    let Some(path) = path else {
        return new();
    };
    let key = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let mut all = lock(ALL.get_or_init(Default::default));
    all.entry(key).or_insert_with(new)
}

/// How hard a commit waits for the disk (SQLite's `synchronous`, in WAL mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Synchronous {
    /// Every commit is on disk before it returns: a 202 survives a power cut.
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

/// Where the database is and how to open it: every connection of a process is opened alike.
#[derive(Debug, Clone, PartialEq)]
pub struct Database {
    pub path: PathBuf,
    pub synchronous: Synchronous,
}

impl Database {
    pub fn open(&self) -> Result<Store> {
        open(&self.path, self.synchronous)
    }
}

/// Opens (creating it mode 0600 if needed) and migrates the database.
pub fn open(path: &Path, synchronous: Synchronous) -> Result<Store> {
    create_private(path)?;
    let conn = Connection::open(path)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", synchronous.name())?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // Erased tokens are overwritten on disk, not merely unlinked from the b-tree.
    conn.pragma_update(None, "secure_delete", "ON")?;
    // Each thread has its own connection, and SQLite's default cache is 2 MiB per connection:
    // with a dozen threads that was most of the service's memory. A big cache buys little
    // here: status polls hit random rows, and any commit by another connection empties the
    // cache of every other one. The file's pages stay in the OS page cache, a pread away;
    // measured, 2 MiB, 128 KiB and 64 KiB served the status poll equally fast.
    conn.pragma_update(None, "cache_size", CACHE_KIB)?;
    let mut store = Store {
        conn,
        shared: shared_for(Some(path)),
    };
    store.migrate()?;
    Ok(store)
}

/// Creates the file with mode 0600 before SQLite does, so that it never exists readable by
/// others; SQLite gives its `-wal` and `-shm` files the same mode.
#[cfg(unix)]
fn create_private(path: &Path) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(StoreError(format!("cannot create {}: {e}", path.display()))),
    }
}

#[cfg(not(unix))]
fn create_private(_: &Path) -> Result<()> {
    Ok(())
}

/// An in-memory database for unit tests.
#[cfg(test)]
pub fn open_in_memory() -> Store {
    let conn = Connection::open_in_memory().unwrap();
    conn.pragma_update(None, "foreign_keys", "ON").unwrap();
    let mut store = Store {
        conn,
        shared: shared_for(None),
    };
    store.migrate().unwrap();
    store
}

/// One request of a batch: decides again under the lock, and creates the action if due.
fn create_one(conn: &Connection, p: &Pending) -> Result<Requested> {
    let stale = match decide(conn, &p.instance_id, &p.owner, p.kind)? {
        // Changed since the unlocked read (or by an earlier request of this batch).
        Decided::Final(answer) => return Ok(answer),
        Decided::Create { stale } => stale,
    };
    let now = now_ms();
    if let Some(stale) = stale {
        // A live action on an instance whose status says otherwise: end it, so that the new
        // one is the only one in flight.
        conn.execute(
            "UPDATE actions SET state = 'failed', error = 'superseded by a new action',
                 token = NULL, compute_url = NULL, claim = NULL, finished_at = ?2
             WHERE id = ?1",
            params![stale, now],
        )?;
    }
    // Time-ordered (version 7): new ids land at the end of the primary key's b-tree, so the
    // actions committed together share its last page instead of each dirtying a random one.
    let id = uuid::Uuid::now_v7().to_string();
    conn.prepare_cached(
        "INSERT INTO actions (id, instance_id, action, state, token, compute_url, created_at)
         VALUES (?1, ?2, ?3, 'queued', ?4, ?5, ?6)",
    )?
    .execute(params![
        id,
        p.instance_id,
        p.kind.name(),
        p.token,
        p.compute_url,
        now
    ])?;
    conn.prepare_cached(
        "UPDATE lambda_instances SET status = ?2, failure_message = NULL WHERE id = ?1",
    )?
    .execute(params![p.instance_id, p.kind.transient_status().name()])?;
    Ok(Requested::Created(id))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The state table applied to what `conn` sees of an instance.
enum Decided {
    /// Nothing to write: not found, a conflict, or the action in flight.
    Final(Requested),
    /// A new action is due; `stale` is a live action to end first (edited by hand).
    Create { stale: Option<String> },
}

fn decide(conn: &Connection, instance_id: &str, owner: &str, kind: ActionKind) -> Result<Decided> {
    Ok(judge(read_snapshot(conn, instance_id, owner)?, kind))
}

/// What an action request is decided on: the instance's status and its action in flight.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    status: Status,
    /// The live action's id and kind.
    live: Option<(String, String)>,
}

fn read_snapshot(conn: &Connection, instance_id: &str, owner: &str) -> Result<Option<Snapshot>> {
    let status: Option<String> = conn
        .prepare_cached(
            "SELECT status FROM lambda_instances
             WHERE id = ?1 AND owner = ?2 AND status <> 'DESTROYED'",
        )?
        .query_row(params![instance_id, owner], |r| r.get(0))
        .optional()?;
    let Some(status) = status else {
        return Ok(None);
    };
    let live = conn
        .prepare_cached(
            "SELECT id, action FROM actions
             WHERE instance_id = ?1 AND state IN ('queued', 'running')",
        )?
        .query_row(params![instance_id], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    Ok(Some(Snapshot {
        status: status_of(status)?,
        live,
    }))
}

/// The state table applied to a snapshot (None: no such instance for this owner).
fn judge(seen: Option<Snapshot>, kind: ActionKind) -> Decided {
    let Some(Snapshot { status, live }) = seen else {
        return Decided::Final(Requested::NotFound);
    };
    match verdict(status, kind, live.is_some()) {
        Verdict::Conflict(message) => Decided::Final(Requested::Conflict(message)),
        Verdict::Merge => Decided::Final(match live {
            Some((id, action)) if action == kind.name() => Requested::Merged(id),
            // The status says one thing and the action in flight another: only possible if
            // the row was edited by hand. Refuse rather than guess.
            _ => Requested::Conflict(format!(
                "Can't {} a lambda instance while lambda instance status is {}.",
                kind.name(),
                status.name()
            )),
        }),
        Verdict::Create => Decided::Create {
            stale: live.map(|(id, _)| id),
        },
    }
}

/// An instance's own columns, as `instance_from_row` takes them.
type InstanceRow = (String, String, String, String, Option<String>, i64);

/// Reads `id, name, owner, status, failure_message, created_at`.
fn instance_row(r: &rusqlite::Row) -> rusqlite::Result<InstanceRow> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
    ))
}

/// An instance from its row and its VMs.
fn with_servers(row: InstanceRow, master: String, slaves: Vec<String>) -> Result<Instance> {
    let (id, name, owner, status, failure_message, created_at) = row;
    Ok(Instance {
        status: status_of(status)?,
        id,
        name,
        owner,
        failure_message,
        master,
        slaves,
        created_at,
    })
}

fn action_from_row(r: &rusqlite::Row) -> rusqlite::Result<ActionRecord> {
    Ok(ActionRecord {
        id: r.get(0)?,
        instance_id: r.get(1)?,
        action: kind_of(r.get(2)?)?,
        state: state_of(r.get(3)?)?,
        attempts: r.get(4)?,
        error: r.get(5)?,
        created_at: r.get(6)?,
        started_at: r.get(7)?,
        finished_at: r.get(8)?,
        steps: Vec::new(),
    })
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

impl Store {
    fn begin_write(&mut self) -> Result<Writing<'_>> {
        let lock = self
            .shared
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        Ok(Writing { tx, _lock: lock })
    }

    fn migrate(&mut self) -> Result<()> {
        let tx = self.begin_write()?;
        let version: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version > SCHEMA_VERSION {
            return Err(StoreError(format!(
                "schema version {version} is newer than this binary's {SCHEMA_VERSION}"
            )));
        }
        if version < SCHEMA_VERSION {
            tx.execute_batch(SCHEMA)?;
            tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Answers whether the database is reachable and readable.
    pub fn ping(&self) -> Result<()> {
        self.conn.query_row("SELECT 1", [], |_| Ok(()))?;
        Ok(())
    }

    // ----- instances -------------------------------------------------------------------

    /// Registers an instance and returns its new uuid.
    pub fn add_instance(
        &mut self,
        name: &str,
        owner: &str,
        master: &str,
        slaves: &[String],
        status: Status,
    ) -> Result<String> {
        let servers = std::iter::once(master.to_string())
            .chain(slaves.iter().cloned())
            .collect();
        let mut ids =
            self.add_instances(&[(name.to_string(), owner.to_string(), servers, status)])?;
        Ok(ids.remove(0))
    }

    /// Registers many instances in one transaction (for loading a database, e.g. the
    /// benchmark's); returns their new uuids in order.
    pub fn add_instances(
        &mut self,
        new: &[(String, String, Vec<String>, Status)],
    ) -> Result<Vec<String>> {
        let tx = self.begin_write()?;
        let mut ids = Vec::with_capacity(new.len());
        {
            let mut instance = tx.prepare(
                "INSERT INTO lambda_instances (id, name, owner, status, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            let mut server = tx.prepare(
                "INSERT INTO instance_servers (instance_id, position, server_id) VALUES (?1, ?2, ?3)",
            )?;
            for (name, owner, servers, status) in new {
                let id = uuid::Uuid::new_v4().to_string();
                instance.execute(params![id, name, owner, status.name(), now_ms()])?;
                for (position, s) in servers.iter().enumerate() {
                    server.execute(params![id, position as i64, s])?;
                }
                ids.push(id);
            }
        }
        tx.commit()?;
        Ok(ids)
    }

    /// Removes an instance and its history. Returns whether it existed.
    pub fn remove_instance(&mut self, id: &str) -> Result<bool> {
        let tx = self.begin_write()?;
        let n = tx.execute("DELETE FROM lambda_instances WHERE id = ?1", params![id])?;
        tx.commit()?;
        Ok(n > 0)
    }

    fn servers(&self, instance_id: &str) -> Result<(String, Vec<String>)> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT server_id FROM instance_servers WHERE instance_id = ?1 ORDER BY position",
        )?;
        let mut all = stmt
            .query_map(params![instance_id], |r| r.get::<_, String>(0))?
            .collect::<rusqlite::Result<Vec<String>>>()?;
        if all.is_empty() {
            return Err(StoreError(format!("instance {instance_id} has no servers")));
        }
        let master = all.remove(0);
        Ok((master, all))
    }

    fn instance_from_row(&self, row: InstanceRow) -> Result<Instance> {
        let (master, slaves) = self.servers(&row.0)?;
        with_servers(row, master, slaves)
    }

    /// The instance `id` if `owner` owns it and it is not destroyed; another user's instance
    /// is as absent as a missing one.
    pub fn owned_instance(&self, id: &str, owner: &str) -> Result<Option<Instance>> {
        // One statement, so one read transaction: a row per VM, the master first.
        let mut stmt = self.conn.prepare_cached(
            "SELECT i.id, i.name, i.owner, i.status, i.failure_message, i.created_at, s.server_id
             FROM lambda_instances i LEFT JOIN instance_servers s ON s.instance_id = i.id
             WHERE i.id = ?1 AND i.owner = ?2 AND i.status <> 'DESTROYED'
             ORDER BY s.position",
        )?;
        let mut rows = stmt.query(params![id, owner])?;
        let Some(first) = rows.next()? else {
            return Ok(None);
        };
        let row = instance_row(first)?;
        let Some(master) = first.get::<_, Option<String>>(6)? else {
            return Err(StoreError(format!("instance {} has no servers", row.0)));
        };
        let mut slaves = Vec::new();
        while let Some(r) = rows.next()? {
            slaves.push(r.get(6)?);
        }
        with_servers(row, master, slaves).map(Some)
    }

    /// The instance's status and action in flight, read together, if `owner` has it (and it
    /// is not destroyed): the action call's 404 check, and what its state table decides on.
    pub fn snapshot(&mut self, id: &str, owner: &str) -> Result<Option<Snapshot>> {
        let tx = self.conn.transaction()?;
        read_snapshot(&tx, id, owner)
    }

    /// Every instance, for the command line.
    pub fn all_instances(&self) -> Result<Vec<Instance>> {
        let rows = self
            .conn
            .prepare(
                "SELECT id, name, owner, status, failure_message, created_at
                 FROM lambda_instances ORDER BY created_at, rowid",
            )?
            .query_map([], instance_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        rows.into_iter()
            .map(|row| self.instance_from_row(row))
            .collect()
    }

    /// A page of `owner`'s instances, oldest first; DESTROYED ones are never listed.
    pub fn list_instances(
        &self,
        owner: &str,
        limit: Option<u64>,
        offset: u64,
    ) -> Result<Vec<Summary>> {
        let limit = limit.map_or(-1, |l| l as i64);
        let rows = self
            .conn
            .prepare_cached(
                "SELECT id, name, status, failure_message FROM lambda_instances
                 WHERE owner = ?1 AND status <> 'DESTROYED'
                 ORDER BY created_at, rowid LIMIT ?2 OFFSET ?3",
            )?
            .query_map(params![owner, limit, offset as i64], |r| {
                Ok(Summary {
                    id: r.get(0)?,
                    name: r.get(1)?,
                    status: status_of(r.get(2)?)?,
                    failure_message: r.get(3)?,
                })
            })?
            .collect::<rusqlite::Result<Vec<Summary>>>()?;
        Ok(rows)
    }

    /// How many instances `owner` has, DESTROYED ones left out.
    pub fn count_instances(&self, owner: &str) -> Result<u64> {
        let n: i64 = self
            .conn
            .prepare_cached(
                "SELECT COUNT(*) FROM lambda_instances WHERE owner = ?1 AND status <> 'DESTROYED'",
            )?
            .query_row(params![owner], |r| r.get(0))?;
        Ok(n as u64)
    }

    // ----- the action request ----------------------------------------------------------

    /// Applies the state table to an action request in one transaction: reads the instance,
    /// and either creates the action (status change and action row together), finds the one in
    /// flight, or refuses. When this returns `Created`, the action is committed.
    pub fn request_action(
        &mut self,
        seen: Snapshot,
        instance_id: &str,
        owner: &str,
        kind: ActionKind,
        token: &str,
        compute_url: &str,
    ) -> Result<Requested> {
        // Most repeated requests change nothing (a merge, a conflict): they are answered from
        // the snapshot, which took no lock. Only a new action goes on to be written.
        if let Decided::Final(answer) = judge(Some(seen), kind) {
            return Ok(answer);
        }
        // Group commit: the request joins the queue. If no one is committing, it leads:
        // it takes the whole queue and commits it in one transaction (one fsync for all).
        // Otherwise it waits to be told its outcome, or that it leads the next batch, made
        // of everything that queued while the last one committed. Each request is woken
        // on its own channel as soon as its batch is done.
        static TICKETS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let ticket = TICKETS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (turn, mine) = crossbeam_channel::bounded(1);
        let leads = {
            let mut queue = lock(&self.shared.queue);
            queue.pending.push(Pending {
                instance_id: instance_id.to_string(),
                owner: owner.to_string(),
                kind,
                token: token.to_string(),
                compute_url: compute_url.to_string(),
                ticket,
                turn,
            });
            !std::mem::replace(&mut queue.leading, true)
        };
        if !leads {
            // If the leader fails without an answer (a panic), the channel closes.
            match mine.recv() {
                Ok(Turn::Done(outcome)) => return outcome,
                Ok(Turn::Lead) => {}
                Err(_) => return Err(StoreError("a queued action request was lost".into())),
            }
        }
        let leading = Leading(&self.shared.queue);
        let batch = std::mem::take(&mut lock(&self.shared.queue).pending);
        let outcomes = {
            let _writing = lock(&self.shared.writer);
            self.create_batch(&batch)
        };
        let mut own = None;
        for (p, outcome) in batch.into_iter().zip(outcomes) {
            if p.ticket == ticket {
                own = Some(outcome);
            } else {
                let _ = p.turn.send(Turn::Done(outcome));
            }
        }
        drop(leading);
        own.unwrap_or_else(|| Err(StoreError("a queued action request was lost".into())))
    }

    /// Applies the state table to each request of `batch` and creates the due actions, all in
    /// one transaction with a savepoint each; the caller holds the write lock.
    fn create_batch(&mut self, batch: &[Pending]) -> Vec<Result<Requested>> {
        let mut tx = match self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
        {
            Ok(tx) => tx,
            Err(e) => {
                let e = StoreError::from(e);
                return batch.iter().map(|_| Err(e.clone())).collect();
            }
        };
        let mut outcomes = Vec::with_capacity(batch.len());
        for p in batch {
            let one = tx.savepoint().map_err(StoreError::from).and_then(|sp| {
                let r = create_one(&sp, p)?;
                sp.commit()?;
                Ok(r)
            });
            outcomes.push(one);
        }
        match tx.commit() {
            Ok(()) => outcomes,
            Err(e) => {
                let e = StoreError::from(e);
                batch.iter().map(|_| Err(e.clone())).collect()
            }
        }
    }

    // ----- reading actions -------------------------------------------------------------

    /// One action of an instance, with its steps.
    pub fn action(&self, instance_id: &str, action_id: &str) -> Result<Option<ActionRecord>> {
        let row = self
            .conn
            .prepare_cached(
                "SELECT id, instance_id, action, state, attempts, error, created_at, started_at,
                        finished_at
                 FROM actions WHERE id = ?1 AND instance_id = ?2",
            )?
            .query_row(params![action_id, instance_id], action_from_row)
            .optional()?;
        row.map(|mut record| {
            record.steps = self.steps(&record.id)?;
            Ok(record)
        })
        .transpose()
    }

    /// A page of an instance's actions, newest first, with their steps.
    pub fn list_actions(
        &self,
        instance_id: &str,
        limit: u64,
        offset: u64,
    ) -> Result<Vec<ActionRecord>> {
        let mut records = self
            .conn
            .prepare_cached(
                "SELECT id, instance_id, action, state, attempts, error, created_at, started_at,
                        finished_at
                 FROM actions WHERE instance_id = ?1
                 ORDER BY created_at DESC, rowid DESC LIMIT ?2 OFFSET ?3",
            )?
            .query_map(
                params![instance_id, limit as i64, offset as i64],
                action_from_row,
            )?
            .collect::<rusqlite::Result<Vec<ActionRecord>>>()?;
        for record in &mut records {
            record.steps = self.steps(&record.id)?;
        }
        Ok(records)
    }

    pub fn count_actions(&self, instance_id: &str) -> Result<u64> {
        let n: i64 = self
            .conn
            .prepare_cached("SELECT COUNT(*) FROM actions WHERE instance_id = ?1")?
            .query_row(params![instance_id], |r| r.get(0))?;
        Ok(n as u64)
    }

    /// How many actions are queued and how many running.
    pub fn live_counts(&self) -> Result<(u64, u64)> {
        let (queued, running): (i64, i64) = self
            .conn
            .prepare_cached(
                "SELECT COALESCE(SUM(state = 'queued'), 0), COALESCE(SUM(state = 'running'), 0)
                 FROM actions WHERE state IN ('queued', 'running')",
            )?
            .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok((queued as u64, running as u64))
    }

    fn steps(&self, action_id: &str) -> Result<Vec<Step>> {
        let steps = self
            .conn
            .prepare_cached(
                "SELECT vm, op, result, at FROM action_steps WHERE action_id = ?1 ORDER BY seq",
            )?
            .query_map(params![action_id], |r| {
                Ok(Step {
                    vm: r.get(0)?,
                    op: r.get(1)?,
                    result: r.get(2)?,
                    at: r.get(3)?,
                })
            })?
            .collect::<rusqlite::Result<Vec<Step>>>()?;
        Ok(steps)
    }

    // ----- idempotency keys --------------------------------------------------------------

    /// The answer stored for `owner`'s `key`, if it is younger than `max_age_ms`.
    pub fn stored_answer(
        &self,
        owner: &str,
        key: &str,
        max_age_ms: i64,
    ) -> Result<Option<StoredAnswer>> {
        let row = self
            .conn
            .prepare_cached(
                "SELECT fingerprint, status, body, location FROM idempotency_keys
                 WHERE owner = ?1 AND key = ?2 AND created_at >= ?3",
            )?
            .query_row(params![owner, key, now_ms() - max_age_ms], |r| {
                Ok(StoredAnswer {
                    fingerprint: r.get(0)?,
                    status: r.get::<_, i64>(1)? as u16,
                    body: r.get(2)?,
                    location: r.get(3)?,
                })
            })
            .optional()?;
        Ok(row)
    }

    /// Stores the first answer to `owner`'s `key`; an answer already there (from a request
    /// that raced this one, or an expired one not yet purged) is replaced only if expired.
    pub fn store_answer(
        &mut self,
        owner: &str,
        key: &str,
        answer: &StoredAnswer,
        max_age_ms: i64,
    ) -> Result<()> {
        let now = now_ms();
        let tx = self.begin_write()?;
        tx.prepare_cached(
                "INSERT INTO idempotency_keys (owner, key, fingerprint, status, body, location, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (owner, key) DO UPDATE SET
                     fingerprint = excluded.fingerprint, status = excluded.status,
                     body = excluded.body, location = excluded.location,
                     created_at = excluded.created_at
                 WHERE idempotency_keys.created_at < ?8",
            )?
            .execute(params![
                owner,
                key,
                answer.fingerprint,
                answer.status as i64,
                answer.body,
                answer.location,
                now,
                now - max_age_ms
            ])?;
        tx.commit()?;
        Ok(())
    }

    /// Deletes at most `batch` keys older than `max_age_ms`, oldest first, through the age
    /// index (never a scan of the table). Returns how many went.
    pub fn purge_answers(&mut self, max_age_ms: i64, batch: u64) -> Result<usize> {
        let tx = self.begin_write()?;
        let n = tx
            .prepare_cached(
                "DELETE FROM idempotency_keys WHERE (owner, key) IN (
                 SELECT owner, key FROM idempotency_keys WHERE created_at < ?1
                 ORDER BY created_at LIMIT ?2)",
            )?
            .execute(params![now_ms() - max_age_ms, batch as i64])?;
        tx.commit()?;
        Ok(n)
    }

    // ----- the worker's side -----------------------------------------------------------

    /// At start-up, before any worker runs: every action a previous process was running goes
    /// back to the queue (this process is the database's only user), and an instance left in
    /// STARTING or STOPPING with nothing in flight is marked FAILED.
    pub fn recover(&mut self) -> Result<(usize, usize)> {
        let tx = self.begin_write()?;
        let requeued = tx.execute(
            "UPDATE actions SET state = 'queued', claim = NULL, lease_until = NULL
             WHERE state = 'running'",
            [],
        )?;
        let orphaned = tx.execute(
            "UPDATE lambda_instances
             SET status = 'FAILED', failure_message = 'interrupted: no action was in flight'
             WHERE status IN ('STARTING', 'STOPPING')
               AND NOT EXISTS (SELECT 1 FROM actions a WHERE a.instance_id = lambda_instances.id
                                                         AND a.state IN ('queued', 'running'))",
            [],
        )?;
        tx.commit()?;
        Ok((requeued, orphaned))
    }

    /// Claims the oldest queued action, or a running one whose lease has expired, for
    /// `lease`. The claim is fresh, so whoever held the action before can no longer write it.
    pub fn claim_next(&mut self, lease: Duration) -> Result<Option<Job>> {
        let now = now_ms();
        let tx = self.begin_write()?;
        let next: Option<String> = tx
            .prepare_cached(
                "SELECT id FROM actions
                 WHERE state = 'queued' OR (state = 'running' AND lease_until < ?1)
                 ORDER BY created_at, rowid LIMIT 1",
            )?
            .query_row(params![now], |r| r.get(0))
            .optional()?;
        let Some(action_id) = next else {
            return Ok(None);
        };
        let claim = uuid::Uuid::new_v4().to_string();
        tx.execute(
            "UPDATE actions SET state = 'running', claim = ?2, lease_until = ?3,
                 attempts = attempts + 1, started_at = COALESCE(started_at, ?4)
             WHERE id = ?1",
            params![action_id, claim, now + lease.as_millis() as i64, now],
        )?;
        let (instance_id, action, token, compute_url, attempt, created_at): (
            String,
            String,
            String,
            String,
            i64,
            i64,
        ) = tx
            .prepare_cached(
                "SELECT instance_id, action, token, compute_url, attempts, created_at
                 FROM actions WHERE id = ?1",
            )?
            .query_row(params![action_id], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                ))
            })?;
        tx.commit()?;
        let (master, slaves) = self.servers(&instance_id)?;
        Ok(Some(Job {
            action_id,
            instance_id,
            action: kind_of(action)?,
            token,
            compute_url,
            master,
            slaves,
            claim,
            attempt,
            created_at,
        }))
    }

    /// Records a step of a claimed action and renews its lease. Returns false when the claim
    /// is no longer current (the action was taken over): the caller must stop working on it.
    pub fn record_step(
        &mut self,
        job: &Job,
        lease: Duration,
        vm: &str,
        op: &str,
        result: &str,
    ) -> Result<bool> {
        let now = now_ms();
        let tx = self.begin_write()?;
        let held = tx.execute(
            "UPDATE actions SET lease_until = ?3 WHERE id = ?1 AND claim = ?2 AND state = 'running'",
            params![job.action_id, job.claim, now + lease.as_millis() as i64],
        )? == 1;
        if held {
            tx.execute(
                "INSERT INTO action_steps (action_id, seq, vm, op, result, at)
                 SELECT ?1, COALESCE(MAX(seq), 0) + 1, ?2, ?3, ?4, ?5
                 FROM action_steps WHERE action_id = ?1",
                params![job.action_id, vm, op, result, now],
            )?;
        }
        tx.commit()?;
        Ok(held)
    }

    /// Renews the lease of a claimed action; false when the claim is no longer current.
    pub fn renew(&mut self, job: &Job, lease: Duration) -> Result<bool> {
        let tx = self.begin_write()?;
        let n = tx.execute(
            "UPDATE actions SET lease_until = ?3 WHERE id = ?1 AND claim = ?2 AND state = 'running'",
            params![job.action_id, job.claim, now_ms() + lease.as_millis() as i64],
        )?;
        tx.commit()?;
        Ok(n == 1)
    }

    /// Ends a claimed action: succeeded (`error` None) or failed, in one transaction with the
    /// instance's new status. The token is erased. Returns false when the claim was lost.
    pub fn finish(&mut self, job: &Job, error: Option<&str>) -> Result<bool> {
        let now = now_ms();
        let tx = self.begin_write()?;
        let state = if error.is_some() {
            "failed"
        } else {
            "succeeded"
        };
        let held = tx.execute(
            "UPDATE actions SET state = ?3, error = ?4, finished_at = ?5, token = NULL,
                 compute_url = NULL, claim = NULL, lease_until = NULL
             WHERE id = ?1 AND claim = ?2 AND state = 'running'",
            params![job.action_id, job.claim, state, error, now],
        )? == 1;
        if held {
            let status = match error {
                None => job.action.final_status(),
                Some(_) => Status::Failed,
            };
            tx.execute(
                "UPDATE lambda_instances SET status = ?2, failure_message = ?3 WHERE id = ?1",
                params![job.instance_id, status.name(), error],
            )?;
        }
        tx.commit()?;
        Ok(held)
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

    /// Hands a claimed action back to the queue (the process is shutting down); the next
    /// process, or another worker, takes it up again.
    pub fn release(&mut self, job: &Job) -> Result<bool> {
        let tx = self.begin_write()?;
        let n = tx.execute(
            "UPDATE actions SET state = 'queued', claim = NULL, lease_until = NULL
             WHERE id = ?1 AND claim = ?2 AND state = 'running'",
            params![job.action_id, job.claim],
        )?;
        tx.commit()?;
        Ok(n == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OWNER: &str = "u1";
    const LEASE: Duration = Duration::from_secs(60);

    fn instance(store: &mut Store, status: Status) -> String {
        store
            .add_instance("demo", OWNER, "m", &["s1".into(), "s2".into()], status)
            .unwrap()
    }

    fn request_as(store: &mut Store, id: &str, owner: &str, kind: ActionKind) -> Requested {
        match store.snapshot(id, owner).unwrap() {
            None => Requested::NotFound,
            Some(seen) => store
                .request_action(seen, id, owner, kind, "tok", "http://c")
                .unwrap(),
        }
    }

    fn request(store: &mut Store, id: &str, kind: ActionKind) -> Requested {
        request_as(store, id, OWNER, kind)
    }

    fn status(store: &Store, id: &str) -> Status {
        store.owned_instance(id, OWNER).unwrap().unwrap().status
    }

    #[test]
    fn migrate_is_idempotent() {
        let mut store = open_in_memory();
        store.migrate().unwrap();
        store.migrate().unwrap();
    }

    /// The build flags in .cargo/config.toml reached SQLite: without them every connection
    /// shares one page cache behind a global mutex, and holds more memory.
    #[test]
    fn sqlite_is_built_with_the_flags_of_cargo_config() {
        let store = open_in_memory();
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

    #[test]
    fn servers_keep_their_order() {
        let mut store = open_in_memory();
        let id = instance(&mut store, Status::Stopped);
        let i = store.owned_instance(&id, OWNER).unwrap().unwrap();
        assert_eq!(i.master, "m");
        assert_eq!(i.slaves, vec!["s1", "s2"]);
        assert!(store.owned_instance(&id, "someone else").unwrap().is_none());
    }

    #[test]
    fn create_then_merge() {
        let mut store = open_in_memory();
        let id = instance(&mut store, Status::Stopped);
        let Requested::Created(a) = request(&mut store, &id, ActionKind::Start) else {
            panic!("not created")
        };
        assert_eq!(status(&store, &id), Status::Starting);
        assert_eq!(
            request(&mut store, &id, ActionKind::Start),
            Requested::Merged(a)
        );
        assert!(matches!(
            request(&mut store, &id, ActionKind::Stop),
            Requested::Conflict(_)
        ));
    }

    #[test]
    fn destroyed_and_foreign_are_not_found() {
        let mut store = open_in_memory();
        let id = instance(&mut store, Status::Destroyed);
        assert_eq!(
            request(&mut store, &id, ActionKind::Start),
            Requested::NotFound
        );
        let id = instance(&mut store, Status::Stopped);
        let r = request_as(&mut store, &id, "intruder", ActionKind::Start);
        assert_eq!(r, Requested::NotFound);
    }

    #[test]
    fn claim_finish_erases_token() {
        let mut store = open_in_memory();
        let id = instance(&mut store, Status::Stopped);
        request(&mut store, &id, ActionKind::Start);
        let job = store.claim_next(LEASE).unwrap().unwrap();
        assert_eq!(job.token, "tok");
        assert!(store.claim_next(LEASE).unwrap().is_none(), "claimed twice");
        assert!(store
            .record_step(&job, LEASE, "s1", "status", "STOPPED")
            .unwrap());
        assert!(store.finish(&job, None).unwrap());
        assert_eq!(status(&store, &id), Status::Started);
        let tokens: i64 = store
            .conn
            .query_row(
                "SELECT COUNT(*) FROM actions WHERE token IS NOT NULL",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(tokens, 0);
        let record = store.action(&id, &job.action_id).unwrap().unwrap();
        assert_eq!(record.state, ActionState::Succeeded);
        assert_eq!(record.steps.len(), 1);
    }

    #[test]
    fn an_expired_lease_is_taken_over_and_fences_the_old_holder() {
        let mut store = open_in_memory();
        let id = instance(&mut store, Status::Started);
        request(&mut store, &id, ActionKind::Stop);
        let old = store.claim_next(Duration::ZERO).unwrap().unwrap();
        std::thread::sleep(Duration::from_millis(2));
        let new = store.claim_next(LEASE).unwrap().unwrap();
        assert_eq!(new.action_id, old.action_id);
        assert_eq!(new.attempt, 2);
        assert!(!store
            .record_step(&old, LEASE, "m", "status", "ACTIVE")
            .unwrap());
        assert!(!store.finish(&old, Some("late")).unwrap());
        assert!(store.finish(&new, Some("413 overLimit (quota)")).unwrap());
        let i = store.owned_instance(&id, OWNER).unwrap().unwrap();
        assert_eq!(i.status, Status::Failed);
        assert_eq!(i.failure_message.as_deref(), Some("413 overLimit (quota)"));
    }

    #[test]
    fn recover_requeues_running_and_fails_orphans() {
        let mut store = open_in_memory();
        let a = instance(&mut store, Status::Stopped);
        request(&mut store, &a, ActionKind::Start);
        store.claim_next(LEASE).unwrap().unwrap();
        let orphan = instance(&mut store, Status::Stopping);
        assert_eq!(store.recover().unwrap(), (1, 1));
        assert_eq!(status(&store, &orphan), Status::Failed);
        assert_eq!(status(&store, &a), Status::Starting);
        assert!(store.claim_next(LEASE).unwrap().is_some());
    }

    #[test]
    fn lists_and_counts_leave_destroyed_out() {
        let mut store = open_in_memory();
        let a = instance(&mut store, Status::Stopped);
        instance(&mut store, Status::Destroyed);
        let c = instance(&mut store, Status::Failed);
        assert_eq!(store.count_instances(OWNER).unwrap(), 2);
        let all: Vec<String> = store
            .list_instances(OWNER, None, 0)
            .unwrap()
            .into_iter()
            .map(|s| s.id)
            .collect();
        assert_eq!(all, vec![a.clone(), c.clone()]);
        let page = store.list_instances(OWNER, Some(1), 1).unwrap();
        assert_eq!(page[0].id, c);
        assert!(store.list_instances(OWNER, Some(5), 9).unwrap().is_empty());
        assert!(store.list_instances("nobody", None, 0).unwrap().is_empty());
    }

    #[test]
    fn actions_newest_first() {
        let mut store = open_in_memory();
        let id = instance(&mut store, Status::Stopped);
        let Requested::Created(first) = request(&mut store, &id, ActionKind::Start) else {
            panic!()
        };
        let job = store.claim_next(LEASE).unwrap().unwrap();
        store.finish(&job, None).unwrap();
        let Requested::Created(second) = request(&mut store, &id, ActionKind::Stop) else {
            panic!()
        };
        let ids: Vec<String> = store
            .list_actions(&id, 10, 0)
            .unwrap()
            .into_iter()
            .map(|a| a.id)
            .collect();
        assert_eq!(ids, vec![second, first]);
        assert_eq!(store.count_actions(&id).unwrap(), 2);
        assert_eq!(store.live_counts().unwrap(), (1, 0));
    }

    #[test]
    fn answers_are_kept_then_purged() {
        let mut store = open_in_memory();
        let answer = StoredAnswer {
            fingerprint: "f".into(),
            status: 202,
            body: "{}".into(),
            location: Some("http://x".into()),
        };
        store.store_answer(OWNER, "k", &answer, 1000).unwrap();
        assert_eq!(
            store.stored_answer(OWNER, "k", 1000).unwrap(),
            Some(answer.clone())
        );
        assert_eq!(store.stored_answer("other", "k", 1000).unwrap(), None);
        // A second answer for a live key does not replace the first.
        let later = StoredAnswer {
            status: 409,
            ..answer.clone()
        };
        store.store_answer(OWNER, "k", &later, 1000).unwrap();
        assert_eq!(
            store
                .stored_answer(OWNER, "k", 1000)
                .unwrap()
                .unwrap()
                .status,
            202
        );
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(
            store.stored_answer(OWNER, "k", 1).unwrap(),
            None,
            "expired keys are not replayed"
        );
        assert_eq!(store.purge_answers(1, 100).unwrap(), 1);
        assert_eq!(store.purge_answers(1, 100).unwrap(), 0);
    }

    /// Eight threads making 40 actions each, back to back: leadership passes from batch to
    /// batch and no request is left waiting (a lost hand-off would hang, hence the deadline).
    #[test]
    fn group_commit_hands_the_lead_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.db");
        let mut store = open(&path, Synchronous::Normal).unwrap();
        let ids: Vec<Vec<String>> = (0..8)
            .map(|_| {
                (0..40)
                    .map(|_| {
                        store
                            .add_instance("h", OWNER, "m", &[], Status::Stopped)
                            .unwrap()
                    })
                    .collect()
            })
            .collect();
        let (done, finished) = crossbeam_channel::unbounded();
        for mine in ids {
            let (path, done) = (path.clone(), done.clone());
            std::thread::spawn(move || {
                let mut store = open(&path, Synchronous::Normal).unwrap();
                let created = mine
                    .iter()
                    .filter(|id| {
                        let seen = store.snapshot(id, OWNER).unwrap().unwrap();
                        let r = store.request_action(seen, id, OWNER, ActionKind::Start, "t", "c");
                        matches!(r, Ok(Requested::Created(_)))
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

    /// 16 threads on one instance and 16 on others of their own, each with its connection:
    /// whatever batches they are committed in, one action per instance, the rest merged.
    #[test]
    fn group_commit_decides_each_request_in_turn() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.db");
        let mut store = open(&path, Synchronous::Normal).unwrap();
        let ids: Vec<String> = (0..17)
            .map(|_| {
                store
                    .add_instance("g", OWNER, "m", &[], Status::Stopped)
                    .unwrap()
            })
            .collect();
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(32));
        let threads: Vec<_> = (0..32)
            .map(|t| {
                let id = if t % 2 == 0 {
                    ids[0].clone()
                } else {
                    ids[1 + t / 2].clone()
                };
                let (path, barrier) = (path.clone(), barrier.clone());
                std::thread::spawn(move || {
                    let mut store = open(&path, Synchronous::Normal).unwrap();
                    barrier.wait();
                    // Every thread saw the instances STOPPED before any request was made.
                    let seen = store.snapshot(&id, OWNER).unwrap().unwrap();
                    barrier.wait();
                    let r = store.request_action(seen, &id, OWNER, ActionKind::Start, "t", "c");
                    (id, r.unwrap())
                })
            })
            .collect();
        let results: Vec<(String, Requested)> =
            threads.into_iter().map(|t| t.join().unwrap()).collect();
        let on_shared: Vec<&Requested> = results
            .iter()
            .filter(|(id, _)| *id == ids[0])
            .map(|(_, r)| r)
            .collect();
        let created: Vec<&String> = on_shared
            .iter()
            .filter_map(|r| match r {
                Requested::Created(a) => Some(a),
                _ => None,
            })
            .collect();
        assert_eq!(created.len(), 1, "{on_shared:?}");
        for r in &on_shared {
            assert!(
                matches!(r, Requested::Created(a) | Requested::Merged(a) if a == created[0]),
                "{r:?}"
            );
        }
        for (id, r) in results.iter().filter(|(id, _)| *id != ids[0]) {
            assert!(matches!(r, Requested::Created(_)), "{id}: {r:?}");
        }
        assert_eq!(store.live_counts().unwrap(), (17, 0));
    }

    #[test]
    fn release_puts_it_back() {
        let mut store = open_in_memory();
        let id = instance(&mut store, Status::Stopped);
        request(&mut store, &id, ActionKind::Start);
        let job = store.claim_next(LEASE).unwrap().unwrap();
        assert!(store.release(&job).unwrap());
        let again = store.claim_next(LEASE).unwrap().unwrap();
        assert_eq!(again.action_id, job.action_id);
    }
}
