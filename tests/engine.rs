//! The action engine: phases at once, waits that hold no thread, many actions per worker.

use std::time::{Duration, Instant};

use lambda_api::model::Status;
use okeanos_sim::Call;

use crate::support::*;

/// The accepted `op` calls of the simulator, by server, with their times.
fn accepted(h: &Harness, op: &str) -> Vec<(String, i64)> {
    h.sim
        .calls()
        .into_iter()
        .filter(|c: &Call| c.op == op && c.status < 300)
        .map(|c| (c.server.unwrap_or_default(), c.at_ms))
        .collect()
}

fn at(calls: &[(String, i64)], vm: &str) -> i64 {
    calls
        .iter()
        .find(|(s, _)| s == vm)
        .unwrap_or_else(|| panic!("no call for {vm}: {calls:?}"))
        .1
}

/// A start sends every slave its start together, and the master its own only once every
/// slave has had the time to become ACTIVE; a stop is the mirror.
#[test]
fn start_sends_the_slaves_together_then_the_master_and_stop_mirrors_it() {
    let transition = Duration::from_millis(400);
    let h = Harness::with_fixture(fixture_with_vms(5), transition, |_| {});
    let slaves = ["v1", "v2", "v3", "v4"];
    let id = h.add_cluster(USER, "v0", &slaves, Status::Stopped);
    let t = transition.as_millis() as i64;

    assert_eq!(h.action(&id, "start").status, 202);
    h.wait_status(&id, "STARTED");
    let starts = accepted(&h, "start");
    assert_eq!(starts.len(), 5, "{starts:?}");
    let first = slaves.iter().map(|s| at(&starts, s)).min().unwrap();
    let last = slaves.iter().map(|s| at(&starts, s)).max().unwrap();
    assert!(
        last - first < t,
        "slave starts not sent together: {starts:?}"
    );
    // The simulator stamps a call just after it took it: a few ms of slack.
    assert!(
        at(&starts, "v0") >= last + t - 5,
        "the master started before every slave was ACTIVE: {starts:?}"
    );

    assert_eq!(h.action(&id, "stop").status, 202);
    h.wait_status(&id, "STOPPED");
    let stops = accepted(&h, "shutdown");
    assert_eq!(stops.len(), 5, "{stops:?}");
    let master = at(&stops, "v0");
    let first = slaves.iter().map(|s| at(&stops, s)).min().unwrap();
    let last = slaves.iter().map(|s| at(&stops, s)).max().unwrap();
    assert!(
        first >= master + t - 5,
        "a slave stopped before the master was STOPPED: {stops:?}"
    );
    assert!(
        last - first < t,
        "slave shutdowns not sent together: {stops:?}"
    );
}

/// The steps show the phases and what each VM did.
#[test]
fn the_steps_show_the_phases() {
    let h = Harness::start(Duration::from_millis(30));
    let id = h.add_instance(Status::Stopped);
    let r = h.action(&id, "start");
    let action = r.json()["data"][0]["id"].as_str().unwrap().to_string();
    let done = h.wait_action_done(&id, &action);
    let phases: Vec<(String, String)> = done["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["op"] == "phase")
        .map(|s| {
            (
                s["vm"].as_str().unwrap().into(),
                s["result"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        phases,
        vec![
            ("102,103".to_string(), "start 2 slaves".to_string()),
            ("101".to_string(), "start the master".to_string())
        ]
    );
}

/// One worker drives 30 actions at once: the waits hold no thread, so they all end in about
/// the time one takes (two transitions), not thirty times that.
#[test]
fn one_worker_drives_thirty_actions_at_once() {
    let transition = Duration::from_millis(500);
    let h = Harness::with_fixture(fixture_with_vms(90), transition, |c| {
        c.workers = 1;
        c.poll_interval_ms = 50;
    });
    let ids: Vec<String> = (0..30)
        .map(|i| {
            let vms: Vec<String> = (0..3).map(|k| format!("v{}", i * 3 + k)).collect();
            h.add_cluster(USER, &vms[0], &[&vms[1], &vms[2]], Status::Stopped)
        })
        .collect();
    let started = Instant::now();
    for id in &ids {
        assert_eq!(h.action(id, "start").status, 202);
    }
    for id in &ids {
        h.wait_status(id, "STARTED");
    }
    let took = started.elapsed();
    // One after the other would take 30 × 2 transitions = 30 s.
    assert!(
        took < transition * 2 * 5,
        "30 actions took {took:?} on one worker"
    );
    assert_eq!(accepted(&h, "start").len(), 90);
}

/// One slave of four falls into ERROR: the action fails with that VM's reason at once, the
/// starts already sent are not undone, the master is never started, and the steps say what
/// each VM did.
#[test]
fn a_fault_in_one_slave_of_many_fails_the_action_with_its_reason() {
    let h = Harness::with_fixture(fixture_with_vms(5), Duration::from_millis(2000), |_| {});
    let id = h.add_cluster(USER, "v0", &["v1", "v2", "v3", "v4"], Status::Stopped);
    let r = h.action(&id, "start");
    let action = r.json()["data"][0]["id"].as_str().unwrap().to_string();
    wait_for("every slave's start", || {
        (accepted(&h, "start").len() == 4).then_some(())
    });
    h.sim.set_vm_status("v3", "ERROR");
    let status = h.wait_status(&id, "FAILED");
    assert_eq!(
        status["failure_message"],
        "server v3 is ERROR; cannot start"
    );
    let done = h.wait_action_done(&id, &action);
    assert_eq!(done["state"], "failed");
    let steps = done["steps"].as_array().unwrap();
    for slave in ["v1", "v2", "v3", "v4"] {
        assert!(
            steps
                .iter()
                .any(|s| s["vm"] == slave && s["op"] == "start" && s["result"] == "accepted"),
            "{slave}: {done}"
        );
    }
    let starts = accepted(&h, "start");
    assert!(
        starts.iter().all(|(vm, _)| vm != "v0"),
        "the master was started: {starts:?}"
    );
}

/// Waiting VMs are read with one listing per owner, not one call per VM per poll.
#[test]
fn polls_read_every_vm_of_an_owner_in_one_call() {
    let h = Harness::with_fixture(fixture_with_vms(5), Duration::from_millis(300), |c| {
        c.poll_interval_ms = 50;
    });
    let id = h.add_cluster(USER, "v0", &["v1", "v2", "v3", "v4"], Status::Stopped);
    assert_eq!(h.action(&id, "start").status, 202);
    h.wait_status(&id, "STARTED");
    let calls = h.sim.calls();
    let reads = calls.iter().filter(|c| c.op == "status").count();
    let lists = calls.iter().filter(|c| c.op == "detail").count();
    assert_eq!(reads, 0, "a VM was read alone");
    // 5 VMs, two transitions of 300 ms polled from 50 ms growing by a fifth: a few lists.
    assert!((2..=20).contains(&lists), "{lists} listings");
    let per_vm = (calls.len() as f64) / 5.0;
    assert!(per_vm <= 5.0, "{per_vm} calls per VM: {calls:?}");
}
