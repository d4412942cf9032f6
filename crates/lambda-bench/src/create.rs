//! The create section: clusters built on a simulator whose VMs take D = 5 s to build,
//! compared with the cloud's own time (the network and the floating IPs answer at once, then
//! the VMs build for D), and what that costs in ~okeanos calls, threads and memory; and one
//! create killed and resumed ten times in a row, which must still end with exactly the VMs
//! asked for.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use lambda_api::store::Synchronous;
use serde_json::{json, Value};

use crate::procs::{agent, log_in, token, user_id, Bin};
use crate::watch;
use crate::{err, metric, Res, USERS};

/// How long a simulated VM takes to build.
const D: Duration = Duration::from_secs(5);
const POLL_MS: u64 = 1000;
const WORKERS: usize = 4;
const CLIENTS: usize = 32;
const CLUSTERS: usize = 100;
const SLAVES: usize = 2;

/// A fixture of `USERS` users sharing one project with room for every cluster, the one
/// flavor and the image a create uses.
fn write_fixture(path: &Path) -> Res<()> {
    let users: Vec<Value> = (0..USERS)
        .map(|u| json!({"id": user_id(u), "name": format!("user{u}"), "tokens": [token(u)]}))
        .collect();
    let members: Vec<String> = (0..USERS).map(user_id).collect();
    let fixture = json!({
        "users": users,
        "servers": [],
        "flavors": [{"id": "1", "vcpus": 2, "ram": 2048, "disk": 10}],
        "images": [{"id": "img", "name": "Debian Base"}],
        "projects": [{"id": "bench-project", "name": "bench", "members": members,
                      "limits": {"vm": 100, "cpu": 200, "ram": 204800, "disk": 1000,
                                 "floating_ip": 100, "private_network": 100}}],
    });
    std::fs::write(path, fixture.to_string()).map_err(err("fixture"))
}

fn asked(n: usize) -> String {
    json!({"instance_name": format!("bench-{n}"), "master_name": "master", "project_name": "bench",
           "slaves": SLAVES, "vcpus_master": 2, "vcpus_slave": 2, "ram_master": 2048,
           "ram_slave": 2048, "disk_master": 10, "disk_slave": 10})
    .to_string()
}

/// Sends a create as user `u`; returns the new instance's id.
fn create(base: &str, u: usize, n: usize) -> Res<String> {
    let mut r = agent()
        .post(&format!("{base}/api/lambda-instance/"))
        .header("X-Auth-Token", &token(u))
        .content_type("application/json")
        .send(asked(n))
        .map_err(err("create"))?;
    let text = r.body_mut().read_to_string().map_err(err("create"))?;
    let v: Value = serde_json::from_str(&text).map_err(err("create"))?;
    v["data"][0]["id"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| format!("create answered {text}"))
}

/// Every ~okeanos call the service made but identity's.
fn calls(metrics: &str) -> f64 {
    metric(metrics, "lambda_okeanos_calls_total")
        - metric(metrics, "lambda_okeanos_calls_total{op=\"tokens\"")
}

/// The servers the simulator holds for `instance`, by slot.
fn servers_of(sim: &str, instance: &str) -> Res<Vec<String>> {
    let all: Value = agent()
        .get(&format!("http://{sim}/_sim/servers"))
        .call()
        .map_err(err("sim servers"))?
        .body_mut()
        .read_json()
        .map_err(err("sim servers"))?;
    let mut slots: Vec<String> = all
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["metadata"]["lambda_instance"] == instance && s["status"] != "DELETED")
        .filter_map(|s| s["metadata"]["lambda_slot"].as_str().map(str::to_string))
        .collect();
    slots.sort();
    Ok(slots)
}

