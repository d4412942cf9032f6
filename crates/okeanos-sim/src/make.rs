//! What a create makes: private networks and their subnets, floating IPs and servers (with
//! their metadata), within the project's quota; and their deletion. Pure state, as
//! `state.rs`.

use std::collections::BTreeMap;
use std::time::Instant;

use serde_json::{json, Value};

use crate::catalog::{charge, fits, project_of};
use crate::state::{body_json, fault, State, Vm};
use crate::world::{FloatingIp, Limits, Network, Subnet, FLOATING_NETWORK};

/// Whether `user` has network `id`.
fn owns_network(s: &State, user: &str, id: &str) -> bool {
    s.world.networks.get(id).map(|n| n.owner == user) == Some(true)
}

/// `GET network/networks`.
pub(crate) fn list_networks(s: &State, user: &str) -> (u16, Value) {
    let mine: Vec<Value> = (s.world.networks.iter())
        .filter(|(_, n)| n.owner == user)
        .map(|(id, n)| {
            let subnets: Vec<&String> = (s.world.subnets.iter())
                .filter(|(_, sub)| sub.network == *id)
                .map(|(sid, _)| sid)
                .collect();
            json!({"id": id, "name": n.name, "type": "MAC_FILTERED", "status": "ACTIVE",
                   "subnets": subnets, "tenant_id": n.owner})
        })
        .collect();
    (200, json!({ "networks": mine }))
}

/// `POST network/networks`.
pub(crate) fn create_network(
    s: &mut State,
    user: &str,
    body: &[u8],
) -> Result<(u16, Value), (u16, Value)> {
    let v = body_json(body)?;
    let n = &v["network"];
    let name = n["name"].as_str().unwrap_or_default().to_string();
    let project = n["project"].as_str().map(str::to_string);
    let more = Limits {
        private_network: 1,
        ..Limits::default()
    };
    charge(s, user, project.as_deref(), more)?;
    let id = format!("net-{}", s.world.next());
    s.world.networks.insert(
        id.clone(),
        Network {
            owner: user.to_string(),
            name: name.clone(),
            project,
        },
    );
    Ok((
        201,
        json!({"network": {"id": id, "name": name, "type": "MAC_FILTERED", "status": "ACTIVE", "subnets": []}}),
    ))
}

/// `GET network/subnets`.
pub(crate) fn list_subnets(s: &State, user: &str) -> (u16, Value) {
    let mine: Vec<Value> = (s.world.subnets.iter())
        .filter(|(_, sub)| sub.owner == user)
        .map(|(id, sub)| {
            json!({"id": id, "network_id": sub.network, "cidr": sub.cidr, "ip_version": 4,
                   "enable_dhcp": true})
        })
        .collect();
    (200, json!({ "subnets": mine }))
}

/// `POST network/subnets`.
pub(crate) fn create_subnet(
    s: &mut State,
    user: &str,
    body: &[u8],
) -> Result<(u16, Value), (u16, Value)> {
    let v = body_json(body)?;
    let sub = &v["subnet"];
    let network = sub["network_id"].as_str().unwrap_or_default().to_string();
    if !owns_network(s, user, &network) {
        return Err(fault(404, "itemNotFound", "Network not found"));
    }
    if s.world.subnets.values().any(|x| x.network == network) {
        return Err(fault(400, "badRequest", "The network has a subnet already"));
    }
    let cidr = sub["cidr"].as_str().unwrap_or("192.168.0.0/24").to_string();
    let id = format!("subnet-{}", s.world.next());
    s.world.subnets.insert(
        id.clone(),
        Subnet {
            owner: user.to_string(),
            network: network.clone(),
            cidr: cidr.clone(),
        },
    );
    Ok((
        201,
        json!({"subnet": {"id": id, "network_id": network, "cidr": cidr, "ip_version": 4}}),
    ))
}

/// The server floating IP `id` is attached to, if that server is not deleted: a deleted
/// server lets go of its IPs.
fn attached(s: &mut State, id: &str) -> Option<String> {
    let server = s.world.floating_ips.get(id)?.server.clone()?;
    let vm = s.vms.get_mut(&server)?;
    vm.settle(Instant::now());
    (vm.status != "DELETED").then_some(server)
}

fn floating_ip_json(s: &mut State, id: &str) -> Value {
    let server = attached(s, id);
    let ip = &s.world.floating_ips[id];
    json!({"id": id, "floating_ip_address": ip.address, "floating_network_id": FLOATING_NETWORK,
           "instance_id": server, "port_id": server.as_ref().map(|s| format!("port-{s}")),
           "tenant_id": ip.owner, "user_id": ip.owner})
}

/// `GET network/floatingips`.
pub(crate) fn list_floating_ips(s: &mut State, user: &str) -> (u16, Value) {
    let ids: Vec<String> = (s.world.floating_ips.iter())
        .filter(|(_, ip)| ip.owner == user)
        .map(|(id, _)| id.clone())
        .collect();
    let mine: Vec<Value> = ids.iter().map(|id| floating_ip_json(s, id)).collect();
    (200, json!({ "floatingips": mine }))
}

