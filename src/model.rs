//! The domain: instance statuses, actions and their states, and the state table that decides
//! what an action request does. Pure code, no I/O.

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

    /// The original service's sentence for the status, which its clients show.
    pub fn detail(self) -> &'static str {
        match self {
            Status::Started => "Lambda instance has been started",
            Status::Stopped => "Lambda instance has been stopped",
            Status::Pending => "Lambda instance installation is pending",
            Status::Starting => "Lambda instance is starting",
            Status::Stopping => "Lambda instance is stopping",
            Status::Destroying => "Lambda instance is being destroyed",
            Status::Destroyed => "Lambda instance has been destroyed",
            Status::Failed => "Lambda instance has failed",
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
    /// Deletes every VM, then the floating IPs and the private network.
    Destroy,
    /// Builds the cluster: its private network, floating IPs and VMs.
    Create,
}

impl ActionKind {
    pub fn name(self) -> &'static str {
        match self {
            ActionKind::Start => "start",
            ActionKind::Stop => "stop",
            ActionKind::Destroy => "destroy",
            ActionKind::Create => "create",
        }
    }

    pub fn parse(name: &str) -> Option<ActionKind> {
        match name {
            "start" => Some(ActionKind::Start),
            "stop" => Some(ActionKind::Stop),
            "destroy" => Some(ActionKind::Destroy),
            "create" => Some(ActionKind::Create),
            _ => None,
        }
    }

    /// The instance status while the action runs.
    pub fn transient_status(self) -> Status {
        match self {
            ActionKind::Start => Status::Starting,
            ActionKind::Stop => Status::Stopping,
            ActionKind::Destroy => Status::Destroying,
            ActionKind::Create => Status::Pending,
        }
    }

    /// The instance status when the action succeeds.
    pub fn final_status(self) -> Status {
        match self {
            ActionKind::Start | ActionKind::Create => Status::Started,
            ActionKind::Stop => Status::Stopped,
            ActionKind::Destroy => Status::Destroyed,
        }
    }
}

/// The refusal of a start or a stop on an instance whose creation failed.
pub const NO_SERVERS: &str = "The lambda instance has no servers: its creation failed.";

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

/// An action in flight on an instance: queued or running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveAction {
    pub id: String,
    pub kind: ActionKind,
}

/// An instance as an action request is decided on it: its status, its action in flight, and
/// whether it has servers, read together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub status: Status,
    pub live: Option<LiveAction>,
    /// False for an instance whose creation failed (and left nothing), or is under way.
    pub has_servers: bool,
}

/// What an action request comes to, by the state table of the API contract.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// No such instance for this owner (or it is destroyed): 404.
    NotFound,
    /// A new action is due and the instance moves to the action's transient status.
    /// `supersede` is a live action to end first: only possible when the instance's row was
    /// edited by hand, so that its status no longer matches its action in flight.
    Create { supersede: Option<String> },
    /// The same action is already in flight: answer with it, create nothing.
    Merge(String),
    /// Refused with 409 and this message.
    Conflict(String),
}

/// The whole decision of an action request: the state table, and the merge into the action
/// in flight. `snapshot` is None when the owner has no such instance. Pure: the store applies
/// it once to an unlocked read, and again inside the transaction that creates the action.
pub fn decide(snapshot: Option<&Snapshot>, kind: ActionKind) -> Decision {
    use ActionKind::{Create, Destroy, Start, Stop};
    let Some(Snapshot {
        status,
        live,
        has_servers,
    }) = snapshot
    else {
        return Decision::NotFound;
    };
    let supersede = || Decision::Create {
        supersede: live.as_ref().map(|l| l.id.clone()),
    };
    match (*status, kind) {
        // A create is made with its instance, never asked of one.
        (_, Create) => conflict_while(*status, kind),
        // Destroy (SPEC §4): from any settled status; never while a start or stop runs. On a
        // PENDING instance it supersedes the create in flight (SPEC §5).
        (Status::Stopped | Status::Started | Status::Failed | Status::Pending, Destroy) => {
            supersede()
        }
        (Status::Failed, Start | Stop) if !has_servers => Decision::Conflict(NO_SERVERS.into()),
        (Status::Destroyed, Destroy) => {
            Decision::Conflict("The specified lambda instance is already destroyed.".into())
        }
        (Status::Stopped | Status::Failed, Start) | (Status::Started | Status::Failed, Stop) => {
            supersede()
        }
        (Status::Started, Start) => {
            Decision::Conflict("The specified lambda instance is already started.".into())
        }
        (Status::Stopped, Stop) => {
            Decision::Conflict("The specified lambda instance is already stopped.".into())
        }
        (Status::Starting, Start) | (Status::Stopping, Stop) | (Status::Destroying, Destroy) => {
            match live {
                // An instance left in its transient status with nothing in flight (set by hand,
                // say) gets a fresh action rather than staying stuck there.
                None => Decision::Create { supersede: None },
                Some(l) if l.kind == kind => Decision::Merge(l.id.clone()),
                // The status says one thing and the action in flight another: refuse rather
                // than guess.
                Some(_) => conflict_while(*status, kind),
            }
        }
        (other, kind) => conflict_while(other, kind),
    }
}

