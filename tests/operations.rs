//! Running it on one machine: backups under load, restore, a database from a newer binary.

use std::path::Path;
use std::time::Duration;

use lambda_api::model::Status;
use lambda_api::store::{Database, NewInstance, Synchronous, LIVE_AT_BACKUP};
use rusqlite::Connection;

use crate::support::process::*;
use crate::support::*;

const CLUSTERS: usize = 24;

fn register(db: &Path, n: usize) -> Vec<String> {
    let new: Vec<NewInstance> = (0..n)
        .map(|i| NewInstance {
            name: format!("c{i}"),
            owner: USER.into(),
            master: format!("v{i}"),
            slaves: Vec::new(),
            status: Status::Stopped,
            network: None,
            floating_ips: Vec::new(),
        })
        .collect();
    Database::new(db, Synchronous::Full)
        .open()
        .unwrap()
        .add_instances(&new)
        .unwrap()
}

/// How many live actions a backup says it failed in its copy.
fn ended(stdout: &[u8]) -> u64 {
    let out = String::from_utf8_lossy(stdout);
    out.split("; ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in {out:?}"))
}

fn live_actions(copy: &Connection) -> i64 {
    copy.query_row(
        "SELECT COUNT(*) FROM actions WHERE state IN ('queued', 'running')",
        [],
        |r| r.get(0),
    )
    .unwrap()
}

/// Backups taken while clusters start and stop are whole, hold no token, and a restored one
/// ends every action: those live at backup time are failed with a message that says why,
/// and the service starts them again when asked.
#[test]
fn a_backup_under_load_holds_no_token_and_restores() {
    let sim = start_sim_with(fixture_with_vms(CLUSTERS), Duration::from_millis(400));
    let dir = tempfile::tempdir().unwrap();
    let ids = register(&dir.path().join("lambda-api.db"), CLUSTERS);
    let astakos = sim.astakos_url();
    let env = sim_env(&astakos, "20");
    let mut served = Served::start(dir.path(), &env);

    // Four clients start and stop every cluster while three backups are taken.
    let clients: Vec<_> = (0..4)
        .map(|c| {
            let base = served.base.clone();
            let ids = ids.clone();
            std::thread::spawn(move || {
                let mut accepted = 0;
                for round in 0..3 {
                    let action = if round % 2 == 0 { "start" } else { "stop" };
                    for id in ids.iter().skip(c).step_by(4) {
                        let url = format!("{base}/api/lambda-instances/{id}/");
                        let r = post_form(&url, TOKEN, action);
                        assert!(r.status == 202 || r.status == 409, "{}", r.body);
                        accepted += usize::from(r.status == 202);
                    }
                    std::thread::sleep(Duration::from_millis(150));
                }
                accepted
            })
        })
        .collect();
    let mut copies = Vec::new();
    let mut ended_total = 0;
    for n in 0..3 {
        std::thread::sleep(Duration::from_millis(120));
        let file = dir.path().join(format!("backup-{n}.db"));
        let o = run(dir.path(), &env, &["backup", file.to_str().unwrap()]);
        assert!(o.status.success(), "backup {n}: {}", stderr(&o));
        ended_total += ended(&o.stdout);
        copies.push(file);
    }
    let accepted: usize = clients.into_iter().map(|c| c.join().unwrap()).sum();
    assert!(accepted >= CLUSTERS, "only {accepted} actions accepted");
    assert!(
        ended_total > 0,
        "no backup caught a live action: the test proves nothing"
    );

    for file in &copies {
        let bytes = std::fs::read(file).unwrap();
        assert!(
            !bytes.windows(TOKEN.len()).any(|w| w == TOKEN.as_bytes()),
            "{} holds the token",
            file.display()
        );
        let copy = Connection::open(file).unwrap();
        let integrity: String = copy
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(integrity, "ok", "{}", file.display());
        assert_eq!(live_actions(&copy), 0, "{}", file.display());
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(file).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600, "{}", file.display());
    }

    // A restore while the service runs is refused, and the service goes on.
    let first = copies[0].to_str().unwrap();
    let o = run(dir.path(), &env, &["restore", first]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("in use"), "{}", stderr(&o));
    assert_eq!(get(&format!("{}/healthz", served.base), None).status, 200);
    // As is a backup onto an existing file.
    let o = run(dir.path(), &env, &["backup", first]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));

    served.kill9();
    let o = run(dir.path(), &env, &["restore", first]);
    assert!(o.status.success(), "{}", stderr(&o));
    let said = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(said.contains("kept as"), "{said}");

    let served = Served::start(dir.path(), &env);
    let mut failed_at_backup = Vec::new();
    for id in &ids {
        let url = format!("{}/api/lambda-instances/{id}/actions/", served.base);
        let actions = get(&url, Some(TOKEN)).json();
        for a in actions["data"].as_array().unwrap() {
            let state = a["state"].as_str().unwrap();
            assert!(state == "succeeded" || state == "failed", "{a}");
            if a["error"].as_str() == Some(LIVE_AT_BACKUP) {
                failed_at_backup.push(id.clone());
            }
        }
    }
    assert!(!failed_at_backup.is_empty());
    // Such an instance is FAILED with the reason, and starts again when asked.
    let id = &failed_at_backup[0];
    let url = format!("{}/api/lambda-instances/{id}/", served.base);
    let status = get(&url, Some(TOKEN)).json()["data"][0]["status"].clone();
    assert_eq!(status["message"], "FAILED", "{status}");
    assert_eq!(status["failure_message"], LIVE_AT_BACKUP, "{status}");
    assert_eq!(post_form(&url, TOKEN, "start").status, 202);
    wait_for("the restored instance to start", || {
        let s = get(&url, Some(TOKEN)).json()["data"][0]["status"]["message"].clone();
        (s == "STARTED").then_some(())
    });
}

