//! The engine section: how long clusters take to come up against a simulator whose VMs take
//! D = 5 s to change state, compared with the ideal 2·D (every slave at once, then the
//! master), and what that costs in threads, memory and ~okeanos calls.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use lambda_api::model::Status;
use lambda_api::store::{Database, Synchronous};

use crate::procs::{agent, log_in, token, user_id, write_fixture, Bin};
use crate::watch;
use crate::{err, instance, metric, Res, USERS};

/// How long a simulated VM takes to start or stop.
const D: Duration = Duration::from_secs(5);
/// The service's default poll interval.
const POLL_MS: u64 = 1000;
const WORKERS: usize = 4;
/// Clients sending the starts.
const CLIENTS: usize = 32;

/// The ~okeanos calls a run made, from the service's metrics.
fn calls(metrics: &str) -> f64 {
    ["detail", "status", "start", "shutdown"]
        .iter()
        .map(|op| metric(metrics, &format!("lambda_okeanos_calls_total{{op=\"{op}\"")))
        .sum()
}

/// What one engine run measured.
struct Run {
    took: Duration,
    calls_per_vm: f64,
    failed: f64,
    idle_threads: u64,
    max_threads: u64,
    max_rss_kib: u64,
}

/// Starts `clusters` instances of `vms` VMs each (the first the master), spread over the
/// bench's users, all at once; returns from the first 202 to the last action's end.
fn run(bin: &Bin, dir: &Path, synchronous: Synchronous, clusters: usize, vms: usize) -> Res<Run> {
    let per_user = clusters.div_ceil(USERS);
    let fixture = dir.join(format!("engine-{clusters}x{vms}.json"));
    write_fixture(&fixture, &|u| {
        (0..per_user * vms).map(|k| format!("e{u}-{k}")).collect()
    })?;
    let db = dir.join(format!("engine-{clusters}x{vms}.db"));
    let mut store = Database::new(&db, synchronous)
        .open()
        .map_err(err("database"))?;
    let rows: Vec<_> = (0..clusters)
        .map(|i| {
            let (u, j) = (i % USERS, i / USERS);
            let servers = (0..vms).map(|k| format!("e{u}-{}", j * vms + k)).collect();
            instance(format!("e-{i}"), user_id(u), servers, Status::Stopped)
        })
        .collect();
    let ids = store.add_instances(&rows).map_err(err("load"))?;
    drop(store);
    let (_sim, sim_addr) = bin.sim(&fixture, D.as_millis() as u64)?;
    let (svc, addr, _) = bin.service(&db, &sim_addr, WORKERS, POLL_MS)?;
    let base = format!("http://{addr}");
    let watcher = agent();
    log_in(&watcher, &base, USERS.min(clusters))?;
    let pid = svc.0.id();
    let idle_threads = watch::own_threads(pid);
    // The owners start their clusters at once, as a class does at nine: 32 clients.
    let started = Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let mine: Vec<(usize, String)> = ids
                .iter()
                .cloned()
                .enumerate()
                .filter(|(i, _)| i % CLIENTS == c)
                .collect();
            let base = base.clone();
            std::thread::spawn(move || -> Res<()> {
                // Each client its own connection, closed when it is done.
                let agent = agent();
                for (i, id) in mine {
                    agent
                        .post(&format!("{base}/api/lambda-instances/{id}/"))
                        .header("X-Auth-Token", &token(i % USERS))
                        .content_type("application/x-www-form-urlencoded")
                        .send("action=start")
                        .map_err(err("engine bench"))?;
                }
                Ok(())
            })
        })
        .collect();
    for c in clients {
        c.join().map_err(|_| "a client panicked".to_string())??;
    }
    let w = watch::until_finished(&watcher, &base, pid, started, clusters, D * 20)
        .map_err(err("engine bench"))?;
    Ok(Run {
        took: w.took,
        calls_per_vm: calls(&w.metrics) / (clusters * vms) as f64,
        failed: metric(
            &w.metrics,
            "lambda_actions_finished_total{state=\"failed\"}",
        ),
        idle_threads,
        max_threads: w.max_threads,
        max_rss_kib: w.max_rss_kib,
    })
}

/// Both engine measures, as table rows and notes.
pub(crate) fn engine(
    bin: &Bin,
    dir: &Path,
    synchronous: Synchronous,
    table: &mut String,
    notes: &mut Vec<String>,
) -> Res<()> {
    let ideal = D * 2;
    for (clusters, vms, target) in [(1usize, 9usize, 1.2), (500, 3, 1.3)] {
        eprintln!(
            "engine: {clusters} × (1 + {}) VMs, D = {} s ...",
            vms - 1,
            D.as_secs()
        );
        let r = run(bin, dir, synchronous, clusters, vms)?;
        let ratio = r.took.as_secs_f64() / ideal.as_secs_f64();
        let _ = writeln!(
            table,
            "| engine: {clusters} × (1 master + {} slaves) started at once by {CLIENTS} clients, D = {} s, {WORKERS} workers, poll {POLL_MS} ms | | {:.2} s | 2·D = {} s | ×{ratio:.2} | | | {} failed; {:.1} calls/VM; threads {} idle, {} with the actions live; RSS max {:.1} MiB |",
            vms - 1,
            D.as_secs(),
            r.took.as_secs_f64(),
            ideal.as_secs(),
            r.failed,
            r.calls_per_vm,
            r.idle_threads,
            r.max_threads,
            r.max_rss_kib as f64 / 1024.0
        );
        let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
        notes.push(format!(
            "- engine, {clusters} cluster(s): ×{ratio:.2} of 2·D (target ≤ ×{target}: {}), {:.1} calls/VM (target ≤ 5: {}), threads {} → {} ({})",
            verdict(ratio <= target),
            r.calls_per_vm,
            verdict(r.calls_per_vm <= 5.0),
            r.idle_threads,
            r.max_threads,
            verdict(watch::flat(r.idle_threads, r.max_threads, WORKERS))
        ));
    }
    Ok(())
}
