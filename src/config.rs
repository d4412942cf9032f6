//! Configuration: built-in defaults, then an optional TOML file, then `LAMBDA_API_<KEY>`
//! environment overrides. Each key is declared once, in [`keys!`] below: its type, its
//! default and what it means. serde reads every layer; a mistake is reported with the key
//! and where it was made.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{de, Deserialize, Deserializer, Serialize};

use crate::store::{Database, Synchronous};

/// Prefix of the environment variables that override configuration keys.
pub const ENV_PREFIX: &str = "LAMBDA_API_";

/// Declares the configuration: the struct, its defaults and [`KEYS`], from one line per key.
macro_rules! keys {
    ($( $(#[doc = $doc:literal])+ $(#[serde($($how:tt)*)])? $key:ident: $ty:ty = $default:expr, )*) => {
        /// The effective configuration of one process.
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(deny_unknown_fields, default)]
        pub struct Config {
            $( $(#[doc = $doc])+ $(#[serde($($how)*)])? pub $key: $ty, )*
        }

        impl Default for Config {
            fn default() -> Config {
                Config { $( $key: $default, )* }
            }
        }

        /// Every key and what it means, in the order of the file and of `check-config`.
        pub const KEYS: &[(&str, &str)] = &[ $( (stringify!($key), concat!($($doc),+)), )* ];
    };
}

keys! {
    /// Address the HTTP API listens on, `host:port` or `unix:/path` (a socket, mode 0660).
    #[serde(deserialize_with = "listen")]
    listen: String = "127.0.0.1:8080".into(),
    /// SQLite file (created mode 0600).
    #[serde(deserialize_with = "path")]
    database: PathBuf = PathBuf::from("lambda-api.db"),
    /// `full`: a 202 survives a power cut; `normal`: faster, survives a crash of the
    /// process only.
    synchronous: Synchronous = Synchronous::Full,
    /// Threads answering HTTP requests.
    #[serde(deserialize_with = "within::<1, 1024, _, _>")]
    http_threads: usize = 8,
    /// Open connections past which requests get a fast 503.
    #[serde(deserialize_with = "within::<1, 1048576, _, _>")]
    max_connections: usize = 1024,
    /// Threads calling ~okeanos for the actions: they bound the calls made at once, not the
    /// actions under way.
    #[serde(deserialize_with = "within::<1, 256, _, _>")]
    workers: usize = 4,
    /// Wake-ups buffered for the workers (SQLite holds the truth).
    #[serde(deserialize_with = "within::<1, 1048576, _, _>")]
    queue_capacity: usize = 1024,
    /// ~okeanos identity (Astakos) base URL; tokens are checked at `{astakos_url}/tokens`.
    #[serde(deserialize_with = "url")]
    astakos_url: String = "https://accounts.okeanos.grnet.gr/identity/v2.0".into(),
    /// Cyclades compute URL; empty: taken from the service catalog.
    #[serde(deserialize_with = "url_or_empty")]
    compute_url: String = String::new(),
    /// How long a valid token's verdict is cached.
    #[serde(deserialize_with = "within::<0, 86400, _, _>")]
    token_cache_ttl_secs: u64 = 300,
    /// Timeout of one call to ~okeanos (identity or compute).
    #[serde(deserialize_with = "within::<1, 600, _, _>")]
    okeanos_timeout_secs: u64 = 10,
    /// Pause before the first read of a VM after its command; each later pause is a fifth
    /// longer, up to 5 s.
    #[serde(deserialize_with = "within::<1, 600000, _, _>")]
    poll_interval_ms: u64 = 1000,
    /// How long one VM may take to reach its target state, from its command.
    #[serde(deserialize_with = "within::<1, 86400, _, _>")]
    vm_wait_timeout_secs: u64 = 600,
    /// Tries of one ~okeanos call before a transient fault fails the action.
    #[serde(deserialize_with = "within::<1, 100, _, _>")]
    max_attempts: u32 = 5,
    /// First back-off pause; it doubles after each try, ±50 % jitter, 30 s at most.
    #[serde(deserialize_with = "within::<1, 600000, _, _>")]
    retry_base_ms: u64 = 500,
    /// Largest request body accepted.
    #[serde(deserialize_with = "within::<64, 1048576, _, _>")]
    max_body_bytes: usize = 8192,
    /// On SIGTERM/SIGINT, how long running actions may go on before the rest is left to the
    /// next start.
    #[serde(deserialize_with = "within::<0, 3600, _, _>")]
    shutdown_grace_secs: u64 = 10,
    /// The image a create makes its VMs of; empty: the first image whose name contains
    /// `image_name`.
    #[serde(deserialize_with = "plain_text")]
    image_id: String = String::new(),
    /// What the name of the image a create uses contains, when `image_id` is empty.
    #[serde(deserialize_with = "plain_text")]
    image_name: String = "Debian Base".into(),
}

/// A configuration mistake, naming where it was made and the key.
#[derive(Debug)]
pub enum ConfigError {
    /// The file could not be read.
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    /// The file is not valid TOML.
    Syntax {
        file: PathBuf,
        source: Box<toml::de::Error>,
    },
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
            ConfigError::Read { file, .. } => {
                write!(f, "config file {}: cannot read", file.display())
            }
            ConfigError::Syntax { file, .. } => {
                write!(f, "config file {}: not valid TOML", file.display())
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

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ConfigError::Read { source, .. } => Some(source),
            ConfigError::Syntax { source, .. } => Some(source.as_ref()),
            _ => None,
        }
    }
}

impl Config {
    /// Defaults, then `file` if given, then the `LAMBDA_API_*` variables among `env`.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut layers = toml::Table::new();
        if let Some(file) = file {
            let text = std::fs::read_to_string(file).map_err(|source| ConfigError::Read {
                file: file.to_path_buf(),
                source,
            })?;
            let table: toml::Table =
                text.parse()
                    .map_err(|e: toml::de::Error| ConfigError::Syntax {
                        file: file.to_path_buf(),
                        source: Box::new(e),
                    })?;
            let origin = format!("config file {}", file.display());
            check(&origin, table.clone())?;
            layers.extend(table);
        }
        let mut vars: Vec<(String, String)> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX))
            .collect();
        // Sorted, so that with several mistakes the same one is reported every time.
        vars.sort();
        for (name, value) in vars {
            let key = name[ENV_PREFIX.len()..].to_ascii_lowercase();
            let layer = toml::Table::from_iter([(key, toml::Value::String(value))]);
            check(&format!("environment variable {name}"), layer.clone())?;
            layers.extend(layer);
        }
        check("the configuration", layers)
    }

    /// The database, as every connection of the process opens it.
    pub fn db(&self) -> Database {
        Database::new(self.database.clone(), self.synchronous)
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

/// The defaults overlaid with `layer`, or the first mistake in it, said to come from `origin`.
fn check(origin: &str, layer: toml::Table) -> Result<Config, ConfigError> {
    if let Some(key) = layer
        .keys()
        .find(|k| !KEYS.iter().any(|(known, _)| known == k))
    {
        return Err(ConfigError::UnknownKey {
            origin: origin.to_string(),
            key: key.clone(),
        });
    }
    serde_path_to_error::deserialize(toml::Value::Table(layer)).map_err(|e| ConfigError::BadValue {
        origin: origin.to_string(),
        key: e.path().to_string(),
        reason: e.into_inner().to_string(),
    })
}

/// The effective configuration as TOML, one key a line: what `check-config` prints and what
/// `serve` logs at start. It holds no secret, so it can be shown whole.
impl fmt::Display for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = toml::to_string(self).map_err(|_| fmt::Error)?;
        write!(f, "{}", text.trim_end())
    }
}