/// restore checks a file before it replaces anything.
#[test]
fn restore_refuses_what_is_not_a_backup() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("lambda-api.db");
    let ids = register(&db, 1);
    let env = [("LAMBDA_API_DATABASE", "lambda-api.db")];
    let before = std::fs::read(&db).unwrap();

    let junk = dir.path().join("junk.db");
    std::fs::write(&junk, vec![b'x'; 8192]).unwrap();
    // A copy of a live database keeps its tokens: restore wants a backup.
    let raw = dir.path().join("raw.db");
    {
        let conn = Connection::open(&db).unwrap();
        conn.execute(
            "INSERT INTO actions (id, instance_id, action, state, token, compute_url,
                                  created_at, due_at)
             VALUES ('a', ?1, 'start', 'queued', 'secret', 'c', 1, 1)",
            [&ids[0]],
        )
        .unwrap();
        conn.execute("VACUUM INTO ?1", [raw.to_str().unwrap()])
            .unwrap();
        conn.execute("DELETE FROM actions", []).unwrap();
    }
    let before_wal = std::fs::read(&db).unwrap();
    for (file, says) in [
        (&junk, "not a usable backup"),
        (&raw, "hold a token"),
        (&dir.path().join("missing.db"), "missing.db"),
    ] {
        let o = run(dir.path(), &env, &["restore", file.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
        assert!(stderr(&o).contains(says), "{says}: {}", stderr(&o));
        assert!(
            std::fs::read(&db).unwrap() == before_wal,
            "{} changed the database",
            file.display()
        );
    }
    assert!(!before.is_empty());
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.contains("restoring") || n.contains("replaced"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// A database written by a newer lambda-api is refused with the versions, and not touched.
#[test]
fn a_newer_database_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("lambda-api.db");
    register(&db, 1);
    {
        let conn = Connection::open(&db).unwrap();
        conn.pragma_update(None, "user_version", 99).unwrap();
        conn.pragma_update(None, "journal_mode", "DELETE").unwrap();
    }
    let before = std::fs::read(&db).unwrap();
    let env = [
        ("LAMBDA_API_DATABASE", "lambda-api.db"),
        ("LAMBDA_API_LISTEN", "127.0.0.1:0"),
    ];
    for args in [&["serve"][..], &["instances", "list"]] {
        let o = run(dir.path(), &env, args);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("schema version 99 is newer than this binary's"),
            "{args:?}: {}",
            stderr(&o)
        );
        assert!(
            std::fs::read(&db).unwrap() == before,
            "{args:?} changed the file"
        );
    }
}

/// A small tmpfs of the test's own, unmounted (lazily) when dropped.
struct SmallDisk {
    path: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl SmallDisk {
    /// None where this process may not mount (not root), said on stderr; as root, a mount
    /// that fails fails the test.
    fn mount(size: &str) -> Option<SmallDisk> {
        let root = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("Uid:"))
                    .map(|ids| ids.split_whitespace().nth(1) == Some("0"))
            })
            .unwrap_or(false);
        if !root {
            eprintln!("not root: no tmpfs can be mounted, so the full-disk test did not run");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk");
        std::fs::create_dir(&path).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700")])
            .arg("tmpfs")
            .arg(&path)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "mount -t tmpfs failed, as root");
        Some(SmallDisk { path, _dir: dir })
    }

    /// Writes a file until the disk has no room left.
    fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let filler = self.path.join("filler");
        let mut f = std::fs::File::create(&filler).unwrap();
        for chunk in [65536, 4096, 1] {
            let block = vec![0u8; chunk];
            while f.write_all(&block).is_ok() {}
        }
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .status();
    }
}

