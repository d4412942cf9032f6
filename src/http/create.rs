//! `POST /api/lambda-instance/` (the original's path) and `POST /api/lambda-instances/`:
//! create a lambda instance (SPEC §5); and the reads the original's create form uses,
//! `GET /api/vm-parameter-values/`, `/api/user-okeanos-projects/` and
//! `/api/user-public-keys/`. They translate: what a request may ask is `create.rs`'s, what
//! ~okeanos says is `okeanos/`'s, and the instance and its action are committed by the store.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use super::action_call::{accepted, key};
use super::reply::{ApiError, Reply};
use super::request::{check_body_head, read_body, BodySource, Caller, Head};
use super::App;
use crate::auth::User;
use crate::build::Build;
use crate::create::{self, flavor_of, Asked, Choices};
use crate::idempotency;
use crate::model::ActionKind;
use crate::okeanos::{Client, Flavor, OkeanosError};
use crate::report::Report;
use crate::store::{ActionRequest, Answer, NewCluster, Requested, Store};
use crate::sync::lock;

/// How long what ~okeanos said is reused: flavors and images change rarely; a user's
/// projects, quotas and keys are read again soon, and never reused for a create's checks.
const CATALOG_TTL: Duration = Duration::from_secs(60);
const USER_TTL: Duration = Duration::from_secs(5);

/// Answers kept by key, with when they came.
type Kept<K, T> = Mutex<HashMap<K, (Instant, T)>>;

/// What the create calls remember of ~okeanos for a moment, by compute URL or by user.
#[derive(Default)]
pub struct Remembered {
    flavors: Kept<String, Arc<Vec<Flavor>>>,
    images: Kept<String, String>,
    reads: Kept<(String, &'static str), Value>,
}

/// The image a create uses, as configured: its id, or what its name contains.
#[derive(Debug, Clone)]
pub struct ImageChoice {
    pub id: String,
    pub name: String,
}

/// ~okeanos could not say: 503, never a 500 or a refusal of the user's request.
fn unavailable(what: &str, e: &OkeanosError) -> ApiError {
    log::warn!("{what}: {}", Report(e));
    ApiError::Unavailable(format!("~okeanos cannot say {what} now; try again later."))
}

/// A catalog endpoint the user needs, or 503.
fn endpoint<'a>(url: &'a Option<String>, what: &str) -> Result<&'a str, ApiError> {
    url.as_deref().ok_or_else(|| {
        ApiError::Unavailable(format!(
            "The ~okeanos service catalog has no {what} endpoint; try again later."
        ))
    })
}

impl Remembered {
    fn flavors(
        &self,
        client: &Client,
        user: &User,
        token: &str,
    ) -> Result<Arc<Vec<Flavor>>, ApiError> {
        fresh(&self.flavors, &user.compute_url, CATALOG_TTL, || {
            let all = client
                .flavors(&user.compute_url, token)
                .map_err(|e| unavailable("its flavors", &e))?;
            Ok(Arc::new(all))
        })
    }

    /// The configured image's id: `image_id`, or the first image whose name contains
    /// `image_name`.
    fn image(&self, app: &App, user: &User, token: &str) -> Result<String, ApiError> {
        if !app.image.id.is_empty() {
            return Ok(app.image.id.clone());
        }
        fresh(&self.images, &user.compute_url, CATALOG_TTL, || {
            let images = app
                .client
                .images(&user.compute_url, token)
                .map_err(|e| unavailable("its images", &e))?;
            let Some((id, _)) = images
                .into_iter()
                .find(|(_, n)| n.contains(&app.image.name))
            else {
                log::error!(
                    "no ~okeanos image has a name containing {:?}",
                    app.image.name
                );
                return Err(ApiError::Unavailable(
                    "The image clusters are made of is not available; try again later.".into(),
                ));
            };
            Ok(id)
        })
    }

    /// A read of the user's, from a moment ago or made now by `read`.
    fn per_user(
        &self,
        user: &User,
        what: &'static str,
        read: impl FnOnce() -> Result<Value, ApiError>,
    ) -> Result<Value, ApiError> {
        fresh(&self.reads, &(user.id.clone(), what), USER_TTL, read)
    }
}

