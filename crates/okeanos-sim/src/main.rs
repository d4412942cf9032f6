//! `okeanos-sim`: runs the Synnefo simulator of the `okeanos_sim` library until killed.

#![forbid(unsafe_code)]

use std::time::Duration;

use okeanos_sim::{demo_fixture, Faults, Fixture, Sim, SimConfig};

const USAGE: &str = "\
okeanos-sim: a small ~okeanos (Synnefo) simulator: identity tokens and Cyclades servers

Usage: okeanos-sim [OPTIONS]

Options:
  --listen ADDR         address to listen on (default 127.0.0.1:9090; port 0 picks one)
  --fixture FILE        users, tokens and servers as JSON (default: config/okeanos-sim.json,
                        built in)
  --transition-ms N     how long a VM takes to start or stop (default 2000)
  --error-rate F        share of compute calls answered 503 (0 to 1)
  --fail-next N         answer the next N compute calls 503
  --conflict-next N     answer the next N compute calls 409 buildInProgress
  --latency-ms N        delay every answer by N ms
  --quota-exceeded      answer every start 413 overLimit
  --identity-down       answer every token check 503
  --threads N           answering threads (default 8)
  --seed N              seed of the error-rate draws (default 1)

At run time: GET/PUT /_sim/faults (JSON of the fault fields, replacing them all),
GET/DELETE /_sim/calls, GET /_sim/servers, PUT /_sim/servers/{id} {\"status\":\"ACTIVE\"}.
";

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    match run() {
        Ok(()) => {}
        Err(e) => {
            eprintln!("okeanos-sim: {e}");
            std::process::exit(2);
        }
    }
}

fn run() -> Result<(), String> {
    use lexopt::prelude::*;
    let mut parser = lexopt::Parser::from_env();
    let mut listen = "127.0.0.1:9090".to_string();
    let mut fixture: Option<Fixture> = None;
    let mut transition = Duration::from_millis(2000);
    let mut faults = Faults::default();
    let mut threads = 8;
    let mut seed = 1;
    fn num<T: std::str::FromStr>(parser: &mut lexopt::Parser, flag: &str) -> Result<T, String> {
        let v = parser.value().map_err(|e| e.to_string())?;
        let v = v.string().map_err(|e| e.to_string())?;
        v.parse().map_err(|_| format!("{flag} {v:?}: not a number"))
    }
    while let Some(arg) = parser.next().map_err(|e| e.to_string())? {
        match arg {
            Long("listen") => {
                listen = parser
                    .value()
                    .and_then(|v| v.string())
                    .map_err(|e| e.to_string())?
            }
            Long("fixture") => {
                let path = parser.value().map_err(|e| e.to_string())?;
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| format!("--fixture {}: {e}", path.to_string_lossy()))?;
                fixture = Some(
                    serde_json::from_str(&text)
                        .map_err(|e| format!("--fixture {}: {e}", path.to_string_lossy()))?,
                );
            }
            Long("transition-ms") => {
                transition = Duration::from_millis(num(&mut parser, "--transition-ms")?)
            }
            Long("error-rate") => faults.error_rate = num(&mut parser, "--error-rate")?,
            Long("fail-next") => faults.fail_next = num(&mut parser, "--fail-next")?,
            Long("conflict-next") => faults.conflict_next = num(&mut parser, "--conflict-next")?,
            Long("latency-ms") => faults.latency_ms = num(&mut parser, "--latency-ms")?,
            Long("quota-exceeded") => faults.quota_exceeded = true,
            Long("identity-down") => faults.identity_down = true,
            Long("threads") => threads = num(&mut parser, "--threads")?,
            Long("seed") => seed = num(&mut parser, "--seed")?,
            Long("help") | Short('h') => {
                print!("{USAGE}");
                return Ok(());
            }
            _ => return Err(format!("{}; see --help", arg.unexpected())),
        }
    }
    if !(0.0..=1.0).contains(&faults.error_rate) {
        return Err("--error-rate: expected a number from 0 to 1".into());
    }
    let sim = Sim::start(SimConfig {
        listen,
        fixture: fixture.unwrap_or_else(demo_fixture),
        transition,
        faults,
        threads,
        seed,
    })
    .map_err(|e| e.to_string())?;
    println!("okeanos-sim listening on {}", sim.url());
    println!("astakos_url = {:?}", sim.astakos_url());
    loop {
        std::thread::park();
    }
}
