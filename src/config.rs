//! Configuration: built-in defaults, then an optional TOML file, then `LAMBDA_API_<KEY>`
//! environment overrides. Every key, its default and its meaning are listed in [`KEYS`].

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::store::{Database, Synchronous};

/// Prefix of the environment variables that override configuration keys.
pub const ENV_PREFIX: &str = "LAMBDA_API_";

/// Every configuration key with its default (as written in a file) and what it means.
/// This table is the one place defaults are documented; `Config::default` must agree with it
/// (a unit test checks that).
pub const KEYS: &[(&str, &str, &str)] = &[
    (
        "listen",
        "\"127.0.0.1:8080\"",
        "address the HTTP API listens on",
    ),
    (
        "database",
        "\"lambda-api.db\"",
        "SQLite file (created mode 0600)",
    ),
    (
        "synchronous",
        "\"full\"",
        "full: a 202 survives a power cut; normal: faster, survives a crash of the process only",
    ),
    ("http_threads", "8", "threads answering HTTP requests"),
    (
        "max_connections",
        "1024",
        "open connections past which requests get a fast 503",
    ),
    ("workers", "4", "threads running actions against ~okeanos"),
    (
        "queue_capacity",
        "1024",
        "wake-ups buffered for the workers (SQLite holds the truth)",
    ),
    (
        "astakos_url",
        "\"https://accounts.okeanos.grnet.gr/identity/v2.0\"",
        "~okeanos identity (Astakos) base URL; tokens are checked at {astakos_url}/tokens",
    ),
    (
        "compute_url",
        "\"\"",
        "Cyclades compute URL; empty: taken from the service catalog",
    ),
    (
        "token_cache_ttl_secs",
        "300",
        "how long a valid token's verdict is cached",
    ),
    (
        "okeanos_timeout_secs",
        "10",
        "timeout of one call to ~okeanos (identity or compute)",
    ),
    (
        "poll_interval_ms",
        "1000",
        "pause between two reads of a VM's status while waiting",
    ),
    (
        "vm_wait_timeout_secs",
        "600",
        "how long one VM may take to reach its target state",
    ),
    (
        "max_attempts",
        "5",
        "tries of one ~okeanos call before a transient fault fails the action",
    ),
    (
        "retry_base_ms",
        "500",
        "first back-off pause after a transient fault (doubles, jittered)",
    ),
    ("max_body_bytes", "8192", "largest request body accepted"),
    (
        "shutdown_grace_secs",
        "10",
        "on SIGTERM/SIGINT, how long running actions may take to finish before being handed back",
    ),
];

/// The effective configuration of one process.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub listen: String,
    pub database: PathBuf,
    pub synchronous: Synchronous,
    pub http_threads: usize,
    pub max_connections: usize,
    pub workers: usize,
    pub queue_capacity: usize,
    pub astakos_url: String,
    pub compute_url: String,
    pub token_cache_ttl_secs: u64,
    pub okeanos_timeout_secs: u64,
    pub poll_interval_ms: u64,
    pub vm_wait_timeout_secs: u64,
    pub max_attempts: u32,
    pub retry_base_ms: u64,
    pub max_body_bytes: usize,
    pub shutdown_grace_secs: u64,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            listen: "127.0.0.1:8080".into(),
            database: PathBuf::from("lambda-api.db"),
            synchronous: Synchronous::Full,
            http_threads: 8,
            max_connections: 1024,
            workers: 4,
            queue_capacity: 1024,
            astakos_url: "https://accounts.okeanos.grnet.gr/identity/v2.0".into(),
            compute_url: String::new(),
            token_cache_ttl_secs: 300,
            okeanos_timeout_secs: 10,
            poll_interval_ms: 1000,
            vm_wait_timeout_secs: 600,
            max_attempts: 5,
            retry_base_ms: 500,
            max_body_bytes: 8192,
            shutdown_grace_secs: 10,
        }
    }
}

