//! The calls on servers: identity's token check, the server list, and a server read,
//! started, shut down or deleted. Pure state, as `state.rs`.

use std::time::Instant;

use serde_json::{json, Value};

use crate::catalog::start_fits;
use crate::state::{fault, unavailable, State};

pub(crate) fn identity(s: &State, base: &str, body: &[u8]) -> (u16, Value) {
    if s.faults.identity_down {
        return unavailable();
    }
    let token = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v["auth"]["token"]["id"].as_str().map(str::to_string));
    let Some(token) = token else {
        return fault(400, "badRequest", "Malformed request");
    };
    let Some((id, name)) = s.users.get(&token) else {
        return fault(401, "unauthorized", "Invalid token");
    };
    (
        200,
        json!({"access": {
            "token": {"id": token, "expires": "2099-01-01T00:00:00+00:00",
                      "tenant": {"id": id, "name": name}},
            "user": {"id": id, "name": name, "roles": [{"id": "1", "name": "default"}], "roles_links": []},
            "serviceCatalog": [
                {"type": "identity", "name": "astakos_identity", "endpoints_links": [],
                 "endpoints": [{"versionId": "v2.0", "region": "default",
                                "publicURL": format!("{base}/identity/v2.0")}]},
                {"type": "compute", "name": "cyclades_compute", "endpoints_links": [],
                 "endpoints": [{"versionId": "v2.0", "region": "default",
                                "publicURL": format!("{base}/compute/v2.0")}]},
                {"type": "network", "name": "cyclades_network", "endpoints_links": [],
                 "endpoints": [{"versionId": "v2.0", "region": "default",
                                "publicURL": format!("{base}/network/v2.0")}]},
                {"type": "account", "name": "astakos_account", "endpoints_links": [],
                 "endpoints": [{"versionId": "v1.0", "region": "default",
                                "publicURL": format!("{base}/account/v1.0")}]},
                {"type": "cyclades_userdata", "name": "cyclades_userdata", "endpoints_links": [],
                 "endpoints": [{"versionId": "v1.0", "region": "default",
                                "publicURL": format!("{base}/userdata")}]},
            ],
        }}),
    )
}

/// `GET servers/detail`: every server of the token's owner, with its status and task.
pub(crate) fn list(s: &mut State, token: Option<&str>) -> (u16, Value) {
    let Some((user, _)) = token.and_then(|t| s.users.get(t)).cloned() else {
        return fault(401, "unauthorized", "Invalid token");
    };
    if let Some(f) = s.compute_fault() {
        return f;
    }
    let now = Instant::now();
    // As Cyclades without `changes-since`: deleted servers are not listed.
    let servers: Vec<Value> = s
        .vms
        .iter_mut()
        .filter(|(_, vm)| vm.owner == user)
        .filter_map(|(id, vm)| {
            vm.settle(now);
            (vm.status != "DELETED").then(|| vm.json(id))
        })
        .collect();
    (200, json!({ "servers": servers }))
}

