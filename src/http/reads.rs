//! The calls that only read: instances, their details and counts, the action history, and
//! the unauthenticated `/healthz` and `/metrics`.

use serde::Serialize;
use serde_json::{json, Value};

use super::reply::{ApiError, Reply, INSTANCE_NOT_FOUND};
use super::request::Head;
use super::App;
use crate::auth::User;
use crate::clock::rfc3339;
use crate::metrics::Gauges;
use crate::model::Status;
use crate::report::Report;
use crate::store::{ActionRecord, Instance, Store};

const ACTION_NOT_FOUND: &str = "The specified action doesn't exist.";
const BAD_FILTER: &str = "filter GET parameter can be used with values status or info.";
const BAD_LIMIT: &str = "limit value should be an integer greater or equal to zero.";
const BAD_OFFSET: &str = "offset value should be an integer greater or equal to zero.";
/// Largest page; a larger `limit` is served as this.
const MAX_LIMIT: u64 = 1000;
/// Page size of the action history when the client gives no `limit`.
const DEFAULT_ACTIONS_LIMIT: u64 = 20;

pub fn health(store: &mut Store) -> Reply {
    if store.write_trouble().is_some() {
        // The probe's outcome lands in write_trouble.
        let _ = store.probe_write();
    }
    match store.ping() {
        Ok(()) => match store.write_trouble() {
            None => Reply::json(
                200,
                &json!({"status": "ok", "database": "ok", "writes": "ok"}),
            ),
            // The database answers, and reads are served: 200, as the contract says, with
            // why new actions are refused (and lambda_database_writes_failing in /metrics).
            Some(why) => Reply::json(
                200,
                &json!({"status": "degraded", "database": "ok", "writes": why}),
            ),
        },
        Err(e) => {
            let why = Report(&e).to_string();
            log::error!("health check: {why}");
            Reply::json(503, &json!({"status": "unavailable", "database": why}))
                .with_header("Retry-After", "5")
        }
    }
}

pub fn metrics(app: &App, store: &Store) -> Result<Reply, ApiError> {
    let (queued, running) = store.live_counts()?;
    let gauges = Gauges {
        queued,
        running,
        channel: app.wakeups.len(),
        writes_failing: store.write_trouble().is_some(),
    };
    Ok(Reply::text(
        200,
        "text/plain; version=0.0.4; charset=utf-8",
        app.metrics.render(&gauges),
    ))
}

fn owned(store: &Store, id: &str, user: &User) -> Result<Instance, ApiError> {
    store
        .owned_instance(id, &user.id)?
        .ok_or_else(|| ApiError::NotFound(INSTANCE_NOT_FOUND.into()))
}

/// `limit` and `offset` from the query; `limit` None when absent.
fn page(head: &Head) -> Result<(Option<u64>, u64), ApiError> {
    let number = |name: &str, message: &str| -> Result<Option<u64>, ApiError> {
        match head.query_param(name) {
            None => Ok(None),
            // SQLite counts in i64: a larger value would wrap to a negative one.
            Some(v) => v
                .parse::<u64>()
                .ok()
                .filter(|n| i64::try_from(*n).is_ok())
                .map(Some)
                .ok_or_else(|| ApiError::BadRequest(message.into())),
        }
    };
    let limit = number("limit", BAD_LIMIT)?.map(|l| l.min(MAX_LIMIT));
    let offset = number("offset", BAD_OFFSET)?.unwrap_or(0);
    Ok((limit, offset))
}

/// `{"count","next","previous"}` with absolute URLs, or null at either end.
fn pagination(base: &str, path: &str, limit: u64, offset: u64, count: u64) -> Value {
    let link = |offset: u64| Value::String(format!("{base}{path}?limit={limit}&offset={offset}"));
    let next = if limit > 0 && offset.saturating_add(limit) < count {
        link(offset + limit)
    } else {
        Value::Null
    };
    // Back one page, but never past the last page that has items.
    let previous = if offset > 0 && limit > 0 && count > 0 {
        let last_page = (count - 1) / limit * limit;
        link(offset.saturating_sub(limit).min(last_page))
    } else {
        Value::Null
    };
    json!({"count": count, "next": next, "previous": previous})
}

