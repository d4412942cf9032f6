//! The ~okeanos client: identity (Astakos) token checks, and the Cyclades compute and network
//! calls as typed functions. The only module that knows ureq, and Synnefo's paths, bodies,
//! fault shapes and status words.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::metrics::Metrics;
use crate::plan::Command;

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
#[derive(Debug, Clone)]
pub enum AuthError {
    /// Identity says the token is invalid, expired or inactive.
    Rejected,
    /// Identity could not give a verdict: unreachable, slow, 5xx or a reply we cannot read.
    Unavailable(OkeanosError),
}

impl std::error::Error for AuthError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            AuthError::Rejected => None,
            AuthError::Unavailable(e) => Some(e),
        }
    }
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthError::Rejected => write!(f, "identity: token rejected"),
            AuthError::Unavailable(_) => write!(f, "identity unavailable"),
        }
    }
}

/// What Cyclades says of a server: its status, and the task under way on it, if any. What
/// the words mean for a command is this module's to say ([`ServerState::reached`] and the
/// rest): nothing else knows Synnefo's status words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerState {
    /// ACTIVE, STOPPED, BUILD, REBOOT, DELETED, UNKNOWN or ERROR.
    pub status: String,
    /// `SNF:task_state`: STARTING, STOPPING, DESTROYING, ... or empty when none.
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

/// The status a command leaves a server in.
pub fn target_status(command: Command) -> &'static str {
    match command {
        Command::Start => "ACTIVE",
        Command::Shutdown => "STOPPED",
        Command::Delete => "DELETED",
    }
}

impl ServerState {
    /// The server is where `command` takes it, with nothing under way.
    pub fn reached(&self, command: Command) -> bool {
        match command {
            Command::Delete => self.status == "DELETED",
            _ => self.status == target_status(command) && self.task.is_empty(),
        }
    }

    /// `command` is under way on the server (`SNF:task_state`), sent by whoever.
    pub fn under_way(&self, command: Command) -> bool {
        let task = match command {
            Command::Start => "STARTING",
            Command::Shutdown => "STOPPING",
            Command::Delete => "DESTROYING",
        };
        self.task == task
    }

    /// `command` can be sent now: the server is in the state it applies to, with nothing
    /// under way (a delete applies to any server not being deleted).
    pub fn accepts(&self, command: Command) -> bool {
        match command {
            Command::Start => self.status == "STOPPED" && self.task.is_empty(),
            Command::Shutdown => self.status == "ACTIVE" && self.task.is_empty(),
            Command::Delete => !self.under_way(Command::Delete),
        }
    }

    /// The server is in a state that waiting cannot take to where `command` goes: ERROR or
    /// DELETED (except for a delete, which takes any server away).
    pub fn hopeless(&self, command: Command) -> bool {
        command != Command::Delete && matches!(self.status.as_str(), "ERROR" | "DELETED")
    }
}

/// What became of a command or a delete that ~okeanos did not refuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// Accepted: done, or under way.
    Accepted,
    /// The thing was not there (404): for a delete, already done.
    Gone,
}

/// A failed ~okeanos call.
#[derive(Debug, Clone)]
pub enum OkeanosError {
    /// No answer: connection refused or reset, timeout, a reply cut short.
    Transport(Arc<ureq::Error>),
    /// An answer that is not what the API documents (not JSON, a field missing).
    Reply {
        what: String,
        source: Option<Arc<serde_json::Error>>,
    },
    /// A Synnefo fault: `{"<name>": {"code", "message", "details"}}`.
    Fault {
        status: u16,
        name: String,
        message: String,
    },
}

