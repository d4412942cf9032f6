use std::sync::{Arc, Barrier};
use std::time::Duration;

use lambda_api::model::Status;
use okeanos_sim::Faults;

use crate::support::*;

fn fast() -> Harness {
    Harness::start(Duration::from_millis(30))
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

#[test]
fn start_runs_slaves_then_master_and_stop_the_reverse() {
    let h = fast();
    let id = h.add_instance(Status::Stopped);
    assert_eq!(h.action(&id, "start").status, 202);
    h.wait_status(&id, "STARTED");
    for vm in ["101", "102", "103"] {
        assert_eq!(h.sim.vm_status(vm).as_deref(), Some("ACTIVE"));
    }
    assert_eq!(
        h.sim_actions(),
        pairs(&[("start", "102"), ("start", "103"), ("start", "101")])
    );

    assert_eq!(h.action(&id, "stop").status, 202);
    h.wait_status(&id, "STOPPED");
    assert_eq!(
        h.sim_actions()[3..].to_vec(),
        pairs(&[
            ("shutdown", "101"),
            ("shutdown", "102"),
            ("shutdown", "103")
        ])
    );
    for vm in ["101", "102", "103"] {
        assert_eq!(h.sim.vm_status(vm).as_deref(), Some("STOPPED"));
    }
}

#[test]
fn a_vm_already_there_is_skipped() {
    let h = fast();
    h.sim.set_vm_status("102", "ACTIVE");
    let id = h.add_instance(Status::Stopped);
    let r = h.action(&id, "start");
    let action = r.json()["data"][0]["id"].as_str().unwrap().to_string();
    let done = h.wait_action_done(&id, &action);
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(
        h.sim_actions(),
        pairs(&[("start", "103"), ("start", "101")])
    );
    let skipped: Vec<_> = done["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["vm"] == "102" && s["op"] == "start")
        .collect();
    assert_eq!(skipped.len(), 1);
    assert_eq!(skipped[0]["result"], "skipped: already ACTIVE");
    assert_eq!(done["attempts"], 1);
    assert!(done["finished_at"].is_string());
}

#[test]
fn quota_exceeded_fails_with_okeanos_message() {
    let h = fast();
    h.sim.set_faults(Faults {
        quota_exceeded: true,
        ..Faults::default()
    });
    let id = h.add_instance(Status::Stopped);
    let r = h.action(&id, "start");
    let action = r.json()["data"][0]["id"].as_str().unwrap().to_string();
    let status = h.wait_status(&id, "FAILED");
    let message = status["failure_message"].as_str().unwrap();
    assert!(
        message.starts_with("413 overLimit (Resource Limit Exceeded for your account.)"),
        "{message}"
    );
    let done = h.wait_action_done(&id, &action);
    assert_eq!(done["state"], "failed");
    assert_eq!(done["error"], message);
    // Failed at once: one try of the start, nothing after it.
    let starts = h.sim.calls().iter().filter(|c| c.op == "start").count();
    assert_eq!(starts, 1);
    // A FAILED instance can be started again once the quota allows.
    h.sim.set_faults(Faults::default());
    assert_eq!(h.action(&id, "start").status, 202);
    h.wait_status(&id, "STARTED");
}

#[test]
fn transient_faults_are_retried() {
    let h = fast();
    h.sim.set_faults(Faults {
        fail_next: 2,
        ..Faults::default()
    });
    let id = h.add_instance(Status::Stopped);
    assert_eq!(h.action(&id, "start").status, 202);
    h.wait_status(&id, "STARTED");
    let answered: Vec<u16> = h
        .sim
        .calls()
        .iter()
        .filter(|c| c.op != "tokens")
        .map(|c| c.status)
        .collect();
    assert_eq!(&answered[..3], &[503, 503, 200], "{answered:?}");
}

#[test]
fn too_many_transient_faults_fail_the_action() {
    let h = Harness::with(Duration::from_millis(30), |c| c.max_attempts = 3);
    h.sim.set_faults(Faults {
        fail_next: 3,
        ..Faults::default()
    });
    let id = h.add_instance(Status::Stopped);
    assert_eq!(h.action(&id, "start").status, 202);
    let status = h.wait_status(&id, "FAILED");
    assert!(
        status["failure_message"]
            .as_str()
            .unwrap()
            .starts_with("503 serviceUnavailable"),
        "{status}"
    );
}

#[test]
fn a_vm_that_never_arrives_fails_after_the_wait_timeout() {
    let h = Harness::with(Duration::from_secs(600), |c| c.vm_wait_timeout_secs = 1);
    let id = h.add_instance(Status::Stopped);
    assert_eq!(h.action(&id, "start").status, 202);
    let status = h.wait_status(&id, "FAILED");
    assert_eq!(
        status["failure_message"],
        "server 102 did not become ACTIVE within 1 s (last status STOPPED (task STARTING))"
    );
}

#[test]
fn identity_down_is_503_never_401() {
    let h = fast();
    let id = h.add_instance(Status::Stopped);
    h.sim.set_faults(Faults {
        identity_down: true,
        ..Faults::default()
    });
    let r = h.action(&id, "start");
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(r.header("retry-after").is_some());
    assert_eq!(r.json()["errors"][0]["details"], "service_unavailable");
    // Nothing was cached: once identity is back, the same token works.
    h.sim.set_faults(Faults::default());
    assert_eq!(h.action(&id, "start").status, 202);
}

#[test]
fn identity_unreachable_is_503() {
    let h = Harness::with(Duration::from_millis(30), |c| {
        // Nothing listens on port 9 of loopback (discard is not run here).
        c.astakos_url = "http://127.0.0.1:9/identity/v2.0".into();
    });
    let id = h.add_instance(Status::Stopped);
    let r = h.action(&id, "start");
    assert_eq!(r.status, 503, "{}", r.body);
}

#[test]
fn forty_concurrent_starts_make_one_action() {
    let h = Harness::start(Duration::from_millis(200));
    h.log_in();
    let id = h.add_instance(Status::Stopped);
    let url = h.url(&format!("/api/lambda-instances/{id}/"));
    let barrier = Arc::new(Barrier::new(40));
    let threads: Vec<_> = (0..40)
        .map(|_| {
            let (url, barrier) = (url.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                post_form(&url, TOKEN, "start")
            })
        })
        .collect();
    let answers: Vec<Resp> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let mut ids: Vec<String> = answers
        .iter()
        .map(|r| {
            assert_eq!(r.status, 202, "{}", r.body);
            r.json()["data"][0]["id"].as_str().unwrap().to_string()
        })
        .collect();
    ids.dedup();
    assert_eq!(ids.len(), 1, "more than one action: {ids:?}");
    h.wait_status(&id, "STARTED");
    assert_eq!(
        h.sim_actions(),
        pairs(&[("start", "102"), ("start", "103"), ("start", "101")])
    );
}

#[test]
fn the_token_is_gone_when_the_action_ends() {
    let h = fast();
    let id = h.add_instance(Status::Stopped);
    assert_eq!(h.action(&id, "start").status, 202);
    h.wait_status(&id, "STARTED");
    let db = h.config.database.clone();
    // Checkpoint so that the main file holds everything, then read every file's bytes.
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .unwrap();
    let live: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM actions WHERE token IS NOT NULL",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(live, 0);
    drop(conn);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&db).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "database mode {mode:o}");
}
