//! The end of a tick that could not be saved (a full or read-only disk): kept in memory and
//! saved again at the worker's next turn, so that the action goes on as soon as the database
//! takes writes again, rather than when its lease runs out. The claim fences every retry: if
//! the lease ran out meanwhile and another worker took the action, the save is dropped. If
//! the process ends first, the next one takes the action up from its row.

use log::{error, info};

use super::Worker;
use crate::report::Report;
use crate::store::{Job, NewStep, TargetProgress};

/// A save the database refused, to try again.
pub(super) enum RetrySave {
    /// Park `job` until `at`, with what the tick changed.
    Park {
        job: Job,
        at: i64,
        targets: Vec<TargetProgress>,
        steps: Vec<NewStep>,
    },
    /// End `job`: succeeded (`error` None) or failed.
    Finish {
        job: Job,
        error: Option<String>,
        steps: Vec<NewStep>,
    },
    /// Undo `job`, a create that failed (`why`).
    Undo {
        job: Job,
        why: String,
        steps: Vec<NewStep>,
    },
}

impl RetrySave {
    fn action_id(&self) -> &str {
        match self {
            RetrySave::Park { job, .. }
            | RetrySave::Finish { job, .. }
            | RetrySave::Undo { job, .. } => &job.action_id,
        }
    }
}

impl Worker {
    /// Tries every refused save once again; keeps those that fail again.
    pub(super) fn save_again(&mut self) {
        if self.retry_saves.is_empty() {
            return;
        }
        for save in std::mem::take(&mut self.retry_saves) {
            let saved = match &save {
                RetrySave::Park {
                    job,
                    at,
                    targets,
                    steps,
                } => self.store.park(job, *at, targets, steps),
                RetrySave::Finish { job, error, steps } => {
                    self.store.finish(job, error.as_deref(), steps)
                }
                RetrySave::Undo { job, why, steps } => self.store.undo(job, why, steps),
            };
            match saved {
                Ok(true) => {
                    info!("action {}: saved at last", save.action_id());
                    if let RetrySave::Finish { job, error, .. } = &save {
                        self.ended(job, error.as_deref());
                    }
                }
                Ok(false) => info!(
                    "action {}: taken over before it could be saved; letting go",
                    save.action_id()
                ),
                Err(e) => {
                    error!("action {}: saving it: {}", save.action_id(), Report(&e));
                    self.retry_saves.push(save);
                }
            }
        }
    }
}
