//! A destroy's tick, beside `run.rs`'s start and stop: every VM is deleted at once and
//! waited for until it reads DELETED or is gone; then the floating IP and the private
//! network, if the instance has them. A resource already gone counts as done.

use super::failure::{Failure, Stop};
use super::unsaved::Unsaved;
use super::Worker;
use crate::okeanos::{OkeanosError, ServerState};
use crate::store::{Job, VmState, FLOATING_IP, NETWORK};

/// Synnefo's `SNF:task_state` while a server is being deleted.
const DELETING: &str = "DESTROYING";

/// What a destroy's phase does, for its step.
pub(super) fn phase_step(names: &[&str]) -> String {
    let servers = names.iter().filter(|n| !is_resource(n)).count();
    let ips = names.iter().filter(|n| n.starts_with(FLOATING_IP)).count();
    let networks = names.iter().filter(|n| n.starts_with(NETWORK)).count();
    match (servers, ips, networks) {
        (1, _, _) => "delete 1 server".into(),
        (n, 0, 0) => format!("delete {n} servers"),
        (_, 1, 1) => "delete the floating IP and the private network".into(),
        (_, 1, _) => "delete the floating IP".into(),
        _ => "delete the private network".into(),
    }
}

/// A phase-1 row: a floating IP or a private network, not a server.
pub(super) fn is_resource(name: &str) -> bool {
    name.starts_with(FLOATING_IP) || name.starts_with(NETWORK)
}

impl Worker {
    /// Moves server `i` of a destroy on from what was just read of it (None: not listed,
    /// so gone): done, its delete sent, or due again.
    pub(super) fn advance_delete(
        &mut self,
        job: &mut Job,
        unsaved: &mut Unsaved,
        i: usize,
        state: Option<ServerState>,
        now: i64,
    ) -> Result<(), Stop> {
        let vm = job.vms[i].vm.clone();
        unsaved.touch(i);
        let first_read = job.vms[i].state == VmState::Todo;
        let state = match state {
            Some(s) if s.status != "DELETED" => s,
            _ => {
                let v = &mut job.vms[i];
                v.state = VmState::Done;
                if first_read && !v.sent {
                    unsaved.step(&vm, "delete", "skipped: already gone");
                } else {
                    let polls = v.polls;
                    unsaved.step(&vm, "wait", format!("DELETED after {polls} polls"));
                }
                return Ok(());
            }
        };
        if first_read {
            unsaved.step(&vm, "status", state.to_string());
            job.vms[i].first_read(now);
        }
        job.vms[i].tries = 0;
        if state.task == DELETING && !job.vms[i].sent {
            unsaved.step(&vm, "delete", "already under way");
            job.vms[i].commanded(now);
        }
        if !job.vms[i].sent {
            self.before_send(job, unsaved, i)?;
            let url = format!("{}/servers/{vm}", job.compute_url);
            match self.client.delete("delete", &url, &job.token) {
                Ok(true) => {
                    unsaved.step(&vm, "delete", "accepted");
                    let sent_at = self.store.now_ms();
                    job.vms[i].commanded(sent_at);
                    return self.schedule_poll(job, unsaved, i, sent_at, state, "DELETED");
                }
                Ok(false) => {
                    unsaved.step(&vm, "delete", "already gone");
                    job.vms[i].state = VmState::Done;
                    return Ok(());
                }
                Err(error) => return self.retry_or_fail(job, unsaved, &[i], "delete", error),
            }
        }
        self.schedule_poll(job, unsaved, i, now, state, "DELETED")
    }

    /// Deletes resource `i` of a destroy (a floating IP or a private network): one call, done
    /// when it answers, or due again after a back-off pause.
    pub(super) fn delete_resource(
        &mut self,
        job: &mut Job,
        unsaved: &mut Unsaved,
        i: usize,
    ) -> Result<(), Stop> {
        let name = job.vms[i].vm.clone();
        unsaved.touch(i);
        let Some(network) = job.network_url.clone() else {
            unsaved.step(&name, "delete", "no network endpoint");
            return Err(Stop::Failed(Failure::NoNetworkEndpoint(name)));
        };
        let (op, url) = match name.strip_prefix(FLOATING_IP) {
            Some(id) => ("floatingip", format!("{network}/floatingips/{id}")),
            None => {
                let id = name.strip_prefix(NETWORK).unwrap_or(&name);
                ("network", format!("{network}/networks/{id}"))
            }
        };
        match self.client.delete(op, &url, &job.token) {
            Ok(gone_now) => {
                let result = if gone_now { "deleted" } else { "already gone" };
                unsaved.step(&name, "delete", result);
                job.vms[i].state = VmState::Done;
                Ok(())
            }
            Err(error) => self.retry_or_fail(job, unsaved, &[i], "delete", error),
        }
    }
}

/// The failure of a call on `name`: a server's, or a network resource's.
pub(super) fn failure(name: String, op: &'static str, error: OkeanosError) -> Failure {
    if is_resource(&name) {
        Failure::Resource { name, error }
    } else {
        Failure::Okeanos {
            vm: name,
            op,
            error,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_are_named_for_people() {
        assert_eq!(phase_step(&["1", "2", "3"]), "delete 3 servers");
        assert_eq!(phase_step(&["1"]), "delete 1 server");
        assert_eq!(
            phase_step(&["floatingip/7", "network/8"]),
            "delete the floating IP and the private network"
        );
        assert_eq!(phase_step(&["network/8"]), "delete the private network");
        assert_eq!(phase_step(&["floatingip/7"]), "delete the floating IP");
    }
}
