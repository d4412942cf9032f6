//! The router and the handlers. A handler gets the request head, a way to read the body (only
//! after the head has been checked) and this thread's database connection, and returns a
//! [`Reply`]; errors become replies in one place, [`ApiError::reply`].

use std::io::Read;
use std::sync::Arc;

use serde::Serialize;
use serde_json::{json, Value};

use sha2::{Digest, Sha256};

use super::body::{action_field, check_type};
use super::reply::{ApiError, Reply};
use super::App;
use crate::auth::{token_from_headers, User};
use crate::metrics::Gauges;
use crate::model::{now_ms, rfc3339, ActionKind};
use crate::okeanos::AuthError;
use crate::store::{ActionRecord, Instance, Requested, Snapshot, Store, StoredAnswer};
use crate::worker::IDEMPOTENCY_TTL_MS;

const INSTANCE_NOT_FOUND: &str = "The specified lambda instance doesn't exist.";
const ACTION_NOT_FOUND: &str = "The specified action doesn't exist.";
const BAD_ACTION: &str = "action POST parameter can be used with start or stop value.";
const BAD_FILTER: &str = "filter GET parameter can be used with values status or info.";
const BAD_LIMIT: &str = "limit value should be an integer greater or equal to zero.";
const BAD_OFFSET: &str = "offset value should be an integer greater or equal to zero.";
const BAD_KEY: &str = "Idempotency-Key must be 1 to 255 printable ASCII characters.";
const KEY_REUSED: &str =
    "This Idempotency-Key was used with a different request in the last 24 hours.";
/// Largest page; a larger `limit` is served as this.
const MAX_LIMIT: u64 = 1000;
/// Page size of the action history when the client gives no `limit`.
const DEFAULT_ACTIONS_LIMIT: u64 = 20;

/// The parts of a request a handler may look at before deciding to read the body.
#[derive(Debug, Clone, Default)]
pub struct Head {
    /// Upper-case method.
    pub method: String,
    /// The path, without the query string.
    pub path: String,
    pub query: String,
    pub headers: Vec<(String, String)>,
}

impl Head {
    pub fn new(method: &str, url: &str, headers: Vec<(String, String)>) -> Head {
        let (path, query) = url.split_once('?').unwrap_or((url, ""));
        Head {
            method: method.to_ascii_uppercase(),
            path: path.to_string(),
            query: query.to_string(),
            headers,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn query_param(&self, name: &str) -> Option<String> {
        form_urlencoded::parse(self.query.as_bytes())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    }

    /// `scheme://host` for the links in replies: the `Host` the client used (behind a proxy,
    /// with the scheme it reports), else the address the service listens on.
    fn base_url(&self, listen: &str) -> String {
        let host = self
            .header("host")
            .filter(|h| !h.is_empty() && h.len() <= 255)
            .filter(|h| {
                h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
            })
            .unwrap_or(listen);
        let scheme = match self.header("x-forwarded-proto") {
            Some(p) if p.eq_ignore_ascii_case("https") => "https",
            _ => "http",
        };
        format!("{scheme}://{host}")
    }
}

/// Where the body of a request comes from; read only after the head has been checked (for
/// tiny_http, that is when a `100 Continue` goes out).
pub trait BodySource {
    fn reader(&mut self) -> &mut dyn Read;
}

impl BodySource for std::io::Cursor<Vec<u8>> {
    fn reader(&mut self) -> &mut dyn Read {
        self
    }
}

/// The paths the API knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route<'a> {
    Health,
    Metrics,
    Authenticate,
    Instances,
    Count,
    Instance(&'a str),
    Actions(&'a str),
    Action(&'a str, &'a str),
}

impl Route<'_> {
    /// A path with `{id}`s, the same for every instance: the label requests are counted by.
    pub fn template(&self) -> &'static str {
        match self {
            Route::Health => "/healthz",
            Route::Metrics => "/metrics",
            Route::Authenticate => "/api/authenticate/",
            Route::Instances => "/api/lambda-instances/",
            Route::Count => "/api/lambda-instances/count/",
            Route::Instance(_) => "/api/lambda-instances/{id}/",
            Route::Actions(_) => "/api/lambda-instances/{id}/actions/",
            Route::Action(..) => "/api/lambda-instances/{id}/actions/{action_id}/",
        }
    }

    fn allow(&self) -> &'static str {
        match self {
            Route::Instance(_) => "GET, HEAD, POST",
            _ => "GET, HEAD",
        }
    }
}