/// A compute call on server `id`: `action` None reads it, Some("start"/"shutdown") acts.
pub(crate) fn compute(
    s: &mut State,
    token: Option<&str>,
    id: &str,
    action: Option<&str>,
) -> (u16, Value) {
    let Some((user, _)) = token.and_then(|t| s.users.get(t)).cloned() else {
        return fault(401, "unauthorized", "Invalid token");
    };
    if let Some(f) = s.compute_fault() {
        return f;
    }
    if action == Some("start") && s.faults.quota_exceeded {
        return fault(
            413,
            "overLimit",
            "Resource Limit Exceeded for your account.",
        );
    }
    let startable = s
        .vms
        .get(id)
        .is_some_and(|vm| vm.owner == user && vm.status == "STOPPED" && vm.pending.is_none());
    if action == Some("start") && startable {
        // A started server counts in its project's cpu and ram quota again.
        if let Err(over) = start_fits(s, id) {
            return over;
        }
    }
    let transition = s.transition;
    let s_fall_into_error = s.faults.fall_into_error;
    let now = Instant::now();
    // Another user's server is as absent as a missing one, as in Cyclades.
    let Some(vm) = s.vms.get_mut(id).filter(|vm| vm.owner == user) else {
        return fault(404, "itemNotFound", &format!("Server {id} not found"));
    };
    vm.settle(now);
    let (target, from, verb) = match action {
        None => return (200, json!({ "server": vm.json(id) })),
        Some("start") => ("ACTIVE", "STOPPED", "START"),
        Some("shutdown") => ("STOPPED", "ACTIVE", "STOP"),
        // DELETE: from any state; a server already deleted is not found.
        Some("delete") => {
            if vm.status == "DELETED" {
                return fault(404, "itemNotFound", &format!("Server {id} not found"));
            }
            if !matches!(&vm.pending, Some((_, _, "DESTROYING"))) {
                vm.pending = Some(("DELETED".into(), now + transition, "DESTROYING"));
                vm.settle(now);
            }
            return (204, Value::Null);
        }
        Some(_) => return fault(400, "badRequest", "Unknown server action"),
    };
    let task = if verb == "START" {
        "STARTING"
    } else {
        "STOPPING"
    };
    match &vm.pending {
        Some((_, _, t)) if *t == task => return (202, Value::Null),
        Some(_) => return fault(409, "buildInProgress", "Server is being built."),
        None => {}
    }
    if vm.status != from {
        // Synnefo names states by their Ganeti operstate: ACTIVE is STARTED there.
        let operstate = if vm.status == "ACTIVE" {
            "STARTED"
        } else {
            vm.status.as_str()
        };
        return fault(
            400,
            "badRequest",
            &format!("Cannot perform '{verb}' action while server is in '{operstate}' state."),
        );
    }
    let end = if s_fall_into_error { "ERROR" } else { target };
    vm.pending = Some((end.to_string(), now + transition, task));
    vm.settle(now);
    (202, Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demo_fixture;
    use crate::state::Vm;
    use crate::world::World;
    use crate::Faults;
    use std::collections::{BTreeMap, HashMap};
    use std::time::Duration;

    fn state() -> State {
        let mut users = HashMap::new();
        users.insert("t1".to_string(), ("u1".to_string(), "one".to_string()));
        users.insert("t2".to_string(), ("u2".to_string(), "two".to_string()));
        let mut vms = BTreeMap::new();
        vms.insert("1".to_string(), Vm::plain("u1", "m", "STOPPED"));
        State {
            users,
            vms,
            faults: Faults::default(),
            calls: Vec::new(),
            transition: Duration::ZERO,
            rng: fastrand::Rng::with_seed(7),
            held: 0,
            world: World::default(),
        }
    }

    #[test]
    fn start_then_start_again_is_refused_like_synnefo() {
        let mut s = state();
        assert_eq!(compute(&mut s, Some("t1"), "1", Some("start")).0, 202);
        let (code, body) = compute(&mut s, Some("t1"), "1", Some("start"));
        assert_eq!(code, 400);
        assert_eq!(
            body["badRequest"]["message"],
            "Cannot perform 'START' action while server is in 'STARTED' state."
        );
    }

    #[test]
    fn a_pending_start_shows_its_task() {
        let mut s = state();
        s.transition = Duration::from_secs(60);
        s.transition = Duration::from_secs(60);
        assert_eq!(compute(&mut s, Some("t1"), "1", Some("start")).0, 202);
        let (_, v) = compute(&mut s, Some("t1"), "1", None);
        assert_eq!(v["server"]["status"], "STOPPED");
        assert_eq!(v["server"]["SNF:task_state"], "STARTING");
        s.transition = Duration::from_secs(60);
        assert_eq!(compute(&mut s, Some("t1"), "1", Some("start")).0, 202);
        assert_eq!(compute(&mut s, Some("t1"), "1", Some("shutdown")).0, 409);
    }

    #[test]
    fn owners_and_tokens_are_enforced() {
        let mut s = state();
        assert_eq!(compute(&mut s, Some("t2"), "1", None).0, 404);
        assert_eq!(compute(&mut s, Some("nope"), "1", None).0, 401);
        assert_eq!(compute(&mut s, None, "1", None).0, 401);
    }

    #[test]
    fn the_list_shows_the_owners_servers_only() {
        let mut s = state();
        s.vms
            .insert("2".to_string(), Vm::plain("u2", "x", "ACTIVE"));
        s.transition = Duration::from_secs(60);
        assert_eq!(compute(&mut s, Some("t1"), "1", Some("start")).0, 202);
        let (status, v) = list(&mut s, Some("t1"));
        assert_eq!(status, 200);
        assert_eq!(
            v["servers"],
            json!([{"id": "1", "name": "m", "status": "STOPPED", "SNF:task_state": "STARTING",
                    "user_id": "u1", "metadata": {}}])
        );
        assert_eq!(list(&mut s, Some("nope")).0, 401);
    }

    #[test]
    fn faults_are_counted_down() {
        let mut s = state();
        s.faults.fail_next = 2;
        s.faults.quota_exceeded = true;
        assert_eq!(compute(&mut s, Some("t1"), "1", None).0, 503);
        assert_eq!(compute(&mut s, Some("t1"), "1", None).0, 503);
        assert_eq!(compute(&mut s, Some("t1"), "1", None).0, 200);
        assert_eq!(compute(&mut s, Some("t1"), "1", Some("start")).0, 413);
    }

    #[test]
    fn error_rate_is_roughly_honoured() {
        let mut s = state();
        s.faults.error_rate = 0.3;
        let failed = (0..2000)
            .filter(|_| compute(&mut s, Some("t1"), "1", None).0 == 503)
            .count();
        assert!((450..750).contains(&failed), "{failed}");
    }

    #[test]
    fn shipped_fixture_parses() {
        let f = demo_fixture();
        assert!(f.servers.len() >= 3);
    }
}
