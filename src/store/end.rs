//! The end of an action, written once: its state and error, its finish time, and everything
//! it held only while live (the token, the endpoints, the claim and lease, the due time, its
//! plan's progress) erased. A worker's finish, a superseding request and a backup all end
//! actions through [`end_actions`].

use rusqlite::{params, Connection};

use super::Result;
use crate::model::ActionState;

/// Which live actions to end.
#[derive(Debug, Clone, Copy)]
pub(super) enum Which<'a> {
    /// This one, whoever holds it.
    One(&'a str),
    /// This one, if `claim` still holds it.
    Claimed { id: &'a str, claim: &'a str },
    /// Every live action (a backup's copy).
    AllLive,
}

/// Ends the live actions `which` names as `state` (succeeded or failed) with `error`, at
/// `now`. Returns the ids of the actions ended, with their instances.
pub(super) fn end_actions(
    conn: &Connection,
    which: Which,
    state: ActionState,
    error: Option<&str>,
    now: i64,
) -> Result<Vec<(String, String)>> {
    debug_assert!(!state.is_live(), "an action ends succeeded or failed");
    let (id, claim) = match which {
        Which::One(id) => (Some(id), None),
        Which::Claimed { id, claim } => (Some(id), Some(claim)),
        Which::AllLive => (None, None),
    };
    let ended = conn
        .prepare_cached(concat!(
            "UPDATE actions SET state = ?1, error = ?2, finished_at = ?3, token = NULL,
                 compute_url = NULL, network_url = NULL, claim = NULL, lease_until = NULL,
                 due_at = NULL
             WHERE ",
            live!(),
            " AND (?4 IS NULL OR id = ?4) AND (?5 IS NULL OR claim = ?5)
             RETURNING id, instance_id"
        ))?
        .query_map(params![state.name(), error, now, id, claim], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?
        .collect::<rusqlite::Result<Vec<(String, String)>>>()?;
    let mut forget = conn.prepare_cached("DELETE FROM action_targets WHERE action_id = ?1")?;
    for (action, _) in &ended {
        forget.execute(params![action])?;
    }
    Ok(ended)
}
