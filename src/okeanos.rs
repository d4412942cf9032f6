//! The ~okeanos client: identity (Astakos) token checks and the Cyclades compute calls.
//! The only module that knows ureq and Synnefo's JSON.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::metrics::Metrics;

/// Largest response body read from ~okeanos; theirs are a few KiB.
const MAX_RESPONSE_BYTES: u64 = 1 << 20;

/// Who a token belongs to, by ~okeanos identity.
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    pub user_id: String,
    pub name: String,
    /// The `compute` entry of the service catalog, if any.
    pub compute_url: Option<String>,
    /// The `network` entry of the service catalog, if any.
    pub network_url: Option<String>,
}

/// Why a token could not be accepted.
#[derive(Debug, Clone, PartialEq)]
pub enum AuthError {
    /// Identity says the token is invalid, expired or inactive.
    Rejected,
    /// Identity could not give a verdict: unreachable, slow, 5xx or a reply we cannot read.
    Unavailable(String),
}

impl std::error::Error for AuthError {}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthError::Rejected => write!(f, "identity: token rejected"),
            AuthError::Unavailable(why) => write!(f, "identity unavailable: {why}"),
        }
    }
}

/// What Cyclades says of a server: its status, and the task under way on it, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerState {
    /// ACTIVE, STOPPED, BUILD, REBOOT, DELETED, UNKNOWN or ERROR.
    pub status: String,
    /// `SNF:task_state`: STARTING, STOPPING, BUILDING, ... or empty when none.
    pub task: String,
}

impl fmt::Display for ServerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.task.is_empty() {
            write!(f, "{}", self.status)
        } else {
            write!(f, "{} (task {})", self.status, self.task)
        }
    }
}

/// A server action of the Cyclades API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerAction {
    Start,
    Shutdown,
}

impl ServerAction {
    pub fn name(self) -> &'static str {
        match self {
            ServerAction::Start => "start",
            ServerAction::Shutdown => "shutdown",
        }
    }

    /// The status the action leaves a server in.
    pub fn target(self) -> &'static str {
        match self {
            ServerAction::Start => "ACTIVE",
            ServerAction::Shutdown => "STOPPED",
        }
    }

    /// The status the action applies to.
    pub fn source(self) -> &'static str {
        match self {
            ServerAction::Start => "STOPPED",
            ServerAction::Shutdown => "ACTIVE",
        }
    }

    /// `SNF:task_state` while the action is under way.
    pub fn task(self) -> &'static str {
        match self {
            ServerAction::Start => "STARTING",
            ServerAction::Shutdown => "STOPPING",
        }
    }
}

/// A failed compute call.
#[derive(Debug, Clone, PartialEq)]
pub enum OkeanosError {
    /// No answer: connection refused or reset, timeout, unreadable reply.
    Transport(String),
    /// A Synnefo fault: `{"<name>": {"code", "message", "details"}}`.
    Fault {
        status: u16,
        name: String,
        message: String,
    },
}

impl OkeanosError {
    /// Worth trying again: no answer, a 5xx, or 409 buildInProgress.
    pub fn is_transient(&self) -> bool {
        match self {
            OkeanosError::Transport(_) => true,
            OkeanosError::Fault { status, .. } => {
                *status >= 500 || *status == 409 || *status == 429
            }
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            OkeanosError::Transport(_) => None,
            OkeanosError::Fault { status, .. } => Some(*status),
        }
    }
}

impl std::error::Error for OkeanosError {}

impl fmt::Display for OkeanosError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OkeanosError::Transport(why) => write!(f, "no answer ({why})"),
            OkeanosError::Fault {
                status,
                name,
                message,
            } => write!(f, "{status} {name} ({message})"),
        }
    }
}

/// One blocking HTTP client, cheap to clone (the connection pool is shared).
#[derive(Clone)]
pub struct Client {
    agent: ureq::Agent,
    metrics: Arc<Metrics>,
}

impl Client {
    pub fn new(timeout: Duration, metrics: Arc<Metrics>) -> Client {
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .timeout_connect(Some(timeout.min(Duration::from_secs(5))))
            // The bodies of 4xx/5xx carry Synnefo's fault message: read them ourselves.
            .http_status_as_error(false)
            // ~okeanos is reached directly; an HTTP_PROXY meant for something else must not
            // silently reroute (or break) identity and compute calls.
            .proxy(None)
            .max_redirects(0)
            .user_agent("lambda-api")
            .build()
            .new_agent();
        Client { agent, metrics }
    }

    /// Counts one call by its outcome and times it.
    fn record(&self, op: &'static str, started: Instant, result: &Result<(u16, Vec<u8>), String>) {
        let outcome = match result {
            Ok((status, _)) => status.to_string(),
            Err(_) => "transport".to_string(),
        };
        self.metrics.okeanos_call(op, outcome, started.elapsed());
    }

