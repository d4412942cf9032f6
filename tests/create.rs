//! Create (SPEC §5): the call and its checks, the build against the simulator, and a cluster
//! made by it that starts, stops and is destroyed like any other; the create form's reads.

use std::time::Duration;

use okeanos_sim::Faults;
use serde_json::{json, Value};

use crate::support::*;

/// The demo user's project in the shipped fixture.
pub const PROJECT: &str = "lambda.grnet.gr";
pub const PROJECT_ID: &str = "a1b2c3d4-0000-4000-8000-00000000000a";

/// A create of 1 master and `slaves` slaves, the smallest VMs, with `ip_allocation`.
pub fn asked(slaves: u64, ip_allocation: &str) -> Value {
    json!({"instance_name": "hadoop-1", "master_name": "hadoop-master", "project_name": PROJECT,
           "slaves": slaves, "vcpus_master": 2, "vcpus_slave": 2, "ram_master": 2048,
           "ram_slave": 2048, "disk_master": 10, "disk_slave": 10,
           "ip_allocation": ip_allocation, "public_key_name": ["laptop"]})
}

/// `POST {base}/api/lambda-instance/` with `body` and the demo token, and more headers.
pub fn create_at(base: &str, body: &Value, headers: &[(&str, &str)]) -> Resp {
    let auth = format!("Token {TOKEN}");
    let mut all = vec![("Authorization", auth.as_str())];
    all.extend_from_slice(headers);
    post(
        &format!("{base}/api/lambda-instance/"),
        &all,
        "application/json",
        body.to_string().as_bytes(),
    )
}

fn create(h: &Harness, body: &Value) -> Resp {
    create_at(&h.base, body, &[])
}

/// The new instance's id from a 202.
pub fn instance_of(r: &Resp) -> String {
    assert_eq!(r.status, 202, "{}", r.body);
    r.json()["data"][0]["id"].as_str().unwrap().to_string()
}

/// The calls of `op` the simulator answered 2xx.
pub fn made(h: &okeanos_sim::Sim, op: &str) -> usize {
    h.calls()
        .iter()
        .filter(|c| c.op == op && (200..300).contains(&c.status))
        .count()
}

fn destroy(h: &Harness, id: &str) -> Resp {
    delete(
        &h.url(&format!("/api/lambda-instances/{id}/")),
        &[("Authorization", &format!("Token {TOKEN}"))],
    )
}

#[test]
fn a_create_builds_the_cluster_that_then_starts_stops_and_is_destroyed() {
    let h = Harness::start(Duration::from_millis(100));
    let r = create(&h, &asked(2, "master"));
    let id = instance_of(&r);
    let v = r.json();
    assert_eq!(
        v["status"],
        json!({"code": 202, "short_description": "Your request to create a new lambda instance has been accepted"})
    );
    assert_eq!(
        v["data"][0]["links"]["self"],
        h.url(&format!("/api/lambda-instances/{id}"))
    );
    let location = r.header("location").unwrap().to_string();
    assert!(location.contains(&format!("/api/lambda-instances/{id}/actions/")));
    assert!(r.header("retry-after").is_some());
    // Readable at once, PENDING, with what was asked.
    let d = h
        .get(&format!("/api/lambda-instances/{id}/"), Some(TOKEN))
        .json();
    let d = &d["data"][0];
    assert_eq!(d["name"], "hadoop-1");
    assert!(matches!(
        d["status"]["message"].as_str(),
        Some("PENDING" | "STARTED")
    ));
    assert_eq!(d["info"]["instance_info"]["slaves"], 2);
    assert_eq!(d["info"]["instance_info"]["project_name"], PROJECT);

    h.wait_status(&id, "STARTED");
    let action = get(&location, Some(TOKEN)).json();
    assert_eq!(
        (&action["action"], &action["state"]),
        (&json!("create"), &json!("succeeded"))
    );
    let cluster = h.sim.made_for(&id);
    let slots: Vec<&str> = cluster.servers.iter().map(|(s, _, _)| s.as_str()).collect();
    assert_eq!(slots, ["0", "1", "2"], "{cluster:?}");
    assert!(cluster
        .servers
        .iter()
        .all(|(_, _, status)| status == "ACTIVE"));
    assert_eq!((cluster.networks.len(), cluster.subnets), (1, 1));
    assert_eq!(cluster.floating_ips.len(), 1, "the master's");
    for (op, n) in [
        ("create_network", 1),
        ("create_subnet", 1),
        ("create_floatingip", 1),
        ("create_server", 3),
    ] {
        assert_eq!(made(&h.sim, op), n, "{op}");
    }
    let d = h
        .get(&format!("/api/lambda-instances/{id}/"), Some(TOKEN))
        .json();
    let info = &d["data"][0]["info"];
    assert_eq!(
        info["instance_info"]["master_node_id"],
        cluster.servers[0].1
    );
    assert_eq!(info["slave_servers"].as_array().unwrap().len(), 2);

    // Like any other instance: stop, start, destroy.
    assert_eq!(h.action(&id, "stop").status, 202);
    h.wait_status(&id, "STOPPED");
    assert_eq!(h.action(&id, "start").status, 202);
    h.wait_status(&id, "STARTED");
    assert_eq!(destroy(&h, &id).status, 202);
    h.wait_status(&id, "DESTROYED");
    assert!(h.sim.made_for(&id).is_empty(), "{:?}", h.sim.made_for(&id));
    assert!(h.sim.floating_ips_of(USER).is_empty());
    assert!(h.sim.networks_of(USER).is_empty());
    assert_eq!(
        h.sim.usage(PROJECT_ID, USER),
        okeanos_sim::Limits::default()
    );
}

