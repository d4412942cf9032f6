//! wrk: the load generator, its Lua script, and reading its summary.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::{err, Res, RUN_SECS};

/// One wrk run's figures.
#[derive(Debug, Default, Clone)]
pub(crate) struct Run {
    pub(crate) rps: f64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) bad: u64,
    pub(crate) errors: u64,
    pub(crate) wrapped: u64,
}

pub(crate) const SCRIPT: &str = r#"
local threads = {}
local counter = 0
function setup(thread)
  thread:set("tid", counter)
  counter = counter + 1
  table.insert(threads, thread)
end
function init(args)
  method, expected, data = args[1], tonumber(args[2]), args[3]
  list, n = {}, 0
  for line in io.lines(data) do
    local tok, path = line:match("(%S+) (%S+)")
    n = n + 1
    list[n] = {tok, path}
  end
  step = tonumber(args[4])
  i = (tid % n) + 1
  ok, bad, wrapped = 0, 0, 0
end
function request()
  local e = list[i]
  i = i + step
  if i > n then i = ((i - 1) % n) + 1; wrapped = wrapped + 1 end
  if method == "POST" then
    return wrk.format("POST", e[2], {["X-Auth-Token"] = e[1],
      ["Content-Type"] = "application/x-www-form-urlencoded"}, "action=start")
  end
  if method == "KEYED" then
    sent = (sent or 0) + 1
    return wrk.format("POST", e[2], {["X-Auth-Token"] = e[1],
      ["Content-Type"] = "application/x-www-form-urlencoded",
      ["Idempotency-Key"] = "bench-" .. tid .. "-" .. sent}, "action=start")
  end
  return wrk.format("GET", e[2], {["X-Auth-Token"] = e[1]})
end
function response(status, headers, body)
  if status == expected then ok = ok + 1 else bad = bad + 1 end
end
function done(summary, latency, requests)
  local o, b, w = 0, 0, 0
  for _, t in ipairs(threads) do
    o = o + t:get("ok"); b = b + t:get("bad"); w = w + t:get("wrapped")
  end
  local e = summary.errors
  io.write(string.format('RESULT {"requests":%d,"duration_us":%d,"ok":%d,"bad":%d,"errors":%d,"p50_us":%d,"p99_us":%d,"wrapped":%d}\n',
    summary.requests, summary.duration, o, b, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99), w))
end
"#;

/// `wrk` for a read-only scenario: with many connections, the better of two runs. A run
/// caught by tiny_http's pool stall (see `wrk`) shows as a fraction of the rate with a
/// one-connection latency; the stall only ever lowers a figure, so the better run is the
/// machine's figure.
pub(crate) fn wrk_best(
    work: &Path,
    base: &str,
    method: &str,
    expected: u16,
    data: &Path,
    conns: usize,
) -> Res<Run> {
    let first = wrk(work, base, method, expected, data, conns, RUN_SECS)?;
    if conns == 1 {
        return Ok(first);
    }
    let second = wrk(work, base, method, expected, data, conns, RUN_SECS)?;
    Ok(if second.rps > first.rps {
        second
    } else {
        first
    })
}

/// `wrk -t threads -c conns -d secs`, for the caller to add the rest.
pub(crate) fn wrk_command(threads: usize, conns: usize, secs: u64) -> Command {
    let mut wrk = Command::new("wrk");
    wrk.args(["-t", &threads.to_string(), "-c", &conns.to_string()])
        .args(["-d", &format!("{secs}s")]);
    wrk
}

/// Runs wrk against `base` over the (token, path) lines of `data`, expecting `expected`.
pub(crate) fn wrk(
    work: &Path,
    base: &str,
    method: &str,
    expected: u16,
    data: &Path,
    conns: usize,
    secs: u64,
) -> Res<Run> {
    let script = work.join("bench.lua");
    std::fs::write(&script, SCRIPT).map_err(err("script"))?;
    let threads = conns.min(2);
    // tiny_http 0.12 runs each connection as one task of a thread pool, and a burst of new
    // connections can queue behind busy ones until the pool has grown (its spawn counts
    // waiting threads racily). Such a connection waits until a served one ends (one
    // response in 1 000 ends its connection): at 128 connections that took up to 1.4 s from
    // a cold pool. A two-second warm-up at the same connection count grows the pool first,
    // so the measurement sees the steady state. It writes nothing.
    wrk_command(threads, conns, 2)
        .arg(format!("{base}/healthz"))
        .output()
        .map_err(err("wrk (make bench installs it)"))?;
    // Each wrk thread takes every `threads`-th line, so no line is used twice before the
    // list wraps (the write path needs a fresh instance per request).
    let out = wrk_command(threads, conns, secs)
        .args(["--timeout", "5s", "-s"])
        .arg(&script)
        .arg(base)
        .args(["--", method, &expected.to_string()])
        .arg(data)
        .arg(threads.to_string())
        .output()
        .map_err(err("wrk (make bench installs it)"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .ok_or_else(|| format!("wrk said: {text}{}", String::from_utf8_lossy(&out.stderr)))?;
    let v: Value = serde_json::from_str(line).map_err(err("wrk result"))?;
    let n = |k: &str| v[k].as_u64().unwrap_or(0);
    if n("ok") == 0 {
        return Err(format!(
            "no {expected} among the answers to {method} over {}: {line}",
            data.display()
        ));
    }
    Ok(Run {
        rps: n("requests") as f64 / (n("duration_us") as f64 / 1e6),
        p50_ms: n("p50_us") as f64 / 1000.0,
        p99_ms: n("p99_us") as f64 / 1000.0,
        bad: n("bad"),
        errors: n("errors"),
        wrapped: n("wrapped"),
    })
}

pub(crate) fn write_lines(path: &Path, lines: impl Iterator<Item = String>) -> Res<()> {
    let text: String = lines.map(|l| l + "\n").collect();
    std::fs::write(path, text).map_err(err("data file"))
}
