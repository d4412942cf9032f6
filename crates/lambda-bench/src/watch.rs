//! Watching a service while the actions it accepted run: its threads and memory, and when
//! they have all finished.

use std::time::{Duration, Instant};

use crate::procs::status_field;
use crate::{err, metric, Res};

/// The service's own threads: every thread but tiny_http's (its accept thread and a thread
/// a connection), which are the process's first thread's children and keep its name. A
/// connection's thread outlives it by five seconds in tiny_http's pool, so counting all
/// threads would count the clients; the service's own are named (`http-N`, `worker-N`,
/// `housekeeping`, …), and a thread they start keeps their name.
pub(crate) fn own_threads(pid: u32) -> u64 {
    let name = |path: std::path::PathBuf| std::fs::read_to_string(path).unwrap_or_default();
    let process = name(format!("/proc/{pid}/comm").into());
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter(|task| name(task.path().join("comm")) != process)
        .count() as u64
}

/// RSS (KiB) of a process.
fn rss_kib(pid: u32) -> u64 {
    status_field(pid, "VmRSS:")
}

/// Whether threads stayed flat: no more than one a worker above idle. A worker opening a
/// connection has ureq resolve the address on a thread of its own while it waits (ureq does
/// so whenever a timeout is set), so each worker may hold one such thread for a moment.
pub(crate) fn flat(idle: u64, max: u64, workers: usize) -> bool {
    max <= idle + workers as u64
}

/// What watching a run saw.
pub(crate) struct Watched {
    /// From `started` until every action had finished.
    pub(crate) took: Duration,
    /// The service's metrics then.
    pub(crate) metrics: String,
    pub(crate) max_threads: u64,
    pub(crate) max_rss_kib: u64,
}

/// Watches the service (`pid`, at `base`) from the moment its clients are done until
/// `actions` actions have finished, or fails after `limit` from `started`.
pub(crate) fn until_finished(
    watcher: &ureq::Agent,
    base: &str,
    pid: u32,
    started: Instant,
    actions: usize,
    limit: Duration,
) -> Res<Watched> {
    let (mut max_threads, mut max_rss_kib) = (0, 0);
    loop {
        max_threads = max_threads.max(own_threads(pid));
        max_rss_kib = max_rss_kib.max(rss_kib(pid));
        let metrics = watcher
            .get(&format!("{base}/metrics"))
            .call()
            .map_err(err("metrics"))?
            .body_mut()
            .read_to_string()
            .map_err(err("metrics"))?;
        if metric(&metrics, "lambda_actions_finished_total") >= actions as f64 {
            return Ok(Watched {
                took: started.elapsed(),
                metrics,
                max_threads,
                max_rss_kib,
            });
        }
        if started.elapsed() > limit {
            return Err(format!("{actions} actions did not finish in {limit:?}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
