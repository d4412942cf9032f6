//! An action's plan: the things on ~okeanos it acts on (its targets) and the order it acts on
//! them in (its phases). Pure data and one pure function, [`plan`]: the store saves a plan
//! when an action is first taken up, and the engine walks it, phase after phase.

use crate::model::ActionKind;

/// What a target is on ~okeanos.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TargetKind {
    /// A VM of the cluster.
    Server,
    /// A floating (public) IP.
    FloatingIp,
    /// The cluster's private network.
    Network,
    /// The private network's subnet.
    Subnet,
}

impl TargetKind {
    pub const ALL: [TargetKind; 4] = [
        TargetKind::Server,
        TargetKind::FloatingIp,
        TargetKind::Network,
        TargetKind::Subnet,
    ];

    /// The name the store keeps.
    pub fn name(self) -> &'static str {
        match self {
            TargetKind::Server => "server",
            TargetKind::FloatingIp => "floating_ip",
            TargetKind::Network => "network",
            TargetKind::Subnet => "subnet",
        }
    }

    pub fn parse(name: &str) -> Option<TargetKind> {
        TargetKind::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// One thing an action acts on. `slot` tells targets of one kind apart: a server's slot is
/// its place in the cluster (0 the master, then the slaves in order); `id` is its ~okeanos
/// id, None while it is still to be made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub kind: TargetKind,
    pub slot: u32,
    pub id: Option<String>,
}

impl Target {
    pub fn server(slot: u32, id: &str) -> Target {
        Target {
            kind: TargetKind::Server,
            slot,
            id: Some(id.to_string()),
        }
    }

    pub fn is_master(&self) -> bool {
        self.kind == TargetKind::Server && self.slot == 0
    }

    /// How the target is named in an action's steps: a server by its id, anything else by
    /// its kind and id (`floatingip/7`, `network/8`).
    pub fn label(&self) -> String {
        let id = self.id.as_deref().unwrap_or("?");
        match self.kind {
            TargetKind::Server => id.to_string(),
            TargetKind::FloatingIp => format!("floatingip/{id}"),
            TargetKind::Network => format!("network/{id}"),
            TargetKind::Subnet => format!("subnet/{id}"),
        }
    }
}

/// What an action does to each of its targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Start,
    Shutdown,
    Delete,
}

impl Command {
    /// The command of an action.
    pub fn of(kind: ActionKind) -> Command {
        match kind {
            ActionKind::Start => Command::Start,
            ActionKind::Stop => Command::Shutdown,
            ActionKind::Destroy => Command::Delete,
        }
    }

    /// The word of the steps and the log: `start`, `shutdown`, `delete`.
    pub fn name(self) -> &'static str {
        match self {
            Command::Start => "start",
            Command::Shutdown => "shutdown",
            Command::Delete => "delete",
        }
    }
}

/// The ~okeanos things an instance is made of, as the store knows them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Cluster {
    /// The master's server id, then the slaves', in order.
    pub servers: Vec<String>,
    pub network: Option<String>,
    pub floating_ip: Option<String>,
}

/// Targets grouped in phases: every target of a phase is acted on at once, and a phase
/// begins once every target of the one before is done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub phases: Vec<Vec<Target>>,
}

impl Plan {
    /// Every target with its phase, in order.
    pub fn targets(&self) -> impl Iterator<Item = (u32, &Target)> {
        self.phases
            .iter()
            .enumerate()
            .flat_map(|(phase, targets)| targets.iter().map(move |t| (phase as u32, t)))
    }
}

/// The plan of an action of `kind` on `cluster`, in the original service's order: a start
/// brings every slave up at once, then the master; a stop takes the master down, then every
/// slave at once; a destroy deletes every server at once, then the floating IP and the
/// private network. Empty phases are left out.
pub fn plan(kind: ActionKind, cluster: &Cluster) -> Plan {
    let servers: Vec<Target> = cluster
        .servers
        .iter()
        .enumerate()
        .map(|(slot, id)| Target::server(slot as u32, id))
        .collect();
    let (master, slaves): (Vec<Target>, Vec<Target>) =
        servers.iter().cloned().partition(Target::is_master);
    let resource = |kind: TargetKind, id: &Option<String>| {
        id.as_ref().map(|id| Target {
            kind,
            slot: 0,
            id: Some(id.clone()),
        })
    };
    let phases = match kind {
        ActionKind::Start => vec![slaves, master],
        ActionKind::Stop => vec![master, slaves],
        ActionKind::Destroy => {
            let network = [
                resource(TargetKind::FloatingIp, &cluster.floating_ip),
                resource(TargetKind::Network, &cluster.network),
            ];
            vec![servers, network.into_iter().flatten().collect()]
        }
    };
    Plan {
        phases: phases.into_iter().filter(|p| !p.is_empty()).collect(),
    }
}

