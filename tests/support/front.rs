//! Hostile clients' harness: the real `lambda-api` binary, the simulator, and nginx rendered
//! from the site config/nginx/lambda-api in front, with raw-socket helpers. Each case of `tests/hostile.rs`
//! starts its own [`Front`] and ends with [`Front::check_after`].

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::process::{add_demo_instance, sim_env, Served};
use super::*;

/// The service, the simulator, and nginx in front.
pub struct Front {
    pub sim: Sim,
    pub _dir: tempfile::TempDir,
    pub service: Served,
    pub direct: SocketAddr,
    pub nginx: Child,
    /// nginx's plain-HTTP listener (same server block as the TLS one).
    pub proxied: SocketAddr,
    pub tls: SocketAddr,
    pub cert: std::path::PathBuf,
    pub instance: String,
    /// The service's thread count once started and warm.
    pub idle_threads: u64,
}

pub fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

pub fn nginx_binary() -> String {
    for candidate in ["/usr/sbin/nginx", "/usr/bin/nginx"] {
        if Path::new(candidate).exists() {
            return candidate.into();
        }
    }
    panic!("nginx is not installed: run `make test-hostile`, which installs it");
}

/// The allocator settings the packaged unit gives the service (its `GLIBC_TUNABLES` line).
pub fn glibc_tunables() -> String {
    let unit = include_str!("../../config/deb/lambda-api.service");
    unit.lines()
        .find_map(|l| l.strip_prefix("Environment=GLIBC_TUNABLES="))
        .expect("the unit sets GLIBC_TUNABLES")
        .to_string()
}

impl Front {
    pub fn start() -> Front {
        Front::start_with(&[])
    }

    /// A front whose service also gets `extra` environment variables.
    pub fn start_with(extra: &[(&str, &str)]) -> Front {
        let sim = start_sim(Duration::from_millis(30));
        let dir = tempfile::tempdir().unwrap();
        let astakos = sim.astakos_url();
        let tunables = glibc_tunables();
        let mut env = sim_env(&astakos, "10");
        env.push(("RUST_LOG", "warn"));
        env.push(("GLIBC_TUNABLES", &tunables));
        env.extend_from_slice(extra);
        let instance = add_demo_instance(dir.path(), &env);
        let service = Served::start(dir.path(), &env);
        let direct: SocketAddr = service.base.trim_start_matches("http://").parse().unwrap();

        let prefix = dir.path().join("nginx");
        std::fs::create_dir_all(prefix.join("tmp")).unwrap();
        std::fs::create_dir_all(prefix.join("tls")).unwrap();
        let cert = prefix.join("tls/lambda-api.crt");
        let ok = Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=localhost",
            ])
            .args(["-addext", "subjectAltName=IP:127.0.0.1"])
            .arg("-keyout")
            .arg(prefix.join("tls/lambda-api.key"))
            .arg("-out")
            .arg(&cert)
            .stderr(Stdio::null())
            .status()
            .expect("openssl runs");
        assert!(ok.success());
        let (tls, proxied) = (free_port(), free_port());
        let render = concat!(env!("CARGO_MANIFEST_DIR"), "/.ci/nginx-conf");
        let conf = Command::new("bash")
            .arg(render)
            .arg(&prefix)
            .arg(tls.to_string())
            .arg(direct.to_string())
            .arg(proxied.to_string())
            .output()
            .unwrap();
        assert!(
            conf.status.success(),
            "{}",
            String::from_utf8_lossy(&conf.stderr)
        );
        std::fs::write(prefix.join("nginx.conf"), &conf.stdout).unwrap();
        let nginx = Command::new(nginx_binary())
            .arg("-p")
            .arg(&prefix)
            .arg("-c")
            .arg(prefix.join("nginx.conf"))
            .args(["-g", "daemon off;"])
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_for("nginx to listen", || {
            TcpStream::connect(proxied).ok().map(|_| ())
        });
        let mut front = Front {
            sim,
            _dir: dir,
            service,
            direct,
            nginx,
            proxied,
            tls,
            cert,
            instance,
            idle_threads: 0,
        };
        // Warm the service up (each call asserts a 200), then note its idle thread count.
        front.healthz_ms();
        front.idle_threads = front.threads_and_rss().0;
        front
    }

    pub fn pid(&self) -> u32 {
        self.service.child.id()
    }

    /// /proc/<pid>/status: (threads, VmRSS in KiB).
    pub fn threads_and_rss(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let field = |name: &str| -> u64 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        (field("Threads:"), field("VmRSS:"))
    }

    /// How many of the service's threads have this name.
    pub fn threads_named(&self, name: &str) -> usize {
        std::fs::read_dir(format!("/proc/{}/task", self.pid()))
            .map(|tasks| {
                tasks
                    .filter_map(Result::ok)
                    .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
                    .filter(|comm| comm.trim_end() == name)
                    .count()
            })
            .unwrap_or(0)
    }

    /// Waits until the service has taken new connections in: its thread count has grown (one
    /// per connection tiny_http is serving) and then held still for 200 ms. tiny_http may
    /// queue some connections rather than give each a thread, so no exact count is waited for.
    pub fn wait_connections_settled(&self) {
        let mut last = (0, Instant::now());
        wait_for("the service's threads to grow and settle", || {
            let now = self.threads_and_rss().0;
            if now != last.0 {
                last = (now, Instant::now());
            }
            (now > self.idle_threads && last.1.elapsed() >= Duration::from_millis(200))
                .then_some(())
        });
    }

    /// The best of three direct /healthz round trips, in milliseconds.
    pub fn healthz_ms(&self) -> u128 {
        (0..3)
            .map(|_| {
                let started = Instant::now();
                let r = get(&format!("http://{}/healthz", self.direct), None);
                assert_eq!(r.status, 200, "{}", r.body);
                started.elapsed().as_millis()
            })
            .min()
            .unwrap()
    }

    /// Runs one case against a fresh front, then checks what must hold after every case:
    /// the service is alive and fast, its threads and memory are back near where they were,
    /// and no hostile request created an action.
    pub fn case(name: &str, run: impl FnOnce(&Front)) {
        Front::case_with(name, &[], run);
    }

    /// As [`Front::case`], with `extra` environment variables for the service.
    pub fn case_with(name: &str, extra: &[(&str, &str)], run: impl FnOnce(&Front)) {
        let mut f = Front::start_with(extra);
        let baseline = f.threads_and_rss();
        run(&f);
        f.check_after(name, baseline);
    }

    fn check_after(&mut self, case: &str, baseline: (u64, u64)) {
        assert!(
            self.service.child.try_wait().unwrap().is_none(),
            "{case}: the service died"
        );
        let ms = self.healthz_ms();
        assert!(ms < 200, "{case}: /healthz took {ms} ms");
        // Connection threads end once their clients are gone (tiny_http keeps idle pool
        // threads five seconds). What may stay: nginx's idle keep-alive connections to the
        // service (16 per worker, two workers here) and one per abandoned connection.
        let (threads, rss) = wait_for(&format!("{case}: threads back near the baseline"), || {
            let (t, r) = self.threads_and_rss();
            (t <= baseline.0 + 2 * 16 + 8).then_some((t, r))
        });
        assert!(
            rss <= baseline.1 + 32 * 1024,
            "{case}: RSS {rss} KiB, baseline {} KiB",
            baseline.1
        );
        let _ = threads;
        let history = get(
            &format!(
                "http://{}/api/lambda-instances/{}/actions/",
                self.direct, self.instance
            ),
            Some(TOKEN),
        )
        .json();
        assert_eq!(
            history["pagination"]["count"], 0,
            "{case}: hostile traffic created an action: {history}"
        );
    }
}