    /// Asks identity who `token` belongs to: `POST {astakos_url}/tokens`.
    pub fn authenticate(&self, astakos_url: &str, token: &str) -> Result<Identity, AuthError> {
        let url = format!("{astakos_url}/tokens");
        let body = json!({"auth": {"token": {"id": token}}});
        let started = Instant::now();
        let reply = self
            .agent
            .post(&url)
            .header("Accept", "application/json")
            .send_json(&body);
        let reply = read(reply);
        self.record("tokens", started, &reply);
        let (status, body) = reply.map_err(AuthError::Unavailable)?;
        match status {
            200 => parse_identity(&body).ok_or_else(|| {
                AuthError::Unavailable("identity answered 200 without access.user.id".into())
            }),
            // Astakos answers 401 for an invalid, expired or inactive token, and 400 for one
            // it cannot parse; both mean "not a valid token".
            400 | 401 | 403 => Err(AuthError::Rejected),
            other => Err(AuthError::Unavailable(format!("identity answered {other}"))),
        }
    }

    /// A compute call with the token, timed and counted as `op`: its status and body, or
    /// why there was none.
    fn compute_call(
        &self,
        op: &'static str,
        request: ureq::RequestBuilder<ureq::typestate::WithoutBody>,
        token: &str,
    ) -> Result<(u16, Vec<u8>), OkeanosError> {
        let started = Instant::now();
        let reply = read(
            request
                .header("X-Auth-Token", token)
                .header("Accept", "application/json")
                .call(),
        );
        self.record(op, started, &reply);
        reply.map_err(OkeanosError::Transport)
    }

    /// A compute GET answered 200 with a JSON body.
    fn compute_json(
        &self,
        op: &'static str,
        url: &str,
        token: &str,
    ) -> Result<Value, OkeanosError> {
        let (status, body) = self.compute_call(op, self.agent.get(url), token)?;
        if status != 200 {
            return Err(fault(status, &body));
        }
        serde_json::from_slice(&body)
            .map_err(|e| OkeanosError::Transport(format!("the {op} reply is not JSON: {e}")))
    }

    /// `GET {compute}/servers/{id}` → the server's status and task.
    pub fn server_status(
        &self,
        compute: &str,
        token: &str,
        server_id: &str,
    ) -> Result<ServerState, OkeanosError> {
        let url = format!("{compute}/servers/{server_id}");
        let v = self.compute_json("status", &url, token)?;
        let mut server = v["server"].clone();
        // The id is the one asked for, whether or not the reply repeats it.
        server["id"] = Value::String(server_id.to_string());
        server_state(&server)
            .map(|(_, state)| state)
            .ok_or_else(|| OkeanosError::Transport("server reply without server.status".into()))
    }

    /// `GET {compute}/servers/detail` → the status and task of every server of the token's
    /// owner, by server id: one call for all of an owner's VMs.
    pub fn servers_detail(
        &self,
        compute: &str,
        token: &str,
    ) -> Result<HashMap<String, ServerState>, OkeanosError> {
        let v = self.compute_json("detail", &format!("{compute}/servers/detail"), token)?;
        let servers = v["servers"]
            .as_array()
            .ok_or_else(|| OkeanosError::Transport("servers reply without servers".into()))?;
        Ok(servers.iter().filter_map(server_state).collect())
    }

    /// `DELETE {url}`: a server (`{compute}/servers/{id}`), a floating IP
    /// (`{network}/floatingips/{id}`) or a network (`{network}/networks/{id}`). Ok(true) when
    /// it is deleted or being deleted, Ok(false) when it was already gone (404).
    pub fn delete(&self, op: &'static str, url: &str, token: &str) -> Result<bool, OkeanosError> {
        let (status, body) = self.compute_call(op, self.agent.delete(url), token)?;
        match status {
            200..=299 => Ok(true),
            404 => Ok(false),
            _ => Err(fault(status, &body)),
        }
    }

    /// `POST {compute}/servers/{id}/action` with `{"start":{}}` or `{"shutdown":{}}`.
    pub fn server_action(
        &self,
        compute: &str,
        token: &str,
        server: &str,
        action: ServerAction,
    ) -> Result<(), OkeanosError> {
        let body = json!({ action.name(): {} });
        let started = Instant::now();
        let reply = self
            .agent
            .post(&format!("{compute}/servers/{server}/action"))
            .header("X-Auth-Token", token)
            .header("Accept", "application/json")
            .send_json(&body);
        let reply = read(reply);
        self.record(action.name(), started, &reply);
        let (status, body) = reply.map_err(OkeanosError::Transport)?;
        match status {
            200..=299 => Ok(()),
            _ => Err(fault(status, &body)),
        }
    }
}