/// Finds the route of a path; a trailing slash is optional.
pub fn route(path: &str) -> Option<Route<'_>> {
    let trimmed = path.strip_suffix('/').unwrap_or(path);
    let segments: Vec<&str> = trimmed.split('/').skip(1).collect();
    if segments.iter().any(|s| s.is_empty()) && !trimmed.is_empty() {
        return None;
    }
    Some(match segments.as_slice() {
        ["healthz"] => Route::Health,
        ["metrics"] => Route::Metrics,
        ["api", "authenticate"] => Route::Authenticate,
        ["api", "lambda-instances"] => Route::Instances,
        ["api", "lambda-instances", "count"] => Route::Count,
        ["api", "lambda-instances", id] => Route::Instance(id),
        ["api", "lambda-instances", id, "actions"] => Route::Actions(id),
        ["api", "lambda-instances", id, "actions", action] => Route::Action(id, action),
        _ => return None,
    })
}

/// What a handled request came to, for the reply and the request log.
pub struct Handled {
    pub reply: Reply,
    pub route: &'static str,
    pub user: Option<String>,
}

/// Routes and answers one request.
pub fn handle(app: &App, store: &mut Store, head: &Head, body: &mut dyn BodySource) -> Handled {
    let mut user_id = None;
    let (route, result) = match route(&head.path) {
        None => (
            "unknown",
            Err(ApiError::NotFound(
                "The requested URL was not found.".into(),
            )),
        ),
        Some(r) => (
            r.template(),
            dispatch(app, store, head, body, r, &mut user_id),
        ),
    };
    Handled {
        reply: result.unwrap_or_else(|e| e.reply()),
        route,
        user: user_id,
    }
}

fn dispatch(
    app: &App,
    store: &mut Store,
    head: &Head,
    body: &mut dyn BodySource,
    route: Route,
    user_id: &mut Option<String>,
) -> Result<Reply, ApiError> {
    let method = head.method.as_str();
    let read = matches!(method, "GET" | "HEAD");
    match (route, method) {
        (Route::Instance(_), "POST") => {}
        (_, _) if read => {}
        _ => return Err(ApiError::MethodNotAllowed(route.allow())),
    }
    match route {
        Route::Health => return Ok(health(store)),
        Route::Metrics => return metrics(app, store),
        _ => {}
    }
    let (user, token) = authenticate(app, head)?;
    *user_id = Some(user.id.clone());
    // Only the answers with links need the base URL.
    let base = || head.base_url(&app.listen);
    match route {
        Route::Authenticate => Ok(Reply::json(
            200,
            &json!({"status": 200, "result": "Success", "data": {"name": user.name}}),
        )),
        Route::Instance(id) if method == "POST" => {
            let caller = Caller {
                user,
                token,
                base: base(),
            };
            action_call(app, store, head, body, &caller, id)
        }
        Route::Instance(id) => instance_details(store, head, &user, id),
        Route::Instances => list_instances(store, head, &user, &base()),
        Route::Count => Ok(Reply::json(
            200,
            &json!({
                "status": {"short_description": "Number of Lambda Instances", "code": 200},
                "data": [{"count": store.count_instances(&user.id)?}],
            }),
        )),
        Route::Actions(id) => list_actions(store, head, &user, id, &base()),
        Route::Action(id, action_id) => {
            owned(store, id, &user)?;
            let record = store
                .action(id, action_id)?
                .ok_or_else(|| ApiError::NotFound(ACTION_NOT_FOUND.into()))?;
            let reply = Reply::json(200, &action_json(&record));
            Ok(if record.state.is_live() {
                with_retry_after(app, reply, record.created_at)
            } else {
                reply
            })
        }
        Route::Health | Route::Metrics => unreachable!("answered before authentication"),
    }
}

/// Adds `Retry-After` for an action accepted at `created_at` and not yet ended.
fn with_retry_after(app: &App, reply: Reply, created_at: i64) -> Reply {
    let age = std::time::Duration::from_millis((now_ms() - created_at).max(0) as u64);
    reply.with_header("Retry-After", app.metrics.retry_after(age).to_string())
}

