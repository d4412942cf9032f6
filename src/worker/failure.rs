//! How a tick ends early: the failure an action's user reads, or why the tick stopped.

use crate::okeanos::{OkeanosError, ServerState};
use crate::plan::{Target, TargetKind};
use crate::report::Report;

/// Why an action failed for good: what its user reads in `error` and `failure_message`. It
/// keeps ~okeanos's error as it came (its kind decided that it was not worth trying again).
#[derive(Debug)]
pub enum Failure {
    /// ~okeanos refused a call for good, or kept failing past `max_attempts`.
    Okeanos {
        target: Target,
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
    /// A network resource is to be acted on, and the service catalog has no network
    /// endpoint to act on it at.
    NoNetworkEndpoint(String),
    /// The plan asks for a command that does not apply to the target (a bug).
    Inapplicable { op: &'static str, target: String },
    /// The run panicked: a bug, contained.
    Panicked(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            // ~okeanos's own message first, with its causes: it says what the user can do
            // about it.
            Failure::Okeanos { target, op, error } => {
                let what = match (target.kind, &target.id) {
                    (TargetKind::Server, Some(_)) => "server ",
                    _ => "",
                };
                write!(f, "{} on {op} of {what}{}", Report(error), target.label())
            }
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
            Failure::NoNetworkEndpoint(name) => write!(
                f,
                "cannot delete {name}: the service catalog has no network endpoint"
            ),
            Failure::Inapplicable { op, target } => write!(f, "cannot {op} {target}"),
            Failure::Panicked(what) => {
                write!(f, "internal error while running the action: {what}")
            }
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