/// The refusal of an action the instance's status does not allow.
fn conflict_while(status: Status, kind: ActionKind) -> Decision {
    Decision::Conflict(format!(
        "Can't {} a lambda instance while lambda instance status is {}.",
        kind.name(),
        status.name()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ActionKind::{Start, Stop};

    /// `live` is the kind of the action in flight, if any (its id is always "a").
    fn check(status: Status, live: Option<ActionKind>, kind: ActionKind, expected: &str) {
        let snapshot = Snapshot {
            status,
            live: live.map(|kind| LiveAction {
                id: "a".into(),
                kind,
            }),
            has_servers: true,
        };
        let got = match decide(Some(&snapshot), kind) {
            Decision::NotFound => "not found".to_string(),
            Decision::Create { supersede: None } => "create".to_string(),
            Decision::Create { supersede: Some(a) } => format!("create, superseding {a}"),
            Decision::Merge(a) => format!("merge into {a}"),
            Decision::Conflict(m) => m,
        };
        assert_eq!(got, expected, "{status:?} live={live:?} {kind:?}");
    }

    const ALREADY_STARTED: &str = "The specified lambda instance is already started.";
    const ALREADY_STOPPED: &str = "The specified lambda instance is already stopped.";

    fn refused(kind: ActionKind, status: Status) -> String {
        format!(
            "Can't {} a lambda instance while lambda instance status is {}.",
            kind.name(),
            status.name()
        )
    }

    #[test]
    fn no_instance_is_not_found() {
        assert_eq!(decide(None, Start), Decision::NotFound);
        assert_eq!(decide(None, Stop), Decision::NotFound);
    }

    #[test]
    fn stopped() {
        check(Status::Stopped, None, Start, "create");
        check(Status::Stopped, None, Stop, ALREADY_STOPPED);
    }

    #[test]
    fn started() {
        check(Status::Started, None, Start, ALREADY_STARTED);
        check(Status::Started, None, Stop, "create");
    }

    #[test]
    fn failed_accepts_both() {
        check(Status::Failed, None, Start, "create");
        check(Status::Failed, None, Stop, "create");
    }

    #[test]
    fn starting_merges_a_start_and_refuses_a_stop() {
        check(Status::Starting, Some(Start), Start, "merge into a");
        let stop = refused(Stop, Status::Starting);
        check(Status::Starting, Some(Start), Stop, &stop);
    }

    #[test]
    fn stopping_merges_a_stop_and_refuses_a_start() {
        check(Status::Stopping, Some(Stop), Stop, "merge into a");
        let start = refused(Start, Status::Stopping);
        check(Status::Stopping, Some(Stop), Start, &start);
    }

    #[test]
    fn a_transient_status_with_nothing_in_flight_gets_a_new_action() {
        check(Status::Starting, None, Start, "create");
        check(Status::Stopping, None, Stop, "create");
    }

    #[test]
    fn rows_edited_by_hand() {
        // STARTING, but the action in flight is a stop: refuse rather than guess.
        let start = refused(Start, Status::Starting);
        check(Status::Starting, Some(Stop), Start, &start);
        // STOPPED with a start still in flight: the new action supersedes it.
        check(Status::Stopped, Some(Start), Start, "create, superseding a");
    }

    #[test]
    fn others_conflict() {
        for s in [Status::Pending, Status::Destroying, Status::Destroyed] {
            for k in [Start, Stop] {
                check(s, None, k, &refused(k, s));
            }
        }
    }

    #[test]
    fn destroy() {
        use ActionKind::Destroy;
        for s in [
            Status::Stopped,
            Status::Started,
            Status::Failed,
            Status::Pending,
        ] {
            check(s, None, Destroy, "create");
        }
        check(Status::Destroying, Some(Destroy), Destroy, "merge into a");
        check(Status::Destroying, None, Destroy, "create");
        for s in [Status::Starting, Status::Stopping] {
            check(s, Some(Start), Destroy, &refused(Destroy, s));
        }
        check(
            Status::Destroyed,
            None,
            Destroy,
            "The specified lambda instance is already destroyed.",
        );
    }

    #[test]
    fn a_create_supersedes_nothing_but_a_destroy_supersedes_it() {
        use ActionKind::{Create, Destroy};
        check(
            Status::Pending,
            Some(Create),
            Destroy,
            "create, superseding a",
        );
        check(
            Status::Pending,
            Some(Create),
            Start,
            &refused(Start, Status::Pending),
        );
        check(
            Status::Stopped,
            None,
            Create,
            &refused(Create, Status::Stopped),
        );
    }

    #[test]
    fn an_instance_without_servers_cannot_start_or_stop() {
        let failed = Snapshot {
            status: Status::Failed,
            live: None,
            has_servers: false,
        };
        for kind in [Start, Stop] {
            assert_eq!(
                decide(Some(&failed), kind),
                Decision::Conflict(NO_SERVERS.into())
            );
        }
        assert_eq!(
            decide(Some(&failed), ActionKind::Destroy),
            Decision::Create { supersede: None }
        );
    }

    #[test]
    fn names_round_trip() {
        for s in Status::ALL {
            assert_eq!(Status::parse(s.name()), Some(s));
            assert_eq!(Status::parse(&s.name().to_lowercase()), Some(s));
        }
        assert_eq!(Status::parse("RUNNING"), None);
    }
}