fn metrics(app: &App, store: &Store) -> Result<Reply, ApiError> {
    let (queued, running) = store.live_counts()?;
    let gauges = Gauges {
        queued,
        running,
        channel: app.wakeups.len(),
    };
    Ok(Reply::text(
        200,
        "text/plain; version=0.0.4; charset=utf-8",
        app.metrics.render(&gauges),
    ))
}

/// `limit` and `offset` from the query; `limit` None when absent.
fn page(head: &Head) -> Result<(Option<u64>, u64), ApiError> {
    let number = |name: &str, message: &str| -> Result<Option<u64>, ApiError> {
        match head.query_param(name) {
            None => Ok(None),
            Some(v) => v
                .parse::<u64>()
                .map(Some)
                .map_err(|_| ApiError::BadRequest(message.into())),
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
fn list_instances(store: &Store, head: &Head, user: &User, base: &str) -> Result<Reply, ApiError> {
    let (limit, offset) = page(head)?;
    let data: Vec<Value> = store
        .list_instances(&user.id, limit, offset)?
        .into_iter()
        .map(|i| {
            let mut status = json!({
                "message": i.status.name(),
                "code": i.status.code(),
                "detail": i.status.detail(),
            });
            if let Some(m) = i.failure_message {
                status["failure_message"] = Value::String(m);
            }
            json!({"name": i.name, "id": i.id, "status": status})
        })
        .collect();
    let mut body = json!({
        "status": {"short_description": "Lambda instances", "code": 200},
        "data": data,
    });
    if let Some(limit) = limit {
        let count = store.count_instances(&user.id)?;
        body["pagination"] = pagination(base, "/api/lambda-instances/", limit, offset, count);
    }
    Ok(Reply::json(200, &body))
}

/// `GET /api/lambda-instances/{id}/actions/[?limit=&offset=]`: newest first, always paged.
fn list_actions(
    store: &Store,
    head: &Head,
    user: &User,
    id: &str,
    base: &str,
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
    Ok(Reply::json(
        200,
        &json!({
            "status": {"short_description": "Lambda instance actions", "code": 200},
            "data": data,
            "pagination": pagination(base, &path, limit, offset, count),
        }),
    ))
}

fn health(store: &Store) -> Reply {
    match store.ping() {
        Ok(()) => Reply::json(200, &json!({"status": "ok", "database": "ok"})),
        Err(e) => {
            log::error!("health check: {e}");
            Reply::json(
                503,
                &json!({"status": "unavailable", "database": e.to_string()}),
            )
            .with_header("Retry-After", "5")
        }
    }
}

/// Who made an action call, and the base of the links to answer with.
struct Caller<'a> {
    user: Arc<User>,
    token: &'a str,
    base: String,
}

/// The caller, by their token; 401 for none or a rejected one, 503 when identity cannot say.
fn authenticate<'h>(app: &App, head: &'h Head) -> Result<(Arc<User>, &'h str), ApiError> {
    let token = token_from_headers(head.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .ok_or(ApiError::Unauthorized)?;
    let checked = app.auth.check(token);
    app.metrics.token_check(checked.cached);
    match checked.result {
        Ok(user) => Ok((user, token)),
        Err(AuthError::Rejected) => Err(ApiError::Unauthorized),
        Err(AuthError::Unavailable(why)) => {
            log::warn!("identity: {why}");
            Err(ApiError::Unavailable(
                "The ~okeanos identity service is unavailable; try again later.".into(),
            ))
        }
    }
}

fn owned(store: &Store, id: &str, user: &User) -> Result<Instance, ApiError> {
    store
        .owned_instance(id, &user.id)?
        .ok_or_else(|| ApiError::NotFound(INSTANCE_NOT_FOUND.into()))
}

/// `POST /api/lambda-instances/{id}/`: token → instance → action → state table.
fn action_call(
    app: &App,
    store: &mut Store,
    head: &Head,
    body: &mut dyn BodySource,
    caller: &Caller,
    id: &str,
) -> Result<Reply, ApiError> {
    let user = &caller.user;
    let key = idempotency_key(head)?;
    let seen = store
        .snapshot(id, &user.id)?
        .ok_or_else(|| ApiError::NotFound(INSTANCE_NOT_FOUND.into()))?;
    check_body_head(head, app.max_body_bytes)?;
    let bytes = read_body(body, app.max_body_bytes)?;
    let action = action_field(head.header("content-type"), &bytes)?
        .as_deref()
        .and_then(ActionKind::parse)
        .ok_or_else(|| ApiError::BadRequest(BAD_ACTION.into()))?;
    let Some(key) = key else {
        return decide(app, store, caller, seen, id, action);
    };
    // The request's identity is what it asks for, not its bytes: curl -F picks a new
    // multipart boundary on every call, and a retry must still match.
    let fingerprint = format!("{:x}", Sha256::digest(format!("{id} {}", action.name())));
    if let Some(stored) = store.stored_answer(&user.id, key, IDEMPOTENCY_TTL_MS)? {
        if stored.fingerprint != fingerprint {
            return Err(ApiError::Unprocessable(KEY_REUSED.into()));
        }
        let mut reply = Reply {
            status: stored.status,
            headers: vec![("Content-Type", "application/json".into())],
            body: stored.body.into_bytes(),
        };
        if let Some(location) = stored.location {
            reply = reply.with_header("Location", location);
        }
        return Ok(reply.with_header("Idempotent-Replayed", "true"));
    }
    let reply = decide(app, store, caller, seen, id, action).unwrap_or_else(|e| e.reply());
    // Answers of the state table are kept; a 503 (the database failing) is not an answer.
    if matches!(reply.status, 202 | 409) {
        let answer = StoredAnswer {
            fingerprint,
            status: reply.status,
            body: String::from_utf8_lossy(&reply.body).into_owned(),
            location: reply.header("location").map(str::to_string),
        };
        // The answer stands even if it cannot be kept: a 202 here means the action is
        // committed, and answering 503 would tell the client it was not.
        if let Err(e) = store.store_answer(&user.id, key, &answer, IDEMPOTENCY_TTL_MS) {
            log::error!("keeping the answer to an Idempotency-Key: {e}");
        }
    }
    Ok(reply)
}

/// The `Idempotency-Key` header, if any; 400 when it is empty, too long or not plain text.
fn idempotency_key(head: &Head) -> Result<Option<&str>, ApiError> {
    let Some(raw) = head.header("idempotency-key") else {
        return Ok(None);
    };
    // The draft makes the key an sf-string, `"..."`; a bare token is accepted too.
    let key = raw
        .strip_prefix('"')
        .and_then(|k| k.strip_suffix('"'))
        .unwrap_or(raw);
    if key.is_empty() || key.len() > 255 || !key.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err(ApiError::BadRequest(BAD_KEY.into()));
    }
    Ok(Some(key))
}

/// The state table, applied to what was `seen` and, for a new action, committed; the 202
/// (with its handle) or the refusal.
fn decide(
    app: &App,
    store: &mut Store,
    caller: &Caller,
    seen: Snapshot,
    id: &str,
    action: ActionKind,
) -> Result<Reply, ApiError> {
    let (user, base) = (&caller.user, &caller.base);
    let (token, compute) = (caller.token, &user.compute_url);
    let action_id = match store.request_action(seen, id, &user.id, action, token, compute)? {
        Requested::NotFound => return Err(ApiError::NotFound(INSTANCE_NOT_FOUND.into())),
        Requested::Conflict(message) => return Err(ApiError::Conflict(message)),
        Requested::Merged(action_id) => action_id,
        Requested::Created(action_id) => {
            // Committed: the action is safe whether or not this wake-up fits in the channel
            // (an idle worker finds it in SQLite within a second).
            let _ = app.wakeups.try_send(action_id.clone());
            log::info!(
                "action {action_id}: {} instance {id} accepted",
                action.name()
            );
            action_id
        }
    };
    let location = format!("{base}/api/lambda-instances/{id}/actions/{action_id}/");
    let reply = Reply::json(
        202,
        &json!({
            "status": {"code": 202, "short-description": "Your request has been accepted"},
            "data": [{"id": action_id, "links": {"self": location}}],
        }),
    )
    .with_header("Location", location);
    let age = std::time::Duration::ZERO;
    Ok(reply.with_header("Retry-After", app.metrics.retry_after(age).to_string()))
}

/// Checks the body's head (type, then length) before anything is read: 415 for a type the
/// call does not read, 400 for a length that is not a number, 413 for one over the cap, 411
/// for a typed body with neither a length nor chunked encoding.
fn check_body_head(head: &Head, max: usize) -> Result<(), ApiError> {
    // tiny_http decodes any Transfer-Encoding as chunked and then ignores Content-Length.
    let chunked = head.header("transfer-encoding").is_some();
    let length = match head.header("content-length").filter(|_| !chunked) {
        None => None,
        Some(v) => Some(
            v.trim()
                .parse::<u64>()
                .map_err(|_| ApiError::BadRequest("Content-Length is not a number.".into()))?,
        ),
    };
    let content_type = head.header("content-type");
    check_type(content_type, chunked || length.unwrap_or(0) > 0)?;
    match length {
        Some(n) if n > max as u64 => Err(ApiError::PayloadTooLarge(max)),
        None if !chunked && content_type.is_some() => Err(ApiError::LengthRequired),
        _ => Ok(()),
    }
}

/// Reads the body, once its head has been checked, through a reader capped one byte past
/// `max` (a chunked body declares no length).
fn read_body(body: &mut dyn BodySource, max: usize) -> Result<Vec<u8>, ApiError> {
    let mut bytes = Vec::new();
    body.reader()
        .take(max as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| ApiError::BadRequest(format!("The request body could not be read: {e}.")))?;
    if bytes.len() > max {
        return Err(ApiError::PayloadTooLarge(max));
    }
    Ok(bytes)
}

/// The `status` object of an instance.
#[derive(Serialize)]
struct StatusJson<'a> {
    message: &'static str,
    code: &'static str,
    detail: &'static str,
    failure_message: &'a str,
}

