//! Counters and histograms, written out in the Prometheus text format (version 0.0.4).
//! A handful of families, so the exposition is written by hand rather than through a crate.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::sync::lock;

/// Upper bounds (seconds) of the latency buckets: 0.5 ms to 10 s.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 2.5, 10.0,
];

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, d: Duration) {
        let s = d.as_secs_f64();
        for (i, bound) in BUCKETS.iter().enumerate() {
            if s <= *bound {
                self.counts[i] += 1;
            }
        }
        self.count += 1;
        self.sum += s;
    }

    fn write(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (bound, n) in BUCKETS.iter().zip(self.counts) {
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.count
        );
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum);
        let _ = writeln!(out, "{name}_count{braces} {}", self.count);
    }
}

#[derive(Default)]
struct RouteStats {
    statuses: BTreeMap<u16, u64>,
    seconds: Histogram,
}

/// Everything the service counts. One instance, shared by every thread.
#[derive(Default)]
pub struct Metrics {
    /// Per route template: answers by status, and their latency. One lock per request.
    routes: Mutex<BTreeMap<&'static str, RouteStats>>,
    token_hits: AtomicU64,
    abandoned: AtomicU64,
    token_misses: AtomicU64,
    actions_finished: Mutex<BTreeMap<&'static str, u64>>,
    okeanos_calls: Mutex<BTreeMap<(&'static str, String), u64>>,
    okeanos_seconds: Mutex<BTreeMap<&'static str, Histogram>>,
}

/// The `# HELP` and `# TYPE` lines that open a family.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Gauges read at scrape time.
pub struct Gauges {
    /// Actions waiting in SQLite for a worker.
    pub queued: u64,
    /// Actions being run.
    pub running: u64,
    /// Wake-ups waiting in the channel.
    pub channel: usize,
    /// The last write to the database failed for a reason of the disk (full, read-only).
    pub writes_failing: bool,
}

impl Metrics {
    /// A request answered: `route` is the path template, never the path itself.
    pub fn request(&self, route: &'static str, status: u16, took: Duration) {
        let mut routes = lock(&self.routes);
        let stats = routes.entry(route).or_default();
        *stats.statuses.entry(status).or_default() += 1;
        stats.seconds.observe(took);
    }

    /// A connection abandoned because its declared body could not be drained safely.
    pub fn abandoned_connection(&self) {
        self.abandoned.fetch_add(1, Ordering::Relaxed);
    }