fn try_start(base: &str, id: &str, key: Option<&str>) -> Resp {
    let mut headers = vec![("Authorization".to_string(), format!("Token {TOKEN}"))];
    if let Some(k) = key {
        headers.push(("Idempotency-Key".into(), k.into()));
    }
    let headers: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    post(
        &format!("{base}/api/lambda-instances/{id}/"),
        &headers,
        "application/json",
        br#"{"action":"start"}"#,
    )
}

/// While the disk is full, a new action is a 503 with Retry-After and the
/// reason, never a 202 or a 500; /healthz says why; reads go on; and once the disk takes
/// writes again the service is back by itself, with the action it accepted before finished.
#[test]
fn a_full_disk_refuses_new_actions_and_recovers() {
    let Some(disk) = SmallDisk::mount("4m") else {
        return;
    };
    let sim = start_sim_with(fixture_with_vms(3), Duration::from_millis(300));
    let db = disk.path.join("lambda-api.db");
    let ids = register(&db, 3);
    let astakos = sim.astakos_url();
    let mut env = sim_env(&astakos, "20");
    let db_name = db.to_str().unwrap();
    env.push(("LAMBDA_API_DATABASE", db_name));
    let dir = tempfile::tempdir().unwrap();
    let served = Served::start(dir.path(), &env);
    let base = served.base.clone();
    let health = || get(&format!("{base}/healthz"), None);

    // Accepted before the disk fills: it must still end.
    let before = try_start(&base, &ids[0], None);
    assert_eq!(before.status, 202, "{}", before.body);
    let filler = disk.fill();

    for (n, key) in [None, Some("full-1")].into_iter().enumerate() {
        let r = try_start(&base, &ids[1], key);
        assert_eq!(r.status, 503, "try {n}: {}", r.body);
        assert!(r.header("retry-after").is_some(), "try {n}");
        let error = &r.json()["errors"][0];
        assert_eq!(error["status"], 503, "{}", r.body);
        assert!(
            error["detail"]
                .as_str()
                .unwrap()
                .contains("the disk is full"),
            "{}",
            r.body
        );
    }
    let h = health();
    assert_eq!(h.status, 200, "{}", h.body);
    assert_eq!(h.json()["status"], "degraded", "{}", h.body);
    assert!(h.body.contains("the disk is full"), "{}", h.body);
    let metrics = get(&format!("{base}/metrics"), None).body;
    assert!(
        metrics.contains("\nlambda_database_writes_failing 1\n"),
        "{metrics}"
    );
    // Reads go on.
    let url = format!("{base}/api/lambda-instances/{}/", ids[1]);
    let r = get(&url, Some(TOKEN));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["data"][0]["status"]["message"], "STOPPED");
    assert_eq!(
        get(&format!("{base}/api/lambda-instances/"), Some(TOKEN)).status,
        200
    );

    // Room again: the health check's probe sees it, and actions are accepted.
    std::fs::remove_file(&filler).unwrap();
    wait_for("healthz to recover", || {
        (health().json()["status"] == "ok").then_some(())
    });
    let r = try_start(&base, &ids[1], Some("full-1"));
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(try_start(&base, &ids[2], None).status, 202);

    for id in &ids {
        let url = format!("{base}/api/lambda-instances/{id}/");
        let started = std::time::Instant::now();
        loop {
            let s = get(&url, Some(TOKEN)).json()["data"][0]["status"].clone();
            if s["message"] == "STARTED" {
                break;
            }
            assert!(started.elapsed() < DEADLINE, "{id}: {s}\n{}", served.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    drop(served);
}

/// Under systemd's Type=notify: READY=1 once /healthz answers, STOPPING=1 on SIGTERM.
#[test]
fn serve_tells_the_service_manager_when_it_is_ready_and_when_it_stops() {
    use std::os::unix::net::UnixDatagram;
    let sim = start_sim(Duration::from_millis(10));
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(DEADLINE))
        .expect("a read timeout");
    let astakos = sim.astakos_url();
    let mut env = sim_env(&astakos, "20");
    let notify = socket_path.to_str().unwrap();
    env.push(("NOTIFY_SOCKET", notify));
    let mut served = Served::start(dir.path(), &env);
    let mut buf = [0u8; 512];
    let n = socket.recv(&mut buf).expect("a notification");
    let said = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(said.starts_with("READY=1\n"), "{said:?}");
    assert!(
        said.contains(&format!("STATUS=listening on {}", served.base)),
        "{said:?}"
    );
    assert_eq!(get(&format!("{}/healthz", served.base), None).status, 200);
    assert!(served.signal_and_wait("TERM").success());
    let n = socket.recv(&mut buf).expect("a notification");
    assert_eq!(&buf[..n], b"STOPPING=1\n");
}
