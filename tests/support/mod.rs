//! Test harness: a real okeanos simulator and a real lambda-api service, both on
//! 127.0.0.1:0, over a fresh database in a temporary folder; and a small HTTP client.

#![allow(dead_code)]

pub mod front;
pub mod process;

use std::time::{Duration, Instant};

use lambda_api::config::Config;
use lambda_api::model::Status;
use lambda_api::store::NewInstance;
use lambda_api::Service;
use okeanos_sim::{demo_fixture, Faults, Fixture, FixtureResource, FixtureServer, Sim, SimConfig};
use serde_json::Value;

pub const TOKEN: &str = "demo-token-tJ3b3f32f23ceuqdoS";
pub const USER: &str = "1e9b2a3c-5d4f-4e6a-8b7c-9d0e1f2a3b4c";
pub const OTHER_TOKEN: &str = "other-token-Kq9x81mZ0pLw";
pub const OTHER_USER: &str = "7a6b5c4d-3e2f-4a1b-9c8d-7e6f5a4b3c2d";
pub const MASTER: &str = "101";
pub const SLAVES: [&str; 2] = ["102", "103"];

/// How long a test waits for a state before it fails.
pub const DEADLINE: Duration = Duration::from_secs(20);

pub struct Harness {
    pub sim: Sim,
    pub service: Option<Service>,
    pub dir: tempfile::TempDir,
    pub config: Config,
    pub base: String,
}

/// A configuration for tests: fast polls and retries, a database in `dir`.
pub fn test_config(dir: &std::path::Path, sim: &Sim) -> Config {
    Config {
        listen: "127.0.0.1:0".into(),
        database: dir.join("lambda-api.db"),
        http_threads: 4,
        workers: 2,
        astakos_url: sim.astakos_url(),
        poll_interval_ms: 10,
        retry_base_ms: 10,
        okeanos_timeout_secs: 5,
        // Tests stop services with actions in flight; handing them back at once is the point.
        shutdown_grace_secs: 0,
        ..Config::default()
    }
}

pub fn start_sim(transition: Duration) -> Sim {
    start_sim_with(demo_fixture(), transition)
}

/// A simulator of `fixture`.
pub fn start_sim_with(fixture: Fixture, transition: Duration) -> Sim {
    Sim::start(SimConfig {
        listen: "127.0.0.1:0".into(),
        fixture,
        transition,
        faults: Faults::default(),
        threads: 4,
        seed: 1,
    })
    .expect("simulator starts")
}

impl Harness {
    /// Simulator VMs take `transition` to change state.
    pub fn start(transition: Duration) -> Harness {
        Harness::with(transition, |_| {})
    }

    pub fn with(transition: Duration, tune: impl FnOnce(&mut Config)) -> Harness {
        Harness::with_fixture(demo_fixture(), transition, tune)
    }

    /// As [`Harness::with`], on a simulator of `fixture`.
    pub fn with_fixture(
        fixture: Fixture,
        transition: Duration,
        tune: impl FnOnce(&mut Config),
    ) -> Harness {
        let sim = start_sim_with(fixture, transition);
        let dir = tempfile::tempdir().unwrap();
        let mut config = test_config(dir.path(), &sim);
        tune(&mut config);
        let service = Service::start(&config).expect("service starts");
        let base = format!("http://{}", service.local_addr().unwrap());
        Harness {
            sim,
            service: Some(service),
            dir,
            config,
            base,
        }
    }

    /// The users log in: their tokens are in the cache from then on, as a client's are once
    /// it has made its first call. For tests whose first calls come in a burst (a burst of
    /// first calls with one token is `tests/identity.rs`'s).
    pub fn log_in(&self) {
        for token in [TOKEN, OTHER_TOKEN] {
            assert_eq!(self.get("/api/authenticate/", Some(token)).status, 200);
        }
    }

    /// Stops the service and starts it again on the same database (on a new port).
    pub fn restart(&mut self) {
        if let Some(s) = self.service.take() {
            s.stop();
        }
        let service = Service::start(&self.config).expect("service restarts");
        self.base = format!("http://{}", service.local_addr().unwrap());
        self.service = Some(service);
    }

    /// Registers the demo cluster (master 101, slaves 102 and 103) in `status`.
    pub fn add_instance(&self, status: Status) -> String {
        self.add_instance_for(USER, status)
    }

    pub fn add_instance_for(&self, owner: &str, status: Status) -> String {
        self.add_cluster(owner, MASTER, &SLAVES, status)
    }

