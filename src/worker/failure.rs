//! How a tick ends early: the failure an action's user reads, or why the tick stopped.

use crate::okeanos::{OkeanosError, ServerState};

/// Why an action failed for good: what its user reads in `error` and `failure_message`.
#[derive(Debug)]
pub enum Failure {
    /// ~okeanos refused a call for good, or kept failing past `max_attempts`.
    Okeanos {
        vm: String,
        op: &'static str,
        error: OkeanosError,
    },
    /// The VM is in a state waiting cannot leave (ERROR, DELETED).
    Stuck {
        vm: String,
        status: String,
        op: &'static str,
    },
    /// The VM did not reach its target within `vm_wait_timeout_secs`.
    TimedOut {
        vm: String,
        target: &'static str,
        secs: u64,
        last: ServerState,
    },
    /// A destroy could not delete a floating IP or a private network.
    Resource { name: String, error: OkeanosError },
    /// A destroy has a network resource to delete, and the service catalog no network
    /// endpoint to delete it at.
    NoNetworkEndpoint(String),
    /// The run panicked: a bug, contained.
    Panicked(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            // ~okeanos's own message first: it says what the user can do about it.
            Failure::Okeanos { vm, op, error } => write!(f, "{error} on {op} of server {vm}"),
            Failure::Stuck { vm, status, op } => {
                write!(f, "server {vm} is {status}; cannot {op}")
            }
            Failure::TimedOut {
                vm,
                target,
                secs,
                last,
            } => write!(
                f,
                "server {vm} did not become {target} within {secs} s (last status {last})"
            ),
            Failure::Resource { name, error } => write!(f, "{error} on delete of {name}"),
            Failure::NoNetworkEndpoint(name) => write!(
                f,
                "cannot delete {name}: the service catalog has no network endpoint"
            ),
            Failure::Panicked(what) => {
                write!(f, "internal error while running the action: {what}")
            }
        }
    }
}

impl std::error::Error for Failure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Failure::Okeanos { error, .. } | Failure::Resource { error, .. } => Some(error),
            _ => None,
        }
    }
}

/// Why a tick stopped before the action was done or parked.
#[derive(Debug)]
pub(super) enum Stop {
    /// The action failed for good.
    Failed(Failure),
    /// Shutdown: leave the action to the next start, due at once.
    Interrupted,
    /// Another worker holds the action now; this one must let go without writing.
    LostClaim,
    /// The database failed; the lease will expire and the action will be taken up again.
    Store(crate::store::StoreError),
}

impl From<crate::store::StoreError> for Stop {
    fn from(e: crate::store::StoreError) -> Stop {
        Stop::Store(e)
    }
}
