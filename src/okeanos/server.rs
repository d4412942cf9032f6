//! What Cyclades says of a server, and what its status words mean for a command.

use std::fmt;

use serde_json::Value;

use crate::plan::Command;

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
        Command::Start => "ACTIVE",
        Command::Shutdown => "STOPPED",
        Command::Delete => "DELETED",
    }
}

impl ServerState {
    /// The server is where `command` takes it, with nothing under way.
    pub fn reached(&self, command: Command) -> bool {
        match command {
            Command::Delete => self.status == "DELETED",
            _ => self.status == target_status(command) && self.task.is_empty(),
        }
    }

    /// `command` is under way on the server (`SNF:task_state`), sent by whoever.
    pub fn under_way(&self, command: Command) -> bool {
        let task = match command {
            Command::Start => "STARTING",
            Command::Shutdown => "STOPPING",
            Command::Delete => "DESTROYING",
        };
        self.task == task
    }

    /// `command` can be sent now: the server is in the state it applies to, with nothing
    /// under way (a delete applies to any server not being deleted).
    pub fn accepts(&self, command: Command) -> bool {
        match command {
            Command::Start => self.status == "STOPPED" && self.task.is_empty(),
            Command::Shutdown => self.status == "ACTIVE" && self.task.is_empty(),
            Command::Delete => !self.under_way(Command::Delete),
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
    let id = match &server["id"] {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => return None,
    };
    let state = ServerState {
        status: server["status"].as_str()?.to_string(),
        task: server["SNF:task_state"].as_str().unwrap_or("").to_string(),
    };
    Some((id, state))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn servers_are_read_by_id_whatever_its_type() {
        let v: Value = serde_json::from_str(
            r#"{"servers":[{"id":101,"status":"ACTIVE"},
                           {"id":"102","status":"STOPPED","SNF:task_state":"STARTING"},
                           {"id":103}]}"#,
        )
        .unwrap();
        let all: HashMap<String, ServerState> = v["servers"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(server_state)
            .collect();
        assert_eq!(all.len(), 2);
        assert_eq!(all["101"].to_string(), "ACTIVE");
        assert_eq!(all["102"].to_string(), "STOPPED (task STARTING)");
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
    }
}