/// A configuration mistake, naming where it was made and the key.
#[derive(Debug, Clone, PartialEq)]
pub enum ConfigError {
    /// The file could not be read.
    Read { file: PathBuf, reason: String },
    /// The file is not valid TOML.
    Syntax { file: PathBuf, reason: String },
    /// A key nobody knows: most often a typo.
    UnknownKey { origin: String, key: String },
    /// A known key with a value it cannot take.
    BadValue {
        origin: String,
        key: String,
        reason: String,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Read { file, reason } => {
                write!(f, "config file {}: cannot read: {reason}", file.display())
            }
            ConfigError::Syntax { file, reason } => {
                write!(f, "config file {}: {}", file.display(), reason.trim_end())
            }
            ConfigError::UnknownKey { origin, key } => {
                let known: Vec<&str> = KEYS.iter().map(|k| k.0).collect();
                write!(
                    f,
                    "{origin}: unknown key `{key}` (known keys: {})",
                    known.join(", ")
                )
            }
            ConfigError::BadValue {
                origin,
                key,
                reason,
            } => write!(f, "{origin}: key `{key}`: {reason}"),
        }
    }
}

impl std::error::Error for ConfigError {}

/// A value as it arrived: typed from TOML, or a plain string from the environment.
enum Raw<'a> {
    Toml(&'a toml::Value),
    Env(&'a str),
}

impl Raw<'_> {
    fn shown(&self) -> String {
        match self {
            Raw::Toml(toml::Value::String(s)) => format!("{s:?}"),
            Raw::Toml(toml::Value::Integer(i)) => i.to_string(),
            Raw::Toml(toml::Value::Float(x)) => x.to_string(),
            Raw::Toml(toml::Value::Boolean(b)) => b.to_string(),
            Raw::Toml(other) => format!("a {}", other.type_str()),
            Raw::Env(s) => format!("{s:?}"),
        }
    }

    fn string(&self) -> Result<String, String> {
        match self {
            Raw::Toml(toml::Value::String(s)) => Ok(s.clone()),
            Raw::Env(s) => Ok((*s).to_string()),
            _ => Err(format!("expected a string, got {}", self.shown())),
        }
    }

    fn int(&self, min: u64, max: u64) -> Result<u64, String> {
        let n = match self {
            Raw::Toml(toml::Value::Integer(i)) => u64::try_from(*i).ok(),
            Raw::Env(s) => s.trim().parse::<u64>().ok(),
            _ => None,
        };
        match n {
            Some(n) if (min..=max).contains(&n) => Ok(n),
            _ => Err(format!(
                "expected a whole number from {min} to {max}, got {}",
                self.shown()
            )),
        }
    }
}

fn url(raw: &Raw, may_be_empty: bool) -> Result<String, String> {
    let s = raw.string()?;
    let s = s.trim_end_matches('/').to_string();
    if (s.is_empty() && may_be_empty) || s.starts_with("http://") || s.starts_with("https://") {
        Ok(s)
    } else {
        Err(format!(
            "expected an http:// or https:// URL, got {}",
            raw.shown()
        ))
    }
}

