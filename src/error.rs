//! The error a command of the `lambda-api` binary ends with.

use std::fmt;

use crate::config::ConfigError;
use crate::http::StartError;
use crate::store::StoreError;

#[derive(Debug)]
pub enum Error {
    /// The command line is wrong; the message says how.
    Usage(String),
    /// The configuration is wrong; the message names the key.
    Config(ConfigError),
    /// The database cannot be opened or used.
    Store(StoreError),
    /// The HTTP server could not start (address in use, say).
    Start(StartError),
    /// A command named something that does not exist.
    NotFound(String),
    /// The operating system would not start a thread the service needs.
    Spawn {
        thread: String,
        source: std::io::Error,
    },
    /// The signal handlers could not be installed.
    Signals(std::io::Error),
    /// The service stopped itself to be started again by its supervisor; the reason.
    Restart(String),
}

impl Error {
    /// The process exit code: 2 for a usage mistake, 1 for anything else.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Usage(_) => 2,
            _ => 1,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Usage(m) | Error::NotFound(m) => write!(f, "{m}"),
            Error::Config(e) => write!(f, "{e}"),
            Error::Store(_) => write!(f, "cannot use the database"),
            Error::Start(_) => write!(f, "cannot start the service"),
            Error::Spawn { thread, .. } => write!(f, "cannot start thread {thread}"),
            Error::Signals(_) => write!(f, "cannot handle signals"),
            Error::Restart(why) => write!(f, "stopped to be started again: {why}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Usage(_) | Error::NotFound(_) | Error::Restart(_) => None,
            Error::Config(e) => e.source(),
            Error::Store(e) => Some(e),
            Error::Start(e) => Some(e),
            Error::Spawn { source, .. } | Error::Signals(source) => Some(source),
        }
    }
}

impl From<ConfigError> for Error {
    fn from(e: ConfigError) -> Error {
        Error::Config(e)
    }
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Error {
        Error::Store(e)
    }
}

impl From<StartError> for Error {
    fn from(e: StartError) -> Error {
        Error::Start(e)
    }
}

impl From<lexopt::Error> for Error {
    fn from(e: lexopt::Error) -> Error {
        Error::Usage(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Report;

    #[test]
    fn a_report_names_every_cause() {
        let io = std::io::Error::other("no space left");
        let e = Error::Spawn {
            thread: "worker-0".into(),
            source: io,
        };
        assert_eq!(
            Report(&e).to_string(),
            "cannot start thread worker-0: no space left"
        );
    }
}