impl OkeanosError {
    /// Worth trying again: no answer for a reason that may pass (a timeout, a refused or
    /// reset connection, a name that did not resolve), a garbled reply, a 5xx, 409
    /// buildInProgress or 429. A request this service cannot even make (a bad URL, a TLS
    /// certificate refused) is not.
    pub fn is_transient(&self) -> bool {
        match self {
            OkeanosError::Transport(e) => matches!(
                e.as_ref(),
                ureq::Error::Timeout(_)
                    | ureq::Error::Io(_)
                    | ureq::Error::ConnectionFailed
                    | ureq::Error::HostNotFound
                    | ureq::Error::Protocol(_)
                    | ureq::Error::BodyStalled
            ),
            OkeanosError::Reply { .. } => true,
            OkeanosError::Fault { status, .. } => {
                *status >= 500 || *status == 409 || *status == 429
            }
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            OkeanosError::Fault { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// An answer that lacks what the API documents.
    pub fn reply(what: impl Into<String>) -> OkeanosError {
        OkeanosError::Reply {
            what: what.into(),
            source: None,
        }
    }
}

impl std::error::Error for OkeanosError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            OkeanosError::Transport(e) => Some(e.as_ref()),
            OkeanosError::Reply { source, .. } => source
                .as_ref()
                .map(|e| e.as_ref() as &(dyn std::error::Error + 'static)),
            OkeanosError::Fault { .. } => None,
        }
    }
}

impl fmt::Display for OkeanosError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // The cause is the source: an action's `error` is written with every cause
            // (`report::Report`).
            OkeanosError::Transport(_) => write!(f, "no answer"),
            OkeanosError::Reply { what, .. } => write!(f, "unreadable answer ({what})"),
            OkeanosError::Fault {
                status,
                name,
                message,
            } => write!(f, "{status} {name} ({message})"),
        }
    }
}

/// The HTTP methods of the calls made with a user's token.
#[derive(Debug, Clone, Copy)]
enum Method {
    Get,
    Post,
    Delete,
}

