//! How a create makes each thing exactly once. `POST` is not idempotent on ~okeanos: a call
//! that timed out may have made the thing, and so may a run the service did not live to
//! record. So each thing is looked for before it is made: the private network by its name,
//! its subnet by its network, a server by the metadata that names its instance and slot, and
//! a floating IP (which has no name) by taking a free one of the owner's that no cluster
//! holds, before a new one is made. A thing made after the create was superseded (a destroy
//! took the action over meanwhile) is deleted at once.

use log::warn;

use super::failure::{Failure, Stop};
use super::unsaved::Unsaved;
use super::Worker;
use crate::okeanos::{network_name, Client, NewServer, OkeanosError, ServerState};
use crate::plan::TargetKind;
use crate::report::Report;
use crate::store::{Job, TargetState, Took};

impl Worker {
    /// Makes target `i` of a create (or finds it made): done for a network, a subnet or a
    /// floating IP; a server is then waited for until it is ACTIVE.
    pub(super) fn make(
        &mut self,
        job: &mut Job,
        unsaved: &mut Unsaved,
        i: usize,
    ) -> Result<(), Stop> {
        let target = job.targets[i].target.clone();
        let label = target.label();
        let (Some(build), Some(network)) = (job.build.clone(), job.network_url.clone()) else {
            unsaved.step(&label, "create", "no network endpoint, or nothing to build");
            return Err(Stop::Failed(Failure::NoNetworkEndpoint(label)));
        };
        if target.kind != TargetKind::Server && target.id.is_some() {
            // Recorded when it was made or found (by a run that did not live to save more).
            unsaved.step(&label, "create", "made before");
            job.targets[i].state = TargetState::Done;
            return Ok(());
        }
        let token = job.token.clone();
        let network_id = job.made(TargetKind::Network, 0).map(str::to_string);
        match target.kind {
            TargetKind::Network => {
                let name = network_name(&job.instance_id);
                let found = self.client.find_network(&network, &token, &name);
                self.find_or_make(job, unsaved, i, ("networks", found), |client| {
                    client.create_network(&network, &token, &name, &build.project)
                })
            }
            TargetKind::Subnet => {
                let Some(of) = network_id else {
                    let target = label;
                    return Err(Stop::Failed(Failure::Inapplicable {
                        op: "create",
                        target,
                    }));
                };
                // Deleted with its network, whoever holds the action when it is made.
                let found = self.client.find_subnet(&network, &token, &of);
                self.find_or_make(job, unsaved, i, ("subnets", found), |client| {
                    client.create_subnet(&network, &token, &of)
                })
            }
            TargetKind::FloatingIp => {
                self.make_floating_ip(job, unsaved, i, &network, &build.project)
            }
            TargetKind::Server => {
                let slot = target.slot;
                let gone = |unsaved: &mut Unsaved, what: &str| {
                    unsaved.step(&label, "create", format!("its {what} is not there"));
                    let target = label.clone();
                    Err(Stop::Failed(Failure::Inapplicable {
                        op: "create",
                        target,
                    }))
                };
                let Some(private) = network_id else {
                    return gone(unsaved, "private network");
                };
                let ip = match build.floating_ip_of(slot) {
                    None => None,
                    Some(ip_slot) => {
                        let ip_id = job
                            .made(TargetKind::FloatingIp, ip_slot)
                            .map(str::to_string);
                        let all = match self.client.floating_ips(&network, &token) {
                            Ok(all) => all,
                            Err(e) => {
                                return self.retry_or_fail(job, unsaved, &[i], "floatingips", e)
                            }
                        };
                        match all.into_iter().find(|ip| Some(&ip.id) == ip_id.as_ref()) {
                            Some(ip) => Some(ip),
                            None => return gone(unsaved, "floating IP"),
                        }
                    }
                };
                let name = build.server_name(slot);
                let server = NewServer {
                    name: &name,
                    image: &build.image,
                    flavor: build.flavor(slot),
                    project: &build.project,
                    network: &private,
                    floating_ip: ip.as_ref(),
                    authorized_keys: &build.authorized_keys,
                    instance: &job.instance_id,
                    slot,
                };
                match self.client.create_server(&job.compute_url, &token, &server) {
                    Ok(id) => {
                        unsaved.step(&label, "create", format!("accepted: server {id}"));
                        self.keep_made(job, TargetKind::Server, &id)?;
                        let sent_at = self.store.now_ms();
                        let t = &mut job.targets[i];
                        t.target.id = Some(id);
                        t.first_read(sent_at);
                        t.commanded(sent_at);
                        self.schedule_poll(job, unsaved, i, sent_at, ServerState::just_made())
                    }
                    Err(e) => self.retry_or_fail(job, unsaved, &[i], "create", e),
                }
            }
        }
    }

