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
    /// The service could not start (address in use, say).
    Start(StartError),
    /// A command named something that does not exist.
    NotFound(String),
    /// The operating system refused something the service needs (signal handlers, threads).
    System(String),
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
            Error::Usage(m) => write!(f, "{m}"),
            Error::Config(e) => write!(f, "{e}"),
            Error::Store(e) => write!(f, "{e}"),
            Error::Start(e) => write!(f, "{e}"),
            Error::NotFound(m) | Error::System(m) => write!(f, "{m}"),
        }
    }
}

impl std::error::Error for Error {}

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
