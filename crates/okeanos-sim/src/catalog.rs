//! What a create reads: flavors, images, projects, the quotas left in them (counted from
//! what exists, so they follow creates and deletes), and public keys. Pure state, as
//! `state.rs`: each call takes the state and the caller's user and returns Synnefo's status
//! and body.

use std::time::Instant;

use serde_json::{json, Value};

use crate::state::{fault, State};
use crate::world::{Limits, Project};

/// `GET compute/flavors/detail`.
pub(crate) fn flavors(s: &State) -> (u16, Value) {
    let all: Vec<Value> = s
        .world
        .flavors
        .iter()
        .map(|f| {
            json!({"id": f.id, "name": format!("C{}R{}D{}drbd", f.vcpus, f.ram, f.disk),
                   "vcpus": f.vcpus, "ram": f.ram, "disk": f.disk,
                   "SNF:disk_template": "drbd", "SNF:allow_create": f.allow_create})
        })
        .collect();
    (200, json!({ "flavors": all }))
}

/// `GET compute/images/detail`.
pub(crate) fn images(s: &State) -> (u16, Value) {
    let all: Vec<Value> = s
        .world
        .images
        .iter()
        .map(|i| json!({"id": i.id, "name": i.name, "status": "ACTIVE"}))
        .collect();
    (200, json!({ "images": all }))
}

/// `GET account/projects?mode=member`: the projects the user is a member of.
pub(crate) fn projects(s: &State, user: &str) -> (u16, Value) {
    let mine: Vec<Value> = s
        .world
        .projects
        .iter()
        .filter(|p| p.members.iter().any(|m| m == user))
        .map(|p| json!({"id": p.id, "name": p.name, "state": p.state}))
        .collect();
    (200, Value::Array(mine))
}

/// What exists in `project`, counted as the quotas count it: of `user` alone, or of every
/// member when `user` is None.
pub(crate) fn usage(s: &mut State, project: &str, user: Option<&str>) -> Limits {
    let now = Instant::now();
    let mine = |owner: &str| user.is_none_or(|u| u == owner);
    let mut used = Limits::default();
    let flavors = s.world.flavors.clone();
    for vm in s.vms.values_mut() {
        vm.settle(now);
        if vm.project.as_deref() != Some(project) || !mine(&vm.owner) || vm.status == "DELETED" {
            continue;
        }
        let flavor = vm
            .flavor
            .as_ref()
            .and_then(|f| flavors.iter().find(|x| &x.id == f));
        used.vm += 1;
        if let Some(f) = flavor {
            used.disk += f.disk;
            // Synnefo counts cpu and ram for servers that are not stopped.
            if vm.status != "STOPPED" {
                used.cpu += f.vcpus;
                used.ram += f.ram;
            }
        }
    }
    let w = &s.world;
    used.floating_ip = (w.floating_ips.values())
        .filter(|ip| ip.project.as_deref() == Some(project) && mine(&ip.owner))
        .count() as u64;
    used.private_network = (w.networks.values())
        .filter(|n| n.project.as_deref() == Some(project) && mine(&n.owner))
        .count() as u64;
    used
}

/// `GET account/quotas`: every project of the user, each resource with the user's and the
/// project's limit, usage and pending.
pub(crate) fn quotas(s: &mut State, user: &str) -> (u16, Value) {
    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;
    let mut out = serde_json::Map::new();
    let projects: Vec<Project> = (s.world.projects.iter())
        .filter(|p| p.members.iter().any(|m| m == user))
        .cloned()
        .collect();
    for p in projects {
        let (mine, all) = (usage(s, &p.id, Some(user)), usage(s, &p.id, None));
        let members = p.members.len() as u64;
        let one = |limit: u64, used: u64, project_used: u64, unit: u64| {
            json!({"limit": limit * unit, "usage": used * unit, "pending": 0,
                   "project_limit": limit * unit * members, "project_usage": project_used * unit,
                   "project_pending": 0})
        };
        let l = p.limits;
        out.insert(
            p.id.clone(),
            json!({
                "cyclades.vm": one(l.vm, mine.vm, all.vm, 1),
                "cyclades.cpu": one(l.cpu, mine.cpu, all.cpu, 1),
                "cyclades.ram": one(l.ram, mine.ram, all.ram, MIB),
                "cyclades.disk": one(l.disk, mine.disk, all.disk, GIB),
                "cyclades.floating_ip": one(l.floating_ip, mine.floating_ip, all.floating_ip, 1),
                "cyclades.network.private":
                    one(l.private_network, mine.private_network, all.private_network, 1),
                "pithos.diskspace": one(20, 0, 0, GIB),
            }),
        );
    }
    (200, Value::Object(out))
}

