//! `okeanos-sim`: a small Synnefo stand-in that answers the calls lambda-api makes — identity
//! `POST /identity/v2.0/tokens` (with a service catalog pointing at itself) and Cyclades
//! `GET /compute/v2.0/servers/{id}` and `POST /compute/v2.0/servers/{id}/action` — with users,
//! tokens and VMs from a fixture, VM owners enforced, state changes after a delay, and fault
//! injection. A control API under `/_sim/` changes faults and VMs and shows the calls made.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::model::now_ms;
use crate::shutdown::Shutdown;

/// Users, their tokens, and VMs.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Fixture {
    pub users: Vec<FixtureUser>,
    pub servers: Vec<FixtureServer>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FixtureUser {
    pub id: String,
    pub name: String,
    pub tokens: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FixtureServer {
    pub id: String,
    #[serde(default)]
    pub name: String,
    pub owner: String,
    pub status: String,
}

/// Faults to inject. Setting them through the control API replaces them all; an omitted field
/// takes its default (no fault).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Share (0 to 1) of compute calls answered 503 serviceUnavailable.
    pub error_rate: f64,
    /// The next N compute calls are answered 503 serviceUnavailable.
    pub fail_next: u32,
    /// The next N compute calls are answered 409 buildInProgress.
    pub conflict_next: u32,
    /// Added before every answer, identity and compute alike.
    pub latency_ms: u64,
    /// `start` is answered 413 overLimit.
    pub quota_exceeded: bool,
    /// Identity answers 503.
    pub identity_down: bool,
    /// The next N compute calls get a response cut short and the connection closed.
    pub reset_next: u32,
    /// The next N compute calls are answered only after `hang_ms`.
    pub hang_next: u32,
    pub hang_ms: u64,
    /// Accepted actions end with the VM in ERROR instead of their target.
    pub fall_into_error: bool,
    /// Compute calls on these servers wait, unanswered, until the server leaves this list.
    pub hold: Vec<String>,
}

/// How to run a simulator.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub listen: String,
    pub fixture: Fixture,
    /// How long a VM takes to reach ACTIVE or STOPPED after an accepted action.
    pub transition: Duration,
    pub faults: Faults,
    pub threads: usize,
    pub seed: u64,
}

/// One call the simulator answered.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Call {
    /// `tokens`, `status`, `start` or `shutdown`.
    pub op: String,
    pub server: Option<String>,
    pub status: u16,
    pub at_ms: i64,
}

