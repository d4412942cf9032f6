//! The identity section: a client sending random tokens (each from an address of its own, as
//! many clients behind the front) at 50 a second while identity answers in 200 ms, and what a
//! cached user's status poll and `/healthz` take meanwhile.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use lambda_api::model::Status;
use lambda_api::store::{Database, Synchronous};

use crate::procs::{agent, log_in, token, user_id, write_fixture, Bin};
use crate::{err, instance, Res};

const ATTACK: Duration = Duration::from_secs(5);
const IDENTITY_MS: u64 = 200;

fn p99(mut all: Vec<Duration>) -> Duration {
    all.sort();
    all[(all.len() * 99 / 100).min(all.len().saturating_sub(1))]
}

pub(crate) fn identity_section(
    bin: &Bin,
    dir: &Path,
    table: &mut String,
    notes: &mut Vec<String>,
) -> Res<()> {
    eprintln!("identity: random tokens at 50/s, identity at {IDENTITY_MS} ms ...");
    let fixture = dir.join("identity.json");
    write_fixture(&fixture, &|u| vec![format!("i{u}")])?;
    let db = dir.join("identity.db");
    let _ = std::fs::remove_file(&db);
    let mut store = Database::new(&db, Synchronous::Full)
        .open()
        .map_err(err("database"))?;
    let id = store
        .add_instance(&instance(
            "poll".into(),
            user_id(0),
            vec!["i0".into()],
            Status::Stopped,
        ))
        .map_err(err("load"))?;
    drop(store);
    let (_sim, sim_addr) = bin.sim(&fixture, 1000)?;
    let (_svc, addr, _) = bin.service(&db, &sim_addr, 1, 600_000)?;
    let base = format!("http://{addr}");
    let probe = agent();
    log_in(&probe, &base, 1)?;
    probe
        .put(&format!("http://{sim_addr}/_sim/faults"))
        .send(format!("{{\"latency_ms\": {IDENTITY_MS}}}"))
        .map_err(err("faults"))?;
    let attacker = {
        let base = base.clone();
        std::thread::spawn(move || {
            let started = Instant::now();
            let mut sent = Vec::new();
            let mut n = 0u32;
            while started.elapsed() < ATTACK {
                n += 1;
                let url = format!("{base}/api/authenticate/");
                sent.push(std::thread::spawn(move || {
                    let ip = format!("10.{}.{}.{}", n / 65536 % 256, n / 256 % 256, n % 256);
                    agent()
                        .get(&url)
                        .header(
                            "X-Auth-Token",
                            format!("random-{n}-{}", n.wrapping_mul(2654435761)),
                        )
                        .header("X-Real-IP", ip)
                        .call()
                        .map(|r| r.status().as_u16())
                        .unwrap_or(0)
                }));
                std::thread::sleep(Duration::from_millis(20));
            }
            sent.into_iter()
                .map(|t| t.join().unwrap_or(0))
                .collect::<Vec<u16>>()
        })
    };
    let (mut polls, mut health) = (Vec::new(), Vec::new());
    let started = Instant::now();
    while started.elapsed() < ATTACK {
        let t = Instant::now();
        probe
            .get(&format!("{base}/api/lambda-instances/{id}/"))
            .header("X-Auth-Token", &token(0))
            .call()
            .map_err(err("poll"))?;
        polls.push(t.elapsed());
        let t = Instant::now();
        probe
            .get(&format!("{base}/healthz"))
            .call()
            .map_err(err("healthz"))?;
        health.push(t.elapsed());
        std::thread::sleep(Duration::from_millis(10));
    }
    let answers = attacker
        .join()
        .map_err(|_| "the attacker panicked".to_string())?;
    let shed = answers.iter().filter(|s| **s == 503).count();
    let (poll_p99, health_p99) = (p99(polls), p99(health));
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let _ = writeln!(
        table,
        "| identity at {IDENTITY_MS} ms, random tokens at 50/s: a cached user's status poll / /healthz | | p99 {:.1} / {:.1} ms | 50 / 10 ms target | | | | {} of {} random tokens answered 503 at once |",
        ms(poll_p99),
        ms(health_p99),
        shed,
        answers.len()
    );
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    notes.push(format!(
        "- random tokens at 50/s against a {IDENTITY_MS} ms identity: a cached user's poll p99 {:.1} ms (target < 50 ms: {}), /healthz p99 {:.1} ms (target < 10 ms: {})",
        ms(poll_p99),
        verdict(poll_p99 < Duration::from_millis(50)),
        ms(health_p99),
        verdict(health_p99 < Duration::from_millis(10))
    ));
    Ok(())
}
