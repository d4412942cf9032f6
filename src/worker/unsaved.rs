//! What a tick has done and not yet saved: the VMs it changed and the steps it took.

use std::collections::BTreeSet;

use crate::store::{Job, NewStep, VmProgress};

/// What a tick has done and not yet saved: saved before the tick's first command, and with
/// the action's parking or end.
#[derive(Default)]
pub(super) struct Unsaved {
    /// The indexes of the VMs changed.
    pub(super) changed: BTreeSet<usize>,
    pub(super) steps: Vec<NewStep>,
    /// Commands sent since the last save.
    pub(super) sends: usize,
}

impl Unsaved {
    /// Marks VM `i` as changed.
    pub(super) fn touch(&mut self, i: usize) {
        self.changed.insert(i);
    }

    /// The VMs of `job` this tick changed.
    pub(super) fn vms(&self, job: &Job) -> Vec<VmProgress> {
        self.changed.iter().map(|i| job.vms[*i].clone()).collect()
    }

    pub(super) fn step(&mut self, vm: &str, op: &str, result: impl Into<String>) {
        self.steps.push(NewStep {
            vm: vm.to_string(),
            op: op.to_string(),
            result: result.into(),
        });
    }
}
