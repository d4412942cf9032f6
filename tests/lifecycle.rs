//! Destroy (SPEC §4), and the calls the original Lambda-on-Demand's web UI and scripts make
//! (SPEC §1 "Compatibility"), byte for byte, reading the fields those clients read.

use std::time::Duration;

use lambda_api::model::Status;
use lambda_api::store::NewInstance;
use serde_json::{json, Value};

use crate::support::*;

/// A STARTED cluster of 1 + 2 VMs with the demo user's network and floating IP.
fn cluster(h: &Harness) -> String {
    for vm in ["v0", "v1", "v2"] {
        h.sim.set_vm_status(vm, "ACTIVE");
    }
    h.add_new(NewInstance {
        name: "doomed".into(),
        owner: USER.into(),
        master: "v0".into(),
        slaves: vec!["v1".into(), "v2".into()],
        status: Status::Started,
        network: Some("net-1".into()),
        floating_ips: vec!["ip-1".into()],
    })
}

fn destroy(h: &Harness, id: &str) -> Resp {
    delete(
        &h.url(&format!("/api/lambda-instances/{id}/")),
        &[("Authorization", &format!("Token {TOKEN}"))],
    )
}

/// Every VM deleted at once; once all are gone, the floating IP and the network; then
/// DESTROYED, kept for reference, neither listed nor counted, refusing everything.
#[test]
fn destroy_deletes_the_vms_then_the_network_and_keeps_the_record() {
    let transition = Duration::from_millis(300);
    let h = Harness::with_fixture(fixture_with_vms(3), transition, |_| {});
    let id = cluster(&h);
    let r = destroy(&h, &id);
    assert_eq!(r.status, 202, "{}", r.body);
    let v = r.json();
    assert_eq!(
        v["status"],
        json!({"code": 202, "short_description": "Your request to destroy the specified lambda instance has been accepted"})
    );
    let action = v["data"][0]["id"].as_str().unwrap().to_string();
    assert_eq!(r.header("location"), v["data"][0]["links"]["self"].as_str());
    assert!(r.header("retry-after").is_some());
    assert_eq!(h.status_of(&id)["message"], "DESTROYING");
    // A second DELETE while it runs is the same action.
    let again = destroy(&h, &id);
    assert_eq!(again.status, 202);
    assert_eq!(again.json()["data"][0]["id"], action);

    let done = h.wait_action_done(&id, &action);
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["action"], "destroy");
    let status = h.status_of(&id);
    assert_eq!(status["message"], "DESTROYED");
    assert_eq!(status["detail"], "Lambda instance has been destroyed");
    for vm in ["v0", "v1", "v2"] {
        assert_eq!(h.sim.vm_status(vm).as_deref(), Some("DELETED"), "{vm}");
    }
    assert!(!h.sim.resource_exists("networks", "net-1"));
    assert!(!h.sim.resource_exists("floatingips", "ip-1"));

    // The order at the simulator: the VMs' deletes together, the network's after the VMs
    // were gone.
    let calls = h.sim.calls();
    let at = |op: &str, id: &str| {
        calls
            .iter()
            .find(|c| c.op == op && c.server.as_deref() == Some(id) && c.status < 300)
            .unwrap_or_else(|| panic!("no {op} of {id}: {calls:?}"))
            .at_ms
    };
    let deletes: Vec<i64> = ["v0", "v1", "v2"].iter().map(|v| at("delete", v)).collect();
    let last = *deletes.iter().max().unwrap();
    let t = transition.as_millis() as i64;
    assert!(last - deletes.iter().min().unwrap() < t, "{calls:?}");
    // The simulator stamps a call just after it took it: a few ms of slack.
    assert!(
        at("delete_floatingips", "ip-1") >= last + t - 5,
        "{calls:?}"
    );
    assert!(at("delete_networks", "net-1") >= last + t - 5, "{calls:?}");

    // Kept for reference: details answer, the list and the count leave it out.
    let list = h.get("/api/lambda-instances/", Some(TOKEN)).json();
    assert!(list["data"]
        .as_array()
        .unwrap()
        .iter()
        .all(|i| i["id"] != json!(id)));
    let count = h.get("/api/lambda-instances/count/", Some(TOKEN)).json();
    assert_eq!(count["data"][0]["count"], 0);
    let r = destroy(&h, &id);
    assert_eq!(r.status, 409);
    assert_eq!(
        r.json()["errors"][0]["detail"],
        "The specified lambda instance is already destroyed."
    );
    assert_eq!(h.action(&id, "start").status, 409);
}

