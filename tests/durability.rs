use std::sync::{Arc, Barrier};
use std::time::Duration;

use lambda_api::model::Status;
use okeanos_sim::{Faults, Sim};
use serde_json::Value;

use crate::support::process::*;
use crate::support::*;

/// A simulator in this process and `lambda-api serve` as a child, over a database in `dir`.
struct Crash {
    sim: Sim,
    dir: tempfile::TempDir,
    env: Vec<(String, String)>,
    id: String,
}

impl Crash {
    fn new(transition: Duration, grace_secs: u64) -> Crash {
        let sim = start_sim(transition);
        let dir = tempfile::tempdir().unwrap();
        let env = restarted_env(&sim.astakos_url(), grace_secs);
        let mut c = Crash {
            sim,
            dir,
            env,
            id: String::new(),
        };
        c.id = add_demo_instance(c.dir.path(), &c.env());
        c
    }

    fn env(&self) -> Vec<(&str, &str)> {
        self.env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }

    fn serve(&self) -> Served {
        Served::start(self.dir.path(), &self.env())
    }

    /// Starts the instance on `served`; returns the action id.
    fn start(&self, served: &Served) -> String {
        let r = post_form(
            &format!("{}/api/lambda-instances/{}/", served.base, self.id),
            TOKEN,
            "start",
        );
        assert_eq!(r.status, 202, "{}", r.body);
        r.json()["data"][0]["id"].as_str().unwrap().to_string()
    }

    fn action(&self, served: &Served, action: &str) -> Value {
        get(
            &format!(
                "{}/api/lambda-instances/{}/actions/{action}/",
                served.base, self.id
            ),
            Some(TOKEN),
        )
        .json()
    }

    /// The accepted `start` calls, one (server) per call.
    fn starts(&self) -> Vec<String> {
        let calls = self.sim.calls();
        calls
            .into_iter()
            .filter(|c| c.op == "start")
            .map(|c| c.server.unwrap())
            .collect()
    }

    /// A restart on the same database finishes the job: the action ends succeeded, the
    /// instance is STARTED, every VM is ACTIVE, each VM was sent exactly one start (read before
    /// act), and there is still exactly one action.
    fn restart_and_check(&self, action: &str) {
        let served = self.serve();
        let done = wait_for("the action to end after the restart", || {
            let v = self.action(&served, action);
            (v["state"] == "succeeded" || v["state"] == "failed").then_some(v)
        });
        assert_eq!(done["state"], "succeeded", "{done}");
        let v = get(
            &format!("{}/api/lambda-instances/{}/", served.base, self.id),
            Some(TOKEN),
        )
        .json();
        assert_eq!(v["data"][0]["status"]["message"], "STARTED");
        for vm in [MASTER, SLAVES[0], SLAVES[1]] {
            assert_eq!(self.sim.vm_status(vm).as_deref(), Some("ACTIVE"), "VM {vm}");
        }
        let mut starts = self.starts();
        starts.sort();
        assert_eq!(
            starts,
            vec!["101", "102", "103"],
            "each VM started exactly once"
        );
        let history = get(
            &format!("{}/api/lambda-instances/{}/actions/", served.base, self.id),
            Some(TOKEN),
        )
        .json();
        assert_eq!(history["pagination"]["count"], 1, "{history}");
    }
}

#[test]
fn crash_right_after_the_202() {
    let c = Crash::new(Duration::from_millis(300), 0);
    let mut first = c.serve();
    let action = c.start(&first);
    first.kill9();
    c.restart_and_check(&action);
}

#[test]
fn crash_after_the_first_start_was_sent() {
    let c = Crash::new(Duration::from_millis(1500), 0);
    let mut first = c.serve();
    let action = c.start(&first);
    wait_for("the start of the first slave", || {
        c.starts().contains(&"102".to_string()).then_some(())
    });
    first.kill9();
    c.restart_and_check(&action);
}

#[test]
fn crash_while_polling_a_vm() {
    let c = Crash::new(Duration::from_millis(1500), 0);
    let mut first = c.serve();
    let action = c.start(&first);
    wait_for("two polls of the slaves after their start", || {
        let calls = c.sim.calls();
        let started = calls.iter().position(|x| x.op == "start")?;
        let polls = calls[started..].iter().filter(|x| x.op == "detail").count();
        (polls >= 2).then_some(())
    });
    first.kill9();
    c.restart_and_check(&action);
}

/// Calls on `vm` wait; once the run is stuck in one, the process is killed. The hold is
/// lifted and the held call lands (the simulator answers it to nobody) before the restart,
/// which must not send that VM its command again.
fn crash_with_a_call_held(vm: &str) {
    let c = Crash::new(Duration::from_millis(100), 0);
    c.sim.set_faults(Faults {
        hold: vec![vm.into()],
        ..Faults::default()
    });
    let mut first = c.serve();
    let action = c.start(&first);
    wait_for("the run to reach the held call", || {
        (c.sim.held_calls() > 0).then_some(())
    });
    first.kill9();
    c.sim.set_faults(Faults::default());
    wait_for("the held call to land", || {
        (c.sim.vm_status(vm).as_deref() != Some("STOPPED")).then_some(())
    });
    c.restart_and_check(&action);
}

/// Killed while the slaves' starts are being sent: the first slave has its start, the
/// second's is on its way.
#[test]
fn crash_with_some_slaves_started() {
    crash_with_a_call_held("103");
}

/// Killed between the phases: every slave is ACTIVE, the master's start is on its way.
#[test]
fn crash_between_the_phases() {
    crash_with_a_call_held(MASTER);
}

