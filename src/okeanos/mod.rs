//! The ~okeanos client: identity (Astakos) token checks, and the Cyclades compute and network
//! calls as typed functions. The only module that knows ureq, and Synnefo's paths, bodies,
//! fault shapes and status words: `server.rs` says what a server's status means,
//! `error.rs` what a failed call was.

mod account;
mod build;
mod error;
mod server;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::metrics::Metrics;
pub use account::{Flavor, Left};
pub use build::{network_name, NewServer};
use error::fault;
pub use error::{AuthError, OkeanosError};
use server::server_state;
pub use server::{target_status, Listing, Sent, ServerState};

/// Largest response body read from ~okeanos; theirs are a few KiB.
const MAX_RESPONSE_BYTES: u64 = 1 << 20;

/// Who a token belongs to, by ~okeanos identity.
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    pub user_id: String,
    pub name: String,
    pub catalog: Catalog,
}

/// Where the user's services are, from identity's service catalog; None where it has no entry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Catalog {
    /// Cyclades compute (`compute`).
    pub compute: Option<String>,
    /// Cyclades network (`network`): networks, subnets, floating IPs.
    pub network: Option<String>,
    /// Astakos account (`account`): projects and quotas.
    pub account: Option<String>,
    /// Cyclades user data (`cyclades_userdata`): public keys.
    pub userdata: Option<String>,
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
    pub fn servers_detail(&self, compute: &str, token: &str) -> Result<Listing, OkeanosError> {
        let v = self.get_json("detail", &format!("{compute}/servers/detail"), token)?;
        let servers = v["servers"]
            .as_array()
            .ok_or_else(|| OkeanosError::reply("servers reply without servers"))?;
        Ok(Listing::of(servers))
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
        catalog: Catalog {
            compute: endpoint("compute"),
            network: endpoint("network"),
            account: endpoint("account"),
            userdata: endpoint("cyclades_userdata"),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_with_catalog() {
        let body = br#"{"access":{"user":{"id":"u-1","name":"Ann"},
            "serviceCatalog":[{"type":"identity","endpoints":[{"publicURL":"http://i"}]},
                              {"type":"compute","endpoints":[{"publicURL":"http://c/compute/v2.0/"}]}]}}"#;
        let id = parse_identity(body).unwrap();
        assert_eq!(id.user_id, "u-1");
        assert_eq!(id.name, "Ann");
        assert_eq!(id.catalog.compute.as_deref(), Some("http://c/compute/v2.0"));
        assert_eq!(id.catalog.network, None);
        assert_eq!(parse_identity(br#"{"access":{}}"#), None);
    }
}