#[test]
fn the_original_path_and_the_plural_one_both_create() {
    let h = Harness::start(Duration::from_millis(20));
    let r = post(
        &h.url("/api/lambda-instances/"),
        &[("X-Auth-Token", TOKEN)],
        "application/json",
        asked(1, "none").to_string().as_bytes(),
    );
    let id = instance_of(&r);
    h.wait_status(&id, "STARTED");
    assert!(
        h.sim.made_for(&id).floating_ips.is_empty(),
        "ip_allocation none"
    );
    let all = create(&h, &asked(1, "all"));
    let id = instance_of(&all);
    h.wait_status(&id, "STARTED");
    assert_eq!(
        h.sim.made_for(&id).floating_ips.len(),
        2,
        "ip_allocation all"
    );
}

#[test]
fn every_invalid_field_is_refused_at_once_in_the_originals_words() {
    let h = Harness::start(Duration::from_millis(20));
    let r = create(
        &h,
        &json!({"slaves": 0, "vcpus_master": 3, "ip_allocation": "any"}),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    let errors = r.json()["errors"].as_array().unwrap().clone();
    let details: Vec<&str> = errors
        .iter()
        .map(|e| e["detail"][0].as_str().unwrap())
        .collect();
    assert!(
        details.contains(&"instance_name: This field is required."),
        "{details:?}"
    );
    assert!(
        details
            .contains(&"vcpus_master: Wrong Number of master vcpus, available choices [2, 4, 8]."),
        "{details:?}"
    );
    assert!(
        details.contains(&"ip_allocation: Wrong choice for ip_allocation, available choices ['none', 'master', 'all']."),
        "{details:?}"
    );
    assert_eq!(
        errors[0],
        json!({"message": "instance_name: This field is required.", "code": 400,
               "details": "invalid_field", "status": 400,
               "detail": ["instance_name: This field is required."]})
    );
    // Not JSON, or not an object: 400; another type: 415.
    for body in [&b"{"[..], b"[1]"] {
        let r = post(
            &h.url("/api/lambda-instance/"),
            &[("X-Auth-Token", TOKEN)],
            "application/json",
            body,
        );
        assert_eq!(r.status, 400, "{}", r.body);
    }
    let form = post(
        &h.url("/api/lambda-instance/"),
        &[("X-Auth-Token", TOKEN)],
        "text/plain",
        b"x",
    );
    assert_eq!(form.status, 415);
    // The project, the flavor, the quota, in that order, each before anything is made.
    let mut other = asked(1, "master");
    other["project_name"] = json!("old.grnet.gr");
    let r = create(&h, &other);
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json()["errors"][0]["detail"][0],
        "project_name: No such ~okeanos project for this user."
    );
    let mut no_flavor = asked(1, "master");
    for (k, v) in [
        ("vcpus_master", 8),
        ("ram_master", 8192),
        ("disk_master", 40),
    ] {
        no_flavor[k] = json!(v);
    }
    let r = create(&h, &no_flavor);
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.json()["errors"][0]["detail"][0]
        .as_str()
        .unwrap()
        .starts_with("flavor_master: "));
    let mut big = asked(1, "master");
    big["project_name"] = json!(format!("system:{USER}"));
    big["ram_slave"] = json!(4096);
    let r = create(&h, &big);
    assert_eq!(r.status, 409, "{}", r.body);
    assert_eq!(
        r.json()["errors"][0]["detail"],
        "Not enough ram quota in project system:1e9b2a3c-5d4f-4e6a-8b7c-9d0e1f2a3b4c: 6144 MiB asked, 4096 MiB left."
    );
    let mut no_key = asked(1, "master");
    no_key["public_key_name"] = json!(["nowhere"]);
    let r = create(&h, &no_key);
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json()["errors"][0]["detail"][0],
        "public_key_name: No such public key for this user: nowhere."
    );
    // No token: 401 before anything.
    let r = post(
        &h.url("/api/lambda-instance/"),
        &[],
        "application/json",
        b"{}",
    );
    assert_eq!(r.status, 401);
    let creates = h
        .sim
        .calls()
        .into_iter()
        .filter(|c| c.op.starts_with("create_"))
        .count();
    assert_eq!(creates, 0, "nothing is made for a refused request");
}