#[test]
fn sigterm_hands_the_running_action_back() {
    let c = Crash::new(Duration::from_secs(30), 1);
    let mut first = c.serve();
    let action = c.start(&first);
    wait_for("the first start", || {
        c.starts().contains(&"102".to_string()).then_some(())
    });
    let status = first.signal_and_wait("TERM");
    assert_eq!(status.code(), Some(0), "serve exits 0 on SIGTERM");
    // While it was down, the slaves (both started at once) finished starting; what is left
    // goes quickly.
    c.sim.set_vm_status("102", "ACTIVE");
    c.sim.set_vm_status("103", "ACTIVE");
    c.sim.set_transition(Duration::from_millis(20));
    let second = c.serve();
    let done = wait_for("the handed-back action to end", || {
        let v = c.action(&second, &action);
        (v["state"] == "succeeded").then_some(v)
    });
    assert_eq!(done["attempts"], 2, "taken up again by the second process");
}

#[test]
fn sigterm_lets_a_short_action_finish_within_the_grace() {
    let c = Crash::new(Duration::from_millis(200), 20);
    let mut first = c.serve();
    let action = c.start(&first);
    wait_for("the first start", || {
        c.starts().contains(&"102".to_string()).then_some(())
    });
    assert_eq!(first.signal_and_wait("TERM").code(), Some(0));
    let store = lambda_api::config::Config {
        database: c.dir.path().join("lambda-api.db"),
        ..Default::default()
    }
    .db()
    .open()
    .unwrap();
    let record = store.action(&c.id, &action).unwrap().unwrap();
    assert_eq!(
        record.state.name(),
        "succeeded",
        "finished before the process exited"
    );
}

#[test]
fn sigint_on_an_idle_service_exits_0() {
    let c = Crash::new(Duration::from_millis(10), 10);
    let mut served = c.serve();
    assert_eq!(get(&format!("{}/healthz", served.base), None).status, 200);
    assert_eq!(served.signal_and_wait("INT").code(), Some(0));
}

/// 32 clients accept actions while every worker records steps: with deferred transactions a
/// writer that upgrades its read lock gets SQLITE_BUSY at once, whatever the busy timeout.
#[test]
fn thirty_two_writers_and_the_workers_never_see_busy() {
    let h = Harness::with(Duration::from_millis(5), |c| {
        c.http_threads = 32;
        c.workers = 8;
        c.poll_interval_ms = 1;
    });
    h.log_in();
    let ids: Vec<String> = (0..32).map(|_| h.add_instance(Status::Stopped)).collect();
    for round in ["start", "stop"] {
        let barrier = Arc::new(Barrier::new(ids.len()));
        let threads: Vec<_> = ids
            .iter()
            .map(|id| {
                let (url, barrier) = (
                    h.url(&format!("/api/lambda-instances/{id}/")),
                    barrier.clone(),
                );
                std::thread::spawn(move || {
                    barrier.wait();
                    post_form(&url, TOKEN, round)
                })
            })
            .collect();
        for t in threads {
            let r = t.join().unwrap();
            assert_eq!(r.status, 202, "{round}: {}", r.body);
        }
        let want = if round == "start" {
            "STARTED"
        } else {
            "STOPPED"
        };
        for id in &ids {
            h.wait_status(id, want);
        }
    }
}

#[test]
fn no_token_in_the_files_once_the_action_ended() {
    let h = Harness::start(Duration::from_millis(20));
    let id = h.add_instance(Status::Stopped);
    assert_eq!(h.action(&id, "start").status, 202);
    h.wait_status(&id, "STARTED");
    let db = h.config.database.clone();
    let files = [
        db.clone(),
        db.with_extension("db-wal"),
        db.with_extension("db-shm"),
    ];
    use std::os::unix::fs::PermissionsExt;
    for f in &files {
        let mode = std::fs::metadata(f).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{} has mode {mode:o}", f.display());
    }
    // The worker truncates the WAL when it is next idle.
    wait_for("no copy of the token in the database files", || {
        let found = files.iter().any(|f| {
            let bytes = std::fs::read(f).unwrap_or_default();
            bytes.windows(TOKEN.len()).any(|w| w == TOKEN.as_bytes())
        });
        (!found).then_some(())
    });
}

/// Killed after a destroy's first delete went out: the restart finishes the destroy, and no
/// VM is deleted twice (a delete sent shows as a task under way, or the VM as gone).
#[test]
fn crash_during_a_destroy() {
    let c = Crash::new(Duration::from_millis(1500), 0);
    let mut first = c.serve();
    let url = format!("{}/api/lambda-instances/{}/", first.base, c.id);
    let r = delete(&url, &[("X-Auth-Token", TOKEN)]);
    assert_eq!(r.status, 202, "{}", r.body);
    wait_for("the first delete", || {
        c.sim.calls().iter().any(|x| x.op == "delete").then_some(())
    });
    first.kill9();
    let second = c.serve();
    let details = format!("{}/api/lambda-instances/{}/", second.base, c.id);
    wait_for("DESTROYED after the restart", || {
        let v = get(&details, Some(TOKEN)).json();
        (v["data"][0]["status"]["message"] == "DESTROYED").then_some(())
    });
    let calls = c.sim.calls();
    for vm in [MASTER, SLAVES[0], SLAVES[1]] {
        assert_eq!(c.sim.vm_status(vm).as_deref(), Some("DELETED"), "{vm}");
        let deletes = calls
            .iter()
            .filter(|x| x.op == "delete" && x.server.as_deref() == Some(vm))
            .count();
        assert_eq!(deletes, 1, "{vm} deleted more than once: {calls:?}");
    }
}