struct Vm {
    owner: String,
    name: String,
    status: String,
    /// Target status, when it is reached, and the task shown meanwhile (`SNF:task_state`).
    pending: Option<(String, Instant, &'static str)>,
}

impl Vm {
    fn settle(&mut self, now: Instant) {
        if let Some((target, due, _)) = &self.pending {
            if *due <= now {
                self.status = target.clone();
                self.pending = None;
            }
        }
    }
}

struct State {
    users: HashMap<String, (String, String)>,
    vms: BTreeMap<String, Vm>,
    faults: Faults,
    calls: Vec<Call>,
    transition: Duration,
    rng: u64,
}

/// Calls kept in the log; older ones are dropped.
const MAX_CALLS: usize = 100_000;

impl State {
    fn random(&mut self) -> f64 {
        // xorshift64*: plenty for choosing which calls fail.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        (self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }

    fn log(&mut self, op: &str, server: Option<&str>, status: u16) {
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
    fn compute_fault(&mut self) -> Option<(u16, Value)> {
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
        if self.faults.error_rate > 0.0 && self.random() < self.faults.error_rate {
            return Some(unavailable());
        }
        None
    }
}

/// Not a status: the answer is cut short and the connection closed.
const RESET: u16 = 0;

fn fault(code: u16, name: &str, message: &str) -> (u16, Value) {
    (
        code,
        json!({ name: {"code": code, "message": message, "details": ""} }),
    )
}

fn unavailable() -> (u16, Value) {
    fault(
        503,
        "serviceUnavailable",
        "Service temporarily unavailable.",
    )
}

/// A running simulator.
pub struct Sim {
    server: Arc<tiny_http::Server>,
    state: Arc<Mutex<State>>,
    threads: Vec<JoinHandle<()>>,
    shutdown: Arc<Shutdown>,
    addr: SocketAddr,
}

impl Sim {
    pub fn start(config: SimConfig) -> std::io::Result<Sim> {
        let server = tiny_http::Server::http(&config.listen).map_err(|e| {
            std::io::Error::other(format!("cannot listen on {}: {e}", config.listen))
        })?;
        let addr = server
            .server_addr()
            .to_ip()
            .ok_or_else(|| std::io::Error::other("not an IP address"))?;
        let mut users = HashMap::new();
        for u in &config.fixture.users {
            for t in &u.tokens {
                users.insert(t.clone(), (u.id.clone(), u.name.clone()));
            }
        }
        let vms = config
            .fixture
            .servers
            .iter()
            .map(|s| {
                let vm = Vm {
                    owner: s.owner.clone(),
                    name: s.name.clone(),
                    status: s.status.clone(),
                    pending: None,
                };
                (s.id.clone(), vm)
            })
            .collect();
        let state = Arc::new(Mutex::new(State {
            users,
            vms,
            faults: config.faults.clone(),
            calls: Vec::new(),
            transition: config.transition,
            rng: config.seed.max(1),
        }));
        let server = Arc::new(server);
        let shutdown = Arc::new(Shutdown::default());
        let base = format!("http://{addr}");
        let mut threads = Vec::new();
        for n in 0..config.threads.max(1) {
            let (server, state, shutdown, base) = (
                server.clone(),
                state.clone(),
                shutdown.clone(),
                base.clone(),
            );
            threads.push(std::thread::Builder::new().name(format!("sim-{n}")).spawn(
                move || {
                    while !shutdown.is_triggered() {
                        if let Ok(Some(request)) = server.recv_timeout(Duration::from_millis(200)) {
                            answer(&state, &base, request);
                        }
                    }
                },
            )?);
        }
        Ok(Sim {
            server,
            state,
            threads,
            shutdown,
            addr,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// What lambda-api's `astakos_url` should be.
    pub fn astakos_url(&self) -> String {
        format!("{}/identity/v2.0", self.url())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    pub fn set_faults(&self, faults: Faults) {
        self.lock().faults = faults;
    }

    /// Changes how long VMs take to change state, for actions accepted from now on.
    pub fn set_transition(&self, transition: Duration) {
        self.lock().transition = transition;
    }

    /// Makes a token invalid from now on, as an expired one is.
    pub fn revoke_token(&self, token: &str) {
        self.lock().users.remove(token);
    }

    /// Every call answered so far, oldest first.
    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    /// A VM's status now.
    pub fn vm_status(&self, id: &str) -> Option<String> {
        let mut state = self.lock();
        let vm = state.vms.get_mut(id)?;
        vm.settle(Instant::now());
        Some(vm.status.clone())
    }

    /// Sets a VM's status at once, cancelling any change under way.
    pub fn set_vm_status(&self, id: &str, status: &str) {
        if let Some(vm) = self.lock().vms.get_mut(id) {
            vm.status = status.to_string();
            vm.pending = None;
        }
    }

    /// Stops answering and waits for the threads.
    pub fn stop(self) {
        self.shutdown.trigger();
        self.server.unblock();
        for t in self.threads {
            let _ = t.join();
        }
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

fn answer(state: &Mutex<State>, base: &str, mut request: tiny_http::Request) {
    let mut body = Vec::new();
    // The simulator is a test tool on loopback; its bodies are tiny and trusted.
    let _ = std::io::Read::read_to_end(
        &mut std::io::Read::take(request.as_reader(), 1 << 20),
        &mut body,
    );
    let token = request
        .headers()
        .iter()
        .find(|h| h.field.equiv("X-Auth-Token"))
        .map(|h| h.value.as_str().to_string());
    let method = request.method().as_str().to_string();
    let path = request
        .url()
        .split('?')
        .next()
        .unwrap_or("")
        .trim_end_matches('/')
        .to_string();
    if !path.starts_with("/_sim") {
        delay(state, &path);
    }
    let (status, reply) = route(state, base, &method, &path, token.as_deref(), &body);
    if status == RESET {
        // Headers promising more than is sent, then the connection closes.
        let mut writer = request.into_writer();
        let _ = writer.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"ser");
        let _ = writer.flush();
        return;
    }
    let mut response = tiny_http::Response::from_data(match &reply {
        Value::Null => Vec::new(),
        v => v.to_string().into_bytes(),
    })
    .with_status_code(status);
    if reply != Value::Null {
        if let Ok(h) = tiny_http::Header::from_bytes("Content-Type", "application/json") {
            response.add_header(h);
        }
    }
    let _ = request.respond(response);
}

/// Latency, hangs and holds: waits before a call is answered (without the lock held).
fn delay(state: &Mutex<State>, path: &str) {
    let (latency, hang) = {
        let mut s = lock(state);
        let hang = if s.faults.hang_next > 0 && path.starts_with("/compute") {
            s.faults.hang_next -= 1;
            s.faults.hang_ms
        } else {
            0
        };
        (s.faults.latency_ms, hang)
    };
    std::thread::sleep(Duration::from_millis(latency + hang));
    // Held servers: the call waits (two minutes at most) until the hold is lifted.
    let server = path.split('/').nth(4).unwrap_or("");
    let deadline = Instant::now() + Duration::from_secs(120);
    while path.starts_with("/compute")
        && Instant::now() < deadline
        && lock(state).faults.hold.iter().any(|h| h == server)
    {
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn route(
    state: &Mutex<State>,
    base: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &[u8],
) -> (u16, Value) {
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let mut s = lock(state);
    match (method, segments.as_slice()) {
        ("POST", ["identity", "v2.0", "tokens"]) => {
            let result = identity(&s, base, body);
            s.log("tokens", None, result.0);
            result
        }
        ("GET", ["compute", "v2.0", "servers", id]) => {
            let result = compute(&mut s, token, id, None);
            s.log("status", Some(id), result.0);
            result
        }
        ("POST", ["compute", "v2.0", "servers", id, "action"]) => {
            let action = serde_json::from_slice::<Value>(body)
                .ok()
                .and_then(|v| v.as_object().and_then(|o| o.keys().next().cloned()));
            let op = action.clone().unwrap_or_else(|| "action".into());
            let result = compute(&mut s, token, id, Some(action.as_deref().unwrap_or("")));
            s.log(&op, Some(id), result.0);
            result
        }
        ("GET", ["_sim", "faults"]) => (200, json!(s.faults)),
        ("POST" | "PUT", ["_sim", "faults"]) => match serde_json::from_slice::<Faults>(body) {
            Ok(f) => {
                s.faults = f;
                (200, json!(s.faults))
            }
            Err(e) => (400, json!({"error": e.to_string()})),
        },
        ("GET", ["_sim", "calls"]) => (200, json!(s.calls)),
        ("DELETE", ["_sim", "calls"]) => {
            s.calls.clear();
            (204, Value::Null)
        }
        ("GET", ["_sim", "servers"]) => {
            let now = Instant::now();
            let all: Vec<Value> = s
                .vms
                .iter_mut()
                .map(|(id, vm)| {
                    vm.settle(now);
                    json!({"id": id, "name": vm.name, "owner": vm.owner, "status": vm.status})
                })
                .collect();
            (200, json!(all))
        }
        ("PUT" | "POST", ["_sim", "servers", id]) => {
            let status = serde_json::from_slice::<Value>(body)
                .ok()
                .and_then(|v| v["status"].as_str().map(str::to_string));
            match (s.vms.get_mut(*id), status) {
                (Some(vm), Some(status)) => {
                    vm.status = status;
                    vm.pending = None;
                    (200, json!({"id": id, "status": vm.status}))
                }
                (None, _) => fault(404, "itemNotFound", "Server not found"),
                (_, None) => fault(400, "badRequest", "Expected {\"status\": \"...\"}"),
            }
        }
        _ => fault(404, "itemNotFound", "No such resource"),
    }
}

fn identity(s: &State, base: &str, body: &[u8]) -> (u16, Value) {
    if s.faults.identity_down {
        return unavailable();
    }
    let token = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v["auth"]["token"]["id"].as_str().map(str::to_string));
    let Some(token) = token else {
        return fault(400, "badRequest", "Malformed request");
    };
    let Some((id, name)) = s.users.get(&token) else {
        return fault(401, "unauthorized", "Invalid token");
    };
    (
        200,
        json!({"access": {
            "token": {"id": token, "expires": "2099-01-01T00:00:00+00:00",
                      "tenant": {"id": id, "name": name}},
            "user": {"id": id, "name": name, "roles": [{"id": "1", "name": "default"}], "roles_links": []},
            "serviceCatalog": [
                {"type": "identity", "name": "astakos_identity", "endpoints_links": [],
                 "endpoints": [{"versionId": "v2.0", "region": "default",
                                "publicURL": format!("{base}/identity/v2.0")}]},
                {"type": "compute", "name": "cyclades_compute", "endpoints_links": [],
                 "endpoints": [{"versionId": "v2.0", "region": "default",
                                "publicURL": format!("{base}/compute/v2.0")}]},
            ],
        }}),
    )
}

/// A compute call on server `id`: `action` None reads it, Some("start"/"shutdown") acts.
fn compute(s: &mut State, token: Option<&str>, id: &str, action: Option<&str>) -> (u16, Value) {
    let Some((user, _)) = token.and_then(|t| s.users.get(t)).cloned() else {
        return fault(401, "unauthorized", "Invalid token");
    };
    if let Some(f) = s.compute_fault() {
        return f;
    }
    if action == Some("start") && s.faults.quota_exceeded {
        return fault(
            413,
            "overLimit",
            "Resource Limit Exceeded for your account.",
        );
    }
    let transition = s.transition;
    let s_fall_into_error = s.faults.fall_into_error;
    let now = Instant::now();
    // Another user's server is as absent as a missing one, as in Cyclades.
    let Some(vm) = s.vms.get_mut(id).filter(|vm| vm.owner == user) else {
        return fault(404, "itemNotFound", &format!("Server {id} not found"));
    };
    vm.settle(now);
    let (target, from, verb) = match action {
        None => {
            let task = vm.pending.as_ref().map_or("", |p| p.2);
            return (
                200,
                json!({"server": {"id": id, "name": vm.name, "status": vm.status,
                                  "SNF:task_state": task, "user_id": vm.owner}}),
            );
        }
        Some("start") => ("ACTIVE", "STOPPED", "START"),
        Some("shutdown") => ("STOPPED", "ACTIVE", "STOP"),
        Some(_) => return fault(400, "badRequest", "Unknown server action"),
    };
    let task = if verb == "START" {
        "STARTING"
    } else {
        "STOPPING"
    };
    match &vm.pending {
        Some((_, _, t)) if *t == task => return (202, Value::Null),
        Some(_) => return fault(409, "buildInProgress", "Server is being built."),
        None => {}
    }
    if vm.status != from {
        // Synnefo names states by their Ganeti operstate: ACTIVE is STARTED there.
        let operstate = if vm.status == "ACTIVE" {
            "STARTED"
        } else {
            vm.status.as_str()
        };
        return fault(
            400,
            "badRequest",
            &format!("Cannot perform '{verb}' action while server is in '{operstate}' state."),
        );
    }
    let end = if s_fall_into_error { "ERROR" } else { target };
    vm.pending = Some((end.to_string(), now + transition, task));
    vm.settle(now);
    (202, Value::Null)
}

/// The fixture shipped in `config/okeanos-sim.json`, for tests and `make run`.
pub fn demo_fixture() -> Fixture {
    serde_json::from_str(include_str!("../config/okeanos-sim.json"))
        .expect("the shipped fixture parses")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> State {
        let mut users = HashMap::new();
        users.insert("t1".to_string(), ("u1".to_string(), "one".to_string()));
        users.insert("t2".to_string(), ("u2".to_string(), "two".to_string()));
        let mut vms = BTreeMap::new();
        vms.insert(
            "1".to_string(),
            Vm {
                owner: "u1".into(),
                name: "m".into(),
                status: "STOPPED".into(),
                pending: None,
            },
        );
        State {
            users,
            vms,
            faults: Faults::default(),
            calls: Vec::new(),
            transition: Duration::ZERO,
            rng: 7,
        }
    }

    #[test]
    fn start_then_start_again_is_refused_like_synnefo() {
        let mut s = state();
        assert_eq!(compute(&mut s, Some("t1"), "1", Some("start")).0, 202);
        let (code, body) = compute(&mut s, Some("t1"), "1", Some("start"));
        assert_eq!(code, 400);
        assert_eq!(
            body["badRequest"]["message"],
            "Cannot perform 'START' action while server is in 'STARTED' state."
        );
    }

    #[test]
    fn a_pending_start_shows_its_task() {
        let mut s = state();
        s.transition = Duration::from_secs(60);
        assert_eq!(compute(&mut s, Some("t1"), "1", Some("start")).0, 202);
        let (_, v) = compute(&mut s, Some("t1"), "1", None);
        assert_eq!(v["server"]["status"], "STOPPED");
        assert_eq!(v["server"]["SNF:task_state"], "STARTING");
        assert_eq!(compute(&mut s, Some("t1"), "1", Some("start")).0, 202);
        assert_eq!(compute(&mut s, Some("t1"), "1", Some("shutdown")).0, 409);
    }

    #[test]
    fn owners_and_tokens_are_enforced() {
        let mut s = state();
        assert_eq!(compute(&mut s, Some("t2"), "1", None).0, 404);
        assert_eq!(compute(&mut s, Some("nope"), "1", None).0, 401);
        assert_eq!(compute(&mut s, None, "1", None).0, 401);
    }

    #[test]
    fn faults_are_counted_down() {
        let mut s = state();
        s.faults.fail_next = 2;
        s.faults.quota_exceeded = true;
        assert_eq!(compute(&mut s, Some("t1"), "1", None).0, 503);
        assert_eq!(compute(&mut s, Some("t1"), "1", None).0, 503);
        assert_eq!(compute(&mut s, Some("t1"), "1", None).0, 200);
        assert_eq!(compute(&mut s, Some("t1"), "1", Some("start")).0, 413);
    }

    #[test]
    fn error_rate_is_roughly_honoured() {
        let mut s = state();
        s.faults.error_rate = 0.3;
        let failed = (0..2000)
            .filter(|_| compute(&mut s, Some("t1"), "1", None).0 == 503)
            .count();
        assert!((450..750).contains(&failed), "{failed}");
    }

    #[test]
    fn shipped_fixture_parses() {
        let f = demo_fixture();
        assert!(f.servers.len() >= 3);
    }
}