/// `GET /api/lambda-instances/[?limit=&offset=]`.
pub fn list_instances(
    app: &App,
    store: &Store,
    head: &Head,
    user: &User,
) -> Result<Reply, ApiError> {
    let (limit, offset) = page(head)?;
    let data: Vec<Value> = store
        .list_instances(&user.id, limit, offset)?
        .into_iter()
        .map(|i| {
            let status = StatusJson::new(i.status, i.failure_message.as_deref());
            // The original lists whether an application runs on the instance; none is ever
            // deployed through this service.
            json!({"name": i.name, "id": i.id, "status": status, "running_app": false})
        })
        .collect();
    let mut body = json!({
        "status": {"short_description": "Lambda instances", "code": 200},
        "data": data,
    });
    if let Some(limit) = limit {
        let count = store.count_instances(&user.id)?;
        let base = head.base_url(&app.listen);
        body["pagination"] = pagination(&base, "/api/lambda-instances/", limit, offset, count);
    }
    Ok(Reply::json(200, &body))
}

/// `GET /api/lambda-instances/count/`.
pub fn count_instances(store: &Store, user: &User) -> Result<Reply, ApiError> {
    Ok(Reply::json(
        200,
        &json!({
            "status": {"short_description": "Number of Lambda Instances", "code": 200},
            "data": [{"count": store.count_instances(&user.id)?}],
        }),
    ))
}

/// `GET /api/lambda-instances/{id}/actions/[?limit=&offset=]`: newest first, always paged.
pub fn list_actions(
    app: &App,
    store: &Store,
    head: &Head,
    user: &User,
    id: &str,
) -> Result<Reply, ApiError> {
    let (limit, offset) = page(head)?;
    owned(store, id, user)?;
    let limit = limit.unwrap_or(DEFAULT_ACTIONS_LIMIT);
    let data: Vec<Value> = store
        .list_actions(id, limit, offset)?
        .iter()
        .map(action_json)
        .collect();
    let count = store.count_actions(id)?;
    let path = format!("/api/lambda-instances/{id}/actions/");
    let base = head.base_url(&app.listen);
    Ok(Reply::json(
        200,
        &json!({
            "status": {"short_description": "Lambda instance actions", "code": 200},
            "data": data,
            "pagination": pagination(&base, &path, limit, offset, count),
        }),
    ))
}

/// `GET /api/lambda-instances/{id}/actions/{action_id}/`; while the action is live, with a
/// `Retry-After` for the client following it.
pub fn action(
    app: &App,
    store: &Store,
    user: &User,
    id: &str,
    action_id: &str,
) -> Result<Reply, ApiError> {
    owned(store, id, user)?;
    let record = store
        .action(id, action_id)?
        .ok_or_else(|| ApiError::NotFound(ACTION_NOT_FOUND.into()))?;
    let reply = Reply::json(200, &action_json(&record));
    if !record.state.is_live() {
        return Ok(reply);
    }
    let age = (store.now_ms() - record.created_at).max(0) as u64;
    let retry = app.eta.retry_after(std::time::Duration::from_millis(age));
    Ok(reply.with_header("Retry-After", retry.to_string()))
}

/// The `status` object of an instance; `failure_message` only when there is one, as the
/// original sends it.
#[derive(Serialize)]
struct StatusJson<'a> {
    message: &'static str,
    code: &'static str,
    detail: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    failure_message: Option<&'a str>,
}

impl<'a> StatusJson<'a> {
    fn new(status: Status, failure_message: Option<&'a str>) -> StatusJson<'a> {
        StatusJson {
            message: status.name(),
            code: status.code(),
            detail: status.detail(),
            failure_message: failure_message.filter(|m| !m.is_empty()),
        }
    }
}

/// What is known of a cluster registered by hand: the original's `instance_info`, with the
/// `master_node_id` and `slaves` its web UI reads.
#[derive(Serialize)]
struct ClusterJson<'a> {
    master_server: Option<&'a str>,
    slave_servers: &'a [String],
    master_node_id: Option<&'a str>,
    slaves: usize,
}

/// The original's `instance_info`: for a cluster the service created, what its owner asked
/// for, with the servers made so far; else what is known of the cluster.
fn instance_info<'a>(instance: &'a Instance) -> InstanceInfo<'a> {
    let master = instance.master.as_deref();
    let asked = instance
        .info
        .as_deref()
        .and_then(|text| serde_json::from_str::<serde_json::Map<String, Value>>(text).ok());
    match asked {
        Some(mut asked) => {
            asked.insert("master_node_id".into(), json!(master));
            asked.insert("master_server".into(), json!(master));
            asked.insert("slave_servers".into(), json!(instance.slaves));
            InstanceInfo::Asked(asked)
        }
        None => InstanceInfo::Known(ClusterJson {
            master_server: master,
            slave_servers: &instance.slaves,
            master_node_id: master,
            slaves: instance.slaves.len(),
        }),
    }
}