/// Reads a whole reply (bounded), or says why there was none.
fn read(
    reply: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
) -> Result<(u16, Vec<u8>), String> {
    let started = Instant::now();
    let mut reply = reply.map_err(|e| e.to_string())?;
    let status = reply.status().as_u16();
    let body = reply
        .body_mut()
        .with_config()
        .limit(MAX_RESPONSE_BYTES)
        .read_to_vec()
        .map_err(|e| format!("{e} after {} ms", started.elapsed().as_millis()))?;
    Ok((status, body))
}

/// A server object of Cyclades: its id (a number or a string), status and task.
fn server_state(server: &Value) -> Option<(String, ServerState)> {
    let id = match &server["id"] {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => return None,
    };
    let state = ServerState {
        status: server["status"].as_str()?.to_string(),
        task: server["SNF:task_state"].as_str().unwrap_or("").to_string(),
    };
    Some((id, state))
}

fn parse_identity(body: &[u8]) -> Option<Identity> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let user = &v["access"]["user"];
    let user_id = user["id"].as_str()?.to_string();
    let name = user["name"].as_str().unwrap_or(&user_id).to_string();
    let endpoint = |kind: &str| {
        v["access"]["serviceCatalog"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|entry| entry["type"] == kind)
            .and_then(|entry| entry["endpoints"].as_array()?.first()?["publicURL"].as_str())
            .map(|url| url.trim_end_matches('/').to_string())
    };
    Some(Identity {
        user_id,
        name,
        compute_url: endpoint("compute"),
        network_url: endpoint("network"),
    })
}

/// Reads a Synnefo fault body; anything else is shown by its status and first bytes.
fn fault(status: u16, body: &[u8]) -> OkeanosError {
    let parsed = serde_json::from_slice::<Value>(body).ok().and_then(|v| {
        let (name, inner) = v.as_object()?.iter().next()?;
        let message = inner["message"].as_str().unwrap_or("").to_string();
        Some((name.clone(), message))
    });
    let (name, message) = parsed.unwrap_or_else(|| {
        let text = String::from_utf8_lossy(&body[..body.len().min(200)])
            .trim()
            .to_string();
        (reason(status).to_string(), text)
    });
    OkeanosError::Fault {
        status,
        name,
        message,
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        400 => "badRequest",
        401 => "unauthorized",
        403 => "forbidden",
        404 => "itemNotFound",
        409 => "buildInProgress",
        413 => "overLimit",
        503 => "serviceUnavailable",
        _ => "error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synnefo_fault_is_read() {
        let e = fault(
            413,
            br#"{"overLimit":{"code":413,"message":"CPU quota exceeded","details":""}}"#,
        );
        assert_eq!(e.to_string(), "413 overLimit (CPU quota exceeded)");
        assert!(!e.is_transient());
    }

    #[test]
    fn other_bodies_are_shown_plainly() {
        let e = fault(502, b"<html>Bad Gateway</html>");
        assert_eq!(e.to_string(), "502 error (<html>Bad Gateway</html>)");
        assert!(e.is_transient());
        assert!(fault(409, b"").is_transient());
        assert!(!fault(404, b"{}").is_transient());
    }

    #[test]
    fn servers_are_read_by_id_whatever_its_type() {
        let v: Value = serde_json::from_str(
            r#"{"servers":[{"id":101,"status":"ACTIVE"},
                           {"id":"102","status":"STOPPED","SNF:task_state":"STARTING"},
                           {"id":103}]}"#,
        )
        .unwrap();
        let all: HashMap<String, ServerState> = v["servers"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(server_state)
            .collect();
        assert_eq!(all.len(), 2);
        assert_eq!(all["101"].to_string(), "ACTIVE");
        assert_eq!(all["102"].to_string(), "STOPPED (task STARTING)");
    }

    #[test]
    fn identity_with_catalog() {
        let body = br#"{"access":{"user":{"id":"u-1","name":"Ann"},
            "serviceCatalog":[{"type":"identity","endpoints":[{"publicURL":"http://i"}]},
                              {"type":"compute","endpoints":[{"publicURL":"http://c/compute/v2.0/"}]}]}}"#;
        let id = parse_identity(body).unwrap();
        assert_eq!(id.user_id, "u-1");
        assert_eq!(id.name, "Ann");
        assert_eq!(id.compute_url.as_deref(), Some("http://c/compute/v2.0"));
        assert_eq!(id.network_url, None);
        assert_eq!(parse_identity(br#"{"access":{}}"#), None);
    }
}
