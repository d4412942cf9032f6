use std::time::Duration;

use lambda_api::model::Status;
use serde_json::{json, Value};

use crate::support::*;

/// VMs that take a minute to change: actions stay in flight for the whole test.
fn slow() -> Harness {
    Harness::start(Duration::from_secs(60))
}

/// The error body every 4xx/5xx carries: the documented fields and the original's.
fn error_body(status: u16, message: &str, details: &str) -> String {
    json!({"errors": [{"message": message, "code": status, "details": details,
                       "status": status, "detail": message}]})
    .to_string()
}

fn action_id(r: &Resp) -> String {
    assert_eq!(r.status, 202, "{}", r.body);
    r.json()["data"][0]["id"].as_str().unwrap().to_string()
}

/// One row of the state table: an instance in `status` asked to `action`.
fn check(status: Status, action: &str, expected: u16, message: Option<&str>) {
    let h = slow();
    if action == "stop" {
        // VMs that are up, so that a stop has something to wait for.
        for vm in [MASTER, SLAVES[0], SLAVES[1]] {
            h.sim.set_vm_status(vm, "ACTIVE");
        }
    }
    let id = h.add_instance(status);
    let r = h.action(&id, action);
    assert_eq!(r.status, expected, "{status:?} {action}: {}", r.body);
    if let Some(m) = message {
        assert_eq!(r.body, error_body(expected, m, "conflict"));
    }
    if expected == 202 {
        let transient = if action == "start" {
            "STARTING"
        } else {
            "STOPPING"
        };
        assert_eq!(h.status_of(&id)["message"], transient);
    } else {
        assert_eq!(
            h.status_of(&id)["message"],
            status.name(),
            "a refused action changed the status"
        );
    }
}

#[test]
fn stopped_start_is_accepted() {
    check(Status::Stopped, "start", 202, None);
}

#[test]
fn stopped_stop_is_a_conflict() {
    check(
        Status::Stopped,
        "stop",
        409,
        Some("The specified lambda instance is already stopped."),
    );
}

#[test]
fn started_start_is_a_conflict() {
    check(
        Status::Started,
        "start",
        409,
        Some("The specified lambda instance is already started."),
    );
}

#[test]
fn started_stop_is_accepted() {
    check(Status::Started, "stop", 202, None);
}

#[test]
fn failed_accepts_start_and_stop() {
    check(Status::Failed, "start", 202, None);
    check(Status::Failed, "stop", 202, None);
}

#[test]
fn other_statuses_conflict() {
    for status in [Status::Pending, Status::Destroying] {
        for action in ["start", "stop"] {
            let m = format!(
                "Can't {action} a lambda instance while lambda instance status is {}.",
                status.name()
            );
            check(status, action, 409, Some(&m));
        }
    }
}

#[test]
fn starting_merges_a_start_and_refuses_a_stop() {
    let h = slow();
    let id = h.add_instance(Status::Stopped);
    let first = action_id(&h.action(&id, "start"));
    assert_eq!(
        action_id(&h.action(&id, "start")),
        first,
        "a second start made a new action"
    );
    let r = h.action(&id, "stop");
    assert_eq!(
        r.body,
        error_body(
            409,
            "Can't stop a lambda instance while lambda instance status is STARTING.",
            "conflict"
        )
    );
}

#[test]
fn stopping_merges_a_stop_and_refuses_a_start() {
    let h = slow();
    let id = h.add_instance(Status::Started);
    for vm in ["101", "102", "103"] {
        h.sim.set_vm_status(vm, "ACTIVE");
    }
    let first = action_id(&h.action(&id, "stop"));
    assert_eq!(action_id(&h.action(&id, "stop")), first);
    let r = h.action(&id, "start");
    assert_eq!(r.status, 409);
    assert_eq!(
        r.json()["errors"][0]["message"],
        "Can't start a lambda instance while lambda instance status is STOPPING."
    );
}

#[test]
fn unauthorized_body_and_header() {
    let h = slow();
    let id = h.add_instance(Status::Stopped);
    let url = h.url(&format!("/api/lambda-instances/{id}/"));
    let expected = r#"{"errors":[{"message":"Invalid token","code":401,"details":"unauthorized","status":401,"detail":"Invalid token"}]}"#;
    for headers in [
        vec![],
        vec![("Authorization", "Token not-a-real-token")],
        vec![("Authorization", "Bearer demo-token-tJ3b3f32f23ceuqdoS")],
        vec![("X-Auth-Token", "bad\tvalue")],
    ] {
        let r = post(
            &url,
            &headers,
            "application/x-www-form-urlencoded",
            b"action=start",
        );
        assert_eq!(r.status, 401, "{headers:?}");
        assert_eq!(r.body, expected);
        assert_eq!(r.header("www-authenticate"), Some("Token"));
        assert_eq!(r.header("content-type"), Some("application/json"));
    }
    assert_eq!(h.status_of(&id)["message"], "STOPPED");
}