/// The create measures, as table rows and notes.
pub(crate) fn create_section(
    bin: &Bin,
    dir: &Path,
    synchronous: Synchronous,
    table: &mut String,
    notes: &mut Vec<String>,
) -> Res<()> {
    let _ = synchronous;
    eprintln!(
        "create: {CLUSTERS} × (1 + {SLAVES}) VMs, D = {} s ...",
        D.as_secs()
    );
    let fixture = dir.join("create.json");
    write_fixture(&fixture)?;
    let db = dir.join("create.db");
    let _ = std::fs::remove_file(&db);
    let (_sim, sim_addr) = bin.sim(&fixture, D.as_millis() as u64)?;
    let (svc, addr, _) = bin.service(&db, &sim_addr, WORKERS, POLL_MS)?;
    let base = format!("http://{addr}");
    let watcher = agent();
    log_in(&watcher, &base, USERS)?;
    let pid = svc.0.id();
    let idle_threads = watch::own_threads(pid);
    let started = Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let base = base.clone();
            std::thread::spawn(move || -> Res<()> {
                for n in (0..CLUSTERS).filter(|n| n % CLIENTS == c) {
                    create(&base, n % USERS, n)?;
                }
                Ok(())
            })
        })
        .collect();
    for c in clients {
        c.join().map_err(|_| "a client panicked".to_string())??;
    }
    let watch::Watched {
        took,
        metrics: text,
        max_threads,
        max_rss_kib,
    } = watch::until_finished(&watcher, &base, pid, started, CLUSTERS, D * 20)
        .map_err(err("create bench"))?;
    drop(svc);
    let vms = (CLUSTERS * (SLAVES + 1)) as f64;
    let per_vm = calls(&text) / vms;
    let failed = metric(&text, "lambda_actions_finished_total{state=\"failed\"}");
    let ratio = took.as_secs_f64() / D.as_secs_f64();
    let _ = writeln!(
        table,
        "| create: {CLUSTERS} × (1 master + {SLAVES} slaves) by {CLIENTS} clients, D = {} s, {WORKERS} workers, poll {POLL_MS} ms | | {:.2} s | D = {} s | ×{ratio:.2} | | | {failed} failed; {per_vm:.1} calls/VM; threads {idle_threads} idle, {max_threads} with the creates live; RSS max {:.1} MiB |",
        D.as_secs(),
        took.as_secs_f64(),
        D.as_secs(),
        max_rss_kib as f64 / 1024.0
    );
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    notes.push(format!(
        "- create, {CLUSTERS} clusters: ×{ratio:.2} of D (target ≤ ×1.3: {}), {per_vm:.1} calls/VM (target ≤ 6: {}), threads {idle_threads} → {max_threads} ({}), {failed} failed",
        verdict(ratio <= 1.3),
        verdict(per_vm <= 6.0),
        verdict(watch::flat(idle_threads, max_threads, WORKERS))
    ));
    killed_and_resumed(bin, dir, &fixture, table, notes)
}

/// One create, its service killed (`kill -9`) and started again ten times in a row while it
/// builds; it must end STARTED with one VM in each slot.
fn killed_and_resumed(
    bin: &Bin,
    dir: &Path,
    fixture: &Path,
    table: &mut String,
    notes: &mut Vec<String>,
) -> Res<()> {
    eprintln!("create: killed and resumed ten times ...");
    let db = dir.join("create-killed.db");
    let _ = std::fs::remove_file(&db);
    let (_sim, sim_addr) = bin.sim(fixture, 1000)?;
    let (mut svc, mut addr, _) = bin.service(&db, &sim_addr, WORKERS, 100)?;
    let id = create(&format!("http://{addr}"), 0, 0)?;
    let started = Instant::now();
    // Kills spread over the create's calls and its VMs' build (1 s here).
    for pause in [120, 40, 300, 80, 250, 30, 380, 160, 60, 220] {
        std::thread::sleep(Duration::from_millis(pause));
        // Dropping the process kills it (SIGKILL) and waits for it.
        drop(svc);
        (svc, addr, _) = bin.service(&db, &sim_addr, WORKERS, 100)?;
    }
    let url = format!("http://{addr}/api/lambda-instances/{id}/?filter=status");
    let status = loop {
        let v: Value = agent()
            .get(&url)
            .header("X-Auth-Token", &token(0))
            .call()
            .map_err(err("status"))?
            .body_mut()
            .read_json()
            .map_err(err("status"))?;
        let status = v["data"][0]["status"]["message"]
            .as_str()
            .unwrap_or("")
            .to_string();
        if status != "PENDING" {
            break status;
        }
        if started.elapsed() > Duration::from_secs(120) {
            return Err("the killed create never ended".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    drop(svc);
    let slots = servers_of(&sim_addr, &id)?;
    let whole = status == "STARTED" && slots == ["0", "1", "2"];
    let _ = writeln!(
        table,
        "| create killed and resumed 10 times (kill -9 every 20–400 ms) | | {status} | | | | | VMs by slot: {slots:?}; {:.1} s |",
        started.elapsed().as_secs_f64()
    );
    notes.push(format!(
        "- create killed and resumed 10 times: {status}, one VM a slot: {}",
        if whole { "met" } else { "MISSED" }
    ));
    Ok(())
}