/// A VM already deleted and a network already gone count as done.
#[test]
fn destroy_counts_what_is_already_gone_as_done() {
    let h = Harness::with_fixture(fixture_with_vms(3), Duration::from_millis(30), |_| {});
    let id = cluster(&h);
    h.sim.set_vm_status("v1", "DELETED");
    let id2 = h.add_new(NewInstance {
        name: "no-network".into(),
        owner: USER.into(),
        master: "v2".into(),
        slaves: vec![],
        status: Status::Failed,
        network: Some("net-gone".into()),
        floating_ips: Vec::new(),
    });
    for id in [&id, &id2] {
        let r = destroy(&h, id);
        assert_eq!(r.status, 202, "{}", r.body);
        let action = r.json()["data"][0]["id"].as_str().unwrap().to_string();
        let done = h.wait_action_done(id, &action);
        assert_eq!(done["state"], "succeeded", "{done}");
        assert_eq!(h.status_of(id)["message"], "DESTROYED");
    }
}

/// No destroy while a start or a stop runs.
#[test]
fn destroy_while_starting_is_409() {
    let h = Harness::start(Duration::from_secs(60));
    let id = h.add_instance(Status::Stopped);
    assert_eq!(h.action(&id, "start").status, 202);
    let r = destroy(&h, &id);
    assert_eq!(r.status, 409, "{}", r.body);
    let e = &r.json()["errors"][0];
    assert_eq!(
        e["detail"],
        "Can't destroy a lambda instance while lambda instance status is STARTING."
    );
    assert_eq!(e["status"], 409);
}

/// A failure leaves the instance FAILED with the reason: here the token expires after the
/// service cached it, so the 202 is given and every ~okeanos call is refused.
#[test]
fn a_destroy_that_fails_leaves_failed_with_the_reason() {
    let h = Harness::with_fixture(fixture_with_vms(3), Duration::from_millis(30), |_| {});
    let id = cluster(&h);
    assert_eq!(h.get("/api/authenticate/", Some(TOKEN)).status, 200);
    h.sim.revoke_token(TOKEN);
    let r = destroy(&h, &id);
    assert_eq!(r.status, 202, "{}", r.body);
    let status = h.wait_status(&id, "FAILED");
    let m = status["failure_message"].as_str().unwrap();
    assert!(m.starts_with("401 unauthorized (Invalid token)"), "{m}");
    assert_eq!(h.sim.vm_status("v0").as_deref(), Some("ACTIVE"));
}

/// The calls of the original's web UI and scripts, as they send them.
#[test]
fn the_original_clients_calls() {
    let h = Harness::start(Duration::from_millis(30));
    let id = h.add_instance(Status::Stopped);
    let auth = [("Authorization", format!("Token {TOKEN}"))];
    let auth: Vec<(&str, &str)> = auth.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let get = |path: &str| -> Value {
        let mut req = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .proxy(None)
            .build()
            .new_agent()
            .get(&h.url(path));
        for (k, v) in &auth {
            req = req.header(*k, *v);
        }
        let mut r = req.call().unwrap();
        assert_eq!(r.status().as_u16(), 200, "{path}");
        serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap()
    };
    // Login: no trailing slash; reads data.name.
    assert_eq!(get("/api/authenticate")["data"]["name"], "demo@example.org");
    // The list and the count.
    let list = get("/api/lambda-instances/?limit=10&offset=0");
    let item = &list["data"][0];
    assert_eq!(item["id"], json!(id));
    assert_eq!(item["name"], "demo");
    assert_eq!(item["status"]["message"], "STOPPED");
    assert_eq!(item["status"]["code"], "1");
    assert_eq!(item["running_app"], false);
    assert_eq!(get("/api/lambda-instances/count/")["data"][0]["count"], 1);
    // The details page: the record's id from info.id.
    let details = get(&format!("/api/lambda-instances/{id}/"));
    let d = &details["data"][0];
    assert_eq!(d["info"]["id"], json!(id));
    assert_eq!(d["info"]["name"], "demo");
    assert!(d["info"]["instance_info"].is_object());
    assert_eq!(d["applications"], json!([]));
    assert!(d["status"].get("failure_message").is_none());
    // Start, as the web UI sends it: JSON.
    let url = h.url(&format!("/api/lambda-instances/{id}/"));
    let r = post(&url, &auth, "application/json", br#"{"action":"start"}"#);
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(
        r.json()["status"]["short_description"],
        "Your request has been accepted"
    );
    // The script polls the details until STARTED.
    h.wait_status(&id, "STARTED");
    // An error the UI shows (errors[i].detail) and branches on (errors[0].status).
    let r = post(&url, &auth, "application/json", br#"{"action":"start"}"#);
    assert_eq!(r.status, 409);
    let e = &r.json()["errors"][0];
    assert_eq!(e["status"], 409);
    assert_eq!(
        e["detail"],
        "The specified lambda instance is already started."
    );
    let missing = h.url("/api/lambda-instances/00000000-0000-4000-8000-000000000000/");
    let r = post(&missing, &auth, "application/json", br#"{"action":"stop"}"#);
    assert_eq!(r.json()["errors"][0]["status"], 404, "back to the list");
    // The destroy script: DELETE, then the details until DESTROYED.
    let r = delete(&url, &auth);
    assert_eq!(r.status, 202, "{}", r.body);
    h.wait_status(&id, "DESTROYED");
}