/// A value as a person wrote it, for error messages.
struct Shown<'a>(&'a toml::Value);

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            toml::Value::String(s) => write!(f, "{s:?}"),
            toml::Value::Integer(i) => write!(f, "{i}"),
            toml::Value::Float(x) => write!(f, "{x}"),
            toml::Value::Boolean(b) => write!(f, "{b}"),
            other => write!(f, "a {}", other.type_str()),
        }
    }
}

/// A string, or the error "expected a string, got ...".
fn text<'de, D: Deserializer<'de>>(d: D) -> Result<(String, toml::Value), D::Error> {
    let v = toml::Value::deserialize(d)?;
    match &v {
        toml::Value::String(s) => Ok((s.clone(), v)),
        other => Err(de::Error::custom(format!(
            "expected a string, got {}",
            Shown(other)
        ))),
    }
}

/// A whole number from MIN to MAX, written as a number (a file) or as digits (the
/// environment, where every value is a string).
fn within<'de, const MIN: u64, const MAX: u64, T, D>(d: D) -> Result<T, D::Error>
where
    T: TryFrom<u64>,
    D: Deserializer<'de>,
{
    let v = toml::Value::deserialize(d)?;
    let n = match &v {
        toml::Value::Integer(i) => u64::try_from(*i).ok(),
        toml::Value::String(s) => s.trim().parse::<u64>().ok(),
        _ => None,
    };
    n.filter(|n| (MIN..=MAX).contains(n))
        .and_then(|n| T::try_from(n).ok())
        .ok_or_else(|| {
            de::Error::custom(format!(
                "expected a whole number from {MIN} to {MAX}, got {}",
                Shown(&v)
            ))
        })
}

