//! The one state machine every target of a plan goes through, whatever its kind and its
//! command: read it; skip it if it is already where the command takes it; wait for the
//! command if it is already under way; else send the command; then read it again until it is
//! there, failing when waiting cannot help or takes too long. A thing this service does not
//! read (a floating IP, a network, a subnet) is sent its command at once, and the answer says
//! where it is. Which status means what is `okeanos/`'s to say; how a thing is made exactly
//! once is `make.rs`'s.

use super::failure::{Failure, Stop};
use super::unsaved::Unsaved;
use super::Worker;
use crate::okeanos::{network_name, target_status, OkeanosError, Sent, ServerState};
use crate::plan::{Command, TargetKind};
use crate::store::{Job, TargetState};

/// What was learnt of a target before acting on it.
pub(super) enum Observed {
    /// A server as its owner's listing shows it; None when it is not listed (gone, or not
    /// made yet).
    Server(Option<ServerState>),
    /// Nothing: the target is not read before its command.
    Unread,
}

impl Worker {
    /// Moves target `i` on from what was `observed` of it at `now`: done, its command sent,
    /// or due again.
    pub(super) fn advance(
        &mut self,
        job: &mut Job,
        unsaved: &mut Unsaved,
        i: usize,
        observed: Observed,
        now: i64,
    ) -> Result<(), Stop> {
        unsaved.touch(i);
        let command = job.targets[i].command;
        let label = job.targets[i].target.label();
        let known = job.targets[i].target.id.is_some();
        let state = match observed {
            Observed::Unread => return self.send(job, unsaved, i, None, now),
            Observed::Server(Some(s)) if !(command == Command::Delete && s.reached(command)) => s,
            Observed::Server(_) if command == Command::Delete => {
                let t = &mut job.targets[i];
                let result = if t.state == TargetState::Todo && !t.sent {
                    "skipped: already gone".to_string()
                } else {
                    format!("{} after {} polls", target_status(command), t.polls)
                };
                t.state = TargetState::Done;
                unsaved.step(&label, command.name(), result);
                return Ok(());
            }
            Observed::Server(_) if command == Command::Create && !known => {
                return self.send(job, unsaved, i, None, now);
            }
            Observed::Server(_) => {
                let error = OkeanosError::Fault {
                    status: 404,
                    name: "itemNotFound".into(),
                    message: format!("Server {label} not found"),
                };
                unsaved.step(&label, "status", error.to_string());
                let target = job.targets[i].target.clone();
                let op = "status";
                return Err(Stop::Failed(Failure::Okeanos { target, op, error }));
            }
        };
        let first_read = job.targets[i].state == TargetState::Todo;
        if first_read {
            unsaved.step(&label, "status", state.to_string());
            job.targets[i].first_read(now);
        }
        job.targets[i].tries = 0;
        if state.reached(command) {
            let t = &mut job.targets[i];
            t.state = TargetState::Done;
            let target = target_status(command);
            if first_read && !t.sent {
                unsaved.step(&label, command.name(), format!("skipped: already {target}"));
            } else {
                let polls = t.polls;
                unsaved.step(&label, "wait", format!("{target} after {polls} polls"));
            }
            return Ok(());
        }
        if state.hopeless(command) {
            let failure = Failure::Stuck {
                vm: label.clone(),
                status: state.status,
                op: command.name(),
            };
            unsaved.step(&label, "wait", failure.to_string());
            return Err(Stop::Failed(failure));
        }
        if state.under_way(command) && !job.targets[i].sent {
            unsaved.step(&label, command.name(), "already under way");
            job.targets[i].commanded(now);
        }
        if state.accepts(command) && !job.targets[i].sent {
            return self.send(job, unsaved, i, Some(state), now);
        }
        self.schedule_poll(job, unsaved, i, now, state)
    }

