//! Reading the `actions` and `action_steps` tables: one action, an instance's history, and
//! the live counts. Never the token.

use rusqlite::{params, OptionalExtension};

use super::{kind_of, state_of, Result, Store};
use crate::model::{ActionKind, ActionState};

/// One step a run took on one VM.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub vm: String,
    pub op: String,
    pub result: String,
    pub at: i64,
}

/// An action as the read API shows it (never with its token).
#[derive(Debug, Clone, PartialEq)]
pub struct ActionRecord {
    pub id: String,
    pub instance_id: String,
    pub action: ActionKind,
    pub state: ActionState,
    pub attempts: i64,
    pub error: Option<String>,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub steps: Vec<Step>,
}

fn action_from_row(r: &rusqlite::Row) -> rusqlite::Result<ActionRecord> {
    Ok(ActionRecord {
        id: r.get(0)?,
        instance_id: r.get(1)?,
        action: kind_of(r.get(2)?)?,
        state: state_of(r.get(3)?)?,
        attempts: r.get(4)?,
        error: r.get(5)?,
        created_at: r.get(6)?,
        started_at: r.get(7)?,
        finished_at: r.get(8)?,
        steps: Vec::new(),
    })
}

impl Store {
    /// One action of an instance, with its steps.
    pub fn action(&self, instance_id: &str, action_id: &str) -> Result<Option<ActionRecord>> {
        let row = self
            .conn
            .prepare_cached(
                "SELECT id, instance_id, action, state, attempts, error, created_at, started_at,
                        finished_at
                 FROM actions WHERE id = ?1 AND instance_id = ?2",
            )?
            .query_row(params![action_id, instance_id], action_from_row)
            .optional()?;
        row.map(|mut record| {
            record.steps = self.steps(&record.id)?;
            Ok(record)
        })
        .transpose()
    }

    /// A page of an instance's actions, newest first, with their steps.
    pub fn list_actions(
        &self,
        instance_id: &str,
        limit: u64,
        offset: u64,
    ) -> Result<Vec<ActionRecord>> {
        let mut records = self
            .conn
            .prepare_cached(
                "SELECT id, instance_id, action, state, attempts, error, created_at, started_at,
                        finished_at
                 FROM actions WHERE instance_id = ?1
                 ORDER BY created_at DESC, rowid DESC LIMIT ?2 OFFSET ?3",
            )?
            .query_map(
                params![instance_id, limit as i64, offset as i64],
                action_from_row,
            )?
            .collect::<rusqlite::Result<Vec<ActionRecord>>>()?;
        for record in &mut records {
            record.steps = self.steps(&record.id)?;
        }
        Ok(records)
    }

    pub fn count_actions(&self, instance_id: &str) -> Result<u64> {
        let n: i64 = self
            .conn
            .prepare_cached("SELECT COUNT(*) FROM actions WHERE instance_id = ?1")?
            .query_row(params![instance_id], |r| r.get(0))?;
        Ok(n as u64)
    }

    /// How many actions are queued and how many running.
    pub fn live_counts(&self) -> Result<(u64, u64)> {
        let (queued, running): (i64, i64) = self
            .conn
            .prepare_cached(
                "SELECT COALESCE(SUM(state = 'queued'), 0), COALESCE(SUM(state = 'running'), 0)
                 FROM actions WHERE state IN ('queued', 'running')",
            )?
            .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok((queued as u64, running as u64))
    }

    fn steps(&self, action_id: &str) -> Result<Vec<Step>> {
        let steps = self
            .conn
            .prepare_cached(
                "SELECT vm, op, result, at FROM action_steps WHERE action_id = ?1 ORDER BY seq",
            )?
            .query_map(params![action_id], |r| {
                Ok(Step {
                    vm: r.get(0)?,
                    op: r.get(1)?,
                    result: r.get(2)?,
                    at: r.get(3)?,
                })
            })?
            .collect::<rusqlite::Result<Vec<Step>>>()?;
        Ok(steps)
    }
}