    /// Target `i`, found by a look (`looked`: the call's name and what it found), or else
    /// made by `make` and kept before anything else happens.
    fn find_or_make(
        &mut self,
        job: &mut Job,
        unsaved: &mut Unsaved,
        i: usize,
        looked: (&'static str, Result<Option<String>, OkeanosError>),
        make: impl FnOnce(&Client) -> Result<String, OkeanosError>,
    ) -> Result<(), Stop> {
        let label = job.targets[i].target.label();
        let (look, found) = looked;
        let id = match found {
            Ok(Some(id)) => {
                unsaved.step(&label, "create", format!("found, made before: {id}"));
                id
            }
            Ok(None) => match make(&self.client) {
                Ok(id) => {
                    unsaved.step(&label, "create", format!("made {id}"));
                    self.keep_made(job, job.targets[i].target.kind, &id)?;
                    id
                }
                Err(e) => return self.retry_or_fail(job, unsaved, &[i], "create", e),
            },
            Err(e) => return self.retry_or_fail(job, unsaved, &[i], look, e),
        };
        made(job, i, id);
        Ok(())
    }

    /// A floating IP: a free one of the owner's that no cluster holds, or a new one.
    fn make_floating_ip(
        &mut self,
        job: &mut Job,
        unsaved: &mut Unsaved,
        i: usize,
        network: &str,
        project: &str,
    ) -> Result<(), Stop> {
        let label = job.targets[i].target.label();
        let slot = job.targets[i].target.slot;
        let token = job.token.clone();
        let free: Vec<String> = match self.client.floating_ips(network, &token) {
            Ok(all) => all
                .into_iter()
                .filter(|ip| ip.free)
                .map(|ip| ip.id)
                .collect(),
            Err(e) => return self.retry_or_fail(job, unsaved, &[i], "floatingips", e),
        };
        match self.store.take_floating_ip(job, slot, &free)? {
            Took::One(id) => {
                unsaved.step(&label, "create", format!("took free floating IP {id}"));
                made(job, i, id);
                return Ok(());
            }
            Took::LostClaim => return Err(Stop::LostClaim),
            Took::NoneFree => {}
        }
        let ip = match self.client.create_floating_ip(network, &token, project) {
            Ok(ip) => ip,
            Err(e) => return self.retry_or_fail(job, unsaved, &[i], "create", e),
        };
        match self
            .store
            .take_floating_ip(job, slot, std::slice::from_ref(&ip.id))?
        {
            Took::One(id) => {
                unsaved.step(&label, "create", format!("made {id}"));
                made(job, i, id);
                Ok(())
            }
            Took::LostClaim => {
                self.delete_made(job, TargetKind::FloatingIp, &ip.id);
                Err(Stop::LostClaim)
            }
            // Another cluster took it in the moment since it was made: it is in use, and this
            // target looks again at its next turn.
            Took::NoneFree => {
                unsaved.step(&label, "create", format!("made {}, taken meanwhile", ip.id));
                let t = &mut job.targets[i];
                t.next_at = self.store.now_ms() + self.settings.poll_interval.as_millis() as i64;
                Ok(())
            }
        }
    }

    /// After making `id`: if the action is no longer this tick's (a destroy superseded the
    /// create), the thing is deleted at once and the tick stops.
    fn keep_made(&mut self, job: &Job, kind: TargetKind, id: &str) -> Result<(), Stop> {
        match self.store.still_holds(job) {
            Ok(true) => Ok(()),
            Ok(false) => {
                self.delete_made(job, kind, id);
                Err(Stop::LostClaim)
            }
            // Unknown: the next run finds it, as it finds anything made and not recorded.
            Err(e) => Err(Stop::Store(e)),
        }
    }

    /// Deletes a thing made for an action that is no longer this worker's; best effort, and
    /// said in the log (a subnet goes with its network).
    fn delete_made(&self, job: &Job, kind: TargetKind, id: &str) {
        let (compute, token) = (&job.compute_url, &job.token);
        let network = job.network_url.as_deref().unwrap_or_default();
        let deleted = match kind {
            TargetKind::Server => self.client.delete_server(compute, token, id),
            TargetKind::FloatingIp => self.client.delete_floating_ip(network, token, id),
            TargetKind::Network => self.client.delete_network(network, token, id),
            TargetKind::Subnet => return,
        };
        let what = kind.name();
        match deleted {
            Ok(_) => warn!(
                "action {}: taken over while making {what} {id}; deleted it",
                job.action_id
            ),
            Err(e) => warn!(
                "action {}: taken over while making {what} {id}; deleting it: {}",
                job.action_id,
                Report(&e)
            ),
        }
    }
}

/// Target `i` is made, as `id`.
fn made(job: &mut Job, i: usize, id: String) {
    let t = &mut job.targets[i];
    t.target.id = Some(id);
    t.state = TargetState::Done;
}
