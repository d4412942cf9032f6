//! HTTP around the simulator's state: tiny_http threads read a call, apply faults and delays,
//! and write Synnefo's answer; the `/_sim/` control API changes faults and VMs.

use std::io::Write;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::compute::{compute, identity, list};
use crate::state::{fault, with_user, State, RESET};
use crate::{catalog, make};
use crate::{lock, Faults};

pub(crate) fn answer(state: &Mutex<State>, base: &str, mut request: tiny_http::Request) {
    let mut body = Vec::new();
    // The simulator is a test tool on loopback; its bodies are tiny and trusted.
    let _ = std::io::Read::read_to_end(
        &mut std::io::Read::take(request.as_reader(), 1 << 20),
        &mut body,
    );
    let token = request
        .headers()
        .iter()
        .find(|h| h.field.equiv("X-Auth-Token"))
        .map(|h| h.value.as_str().to_string());
    let method = request.method().as_str().to_string();
    let path = request
        .url()
        .split('?')
        .next()
        .unwrap_or("")
        .trim_end_matches('/')
        .to_string();
    let op = op_of(&method, &path);
    if !path.starts_with("/_sim") {
        delay(state, &path, op);
    }
    let (status, reply) = route(state, base, &method, &path, token.as_deref(), &body);
    if status == RESET {
        // Headers promising more than is sent, then the connection closes.
        let mut writer = request.into_writer();
        let _ = writer.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"ser");
        let _ = writer.flush();
        return;
    }
    // The whole answer in one write: tiny_http writes a head and a body over about a
    // kilobyte (a server listing) in two, and with Nagle's algorithm on its sockets the
    // second waits 40 ms for the client's delayed ACK on a keep-alive connection.
    let body = match &reply {
        Value::Null => String::new(),
        v => v.to_string(),
    };
    let kind = if body.is_empty() {
        ""
    } else {
        "Content-Type: application/json\r\n"
    };
    let reason = tiny_http::StatusCode(status).default_reason_phrase();
    // A 204 has no body and says no length (RFC 9110 §8.6).
    let length = if status == 204 {
        String::new()
    } else {
        format!("Content-Length: {}\r\n", body.len())
    };
    let whole = format!("HTTP/1.1 {status} {reason}\r\n{kind}{length}\r\n{body}");
    let mut writer = request.into_writer();
    let _ = writer
        .write_all(whole.as_bytes())
        .and_then(|()| writer.flush());
}

/// The name a call is logged by, held by and refused by: `create_server`, `networks`, ...
fn op_of(method: &str, path: &str) -> &'static str {
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    match (method, segments.as_slice()) {
        ("POST", ["identity", "v2.0", "tokens"]) => "tokens",
        ("GET", ["compute", "v2.0", "servers", "detail"]) => "detail",
        ("GET", ["compute", "v2.0", "flavors", "detail"]) => "flavors",
        ("GET", ["compute", "v2.0", "images", "detail"]) => "images",
        ("POST", ["compute", "v2.0", "servers"]) => "create_server",
        ("DELETE", ["compute", "v2.0", "servers", _]) => "delete",
        ("GET", ["compute", "v2.0", "servers", _]) => "status",
        ("POST", ["compute", "v2.0", "servers", _, "action"]) => "action",
        ("GET", ["network", "v2.0", "networks"]) => "networks",
        ("POST", ["network", "v2.0", "networks"]) => "create_network",
        ("GET", ["network", "v2.0", "subnets"]) => "subnets",
        ("POST", ["network", "v2.0", "subnets"]) => "create_subnet",
        ("GET", ["network", "v2.0", "floatingips"]) => "floatingips",
        ("POST", ["network", "v2.0", "floatingips"]) => "create_floatingip",
        ("DELETE", ["network", "v2.0", "networks", _]) => "delete_networks",
        ("DELETE", ["network", "v2.0", "floatingips", _]) => "delete_floatingips",
        ("GET", ["account", "v1.0", "projects"]) => "projects",
        ("GET", ["account", "v1.0", "quotas"]) => "quotas",
        ("GET", ["userdata", "keys"]) => "keys",
        _ => "other",
    }
}

/// Latency, hangs and holds: waits before a call is answered (without the lock held).
fn delay(state: &Mutex<State>, path: &str, op: &str) {
    let (latency, hang) = {
        let mut s = lock(state);
        let hang = if s.faults.hang_next > 0 && path.starts_with("/compute") {
            s.faults.hang_next -= 1;
            s.faults.hang_ms
        } else {
            0
        };
        (s.faults.latency_ms, hang)
    };
    std::thread::sleep(Duration::from_millis(latency + hang));
    // Held servers and ops: the call waits (two minutes at most) until the hold is lifted.
    let server = path
        .strip_prefix("/compute/v2.0/servers/")
        .and_then(|rest| rest.split('/').next())
        .unwrap_or("");
    let held = |s: &State| {
        let on_server = !server.is_empty() && s.faults.hold.iter().any(|h| h == server);
        on_server || s.faults.hold.iter().any(|h| h == op)
    };
    if !held(&lock(state)) {
        return;
    }
    lock(state).held += 1;
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline && held(&lock(state)) {
        std::thread::sleep(Duration::from_millis(5));
    }
    lock(state).held -= 1;
}