    /// Registers an instance of `owner` with these VMs.
    pub fn add_cluster(
        &self,
        owner: &str,
        master: &str,
        slaves: &[&str],
        status: Status,
    ) -> String {
        let new = NewInstance {
            name: "demo".into(),
            owner: owner.into(),
            master: master.into(),
            slaves: slaves.iter().map(|s| s.to_string()).collect(),
            status,
            network: None,
            floating_ips: Vec::new(),
        };
        self.add_new(new)
    }

    /// Registers `new`.
    pub fn add_new(&self, new: NewInstance) -> String {
        self.config.db().open().unwrap().add_instance(&new).unwrap()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn action(&self, id: &str, action: &str) -> Resp {
        post_form(
            &self.url(&format!("/api/lambda-instances/{id}/")),
            TOKEN,
            action,
        )
    }

    pub fn get(&self, path: &str, token: Option<&str>) -> Resp {
        get(&self.url(path), token)
    }

    pub fn status_of(&self, id: &str) -> Value {
        let r = self.get(&format!("/api/lambda-instances/{id}/"), Some(TOKEN));
        assert_eq!(r.status, 200, "{}", r.body);
        r.json()["data"][0]["status"].clone()
    }

    /// Polls the instance until its status is `want`, failing at the deadline.
    pub fn wait_status(&self, id: &str, want: &str) -> Value {
        let started = Instant::now();
        loop {
            let status = self.status_of(id);
            if status["message"] == want {
                return status;
            }
            assert!(
                started.elapsed() < DEADLINE,
                "instance {id} never became {want}: {status}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Polls an action until it is no longer queued or running.
    pub fn wait_action_done(&self, id: &str, action: &str) -> Value {
        let started = Instant::now();
        loop {
            let r = self.get(
                &format!("/api/lambda-instances/{id}/actions/{action}/"),
                Some(TOKEN),
            );
            assert_eq!(r.status, 200, "{}", r.body);
            let v = r.json();
            if v["state"] == "succeeded" || v["state"] == "failed" {
                return v;
            }
            assert!(
                started.elapsed() < DEADLINE,
                "action {action} never ended: {v}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The (op, server) of each `start`/`shutdown` call the simulator answered 2xx.
    pub fn sim_actions(&self) -> Vec<(String, String)> {
        self.sim
            .calls()
            .into_iter()
            .filter(|c| (c.op == "start" || c.op == "shutdown") && c.status < 300)
            .map(|c| (c.op, c.server.unwrap_or_default()))
            .collect()
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(s) = self.service.take() {
            s.stop();
        }
    }
}

/// An HTTP answer.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .proxy(None)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .new_agent()
}

fn into_resp(r: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Resp {
    let mut r = r.expect("the server answers");
    let headers = r
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    Resp {
        status: r.status().as_u16(),
        headers,
        body: r.body_mut().read_to_string().unwrap(),
    }
}

pub fn get(url: &str, token: Option<&str>) -> Resp {
    let mut req = agent().get(url);
    if let Some(t) = token {
        req = req.header("Authorization", format!("Token {t}"));
    }
    into_resp(req.call())
}

/// `GET url` with `headers`.
pub fn get_with(url: &str, headers: &[(&str, &str)]) -> Resp {
    let mut req = agent().get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    into_resp(req.call())
}

pub fn post_form(url: &str, token: &str, action: &str) -> Resp {
    post(
        url,
        &[("Authorization", &format!("Token {token}"))],
        "application/x-www-form-urlencoded",
        format!("action={action}").as_bytes(),
    )
}

pub fn post(url: &str, headers: &[(&str, &str)], content_type: &str, body: &[u8]) -> Resp {
    let mut req = agent().post(url).header("Content-Type", content_type);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    into_resp(req.send(body))
}

/// `DELETE url` with `headers`.
pub fn delete(url: &str, headers: &[(&str, &str)]) -> Resp {
    let mut req = agent().delete(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    into_resp(req.call())
}

/// Polls `f` until it returns Some, failing at the deadline with `what`.
pub fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let started = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(started.elapsed() < DEADLINE, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The demo fixture with `n` more STOPPED VMs of the demo user, named `v0`, `v1`, ..., and
/// the demo user's private network `net-1` and floating IP `ip-1`.
pub fn fixture_with_vms(n: usize) -> Fixture {
    let mut fixture = demo_fixture();
    fixture.networks.push(FixtureResource {
        id: "net-1".into(),
        owner: USER.into(),
    });
    fixture.floating_ips.push(FixtureResource {
        id: "ip-1".into(),
        owner: USER.into(),
    });
    fixture.servers.extend((0..n).map(|i| FixtureServer {
        id: format!("v{i}"),
        name: format!("vm-{i}"),
        owner: USER.into(),
        status: "STOPPED".into(),
    }));
    fixture
}
