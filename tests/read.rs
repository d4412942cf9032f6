use std::time::Duration;

use lambda_api::model::Status;
use serde_json::{json, Value};

use crate::support::*;

fn slow() -> Harness {
    Harness::start(Duration::from_secs(60))
}

#[test]
fn authenticate_names_the_user() {
    let h = slow();
    let r = h.get("/api/authenticate/", Some(TOKEN));
    assert_eq!(r.status, 200);
    assert_eq!(
        r.body,
        r#"{"status":200,"result":"Success","data":{"name":"demo@example.org"}}"#
    );
    assert_eq!(h.get("/api/authenticate", Some("nope")).status, 401);
    assert_eq!(h.get("/api/authenticate", None).status, 401);
}

/// Three of the demo user's instances, one destroyed, and one of another user.
/// The list and the details give an instance the same `status` object: `failure_message`
/// only when there is one (an empty one, left by hand or by an older release, is none).
#[test]
fn the_list_and_the_details_agree_on_status() {
    let h = slow();
    let failed = h.add_instance(Status::Failed);
    let emptied = h.add_instance(Status::Failed);
    let db = rusqlite::Connection::open(&h.config.database).unwrap();
    db.execute(
        "UPDATE lambda_instances SET failure_message = ?2 WHERE id = ?1",
        [&failed, "413 overLimit (quota)"],
    )
    .unwrap();
    db.execute(
        "UPDATE lambda_instances SET failure_message = '' WHERE id = ?1",
        [&emptied],
    )
    .unwrap();
    let list = h.get("/api/lambda-instances/", Some(TOKEN)).json();
    for id in [&failed, &emptied] {
        let listed = list["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["id"] == json!(id))
            .unwrap()["status"]
            .clone();
        let details = h.status_of(id);
        assert_eq!(listed, details, "{id}");
    }
    assert_eq!(
        h.status_of(&failed)["failure_message"],
        "413 overLimit (quota)"
    );
    assert!(h.status_of(&emptied).get("failure_message").is_none());
}

fn populated() -> (Harness, Vec<String>) {
    let h = slow();
    let mut mine = Vec::new();
    for status in [Status::Stopped, Status::Started, Status::Failed] {
        mine.push(h.add_instance(status));
    }
    h.add_instance(Status::Destroyed);
    h.add_instance_for(OTHER_USER, Status::Stopped);
    (h, mine)
}

fn ids(v: &Value) -> Vec<String> {
    v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn list_and_count_show_only_the_callers_live_instances() {
    let (h, mine) = populated();
    let v = h.get("/api/lambda-instances/", Some(TOKEN)).json();
    assert_eq!(
        v["status"],
        json!({"short_description": "Lambda instances", "code": 200})
    );
    assert_eq!(ids(&v), mine);
    assert!(v.get("pagination").is_none());
    assert_eq!(
        v["data"][0],
        json!({"name": "demo", "id": mine[0], "status": {"message": "STOPPED", "code": "1", "detail": "Lambda instance has been stopped"}, "running_app": false})
    );
    let v = h.get("/api/lambda-instances/count/", Some(TOKEN)).json();
    assert_eq!(
        v,
        json!({"status": {"short_description": "Number of Lambda Instances", "code": 200}, "data": [{"count": 3}]})
    );
    assert_eq!(
        h.get("/api/lambda-instances/count", Some(OTHER_TOKEN))
            .json()["data"][0]["count"],
        1
    );
}

#[test]
fn pagination_follows_its_links() {
    let (h, mine) = populated();
    let first = h.get("/api/lambda-instances/?limit=2", Some(TOKEN)).json();
    assert_eq!(ids(&first), mine[..2]);
    let next = format!("{}/api/lambda-instances/?limit=2&offset=2", h.base);
    assert_eq!(
        first["pagination"],
        json!({"count": 3, "next": next, "previous": null})
    );
    let second = get(&next, Some(TOKEN)).json();
    assert_eq!(ids(&second), mine[2..]);
    let previous = format!("{}/api/lambda-instances/?limit=2&offset=0", h.base);
    assert_eq!(
        second["pagination"],
        json!({"count": 3, "next": null, "previous": previous})
    );
}

#[test]
fn pagination_edges() {
    let (h, _) = populated();
    let past = h
        .get("/api/lambda-instances/?limit=2&offset=10", Some(TOKEN))
        .json();
    assert_eq!(past["data"], json!([]));
    assert_eq!(past["pagination"]["next"], Value::Null);
    assert!(past["pagination"]["previous"].is_string());
    let zero = h.get("/api/lambda-instances/?limit=0", Some(TOKEN)).json();
    assert_eq!(zero["data"], json!([]));
    assert_eq!(
        zero["pagination"],
        json!({"count": 3, "next": null, "previous": null})
    );
    for query in [
        "limit=-1",
        "limit=abc",
        "limit=",
        "limit=1.5",
        "offset=-2",
        "offset=x&limit=1",
    ] {
        let r = h.get(&format!("/api/lambda-instances/?{query}"), Some(TOKEN));
        assert_eq!(r.status, 400, "{query}");
        let message = r.json()["errors"][0]["message"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(
            message.ends_with("value should be an integer greater or equal to zero."),
            "{message}"
        );
    }
}

#[test]
fn actions_are_followable_resources() {
    let h = Harness::start(Duration::from_millis(30));
    let id = h.add_instance(Status::Stopped);
    let r = h.action(&id, "start");
    let retry: u64 = r
        .header("retry-after")
        .expect("202 carries Retry-After")
        .parse()
        .unwrap();
    assert!((1..=30).contains(&retry));
    let start = r.json()["data"][0]["id"].as_str().unwrap().to_string();
    let location = r.header("location").unwrap().to_string();
    let done = h.wait_action_done(&id, &start);
    assert_eq!(done["state"], "succeeded");
    // A terminal action's read has no Retry-After; its Location is the action itself.
    let r = get(&location, Some(TOKEN));
    assert_eq!(r.status, 200);
    assert!(r.header("retry-after").is_none());
    let v = r.json();
    assert_eq!(v["id"], start);
    let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "id",
            "action",
            "state",
            "created_at",
            "started_at",
            "finished_at",
            "attempts",
            "error",
            "steps"
        ]
    );
    let stop = h.action(&id, "stop").json()["data"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    h.wait_action_done(&id, &stop);
    let list = h
        .get(&format!("/api/lambda-instances/{id}/actions/"), Some(TOKEN))
        .json();
    assert_eq!(
        ids(&list),
        vec![stop.clone(), start.clone()],
        "newest first"
    );
    assert_eq!(list["pagination"]["count"], 2);
    let page = h
        .get(
            &format!("/api/lambda-instances/{id}/actions/?limit=1&offset=1"),
            Some(TOKEN),
        )
        .json();
    assert_eq!(ids(&page), vec![start]);
    let missing =
        format!("/api/lambda-instances/{id}/actions/00000000-0000-4000-8000-000000000000/");
    assert_eq!(h.get(&missing, Some(TOKEN)).status, 404);
    assert_eq!(
        h.get(
            &format!("/api/lambda-instances/{id}/actions/"),
            Some(OTHER_TOKEN)
        )
        .status,
        404
    );
}

#[test]
fn a_live_action_read_says_when_to_come_back() {
    let h = slow();
    let id = h.add_instance(Status::Stopped);
    let r = h.action(&id, "start");
    let location = r.header("location").unwrap().to_string();
    let r = get(&location, Some(TOKEN));
    assert!(matches!(
        r.json()["state"].as_str(),
        Some("queued" | "running")
    ));
    let retry: u64 = r
        .header("retry-after")
        .expect("live action carries Retry-After")
        .parse()
        .unwrap();
    assert!((1..=30).contains(&retry));
}

fn keyed(h: &Harness, id: &str, key: &str, content_type: &str, body: &[u8]) -> Resp {
    post(
        &h.url(&format!("/api/lambda-instances/{id}/")),
        &[
            ("Authorization", &format!("Token {TOKEN}")),
            ("Idempotency-Key", key),
        ],
        content_type,
        body,
    )
}

fn multipart(boundary: &str, action: &str) -> (String, Vec<u8>) {
    (
        format!("multipart/form-data; boundary={boundary}"),
        format!("--{boundary}\r\nContent-Disposition: form-data; name=\"action\"\r\n\r\n{action}\r\n--{boundary}--\r\n").into_bytes(),
    )
}

#[test]
fn an_idempotency_key_replays_the_first_answer_across_a_restart() {
    let mut h = Harness::start(Duration::from_millis(30));
    let id = h.add_instance(Status::Stopped);
    let (t1, b1) = multipart("aaaa", "start");
    let first = keyed(&h, &id, "k-1", &t1, &b1);
    assert_eq!(first.status, 202);
    h.wait_status(&id, "STARTED");
    h.restart();
    // curl -F picks a new boundary each time: the same request, other bytes.
    let (t2, b2) = multipart("bbbb", "start");
    let again = keyed(&h, &id, "k-1", &t2, &b2);
    assert_eq!(again.status, 202, "{}", again.body);
    assert_eq!(again.body, first.body);
    assert_eq!(again.header("location"), first.header("location"));
    // Without the key, the same start is now a conflict: the replay did not run the table.
    assert_eq!(h.action(&id, "start").status, 409);
    assert_eq!(h.sim_actions().len(), 3, "one start per VM, no more");
}

#[test]
fn an_idempotency_key_with_another_request_is_422() {
    let h = slow();
    let id = h.add_instance(Status::Stopped);
    let form = "application/x-www-form-urlencoded";
    assert_eq!(keyed(&h, &id, "k-2", form, b"action=start").status, 202);
    let r = keyed(&h, &id, "k-2", form, b"action=stop");
    assert_eq!(r.status, 422);
    assert_eq!(r.json()["errors"][0]["code"], 422);
    // Keys are per user: another user's identical key is unrelated.
    let theirs = h.add_instance_for(OTHER_USER, Status::Stopped);
    let r = post(
        &h.url(&format!("/api/lambda-instances/{theirs}/")),
        &[("X-Auth-Token", OTHER_TOKEN), ("Idempotency-Key", "k-2")],
        form,
        b"action=start",
    );
    assert_eq!(r.status, 202, "{}", r.body);
}

/// Two requests sent at once with one key and different bodies are never both processed:
/// each looks the key up in the transaction that writes its outcome, so whichever commits
/// second finds the first's and gets 422.
#[test]
fn one_key_sent_twice_at_once_is_processed_once() {
    let h = slow();
    h.log_in();
    for trial in 0..12 {
        let id = h.add_instance(Status::Stopped);
        let key = format!("race-{trial}");
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(2));
        let answers: Vec<u16> = ["action=start", "action=stop"]
            .into_iter()
            .map(|body| {
                let (url, key, barrier) = (
                    h.url(&format!("/api/lambda-instances/{id}/")),
                    key.clone(),
                    barrier.clone(),
                );
                std::thread::spawn(move || {
                    barrier.wait();
                    let headers = [("X-Auth-Token", TOKEN), ("Idempotency-Key", key.as_str())];
                    post(
                        &url,
                        &headers,
                        "application/x-www-form-urlencoded",
                        body.as_bytes(),
                    )
                    .status
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect();
        // Whichever commits first is processed; the other, another request with the same
        // key, is refused.
        assert_eq!(
            answers.iter().filter(|s| **s == 422).count(),
            1,
            "trial {trial}: {answers:?}"
        );
    }
}

#[test]
fn malformed_idempotency_keys_are_400() {
    let h = slow();
    let id = h.add_instance(Status::Stopped);
    let form = "application/x-www-form-urlencoded";
    for key in ["", "\"\"", &"k".repeat(256)] {
        let r = keyed(&h, &id, key, form, b"action=start");
        assert_eq!(r.status, 400, "{key:?}");
    }
    assert_eq!(
        keyed(&h, &id, "\"quoted-key\"", form, b"action=start").status,
        202
    );
}

#[test]
fn metrics_move_when_requests_are_made() {
    let h = Harness::start(Duration::from_millis(30));
    let id = h.add_instance(Status::Stopped);
    let scrape = || {
        let r = h.get("/metrics", None);
        assert_eq!(r.status, 200);
        assert!(r
            .header("content-type")
            .unwrap()
            .starts_with("text/plain; version=0.0.4"));
        r.body
    };
    let value = |text: &str, series: &str| -> f64 {
        text.lines()
            .find_map(|l| {
                l.strip_prefix(series)
                    .and_then(|rest| rest.strip_prefix(' '))
            })
            .map_or(0.0, |v| v.parse().unwrap())
    };
    let before = scrape();
    h.action(&id, "start");
    h.wait_status(&id, "STARTED");
    h.get("/api/lambda-instances/", Some("bad-token"));
    let after = scrape();
    let route = r#"route="/api/lambda-instances/{id}/""#;
    for (series, at_least) in [
        (
            format!("lambda_http_requests_total{{{route},status=\"202\"}}"),
            1.0,
        ),
        (
            r#"lambda_http_requests_total{route="/api/lambda-instances/",status="401"}"#
                .to_string(),
            1.0,
        ),
        (
            r#"lambda_token_cache_total{result="miss"}"#.to_string(),
            2.0,
        ),
        (r#"lambda_token_cache_total{result="hit"}"#.to_string(), 1.0),
        (
            r#"lambda_actions_finished_total{state="succeeded"}"#.to_string(),
            1.0,
        ),
        (
            r#"lambda_okeanos_calls_total{op="start",outcome="202"}"#.to_string(),
            3.0,
        ),
        (
            format!("lambda_http_request_duration_seconds_count{{{route}}}"),
            1.0,
        ),
    ] {
        let grew = value(&after, &series) - value(&before, &series);
        assert!(grew >= at_least, "{series} grew by {grew}\n{after}");
    }
    assert_eq!(value(&after, r#"lambda_actions{state="queued"}"#), 0.0);
}