/// What a phase does, for the step that opens it: "start 2 slaves", "shutdown the master",
/// "delete 3 servers", "delete the floating IP and the private network".
pub fn describe(command: Command, targets: &[&Target]) -> String {
    let verb = command.name();
    let count = |kind| targets.iter().filter(|t| t.kind == kind).count();
    let servers = count(TargetKind::Server);
    let master = targets.iter().any(|t| t.is_master());
    match (servers, command) {
        (0, _) => {
            let mut things = Vec::new();
            let name = |kind, one: &str, many: &str| match count(kind) {
                0 => None,
                1 => Some(one.to_string()),
                n => Some(format!("{n} {many}")),
            };
            things.extend(name(
                TargetKind::FloatingIp,
                "the floating IP",
                "floating IPs",
            ));
            things.extend(name(TargetKind::Network, "the private network", "networks"));
            things.extend(name(TargetKind::Subnet, "the subnet", "subnets"));
            format!("{verb} {}", things.join(" and "))
        }
        (1, Command::Delete) => format!("{verb} 1 server"),
        (n, Command::Delete) => format!("{verb} {n} servers"),
        (_, _) if master => format!("{verb} the master"),
        (1, _) => format!("{verb} 1 slave"),
        (n, _) => format!("{verb} {n} slaves"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(servers: &[&str], network: Option<&str>, ip: Option<&str>) -> Cluster {
        Cluster {
            servers: servers.iter().map(|s| s.to_string()).collect(),
            network: network.map(str::to_string),
            floating_ip: ip.map(str::to_string),
        }
    }

    /// The plan as labels, phase by phase.
    fn check(kind: ActionKind, cluster: &Cluster, expected: &[&[&str]]) {
        let got: Vec<Vec<String>> = plan(kind, cluster)
            .phases
            .iter()
            .map(|p| p.iter().map(Target::label).collect())
            .collect();
        assert_eq!(got, expected, "{kind:?} on {cluster:?}");
    }

    #[test]
    fn start_brings_the_slaves_up_then_the_master() {
        let c = cluster(&["m", "s1", "s2"], Some("n"), Some("ip"));
        check(ActionKind::Start, &c, &[&["s1", "s2"], &["m"]]);
    }

    #[test]
    fn stop_takes_the_master_down_then_the_slaves() {
        let c = cluster(&["m", "s1", "s2"], None, None);
        check(ActionKind::Stop, &c, &[&["m"], &["s1", "s2"]]);
    }

    #[test]
    fn a_lone_master_is_one_phase() {
        let c = cluster(&["m"], None, None);
        check(ActionKind::Start, &c, &[&["m"]]);
        check(ActionKind::Stop, &c, &[&["m"]]);
    }

    #[test]
    fn destroy_deletes_the_servers_then_the_ip_and_the_network() {
        let c = cluster(&["m", "s1"], Some("n1"), Some("ip1"));
        check(
            ActionKind::Destroy,
            &c,
            &[&["m", "s1"], &["floatingip/ip1", "network/n1"]],
        );
        let bare = cluster(&["m"], None, None);
        check(ActionKind::Destroy, &bare, &[&["m"]]);
        let net_only = cluster(&["m"], Some("n1"), None);
        check(ActionKind::Destroy, &net_only, &[&["m"], &["network/n1"]]);
    }

    #[test]
    fn slots_follow_the_cluster() {
        let c = cluster(&["m", "s1", "s2"], None, None);
        let p = plan(ActionKind::Start, &c);
        let slots: Vec<(u32, u32)> = p.targets().map(|(phase, t)| (phase, t.slot)).collect();
        assert_eq!(slots, vec![(0, 1), (0, 2), (1, 0)]);
    }

    #[test]
    fn kinds_round_trip() {
        for k in TargetKind::ALL {
            assert_eq!(TargetKind::parse(k.name()), Some(k));
        }
        assert_eq!(TargetKind::parse("vm"), None);
    }

    #[test]
    fn phases_are_described_for_people() {
        let t = |kind, slot| Target {
            kind,
            slot,
            id: Some("x".into()),
        };
        let (m, s1, s2) = (
            t(TargetKind::Server, 0),
            t(TargetKind::Server, 1),
            t(TargetKind::Server, 2),
        );
        let (ip, net) = (t(TargetKind::FloatingIp, 0), t(TargetKind::Network, 0));
        for (command, targets, expected) in [
            (Command::Start, vec![&s1, &s2], "start 2 slaves"),
            (Command::Start, vec![&m], "start the master"),
            (Command::Shutdown, vec![&m], "shutdown the master"),
            (Command::Shutdown, vec![&s2], "shutdown 1 slave"),
            (Command::Delete, vec![&m, &s1, &s2], "delete 3 servers"),
            (Command::Delete, vec![&m], "delete 1 server"),
            (
                Command::Delete,
                vec![&ip, &net],
                "delete the floating IP and the private network",
            ),
            (Command::Delete, vec![&net], "delete the private network"),
            (Command::Delete, vec![&ip], "delete the floating IP"),
        ] {
            assert_eq!(describe(command, &targets), expected);
        }
    }
}
