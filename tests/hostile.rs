//! Hostile clients, sent as raw bytes to the real `lambda-api` binary directly and through
//! nginx rendered from the site config/nginx/lambda-api. Each case starts its own front and ends with the
//! same checks: the process is alive, /healthz answers within 200 ms, threads and RSS return
//! near their baseline, and no action was created. Every case is bounded in count and time,
//! and stays on 127.0.0.1.
//!
//! Run with `make test-hostile`, which installs nginx when it is missing.

#[path = "hostile/bodies.rs"]
mod bodies;
mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use support::front::*;
use support::*;

const FORM: &str = "application/x-www-form-urlencoded";

#[test]
fn a_100_kb_header_line_and_10_000_headers() {
    Front::case("a 100 KB header line and 10 000 headers", |f| {
        let long = format!(
            "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Long: {}\r\nConnection: close\r\n\r\n",
            "a".repeat(100_000)
        );
        let many: String = (0..10_000).map(|i| format!("X-H{i}: v\r\n")).collect();
        let many = format!("GET /healthz HTTP/1.1\r\nHost: x\r\n{many}Connection: close\r\n\r\n");
        for head in [long, many] {
            let (status, text) = send(f.direct, head.as_bytes());
            assert_eq!(status, Some(431), "{text}");
            assert!(text.contains("request_header_fields_too_large"), "{text}");
            assert!(is_4xx(send(f.proxied, head.as_bytes()).0));
        }
    });
}

/// A head just under the limit is served; just over it, refused with the error body.
#[test]
fn the_head_limit_is_8_kib() {
    Front::case("heads around 8 KiB", |f| {
        let head = |pad: usize| {
            let base = "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Pad: \r\n\r\n";
            format!(
                "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Pad: {}\r\n\r\n",
                "p".repeat(pad - base.len())
            )
        };
        assert_eq!(send(f.direct, head(8000).as_bytes()).0, Some(200));
        assert_eq!(send(f.direct, head(8300).as_bytes()).0, Some(431));
    });
}

#[test]
fn malformed_request_lines_bare_lf_and_nul_bytes() {
    Front::case("malformed request lines, bare LF, NUL bytes", |f| {
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
    });
}

