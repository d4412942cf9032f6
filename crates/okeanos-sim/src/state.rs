//! The simulator's state: users, servers, what a create builds on (`world.rs`), the faults
//! to inject and the calls made. Pure state, no I/O: `compute.rs`, `catalog.rs` and
//! `make.rs` are the calls that read and change it, and `serve.rs` puts HTTP around them.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::world::World;
use crate::{now_ms, Call, Faults};

pub(crate) struct Vm {
    pub(crate) owner: String,
    pub(crate) name: String,
    pub(crate) status: String,
    /// Target status, when it is reached, and the task shown meanwhile (`SNF:task_state`).
    pub(crate) pending: Option<(String, Instant, &'static str)>,
    /// The project whose quota it counts in, and its flavor (servers made by a create).
    pub(crate) project: Option<String>,
    pub(crate) flavor: Option<String>,
    pub(crate) metadata: BTreeMap<String, String>,
    /// The private networks it is on.
    pub(crate) networks: Vec<String>,
}

impl Vm {
    /// A server of the fixture: no project, no flavor, no metadata.
    pub(crate) fn plain(owner: &str, name: &str, status: &str) -> Vm {
        Vm {
            owner: owner.to_string(),
            name: name.to_string(),
            status: status.to_string(),
            pending: None,
            project: None,
            flavor: None,
            metadata: BTreeMap::new(),
            networks: Vec::new(),
        }
    }

    /// The server as Cyclades shows it.
    pub(crate) fn json(&self, id: &str) -> Value {
        json!({"id": id, "name": self.name, "status": self.status,
               "SNF:task_state": self.task(), "user_id": self.owner,
               "metadata": self.metadata})
    }
}

impl Vm {
    /// The task under way (`SNF:task_state`), or "".
    fn task(&self) -> &'static str {
        self.pending.as_ref().map_or("", |p| p.2)
    }

    pub(crate) fn settle(&mut self, now: Instant) {
        if let Some((target, due, _)) = &self.pending {
            if *due <= now {
                self.status = target.clone();
                self.pending = None;
            }
        }
    }
}

pub(crate) struct State {
    pub(crate) users: HashMap<String, (String, String)>,
    pub(crate) vms: BTreeMap<String, Vm>,
    /// Flavors, images, projects, keys, networks and floating IPs.
    pub(crate) world: World,
    pub(crate) faults: Faults,
    pub(crate) calls: Vec<Call>,
    pub(crate) transition: Duration,
    /// Draws which calls fail under `error_rate`; seeded, so a run can be repeated.
    pub(crate) rng: fastrand::Rng,
    /// Calls waiting now on a held server.
    pub(crate) held: usize,
}

/// Calls kept in the log; older ones are dropped.
const MAX_CALLS: usize = 100_000;

impl State {
    pub(crate) fn log(&mut self, op: &str, server: Option<&str>, status: u16) {
        if self.calls.len() >= MAX_CALLS {
            self.calls.drain(..MAX_CALLS / 10);
        }
        self.calls.push(Call {
            op: op.to_string(),
            server: server.map(str::to_string),
            status,
            at_ms: now_ms(),
        });
    }

    /// A fault the compute API answers with instead of doing the call, if one is due.
    pub(crate) fn compute_fault(&mut self) -> Option<(u16, Value)> {
        if self.faults.reset_next > 0 {
            self.faults.reset_next -= 1;
            return Some((RESET, Value::Null));
        }
        if self.faults.fail_next > 0 {
            self.faults.fail_next -= 1;
            return Some(unavailable());
        }
        if self.faults.conflict_next > 0 {
            self.faults.conflict_next -= 1;
            return Some(fault(409, "buildInProgress", "Server is being built."));
        }
        if self.faults.error_rate > 0.0 && self.rng.f64() < self.faults.error_rate {
            return Some(unavailable());
        }
        None
    }
}

/// Not a status: the answer is cut short and the connection closed.
pub(crate) const RESET: u16 = 0;

pub(crate) fn fault(code: u16, name: &str, message: &str) -> (u16, Value) {
    (
        code,
        json!({ name: {"code": code, "message": message, "details": ""} }),
    )
}

pub(crate) fn unavailable() -> (u16, Value) {
    fault(
        503,
        "serviceUnavailable",
        "Service temporarily unavailable.",
    )
}

/// The user of a token, or the 401 Synnefo answers.
pub(crate) fn user_of(s: &State, token: Option<&str>) -> Result<String, (u16, Value)> {
    token
        .and_then(|t| s.users.get(t))
        .map(|(id, _)| id.clone())
        .ok_or_else(|| fault(401, "unauthorized", "Invalid token"))
}

/// A request body's JSON, or the 400 Synnefo answers.
pub(crate) fn body_json(body: &[u8]) -> Result<Value, (u16, Value)> {
    serde_json::from_slice(body).map_err(|_| fault(400, "badRequest", "Malformed request body"))
}

/// Runs `call` for the token's user, after the faults due; answers what it answers.
pub(crate) fn with_user(
    s: &mut State,
    token: Option<&str>,
    call: impl FnOnce(&mut State, String) -> Result<(u16, Value), (u16, Value)>,
) -> (u16, Value) {
    let user = match user_of(s, token) {
        Ok(user) => user,
        Err(answer) => return answer,
    };
    if let Some(f) = s.compute_fault() {
        return f;
    }
    call(s, user).unwrap_or_else(|answer| answer)
}