/// `POST network/floatingips`.
pub(crate) fn create_floating_ip(
    s: &mut State,
    user: &str,
    body: &[u8],
) -> Result<(u16, Value), (u16, Value)> {
    let v = body_json(body)?;
    let project = v["floatingip"]["project"].as_str().map(str::to_string);
    let more = Limits {
        floating_ip: 1,
        ..Limits::default()
    };
    charge(s, user, project.as_deref(), more)?;
    let n = s.world.next();
    let id = format!("ip-{n}");
    let ip = FloatingIp {
        owner: user.to_string(),
        project,
        address: format!("83.212.{}.{}", 1 + n / 250, 1 + n % 250),
        server: None,
    };
    s.world.floating_ips.insert(id.clone(), ip);
    let body = floating_ip_json(s, &id);
    // Synnefo answers 200 here; a Neutron would say 201.
    Ok((200, json!({ "floatingip": body })))
}

/// `POST compute/servers`: a new server of the user's, in BUILD until the transition is over.
pub(crate) fn create_server(
    s: &mut State,
    user: &str,
    body: &[u8],
) -> Result<(u16, Value), (u16, Value)> {
    let v = body_json(body)?;
    let server = &v["server"];
    let text = |k: &str| server[k].as_str().unwrap_or_default().to_string();
    let (name, flavor, image, project) = (
        text("name"),
        text("flavorRef"),
        text("imageRef"),
        text("project"),
    );
    let Some(f) = s.world.flavor(&flavor).filter(|f| f.allow_create).cloned() else {
        return Err(fault(404, "itemNotFound", "Flavor not found"));
    };
    if !s.world.images.iter().any(|i| i.id == image) {
        return Err(fault(404, "itemNotFound", "Image not found"));
    }
    let limits = project_of(s, user, Some(&project))?;
    let mut ips = Vec::new();
    let mut networks = Vec::new();
    for net in server["networks"].as_array().into_iter().flatten() {
        let uuid = net["uuid"].as_str().unwrap_or_default();
        if uuid == FLOATING_NETWORK {
            let address = net["fixed_ip"].as_str().unwrap_or_default();
            let ip = (s.world.floating_ips.iter())
                .find(|(_, ip)| ip.owner == user && ip.address == address)
                .map(|(id, _)| id.clone());
            let ip = ip.map(|id| (id.clone(), attached(s, &id).is_some()));
            match ip {
                Some((id, false)) => ips.push(id),
                Some((_, true)) => {
                    return Err(fault(409, "conflict", "The floating IP is in use"));
                }
                None => return Err(fault(404, "itemNotFound", "Floating IP not found")),
            }
        } else if !owns_network(s, user, uuid) {
            return Err(fault(404, "itemNotFound", "Network not found"));
        } else {
            networks.push(uuid.to_string());
        }
    }
    let more = Limits {
        vm: 1,
        cpu: f.vcpus,
        ram: f.ram,
        disk: f.disk,
        ..Limits::default()
    };
    fits(s, user, &project, limits, more)?;
    let id = format!("{}", 10_000 + s.world.next());
    for ip in ips {
        if let Some(ip) = s.world.floating_ips.get_mut(&ip) {
            ip.server = Some(id.clone());
        }
    }
    let metadata: BTreeMap<String, String> = (server["metadata"].as_object().into_iter())
        .flatten()
        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
        .collect();
    let end = if s.faults.fall_into_error {
        "ERROR"
    } else {
        "ACTIVE"
    };
    let vm = Vm {
        owner: user.to_string(),
        name: name.clone(),
        status: "BUILD".into(),
        pending: Some((end.into(), Instant::now() + s.transition, "BUILDING")),
        project: Some(project),
        flavor: Some(flavor),
        metadata: metadata.clone(),
        networks,
    };
    s.vms.insert(id.clone(), vm);
    Ok((
        202,
        json!({"server": {"id": id, "name": name, "status": "BUILD", "metadata": metadata,
                          "adminPass": "sim-password"}}),
    ))
}

