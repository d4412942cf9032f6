//! The processes a run drives — the service, the simulator, the ceiling — and the fixtures,
//! users and tokens they share.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::{err, Res, HTTP_THREADS, USERS};

/// A child process, killed (and waited for) when dropped.
pub(crate) struct Proc(pub(crate) Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    pub(crate) fn status_field(&self, name: &str) -> u64 {
        status_field(self.0.id(), name)
    }
}

/// A number of `/proc/<pid>/status` (`name` with its colon: "VmRSS:"), or 0.
pub(crate) fn status_field(pid: u32, name: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

pub(crate) fn free_addr() -> String {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string()
}

pub(crate) fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .proxy(None)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .new_agent()
}

pub(crate) fn wait_ready(url: &str, deadline: Duration) -> Res<Duration> {
    let started = Instant::now();
    let agent = agent();
    loop {
        if let Ok(r) = agent.get(url).call() {
            if r.status() == 200 {
                return Ok(started.elapsed());
            }
        }
        if started.elapsed() > deadline {
            return Err(format!("{url} never answered 200"));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

pub(crate) fn token(user: usize) -> String {
    format!("bench-token-{user:03}")
}

pub(crate) fn user_id(user: usize) -> String {
    format!("00000000-0000-4000-8000-{user:012}")
}

/// A simulator fixture: `USERS` users, each with the VMs `vms(user)` lists.
pub(crate) fn write_fixture(path: &Path, vms: &dyn Fn(usize) -> Vec<String>) -> Res<()> {
    let users: Vec<Value> = (0..USERS)
        .map(|u| json!({"id": user_id(u), "name": format!("user{u}"), "tokens": [token(u)]}))
        .collect();
    let servers: Vec<Value> = (0..USERS)
        .flat_map(|u| {
            vms(u)
                .into_iter()
                .map(move |id| json!({"id": id, "owner": user_id(u), "status": "STOPPED"}))
        })
        .collect();
    std::fs::write(
        path,
        json!({"users": users, "servers": servers}).to_string(),
    )
    .map_err(err("fixture"))
}

pub(crate) struct Bin {
    pub(crate) dir: PathBuf,
}

impl Bin {
    pub(crate) fn sim(&self, fixture: &Path, transition_ms: u64) -> Res<(Proc, String)> {
        let addr = free_addr();
        let child = Command::new(self.dir.join("okeanos-sim"))
            .args([
                "--listen",
                &addr,
                "--threads",
                "8",
                "--transition-ms",
                &transition_ms.to_string(),
            ])
            .arg("--fixture")
            .arg(fixture)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .map_err(err("okeanos-sim"))?;
        let p = Proc(child);
        wait_ready(
            &format!("http://{addr}/_sim/faults"),
            Duration::from_secs(10),
        )?;
        Ok((p, addr))
    }

    pub(crate) fn service(
        &self,
        db: &Path,
        sim: &str,
        workers: usize,
        poll_ms: u64,
    ) -> Res<(Proc, String, Duration)> {
        let addr = free_addr();
        let started = Instant::now();
        let child = Command::new(self.dir.join("lambda-api"))
            .arg("serve")
            .env("LAMBDA_API_LISTEN", &addr)
            .env("LAMBDA_API_DATABASE", db)
            .env(
                "LAMBDA_API_ASTAKOS_URL",
                format!("http://{sim}/identity/v2.0"),
            )
            .env("LAMBDA_API_WORKERS", workers.to_string())
            .env("LAMBDA_API_HTTP_THREADS", HTTP_THREADS.to_string())
            .env("LAMBDA_API_POLL_INTERVAL_MS", poll_ms.to_string())
            .env("LAMBDA_API_SHUTDOWN_GRACE_SECS", "0")
            // The users' tokens stay cached through a run: the 401 row strikes from wrk's
            // address, which is then turned away (429) for a minute when it asks identity.
            .env("LAMBDA_API_TOKEN_CACHE_TTL_SECS", "86400")
            .env("GLIBC_TUNABLES", glibc_tunables())
            .env("RUST_LOG", "warn")
            .stderr(Stdio::null())
            .spawn()
            .map_err(err("lambda-api"))?;
        let p = Proc(child);
        let ready = wait_ready(&format!("http://{addr}/healthz"), Duration::from_secs(30))?;
        let _ = started;
        Ok((p, addr, ready))
    }
}

/// The allocator settings the packaged unit runs the service with: measured as deployed.
fn glibc_tunables() -> &'static str {
    include_str!("../../../config/deb/lambda-api.service")
        .lines()
        .find_map(|l| l.strip_prefix("Environment=GLIBC_TUNABLES="))
        .unwrap_or("")
}

/// Logs the first `users` users in through `agent`, so that their tokens are cached.
pub(crate) fn log_in(agent: &ureq::Agent, base: &str, users: usize) -> Res<()> {
    for u in 0..users {
        agent
            .get(&format!("{base}/api/authenticate/"))
            .header("X-Auth-Token", &token(u))
            .call()
            .map_err(err("warm-up"))?;
    }
    Ok(())
}
