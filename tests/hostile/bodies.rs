//! Bodies: absurd lengths, big and chunked bodies, bodies never sent, abandoned
//! connections, and the memory of huge heads.

use super::*;

/// Absurd Content-Length values. The service answers 413 when it can drain safely and
/// abandons the connection when it cannot; nginx always answers 413 (400 for a length it
/// cannot parse).
fn absurd_length(length: &str) {
    Front::case(&format!("Content-Length {length}"), |f| {
        let bytes = format!("{}abc", post_head(f, FORM, length, ""));
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
        let proxied = send(f.proxied, bytes.as_bytes()).0;
        assert!(
            matches!(proxied, Some(400 | 413)),
            "through nginx: {proxied:?}"
        );
    });
}

#[test]
fn content_length_of_2_to_the_64_minus_1() {
    absurd_length("18446744073709551615");
}

#[test]
fn content_length_of_10_to_the_12() {
    absurd_length("1000000000000");
}

#[test]
fn content_length_of_4_gigabytes_with_3_bytes_sent() {
    absurd_length("4000000000");
}

#[test]
fn a_10_mb_body() {
    Front::case("a 10 MB body", |f| {
        let mut bytes = post_head(f, FORM, "10000000", "").into_bytes();
        bytes.extend(std::iter::repeat_n(b'a', 10_000_000));
        assert_eq!(send(f.direct, &bytes).0, Some(413));
        assert_eq!(send(f.proxied, &bytes).0, Some(413));
    });
}

#[test]
fn a_chunked_body_over_the_cap() {
    Front::case("a chunked body over the cap", |f| {
        let mut bytes = format!(
        "POST /api/lambda-instances/{}/ HTTP/1.1\r\nHost: x\r\nAuthorization: Token {TOKEN}\r\n\
         Content-Type: {FORM}\r\nTransfer-Encoding: chunked\r\n\r\n",
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
}

/// 72 connections each send a head that is refused before its body is read (here a 415),
/// declaring a 2 000-byte body they never send: each is answered and holds a drainer,
/// never a handler, and /healthz stays fast.
#[test]
fn refused_bodies_never_sent_hold_no_handler() {
    Front::case("72 refused bodies never sent", |f| {
        let head = post_head(f, "text/plain", "2000", "");
        let held: Vec<(TcpStream, Option<u16>)> = (0..72)
            .map(|_| {
                let mut s = TcpStream::connect(f.direct).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                s.write_all(head.as_bytes()).unwrap();
                let mut buf = [0u8; 512];
                let n = s.read(&mut buf).unwrap_or(0);
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                let status = text.split_whitespace().nth(1).and_then(|c| c.parse().ok());
                (s, status)
            })
            .collect();
        // Each was answered without its body being read first.
        for (_, status) in &held {
            assert_eq!(*status, Some(415), "a request got no answer in time");
        }
        let ms = f.healthz_ms();
        assert!(ms < 200, "/healthz took {ms} ms with 72 bodies pending");
        drop(held);
    });
}

/// 72 connections each send a head that is accepted (a start with a 2 000-byte form body)
/// and then nothing. The handlers never wait for them: the first 64 wait on body threads of
/// their own, the other 8 are answered 503 at once, and /healthz stays fast. Once the clients
/// go, so do the body threads. (The connections are opened one after another: tiny_http's
/// pool can leave a burst of new connections queued behind held ones, never read.)
#[test]
fn accepted_bodies_never_sent_hold_no_handler() {
    Front::case("72 accepted bodies never sent", |f| {
        let head = post_head(f, FORM, "2000", "");
        let mut held = Vec::new();
        let mut turned_away = 0;
        for n in 1..=72 {
            let mut s = TcpStream::connect(f.direct).unwrap();
            s.write_all(head.as_bytes()).unwrap();
            if n <= 64 {
                wait_for(&format!("request {n} to wait on a body thread"), || {
                    (f.threads_named("body") == n).then_some(())
                });
            } else {
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut buf = [0u8; 512];
                let got = s.read(&mut buf).unwrap_or(0);
                let text = String::from_utf8_lossy(&buf[..got]).into_owned();
                assert!(text.starts_with("HTTP/1.1 503"), "request {n}: {text}");
                turned_away += 1;
            }
            held.push(s);
        }
        assert_eq!(turned_away, 8);
        let ms = f.healthz_ms();
        assert!(ms < 200, "/healthz took {ms} ms with 64 bodies pending");
        drop(held);
        wait_for("the body threads to end", || {
            (f.threads_named("body") == 0).then_some(())
        });
    });
}

/// 12 heads with a 16 MB URL: each is refused, and the memory they took is given back.
#[test]
fn huge_heads_give_their_memory_back() {
    Front::case("12 heads with a 16 MB URL", |f| {
        let url = format!("/healthz?x={}", "a".repeat(16 << 20));
        let head = format!("GET {url} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        for _ in 0..12 {
            assert_eq!(send(f.direct, head.as_bytes()).0, Some(431));
        }
        assert!(is_4xx(send(f.proxied, head.as_bytes()).0));
    });
}

/// Requests declaring a body far too large to drain, each closed by its client at once, are
/// abandoned (tiny_http 0.12 would abort the process to drain them): they do not count as
/// open connections, so past `max_connections` of them the service still answers; and the
/// 256th makes it stop so that its supervisor starts it again, which lets them go.
#[test]
fn abandoned_connections_are_not_counted_and_end_in_a_restart() {
    let mut f = Front::start_with(&[("LAMBDA_API_MAX_CONNECTIONS", "100")]);
    let bytes = format!("{}abc", post_head(&f, FORM, "1000000000000", ""));
    let abandon = |n: usize| {
        for _ in 0..n {
            let mut s = TcpStream::connect(f.direct).unwrap();
            s.write_all(bytes.as_bytes()).unwrap();
        }
    };
    // tiny_http's pool may leave a new connection queued behind busy ones (here, threads
    // held for good), so the counts are waited for with a margin.
    let abandoned = || -> u64 {
        let metrics = get(&format!("http://{}/metrics", f.direct), None).body;
        metrics
            .lines()
            .find_map(|l| l.strip_prefix("lambda_http_abandoned_connections_total "))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    abandon(150);
    wait_for("120 abandoned connections", || {
        (abandoned() >= 120).then_some(())
    });
    let ms = f.healthz_ms();
    assert!(
        ms < 200,
        "/healthz took {ms} ms with 120 abandoned connections"
    );
    for _ in 0..10 {
        if f.service.child.try_wait().unwrap().is_some() {
            break;
        }
        abandon(30);
        std::thread::sleep(Duration::from_millis(200));
    }
    let status = wait_for("the service to stop for a restart", || {
        f.service.child.try_wait().unwrap()
    });
    assert_eq!(status.code(), Some(1), "{}", f.service.log());
    assert!(
        f.service
            .log()
            .contains("connections were abandoned with bodies that cannot be drained"),
        "{}",
        f.service.log()
    );
}