impl Config {
    /// Defaults, then `file` if given, then the `LAMBDA_API_*` variables among `env`.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut config = Config::default();
        if let Some(file) = file {
            let text = std::fs::read_to_string(file).map_err(|e| ConfigError::Read {
                file: file.to_path_buf(),
                reason: e.to_string(),
            })?;
            let table: toml::Table =
                text.parse()
                    .map_err(|e: toml::de::Error| ConfigError::Syntax {
                        file: file.to_path_buf(),
                        reason: e.to_string(),
                    })?;
            let origin = format!("config file {}", file.display());
            for (key, value) in &table {
                config.set(&origin, key, Raw::Toml(value))?;
            }
        }
        let mut vars: Vec<(String, String)> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX))
            .collect();
        // Sorted, so that with several mistakes the same one is reported every time.
        vars.sort();
        for (name, value) in &vars {
            let key = name[ENV_PREFIX.len()..].to_ascii_lowercase();
            let origin = format!("environment variable {name}");
            config.set(&origin, &key, Raw::Env(value))?;
        }
        Ok(config)
    }

    fn set(&mut self, origin: &str, key: &str, raw: Raw) -> Result<(), ConfigError> {
        let result = match key {
            "listen" => raw.string().and_then(|s| {
                let ok = match s.strip_prefix("unix:") {
                    Some(path) => !path.is_empty(),
                    None => s.parse::<std::net::SocketAddr>().is_ok(),
                };
                if ok {
                    self.listen = s;
                    Ok(())
                } else {
                    Err(format!(
                        "expected an IP address and port such as 127.0.0.1:8080, \
                         or unix:/path/to/socket, got {}",
                        raw.shown()
                    ))
                }
            }),
            "database" => raw.string().and_then(|s| {
                if s.is_empty() {
                    Err("expected a file path, got an empty string".into())
                } else {
                    self.database = PathBuf::from(s);
                    Ok(())
                }
            }),
            "synchronous" => raw.string().and_then(|s| {
                self.synchronous = match s.to_ascii_lowercase().as_str() {
                    "full" => Synchronous::Full,
                    "normal" => Synchronous::Normal,
                    _ => {
                        return Err(format!(
                            "expected \"full\" or \"normal\", got {}",
                            raw.shown()
                        ))
                    }
                };
                Ok(())
            }),
            "http_threads" => raw.int(1, 1024).map(|n| self.http_threads = n as usize),
            "max_connections" => raw
                .int(1, 1 << 20)
                .map(|n| self.max_connections = n as usize),
            "workers" => raw.int(1, 256).map(|n| self.workers = n as usize),
            "queue_capacity" => raw
                .int(1, 1 << 20)
                .map(|n| self.queue_capacity = n as usize),
            "astakos_url" => url(&raw, false).map(|s| self.astakos_url = s),
            "compute_url" => url(&raw, true).map(|s| self.compute_url = s),
            "token_cache_ttl_secs" => raw.int(0, 86_400).map(|n| self.token_cache_ttl_secs = n),
            "okeanos_timeout_secs" => raw.int(1, 600).map(|n| self.okeanos_timeout_secs = n),
            "poll_interval_ms" => raw.int(1, 600_000).map(|n| self.poll_interval_ms = n),
            "vm_wait_timeout_secs" => raw.int(1, 86_400).map(|n| self.vm_wait_timeout_secs = n),
            "max_attempts" => raw.int(1, 100).map(|n| self.max_attempts = n as u32),
            "retry_base_ms" => raw.int(1, 600_000).map(|n| self.retry_base_ms = n),
            "max_body_bytes" => raw
                .int(64, 1 << 20)
                .map(|n| self.max_body_bytes = n as usize),
            "shutdown_grace_secs" => raw.int(0, 3600).map(|n| self.shutdown_grace_secs = n),
            _ => {
                return Err(ConfigError::UnknownKey {
                    origin: origin.to_string(),
                    key: key.to_string(),
                })
            }
        };
        result.map_err(|reason| ConfigError::BadValue {
            origin: origin.to_string(),
            key: key.to_string(),
            reason,
        })
    }

    /// The database, as every connection of the process opens it.
    pub fn db(&self) -> Database {
        Database {
            path: self.database.clone(),
            synchronous: self.synchronous,
        }
    }

    pub fn okeanos_timeout(&self) -> Duration {
        Duration::from_secs(self.okeanos_timeout_secs)
    }

    pub fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.poll_interval_ms)
    }

    pub fn vm_wait_timeout(&self) -> Duration {
        Duration::from_secs(self.vm_wait_timeout_secs)
    }

    pub fn retry_base(&self) -> Duration {
        Duration::from_millis(self.retry_base_ms)
    }
}

