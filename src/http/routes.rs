//! The router and the handlers. A handler gets the request head, a way to read the body (only
//! after the head has been checked) and this thread's database connection, and returns a
//! [`Reply`]; errors become replies in one place, [`ApiError::reply`].

use std::io::Read;
use std::sync::Arc;

use serde_json::{json, Value};

use super::body::action_field;
use super::reply::{ApiError, Reply};
use super::App;
use crate::auth::{token_from_headers, User};
use crate::model::{rfc3339, ActionKind};
use crate::okeanos::AuthError;
use crate::store::{ActionRecord, Instance, Requested, Store};

const INSTANCE_NOT_FOUND: &str = "The specified lambda instance doesn't exist.";
const ACTION_NOT_FOUND: &str = "The specified action doesn't exist.";
const BAD_ACTION: &str = "action POST parameter can be used with start or stop value.";
const BAD_FILTER: &str = "filter GET parameter can be used with values status or info.";

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
    if route == Route::Health {
        return Ok(health(store));
    }
    let (user, token) = authenticate(app, head)?;
    *user_id = Some(user.id.clone());
    let base = head.base_url(&app.listen);
    match route {
        Route::Authenticate => Ok(Reply::json(
            200,
            &json!({"status": 200, "result": "Success", "data": {"name": user.name}}),
        )),
        Route::Instance(id) if method == "POST" => {
            action_call(app, store, head, body, &user, token, id, &base)
        }
        Route::Instance(id) => instance_details(store, head, &user, id),
        Route::Action(id, action_id) => {
            owned(store, id, &user)?;
            let record = store
                .action(id, action_id)?
                .ok_or_else(|| ApiError::NotFound(ACTION_NOT_FOUND.into()))?;
            Ok(Reply::json(200, &action_json(&record)))
        }
        Route::Instances | Route::Count | Route::Actions(_) | Route::Health => Err(
            ApiError::NotFound("The requested URL was not found.".into()),
        ),
    }
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

/// The caller, by their token; 401 for none or a rejected one, 503 when identity cannot say.
fn authenticate<'h>(app: &App, head: &'h Head) -> Result<(Arc<User>, &'h str), ApiError> {
    let token = token_from_headers(head.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .ok_or(ApiError::Unauthorized)?;
    match app.auth.check(token).result {
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
#[allow(clippy::too_many_arguments)]
fn action_call(
    app: &App,
    store: &mut Store,
    head: &Head,
    body: &mut dyn BodySource,
    user: &User,
    token: &str,
    id: &str,
    base: &str,
) -> Result<Reply, ApiError> {
    owned(store, id, user)?;
    let bytes = read_body(head, body, app.max_body_bytes)?;
    let action = action_field(head.header("content-type"), &bytes)?
        .as_deref()
        .and_then(ActionKind::parse)
        .ok_or_else(|| ApiError::BadRequest(BAD_ACTION.into()))?;
    let action_id = match store.request_action(id, &user.id, action, token, &user.compute_url)? {
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
    Ok(Reply::json(
        202,
        &json!({
            "status": {"code": 202, "short-description": "Your request has been accepted"},
            "data": [{"id": action_id, "links": {"self": location}}],
        }),
    )
    .with_header("Location", location))
}

/// Reads the body through a reader capped at `max` bytes: a declared length over the cap is
/// refused before a byte is read, and a chunked body is cut off one byte past it.
fn read_body(head: &Head, body: &mut dyn BodySource, max: usize) -> Result<Vec<u8>, ApiError> {
    if let Some(length) = head.header("content-length") {
        let length: u64 = length
            .trim()
            .parse()
            .map_err(|_| ApiError::BadRequest("Content-Length is not a number.".into()))?;
        if length > max as u64 {
            return Err(ApiError::PayloadTooLarge(max));
        }
    }
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

fn status_json(instance: &Instance) -> Value {
    json!({
        "message": instance.status.name(),
        "code": instance.status.code(),
        "detail": instance.status.detail(),
        "failure_message": instance.failure_message.as_deref().unwrap_or(""),
    })
}

fn info_json(instance: &Instance) -> Value {
    json!({
        "master_server": instance.master,
        "slave_servers": instance.slaves,
        "created_at": rfc3339(instance.created_at),
    })
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
    let mut data = json!({"id": instance.id, "name": instance.name});
    if info {
        data["info"] = info_json(&instance);
    }
    if status {
        data["status"] = status_json(&instance);
    }
    Ok(Reply::json(
        200,
        &json!({
            "status": {"short_description": "Lambda instance details", "code": 200},
            "data": [data],
        }),
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
