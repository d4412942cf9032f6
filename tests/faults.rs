//! A misbehaving ~okeanos, through the simulator's fault injection. Every case ends with the
//! instance in a terminal status: never left STARTING or STOPPING.

use std::time::Duration;

use lambda_api::model::Status;
use okeanos_sim::Faults;
use serde_json::Value;

use crate::support::*;

fn with_faults(
    faults: Faults,
    tune: impl FnOnce(&mut lambda_api::config::Config),
) -> (Harness, String) {
    let h = Harness::with(Duration::from_millis(30), tune);
    h.sim.set_faults(faults);
    let id = h.add_instance(Status::Stopped);
    (h, id)
}

fn start(h: &Harness, id: &str) -> String {
    let r = h.action(id, "start");
    assert_eq!(r.status, 202, "{}", r.body);
    r.json()["data"][0]["id"].as_str().unwrap().to_string()
}

/// The results of an action's steps on VMs (the phase steps left out).
fn results(action: &Value) -> Vec<String> {
    action["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["op"] != "phase")
        .map(|s| s["result"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn latency_spikes_are_waited_out() {
    let (h, id) = with_faults(
        Faults {
            latency_ms: 150,
            ..Faults::default()
        },
        |_| {},
    );
    start(&h, &id);
    h.wait_status(&id, "STARTED");
}

/// Two faults in a row are retried: the action succeeds and shows both tries in its steps.
fn retried_twice(faults: Faults, result_prefix: &str) {
    let (h, id) = with_faults(faults, |_| {});
    let action = start(&h, &id);
    h.wait_status(&id, "STARTED");
    let done = h.wait_action_done(&id, &action);
    let retried = results(&done)
        .iter()
        .filter(|r| r.starts_with(result_prefix))
        .count();
    assert_eq!(retried, 2, "{done}");
}

#[test]
fn build_in_progress_is_retried() {
    retried_twice(
        Faults {
            conflict_next: 2,
            ..Faults::default()
        },
        "409 buildInProgress",
    );
}

#[test]
fn connection_resets_are_retried() {
    retried_twice(
        Faults {
            reset_next: 2,
            ..Faults::default()
        },
        "no answer",
    );
}

#[test]
fn a_call_hanging_past_the_timeout_is_retried() {
    let (h, id) = with_faults(
        Faults {
            hang_next: 1,
            hang_ms: 2500,
            ..Faults::default()
        },
        |c| c.okeanos_timeout_secs = 1,
    );
    let action = start(&h, &id);
    h.wait_status(&id, "STARTED");
    let done = h.wait_action_done(&id, &action);
    let first = &results(&done)[0];
    assert!(
        first.starts_with("no answer") && first.contains("retrying"),
        "{done}"
    );
}

#[test]
fn an_expired_token_mid_action_fails_it_clearly() {
    let h = Harness::start(Duration::from_millis(300));
    let id = h.add_instance(Status::Stopped);
    start(&h, &id);
    wait_for("the first start", || h.sim_actions().first().map(|_| ()));
    h.sim.revoke_token(TOKEN);
    let status = wait_for("FAILED", || {
        let r = get(&h.url(&format!("/api/lambda-instances/{id}/")), Some(TOKEN));
        // The service still knows the token from its cache; ~okeanos no longer does.
        let s = r.json()["data"][0]["status"].clone();
        (s["message"] == "FAILED").then_some(s)
    });
    let message = status["failure_message"].as_str().unwrap();
    assert!(
        message.starts_with("401 unauthorized (Invalid token)"),
        "{message}"
    );
}

#[test]
fn a_vm_stuck_in_build_fails_after_the_wait() {
    let h = Harness::with(Duration::from_millis(30), |c| c.vm_wait_timeout_secs = 1);
    h.sim.set_vm_status("102", "BUILD");
    let id = h.add_instance(Status::Stopped);
    start(&h, &id);
    let status = h.wait_status(&id, "FAILED");
    assert_eq!(
        status["failure_message"],
        "server 102 did not become ACTIVE within 1 s (last status BUILD)"
    );
    // The other slave was started with it, as in the original; the master never was.
    assert_eq!(
        h.sim_actions(),
        vec![("start".to_string(), "103".to_string())],
        "nothing is sent to a VM being built"
    );
}

#[test]
fn a_vm_falling_into_error_fails_at_once() {
    let (h, id) = with_faults(
        Faults {
            fall_into_error: true,
            ..Faults::default()
        },
        |c| c.vm_wait_timeout_secs = 600,
    );
    start(&h, &id);
    let status = h.wait_status(&id, "FAILED");
    // Both slaves were started at once and both fall into ERROR: whichever is read first
    // fails the action, and the master is never started.
    let message = status["failure_message"].as_str().unwrap();
    assert!(
        ["102", "103"]
            .iter()
            .any(|vm| message == format!("server {vm} is ERROR; cannot start")),
        "{message}"
    );
    assert!(h.sim_actions().iter().all(|(_, vm)| vm != "101"));
}

#[test]
fn stop_failures_leave_failed_not_stopping() {
    let h = Harness::start(Duration::from_millis(30));
    for vm in [MASTER, SLAVES[0], SLAVES[1]] {
        h.sim.set_vm_status(vm, "ACTIVE");
    }
    let id = h.add_instance(Status::Started);
    h.sim.set_faults(Faults {
        error_rate: 1.0,
        ..Faults::default()
    });
    assert_eq!(h.action(&id, "stop").status, 202);
    let status = h.wait_status(&id, "FAILED");
    assert!(status["failure_message"]
        .as_str()
        .unwrap()
        .starts_with("503 serviceUnavailable"));
}

/// The pauses between tries double, each within its ±50 % jitter.
#[test]
fn retries_back_off() {
    let (h, id) = with_faults(
        Faults {
            fail_next: 4,
            ..Faults::default()
        },
        |c| {
            c.retry_base_ms = 60;
            c.max_attempts = 6;
        },
    );
    start(&h, &id);
    h.wait_status(&id, "STARTED");
    let times: Vec<i64> = h
        .sim
        .calls()
        .iter()
        .filter(|c| c.op == "detail")
        .take(5)
        .map(|c| c.at_ms)
        .collect();
    let gaps: Vec<i64> = times.windows(2).map(|w| w[1] - w[0]).collect();
    for (i, gap) in gaps.iter().enumerate() {
        let nominal = 60 << i;
        assert!(
            *gap >= nominal / 2,
            "gap {i} is {gap} ms, nominal {nominal}: {gaps:?}"
        );
        // Generous above: a loaded machine only ever makes the pause longer.
        assert!(
            *gap <= nominal * 3 / 2 + 250,
            "gap {i} is {gap} ms, nominal {nominal}: {gaps:?}"
        );
    }
    assert!(gaps[3] > gaps[0], "no back-off: {gaps:?}");
}
