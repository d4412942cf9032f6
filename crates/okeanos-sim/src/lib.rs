//! `okeanos-sim`: a small Synnefo stand-in that answers the calls lambda-api makes: identity
//! `POST /identity/v2.0/tokens` (with a service catalog pointing at itself); Cyclades servers
//! (read, list, act on, create, delete), flavors and images; networks, subnets and floating
//! IPs; Astakos projects and quotas; and public keys. Users, tokens, VMs, projects and keys
//! come from a fixture; owners and quotas are enforced; state changes after a delay; faults
//! can be injected on any call. A control API under `/_sim/` changes faults and VMs and
//! shows the calls made.

#![forbid(unsafe_code)]

mod catalog;
mod compute;
mod make;
mod serve;
mod state;
mod world;

pub use world::{Flavor, Image, Key, Limits, Project, FLOATING_NETWORK};

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use state::{State, Vm};
use world::{FloatingIp, Network, World};

/// Users, their tokens, and VMs.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Fixture {
    pub users: Vec<FixtureUser>,
    pub servers: Vec<FixtureServer>,
    /// Private networks, which a destroy deletes.
    #[serde(default)]
    pub networks: Vec<FixtureResource>,
    /// Floating IPs, which a destroy deletes.
    #[serde(default)]
    pub floating_ips: Vec<FixtureResource>,
    /// The flavors servers can be made of.
    #[serde(default)]
    pub flavors: Vec<Flavor>,
    #[serde(default)]
    pub images: Vec<Image>,
    #[serde(default)]
    pub projects: Vec<Project>,
    /// Users' public keys.
    #[serde(default)]
    pub keys: Vec<Key>,
}

/// A network resource of a user.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FixtureResource {
    pub id: String,
    pub owner: String,
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
    /// Calls on these servers, or of these ops (as the call log names them, e.g.
    /// `create_server`), wait unanswered until they leave this list.
    pub hold: Vec<String>,
    /// Calls of these ops are answered 400 badRequest: a permanent fault.
    pub refuse: Vec<String>,
    /// Calls of these ops are answered 413 overLimit, as when a quota was used up meanwhile.
    pub over_limit: Vec<String>,
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
    /// `tokens`, `status`, `detail`, `start`, `shutdown`, `delete`, `flavors`, `images`,
    /// `projects`, `quotas`, `keys`, `networks`, `subnets`, `floatingips`, `create_network`,
    /// `create_subnet`, `create_floatingip`, `create_server`, `delete_networks`,
    /// `delete_floatingips`.
    pub op: String,
    pub server: Option<String>,
    pub status: u16,
    pub at_ms: i64,
}