/// What `kept` holds under `key` if it came less than `ttl` ago, or else what `make` gives
/// now, kept in its place (entries past `ttl` are let go then).
fn fresh<K: Hash + Eq + Clone, T: Clone>(
    kept: &Kept<K, T>,
    key: &K,
    ttl: Duration,
    make: impl FnOnce() -> Result<T, ApiError>,
) -> Result<T, ApiError> {
    if let Some((at, v)) = lock(kept).get(key) {
        if at.elapsed() < ttl {
            return Ok(v.clone());
        }
    }
    let v = make()?;
    let mut kept = lock(kept);
    kept.retain(|_, (at, _)| at.elapsed() < ttl);
    kept.insert(key.clone(), (Instant::now(), v.clone()));
    Ok(v)
}

/// `POST`: a new lambda instance.
pub fn handle(
    app: &App,
    store: &mut Store,
    head: &Head,
    body: &mut dyn BodySource,
    caller: &Caller,
) -> Result<Reply, ApiError> {
    let key = key(head)?;
    check_body_head(head, app.max_body_bytes)?;
    let json_body = head
        .header("content-type")
        .is_some_and(|t| t.to_ascii_lowercase().starts_with("application/json"));
    if !json_body {
        return Err(ApiError::UnsupportedMediaType(
            "A create's body is JSON (Content-Type: application/json).".into(),
        ));
    }
    let bytes = read_body(body, app.max_body_bytes)?;
    let fields: Map<String, Value> = match serde_json::from_slice(&bytes) {
        Ok(Value::Object(fields)) => fields,
        _ => {
            return Err(ApiError::BadRequest(
                "The request body must be a JSON object of the lambda instance's fields.".into(),
            ))
        }
    };
    let (user, token) = (&caller.user, caller.token);
    let flavors = app.remembered.flavors(&app.client, user, token)?;
    let asked =
        create::read(&fields, &Choices::for_create(&flavors)).map_err(ApiError::InvalidFields)?;
    let build = checked(app, user, token, &asked, &flavors)?;
    let info = asked.info().to_string();
    let base = head.base_url(&app.listen);
    let request = ActionRequest {
        instance_id: String::new(),
        owner: user.id.clone(),
        kind: ActionKind::Create,
        token: token.to_string(),
        compute_url: user.compute_url.clone(),
        network_url: user.network_url.clone(),
        key: key.map(|key| idempotency::key_use(key, &asked.fingerprint_text(), &base)),
        create: Some(NewCluster {
            name: asked.instance_name.clone(),
            info,
            build,
        }),
    };
    match store.request_action(None, request)? {
        Requested::New { instance, action } => {
            let _ = app.wakeups.try_send(());
            log::info!("action {action}: create instance {instance} accepted");
            Ok(accepted(app, &base, &instance, ActionKind::Create, &action))
        }
        Requested::Replayed(Answer::Accepted {
            instance,
            action,
            base_url,
        }) => Ok(
            accepted(app, &base_url, &instance, ActionKind::Create, &action)
                .with_header("Idempotent-Replayed", "true"),
        ),
        Requested::KeyReused => Err(ApiError::Unprocessable(idempotency::REUSED.into())),
        Requested::TooManyKeys => Err(ApiError::TooManyRequests(idempotency::TOO_MANY.into())),
        other => {
            log::error!("a create came to {other:?}");
            Err(ApiError::Internal)
        }
    }
}

/// The checks against ~okeanos, in the contract's order (the project, the flavors, the
/// quotas), and the build they settle: nothing is made for a request refused here.
fn checked(
    app: &App,
    user: &User,
    token: &str,
    asked: &Asked,
    flavors: &[Flavor],
) -> Result<Build, ApiError> {
    let account = endpoint(&user.account_url, "account")?;
    let projects = app
        .client
        .projects(account, token)
        .map_err(|e| unavailable("your projects", &e))?;
    let Some(project) = projects
        .iter()
        .find(|p| p.active && p.name == asked.project_name)
    else {
        let refused = "project_name: No such ~okeanos project for this user.";
        return Err(ApiError::InvalidFields(vec![refused.into()]));
    };
    let authorized_keys = authorized_keys(app, user, token, &asked.public_key_name)?;
    let mut no_flavor = Vec::new();
    let master = flavor_of(flavors, asked.master);
    let slave = flavor_of(flavors, asked.slave);
    if master.is_none() {
        no_flavor.push(Asked::no_flavor("master", asked.master));
    }
    if slave.is_none() {
        no_flavor.push(Asked::no_flavor("slave", asked.slave));
    }
    let (Some(master), Some(slave)) = (master, slave) else {
        return Err(ApiError::InvalidFields(no_flavor));
    };
    let left = app
        .client
        .quotas(account, token)
        .map_err(|e| unavailable("your quotas", &e))?
        .remove(&project.id)
        .unwrap_or_default();
    if let Some(short) = asked.short_of(&left, &project.name) {
        return Err(ApiError::Conflict(short));
    }
    Ok(Build {
        project: project.id.clone(),
        master_name: asked.master_name.clone(),
        slaves: asked.slaves,
        master_flavor: master.id.clone(),
        slave_flavor: slave.id.clone(),
        image: app.remembered.image(app, user, token)?,
        ip_allocation: asked.ip_allocation,
        authorized_keys,
    })
}

