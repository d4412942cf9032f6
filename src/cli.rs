//! The `lambda-api` command line: `serve`, `instances add|list|remove`, `check-config`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::error::Error;
use crate::model::Status;
use crate::store::NewInstance;
use crate::Service;

pub const USAGE: &str = "\
lambda-api: starts and stops ~okeanos lambda instances for their owners

Usage:
  lambda-api serve [--config FILE]
  lambda-api instances add --name NAME --owner USER_UUID --master SERVER_ID
                           [--slave SERVER_ID]... [--status STATUS]
                           [--network ID] [--public-ip ID] [--config FILE]
  lambda-api instances list [--config FILE]
  lambda-api instances remove ID [--config FILE]
  lambda-api check-config [--config FILE]
  lambda-api backup FILE [--config FILE]
  lambda-api restore FILE [--config FILE]

Commands:
  serve            run the HTTP API and the workers until stopped
  instances add    register a lambda instance (prints its new id); STATUS is one of
                   STARTED STOPPED PENDING STARTING STOPPING DESTROYING DESTROYED FAILED
                   (default STOPPED); --network and --public-ip name the private network
                   and the floating IP that destroy deletes with the VMs
  instances list   list every registered instance, one a line
  instances remove delete an instance and its action history
  check-config     print the effective configuration, or the mistake in it
  backup           write a consistent copy of the database to FILE (a new file) while the
                   service runs; the copy keeps no token, so actions in progress are
                   failed in it
  restore          replace the database with FILE, a backup, once it passes its checks; the
                   service must be stopped; the replaced database is kept beside it

Configuration: built-in defaults, then --config FILE (TOML), then environment variables
LAMBDA_API_<KEY>, e.g. LAMBDA_API_LISTEN=127.0.0.1:9000. See config/lambda-api.toml.
Logging: RUST_LOG=info (the default), debug, warn, ...
";

#[derive(Debug, Default)]
struct Args {
    words: Vec<String>,
    config: Option<PathBuf>,
    name: Option<String>,
    owner: Option<String>,
    master: Option<String>,
    slaves: Vec<String>,
    status: Option<String>,
    network: Option<String>,
    public_ip: Option<String>,
    help: bool,
    version: bool,
}

fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Args, Error> {
    use lexopt::prelude::*;
    let mut parser = lexopt::Parser::from_args(args);
    let mut a = Args::default();
    while let Some(arg) = parser.next()? {
        match arg {
            Long("config") | Short('c') => a.config = Some(parser.value()?.into()),
            Long("name") => a.name = Some(parser.value()?.string()?),
            Long("owner") => a.owner = Some(parser.value()?.string()?),
            Long("master") => a.master = Some(parser.value()?.string()?),
            Long("slave") => a.slaves.push(parser.value()?.string()?),
            Long("status") => a.status = Some(parser.value()?.string()?),
            Long("network") => a.network = Some(parser.value()?.string()?),
            Long("public-ip") => a.public_ip = Some(parser.value()?.string()?),
            Long("help") | Short('h') => a.help = true,
            Long("version") | Short('V') => a.version = true,
            Value(v) => a.words.push(v.string()?),
            _ => return Err(arg.unexpected().into()),
        }
    }
    Ok(a)
}