impl StatusJson<'_> {
    fn of(instance: &Instance) -> StatusJson<'_> {
        StatusJson {
            message: instance.status.name(),
            code: instance.status.code(),
            detail: instance.status.detail(),
            failure_message: instance.failure_message.as_deref().unwrap_or(""),
        }
    }
}

/// The `info` object of an instance.
#[derive(Serialize)]
struct InfoJson<'a> {
    master_server: &'a str,
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
fn instance_details(store: &Store, head: &Head, user: &User, id: &str) -> Result<Reply, ApiError> {
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
            master_server: &instance.master,
            slave_servers: &instance.slaves,
            created_at: rfc3339(instance.created_at),
        }),
        status: status.then(|| StatusJson::of(&instance)),
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

    fn check(path: &str, expected: Option<Route>) {
        assert_eq!(route(path), expected, "{path}");
    }

    #[test]
    fn routes_with_and_without_trailing_slash() {
        check("/healthz", Some(Route::Health));
        check("/healthz/", Some(Route::Health));
        check("/api/authenticate", Some(Route::Authenticate));
        check("/api/lambda-instances/", Some(Route::Instances));
        check("/api/lambda-instances/count", Some(Route::Count));
        check("/api/lambda-instances/abc/", Some(Route::Instance("abc")));
        check(
            "/api/lambda-instances/abc/actions",
            Some(Route::Actions("abc")),
        );
        check(
            "/api/lambda-instances/abc/actions/x/",
            Some(Route::Action("abc", "x")),
        );
    }

    #[test]
    fn unknown_paths() {
        check("/", None);
        check("", None);
        check("/api", None);
        check("/api/lambda-instances//", None);
        check("/api//lambda-instances/", None);
        check("/api/lambda-instances/abc/actions/x/y", None);
        check("/api/lambda-instances/abc/start", None);
    }

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

    #[test]
    fn base_url_from_host() {
        let head = |h: Vec<(&str, &str)>| {
            Head::new(
                "GET",
                "/",
                h.into_iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            )
        };
        assert_eq!(
            head(vec![("Host", "api.example:8080")]).base_url("l"),
            "http://api.example:8080"
        );
        assert_eq!(
            head(vec![("Host", "x"), ("X-Forwarded-Proto", "https")]).base_url("l"),
            "https://x"
        );
        assert_eq!(
            head(vec![("Host", "evil/\"x")]).base_url("127.0.0.1:1"),
            "http://127.0.0.1:1"
        );
        assert_eq!(head(vec![]).base_url("127.0.0.1:1"), "http://127.0.0.1:1");
    }
}
