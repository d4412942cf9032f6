//! The `lambda-api` binary as a child process: commands, and `serve` with its address.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{mpsc, Arc, Mutex};

use super::{DEADLINE, MASTER, SLAVES, USER};

pub const BIN: &str = env!("CARGO_BIN_EXE_lambda-api");

/// The environment of a `serve` against a simulator whose identity is at `astakos`: any free
/// port on loopback, and VMs polled every `poll_ms`.
pub fn sim_env<'a>(astakos: &'a str, poll_ms: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("LAMBDA_API_LISTEN", "127.0.0.1:0"),
        ("LAMBDA_API_ASTAKOS_URL", astakos),
        ("LAMBDA_API_POLL_INTERVAL_MS", poll_ms),
    ]
}

/// The environment of a `serve` that is killed and started again against a simulator whose
/// identity is at `astakos`: polls and retries every 20 ms, and `grace_secs` for a SIGTERM.
pub fn restarted_env(astakos: &str, grace_secs: u64) -> Vec<(String, String)> {
    [
        ("LAMBDA_API_LISTEN", "127.0.0.1:0".to_string()),
        ("LAMBDA_API_ASTAKOS_URL", astakos.to_string()),
        ("LAMBDA_API_POLL_INTERVAL_MS", "20".to_string()),
        ("LAMBDA_API_RETRY_BASE_MS", "20".to_string()),
        ("LAMBDA_API_SHUTDOWN_GRACE_SECS", grace_secs.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// A `lambda-api` command with no inherited LAMBDA_API_* variables, run in `dir`.
pub fn command(dir: &Path, env: &[(&str, &str)]) -> Command {
    let mut c = Command::new(BIN);
    c.current_dir(dir);
    for (k, _) in std::env::vars() {
        if k.starts_with("LAMBDA_API_") {
            c.env_remove(k);
        }
    }
    for (k, v) in env {
        c.env(k, v);
    }
    c
}

pub fn run(dir: &Path, env: &[(&str, &str)], args: &[&str]) -> Output {
    command(dir, env).args(args).output().unwrap()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A `lambda-api serve` child process, the address it listens on, and what it logged.
pub struct Served {
    pub child: Child,
    pub base: String,
    log: Arc<Mutex<String>>,
}

impl Served {
    pub fn start(dir: &Path, env: &[(&str, &str)]) -> Served {
        Served::start_logging(dir, env, "info")
    }

    /// As [`Served::start`], logging at `level` (`RUST_LOG`).
    pub fn start_logging(dir: &Path, env: &[(&str, &str)], level: &str) -> Served {
        let mut child = command(dir, env)
            .arg("serve")
            .env("RUST_LOG", level)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, rx) = mpsc::channel();
        let err = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let kept = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if let Some(addr) = line.split("listening on http://").nth(1) {
                    let addr = addr.split_whitespace().next().unwrap_or("");
                    let _ = tx.send(format!("http://{addr}"));
                }
                let mut all = kept.lock().unwrap();
                all.push_str(&line);
                all.push('\n');
            }
        });
        let base = rx
            .recv_timeout(DEADLINE)
            .expect("serve says where it listens");
        Served { child, base, log }
    }

    /// Everything the process wrote to stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub fn kill9(&mut self) {
        // Child::kill sends SIGKILL on Unix.
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Served {
    /// Sends a signal by name (TERM, INT) with kill(1), and waits for the exit status.
    pub fn signal_and_wait(&mut self, signal: &str) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let ok = Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .unwrap();
        assert!(ok.success(), "kill -{signal} {pid}");
        let started = std::time::Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                started.elapsed() < DEADLINE,
                "serve did not exit after SIG{signal}"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}

/// `lambda-api instances add` of the demo cluster (master 101, slaves 102 and 103) for the
/// demo user; returns the new instance's id.
pub fn add_demo_instance(dir: &Path, env: &[(&str, &str)]) -> String {
    let args = [
        "instances",
        "add",
        "--name",
        "demo",
        "--owner",
        USER,
        "--master",
        MASTER,
        "--slave",
        SLAVES[0],
        "--slave",
        SLAVES[1],
    ];
    let o = run(dir, env, &args);
    assert!(o.status.success(), "{}", stderr(&o));
    String::from_utf8(o.stdout).unwrap().trim().to_string()
}
