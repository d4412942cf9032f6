use std::time::Duration;

use crate::support::*;

/// Reads one response off a keep-alive connection: status, header lines, body.
fn read_response(r: &mut impl std::io::BufRead) -> (u16, Vec<String>, Vec<u8>) {
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let status = line.split(' ').nth(1).unwrap().parse().unwrap();
    let mut headers = Vec::new();
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        let h = line.trim_end();
        if h.is_empty() {
            break;
        }
        headers.push(h.to_string());
    }
    let length: usize = headers
        .iter()
        .find_map(|h| {
            h.to_ascii_lowercase()
                .strip_prefix("content-length:")?
                .trim()
                .parse()
                .ok()
        })
        .expect("a Content-Length");
    let mut body = vec![0; length];
    r.read_exact(&mut body).unwrap();
    (status, headers, body)
}

/// One response in a thousand asks its client to close the connection, so that no busy
/// keep-alive client holds one of tiny_http's pool threads for ever. That response is written
/// by hand: it must be framed like any other. tiny_http cannot close the connection itself,
/// so a client that sends on regardless gets a 400 that says the connection was closed.
#[test]
fn keep_alive_connections_are_asked_to_close_now_and_then() {
    use std::io::Write;
    let h = Harness::start(Duration::from_secs(60));
    let mut s = std::net::TcpStream::connect(h.base.trim_start_matches("http://")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut r = std::io::BufReader::new(s.try_clone().unwrap());
    let request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut closing = None;
    for n in 1..=1000 {
        s.write_all(request).unwrap();
        let (status, headers, body) = read_response(&mut r);
        assert_eq!(status, 200, "response {n}");
        assert_eq!(
            body, br#"{"status":"ok","database":"ok","writes":"ok"}"#,
            "response {n}"
        );
        if headers
            .iter()
            .any(|h| h.eq_ignore_ascii_case("connection: close"))
        {
            closing = Some(headers);
            break;
        }
    }
    let headers = closing.expect("no response in 1000 asked to close");
    for name in ["content-type:", "x-request-id:", "date:", "content-length:"] {
        assert!(
            headers
                .iter()
                .any(|h| h.to_ascii_lowercase().starts_with(name)),
            "{name} missing from {headers:?}"
        );
    }
    assert!(headers
        .iter()
        .all(|h| !h.to_ascii_lowercase().starts_with("transfer-encoding")));
    s.write_all(request).unwrap();
    let (status, headers, body) = read_response(&mut r);
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
    assert!(
        String::from_utf8_lossy(&body).contains("closed by the server"),
        "{}",
        String::from_utf8_lossy(&body)
    );
    assert!(headers
        .iter()
        .any(|h| h.eq_ignore_ascii_case("connection: close")));
}

/// Requests pipelined behind the answer that closes the connection are answered 400, each
/// with its request id, as every answer is (SPEC §1).
#[test]
fn answers_pipelined_behind_a_close_carry_a_request_id() {
    use std::io::Write;
    let h = Harness::start(Duration::from_secs(60));
    let mut s = std::net::TcpStream::connect(h.base.trim_start_matches("http://")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut r = std::io::BufReader::new(s.try_clone().unwrap());
    let request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    // The 1000th answer of a new service closes its connection.
    for _ in 0..998 {
        s.write_all(request).unwrap();
        assert_eq!(read_response(&mut r).0, 200);
    }
    s.write_all(&request.repeat(3)).unwrap();
    let answers: Vec<(u16, Vec<String>, Vec<u8>)> = (0..3).map(|_| read_response(&mut r)).collect();
    let statuses: Vec<u16> = answers.iter().map(|a| a.0).collect();
    assert_eq!(statuses, [200, 200, 400]);
    for (status, headers, _) in &answers {
        assert!(
            headers
                .iter()
                .any(|h| h.to_ascii_lowercase().starts_with("x-request-id:")),
            "a {status} without X-Request-Id: {headers:?}"
        );
    }
}

/// A Content-Length that is not a number leaves nowhere to know the body's end: the answer
/// is 400 and closes the connection, and what follows on it (here a request smuggled as
/// the "body") is never served.
#[test]
fn a_content_length_that_is_not_a_number_closes_the_connection() {
    use std::io::{Read, Write};
    let h = Harness::start(Duration::from_secs(60));
    let mut s = std::net::TcpStream::connect(h.base.trim_start_matches("http://")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(
        b"POST /api/lambda-instances/x/ HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n\
          GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .unwrap();
    let mut all = Vec::new();
    let _ = s.read_to_end(&mut all);
    let text = String::from_utf8_lossy(&all);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(
        text.to_ascii_lowercase().contains("connection: close"),
        "{text}"
    );
    assert!(
        !text.contains("200 OK"),
        "the smuggled request was served: {text}"
    );
}