/// The log targets of the HTTP client, which below `info` write whole requests and answers:
/// tokens included (in identity's body, and in every compute call's X-Auth-Token). The binary
/// caps them at `info`, whatever RUST_LOG says.
pub const NOISY_LOG_TARGETS: [&str; 2] = ["ureq", "ureq_proto"];

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

    /// Makes a call with `send`, reads the whole answer (bounded), and counts and times
    /// the call as `op`.
    fn timed(
        &self,
        op: &'static str,
        send: impl FnOnce() -> Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<(u16, Vec<u8>), OkeanosError> {
        let started = Instant::now();
        let reply = read(send());
        let outcome = match &reply {
            Ok((status, _)) => status.to_string(),
            Err(_) => "transport".to_string(),
        };
        self.metrics.okeanos_call(op, outcome, started.elapsed());
        reply
    }

    /// A call with the user's token: a GET or a DELETE, or a POST of `body`.
    fn with_token(
        &self,
        op: &'static str,
        method: Method,
        url: &str,
        token: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Vec<u8>), OkeanosError> {
        let accept = ("Accept", "application/json");
        self.timed(op, || match method {
            Method::Get => self
                .agent
                .get(url)
                .header("X-Auth-Token", token)
                .header(accept.0, accept.1)
                .call(),
            Method::Delete => self
                .agent
                .delete(url)
                .header("X-Auth-Token", token)
                .header(accept.0, accept.1)
                .call(),
            Method::Post => self
                .agent
                .post(url)
                .header("X-Auth-Token", token)
                .header(accept.0, accept.1)
                .send_json(body.unwrap_or(&Value::Null)),
        })
    }

    /// Asks identity who `token` belongs to: `POST {astakos_url}/tokens`.
    pub fn authenticate(&self, astakos_url: &str, token: &str) -> Result<Identity, AuthError> {
        let url = format!("{astakos_url}/tokens");
        let body = json!({"auth": {"token": {"id": token}}});
        let (status, body) = self
            .timed("tokens", || {
                self.agent
                    .post(&url)
                    .header("Accept", "application/json")
                    .send_json(&body)
            })
            .map_err(AuthError::Unavailable)?;
        match status {
            200 => parse_identity(&body).ok_or_else(|| {
                AuthError::Unavailable(OkeanosError::reply(
                    "identity answered 200 without access.user.id",
                ))
            }),
            // Astakos answers 401 for an invalid, expired or inactive token, and 400 for one
            // it cannot parse; both mean "not a valid token".
            400 | 401 | 403 => Err(AuthError::Rejected),
            other => Err(AuthError::Unavailable(fault(other, &body))),
        }
    }

    /// A GET answered 200 with a JSON body.
    fn get_json(&self, op: &'static str, url: &str, token: &str) -> Result<Value, OkeanosError> {
        let (status, body) = self.with_token(op, Method::Get, url, token, None)?;
        if status != 200 {
            return Err(fault(status, &body));
        }
        serde_json::from_slice(&body).map_err(|e| OkeanosError::Reply {
            what: format!("the {op} reply is not JSON"),
            source: Some(Arc::new(e)),
        })
    }

    /// `GET {compute}/servers/{id}` → the server's status and task.
    pub fn server_status(
        &self,
        compute: &str,
        token: &str,
        server_id: &str,
    ) -> Result<ServerState, OkeanosError> {
        let url = format!("{compute}/servers/{server_id}");
        let v = self.get_json("status", &url, token)?;
        let mut server = v["server"].clone();
        // The id is the one asked for, whether or not the reply repeats it.
        server["id"] = Value::String(server_id.to_string());
        server_state(&server)
            .map(|(_, state)| state)
            .ok_or_else(|| OkeanosError::reply("server reply without server.status"))
    }

    /// `GET {compute}/servers/detail` → the status and task of every server of the token's
    /// owner, by server id: one call for all of an owner's VMs. (Cyclades lists no deleted
    /// server: one not listed is gone.)
    pub fn servers_detail(
        &self,
        compute: &str,
        token: &str,
    ) -> Result<HashMap<String, ServerState>, OkeanosError> {
        let v = self.get_json("detail", &format!("{compute}/servers/detail"), token)?;
        let servers = v["servers"]
            .as_array()
            .ok_or_else(|| OkeanosError::reply("servers reply without servers"))?;
        Ok(servers.iter().filter_map(server_state).collect())
    }

    /// Sends `command` to a server: `POST {compute}/servers/{id}/action` with `{"start":{}}`
    /// or `{"shutdown":{}}`, or `DELETE {compute}/servers/{id}`.
    pub fn command_server(
        &self,
        compute: &str,
        token: &str,
        server: &str,
        command: Command,
    ) -> Result<Sent, OkeanosError> {
        match command {
            Command::Start => self.start_server(compute, token, server),
            Command::Shutdown => self.shutdown_server(compute, token, server),
            Command::Delete => self.delete_server(compute, token, server),
        }
    }

    /// `POST {compute}/servers/{id}/action` with `{"start":{}}`.
    pub fn start_server(&self, compute: &str, token: &str, id: &str) -> Result<Sent, OkeanosError> {
        self.server_action(compute, token, id, "start")
    }

    /// `POST {compute}/servers/{id}/action` with `{"shutdown":{}}`.
    pub fn shutdown_server(
        &self,
        compute: &str,
        token: &str,
        id: &str,
    ) -> Result<Sent, OkeanosError> {
        self.server_action(compute, token, id, "shutdown")
    }

    fn server_action(
        &self,
        compute: &str,
        token: &str,
        id: &str,
        action: &'static str,
    ) -> Result<Sent, OkeanosError> {
        let url = format!("{compute}/servers/{id}/action");
        let body = json!({ action: {} });
        let (status, body) = self.with_token(action, Method::Post, &url, token, Some(&body))?;
        match status {
            200..=299 => Ok(Sent::Accepted),
            _ => Err(fault(status, &body)),
        }
    }

    /// `DELETE {compute}/servers/{id}`.
    pub fn delete_server(
        &self,
        compute: &str,
        token: &str,
        id: &str,
    ) -> Result<Sent, OkeanosError> {
        self.delete("delete", &format!("{compute}/servers/{id}"), token)
    }

    /// `DELETE {network}/floatingips/{id}`.
    pub fn delete_floating_ip(
        &self,
        network: &str,
        token: &str,
        id: &str,
    ) -> Result<Sent, OkeanosError> {
        self.delete("floatingip", &format!("{network}/floatingips/{id}"), token)
    }

    /// `DELETE {network}/networks/{id}`.
    pub fn delete_network(
        &self,
        network: &str,
        token: &str,
        id: &str,
    ) -> Result<Sent, OkeanosError> {
        self.delete("network", &format!("{network}/networks/{id}"), token)
    }

    /// `DELETE {url}`: Accepted when it is deleted or being deleted, Gone when it was
    /// already gone (404).
    fn delete(&self, op: &'static str, url: &str, token: &str) -> Result<Sent, OkeanosError> {
        let (status, body) = self.with_token(op, Method::Delete, url, token, None)?;
        match status {
            200..=299 => Ok(Sent::Accepted),
            404 => Ok(Sent::Gone),
            _ => Err(fault(status, &body)),
        }
    }
}

/// Reads a whole reply (bounded), or says why there was none.
fn read(
    reply: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
) -> Result<(u16, Vec<u8>), OkeanosError> {
    let transport = |e| OkeanosError::Transport(Arc::new(e));
    let mut reply = reply.map_err(transport)?;
    let status = reply.status().as_u16();
    let body = reply
        .body_mut()
        .with_config()
        .limit(MAX_RESPONSE_BYTES)
        .read_to_vec()
        .map_err(transport)?;
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
