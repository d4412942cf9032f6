//! The ceilings every figure is compared with: a bare tiny_http responder (run as
//! `lambda-bench ceiling` in its own process) and single-connection SQLite commits.

use std::path::Path;
use std::time::{Duration, Instant};

use lambda_api::store::Synchronous;

use crate::{err, Res};

/// The static ceiling: tiny_http answering a fixed 202 body, nothing else. It ends
/// keep-alive connections as the service does (one response in 1 000 carries
/// `Connection: close`), so that both meet tiny_http's pool the same way.
pub(crate) fn ceiling(listen: &str, threads: usize) {
    use std::io::Write;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    let server = Arc::new(tiny_http::Server::http(listen).expect("bind"));
    let responses = Arc::new(AtomicU64::new(0));
    println!("listening on http://{}", server.server_addr());
    let body = br#"{"status":{"code":202,"short-description":"Your request has been accepted"}}"#;
    // tiny_http drops a `Connection` header from a `Response`: the closing one is raw bytes.
    let closing = format!(
        "HTTP/1.1 202 Accepted\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{}",
        body.len(),
        String::from_utf8_lossy(body)
    );
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (server, responses, closing) = (server.clone(), responses.clone(), closing.clone());
            std::thread::spawn(move || loop {
                let Ok(r) = server.recv() else { continue };
                if responses.fetch_add(1, Ordering::Relaxed) % 1000 == 999 {
                    let mut w = r.into_writer();
                    let _ = w.write_all(closing.as_bytes()).and_then(|()| w.flush());
                    continue;
                }
                let h = tiny_http::Header::from_bytes("Content-Type", "application/json").unwrap();
                let _ = r.respond(
                    tiny_http::Response::from_data(&body[..])
                        .with_status_code(202)
                        .with_header(h),
                );
            })
        })
        .collect();
    for h in handles {
        let _ = h.join();
    }
}

/// Single-connection commits per second on `dir`'s disk: one row per `BEGIN IMMEDIATE`.
pub(crate) fn commit_ceiling(dir: &Path, synchronous: Synchronous) -> Res<f64> {
    let path = dir.join("commit-probe.db");
    let conn = rusqlite::Connection::open(&path).map_err(err("probe"))?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(err("probe"))?;
    conn.pragma_update(None, "synchronous", synchronous.name())
        .map_err(err("probe"))?;
    conn.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL)")
        .map_err(err("probe"))?;
    let started = Instant::now();
    let mut n = 0u64;
    while started.elapsed() < Duration::from_secs(2) {
        conn.execute_batch("BEGIN IMMEDIATE; INSERT INTO t (v) VALUES ('x'); COMMIT;")
            .map_err(err("probe"))?;
        n += 1;
    }
    Ok(n as f64 / started.elapsed().as_secs_f64())
}