    pub fn token_check(&self, cached: bool) {
        let c = if cached {
            &self.token_hits
        } else {
            &self.token_misses
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// An action ended: `state` is `succeeded` or `failed`.
    pub fn action_finished(&self, state: &'static str) {
        *lock(&self.actions_finished).entry(state).or_default() += 1;
    }

    /// A call to ~okeanos: `op` is `tokens`, `status`, `start` or `shutdown`; `outcome` the
    /// HTTP status, or `transport` when there was no answer.
    pub fn okeanos_call(&self, op: &'static str, outcome: String, took: Duration) {
        *lock(&self.okeanos_calls).entry((op, outcome)).or_default() += 1;
        lock(&self.okeanos_seconds)
            .entry(op)
            .or_default()
            .observe(took);
    }

    /// The exposition of every family.
    pub fn render(&self, gauges: &Gauges) -> String {
        let mut out = String::with_capacity(8192);
        family(
            &mut out,
            "lambda_http_requests_total",
            "counter",
            "HTTP requests answered, by route template and status.",
        );
        let routes = lock(&self.routes);
        for (route, stats) in routes.iter() {
            for (status, n) in &stats.statuses {
                let _ = writeln!(
                    out,
                    "lambda_http_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
                );
            }
        }
        family(
            &mut out,
            "lambda_http_request_duration_seconds",
            "histogram",
            "Time to answer a request.",
        );
        for (route, stats) in routes.iter() {
            let labels = format!("route=\"{route}\"");
            stats
                .seconds
                .write(&mut out, "lambda_http_request_duration_seconds", &labels);
        }
        drop(routes);
        family(
            &mut out,
            "lambda_token_cache_total",
            "counter",
            "Token checks, answered by the cache (hit) or by identity (miss).",
        );
        let _ = writeln!(
            out,
            "lambda_token_cache_total{{result=\"hit\"}} {}",
            self.token_hits.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "lambda_token_cache_total{{result=\"miss\"}} {}",
            self.token_misses.load(Ordering::Relaxed)
        );
        family(
            &mut out,
            "lambda_http_abandoned_connections_total",
            "counter",
            "Connections left unanswered: their declared body was too large to drain.",
        );
        let _ = writeln!(
            out,
            "lambda_http_abandoned_connections_total {}",
            self.abandoned.load(Ordering::Relaxed)
        );
        family(
            &mut out,
            "lambda_actions",
            "gauge",
            "Actions not yet finished, by state.",
        );
        let _ = writeln!(out, "lambda_actions{{state=\"queued\"}} {}", gauges.queued);
        let _ = writeln!(
            out,
            "lambda_actions{{state=\"running\"}} {}",
            gauges.running
        );
        family(
            &mut out,
            "lambda_queue_wakeups",
            "gauge",
            "Wake-ups waiting in the worker channel.",
        );
        let _ = writeln!(out, "lambda_queue_wakeups {}", gauges.channel);
        family(
            &mut out,
            "lambda_database_writes_failing",
            "gauge",
            "1 while the disk refuses the database's writes (new actions get 503), else 0.",
        );
        let _ = writeln!(
            out,
            "lambda_database_writes_failing {}",
            u8::from(gauges.writes_failing)
        );
        family(
            &mut out,
            "lambda_actions_finished_total",
            "counter",
            "Actions ended by this process, by final state.",
        );
        let finished = lock(&self.actions_finished);
        for state in ["succeeded", "failed"] {
            let n = finished.get(state).copied().unwrap_or(0);
            let _ = writeln!(
                out,
                "lambda_actions_finished_total{{state=\"{state}\"}} {n}"
            );
        }
        drop(finished);
        family(
            &mut out,
            "lambda_okeanos_calls_total",
            "counter",
            "Calls to ~okeanos, by operation and outcome (HTTP status or transport).",
        );
        for ((op, outcome), n) in lock(&self.okeanos_calls).iter() {
            let _ = writeln!(
                out,
                "lambda_okeanos_calls_total{{op=\"{op}\",outcome=\"{outcome}\"}} {n}"
            );
        }
        family(
            &mut out,
            "lambda_okeanos_call_duration_seconds",
            "histogram",
            "Time of one call to ~okeanos.",
        );
        for (op, h) in lock(&self.okeanos_seconds).iter() {
            h.write(
                &mut out,
                "lambda_okeanos_call_duration_seconds",
                &format!("op=\"{op}\""),
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_lines() {
        let m = Metrics::default();
        m.request("/healthz", 200, Duration::from_millis(3));
        m.request("/healthz", 200, Duration::from_millis(30));
        m.token_check(true);
        m.action_finished("failed");
        m.okeanos_call("start", "413".into(), Duration::from_millis(2));
        let text = m.render(&Gauges {
            queued: 2,
            running: 1,
            channel: 0,
            writes_failing: true,
        });
        for line in [
            "lambda_http_requests_total{route=\"/healthz\",status=\"200\"} 2",
            "lambda_database_writes_failing 1",
            "lambda_http_request_duration_seconds_bucket{route=\"/healthz\",le=\"0.005\"} 1",
            "lambda_http_request_duration_seconds_bucket{route=\"/healthz\",le=\"+Inf\"} 2",
            "lambda_http_request_duration_seconds_count{route=\"/healthz\"} 2",
            "lambda_token_cache_total{result=\"hit\"} 1",
            "lambda_actions{state=\"queued\"} 2",
            "lambda_actions_finished_total{state=\"failed\"} 1",
            "lambda_actions_finished_total{state=\"succeeded\"} 0",
            "lambda_okeanos_calls_total{op=\"start\",outcome=\"413\"} 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from\n{text}"
            );
        }
    }
}