impl Drop for Front {
    fn drop(&mut self) {
        // SIGTERM, so that the master stops its workers too (SIGKILL would orphan them).
        let pid = self.nginx.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.nginx.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.nginx.kill();
        let _ = self.nginx.wait();
    }
}

/// Sends `bytes` (in pieces of `chunk` bytes, `pause` apart), reads what comes back for up to
/// `wait`, and returns the status code of the first response, if any.
pub fn exchange(
    addr: SocketAddr,
    bytes: &[u8],
    chunk: usize,
    pause: Duration,
    wait: Duration,
) -> (Option<u16>, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(wait)).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    for piece in bytes.chunks(chunk.max(1)) {
        if s.write_all(piece).is_err() {
            break; // the server closed: its answer may still be readable
        }
        if !pause.is_zero() {
            std::thread::sleep(pause);
        }
    }
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
        if out.windows(4).any(|w| w == b"\r\n\r\n") && !out.starts_with(b"HTTP/1.1 100") {
            break;
        }
    }
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .lines()
        .find(|l| l.starts_with("HTTP/") && !l.contains(" 100 "))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok());
    (status, text)
}

pub fn send(addr: SocketAddr, bytes: &[u8]) -> (Option<u16>, String) {
    exchange(
        addr,
        bytes,
        usize::MAX,
        Duration::ZERO,
        Duration::from_secs(3),
    )
}

pub fn post_head(f: &Front, content_type: &str, length: &str, extra: &str) -> String {
    format!(
        "POST /api/lambda-instances/{}/ HTTP/1.1\r\nHost: localhost\r\nAuthorization: Token {TOKEN}\r\n\
         Content-Type: {content_type}\r\nContent-Length: {length}\r\n{extra}\r\n",
        f.instance
    )
}

pub fn is_4xx(s: Option<u16>) -> bool {
    matches!(s, Some(400..=499))
}
