//! `lambda-bench`: what `make bench` runs. Not part of the service.
//!
//! It loads a database, starts `okeanos-sim` and `lambda-api serve` (release builds, beside
//! this binary), drives them with wrk, and prints every figure with its ratio to a ceiling
//! measured in the same run: a bare tiny_http responder with the service's thread count, and
//! the single-connection SQLite commit rate of the same disk with the same `synchronous`. The
//! table also goes to target/bench/latest.md.
//!
//! `lambda-bench ceiling --listen ADDR --threads N` is that bare responder; `lambda-bench
//! engine` runs the engine section alone (`make bench-engine`).

#![forbid(unsafe_code)]

mod ceiling;
mod create;
mod engine;
mod identity;
mod load;
mod procs;
mod report;
mod size;
mod watch;

use ceiling::{ceiling, commit_ceiling};
use load::{write_lines, wrk, wrk_best};
use procs::{agent, free_addr, log_in, token, user_id, write_fixture, Bin, Proc};
use report::report;

use std::fmt::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lambda_api::model::Status;
use lambda_api::store::{Database, NewInstance, Synchronous};

pub(crate) const USERS: usize = 100;
pub(crate) const INSTANCES: usize = 10_000;
pub(crate) const MERGED: usize = 1_000;
pub(crate) const STARTED: usize = 1_000;
pub(crate) const HTTP_THREADS: usize = 8;
pub(crate) const CONNECTIONS: [usize; 3] = [1, 32, 128];
/// Seconds of each wrk run.
pub(crate) const RUN_SECS: u64 = 3;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("ceiling") {
        let listen = arg(&args, "--listen").unwrap_or_else(|| "127.0.0.1:0".into());
        let threads: usize = arg(&args, "--threads")
            .and_then(|t| t.parse().ok())
            .unwrap_or(HTTP_THREADS);
        ceiling(&listen, threads);
        return;
    }
    if args.first().map(String::as_str) == Some("size") {
        let mut table = String::new();
        let work = std::env::temp_dir().join(format!("lambda-bench-size-{}", std::process::id()));
        let measured = std::fs::create_dir_all(&work)
            .map_err(|e| format!("{}: {e}", work.display()))
            .and_then(|()| size::database_size(&work, &mut table));
        let _ = std::fs::remove_dir_all(&work);
        match measured {
            Ok(()) => print!("{table}"),
            Err(e) => {
                eprintln!("lambda-bench: {e}");
                std::process::exit(1);
            }
        }
        return;
    }
    let only = args.first().cloned().unwrap_or_default();
    if let Err(e) = bench(&only) {
        eprintln!("lambda-bench: {e}");
        std::process::exit(1);
    }
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

pub(crate) type Res<T> = Result<T, String>;

pub(crate) fn err<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> String + '_ {
    move |e| format!("{what}: {e}")
}

fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Every section, or (`lambda-bench engine`, `lambda-bench identity`) one alone.
fn bench(only: &str) -> Res<()> {
    let exe = std::env::current_exe().map_err(err("current exe"))?;
    let bin = Bin {
        dir: exe.parent().ok_or("no binary folder")?.to_path_buf(),
    };
    // target/release/lambda-bench → target/bench
    let root = bin.dir.parent().ok_or("no target folder")?.join("bench");
    let work = root.join("run");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(err("work folder"))?;
    let synchronous = Synchronous::Full;
    let mut table = String::new();
    let mut notes = Vec::new();
    let _ = writeln!(
        table,
        "| measure | conns | figure | ceiling | ratio | p50 | p99 | unexpected |"
    );
    let _ = writeln!(table, "|---|---|---|---|---|---|---|---|");
    if only == "engine" {
        engine::engine(&bin, &work, synchronous, &mut table, &mut notes)?;
        create::create_section(&bin, &work, synchronous, &mut table, &mut notes)?;
        return report(&root, "the engine section alone", &table, &notes);
    }
    if only == "identity" {
        identity::identity_section(&bin, &work, &mut table, &mut notes)?;
        return report(&root, "the identity section alone", &table, &notes);
    }

    // Ceilings first: the disk, then the bare responder.
    eprintln!("measuring the ceilings ...");
    let commits = commit_ceiling(&work, synchronous)?;
    let (ceiling_proc, ceiling_addr) = {
        let addr = free_addr();
        let child = Command::new(&exe)
            .args([
                "ceiling",
                "--listen",
                &addr,
                "--threads",
                &HTTP_THREADS.to_string(),
            ])
            .stdout(Stdio::null())
            .spawn()
            .map_err(err("ceiling"))?;
        let p = Proc(child);
        let started = Instant::now();
        while std::net::TcpStream::connect(&addr).is_err() {
            if started.elapsed() > Duration::from_secs(10) {
                return Err("the ceiling responder never listened".into());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        (p, addr)
    };
    let ceiling_url = format!("http://{ceiling_addr}");
    let dummy = work.join("ceiling.txt");
    write_lines(&dummy, std::iter::once("t /".to_string()))?;
    for c in CONNECTIONS {
        let r = wrk_best(&work, &ceiling_url, "GET", 202, &dummy, c)?;
        let _ = writeln!(
            table,
            "| ceiling: bare tiny_http 202 ({HTTP_THREADS} threads) | {c} | {:.0} req/s | | | {:.2} ms | {:.2} ms | {} |",
            r.rps, r.p50_ms, r.p99_ms, r.bad + r.errors
        );
    }
    // The responder stays up: each HTTP scenario is paired with a ceiling measured just
    // before it, at the same connection count (this machine's speed drifts within a run).
    let _ = writeln!(
        table,
        "| ceiling: SQLite commits, 1 connection, synchronous={} | 1 | {commits:.0} commits/s | | | | | |",
        synchronous.name()
    );

    // The database: 10 000 instances across 100 users (each user's share its 3 VMs), and a
    // pool of STOPPED instances for the write path, sized from the commit ceiling (group
    // commit lets the write path beat that ceiling, so with room to spare).
    eprintln!("loading the database ...");
    let write_secs = 2;
    let pool_per_run = ((commits * 3.0) as usize * write_secs as usize).max(2000);
    let fixture = work.join("fixture.json");
    write_fixture(&fixture, &|u| {
        (0..3).map(|k| format!("u{u}-vm{k}")).collect()
    })?;
    let db = work.join("bench.db");
    let mut store = Database::new(&db, synchronous)
        .open()
        .map_err(err("database"))?;
    let servers = |u: usize| -> Vec<String> { (0..3).map(|k| format!("u{u}-vm{k}")).collect() };
    let mut rows = Vec::new();
    for i in 0..INSTANCES {
        let u = i % USERS;
        let status = if i < STARTED {
            Status::Started
        } else {
            Status::Stopped
        };
        rows.push(instance(
            format!("bench-{i}"),
            user_id(u),
            servers(u),
            status,
        ));
    }
    let ids = store.add_instances(&rows).map_err(err("load"))?;
    // A pool per connection count, and one more for the keyed run.
    let pool_rows: Vec<_> = (0..pool_per_run * (CONNECTIONS.len() + 1))
        .map(|i| {
            let u = i % USERS;
            instance(format!("pool-{i}"), user_id(u), servers(u), Status::Stopped)
        })
        .collect();
    let pool = store.add_instances(&pool_rows).map_err(err("load"))?;
    drop(store);
    let line = |i: usize, id: &str| format!("{} /api/lambda-instances/{id}/", token(i % USERS));
    let all = work.join("all.txt");
    write_lines(&all, ids.iter().enumerate().map(|(i, id)| line(i, id)))?;
    let started_list = work.join("started.txt");
    write_lines(
        &started_list,
        ids[..STARTED].iter().enumerate().map(|(i, id)| line(i, id)),
    )?;
    let merged_ids = &ids[STARTED..STARTED + MERGED];
    let merged_list = work.join("merged.txt");
    write_lines(
        &merged_list,
        merged_ids
            .iter()
            .enumerate()
            .map(|(i, id)| line(i + STARTED, id)),
    )?;
    let missing = work.join("missing.txt");
    write_lines(
        &missing,
        (0..1000).map(|i| line(i, &uuid::Uuid::new_v4().to_string())),
    )?;
    let bad_token = work.join("bad-token.txt");
    write_lines(
        &bad_token,
        ids[..1000]
            .iter()
            .map(|id| format!("bench-bad-token /api/lambda-instances/{id}/")),
    )?;

    // The service, against a simulator whose VMs take an hour: actions stay in flight. The
    // HTTP paths are measured here, the engine in its own section: one worker, and a first
    // poll after ten minutes, so that each action costs its first tick and no more while
    // the HTTP figures are taken (with four workers polling thousands of live actions every
    // few seconds, they share the two cores with wrk and the handlers).
    let (_sim, sim_addr) = bin.sim(&fixture, 3_600_000)?;
    let (service, addr, ready) = bin.service(&db, &sim_addr, 1, 600_000)?;
    let base = format!("http://{addr}");
    let agent = agent();
    log_in(&agent, &base, USERS)?;
    let _ = agent
        .get(&format!("{base}/api/lambda-instances/x/"))
        .header("X-Auth-Token", "bench-bad-token")
        .call();
    for (i, id) in merged_ids.iter().enumerate() {
        let r = agent
            .post(&format!("{base}/api/lambda-instances/{id}/"))
            .header("X-Auth-Token", &token((i + STARTED) % USERS))
            .content_type("application/x-www-form-urlencoded")
            .send("action=start")
            .map_err(err("setting up merged"))?;
        if r.status() != 202 {
            return Err(format!("setting up merged: {}", r.status()));
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    let idle_rss = service.status_field("VmRSS:");
    let idle_threads = service.status_field("Threads:");

    let scenarios: [(&str, &str, u16, &Path); 5] = [
        (
            "status poll GET /api/lambda-instances/{id}/ (10 000 ids)",
            "GET",
            200,
            &all,
        ),
        (
            "start on STARTING: merged, no write",
            "POST",
            202,
            &merged_list,
        ),
        (
            "start on STARTED: 409, no write",
            "POST",
            409,
            &started_list,
        ),
        ("401, cached bad token", "GET", 401, &bad_token),
        ("404, unknown instance", "GET", 404, &missing),
    ];
    let mut at32 = Vec::new();
    for (name, method, expected, data) in scenarios {
        eprintln!("{name} ...");
        for c in CONNECTIONS {
            let ceiling = wrk_best(&work, &ceiling_url, "GET", 202, &dummy, c)?.rps;
            if expected == 401 {
                // A rejection is cached for 30 s, and past it wrk's address, striking all
                // along, is answered 429: the token is rejected afresh from another address
                // (the front's X-Real-IP, trusted from loopback) just before each run.
                let _ = agent
                    .get(&format!("{base}/api/lambda-instances/x/"))
                    .header("X-Auth-Token", "bench-bad-token")
                    .header("X-Real-IP", "192.0.2.1")
                    .call();
            }
            let r = wrk_best(&work, &base, method, expected, data, c)?;
            let ratio = r.rps / ceiling;
            let _ =
                writeln!(
                table,
                "| {name} | {c} | {:.0} req/s | {:.0} req/s | {:.0} % | {:.2} ms | {:.2} ms | {} |",
                r.rps, ceiling, ratio * 100.0, r.p50_ms, r.p99_ms, r.bad + r.errors
            );
            if c == 32 && expected != 401 && expected != 404 {
                at32.push((name, ratio, r.p99_ms));
            }
        }
    }

    eprintln!("the write path ...");
    let mut write_ratios = Vec::new();
    for (k, c) in CONNECTIONS.into_iter().enumerate() {
        let data = work.join(format!("pool-{k}.txt"));
        let slice = &pool[k * pool_per_run..(k + 1) * pool_per_run];
        write_lines(
            &data,
            slice
                .iter()
                .enumerate()
                .map(|(i, id)| line(k * pool_per_run + i, id)),
        )?;
        let r = wrk(&work, &base, "POST", 202, &data, c, write_secs)?;
        let ratio = r.rps / commits;
        write_ratios.push(ratio);
        let exhausted = if r.wrapped > 0 {
            " (pool exhausted: some were merges)"
        } else {
            ""
        };
        let _ = writeln!(
            table,
            "| start on STOPPED: creates an action, synchronous={}{exhausted} | {c} | {:.0} req/s | {commits:.0} commits/s | {:.0} % | {:.2} ms | {:.2} ms | {} |",
            synchronous.name(), r.rps, ratio * 100.0, r.p50_ms, r.p99_ms, r.bad + r.errors
        );
        if c == 32 {
            // The same request with an Idempotency-Key, right after, on fresh instances: its
            // key is looked up and its outcome kept in the action's own transaction.
            let keyed = work.join("pool-keyed.txt");
            let k = CONNECTIONS.len();
            let slice = &pool[k * pool_per_run..(k + 1) * pool_per_run];
            write_lines(
                &keyed,
                slice
                    .iter()
                    .enumerate()
                    .map(|(i, id)| line(k * pool_per_run + i, id)),
            )?;
            let with_key = wrk(&work, &base, "KEYED", 202, &keyed, c, write_secs)?;
            let against = with_key.rps / r.rps;
            let _ = writeln!(
                table,
                "| the same with an Idempotency-Key | {c} | {:.0} req/s | {:.0} req/s without | {:.0} % | {:.2} ms | {:.2} ms | {} |",
                with_key.rps, r.rps, against * 100.0, with_key.p50_ms, with_key.p99_ms,
                with_key.bad + with_key.errors
            );
            notes.push(format!(
                "- at 32 connections, a start on STOPPED with an Idempotency-Key: {:.0} % of the same without one (target ≥ 90 %)",
                against * 100.0
            ));
        }
    }
    let peak_rss = service.status_field("VmHWM:");
    drop(service);
    drop(ceiling_proc);

    // Footprint.
    let stripped = work.join("lambda-api.stripped");
    std::fs::copy(bin.dir.join("lambda-api"), &stripped).map_err(err("copy"))?;
    let strip = Command::new("strip")
        .arg(&stripped)
        .status()
        .map_err(err("strip"))?;
    let size = std::fs::metadata(&stripped).map_err(err("size"))?.len();
    let mib = |kib: u64| kib as f64 / 1024.0;
    let _ = writeln!(
        table,
        "| RSS idle (10 000 instances, warm token cache) | | {:.1} MiB | 10 MiB target | | | | |",
        mib(idle_rss)
    );
    let _ = writeln!(
        table,
        "| RSS peak (VmHWM, after the 128-connection runs) | | {:.1} MiB | 40 MiB target | | | | |",
        mib(peak_rss)
    );
    let _ = writeln!(table, "| threads at idle | | {idle_threads} | | | | | |");
    let _ = writeln!(
        table,
        "| start-up to a ready /healthz | | {:.0} ms | 100 ms target | | | | |",
        ready.as_secs_f64() * 1000.0
    );
    let _ = writeln!(
        table,
        "| stripped binary{} | | {:.1} MiB | 10 MiB target | | | | |",
        if strip.success() {
            ""
        } else {
            " (strip failed: unstripped)"
        },
        size as f64 / (1 << 20) as f64
    );

    size::database_size(&work, &mut table)?;
    identity::identity_section(&bin, &work, &mut table, &mut notes)?;
    engine::engine(&bin, &work, synchronous, &mut table, &mut notes)?;
    create::create_section(&bin, &work, synchronous, &mut table, &mut notes)?;

    for (name, ratio, p99) in &at32 {
        notes.push(format!(
            "- at 32 connections, {name}: {:.0} % of the static ceiling (target ≥ 50 %), p99 {p99:.2} ms (target < 5 ms)",
            ratio * 100.0
        ));
    }
    notes.push(format!(
        "- write path: {} of the commit ceiling (target ≥ 80 %)",
        write_ratios
            .iter()
            .map(|r| format!("{:.0} %", r * 100.0))
            .collect::<Vec<_>>()
            .join(" / ")
    ));
    let runs = format!(
        "synchronous={}; each run {RUN_SECS} s (write path {write_secs} s)",
        synchronous.name()
    );
    report(&root, &runs, &table, &notes)
}

/// An instance to load: `servers` is the master, then the slaves.
fn instance(name: String, owner: String, mut servers: Vec<String>, status: Status) -> NewInstance {
    let master = servers.remove(0);
    NewInstance {
        name,
        owner,
        master,
        slaves: servers,
        status,
        network: None,
        floating_ips: Vec::new(),
    }
}
