//! `POST /api/lambda-instances/{id}/`, the seed's call (token → instance → action → state
//! table), and `DELETE /api/lambda-instances/{id}/`, destroy (SPEC §4), both with
//! `Idempotency-Key`. They translate: the decision is `model::decide`'s, its commit the
//! store's, what a key means `idempotency`'s.

use serde_json::json;

use super::body::action_field;
use super::reply::{ApiError, Reply, INSTANCE_NOT_FOUND};
use super::request::{check_body_head, read_body, BodySource, Caller, Head};
use super::App;
use crate::idempotency;
use crate::model::{ActionKind, Snapshot};
use crate::store::{ActionRequest, Answer, Requested, Store};

const ACCEPTED: &str = "Your request has been accepted";
const DESTROY_ACCEPTED: &str =
    "Your request to destroy the specified lambda instance has been accepted";
const CREATE_ACCEPTED: &str = "Your request to create a new lambda instance has been accepted";
const BAD_ACTION: &str = "action POST parameter can be used with start or stop value.";

/// The `Idempotency-Key` of a request, if it has one; 400 for one that is not plain text.
pub(super) fn key(head: &Head) -> Result<Option<&str>, ApiError> {
    match head.header("idempotency-key") {
        None => Ok(None),
        Some(raw) => idempotency::parse_key(raw)
            .map(Some)
            .ok_or_else(|| ApiError::BadRequest(idempotency::BAD_KEY.into())),
    }
}

/// What the caller's instance `id` is, to decide on; 404 if the caller has none.
fn snapshot(store: &mut Store, caller: &Caller, id: &str) -> Result<Snapshot, ApiError> {
    store
        .snapshot(id, &caller.user.id)?
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
    let snapshot = snapshot(store, caller, id)?;
    check_body_head(head, app.max_body_bytes)?;
    let bytes = read_body(body, app.max_body_bytes)?;
    let kind = match action_field(head.header("content-type"), &bytes)?.as_deref() {
        Some("start") => ActionKind::Start,
        Some("stop") => ActionKind::Stop,
        _ => return Err(ApiError::BadRequest(BAD_ACTION.into())),
    };
    request(app, store, head, caller, (id, kind, snapshot), key)
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
    let snapshot = snapshot(store, caller, id)?;
    request(
        app,
        store,
        head,
        caller,
        (id, ActionKind::Destroy, snapshot),
        key,
    )
}

/// The state table on the `snapshot` of instance `id`, with the idempotency key if there is
/// one.
fn request(
    app: &App,
    store: &mut Store,
    head: &Head,
    caller: &Caller,
    (id, kind, snapshot): (&str, ActionKind, Snapshot),
    key: Option<&str>,
) -> Result<Reply, ApiError> {
    let user = &caller.user;
    let base = head.base_url(&app.listen);
    let request = ActionRequest {
        instance_id: id.to_string(),
        owner: user.id.clone(),
        kind,
        token: caller.token.to_string(),
        compute_url: user.compute_url.clone(),
        network_url: user.network_url.clone(),
        key: key
            .map(|key| idempotency::key_use(key, &idempotency::action_request(id, kind), &base)),
        create: None,
    };
    let action_id = match store.request_action(Some(&snapshot), request)? {
        Requested::NotFound => return Err(ApiError::NotFound(INSTANCE_NOT_FOUND.into())),
        Requested::KeyReused => return Err(ApiError::Unprocessable(idempotency::REUSED.into())),
        Requested::TooManyKeys => {
            return Err(ApiError::TooManyRequests(idempotency::TOO_MANY.into()))
        }
        Requested::Conflict(message) => return Err(ApiError::Conflict(message)),
        Requested::Merged(action_id) => action_id,
        Requested::New { .. } => unreachable!("an action call creates no instance"),
        Requested::Created(action_id) => {
            // Committed: the action is safe whether or not this wake-up fits in the channel
            // (an idle worker finds it in SQLite within a second).
            let _ = app.wakeups.try_send(());
            log::info!("action {action_id}: {} instance {id} accepted", kind.name());
            action_id
        }
        // The first answer again, as it was: a 202 with the same action, or the same 409.
        Requested::Replayed(answer) => {
            let reply = match answer {
                Answer::Accepted {
                    action, base_url, ..
                } => accepted(app, &base_url, id, kind, &action),
                Answer::Refused(message) => ApiError::Conflict(message).reply(),
            };
            return Ok(reply.with_header("Idempotent-Replayed", "true"));
        }
    };
    Ok(accepted(app, &base, id, kind, &action_id))
}

/// The 202 with the handle of the action (new or in flight) on instance `id`, its links
/// under `base`; for a create, the data is the new instance, and `Location` its action.
pub fn accepted(app: &App, base: &str, id: &str, kind: ActionKind, action_id: &str) -> Reply {
    let location = format!("{base}/api/lambda-instances/{id}/actions/{action_id}/");
    let status = match kind {
        // The seed's key, and the one the original's code and every other answer use.
        ActionKind::Start | ActionKind::Stop => {
            json!({"code": 202, "short-description": ACCEPTED, "short_description": ACCEPTED})
        }
        ActionKind::Destroy => json!({"code": 202, "short_description": DESTROY_ACCEPTED}),
        ActionKind::Create => json!({"code": 202, "short_description": CREATE_ACCEPTED}),
    };
    let data = match kind {
        ActionKind::Create => {
            json!({"id": id, "links": {"self": format!("{base}/api/lambda-instances/{id}")}})
        }
        _ => json!({"id": action_id, "links": {"self": location}}),
    };
    let reply = Reply::json(202, &json!({"status": status, "data": [data]}))
        .with_header("Location", location);
    let retry = app.eta.retry_after(std::time::Duration::ZERO);
    reply.with_header("Retry-After", retry.to_string())
}