#[test]
fn http_1_0_keep_alive_and_pipelining() {
    Front::case("HTTP/1.0, keep-alive and pipelining", |f| {
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
}

#[test]
fn expect_100_continue_with_a_bad_type() {
    Front::case("Expect: 100-continue with a bad type", |f| {
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
}

#[test]
fn five_hundred_idle_connections() {
    Front::case("500 idle connections", |f| {
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
}

#[test]
fn slowloris_for_5_seconds() {
    Front::case("slowloris: slow headers and slow bodies for 5 s", |f| {
        let slow_head =
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n"
                .to_vec();
        let slow_body = format!(
            "{}action=start&x=aaaaaaaaaaaaaaaaa",
            post_head(f, FORM, "35", "")
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
    });
}

#[test]
fn odd_ids_and_tokens() {
    Front::case("odd ids and tokens", |f| {
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
}

/// TLS at the front, and a real start through nginx: one action, once, three VMs started.
#[test]
fn tls_front_and_one_start_through_it() {
    let f = Front::start();
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

    // The instance has no action until a real start, then exactly one.
    let through = format!("http://{}", f.proxied);
    let history = get(
        &format!("{through}/api/lambda-instances/{}/actions/", f.instance),
        Some(TOKEN),
    )
    .json();
    assert_eq!(
        history["pagination"]["count"], 0,
        "an action before the start: {history}"
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

/// `Connection: Upgrade` on the action call: refused at once, the body never read (tiny_http
/// would hand the raw socket over as the body, and a read would wait for the client).
#[test]
fn an_upgrade_is_refused_without_reading() {
    Front::case("Connection: Upgrade", |f| {
        let head = post_head(
            f,
            FORM,
            "2000",
            "Connection: Upgrade\r\nUpgrade: websocket\r\n",
        );
        let started = std::time::Instant::now();
        let (status, text) = exchange(
            f.direct,
            head.as_bytes(),
            usize::MAX,
            Duration::ZERO,
            Duration::from_secs(3),
        );
        assert_eq!(status, Some(400), "{text}");
        assert!(started.elapsed() < Duration::from_secs(2), "{text}");
        // Eight at once hold no handler: /healthz still answers at once.
        let held: Vec<TcpStream> = (0..8)
            .map(|_| {
                let mut s = TcpStream::connect(f.direct).unwrap();
                s.write_all(head.as_bytes()).unwrap();
                s
            })
            .collect();
        assert!(f.healthz_ms() < 200);
        drop(held);
    });
}

/// Paging values past what SQLite counts are a 400, not a wrapped negative number.
#[test]
fn paging_values_that_overflow_are_400() {
    Front::case("paging overflow", |f| {
        for q in ["limit=9223372036854775808", "offset=18446744073709551615"] {
            let req = format!(
                "GET /api/lambda-instances/?{q} HTTP/1.1\r\nHost: x\r\nX-Auth-Token: {TOKEN}\r\nConnection: close\r\n\r\n"
            );
            assert_eq!(send(f.direct, req.as_bytes()).0, Some(400), "{q}");
        }
    });
}

/// Two different tokens: refused, whichever comes first.
#[test]
fn two_tokens_are_refused_in_any_order() {
    Front::case("two tokens", |f| {
        for headers in [
            format!("X-Auth-Token: {OTHER_TOKEN}\r\nAuthorization: Token {TOKEN}"),
            format!("Authorization: Token {TOKEN}\r\nX-Auth-Token: {OTHER_TOKEN}"),
        ] {
            let req = format!(
                "GET /api/authenticate/ HTTP/1.1\r\nHost: x\r\n{headers}\r\nConnection: close\r\n\r\n"
            );
            let (status, text) = send(f.direct, req.as_bytes());
            assert_eq!(status, Some(400), "{text}");
        }
    });
}

/// Framings that two parsers could read two ways (RFC 9112 §6.1, §6.3) are refused: a
/// Transfer-Encoding other than chunked, one beside a Content-Length, and two different
/// Content-Length values. And an `action` given twice, in any encoding.
#[test]
fn ambiguous_framings_and_fields_are_400() {
    Front::case("ambiguous framings", |f| {
        let path = format!("/api/lambda-instances/{}/", f.instance);
        let start = |framing: &str, body: &str| {
            format!(
                "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Token {TOKEN}\r\n\
                 Content-Type: {FORM}\r\n{framing}\r\n{body}"
            )
        };
        for (framing, body) in [
            ("Transfer-Encoding: gzip\r\n", "0\r\n\r\n"),
            ("Transfer-Encoding: chunked, identity\r\n", "0\r\n\r\n"),
            (
                "Transfer-Encoding: chunked\r\nContent-Length: 12\r\n",
                "c\r\naction=start\r\n0\r\n\r\n",
            ),
            (
                "Content-Length: 12\r\nContent-Length: 13\r\n",
                "action=start",
            ),
        ] {
            let (status, text) = send(f.direct, start(framing, body).as_bytes());
            assert_eq!(status, Some(400), "{framing:?}: {text}");
        }
        let twice = start("Content-Length: 24\r\n", "action=start&action=stop");
        assert_eq!(send(f.direct, twice.as_bytes()).0, Some(400));
    });
}

/// tiny_http 0.12 reads on after an answer that says `Connection: close`: what a client sends
/// after it on the same connection (here a request smuggled after an ambiguous body) is
/// refused, never served.
#[test]
fn nothing_is_served_after_a_closing_answer() {
    Front::case("a request after a closing answer", |f| {
        let smuggled = format!(
            "POST /api/lambda-instances/{}/ HTTP/1.1\r\nHost: x\r\nAuthorization: Token {TOKEN}\r\n\
             Content-Type: {FORM}\r\nContent-Length: 12\r\nContent-Length: 13\r\n\r\n\
             action=startGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
            f.instance
        );
        let mut s = TcpStream::connect(f.direct).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s.write_all(smuggled.as_bytes()).unwrap();
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 {
                break;
            }
            all.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8_lossy(&all);
        assert!(text.starts_with("HTTP/1.1 400"), "{text}");
        assert!(
            !text.contains("HTTP/1.1 200"),
            "the smuggled request was served: {text}"
        );
        assert!(text.contains("closed by the server"), "{text}");
    });
}

/// An HTTP/1.0 request that expects `100 Continue` is refused with 417: tiny_http 0.12 would
/// send an HTTP/1.0 client a 1xx answer when the body is read.
#[test]
fn http_1_0_expecting_continue_gets_417() {
    Front::case("HTTP/1.0 with Expect: 100-continue", |f| {
        let request = format!(
            "POST /api/lambda-instances/{}/ HTTP/1.0\r\nAuthorization: Token {TOKEN}\r\n\
             Content-Type: {FORM}\r\nContent-Length: 11\r\nExpect: 100-continue\r\n\r\naction=nope",
            f.instance
        );
        let (status, text) = send(f.direct, request.as_bytes());
        assert_eq!(status, Some(417), "{text}");
        assert!(!text.contains(" 100 Continue\r\n"), "{text}");
        // nginx answers the expectation itself and passes on a plain request.
        let (status, text) = send(f.proxied, request.as_bytes());
        assert_eq!(status, Some(400), "{text}");
        assert!(!text.contains(" 100 Continue\r\n"), "{text}");
    });
}

/// A header the API does not read, with a byte outside ASCII (`User-Agent: café`): nginx
/// passes on only the headers the API reads, so the request is served, not a 502.
#[test]
fn a_stray_header_outside_ascii_is_never_a_502() {
    Front::case("a User-Agent outside ASCII", |f| {
        let head = "GET /healthz HTTP/1.1\r\nHost: x\r\nUser-Agent: caf\u{e9}\r\nConnection: close\r\n\r\n";
        assert_eq!(send(f.proxied, head.as_bytes()).0, Some(200));
        // And the headers it does read still arrive: a token, the request id.
        let authed = format!(
            "GET /api/authenticate/ HTTP/1.1\r\nHost: x\r\nX-Auth-Token: {TOKEN}\r\n\
             X-Request-Id: seen-through-nginx\r\nUser-Agent: caf\u{e9}\r\nConnection: close\r\n\r\n"
        );
        let (status, text) = send(f.proxied, authed.as_bytes());
        assert_eq!(status, Some(200), "{text}");
        assert!(text.contains("seen-through-nginx"), "{text}");
    });
}