#[derive(Serialize)]
#[serde(untagged)]
enum InstanceInfo<'a> {
    Asked(serde_json::Map<String, Value>),
    Known(ClusterJson<'a>),
}

/// The `info` object of an instance: the record's `id`, `name` and `instance_info`, where the
/// original's clients read them (its web UI takes the record's id from `info.id`), and the
/// cluster's servers and age.
#[derive(Serialize)]
struct InfoJson<'a> {
    id: &'a str,
    name: &'a str,
    instance_info: InstanceInfo<'a>,
    master_server: Option<&'a str>,
    slave_servers: &'a [String],
    created_at: String,
}

/// One instance's details, as the status poll answers them. Serialized straight from the
/// row: this is the busiest answer of the service.
#[derive(Serialize)]
struct DetailsJson<'a> {
    id: &'a str,
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    info: Option<InfoJson<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<StatusJson<'a>>,
    /// The applications deployed on the instance, as the original lists them: none is ever
    /// deployed through this service.
    #[serde(skip_serializing_if = "Option::is_none")]
    applications: Option<[(); 0]>,
}

/// `{"status": {...}, "data": [item]}`, the envelope of a read.
#[derive(Serialize)]
struct Described<T> {
    status: Description,
    data: [T; 1],
}

#[derive(Serialize)]
struct Description {
    short_description: &'static str,
    code: u16,
}

/// `GET /api/lambda-instances/{id}/[?filter=info|status]`.
pub fn instance_details(
    store: &Store,
    head: &Head,
    user: &User,
    id: &str,
) -> Result<Reply, ApiError> {
    let filter = head.query_param("filter");
    let (info, status) = match filter.as_deref() {
        None | Some("") => (true, true),
        Some("info") => (true, false),
        Some("status") => (false, true),
        Some(_) => return Err(ApiError::BadRequest(BAD_FILTER.into())),
    };
    let instance = owned(store, id, user)?;
    let details = DetailsJson {
        id: &instance.id,
        name: &instance.name,
        info: info.then(|| InfoJson {
            id: &instance.id,
            name: &instance.name,
            instance_info: instance_info(&instance),
            master_server: instance.master.as_deref(),
            slave_servers: &instance.slaves,
            created_at: rfc3339(instance.created_at),
        }),
        status: status
            .then(|| StatusJson::new(instance.status, instance.failure_message.as_deref())),
        applications: info.then_some([]),
    };
    Ok(Reply::json(
        200,
        &Described {
            status: Description {
                short_description: "Lambda instance details",
                code: 200,
            },
            data: [details],
        },
    ))
}

fn action_json(a: &ActionRecord) -> Value {
    json!({
        "id": a.id,
        "action": a.action.name(),
        "state": a.state.name(),
        "created_at": rfc3339(a.created_at),
        "started_at": a.started_at.map(rfc3339),
        "finished_at": a.finished_at.map(rfc3339),
        "attempts": a.attempts,
        "error": a.error,
        "steps": a.steps.iter().map(|s| json!({
            "vm": s.vm, "op": s.op, "result": s.result, "at": rfc3339(s.at),
        })).collect::<Vec<Value>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pagination_links() {
        let check = |limit, offset, count, next: Option<u64>, previous: Option<u64>| {
            let v = pagination("http://h", "/p/", limit, offset, count);
            let link = |o: Option<u64>| {
                o.map_or(Value::Null, |o| {
                    Value::String(format!("http://h/p/?limit={limit}&offset={o}"))
                })
            };
            assert_eq!(v["count"], count);
            assert_eq!(v["next"], link(next), "next of {limit} {offset} {count}");
            assert_eq!(
                v["previous"],
                link(previous),
                "previous of {limit} {offset} {count}"
            );
        };
        check(2, 0, 5, Some(2), None);
        check(2, 2, 5, Some(4), Some(0));
        check(2, 4, 5, None, Some(2));
        check(2, 1, 5, Some(3), Some(0));
        check(2, 9, 5, None, Some(4));
        check(2, 3, 4, None, Some(1));
        check(0, 0, 5, None, None);
        check(3, 0, 0, None, None);
    }
}
