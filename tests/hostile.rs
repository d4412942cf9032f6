//! Hostile clients, sent as raw bytes to the real `lambda-api` binary directly and through
//! nginx rendered from config/nginx.conf. After every case: the process is alive, /healthz
//! answers within 200 ms, threads and RSS return near their baseline, and no action was lost
//! or duplicated. Every case is bounded in count and time, and stays on 127.0.0.1.
//!
//! Run with `make test-hostile`, which installs nginx when it is missing.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::process::{add_demo_instance, Served};
use support::*;

/// The service, the simulator, and nginx in front.
struct Front {
    sim: okeanos_sim::Sim,
    _dir: tempfile::TempDir,
    service: Served,
    direct: SocketAddr,
    nginx: Child,
    /// nginx's plain-HTTP listener (same server block as the TLS one).
    proxied: SocketAddr,
    tls: SocketAddr,
    cert: std::path::PathBuf,
    instance: String,
    /// The service's thread count once started and warm.
    idle_threads: u64,
}

fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn nginx_binary() -> String {
    for candidate in ["/usr/sbin/nginx", "/usr/bin/nginx"] {
        if Path::new(candidate).exists() {
            return candidate.into();
        }
    }
    panic!("nginx is not installed: run `make test-hostile`, which installs it");
}

impl Front {
    fn start() -> Front {
        let sim = start_sim(Duration::from_millis(30));
        let dir = tempfile::tempdir().unwrap();
        let astakos = sim.astakos_url();
        let env = [
            ("LAMBDA_API_LISTEN", "127.0.0.1:0"),
            ("LAMBDA_API_ASTAKOS_URL", astakos.as_str()),
            ("LAMBDA_API_POLL_INTERVAL_MS", "10"),
            ("RUST_LOG", "warn"),
        ];
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

    fn pid(&self) -> u32 {
        self.service.child.id()
    }

    /// /proc/<pid>/status: (threads, VmRSS in KiB).
    fn threads_and_rss(&self) -> (u64, u64) {
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

    /// Waits until the service has taken new connections in: its thread count has grown (one
    /// per connection tiny_http is serving) and then held still for 200 ms. tiny_http may
    /// queue some connections rather than give each a thread, so no exact count is waited for.
    fn wait_connections_settled(&self) {
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
    fn healthz_ms(&self) -> u128 {
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

    /// What must hold after every case.
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
fn exchange(
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

fn send(addr: SocketAddr, bytes: &[u8]) -> (Option<u16>, String) {
    exchange(
        addr,
        bytes,
        usize::MAX,
        Duration::ZERO,
        Duration::from_secs(3),
    )
}

fn post_head(f: &Front, content_type: &str, length: &str, extra: &str) -> String {
    format!(
        "POST /api/lambda-instances/{}/ HTTP/1.1\r\nHost: localhost\r\nAuthorization: Token {TOKEN}\r\n\
         Content-Type: {content_type}\r\nContent-Length: {length}\r\n{extra}\r\n",
        f.instance
    )
}

fn is_4xx(s: Option<u16>) -> bool {
    matches!(s, Some(400..=499))
}

#[test]
fn hostile_clients() {
    let mut f = Front::start();
    let baseline = f.threads_and_rss();
    let form = "application/x-www-form-urlencoded";
    let case = |name: &str, f: &mut Front, run: &dyn Fn(&Front)| {
        run(f);
        f.check_after(name, baseline);
    };

    // Absurd Content-Length values. The service answers 413 when it can drain safely and
    // abandons the connection when it cannot; nginx always answers 413.
    for length in ["18446744073709551615", "1000000000000", "4000000000"] {
        case(&format!("Content-Length {length}"), &mut f, &|f| {
            let bytes = format!("{}abc", post_head(f, form, length, ""));
            let (direct, _) = exchange(
                f.direct,
                bytes.as_bytes(),
                usize::MAX,
                Duration::ZERO,
                Duration::from_secs(1),
            );
            assert!(
                direct.is_none() || direct == Some(413),
                "direct: {direct:?}"
            );
            // nginx refuses a length it cannot parse with 400, any other with 413.
            let proxied = send(f.proxied, bytes.as_bytes()).0;
            assert!(
                matches!(proxied, Some(400 | 413)),
                "through nginx: {proxied:?}"
            );
        });
    }

    case("a 10 MB body", &mut f, &|f| {
        let mut bytes = post_head(f, form, "10000000", "").into_bytes();
        bytes.extend(std::iter::repeat_n(b'a', 10_000_000));
        assert_eq!(send(f.direct, &bytes).0, Some(413));
        assert_eq!(send(f.proxied, &bytes).0, Some(413));
    });

    case("a chunked body over the cap", &mut f, &|f| {
        let mut bytes = format!(
            "POST /api/lambda-instances/{}/ HTTP/1.1\r\nHost: x\r\nAuthorization: Token {TOKEN}\r\n\
             Content-Type: {form}\r\nTransfer-Encoding: chunked\r\n\r\n",
            f.instance
        )
        .into_bytes();
        for _ in 0..16 {
            bytes.extend_from_slice(b"1000\r\n");
            bytes.extend(std::iter::repeat_n(b'a', 0x1000));
            bytes.extend_from_slice(b"\r\n");
        }
        bytes.extend_from_slice(b"0\r\n\r\n");
        assert_eq!(send(f.direct, &bytes).0, Some(413));
        assert_eq!(send(f.proxied, &bytes).0, Some(413));
    });

    case("a 100 KB header line and 10 000 headers", &mut f, &|f| {
        let long = format!(
            "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Long: {}\r\nConnection: close\r\n\r\n",
            "a".repeat(100_000)
        );
        assert!(matches!(
            send(f.direct, long.as_bytes()).0,
            Some(200 | 400..=499)
        ));
        assert!(is_4xx(send(f.proxied, long.as_bytes()).0));
        let many: String = (0..10_000).map(|i| format!("X-H{i}: v\r\n")).collect();
        let many = format!("GET /healthz HTTP/1.1\r\nHost: x\r\n{many}Connection: close\r\n\r\n");
        assert!(matches!(
            send(f.direct, many.as_bytes()).0,
            Some(200 | 400..=499)
        ));
        assert!(is_4xx(send(f.proxied, many.as_bytes()).0));
    });

    case(
        "malformed request lines, bare LF, NUL bytes",
        &mut f,
        &|f| {
            for bytes in [
                &b"GARBAGE\r\n\r\n"[..],
                b"GET\r\n\r\n",
                b"GET /healthz HTTP/9.9\r\n\r\n",
                b"GET /he\0althz HTTP/1.1\r\nHost: x\r\n\r\n",
                b"GET /healthz HTTP/1.1\r\nHost: x\0y\r\n\r\n",
                b"\xff\xfe\xfd\r\n\r\n",
            ] {
                for addr in [f.direct, f.proxied] {
                    let (status, text) = send(addr, bytes);
                    // 505 is the right answer to HTTP/9.9; any other 5xx would be a fault.
                    let fine = status.is_none() || status < Some(500) || status == Some(505);
                    assert!(
                        fine,
                        "{:?} to {addr}: {text}",
                        String::from_utf8_lossy(bytes)
                    );
                }
            }
            // Bare LF line ends: tiny_http waits for a CRLF end of headers, so directly the client
            // gets no answer (and costs only its own connection); nginx accepts them.
            let bare = b"GET /healthz HTTP/1.1\nHost: x\nConnection: close\n\n";
            let (direct, _) = exchange(
                f.direct,
                bare,
                usize::MAX,
                Duration::ZERO,
                Duration::from_millis(500),
            );
            assert!(matches!(direct, None | Some(200 | 400)), "{direct:?}");
            assert_eq!(send(f.proxied, bare).0, Some(200));
        },
    );

    case("HTTP/1.0, keep-alive and pipelining", &mut f, &|f| {
        for addr in [f.direct, f.proxied] {
            assert_eq!(send(addr, b"GET /healthz HTTP/1.0\r\n\r\n").0, Some(200));
            assert_eq!(
                send(
                    addr,
                    b"GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
                )
                .0,
                Some(200)
            );
            let two = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
            let (_, text) = exchange(
                addr,
                two,
                usize::MAX,
                Duration::ZERO,
                Duration::from_secs(3),
            );
            let text = if text.matches("HTTP/1.1 ").count() < 2 {
                // The first answer ended the read; read the whole stream instead.
                let mut s = TcpStream::connect(addr).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
                s.write_all(two).unwrap();
                let mut all = String::new();
                let _ = s.read_to_string(&mut all);
                all
            } else {
                text
            };
            let first = text.find("HTTP/1.1 200").expect("first answer");
            let second = text.find("HTTP/1.1 404").expect("second answer");
            assert!(first < second, "answers out of order: {text}");
        }
    });

    case("Expect: 100-continue with a bad type", &mut f, &|f| {
        let head = post_head(f, "text/plain", "100", "Expect: 100-continue\r\n");
        let (status, text) = exchange(
            f.direct,
            head.as_bytes(),
            usize::MAX,
            Duration::ZERO,
            Duration::from_secs(2),
        );
        assert_eq!(status, Some(415), "{text}");
        assert!(
            !text.contains("100 Continue"),
            "the body was invited: {text}"
        );
        let mut s = TcpStream::connect(f.proxied).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        s.write_all(head.as_bytes()).unwrap();
        s.write_all(&[b'a'; 100]).unwrap();
        let mut buf = vec![0; 4096];
        let n = s.read(&mut buf).unwrap_or(0);
        let text = String::from_utf8_lossy(&buf[..n]);
        assert!(
            text.contains(" 415 ") || text.contains(" 100 "),
            "through nginx: {text}"
        );
    });

    case("500 idle connections", &mut f, &|f| {
        for addr in [f.direct, f.proxied] {
            let idle: Vec<TcpStream> = (0..500)
                .map(|_| TcpStream::connect(addr).unwrap())
                .collect();
            if addr == f.direct {
                // Measure once the service has taken them in.
                f.wait_connections_settled();
            }
            let ms = f.healthz_ms();
            assert!(
                ms < 200,
                "/healthz took {ms} ms with 500 idle connections to {addr}"
            );
            drop(idle);
        }
    });

    case(
        "slowloris: slow headers and slow bodies for 5 s",
        &mut f,
        &|f| {
            let slow_head =
                b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n"
                    .to_vec();
            let slow_body = format!(
                "{}action=start&x=aaaaaaaaaaaaaaaaa",
                post_head(f, form, "35", "")
            )
            .into_bytes();
            let threads: Vec<_> = (0..40)
                .flat_map(|i| {
                    let addr = if i % 2 == 0 { f.direct } else { f.proxied };
                    let (h, b) = (slow_head.clone(), slow_body.clone());
                    [
                        std::thread::spawn(move || {
                            exchange(
                                addr,
                                &h,
                                1,
                                Duration::from_millis(80),
                                Duration::from_secs(1),
                            );
                        }),
                        std::thread::spawn(move || {
                            let at = b.len() - 35;
                            exchange(
                                addr,
                                &b[..at + 5],
                                at + 1,
                                Duration::from_millis(1000),
                                Duration::from_secs(1),
                            );
                        }),
                    ]
                })
                .collect();
            // Half of the 80 slow connections go straight to the service: measure once it
            // has taken them in.
            f.wait_connections_settled();
            let ms = f.healthz_ms();
            assert!(ms < 200, "/healthz took {ms} ms during slowloris");
            for t in threads {
                t.join().unwrap();
            }
        },
    );

    case("odd ids and tokens", &mut f, &|f| {
        let long = "a".repeat(10_000);
        for path in [
            "/api/lambda-instances/%FF%FE/",
            "/api/lambda-instances/\u{e9}/",
            &format!("/api/lambda-instances/{long}/"),
        ] {
            let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nX-Auth-Token: {TOKEN}\r\nConnection: close\r\n\r\n");
            // tiny_http closes a request line that is not ASCII without an answer.
            let direct = send(f.direct, req.as_bytes()).0;
            assert!(direct.is_none() || is_4xx(direct), "{path}: {direct:?}");
            assert!(
                is_4xx(send(f.proxied, req.as_bytes()).0),
                "{path} through nginx"
            );
        }
        let raw =
            b"GET /api/lambda-instances/\xff\xfe/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        let direct = send(f.direct, raw).0;
        assert!(direct.is_none() || is_4xx(direct), "{direct:?}");
        assert_eq!(send(f.proxied, raw).0, Some(400));
        for token in ["a\x01b", "a\x7fb", "Token\tx", &"t".repeat(5000)] {
            let req = format!("GET /api/authenticate/ HTTP/1.1\r\nHost: x\r\nAuthorization: Token {token}\r\nConnection: close\r\n\r\n");
            assert!(is_4xx(send(f.direct, req.as_bytes()).0), "{token:?}");
            assert!(
                is_4xx(send(f.proxied, req.as_bytes()).0),
                "{token:?} through nginx"
            );
        }
    });

    // TLS at the front, and the X-Request-Id it passes on.
    let out = Command::new("curl")
        .args([
            "-sS",
            "-m",
            "10",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--cacert",
        ])
        .arg(&f.cert)
        .arg(format!("https://{}/healthz", f.tls))
        .output()
        .expect("curl runs");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "200",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // No action lost or duplicated: the instance has none until a real start, then one.
    let through = format!("http://{}", f.proxied);
    let history = get(
        &format!("{through}/api/lambda-instances/{}/actions/", f.instance),
        Some(TOKEN),
    )
    .json();
    assert_eq!(
        history["pagination"]["count"], 0,
        "hostile traffic created an action: {history}"
    );
    let r = post_form(
        &format!("{through}/api/lambda-instances/{}/", f.instance),
        TOKEN,
        "start",
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let action = r.json()["data"][0]["id"].as_str().unwrap().to_string();
    let done = wait_for("the start through nginx", || {
        let v = get(
            &format!(
                "{through}/api/lambda-instances/{}/actions/{action}/",
                f.instance
            ),
            Some(TOKEN),
        )
        .json();
        (v["state"] == "succeeded").then_some(v)
    });
    assert_eq!(done["attempts"], 1);
    let history = get(
        &format!("{through}/api/lambda-instances/{}/actions/", f.instance),
        Some(TOKEN),
    )
    .json();
    assert_eq!(history["pagination"]["count"], 1);
    assert_eq!(f.sim.calls().iter().filter(|c| c.op == "start").count(), 3);
}
