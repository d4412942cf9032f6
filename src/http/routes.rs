//! The router: which handler a request goes to, the method and token checks every route
//! shares, and the one place an [`ApiError`] becomes a reply. The handlers are in
//! `action_call.rs` (the seed's call) and `reads.rs` (everything that only reads).

use serde_json::json;

use super::reply::{ApiError, Reply};
use super::request::{BodySource, Caller, Head};
use super::{action_call, create, reads, App};
use crate::auth::{token_from_headers, Refused, Token};
use crate::store::Store;

/// The paths the API knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route<'a> {
    Health,
    Metrics,
    Authenticate,
    Instances,
    /// `/api/lambda-instance/`: the original's path of a create.
    CreateInstance,
    Count,
    VmParameterValues,
    UserProjects,
    UserPublicKeys,
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
            Route::CreateInstance => "/api/lambda-instance/",
            Route::Count => "/api/lambda-instances/count/",
            Route::VmParameterValues => "/api/vm-parameter-values/",
            Route::UserProjects => "/api/user-okeanos-projects/",
            Route::UserPublicKeys => "/api/user-public-keys/",
            Route::Instance(_) => "/api/lambda-instances/{id}/",
            Route::Actions(_) => "/api/lambda-instances/{id}/actions/",
            Route::Action(..) => "/api/lambda-instances/{id}/actions/{action_id}/",
        }
    }

    fn allow(&self) -> &'static str {
        match self {
            Route::Instance(_) => "DELETE, GET, HEAD, POST",
            Route::Instances => "GET, HEAD, POST",
            Route::CreateInstance => "POST",
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
        ["api", "lambda-instance"] => Route::CreateInstance,
        ["api", "vm-parameter-values"] => Route::VmParameterValues,
        ["api", "user-okeanos-projects"] => Route::UserProjects,
        ["api", "user-public-keys"] => Route::UserPublicKeys,
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

impl Handled {
    /// A reply given before any handler ran (a refused head, a lack of threads), as `route`.
    pub fn unrouted(reply: Reply, route: &'static str) -> Handled {
        Handled {
            reply,
            route,
            user: None,
        }
    }
}

/// Routes and answers one request.
pub fn handle(app: &App, store: &mut Store, head: &Head, body: &mut dyn BodySource) -> Handled {
    let mut user = None;
    let (route, result) = match route(&head.path) {
        None => (
            "unknown",
            Err(ApiError::NotFound(
                "The requested URL was not found.".into(),
            )),
        ),
        Some(r) => (r.template(), dispatch(app, store, head, body, r, &mut user)),
    };
    Handled {
        reply: result.unwrap_or_else(|e| e.reply()),
        route,
        user,
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
        (Route::Instance(_), "POST" | "DELETE") => {}
        (Route::Instances | Route::CreateInstance, "POST") => {}
        (Route::CreateInstance, _) => return Err(ApiError::MethodNotAllowed(route.allow())),
        (_, _) if read => {}
        _ => return Err(ApiError::MethodNotAllowed(route.allow())),
    }
    match route {
        Route::Health => return Ok(reads::health(store)),
        Route::Metrics => return reads::metrics(app, store),
        _ => {}
    }
    let caller = authenticate(app, head)?;
    *user_id = Some(caller.user.id.clone());
    let user = &caller.user;
    match route {
        Route::Authenticate => Ok(Reply::json(
            200,
            &json!({"status": 200, "result": "Success", "data": {"name": user.name}}),
        )),
        Route::Instance(id) if method == "POST" => {
            action_call::handle(app, store, head, body, &caller, id)
        }
        Route::Instance(id) if method == "DELETE" => {
            action_call::destroy(app, store, head, &caller, id)
        }
        Route::Instance(id) => reads::instance_details(store, head, user, id),
        Route::Instances | Route::CreateInstance if method == "POST" => {
            create::handle(app, store, head, body, &caller)
        }
        Route::Instances => reads::list_instances(app, store, head, user),
        Route::VmParameterValues => create::vm_parameter_values(app, &caller),
        Route::UserProjects => create::user_projects(app, &caller),
        Route::UserPublicKeys => create::user_public_keys(app, &caller),
        Route::Count => reads::count_instances(store, user),
        Route::Actions(id) => reads::list_actions(app, store, head, user, id),
        Route::Action(id, action_id) => reads::action(app, store, user, id, action_id),
        Route::Health | Route::Metrics | Route::CreateInstance => {
            unreachable!("answered before authentication, or above")
        }
    }
}

/// The caller, by their token; 401 for none or a rejected one, 503 when identity cannot say.
fn authenticate<'h>(app: &App, head: &'h Head) -> Result<Caller<'h>, ApiError> {
    let token = match token_from_headers(head.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())))
    {
        Token::One(token) => token,
        Token::None => return Err(ApiError::Unauthorized),
        Token::Conflicting => {
            return Err(ApiError::BadRequest(
                "The request carries two different tokens; send one.".into(),
            ))
        }
    };
    let checked = app.auth.check(token, head.client);
    app.metrics.token_check(checked.cached);
    match checked.result {
        Ok(user) => Ok(Caller { user, token }),
        Err(Refused::Rejected) => Err(ApiError::Unauthorized),
        Err(Refused::Unavailable(why)) => {
            let why = crate::report::Report(&why).to_string();
            log::warn!("identity unavailable: {}", crate::report::escaped(&why));
            Err(ApiError::Unavailable(
                "The ~okeanos identity service is unavailable; try again later.".into(),
            ))
        }
        Err(Refused::Busy) => Err(ApiError::Unavailable(
            "Too many tokens are being checked at once; try again in a moment.".into(),
        )),
        Err(Refused::Blocked(left)) => Err(ApiError::TooManyTokens(left.as_secs().max(1))),
    }
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
        check("/api/lambda-instance/", Some(Route::CreateInstance));
        check("/api/vm-parameter-values", Some(Route::VmParameterValues));
        check("/api/user-okeanos-projects/", Some(Route::UserProjects));
        check("/api/user-public-keys/", Some(Route::UserPublicKeys));
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
}