#[test]
fn the_token_comes_first_then_the_instance_then_the_action() {
    let h = slow();
    let missing = "/api/lambda-instances/00000000-0000-4000-8000-000000000000/";
    // A bad token and a missing instance: 401.
    let r = post(
        &h.url(missing),
        &[("Authorization", "Token nope")],
        "application/x-www-form-urlencoded",
        b"action=jump",
    );
    assert_eq!(r.status, 401);
    // A good token, a missing instance and a bad action: 404.
    let r = post_form(&h.url(missing), TOKEN, "jump");
    assert_eq!(r.status, 404);
    assert_eq!(
        r.body,
        error_body(
            404,
            "The specified lambda instance doesn't exist.",
            "not_found"
        )
    );
    // A good token, an existing instance and a bad action: 400.
    let id = h.add_instance(Status::Stopped);
    for body in ["action=jump", "action=", "other=1", "action=START"] {
        let r = post(
            &h.url(&format!("/api/lambda-instances/{id}/")),
            &[("Authorization", &format!("Token {TOKEN}"))],
            "application/x-www-form-urlencoded",
            body.as_bytes(),
        );
        assert_eq!(r.status, 400, "{body}");
        assert_eq!(
            r.body,
            error_body(
                400,
                "action POST parameter can be used with start or stop value.",
                "bad_request"
            )
        );
    }
}

#[test]
fn another_users_instance_is_not_found() {
    let h = slow();
    let theirs = h.add_instance_for(OTHER_USER, Status::Stopped);
    let r = h.action(&theirs, "start");
    assert_eq!(r.status, 404);
    assert_eq!(
        r.json()["errors"][0]["message"],
        "The specified lambda instance doesn't exist."
    );
    assert_eq!(
        h.get(&format!("/api/lambda-instances/{theirs}/"), Some(TOKEN))
            .status,
        404
    );
    // Its owner sees it.
    assert_eq!(
        h.get(
            &format!("/api/lambda-instances/{theirs}/"),
            Some(OTHER_TOKEN)
        )
        .status,
        200
    );
}

/// A DESTROYED instance is kept for reference (SPEC §1, §4): its details answer, and a
/// start or a stop is refused with 409.
#[test]
fn destroyed_is_kept_for_reference_and_refuses_actions() {
    let h = slow();
    let id = h.add_instance(Status::Destroyed);
    for action in ["start", "stop"] {
        let r = h.action(&id, action);
        assert_eq!(r.status, 409, "{action}: {}", r.body);
        let message =
            format!("Can't {action} a lambda instance while lambda instance status is DESTROYED.");
        assert_eq!(r.body, error_body(409, &message, "conflict"));
    }
    let status = h.status_of(&id);
    assert_eq!(status["message"], "DESTROYED");
    assert_eq!(status["code"], "6");
    assert_eq!(status["detail"], "Lambda instance has been destroyed");
}

/// The seed page's own call: `curl -X POST -H "Authentication:Token ..." -F "action=start"`,
/// with curl's multipart body byte for byte.
#[test]
fn the_seed_curl_call() {
    let h = slow();
    let id = h.add_instance(Status::Stopped);
    let boundary = "------------------------7e0c2f9b1a3d5e6f";
    let body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"action\"\r\n\r\nstart\r\n--{boundary}--\r\n"
    );
    let raw = format!(
        "POST /api/lambda-instances/{id}/ HTTP/1.1\r\nHost: {host}\r\nUser-Agent: curl/7.88.1\r\n\
         Accept: */*\r\nAuthentication:Token {TOKEN}\r\nContent-Length: {len}\r\n\
         Content-Type: multipart/form-data; boundary={boundary}\r\nConnection: close\r\n\r\n{body}",
        host = h.base.trim_start_matches("http://"),
        len = body.len(),
    );
    let answer = raw_request(&h.base, raw.as_bytes());
    let (head, json_body) = answer.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 202"), "{answer}");
    let v: Value = serde_json::from_str(json_body).unwrap();
    assert_eq!(
        v["status"],
        json!({"code": 202, "short-description": "Your request has been accepted",
               "short_description": "Your request has been accepted"})
    );
    let action = v["data"][0]["id"].as_str().unwrap();
    let link = format!("{}/api/lambda-instances/{id}/actions/{action}/", h.base);
    assert_eq!(v["data"][0]["links"]["self"], link);
    assert!(
        head.lines().any(|l| l == format!("Location: {link}")),
        "{head}"
    );
    assert_eq!(h.status_of(&id)["message"], "STARTING");
}

