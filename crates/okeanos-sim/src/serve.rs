//! HTTP around the simulator's state: tiny_http threads read a call, apply faults and delays,
//! and write Synnefo's answer; the `/_sim/` control API changes faults and VMs.

use std::io::Write;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::state::{compute, delete_resource, fault, identity, list, State, RESET};
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
    if !path.starts_with("/_sim") {
        delay(state, &path);
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

/// Latency, hangs and holds: waits before a call is answered (without the lock held).
fn delay(state: &Mutex<State>, path: &str) {
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
    // Held servers: the call waits (two minutes at most) until the hold is lifted.
    let server = path.split('/').nth(4).unwrap_or("");
    let held =
        |s: &State| path.starts_with("/compute") && s.faults.hold.iter().any(|h| h == server);
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
    match (method, segments.as_slice()) {
        ("POST", ["identity", "v2.0", "tokens"]) => {
            let result = identity(&s, base, body);
            s.log("tokens", None, result.0);
            result
        }
        ("GET", ["compute", "v2.0", "servers", "detail"]) => {
            let result = list(&mut s, token);
            s.log("detail", None, result.0);
            result
        }
        ("DELETE", ["compute", "v2.0", "servers", id]) => {
            let result = compute(&mut s, token, id, Some("delete"));
            s.log("delete", Some(id), result.0);
            result
        }
        ("DELETE", ["network", "v2.0", kind @ ("networks" | "floatingips"), id]) => {
            let result = delete_resource(&mut s, token, kind, id);
            s.log(&format!("delete_{kind}"), Some(id), result.0);
            result
        }
        ("GET", ["compute", "v2.0", "servers", id]) => {
            let result = compute(&mut s, token, id, None);
            s.log("status", Some(id), result.0);
            result
        }
        ("POST", ["compute", "v2.0", "servers", id, "action"]) => {
            let action = serde_json::from_slice::<Value>(body)
                .ok()
                .and_then(|v| v.as_object().and_then(|o| o.keys().next().cloned()));
            let op = action.clone().unwrap_or_else(|| "action".into());
            let result = compute(&mut s, token, id, Some(action.as_deref().unwrap_or("")));
            s.log(&op, Some(id), result.0);
            result
        }
        ("GET", ["_sim", "faults"]) => (200, json!(s.faults)),
        ("POST" | "PUT", ["_sim", "faults"]) => match serde_json::from_slice::<Faults>(body) {
            Ok(f) => {
                s.faults = f;
                (200, json!(s.faults))
            }
            Err(e) => (400, json!({"error": e.to_string()})),
        },
        ("GET", ["_sim", "calls"]) => (200, json!(s.calls)),
        ("DELETE", ["_sim", "calls"]) => {
            s.calls.clear();
            (204, Value::Null)
        }
        ("GET", ["_sim", "servers"]) => {
            let now = Instant::now();
            let all: Vec<Value> = s
                .vms
                .iter_mut()
                .map(|(id, vm)| {
                    vm.settle(now);
                    json!({"id": id, "name": vm.name, "owner": vm.owner, "status": vm.status})
                })
                .collect();
            (200, json!(all))
        }
        ("PUT" | "POST", ["_sim", "servers", id]) => {
            let status = serde_json::from_slice::<Value>(body)
                .ok()
                .and_then(|v| v["status"].as_str().map(str::to_string));
            match (s.vms.get_mut(*id), status) {
                (Some(vm), Some(status)) => {
                    vm.status = status;
                    vm.pending = None;
                    (200, json!({"id": id, "status": vm.status}))
                }
                (None, _) => fault(404, "itemNotFound", "Server not found"),
                (_, None) => fault(400, "badRequest", "Expected {\"status\": \"...\"}"),
            }
        }
        _ => fault(404, "itemNotFound", "No such resource"),
    }
}