    /// Sends target `i` its command, last seen in `state` (None: not read, or not made yet),
    /// and moves it on from the answer.
    fn send(
        &mut self,
        job: &mut Job,
        unsaved: &mut Unsaved,
        i: usize,
        state: Option<ServerState>,
        now: i64,
    ) -> Result<(), Stop> {
        let target = job.targets[i].target.clone();
        let command = job.targets[i].command;
        let label = target.label();
        self.before_send(job, unsaved, i)?;
        if command == Command::Create {
            return self.make(job, unsaved, i);
        }
        let (compute, token) = (job.compute_url.clone(), job.token.clone());
        let network = job.network_url.clone();
        let id = match &target.id {
            Some(id) => id.clone(),
            // A network made and not recorded is found by its name.
            None if target.kind == TargetKind::Network && network.is_some() => {
                let name = network_name(&job.instance_id);
                let net = network.as_deref().unwrap_or_default();
                match self.client.find_network(net, &token, &name) {
                    Ok(Some(id)) => id,
                    Ok(None) => {
                        unsaved.step(&label, command.name(), "skipped: never made");
                        job.targets[i].state = TargetState::Done;
                        return Ok(());
                    }
                    Err(e) => return self.retry_or_fail(job, unsaved, &[i], "networks", e),
                }
            }
            None => {
                unsaved.step(&label, command.name(), "skipped: never made");
                job.targets[i].state = TargetState::Done;
                return Ok(());
            }
        };
        let answer = match (target.kind, command, network.as_deref()) {
            (TargetKind::Server, Command::Start, _) => {
                self.client.start_server(&compute, &token, &id)
            }
            (TargetKind::Server, Command::Shutdown, _) => {
                self.client.shutdown_server(&compute, &token, &id)
            }
            (TargetKind::Server, Command::Delete, _) => {
                self.client.delete_server(&compute, &token, &id)
            }
            (_, Command::Delete, None) => {
                unsaved.step(&label, command.name(), "no network endpoint");
                return Err(Stop::Failed(Failure::NoNetworkEndpoint(label)));
            }
            (TargetKind::FloatingIp, Command::Delete, Some(network)) => {
                self.client.delete_floating_ip(network, &token, &id)
            }
            (TargetKind::Network, Command::Delete, Some(network)) => {
                self.client.delete_network(network, &token, &id)
            }
            _ => {
                let op = command.name();
                return Err(Stop::Failed(Failure::Inapplicable { op, target: label }));
            }
        };
        match (answer, state) {
            (Ok(Sent::Gone), _) => {
                unsaved.step(&label, command.name(), "already gone");
                job.targets[i].state = TargetState::Done;
                Ok(())
            }
            (Ok(Sent::Accepted), None) => {
                unsaved.step(&label, command.name(), "deleted");
                job.targets[i].state = TargetState::Done;
                Ok(())
            }
            (Ok(Sent::Accepted), Some(state)) => {
                unsaved.step(&label, command.name(), "accepted");
                // The wait counts from the command, however long the tick took to get to it.
                let sent_at = self.store.now_ms();
                job.targets[i].commanded(sent_at);
                self.schedule_poll(job, unsaved, i, sent_at, state)
            }
            // Synnefo answers 400 when the server is not in a state the command applies to;
            // that may be because it just moved. Read it again before failing.
            (Err(error), Some(_)) if error.status() == Some(400) => {
                match self.client.server_status(&compute, &token, &id) {
                    Ok(fresh) => {
                        unsaved.step(&label, "status", fresh.to_string());
                        if fresh.accepts(command) {
                            unsaved.step(&label, command.name(), error.to_string());
                            let op = command.name();
                            return Err(Stop::Failed(Failure::Okeanos { target, op, error }));
                        }
                        if fresh.reached(command) {
                            job.targets[i].state = TargetState::Done;
                            let reached = format!("{} after 0 polls", target_status(command));
                            unsaved.step(&label, "wait", reached);
                            return Ok(());
                        }
                        self.schedule_poll(job, unsaved, i, now, fresh)
                    }
                    Err(e) => self.retry_or_fail(job, unsaved, &[i], "status", e),
                }
            }
            // A floating IP still held by a server being deleted, a network with ports left:
            // a built cluster's resource in use is waited for, as a VM is.
            (Err(error), None) if error.status() == Some(409) && job.build.is_some() => {
                let t = &mut job.targets[i];
                if t.since.is_none() {
                    unsaved.step(&label, command.name(), format!("{error}; waiting"));
                    t.since = Some(now);
                }
                let waited = now - t.since.unwrap_or(now);
                if waited >= self.settings.vm_wait_timeout.as_millis() as i64 {
                    let op = command.name();
                    unsaved.step(&label, op, error.to_string());
                    return Err(Stop::Failed(Failure::Okeanos { target, op, error }));
                }
                let pause = self.poll_pause(t.polls);
                let t = &mut job.targets[i];
                t.polls += 1;
                t.next_at = now + pause.as_millis() as i64;
                Ok(())
            }
            (Err(error), _) => self.retry_or_fail(job, unsaved, &[i], command.name(), error),
        }
    }

    /// Target `i` is not there yet at `now`, last seen in `state`: it fails if its wait is
    /// over, else it is due again after a pause that grows with each read.
    pub(super) fn schedule_poll(
        &mut self,
        job: &mut Job,
        unsaved: &mut Unsaved,
        i: usize,
        now: i64,
        state: ServerState,
    ) -> Result<(), Stop> {
        let label = job.targets[i].target.label();
        let command = job.targets[i].command;
        let wait_ms = self.settings.vm_wait_timeout.as_millis() as i64;
        let pause = self.poll_pause(job.targets[i].polls);
        let t = &mut job.targets[i];
        let waited = now - t.since.unwrap_or(now);
        if waited >= wait_ms {
            let failure = Failure::TimedOut {
                vm: label.clone(),
                target: target_status(command),
                secs: self.settings.vm_wait_timeout.as_secs(),
                last: state,
            };
            unsaved.step(&label, "wait", failure.to_string());
            return Err(Stop::Failed(failure));
        }
        t.polls += 1;
        // On a grid, so that the targets commanded in one tick, and the other actions of
        // their owner, fall due together and share one listing.
        let grid = (self.settings.poll_interval.as_millis() as i64 / 2).clamp(1, 20);
        let due = (now + pause.as_millis() as i64 + grid - 1) / grid * grid;
        // Never past the wait's end, so that a target that never arrives fails on time.
        t.next_at = due.min(t.since.unwrap_or(now) + wait_ms);
        Ok(())
    }
}
