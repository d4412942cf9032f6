//! Thousands of mutated requests from a fixed seed, sent as raw bytes to the real server:
//! every one gets a 202 or a 4xx from the contract (or, for a request that never completes
//! its head, a closed connection), never a 5xx, a crash or a hang.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

use lambda_api::model::Status;

use crate::support::*;

/// xorshift64*, seeded: the same inputs on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

const INTERESTING: &[&str] = &[
    "",
    "\0",
    "\r\n",
    "\n",
    "%",
    "%zz",
    "%00",
    "\u{ff}",
    "\"",
    "=",
    "&",
    ";",
    "--",
    "{",
    "}",
    "[",
    "start",
    "stop",
    "START",
    "action",
    "boundary=",
    "-1",
    "99999999999999999999",
    "\u{1}",
    "../",
    "application/json",
    "multipart/form-data",
    "text/plain",
    "Token",
    "chunked",
];

fn seeds(id: &str) -> Vec<Vec<u8>> {
    let head = |ct: &str, body: &str| {
        format!(
            "POST /api/lambda-instances/{id}/ HTTP/1.1\r\nHost: x\r\nAuthorization: Token {TOKEN}\r\n\
             Content-Type: {ct}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    };
    let multipart =
        "--b\r\nContent-Disposition: form-data; name=\"action\"\r\n\r\nstart\r\n--b--\r\n";
    vec![
        head("application/x-www-form-urlencoded", "action=start"),
        head("application/json", r#"{"action":"stop"}"#),
        head("multipart/form-data; boundary=b", multipart),
        format!("GET /api/lambda-instances/{id}/?filter=status HTTP/1.1\r\nHost: x\r\nX-Auth-Token: {TOKEN}\r\nConnection: close\r\n\r\n").into_bytes(),
        format!("GET /api/lambda-instances/?limit=2&offset=1 HTTP/1.1\r\nHost: x\r\nAuthentication: Token {TOKEN}\r\nIdempotency-Key: k\r\nConnection: close\r\n\r\n").into_bytes(),
    ]
}

fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut b = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(b.len() + 1);
        match rng.below(6) {
            0 if !b.is_empty() => {
                let i = at.min(b.len() - 1);
                b[i] = rng.next() as u8;
            }
            1 => {
                let word = rng.pick(INTERESTING).as_bytes().to_vec();
                b.splice(at..at, word);
            }
            2 if at < b.len() => {
                let end = (at + 1 + rng.below(16)).min(b.len());
                b.drain(at..end);
            }
            3 => {
                let end = (at + rng.below(64)).min(b.len());
                let copy = b[at..end].to_vec();
                b.splice(at..at, copy);
            }
            4 => b.truncate(at),
            _ => {
                // Swap in another header value: the part after a ": ".
                if let Some(pos) = b.windows(2).skip(at.min(b.len())).position(|w| w == b": ") {
                    let start = at + pos + 2;
                    let word = rng.pick(INTERESTING).as_bytes().to_vec();
                    let end = b[start..]
                        .iter()
                        .position(|c| *c == b'\r')
                        .map_or(b.len(), |e| start + e);
                    b.splice(start..end, word);
                }
            }
        }
    }
    b
}

/// The status of the answer, or None when the server closed without one (a head that never
/// completed). Panics on a hang.
fn exchange(addr: &str, bytes: &[u8]) -> Option<u16> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(bytes);
    let _ = s.shutdown(Shutdown::Write);
    let mut out = Vec::new();
    match s.read_to_end(&mut out) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!(
            "no answer and no close within 10 s ({e}) for {:?}",
            String::from_utf8_lossy(bytes)
        ),
    }
    let text = String::from_utf8_lossy(&out);
    text.lines()
        .find(|l| l.starts_with("HTTP/") && !l.contains(" 100 "))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
}

#[test]
fn mutated_requests_never_get_a_5xx() {
    // As many handler threads for identity calls as there are clients: a client's mutated
    // token is never turned away for lack of one (that would be a 503 for load, not input).
    let h = Harness::with(Duration::from_millis(1), |c| c.http_threads = 8);
    let id = h.add_instance(Status::Stopped);
    let addr = h.base.trim_start_matches("http://").to_string();
    let seeds = seeds(&id);
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let (addr, seeds) = (addr.clone(), seeds.clone());
            std::thread::spawn(move || {
                let mut rng = Rng(0x5eed_0000 + t);
                let mut seen = std::collections::BTreeMap::new();
                for _ in 0..750 {
                    let seed = &seeds[rng.below(seeds.len())];
                    let input = mutate(&mut rng, seed);
                    let status = exchange(&addr, &input);
                    // 505 answers a mangled HTTP version; every other 5xx is a fault.
                    if let Some(code) = status {
                        assert!(
                            code < 500 || code == 505,
                            "{code} for {:?}",
                            String::from_utf8_lossy(&input)
                        );
                    }
                    *seen.entry(status).or_insert(0u32) += 1;
                }
                seen
            })
        })
        .collect();
    let mut seen = std::collections::BTreeMap::new();
    for t in threads {
        for (k, v) in t.join().unwrap() {
            *seen.entry(k).or_insert(0) += v;
        }
    }
    // The mutations reach past the HTTP parser into the handlers.
    for code in [200, 202, 400, 401, 404] {
        assert!(seen.contains_key(&Some(code)), "no {code} among {seen:?}");
    }
    assert_eq!(h.get("/healthz", None).status, 200);
}
