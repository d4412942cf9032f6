//! What a tick has done and not yet saved: the targets it changed and the steps it took.

use std::collections::BTreeSet;

use crate::store::{Job, NewStep, TargetProgress};

/// What a tick has done and not yet saved: saved every few commands, and with the action's
/// parking or end.
#[derive(Default)]
pub(super) struct Unsaved {
    /// The indexes of the targets changed.
    pub(super) changed: BTreeSet<usize>,
    pub(super) steps: Vec<NewStep>,
    /// Commands sent since the last save.
    pub(super) sends: usize,
}

impl Unsaved {
    /// Marks target `i` as changed.
    pub(super) fn touch(&mut self, i: usize) {
        self.changed.insert(i);
    }

    /// The targets of `job` this tick changed.
    pub(super) fn targets(&self, job: &Job) -> Vec<TargetProgress> {
        self.changed
            .iter()
            .map(|i| job.targets[*i].clone())
            .collect()
    }

    pub(super) fn step(&mut self, vm: &str, op: &str, result: impl Into<String>) {
        self.steps.push(NewStep {
            vm: vm.to_string(),
            op: op.to_string(),
            result: result.into(),
        });
    }
}