fn listen<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let (s, v) = text(d)?;
    let ok = match s.strip_prefix("unix:") {
        Some(path) => !path.is_empty(),
        None => s.parse::<std::net::SocketAddr>().is_ok(),
    };
    if ok {
        Ok(s)
    } else {
        Err(de::Error::custom(format!(
            "expected an IP address and port such as 127.0.0.1:8080, \
             or unix:/path/to/socket, got {}",
            Shown(&v)
        )))
    }
}

/// A string of printable characters (maybe empty).
fn plain_text<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let (s, v) = text(d)?;
    if s.chars().any(char::is_control) || s.len() > 255 {
        return Err(de::Error::custom(format!(
            "expected up to 255 printable characters, got {}",
            Shown(&v)
        )));
    }
    Ok(s)
}

fn path<'de, D: Deserializer<'de>>(d: D) -> Result<PathBuf, D::Error> {
    match text(d)? {
        (s, _) if s.is_empty() => Err(de::Error::custom(
            "expected a file path, got an empty string",
        )),
        (s, _) => Ok(PathBuf::from(s)),
    }
}

fn some_url<'de, D: Deserializer<'de>>(d: D, may_be_empty: bool) -> Result<String, D::Error> {
    let (s, v) = text(d)?;
    let s = s.trim_end_matches('/').to_string();
    if (s.is_empty() && may_be_empty) || s.starts_with("http://") || s.starts_with("https://") {
        Ok(s)
    } else {
        Err(de::Error::custom(format!(
            "expected an http:// or https:// URL, got {}",
            Shown(&v)
        )))
    }
}

fn url<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    some_url(d, false)
}

fn url_or_empty<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    some_url(d, true)
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
    fn the_printed_defaults_read_back_as_the_defaults() {
        let shown = Config::default().to_string();
        assert_eq!(shown.lines().count(), KEYS.len(), "{shown}");
        assert!(shown.contains("listen = \"127.0.0.1:8080\""), "{shown}");
        assert!(shown.contains("synchronous = \"full\""), "{shown}");
        let f = file(&shown);
        assert_eq!(
            Config::load(Some(f.path()), env(&[])).unwrap(),
            Config::default()
        );
    }

    /// Each key is documented where operators look: the operations guide's table and the
    /// shipped file.
    #[test]
    fn every_key_is_documented() {
        let guide = include_str!("../docs/operations.md");
        let shipped = include_str!("../config/lambda-api.toml");
        for (key, doc) in KEYS {
            assert!(!doc.trim().is_empty(), "{key} has no doc");
            assert!(
                guide.contains(&format!("| `{key}` |")),
                "docs/operations.md lacks {key}"
            );
            assert!(
                shipped.contains(&format!("{key} = ")),
                "config/ lacks {key}"
            );
        }
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
            env(&[
                ("LAMBDA_API_COMPUTE_URL", "http://x/compute/v2.0/"),
                ("LAMBDA_API_SYNCHRONOUS", "normal"),
                ("LAMBDA_API_DATABASE", "123"),
            ]),
        )
        .unwrap();
        assert_eq!(c.compute_url, "http://x/compute/v2.0");
        assert_eq!(c.synchronous, Synchronous::Normal);
        assert_eq!(c.database, PathBuf::from("123"));
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
    fn bad_values_name_the_key_and_where_it_was_set() {
        check_err(
            "workers = \"x\"\n",
            &[],
            "key `workers`: expected a whole number from 1 to 256, got \"x\"",
        );
        check_err("workers = 0\n", &[], "key `workers`");
        check_err(
            "",
            &[("LAMBDA_API_MAX_ATTEMPTS", "-1")],
            "environment variable LAMBDA_API_MAX_ATTEMPTS: key `max_attempts`",
        );
        check_err("listen = \"nowhere\"\n", &[], "key `listen`");
        check_err("listen = \"unix:\"\n", &[], "key `listen`");
        check_err("astakos_url = \"ftp://x\"\n", &[], "key `astakos_url`");
        check_err("database = 3\n", &[], "key `database`: expected a string");
        check_err("synchronous = \"off\"\n", &[], "key `synchronous`");
        let f = file("workers = 0\n");
        let err = Config::load(Some(f.path()), env(&[])).unwrap_err();
        assert!(err.to_string().starts_with("config file "), "{err}");
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