/// Runs a command line (without the program name). `serve` returns when the service stops.
pub fn run(args: impl IntoIterator<Item = OsString>) -> Result<(), Error> {
    let a = parse(args)?;
    if a.version {
        println!("lambda-api {}", env!("CARGO_PKG_VERSION"));
        return Ok(());
    }
    let words: Vec<&str> = a.words.iter().map(String::as_str).collect();
    if a.help || words.is_empty() || words == ["help"] {
        print!("{USAGE}");
        return Ok(());
    }
    let adds = a.name.is_some()
        || a.owner.is_some()
        || a.master.is_some()
        || !a.slaves.is_empty()
        || a.status.is_some()
        || a.network.is_some()
        || a.public_ip.is_some();
    if adds && words != ["instances", "add"] {
        return Err(Error::Usage(
            "--name, --owner, --master, --slave, --status, --network and --public-ip go with \
             `instances add`; see --help"
                .into(),
        ));
    }
    let config = || Config::load(a.config.as_deref(), std::env::vars());
    match words.as_slice() {
        ["serve"] => serve(config()?),
        ["check-config"] => {
            println!("{}", config()?);
            Ok(())
        }
        ["instances", "add"] => {
            let need = |v: &Option<String>, flag: &str| {
                v.clone()
                    .filter(|s| !s.trim().is_empty())
                    .ok_or_else(|| Error::Usage(format!("instances add needs {flag}; see --help")))
            };
            let name = need(&a.name, "--name NAME")?;
            let owner = need(&a.owner, "--owner USER_UUID")?;
            let master = need(&a.master, "--master SERVER_ID")?;
            let status = match &a.status {
                None => Status::Stopped,
                Some(s) => Status::parse(s).ok_or_else(|| {
                    Error::Usage(format!("--status {s:?}: not a status name; see --help"))
                })?,
            };
            let mut store = config()?.db().open()?;
            let id = store.add_instance(&NewInstance {
                name,
                owner,
                master,
                slaves: a.slaves.clone(),
                status,
                network: a.network.clone().filter(|n| !n.trim().is_empty()),
                floating_ips: a
                    .public_ip
                    .clone()
                    .filter(|p| !p.trim().is_empty())
                    .into_iter()
                    .collect(),
            })?;
            println!("{id}");
            Ok(())
        }
        ["instances", "list"] => {
            let store = config()?.db().open()?;
            for i in store.all_instances()? {
                let mut line = format!(
                    "{}\t{}\t{}\t{}\tmaster={}\tslaves={}",
                    i.id,
                    i.status.name(),
                    i.owner,
                    i.name,
                    i.master.as_deref().unwrap_or("-"),
                    i.slaves.join(",")
                );
                // What destroy deletes besides the VMs, where the instance has it.
                if let Some(n) = &i.network {
                    line.push_str(&format!("\tnetwork={n}"));
                }
                let ips: Vec<String> = store
                    .cluster(&i.id)?
                    .floating_ips
                    .into_iter()
                    .flatten()
                    .collect();
                if !ips.is_empty() {
                    line.push_str(&format!("\tpublic_ip={}", ips.join(",")));
                }
                println!("{line}");
            }
            Ok(())
        }
        ["instances", "remove", id] => {
            let mut store = config()?.db().open()?;
            if store.remove_instance(id)? {
                Ok(())
            } else {
                Err(Error::NotFound(format!("no instance {id}")))
            }
        }
        ["backup", file] => {
            let copied = config()?.db().backup(Path::new(file))?;
            println!(
                "backed up {} instance(s) and {} action(s) to {file} ({} bytes); {} action(s) \
                 in progress are failed in the copy, which keeps no token",
                copied.instances, copied.actions, copied.bytes, copied.ended
            );
            Ok(())
        }
        ["restore", file] => {
            let db = config()?.db();
            let (copied, replaced) = db.restore(Path::new(file))?;
            println!(
                "restored {} instance(s) and {} action(s) from {file} into {}",
                copied.instances,
                copied.actions,
                db.path().display()
            );
            if let Some(aside) = replaced {
                println!("the database it replaced is kept as {}", aside.display());
            }
            Ok(())
        }
        _ => Err(Error::Usage(format!(
            "unknown command `{}`; see --help",
            words.join(" ")
        ))),
    }
}

fn serve(config: Config) -> Result<(), Error> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    log::info!("effective configuration:\n{config}");
    // Registered before the service starts, so that a signal arriving at any moment after
    // the first request is accepted goes through the graceful path.
    let mut signals =
        signal_hook::iterator::Signals::new([SIGTERM, SIGINT]).map_err(Error::Signals)?;
    let service = Service::start(&config)?;
    let stop = service.shutdown_handle();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Some(signal) = signals.forever().next() {
                let name = if signal == SIGINT {
                    "SIGINT"
                } else {
                    "SIGTERM"
                };
                log::info!("{name}: stopping (grace {} s)", config.shutdown_grace_secs);
                tell_service_manager(&[sd_notify::NotifyState::Stopping]);
                stop.trigger();
            }
        })
        .map_err(|source| Error::Spawn {
            thread: "signals".into(),
            source,
        })?;
    let listening = match service.local_addr() {
        Some(addr) => format!("listening on http://{addr}"),
        None => format!("listening on {}", config.listen),
    };
    log::info!("{listening}");
    // The database is open, recovered and writable, and the listener is bound: /healthz
    // answers from here on. (Under systemd's Type=notify, this is what `start` waits for.)
    tell_service_manager(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(&listening),
    ]);
    match service.wait() {
        None => {
            log::info!("stopped");
            Ok(())
        }
        Some(why) => Err(Error::Restart(why)),
    }
}

/// Tells systemd (when it started the service with NOTIFY_SOCKET) how the service stands;
/// elsewhere a no-op.
fn tell_service_manager(states: &[sd_notify::NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        log::warn!("telling the service manager: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<OsString> {
        s.split_whitespace().map(OsString::from).collect()
    }

    #[test]
    fn add_collects_slaves() {
        let a = parse(args(
            "instances add --name n --owner o --master 1 --slave 2 --slave 3 --network n1 \
             --public-ip ip1",
        ))
        .unwrap();
        assert_eq!(a.words, vec!["instances", "add"]);
        assert_eq!(a.slaves, vec!["2", "3"]);
        assert_eq!(a.network.as_deref(), Some("n1"));
        assert_eq!(a.public_ip.as_deref(), Some("ip1"));
    }

    #[test]
    fn usage_mistakes_exit_2() {
        for bad in [
            "nonsense",
            "serve --name x",
            "serve --network n",
            "instances add --name n",
            "instances add --name n --owner o --master m --status up",
            "serve --bogus",
        ] {
            let e = run(args(bad)).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{bad}: {e}");
        }
    }
}