/// A running simulator.
pub struct Sim {
    server: Arc<tiny_http::Server>,
    state: Arc<Mutex<State>>,
    threads: Vec<JoinHandle<()>>,
    stopping: Arc<AtomicBool>,
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
        let fixture = &config.fixture;
        let vms = (fixture.servers.iter())
            .map(|s| (s.id.clone(), Vm::plain(&s.owner, &s.name, &s.status)))
            .collect();
        let mut world = World {
            flavors: fixture.flavors.clone(),
            images: fixture.images.clone(),
            projects: fixture.projects.clone(),
            keys: fixture.keys.clone(),
            ..World::default()
        };
        for r in &fixture.networks {
            let network = Network {
                owner: r.owner.clone(),
                name: r.id.clone(),
                project: None,
            };
            world.networks.insert(r.id.clone(), network);
        }
        for (n, r) in fixture.floating_ips.iter().enumerate() {
            let ip = FloatingIp {
                owner: r.owner.clone(),
                project: None,
                address: format!("83.212.0.{}", n + 1),
                server: None,
            };
            world.floating_ips.insert(r.id.clone(), ip);
        }
        let state = Arc::new(Mutex::new(State {
            users,
            vms,
            world,
            faults: config.faults.clone(),
            calls: Vec::new(),
            transition: config.transition,
            rng: fastrand::Rng::with_seed(config.seed),
            held: 0,
        }));
        let server = Arc::new(server);
        let stopping = Arc::new(AtomicBool::new(false));
        let base = format!("http://{addr}");
        let mut threads = Vec::new();
        for n in 0..config.threads.max(1) {
            let (server, state, stopping, base) = (
                server.clone(),
                state.clone(),
                stopping.clone(),
                base.clone(),
            );
            threads.push(std::thread::Builder::new().name(format!("sim-{n}")).spawn(
                move || {
                    while !stopping.load(Ordering::SeqCst) {
                        if let Ok(Some(request)) = server.recv_timeout(Duration::from_millis(200)) {
                            serve::answer(&state, &base, request);
                        }
                    }
                },
            )?);
        }
        Ok(Sim {
            server,
            state,
            threads,
            stopping,
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

    /// Whether a network resource exists: `kind` is `networks` or `floatingips`.
    pub fn resource_exists(&self, kind: &str, id: &str) -> bool {
        let s = self.lock();
        match kind {
            "networks" => s.world.networks.contains_key(id),
            _ => s.world.floating_ips.contains_key(id),
        }
    }

    /// What the simulator holds of a lambda instance: the servers (not deleted) whose
    /// metadata names it, by slot; the networks named after it, with their subnets; and the
    /// floating IPs attached to those servers.
    pub fn made_for(&self, instance: &str) -> Made {
        let mut s = self.lock();
        let now = Instant::now();
        let mut made = Made::default();
        for (id, vm) in s.vms.iter_mut() {
            vm.settle(now);
            let mine = vm.metadata.get("lambda_instance").map(String::as_str) == Some(instance);
            if mine && vm.status != "DELETED" {
                let slot = vm.metadata.get("lambda_slot").cloned().unwrap_or_default();
                made.servers.push((slot, id.clone(), vm.status.clone()));
            }
        }
        made.servers.sort();
        let name = format!("lambda-{instance}");
        for (id, n) in &s.world.networks {
            if n.name == name {
                made.networks.push(id.clone());
                let subnets = s.world.subnets.values().filter(|x| x.network == *id);
                made.subnets += subnets.count();
            }
        }
        let servers: Vec<&String> = made.servers.iter().map(|(_, id, _)| id).collect();
        made.floating_ips = (s.world.floating_ips.iter())
            .filter(|(_, ip)| ip.server.as_ref().is_some_and(|x| servers.contains(&x)))
            .map(|(id, _)| id.clone())
            .collect();
        made
    }

    /// Every floating IP of `owner`'s, and every private network.
    pub fn floating_ips_of(&self, owner: &str) -> Vec<String> {
        let s = self.lock();
        (s.world.floating_ips.iter())
            .filter(|(_, ip)| ip.owner == owner)
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// `owner`'s private networks.
    pub fn networks_of(&self, owner: &str) -> Vec<String> {
        let s = self.lock();
        (s.world.networks.iter())
            .filter(|(_, n)| n.owner == owner)
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// What `user` uses of `project` now, as the quotas count it.
    pub fn usage(&self, project: &str, user: &str) -> Limits {
        catalog::usage(&mut self.lock(), project, Some(user))
    }

    /// How many calls are waiting now on a held server (`Faults::hold`).
    pub fn held_calls(&self) -> usize {
        self.lock().held
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
        self.stopping.store(true, Ordering::SeqCst);
        self.server.unblock();
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// The state's lock; a panic while it was held leaves the world as consistent as a call left
/// it, so a poisoned lock is still used.
fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

/// The fixture shipped in `config/okeanos-sim.json`, for tests and `make run`.
pub fn demo_fixture() -> Fixture {
    serde_json::from_str(include_str!("../../../config/okeanos-sim.json"))
        .expect("the shipped fixture parses")
}

/// What the simulator holds of one lambda instance ([`Sim::made_for`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Made {
    /// (slot, server id, status) of each server not deleted, by slot.
    pub servers: Vec<(String, String, String)>,
    pub networks: Vec<String>,
    pub subnets: usize,
    pub floating_ips: Vec<String>,
}

impl Made {
    /// Nothing at all is left.
    pub fn is_empty(&self) -> bool {
        self.servers.is_empty() && self.networks.is_empty() && self.floating_ips.is_empty()
    }
}

/// Milliseconds since the Unix epoch, for the call log.
fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