/// The contents of `authorized_keys` with the user's keys named `names`; a name the user has
/// no key of is a refused field.
fn authorized_keys(
    app: &App,
    user: &User,
    token: &str,
    names: &[String],
) -> Result<String, ApiError> {
    if names.is_empty() {
        return Ok(String::new());
    }
    let userdata = endpoint(&user.userdata_url, "user data")?;
    let keys = app
        .client
        .keys(userdata, token)
        .map_err(|e| unavailable("your public keys", &e))?;
    let mut lines = Vec::new();
    let mut missing = Vec::new();
    for name in names {
        match keys.iter().find(|k| k["name"] == name.as_str()) {
            Some(k) => lines.push(k["content"].as_str().unwrap_or_default().trim().to_string()),
            None => missing.push(format!(
                "public_key_name: No such public key for this user: {name}."
            )),
        }
    }
    if !missing.is_empty() {
        return Err(ApiError::InvalidFields(missing));
    }
    Ok(lines.join("\n") + "\n")
}

/// `{"status": {...}, "data": [...]}`, the envelope of the form's reads.
fn described(short_description: &str, data: Value) -> Reply {
    Reply::json(
        200,
        &json!({"status": {"short_description": short_description, "code": 200}, "data": data}),
    )
}

/// `GET /api/vm-parameter-values/`: every value of the flavors servers may be made of.
pub fn vm_parameter_values(app: &App, caller: &Caller) -> Result<Reply, ApiError> {
    let flavors = app
        .remembered
        .flavors(&app.client, &caller.user, caller.token)?;
    let all = Choices::all(&flavors);
    Ok(described(
        "Allowed values of parameters for creating a Lambda Instance",
        json!([{"vcpus": all.vcpus, "ram": all.ram, "disk": all.disk}]),
    ))
}

/// `GET /api/user-okeanos-projects/`: what is left in each of the user's active projects, in
/// ~okeanos's units.
pub fn user_projects(app: &App, caller: &Caller) -> Result<Reply, ApiError> {
    let (user, token) = (&caller.user, caller.token);
    let data = app.remembered.per_user(user, "projects", || {
        let account = endpoint(&user.account_url, "account")?;
        let projects = app
            .client
            .projects(account, token)
            .map_err(|e| unavailable("your projects", &e))?;
        let quotas = app
            .client
            .quotas(account, token)
            .map_err(|e| unavailable("your quotas", &e))?;
        let all: Vec<Value> = projects
            .iter()
            .filter(|p| p.active)
            .map(|p| {
                let l = quotas.get(&p.id).copied().unwrap_or_default();
                json!({"id": p.id, "name": p.name, "cpu": l.cpu, "ram": l.ram, "disk": l.disk,
                       "vm": l.vm, "floating_ip": l.floating_ip,
                       "private_network": l.private_network, "pithos_space": l.pithos_space})
            })
            .collect();
        Ok(Value::Array(all))
    })?;
    Ok(described("~okeanos projects", data))
}

/// `GET /api/user-public-keys/`: the user's public keys, as ~okeanos writes them.
pub fn user_public_keys(app: &App, caller: &Caller) -> Result<Reply, ApiError> {
    let (user, token) = (&caller.user, caller.token);
    let data = app.remembered.per_user(user, "keys", || {
        let userdata = endpoint(&user.userdata_url, "user data")?;
        let keys = app
            .client
            .keys(userdata, token)
            .map_err(|e| unavailable("your public keys", &e))?;
        Ok(Value::Array(keys))
    })?;
    Ok(described("Public keys uploaded to ~okeanos", data))
}