/// `DELETE network/{networks,floatingips}/{id}`: the user's network (with its subnets) or
/// floating IP; an IP still attached to a server is refused.
pub(crate) fn delete_resource(s: &mut State, user: &str, kind: &str, id: &str) -> (u16, Value) {
    let not_found = || fault(404, "itemNotFound", &format!("{kind}/{id} not found"));
    if kind == "networks" {
        if !owns_network(s, user, id) {
            return not_found();
        }
        let now = Instant::now();
        let in_use = s.vms.values_mut().any(|vm| {
            vm.settle(now);
            vm.status != "DELETED" && vm.networks.iter().any(|n| n == id)
        });
        if in_use {
            return fault(409, "conflict", "The network is in use");
        }
        s.world.networks.remove(id);
        s.world.subnets.retain(|_, sub| sub.network != id);
        return (204, Value::Null);
    }
    let owned = s.world.floating_ips.get(id).map(|ip| ip.owner == user);
    if owned != Some(true) {
        return not_found();
    }
    if attached(s, id).is_some() {
        return fault(409, "conflict", "The floating IP is in use");
    }
    s.world.floating_ips.remove(id);
    (204, Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{quotas, usage};
    use crate::compute::compute;
    use crate::world::{Flavor, Image, Project, World};
    use std::collections::HashMap;
    use std::time::Duration;

    const P: &str = "p1";

    fn state() -> State {
        let mut users = HashMap::new();
        users.insert("t1".to_string(), ("u1".to_string(), "one".to_string()));
        let world = World {
            flavors: vec![Flavor {
                id: "f".into(),
                vcpus: 2,
                ram: 2048,
                disk: 10,
                allow_create: true,
            }],
            images: vec![Image {
                id: "img".into(),
                name: "Debian Base".into(),
            }],
            projects: vec![Project {
                id: P.into(),
                name: "proj".into(),
                state: "active".into(),
                members: vec!["u1".into()],
                limits: Limits {
                    vm: 2,
                    cpu: 4,
                    ram: 4096,
                    disk: 20,
                    floating_ip: 1,
                    private_network: 1,
                },
            }],
            ..World::default()
        };
        State {
            users,
            vms: BTreeMap::new(),
            world,
            faults: crate::Faults::default(),
            calls: Vec::new(),
            transition: Duration::ZERO,
            rng: fastrand::Rng::with_seed(1),
            held: 0,
        }
    }

    fn ok(answer: Result<(u16, Value), (u16, Value)>) -> Value {
        let (status, body) = answer.unwrap_or_else(|e| panic!("{e:?}"));
        assert!((200..300).contains(&status), "{status} {body}");
        body
    }

    fn server_body(net: &str, ip: Option<&str>) -> Vec<u8> {
        let mut networks = vec![json!({"uuid": net})];
        if let Some(ip) = ip {
            networks.push(json!({"uuid": FLOATING_NETWORK, "fixed_ip": ip}));
        }
        json!({"server": {"name": "m", "imageRef": "img", "flavorRef": "f", "project": P,
                          "networks": networks, "metadata": {"lambda_instance": "i",
                                                             "lambda_slot": "0"}}})
        .to_string()
        .into_bytes()
    }

    #[test]
    fn a_cluster_is_made_within_its_quota_and_usage_follows_it() {
        let mut s = state();
        let body = json!({"network": {"name": "lambda-i", "project": P}}).to_string();
        let net = ok(create_network(&mut s, "u1", body.as_bytes()))["network"]["id"]
            .as_str()
            .unwrap()
            .to_string();
        let again = create_network(&mut s, "u1", body.as_bytes()).unwrap_err();
        assert_eq!(again.0, 413, "one private network in the quota");
        let sub = json!({"subnet": {"network_id": net}}).to_string();
        ok(create_subnet(&mut s, "u1", sub.as_bytes()));
        let ip_body = json!({"floatingip": {"project": P}}).to_string();
        let ip = ok(create_floating_ip(&mut s, "u1", ip_body.as_bytes()));
        let address = ip["floatingip"]["floating_ip_address"].as_str().unwrap();
        let server = ok(create_server(
            &mut s,
            "u1",
            &server_body(&net, Some(address)),
        ));
        let id = server["server"]["id"].as_str().unwrap().to_string();
        assert_eq!(
            usage(&mut s, P, Some("u1")),
            Limits {
                vm: 1,
                cpu: 2,
                ram: 2048,
                disk: 10,
                floating_ip: 1,
                private_network: 1
            }
        );
        // The IP is in use; a second server cannot have it.
        let ip_id = ip["floatingip"]["id"].as_str().unwrap().to_string();
        assert_eq!(delete_resource(&mut s, "u1", "floatingips", &ip_id).0, 409);
        let taken = create_server(&mut s, "u1", &server_body(&net, Some(address)));
        assert_eq!(taken.unwrap_err().0, 409);
        // Deleted (the transition is instant), the server lets go of its IP and its network.
        assert_eq!(delete_resource(&mut s, "u1", "networks", &net).0, 409);
        assert_eq!(compute(&mut s, Some("t1"), &id, Some("delete")).0, 204);
        assert_eq!(delete_resource(&mut s, "u1", "floatingips", &ip_id).0, 204);
        assert_eq!(delete_resource(&mut s, "u1", "networks", &net).0, 204);
        assert_eq!(usage(&mut s, P, Some("u1")), Limits::default());
        assert!(
            s.world.subnets.is_empty(),
            "the subnet went with its network"
        );
    }

    #[test]
    fn quotas_say_what_is_used_in_bytes() {
        let mut s = state();
        let (_, q) = quotas(&mut s, "u1");
        assert_eq!(q[P]["cyclades.ram"]["limit"], 4096u64 << 20);
        assert_eq!(q[P]["cyclades.vm"]["usage"], 0);
        assert_eq!(q[P]["cyclades.vm"]["project_limit"], 2);
        let (_, none) = quotas(&mut s, "u2");
        assert_eq!(none, json!({}));
    }
}
