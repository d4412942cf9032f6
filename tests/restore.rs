//! `restore` trusts nothing in the file it is given and loses nothing of the database it
//! replaces.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use lambda_api::model::{ActionKind, Status};
use lambda_api::store::{ActionRequest, Database, NewInstance, Synchronous};
use rusqlite::Connection;

use crate::support::*;

const SECRET: &str = "token-that-must-not-stay-anywhere-0123456789";

/// A database at `path` with one STOPPED instance and, with `live`, a start in flight that
/// holds `SECRET`.
fn database(path: &Path, live: bool) -> Database {
    let db = Database::new(path, Synchronous::Full);
    fill(&db, live);
    db
}

fn fill(db: &Database, live: bool) {
    let mut store = db.open().unwrap();
    let id = store
        .add_instance(&NewInstance {
            name: "kept".into(),
            owner: USER.into(),
            master: "m".into(),
            slaves: vec![],
            status: Status::Stopped,
            network: None,
            floating_ips: Vec::new(),
        })
        .unwrap();
    if live {
        let snapshot = store.snapshot(&id, USER).unwrap();
        let request = ActionRequest {
            instance_id: id,
            owner: USER.into(),
            kind: ActionKind::Start,
            token: SECRET.into(),
            compute_url: "http://c".into(),
            network_url: None,
            key: None,
            create: None,
        };
        store.request_action(snapshot.as_ref(), request).unwrap();
    }
}

fn holds(path: &Path, needle: &str) -> bool {
    let bytes = std::fs::read(path).unwrap_or_default();
    bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// A backup with a trigger of its own (one that would copy tokens where anyone can read
/// them) is refused, and the database is left as it was.
#[test]
fn a_backup_with_a_trigger_of_its_own_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let db = database(&dir.path().join("lambda-api.db"), false);
    let backup = dir.path().join("backup.db");
    db.backup(&backup).unwrap();
    Connection::open(&backup)
        .unwrap()
        .execute_batch(
            "CREATE TRIGGER leak AFTER INSERT ON actions BEGIN
                 UPDATE lambda_instances SET name = NEW.token WHERE id = NEW.instance_id;
             END;",
        )
        .unwrap();
    let before = std::fs::read(db.path()).unwrap();
    let e = db.restore(&backup).unwrap_err().to_string();
    assert!(e.contains("trigger leak"), "{e}");
    assert_eq!(
        std::fs::read(db.path()).unwrap(),
        before,
        "the database was touched"
    );
    // A clean backup restores.
    let clean = dir.path().join("clean.db");
    db.backup(&clean).unwrap();
    db.restore(&clean).unwrap();
}

/// Killed with its latest writes in the write-ahead log only, the database a restore
/// replaces is kept whole, and without the token of its live action.
#[test]
fn the_database_set_aside_keeps_its_log_and_no_token() {
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("live.db");
    let db = Database::new(&live, Synchronous::Full);
    // A connection open throughout: no close folds the log into the file.
    let open = db.open().unwrap();
    fill(&db, true);
    let backup = dir.path().join("backup.db");
    db.backup(&backup).unwrap();
    // A crash: the files as they are now.
    let crashed = dir.path().join("crashed.db");
    for suffix in ["", "-wal", "-shm"] {
        let from = format!("{}{suffix}", live.display());
        let _ = std::fs::copy(&from, format!("{}{suffix}", crashed.display()));
    }
    drop(open);
    assert!(
        holds(Path::new(&format!("{}-wal", crashed.display())), "kept"),
        "the log holds the instance"
    );
    let (_, aside) = Database::new(&crashed, Synchronous::Full)
        .restore(&backup)
        .unwrap();
    let aside = aside.expect("the replaced database is kept");
    let kept = Connection::open(&aside).unwrap();
    let instances: i64 = kept
        .query_row("SELECT COUNT(*) FROM lambda_instances", [], |r| r.get(0))
        .unwrap();
    assert_eq!(instances, 1, "the log's writes are in the copy kept aside");
    drop(kept);
    for suffix in ["", "-wal"] {
        let f = format!("{}{suffix}", aside.display());
        assert!(!holds(Path::new(&f), SECRET), "{f} holds the token");
    }
}

/// Run by root on a database never served (no lock file yet), restore gives the lock file
/// to the database's owner: the service, started as that user, can take it.
#[test]
fn a_restore_by_root_gives_the_lock_to_the_databases_owner() {
    let root = std::fs::metadata("/proc/self").map(|m| m.uid() == 0);
    if root.ok() != Some(true) {
        eprintln!("not root: the lock's owner cannot be tested here");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lambda-api.db");
    let db = database(&path, false);
    let backup = dir.path().join("backup.db");
    db.backup(&backup).unwrap();
    let lock = dir.path().join("lambda-api.db.lock");
    let _ = std::fs::remove_file(&lock);
    let nobody = 65534;
    for f in [dir.path().to_path_buf(), path.clone()] {
        std::os::unix::fs::chown(&f, Some(nobody), Some(nobody)).unwrap();
    }
    db.restore(&backup).unwrap();
    let owner = std::fs::metadata(&lock).unwrap();
    assert_eq!((owner.uid(), owner.gid()), (nobody, nobody));
    let restored = std::fs::metadata(&path).unwrap();
    assert_eq!((restored.uid(), restored.mode() & 0o777), (nobody, 0o600));
}
