//! `POST /api/lambda-instances/{id}/`, the seed's call (token → instance → action → state
//! table), and `DELETE /api/lambda-instances/{id}/`, destroy (SPEC §4), both with
//! `Idempotency-Key`. They translate: the decision is `model::decide`'s, its commit the
//! store's, what a key means `idempotency`'s.

use serde_json::json;

use super::body::action_field;
use super::reply::{ApiError, Reply, INSTANCE_NOT_FOUND};
use super::request::{check_body_head, read_body, BodySource, Caller, Head};
use super::App;
use crate::idempotency::{self, Prior};
use crate::model::ActionKind;
use crate::report::Report;
use crate::store::{Requested, Store, StoredAnswer};

const ACCEPTED: &str = "Your request has been accepted";
const DESTROY_ACCEPTED: &str =
    "Your request to destroy the specified lambda instance has been accepted";
const BAD_ACTION: &str = "action POST parameter can be used with start or stop value.";

/// The `Idempotency-Key` of a request, if it has one; 400 for one that is not plain text.
fn key(head: &Head) -> Result<Option<&str>, ApiError> {
    match head.header("idempotency-key") {
        None => Ok(None),
        Some(raw) => idempotency::parse_key(raw)
            .map(Some)
            .ok_or_else(|| ApiError::BadRequest(idempotency::BAD_KEY.into())),
    }
}

/// What the caller's instance `id` is, to decide on; 404 if the caller has none.
fn seen(store: &mut Store, caller: &Caller, id: &str) -> Result<crate::model::Seen, ApiError> {
    store
        .seen(id, &caller.user.id)?
        .ok_or_else(|| ApiError::NotFound(INSTANCE_NOT_FOUND.into()))
}

/// `POST`: start or stop, from the body's `action` field.
pub fn handle(
    app: &App,
    store: &mut Store,
    head: &Head,
    body: &mut dyn BodySource,
    caller: &Caller,
    id: &str,
) -> Result<Reply, ApiError> {
    let key = key(head)?;
    let seen = seen(store, caller, id)?;
    check_body_head(head, app.max_body_bytes)?;
    let bytes = read_body(body, app.max_body_bytes)?;
    let kind = match action_field(head.header("content-type"), &bytes)?.as_deref() {
        Some("start") => ActionKind::Start,
        Some("stop") => ActionKind::Stop,
        _ => return Err(ApiError::BadRequest(BAD_ACTION.into())),
    };
    request(app, store, head, caller, id, key, (kind, seen))
}

/// `DELETE`: destroy. No body is read.
pub fn destroy(
    app: &App,
    store: &mut Store,
    head: &Head,
    caller: &Caller,
    id: &str,
) -> Result<Reply, ApiError> {
    let key = key(head)?;
    let seen = store
        .seen(id, &caller.user.id)?
        .ok_or_else(|| ApiError::NotFound(INSTANCE_NOT_FOUND.into()))?;
    request(
        app,
        store,
        head,
        caller,
        id,
        key,
        (ActionKind::Destroy, seen),
    )
}

/// The state table on what was `seen`, through the idempotency key if there is one.
fn request(
    app: &App,
    store: &mut Store,
    head: &Head,
    caller: &Caller,
    id: &str,
    key: Option<&str>,
    (kind, seen): (ActionKind, crate::model::Seen),
) -> Result<Reply, ApiError> {
    let owner = &caller.user.id;
    let request = |store: &mut Store| -> Result<Reply, ApiError> {
        let (user, token) = (&caller.user, caller.token);
        let endpoints = (user.compute_url.as_str(), user.network_url.as_deref());
        let outcome = store.request_action(Some(&seen), id, owner, kind, token, endpoints)?;
        accepted(app, head, id, kind, outcome)
    };
    let Some(key) = key else {
        return request(store);
    };
    let fingerprint = idempotency::fingerprint(id, kind);
    match idempotency::claim(store, owner, key, &fingerprint)? {
        Prior::Replay(stored) => return Ok(replay(stored)),
        Prior::Reused => return Err(ApiError::Unprocessable(idempotency::REUSED.into())),
        Prior::InProgress => return Err(ApiError::Conflict(idempotency::IN_PROGRESS.into())),
        Prior::TooMany => return Err(ApiError::TooManyRequests(idempotency::TOO_MANY.into())),
        Prior::None => {}
    }
    let reply = request(store).unwrap_or_else(|e| e.reply());
    if idempotency::is_kept(reply.status) {
        let answer = StoredAnswer {
            fingerprint,
            status: reply.status,
            body: String::from_utf8_lossy(&reply.body).into_owned(),
            location: reply.header("location").map(str::to_string),
        };
        // The answer stands even if it cannot be kept: a 202 here means the action is
        // committed, and answering 503 would tell the client it was not.
        if let Err(e) = idempotency::keep(store, owner, key, &answer) {
            log::error!("keeping the answer to an Idempotency-Key: {}", Report(&e));
        }
    } else if let Err(e) = idempotency::release(store, owner, key) {
        log::error!("letting go of an Idempotency-Key: {}", Report(&e));
    }
    Ok(reply)
}

/// The 202 with the handle of the action (new or in flight), or the refusal.
fn accepted(
    app: &App,
    head: &Head,
    id: &str,
    kind: ActionKind,
    outcome: Requested,
) -> Result<Reply, ApiError> {
    let action_id = match outcome {
        Requested::NotFound => return Err(ApiError::NotFound(INSTANCE_NOT_FOUND.into())),
        Requested::Conflict(message) => return Err(ApiError::Conflict(message)),
        Requested::Merged(action_id) => action_id,
        Requested::Created(action_id) => {
            // Committed: the action is safe whether or not this wake-up fits in the channel
            // (an idle worker finds it in SQLite within a second).
            let _ = app.wakeups.try_send(action_id.clone());
            log::info!("action {action_id}: {} instance {id} accepted", kind.name());
            action_id
        }
    };
    let base = head.base_url(&app.listen);
    let location = format!("{base}/api/lambda-instances/{id}/actions/{action_id}/");
    let status = match kind {
        // The seed's key, and the one the original's code and every other answer use.
        ActionKind::Start | ActionKind::Stop => {
            json!({"code": 202, "short-description": ACCEPTED, "short_description": ACCEPTED})
        }
        ActionKind::Destroy => json!({"code": 202, "short_description": DESTROY_ACCEPTED}),
    };
    let reply = Reply::json(
        202,
        &json!({"status": status, "data": [{"id": action_id, "links": {"self": location}}]}),
    )
    .with_header("Location", location);
    let retry = app.eta.retry_after(std::time::Duration::ZERO);
    Ok(reply.with_header("Retry-After", retry.to_string()))
}

/// The first answer to a key, again.
fn replay(stored: StoredAnswer) -> Reply {
    let mut reply = Reply {
        status: stored.status,
        headers: vec![("Content-Type", "application/json".into())],
        body: stored.body.into_bytes(),
    };
    if let Some(location) = stored.location {
        reply = reply.with_header("Location", location);
    }
    reply.with_header("Idempotent-Replayed", "true")
}