#[test]
fn a_retried_create_with_the_same_key_makes_one_cluster() {
    let h = Harness::start(Duration::from_millis(50));
    let key = [("Idempotency-Key", "create-1")];
    let first = create_at(&h.base, &asked(1, "master"), &key);
    let id = instance_of(&first);
    let again = create_at(&h.base, &asked(1, "master"), &key);
    assert_eq!(again.status, 202);
    assert_eq!(again.body, first.body);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    let other = create_at(&h.base, &asked(2, "master"), &key);
    assert_eq!(other.status, 422, "{}", other.body);
    h.wait_status(&id, "STARTED");
    assert_eq!(made(&h.sim, "create_server"), 2);
    let listed = h.get("/api/lambda-instances/", Some(TOKEN)).json();
    assert_eq!(listed["data"].as_array().unwrap().len(), 1);
}

/// A create that fails deletes what it made, VMs first, and leaves FAILED with the reason;
/// such an instance refuses a start or a stop, and is destroyed at once.
fn fails_and_leaves_nothing(
    tune: impl FnOnce(&Harness),
    config: impl FnOnce(&mut lambda_api::config::Config),
    accepted: impl FnOnce(&Harness),
    reason: &str,
) {
    let h = Harness::with(Duration::from_millis(300), config);
    tune(&h);
    let id = instance_of(&create(&h, &asked(2, "all")));
    accepted(&h);
    let status = h.wait_status(&id, "FAILED");
    let why = status["failure_message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(why.contains(reason), "{why:?} lacks {reason:?}");
    assert!(h.sim.made_for(&id).is_empty(), "{:?}", h.sim.made_for(&id));
    assert!(
        h.sim.floating_ips_of(USER).is_empty(),
        "{:?}",
        h.sim.floating_ips_of(USER)
    );
    assert!(h.sim.networks_of(USER).is_empty());
    assert_eq!(
        h.sim.usage(PROJECT_ID, USER),
        okeanos_sim::Limits::default(),
        "the quota is back"
    );
    h.sim.set_faults(Faults::default());
    for action in ["start", "stop"] {
        let r = h.action(&id, action);
        assert_eq!(r.status, 409, "{}", r.body);
        assert_eq!(
            r.json()["errors"][0]["detail"],
            "The lambda instance has no servers: its creation failed."
        );
    }
    assert_eq!(destroy(&h, &id).status, 202);
    h.wait_status(&id, "DESTROYED");
}

#[test]
fn a_vm_in_error_fails_the_create_and_leaves_nothing() {
    let faults = Faults {
        fall_into_error: true,
        ..Faults::default()
    };
    fails_and_leaves_nothing(|h| h.sim.set_faults(faults), |_| {}, |_| {}, "is ERROR");
}

#[test]
fn a_quota_raced_away_fails_the_create_and_leaves_nothing() {
    let faults = Faults {
        over_limit: vec!["create_server".into()],
        ..Faults::default()
    };
    fails_and_leaves_nothing(
        |h| h.sim.set_faults(faults),
        |_| {},
        |_| {},
        "413 overLimit",
    );
}

#[test]
fn a_permanent_fault_fails_the_create_and_leaves_nothing() {
    let faults = Faults {
        refuse: vec!["create_subnet".into()],
        ..Faults::default()
    };
    fails_and_leaves_nothing(
        |h| h.sim.set_faults(faults),
        |_| {},
        |_| {},
        "400 badRequest",
    );
}

#[test]
fn a_vm_that_never_builds_fails_the_create_and_leaves_nothing() {
    // The VMs take 30 s to build, and their deletes (sent after 1 s) a moment.
    fails_and_leaves_nothing(
        |h| h.sim.set_transition(Duration::from_secs(30)),
        |c| c.vm_wait_timeout_secs = 1,
        |h| {
            wait_for("three servers made", || {
                (made(&h.sim, "create_server") == 3).then_some(())
            });
            h.sim.set_transition(Duration::from_millis(100));
        },
        "did not become ACTIVE within 1 s",
    );
}

#[test]
fn a_destroy_during_a_create_supersedes_it_and_leaves_nothing() {
    let h = Harness::start(Duration::from_millis(200));
    h.sim.set_faults(Faults {
        hold: vec!["create_server".into()],
        ..Faults::default()
    });
    let id = instance_of(&create(&h, &asked(2, "master")));
    wait_for("a held server create", || {
        (h.sim.held_calls() > 0).then_some(())
    });
    for action in ["start", "stop"] {
        assert_eq!(
            h.action(&id, action).status,
            409,
            "PENDING refuses {action}"
        );
    }
    let r = destroy(&h, &id);
    assert_eq!(r.status, 202, "{}", r.body);
    h.sim.set_faults(Faults::default());
    let end = wait_for("the destroy to end", || {
        let s = h.status_of(&id);
        (s["message"] != "DESTROYING").then_some(s)
    });
    let history = h.get(&format!("/api/lambda-instances/{id}/actions/"), Some(TOKEN));
    assert_eq!(end["message"], "DESTROYED", "{}", history.body);
    // The create in flight may land one more server after the destroy took over: it is
    // deleted at once.
    wait_for("nothing left of the instance", || {
        h.sim.made_for(&id).is_empty().then_some(())
    });
    assert!(
        h.sim.floating_ips_of(USER).is_empty(),
        "{:?}",
        h.sim.floating_ips_of(USER)
    );
    assert!(h.sim.networks_of(USER).is_empty());
}

#[test]
fn the_create_forms_reads() {
    let h = Harness::start(Duration::from_millis(20));
    let v = h.get("/api/vm-parameter-values/", Some(TOKEN)).json();
    assert_eq!(
        v["status"],
        json!({"short_description": "Allowed values of parameters for creating a Lambda Instance", "code": 200})
    );
    assert_eq!(v["data"][0]["vcpus"], json!([1, 2, 4, 8]));
    assert_eq!(v["data"][0]["ram"], json!([1024, 2048, 4096, 8192]));
    assert_eq!(v["data"][0]["disk"], json!([5, 10, 20, 40]));
    let v = h.get("/api/user-okeanos-projects/", Some(TOKEN)).json();
    assert_eq!(v["status"]["short_description"], "~okeanos projects");
    let projects = v["data"].as_array().unwrap();
    assert_eq!(projects.len(), 2, "the active ones: {projects:?}");
    let p = projects.iter().find(|p| p["name"] == PROJECT).unwrap();
    assert_eq!(p["id"], PROJECT_ID);
    assert_eq!((&p["vm"], &p["cpu"]), (&json!(12), &json!(48)));
    assert_eq!(p["ram"], json!(48u64 << 30));
    for k in ["disk", "floating_ip", "private_network", "pithos_space"] {
        assert!(p[k].is_u64(), "{k}");
    }
    let v = h.get("/api/user-public-keys/", Some(TOKEN)).json();
    assert_eq!(
        v["status"]["short_description"],
        "Public keys uploaded to ~okeanos"
    );
    let names: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["laptop", "desktop"]);
    assert!(v["data"][0]["fingerprint"].is_string() && v["data"][0]["content"].is_string());
    for path in [
        "/api/vm-parameter-values/",
        "/api/user-okeanos-projects/",
        "/api/user-public-keys/",
    ] {
        assert_eq!(h.get(path, None).status, 401, "{path}");
    }
}
