//! What Cyclades says of a server, and what its status words mean for a command.

use std::collections::HashMap;
use std::fmt;

use serde_json::Value;

use super::account::id_of;
use crate::plan::Command;

/// An owner's servers as `servers/detail` lists them (Cyclades lists no deleted server).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listing {
    pub by_id: HashMap<String, ServerState>,
    /// The servers whose metadata names a lambda instance and a slot in it, by (instance,
    /// slot): how a server made by a create is found again.
    pub by_slot: HashMap<(String, u32), String>,
}

impl Listing {
    pub(super) fn of(servers: &[Value]) -> Listing {
        let mut listing = Listing::default();
        for server in servers {
            let Some((id, state)) = server_state(server) else {
                continue;
            };
            let meta = &server["metadata"];
            let instance = meta["lambda_instance"].as_str();
            let slot = meta["lambda_slot"].as_str().and_then(|s| s.parse().ok());
            if let (Some(instance), Some(slot)) = (instance, slot) {
                listing
                    .by_slot
                    .insert((instance.to_string(), slot), id.clone());
            }
            listing.by_id.insert(id, state);
        }
        listing
    }

    /// The server made for `instance`'s `slot`, if listed.
    pub fn made_for(&self, instance: &str, slot: u32) -> Option<&String> {
        self.by_slot.get(&(instance.to_string(), slot))
    }
}

/// What Cyclades says of a server: its status, and the task under way on it, if any. What
/// the words mean for a command is this module's to say ([`ServerState::reached`] and the
/// rest): nothing else knows Synnefo's status words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerState {
    /// ACTIVE, STOPPED, BUILD, REBOOT, DELETED, UNKNOWN or ERROR.
    pub status: String,
    /// `SNF:task_state`: STARTING, STOPPING, DESTROYING, ... or empty when none.
    pub task: String,
}

impl fmt::Display for ServerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.task.is_empty() {
            write!(f, "{}", self.status)
        } else {
            write!(f, "{} (task {})", self.status, self.task)
        }
    }
}

/// The status a command leaves a server in.
pub fn target_status(command: Command) -> &'static str {
    match command {
        Command::Start | Command::Create => "ACTIVE",
        Command::Shutdown => "STOPPED",
        Command::Delete => "DELETED",
    }
}

impl ServerState {
    /// A server just made, before it is read: being built.
    pub fn just_made() -> ServerState {
        ServerState {
            status: "BUILD".into(),
            task: "BUILDING".into(),
        }
    }

    /// The server is where `command` takes it, with nothing under way.
    pub fn reached(&self, command: Command) -> bool {
        match command {
            Command::Delete => self.status == "DELETED",
            _ => self.status == target_status(command) && self.task.is_empty(),
        }
    }

    /// `command` is under way on the server (`SNF:task_state`), sent by whoever; for a
    /// create, the server is being built.
    pub fn under_way(&self, command: Command) -> bool {
        let task = match command {
            Command::Start => "STARTING",
            Command::Shutdown => "STOPPING",
            Command::Delete => "DESTROYING",
            Command::Create => return self.status == "BUILD",
        };
        self.task == task
    }

    /// `command` can be sent now: the server is in the state it applies to, with nothing
    /// under way (a delete applies to any server not being deleted; a server that exists is
    /// not created again).
    pub fn accepts(&self, command: Command) -> bool {
        match command {
            Command::Start => self.status == "STOPPED" && self.task.is_empty(),
            Command::Shutdown => self.status == "ACTIVE" && self.task.is_empty(),
            Command::Delete => !self.under_way(Command::Delete),
            Command::Create => false,
        }
    }

    /// The server is in a state that waiting cannot take to where `command` goes: ERROR or
    /// DELETED (except for a delete, which takes any server away).
    pub fn hopeless(&self, command: Command) -> bool {
        command != Command::Delete && matches!(self.status.as_str(), "ERROR" | "DELETED")
    }
}

/// What became of a command or a delete that ~okeanos did not refuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// Accepted: done, or under way.
    Accepted,
    /// The thing was not there (404): for a delete, already done.
    Gone,
}

/// A server object of Cyclades: its id (a number or a string), status and task.
pub(super) fn server_state(server: &Value) -> Option<(String, ServerState)> {
    let id = id_of(&server["id"])?;
    let state = ServerState {
        status: server["status"].as_str()?.to_string(),
        task: server["SNF:task_state"].as_str().unwrap_or("").to_string(),
    };
    Some((id, state))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_are_read_by_id_whatever_its_type() {
        let v: Value = serde_json::from_str(
            r#"{"servers":[{"id":101,"status":"ACTIVE"},
                           {"id":"102","status":"STOPPED","SNF:task_state":"STARTING"},
                           {"id":103}]}"#,
        )
        .unwrap();
        let listing = Listing::of(v["servers"].as_array().unwrap());
        let all = &listing.by_id;
        assert_eq!(all.len(), 2);
        assert_eq!(all["101"].to_string(), "ACTIVE");
        assert_eq!(all["102"].to_string(), "STOPPED (task STARTING)");
        assert!(listing.by_slot.is_empty());
        let made = serde_json::json!([{"id": 7, "status": "BUILD", "metadata":
            {"lambda_instance": "i-1", "lambda_slot": "2", "lambda_role": "slave"}}]);
        let listing = Listing::of(made.as_array().unwrap());
        assert_eq!(listing.made_for("i-1", 2).map(String::as_str), Some("7"));
        assert_eq!(listing.made_for("i-1", 0), None);
    }

    /// What a status means for each command: (status, task) → reached, under way, accepts,
    /// hopeless.
    #[test]
    fn status_words_by_command() {
        let check = |status: &str, task: &str, command, expected: [bool; 4]| {
            let s = ServerState {
                status: status.into(),
                task: task.into(),
            };
            let got = [
                s.reached(command),
                s.under_way(command),
                s.accepts(command),
                s.hopeless(command),
            ];
            assert_eq!(got, expected, "{s} for {command:?}");
        };
        check("STOPPED", "", Command::Start, [false, false, true, false]);
        check(
            "STOPPED",
            "STARTING",
            Command::Start,
            [false, true, false, false],
        );
        check("ACTIVE", "", Command::Start, [true, false, false, false]);
        check("ERROR", "", Command::Start, [false, false, false, true]);
        check("ACTIVE", "", Command::Shutdown, [false, false, true, false]);
        check(
            "STOPPED",
            "",
            Command::Shutdown,
            [true, false, false, false],
        );
        check(
            "ACTIVE",
            "STOPPING",
            Command::Shutdown,
            [false, true, false, false],
        );
        check("ERROR", "", Command::Delete, [false, false, true, false]);
        check(
            "ACTIVE",
            "DESTROYING",
            Command::Delete,
            [false, true, false, false],
        );
        check("DELETED", "", Command::Delete, [true, false, true, false]);
        check(
            "BUILD",
            "BUILDING",
            Command::Create,
            [false, true, false, false],
        );
        check("ACTIVE", "", Command::Create, [true, false, false, false]);
        check("ERROR", "", Command::Create, [false, false, false, true]);
    }
}
