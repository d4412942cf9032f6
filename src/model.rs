//! The domain: instance statuses, actions and their states, and the state table that decides
//! what an action request does. Pure code, no I/O.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A lambda instance's status, with the original service's numeric codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Started,
    Stopped,
    Pending,
    Starting,
    Stopping,
    Destroying,
    Destroyed,
    Failed,
}

impl Status {
    pub const ALL: [Status; 8] = [
        Status::Started,
        Status::Stopped,
        Status::Pending,
        Status::Starting,
        Status::Stopping,
        Status::Destroying,
        Status::Destroyed,
        Status::Failed,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Status::Started => "STARTED",
            Status::Stopped => "STOPPED",
            Status::Pending => "PENDING",
            Status::Starting => "STARTING",
            Status::Stopping => "STOPPING",
            Status::Destroying => "DESTROYING",
            Status::Destroyed => "DESTROYED",
            Status::Failed => "FAILED",
        }
    }

    /// The code the original service used, kept for its clients.
    pub fn code(self) -> &'static str {
        match self {
            Status::Started => "0",
            Status::Stopped => "1",
            Status::Pending => "2",
            Status::Starting => "3",
            Status::Stopping => "4",
            Status::Destroying => "5",
            Status::Destroyed => "6",
            Status::Failed => "9",
        }
    }

    pub fn detail(self) -> &'static str {
        match self {
            Status::Started => "Lambda instance is started.",
            Status::Stopped => "Lambda instance is stopped.",
            Status::Pending => "Lambda instance is pending.",
            Status::Starting => "Lambda instance is starting.",
            Status::Stopping => "Lambda instance is stopping.",
            Status::Destroying => "Lambda instance is being destroyed.",
            Status::Destroyed => "Lambda instance has been destroyed.",
            Status::Failed => "Lambda instance has failed.",
        }
    }

    /// Parses a status name, case-insensitively.
    pub fn parse(name: &str) -> Option<Status> {
        Status::ALL
            .into_iter()
            .find(|s| s.name().eq_ignore_ascii_case(name))
    }
}

/// What an action does to an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActionKind {
    Start,
    Stop,
}

impl ActionKind {
    pub fn name(self) -> &'static str {
        match self {
            ActionKind::Start => "start",
            ActionKind::Stop => "stop",
        }
    }

    pub fn parse(name: &str) -> Option<ActionKind> {
        match name {
            "start" => Some(ActionKind::Start),
            "stop" => Some(ActionKind::Stop),
            _ => None,
        }
    }

    /// The instance status while the action runs.
    pub fn transient_status(self) -> Status {
        match self {
            ActionKind::Start => Status::Starting,
            ActionKind::Stop => Status::Stopping,
        }
    }

    /// The instance status when the action succeeds.
    pub fn final_status(self) -> Status {
        match self {
            ActionKind::Start => Status::Started,
            ActionKind::Stop => Status::Stopped,
        }
    }
}

/// Where an action is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActionState {
    Queued,
    Running,
    Succeeded,
    Failed,
}

impl ActionState {
    pub fn name(self) -> &'static str {
        match self {
            ActionState::Queued => "queued",
            ActionState::Running => "running",
            ActionState::Succeeded => "succeeded",
            ActionState::Failed => "failed",
        }
    }

    pub fn parse(name: &str) -> Option<ActionState> {
        [
            ActionState::Queued,
            ActionState::Running,
            ActionState::Succeeded,
            ActionState::Failed,
        ]
        .into_iter()
        .find(|s| s.name() == name)
    }

    pub fn is_live(self) -> bool {
        matches!(self, ActionState::Queued | ActionState::Running)
    }
}

/// What an action request does, by the state table of the API contract.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A new action is created and the instance moves to the action's transient status.
    Create,
    /// The same action is already in flight: answer with it, create nothing.
    Merge,
    /// Refused with 409 and this message.
    Conflict(String),
}

/// Decides an action request on an instance in `status`; `live` says whether the instance has
/// an action queued or running.
pub fn verdict(status: Status, kind: ActionKind, live: bool) -> Verdict {
    use ActionKind::{Start, Stop};
    match (status, kind) {
        (Status::Stopped | Status::Failed, Start) | (Status::Started | Status::Failed, Stop) => {
            Verdict::Create
        }
        (Status::Started, Start) => {
            Verdict::Conflict("The specified lambda instance is already started.".into())
        }
        (Status::Stopped, Stop) => {
            Verdict::Conflict("The specified lambda instance is already stopped.".into())
        }
        // An instance left in its transient status with nothing in flight (set by hand, say)
        // gets a fresh action rather than staying stuck there.
        (Status::Starting, Start) | (Status::Stopping, Stop) if !live => Verdict::Create,
        (Status::Starting, Start) | (Status::Stopping, Stop) => Verdict::Merge,
        (other, kind) => Verdict::Conflict(format!(
            "Can't {} a lambda instance while lambda instance status is {}.",
            kind.name(),
            other.name()
        )),
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// RFC 3339 UTC with milliseconds, e.g. `2026-11-28T02:04:01.123Z`.
pub fn rfc3339(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ActionKind::{Start, Stop};

    fn check(status: Status, kind: ActionKind, live: bool, expected: &str) {
        let got = match verdict(status, kind, live) {
            Verdict::Create => "create".to_string(),
            Verdict::Merge => "merge".to_string(),
            Verdict::Conflict(m) => m,
        };
        assert_eq!(got, expected, "{status:?} {kind:?} live={live}");
    }

    #[test]
    fn stopped() {
        check(Status::Stopped, Start, false, "create");
        check(
            Status::Stopped,
            Stop,
            false,
            "The specified lambda instance is already stopped.",
        );
    }

    #[test]
    fn started() {
        check(
            Status::Started,
            Start,
            false,
            "The specified lambda instance is already started.",
        );
        check(Status::Started, Stop, false, "create");
    }

    #[test]
    fn failed_accepts_both() {
        check(Status::Failed, Start, false, "create");
        check(Status::Failed, Stop, false, "create");
    }

    #[test]
    fn starting() {
        check(Status::Starting, Start, true, "merge");
        check(Status::Starting, Start, false, "create");
        check(
            Status::Starting,
            Stop,
            true,
            "Can't stop a lambda instance while lambda instance status is STARTING.",
        );
    }

    #[test]
    fn stopping() {
        check(Status::Stopping, Stop, true, "merge");
        check(
            Status::Stopping,
            Start,
            true,
            "Can't start a lambda instance while lambda instance status is STOPPING.",
        );
    }

    #[test]
    fn others_conflict() {
        for s in [Status::Pending, Status::Destroying, Status::Destroyed] {
            for k in [Start, Stop] {
                let expected = format!(
                    "Can't {} a lambda instance while lambda instance status is {}.",
                    k.name(),
                    s.name()
                );
                check(s, k, false, &expected);
            }
        }
    }

    #[test]
    fn names_round_trip() {
        for s in Status::ALL {
            assert_eq!(Status::parse(s.name()), Some(s));
            assert_eq!(Status::parse(&s.name().to_lowercase()), Some(s));
        }
        assert_eq!(Status::parse("RUNNING"), None);
    }

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_795_000_000_123), "2026-11-18T11:06:40.123Z");
    }
}