/// The effective configuration as TOML, one key a line: what `check-config` prints and what
/// `serve` logs at start. It holds no secret, so it can be shown whole.
impl fmt::Display for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "listen = {:?}", self.listen)?;
        writeln!(f, "database = {:?}", self.database.display().to_string())?;
        writeln!(f, "synchronous = {:?}", self.synchronous.name())?;
        writeln!(f, "http_threads = {}", self.http_threads)?;
        writeln!(f, "max_connections = {}", self.max_connections)?;
        writeln!(f, "workers = {}", self.workers)?;
        writeln!(f, "queue_capacity = {}", self.queue_capacity)?;
        writeln!(f, "astakos_url = {:?}", self.astakos_url)?;
        writeln!(f, "compute_url = {:?}", self.compute_url)?;
        writeln!(f, "token_cache_ttl_secs = {}", self.token_cache_ttl_secs)?;
        writeln!(f, "okeanos_timeout_secs = {}", self.okeanos_timeout_secs)?;
        writeln!(f, "poll_interval_ms = {}", self.poll_interval_ms)?;
        writeln!(f, "vm_wait_timeout_secs = {}", self.vm_wait_timeout_secs)?;
        writeln!(f, "max_attempts = {}", self.max_attempts)?;
        writeln!(f, "retry_base_ms = {}", self.retry_base_ms)?;
        writeln!(f, "max_body_bytes = {}", self.max_body_bytes)?;
        write!(f, "shutdown_grace_secs = {}", self.shutdown_grace_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    fn check_err(text: &str, vars: &[(&str, &str)], expected: &str) {
        let f = file(text);
        let err = Config::load(Some(f.path()), env(vars))
            .unwrap_err()
            .to_string();
        assert!(err.contains(expected), "{err:?} lacks {expected:?}");
    }

    #[test]
    fn defaults_match_the_documented_table() {
        // The Display form is TOML; parsing it back through the table must give the defaults,
        // and each key of KEYS must print its documented default.
        let shown = Config::default().to_string();
        for (key, default, _) in KEYS {
            let line = format!("{key} = {default}");
            assert!(shown.lines().any(|l| l == line), "{line:?} not in\n{shown}");
        }
        assert_eq!(shown.lines().count(), KEYS.len());
        let f = file(&shown);
        assert_eq!(
            Config::load(Some(f.path()), env(&[])).unwrap(),
            Config::default()
        );
    }

    #[test]
    fn environment_overrides_file() {
        let f = file("workers = 2\nlisten = \"127.0.0.1:9000\"\n");
        let c = Config::load(
            Some(f.path()),
            env(&[("LAMBDA_API_WORKERS", "7"), ("PATH", "/bin")]),
        )
        .unwrap();
        assert_eq!(c.workers, 7);
        assert_eq!(c.listen, "127.0.0.1:9000");
    }

    #[test]
    fn environment_alone_works() {
        let c = Config::load(
            None,
            env(&[("LAMBDA_API_COMPUTE_URL", "http://x/compute/v2.0/")]),
        )
        .unwrap();
        assert_eq!(c.compute_url, "http://x/compute/v2.0");
    }

    #[test]
    fn unknown_file_key_is_named() {
        check_err("wokers = 2\n", &[], "unknown key `wokers`");
    }

    #[test]
    fn unknown_env_key_is_named() {
        check_err(
            "",
            &[("LAMBDA_API_WOKERS", "2")],
            "LAMBDA_API_WOKERS: unknown key `wokers`",
        );
    }

    #[test]
    fn bad_values_name_the_key() {
        check_err(
            "workers = \"x\"\n",
            &[],
            "key `workers`: expected a whole number",
        );
        check_err("workers = 0\n", &[], "key `workers`");
        check_err(
            "",
            &[("LAMBDA_API_MAX_ATTEMPTS", "-1")],
            "key `max_attempts`",
        );
        check_err("listen = \"nowhere\"\n", &[], "key `listen`");
        check_err("listen = \"unix:\"\n", &[], "key `listen`");
        check_err("astakos_url = \"ftp://x\"\n", &[], "key `astakos_url`");
        check_err("database = 3\n", &[], "key `database`: expected a string");
        check_err("synchronous = \"off\"\n", &[], "key `synchronous`");
    }

    #[test]
    fn syntax_error_names_the_file() {
        let f = file("workers = \n");
        let err = Config::load(Some(f.path()), env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("config file "), "{err}");
    }
}