fn route(
    state: &Mutex<State>,
    base: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &[u8],
) -> (u16, Value) {
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let mut s = lock(state);
    let op = op_of(method, path);
    if s.faults.refuse.iter().any(|r| r == op) {
        let refused = fault(400, "badRequest", &format!("{op} refused by the simulator"));
        s.log(op, None, refused.0);
        return refused;
    }
    if s.faults.over_limit.iter().any(|r| r == op) {
        let over = fault(
            413,
            "overLimit",
            "Resource Limit Exceeded for your account.",
        );
        s.log(op, None, over.0);
        return over;
    }
    let (server, result) = match (method, segments.as_slice()) {
        ("POST", ["identity", "v2.0", "tokens"]) => (None, identity(&s, base, body)),
        ("GET", ["compute", "v2.0", "servers", "detail"]) => (None, list(&mut s, token)),
        ("GET", ["compute", "v2.0", "flavors", "detail"]) => (
            None,
            with_user(&mut s, token, |s, _| Ok(catalog::flavors(s))),
        ),
        ("GET", ["compute", "v2.0", "images", "detail"]) => (
            None,
            with_user(&mut s, token, |s, _| Ok(catalog::images(s))),
        ),
        ("POST", ["compute", "v2.0", "servers"]) => {
            let r = with_user(&mut s, token, |s, u| make::create_server(s, &u, body));
            let id = r.1["server"]["id"].as_str().map(str::to_string);
            (id, r)
        }
        ("DELETE", ["compute", "v2.0", "servers", id]) => (
            Some(id.to_string()),
            compute(&mut s, token, id, Some("delete")),
        ),
        ("GET", ["compute", "v2.0", "servers", id]) => {
            (Some(id.to_string()), compute(&mut s, token, id, None))
        }
        ("POST", ["compute", "v2.0", "servers", id, "action"]) => {
            let action = serde_json::from_slice::<Value>(body)
                .ok()
                .and_then(|v| v.as_object().and_then(|o| o.keys().next().cloned()));
            let result = compute(&mut s, token, id, Some(action.as_deref().unwrap_or("")));
            let op = action.unwrap_or_else(|| "action".into());
            s.log(&op, Some(id), result.0);
            return result;
        }
        ("GET", ["network", "v2.0", "networks"]) => (
            None,
            with_user(&mut s, token, |s, u| Ok(make::list_networks(s, &u))),
        ),
        ("POST", ["network", "v2.0", "networks"]) => {
            let r = with_user(&mut s, token, |s, u| make::create_network(s, &u, body));
            (r.1["network"]["id"].as_str().map(str::to_string), r)
        }
        ("GET", ["network", "v2.0", "subnets"]) => (
            None,
            with_user(&mut s, token, |s, u| Ok(make::list_subnets(s, &u))),
        ),
        ("POST", ["network", "v2.0", "subnets"]) => {
            let r = with_user(&mut s, token, |s, u| make::create_subnet(s, &u, body));
            (r.1["subnet"]["id"].as_str().map(str::to_string), r)
        }
        ("GET", ["network", "v2.0", "floatingips"]) => {
            let r = with_user(&mut s, token, |s, u| Ok(make::list_floating_ips(s, &u)));
            (None, r)
        }
        ("POST", ["network", "v2.0", "floatingips"]) => {
            let r = with_user(&mut s, token, |s, u| make::create_floating_ip(s, &u, body));
            (r.1["floatingip"]["id"].as_str().map(str::to_string), r)
        }
        ("DELETE", ["network", "v2.0", kind @ ("networks" | "floatingips"), id]) => {
            let r = with_user(&mut s, token, |s, u| {
                Ok(make::delete_resource(s, &u, kind, id))
            });
            (Some(id.to_string()), r)
        }
        ("GET", ["account", "v1.0", "projects"]) => (
            None,
            with_user(&mut s, token, |s, u| Ok(catalog::projects(s, &u))),
        ),
        ("GET", ["account", "v1.0", "quotas"]) => (
            None,
            with_user(&mut s, token, |s, u| Ok(catalog::quotas(s, &u))),
        ),
        ("GET", ["userdata", "keys"]) => (
            None,
            with_user(&mut s, token, |s, u| Ok(catalog::keys(s, &u))),
        ),
        ("GET", ["_sim", "faults"]) => return (200, json!(s.faults)),
        ("POST" | "PUT", ["_sim", "faults"]) => {
            return match serde_json::from_slice::<Faults>(body) {
                Ok(f) => {
                    s.faults = f;
                    (200, json!(s.faults))
                }
                Err(e) => (400, json!({"error": e.to_string()})),
            }
        }
        ("GET", ["_sim", "calls"]) => return (200, json!(s.calls)),
        ("DELETE", ["_sim", "calls"]) => {
            s.calls.clear();
            return (204, Value::Null);
        }
        ("GET", ["_sim", "servers"]) => {
            let now = Instant::now();
            let all: Vec<Value> = s
                .vms
                .iter_mut()
                .map(|(id, vm)| {
                    vm.settle(now);
                    json!({"id": id, "name": vm.name, "owner": vm.owner, "status": vm.status,
                           "metadata": vm.metadata})
                })
                .collect();
            return (200, json!(all));
        }
        ("PUT" | "POST", ["_sim", "servers", id]) => {
            let status = serde_json::from_slice::<Value>(body)
                .ok()
                .and_then(|v| v["status"].as_str().map(str::to_string));
            return match (s.vms.get_mut(*id), status) {
                (Some(vm), Some(status)) => {
                    vm.status = status;
                    vm.pending = None;
                    (200, json!({"id": id, "status": vm.status}))
                }
                (None, _) => fault(404, "itemNotFound", "Server not found"),
                (_, None) => fault(400, "badRequest", "Expected {\"status\": \"...\"}"),
            };
        }
        _ => (None, fault(404, "itemNotFound", "No such resource")),
    };
    s.log(op, server.as_deref(), result.0);
    result
}
