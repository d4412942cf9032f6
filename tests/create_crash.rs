//! A create killed (`kill -9`) at every point between two of its calls, with the call in
//! flight landing on ~okeanos after the kill (the worst case: a `POST` that made its thing,
//! and nobody to record it), then taken up by a new process: it ends with exactly the
//! network, subnet, floating IP and VMs asked for, each made once.

use std::time::Duration;

use okeanos_sim::{Faults, Sim};

use crate::create::{asked, create_at, instance_of, made};
use crate::support::process::*;
use crate::support::*;

/// A simulator in this process, and `lambda-api serve` as a child over a database in `dir`.
struct Crash {
    sim: Sim,
    dir: tempfile::TempDir,
    env: Vec<(String, String)>,
}

impl Crash {
    fn new() -> Crash {
        let sim = start_sim(Duration::from_millis(200));
        let env = restarted_env(&sim.astakos_url(), 0);
        Crash {
            sim,
            dir: tempfile::tempdir().unwrap(),
            env,
        }
    }

    fn serve(&self) -> Served {
        let env: Vec<(&str, &str)> = (self.env.iter())
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        Served::start(self.dir.path(), &env)
    }

    fn hold(&self, op: &str) {
        self.sim.set_faults(Faults {
            hold: vec![op.into()],
            ..Faults::default()
        });
    }

    /// Restarts on the same database and checks the cluster is whole, each thing made once.
    fn restart_and_check(&self, id: &str) {
        let served = self.serve();
        let details = format!("{}/api/lambda-instances/{id}/", served.base);
        let status = wait_for("the create to end after the restart", || {
            let v = get(&details, Some(TOKEN)).json();
            let s = v["data"][0]["status"].clone();
            (s["message"] != "PENDING").then_some(s)
        });
        assert_eq!(status["message"], "STARTED", "{status}");
        let cluster = self.sim.made_for(id);
        let slots: Vec<&str> = (cluster.servers.iter())
            .map(|(s, _, _)| s.as_str())
            .collect();
        assert_eq!(slots, ["0", "1", "2"], "one VM a slot: {cluster:?}");
        assert_eq!(
            (cluster.networks.len(), cluster.subnets),
            (1, 1),
            "{cluster:?}"
        );
        assert_eq!(cluster.floating_ips.len(), 1, "{cluster:?}");
        for (op, n) in [
            ("create_network", 1),
            ("create_subnet", 1),
            ("create_floatingip", 1),
            ("create_server", 3),
        ] {
            assert_eq!(made(&self.sim, op), n, "{op} made once each");
        }
        assert_eq!(self.sim.networks_of(USER).len(), 1, "no network left over");
        assert_eq!(
            self.sim.floating_ips_of(USER).len(),
            1,
            "no floating IP left over"
        );
    }
}

/// Calls of `op` wait; once the create is stuck in one, the process is killed; the hold is
/// lifted and the held call lands before the restart.
fn crash_in(op: &str) {
    let c = Crash::new();
    c.hold(op);
    let mut first = c.serve();
    let id = instance_of(&create_at(&first.base, &asked(2, "master"), &[]));
    wait_for("the create to reach the held call", || {
        (c.sim.held_calls() > 0).then_some(())
    });
    first.kill9();
    c.sim.set_faults(Faults::default());
    wait_for("the held call to land", || {
        (c.sim.held_calls() == 0).then_some(())
    });
    c.restart_and_check(&id);
}

#[test]
fn crash_right_after_the_202() {
    let c = Crash::new();
    let mut first = c.serve();
    let id = instance_of(&create_at(&first.base, &asked(2, "master"), &[]));
    first.kill9();
    c.restart_and_check(&id);
}

#[test]
fn crash_while_looking_for_the_network() {
    crash_in("networks");
}

#[test]
fn crash_while_making_the_network() {
    crash_in("create_network");
}

#[test]
fn crash_while_looking_for_the_subnet() {
    crash_in("subnets");
}

#[test]
fn crash_while_making_the_subnet() {
    crash_in("create_subnet");
}

#[test]
fn crash_while_looking_for_a_free_floating_ip() {
    crash_in("floatingips");
}

#[test]
fn crash_while_making_the_floating_ip() {
    crash_in("create_floatingip");
}

#[test]
fn crash_while_listing_the_servers_before_making_them() {
    crash_in("detail");
}

#[test]
fn crash_while_making_the_servers() {
    crash_in("create_server");
}

/// Killed while the VMs build: every server is made, and the create waits for them.
#[test]
fn crash_while_the_vms_build() {
    let c = Crash::new();
    c.sim.set_transition(Duration::from_secs(2));
    let mut first = c.serve();
    let id = instance_of(&create_at(&first.base, &asked(2, "master"), &[]));
    wait_for("three servers made", || {
        (made(&c.sim, "create_server") == 3).then_some(())
    });
    c.hold("detail");
    wait_for("a poll of the servers", || {
        (c.sim.held_calls() > 0).then_some(())
    });
    first.kill9();
    c.sim.set_faults(Faults::default());
    c.restart_and_check(&id);
}