/// Whether `user` may use `project` (an active member), and its limits.
pub(crate) fn project_of(
    s: &State,
    user: &str,
    project: Option<&str>,
) -> Result<Limits, (u16, Value)> {
    s.world
        .projects
        .iter()
        .find(|p| Some(p.id.as_str()) == project && p.state == "active")
        .filter(|p| p.members.iter().any(|m| m == user))
        .map(|p| p.limits)
        .ok_or_else(|| fault(403, "forbidden", "Not a member of this project"))
}

/// 413 overLimit unless `more` still fits the user's `limits` in `project`.
pub(crate) fn fits(
    s: &mut State,
    user: &str,
    project: &str,
    limits: Limits,
    more: Limits,
) -> Result<(), (u16, Value)> {
    let used = usage(s, project, Some(user));
    let over = used.vm + more.vm > limits.vm
        || used.cpu + more.cpu > limits.cpu
        || used.ram + more.ram > limits.ram
        || used.disk + more.disk > limits.disk
        || used.floating_ip + more.floating_ip > limits.floating_ip
        || used.private_network + more.private_network > limits.private_network;
    if over {
        return Err(fault(
            413,
            "overLimit",
            "Resource Limit Exceeded for your account.",
        ));
    }
    Ok(())
}

/// Checks that `more` fits what `user` has left in `project` (which they must be a member
/// of), before it is made.
pub(crate) fn charge(
    s: &mut State,
    user: &str,
    project: Option<&str>,
    more: Limits,
) -> Result<(), (u16, Value)> {
    let limits = project_of(s, user, project)?;
    fits(s, user, project.unwrap_or_default(), limits, more)
}

/// Whether a started server of `vm`'s flavor still fits its project's cpu and ram quota.
pub(crate) fn start_fits(s: &mut State, id: &str) -> Result<(), (u16, Value)> {
    let Some(vm) = s.vms.get(id) else {
        return Ok(());
    };
    let (Some(project), Some(flavor)) = (vm.project.clone(), vm.flavor.clone()) else {
        return Ok(());
    };
    let owner = vm.owner.clone();
    let Some(f) = s.world.flavor(&flavor).cloned() else {
        return Ok(());
    };
    let limits = project_of(s, &owner, Some(&project))?;
    let more = Limits {
        cpu: f.vcpus,
        ram: f.ram,
        ..Limits::default()
    };
    fits(s, &owner, &project, limits, more)
}

/// `GET userdata/keys`.
pub(crate) fn keys(s: &State, user: &str) -> (u16, Value) {
    let mine: Vec<Value> = (s.world.keys.iter())
        .filter(|k| k.owner == user)
        .map(|k| {
            json!({"name": k.name, "content": k.content,
                   "fingerprint": fingerprint(&k.content), "uri": format!("/userdata/keys/{}", k.name)})
        })
        .collect();
    (200, Value::Array(mine))
}

/// A stand-in for a key's fingerprint: stable, and different for different keys.
fn fingerprint(content: &str) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in content.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x100000001b3);
    }
    let bytes = h.to_be_bytes();
    let hex: Vec<String> = bytes.iter().map(|b| format!("{b:02x}")).collect();
    hex.join(":")
}