/// Sends raw bytes and reads the whole answer (the request must ask to close).
fn raw_request(base: &str, bytes: &[u8]) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(base.trim_start_matches("http://")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(bytes).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn json_and_x_auth_token_are_accepted() {
    let h = slow();
    let id = h.add_instance(Status::Stopped);
    let r = post(
        &h.url(&format!("/api/lambda-instances/{id}")),
        &[("X-Auth-Token", TOKEN)],
        "application/json",
        br#"{"action":"start"}"#,
    );
    assert_eq!(r.status, 202, "{}", r.body);
}

#[test]
fn unsupported_type_and_oversized_body() {
    let h = slow();
    let id = h.add_instance(Status::Stopped);
    let url = h.url(&format!("/api/lambda-instances/{id}/"));
    let auth = [("Authorization", &*format!("Token {TOKEN}"))];
    let r = post(&url, &auth, "text/plain", b"action=start");
    assert_eq!(r.status, 415);
    assert_eq!(r.json()["errors"][0]["details"], "unsupported_media_type");
    let big = vec![b'a'; h.config.max_body_bytes + 1];
    let r = post(&url, &auth, "application/x-www-form-urlencoded", &big);
    assert_eq!(r.status, 413);
    let r = post(&url, &auth, "application/json", b"{\"action\":");
    assert_eq!(r.status, 400);
    assert_eq!(h.status_of(&id)["message"], "STOPPED");
}

#[test]
fn paths_methods_and_request_ids() {
    let h = slow();
    let id = h.add_instance(Status::Stopped);
    let r = h.get("/api/nothing-here/", Some(TOKEN));
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["errors"][0]["code"], 404);
    let r = post(&h.url("/healthz"), &[], "application/json", b"{}");
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, HEAD"));
    let r = post(
        &h.url(&format!("/api/lambda-instances/{id}/actions/")),
        &[],
        "application/json",
        b"{}",
    );
    assert_eq!(r.status, 405);
    // A sane client id is echoed; anything else is replaced.
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .new_agent();
    let r = agent
        .get(&h.url("/healthz"))
        .header("X-Request-Id", "abc-123")
        .call()
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "abc-123");
    let r = agent
        .get(&h.url("/healthz"))
        .header("X-Request-Id", "a b")
        .call()
        .unwrap();
    assert_eq!(r.headers()["x-request-id"].len(), 36);
    let r = h.get("/healthz", None);
    assert_eq!(r.status, 200);
}

#[test]
fn details_and_filters() {
    let h = slow();
    let id = h.add_instance(Status::Stopped);
    let r = h.get(&format!("/api/lambda-instances/{id}/"), Some(TOKEN));
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(
        v["status"],
        json!({"short_description": "Lambda instance details", "code": 200})
    );
    assert_eq!(
        v["data"][0]["status"],
        json!({"message": "STOPPED", "code": "1", "detail": "Lambda instance has been stopped"})
    );
    let info = &v["data"][0]["info"];
    assert_eq!(info["slave_servers"], json!(["102", "103"]));
    // Where the original puts them, and its clients read them.
    assert_eq!(info["id"], json!(id));
    assert_eq!(info["name"], "demo");
    assert_eq!(
        info["instance_info"],
        json!({"master_server": "101", "slave_servers": ["102", "103"],
               "master_node_id": "101", "slaves": 2})
    );
    assert_eq!(v["data"][0]["applications"], json!([]));
    let v = h
        .get(
            &format!("/api/lambda-instances/{id}/?filter=status"),
            Some(TOKEN),
        )
        .json();
    assert!(v["data"][0].get("info").is_none());
    let v = h
        .get(
            &format!("/api/lambda-instances/{id}/?filter=info"),
            Some(TOKEN),
        )
        .json();
    assert!(v["data"][0].get("status").is_none());
    let r = h.get(
        &format!("/api/lambda-instances/{id}/?filter=x"),
        Some(TOKEN),
    );
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json()["errors"][0]["message"],
        "filter GET parameter can be used with values status or info."
    );
}
