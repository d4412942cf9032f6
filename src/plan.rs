//! An action's plan: the things on ~okeanos it acts on (its targets) and the order it acts on
//! them in (its phases). Pure data and one pure function, [`plan`]: the store saves a plan
//! when an action is first taken up, and the engine walks it, phase after phase.

use crate::build::Build;
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
    /// its kind and id (`floatingip/7`, `network/8`); one whose id is not known yet by its
    /// kind and slot (`server#1`, `floatingip#0`, `network`).
    pub fn label(&self) -> String {
        let kind = match self.kind {
            TargetKind::Server => "server",
            TargetKind::FloatingIp => "floatingip",
            TargetKind::Network => "network",
            TargetKind::Subnet => "subnet",
        };
        match (&self.id, self.kind) {
            (Some(id), TargetKind::Server) => id.clone(),
            (Some(id), _) => format!("{kind}/{id}"),
            (None, TargetKind::Server | TargetKind::FloatingIp) => format!("{kind}#{}", self.slot),
            (None, _) => kind.to_string(),
        }
    }
}

/// What an action does to each of its targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Start,
    Shutdown,
    Delete,
    /// Make it (finding it first, if an earlier try made it already).
    Create,
}

impl Command {
    pub const ALL: [Command; 4] = [
        Command::Start,
        Command::Shutdown,
        Command::Delete,
        Command::Create,
    ];

    /// The command of an action.
    pub fn of(kind: ActionKind) -> Command {
        match kind {
            ActionKind::Start => Command::Start,
            ActionKind::Stop => Command::Shutdown,
            ActionKind::Destroy => Command::Delete,
            ActionKind::Create => Command::Create,
        }
    }

    /// The word of the steps, the log and the store: `start`, `shutdown`, `delete`, `create`.
    pub fn name(self) -> &'static str {
        match self {
            Command::Start => "start",
            Command::Shutdown => "shutdown",
            Command::Delete => "delete",
            Command::Create => "create",
        }
    }

    pub fn parse(name: &str) -> Option<Command> {
        Command::ALL.into_iter().find(|c| c.name() == name)
    }
}

/// The ~okeanos things an instance is made of, as the store knows them: each by its place,
/// None where it is not known (still to be made, or made and not recorded).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Cluster {
    /// The servers by slot: the master's, then the slaves'.
    pub servers: Vec<Option<String>>,
    pub network: Option<String>,
    /// The floating IPs by slot.
    pub floating_ips: Vec<Option<String>>,
    /// Made by this service's create: its servers carry metadata that names their slots, and
    /// its network a name, so that what was made and not recorded can be found.
    pub built: bool,
}

impl Cluster {
    /// A cluster of recorded servers (the master first), network and floating IP.
    pub fn of(servers: &[&str], network: Option<&str>, floating_ip: Option<&str>) -> Cluster {
        Cluster {
            servers: servers.iter().map(|s| Some(s.to_string())).collect(),
            network: network.map(str::to_string),
            floating_ips: floating_ip
                .map(|ip| Some(ip.to_string()))
                .into_iter()
                .collect(),
            built: false,
        }
    }

    /// What `build` makes, none of it made yet.
    pub fn to_build(build: &Build) -> Cluster {
        Cluster {
            servers: vec![None; build.slaves as usize + 1],
            network: None,
            floating_ips: vec![None; build.floating_ips() as usize],
            built: true,
        }
    }
}

/// Targets grouped in phases: every target of a phase is acted on at once, and a phase
/// begins once every target of the one before is done. Every target gets `command`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub command: Command,
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
/// slave at once; a destroy deletes every server at once, then the floating IPs and the
/// private network; a create makes the private network and the floating IPs, then the
/// network's subnet, then every server at once. Empty phases are left out.
pub fn plan(kind: ActionKind, cluster: &Cluster) -> Plan {
    let target = |kind: TargetKind, slot: usize, id: &Option<String>| Target {
        kind,
        slot: slot as u32,
        id: id.clone(),
    };
    let servers = || -> Vec<Target> {
        let all = cluster.servers.iter().enumerate();
        all.map(|(slot, id)| target(TargetKind::Server, slot, id))
            .collect()
    };
    let known = |targets: Vec<Target>| -> Vec<Target> {
        targets.into_iter().filter(|t| t.id.is_some()).collect()
    };
    let (master, slaves): (Vec<Target>, Vec<Target>) =
        known(servers()).into_iter().partition(Target::is_master);
    let floating_ips = || -> Vec<Target> {
        let all = cluster.floating_ips.iter().enumerate();
        all.map(|(slot, id)| target(TargetKind::FloatingIp, slot, id))
            .collect()
    };
    let network = target(TargetKind::Network, 0, &cluster.network);
    let phases = match kind {
        ActionKind::Start => vec![slaves, master],
        ActionKind::Stop => vec![master, slaves],
        ActionKind::Destroy => {
            // A built cluster's servers and network are looked for where none is recorded;
            // a floating IP cannot be told from any other of the owner's, so only recorded
            // ones are deleted.
            let servers = if cluster.built {
                servers()
            } else {
                known(servers())
            };
            let mut resources = known(floating_ips());
            if cluster.network.is_some() || cluster.built {
                resources.push(network);
            }
            vec![servers, resources]
        }
        ActionKind::Create => {
            let subnet = target(TargetKind::Subnet, 0, &None);
            let first = std::iter::once(network).chain(floating_ips()).collect();
            vec![first, vec![subnet], servers()]
        }
    };
    Plan {
        command: Command::of(kind),
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
        (1, Command::Delete | Command::Create) => format!("{verb} 1 server"),
        (n, Command::Delete | Command::Create) => format!("{verb} {n} servers"),
        (_, _) if master => format!("{verb} the master"),
        (1, _) => format!("{verb} 1 slave"),
        (n, _) => format!("{verb} {n} slaves"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::tests::build;
    use crate::build::IpAllocation;

    fn cluster(servers: &[&str], network: Option<&str>, ip: Option<&str>) -> Cluster {
        Cluster::of(servers, network, ip)
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
    fn create_makes_the_network_and_ips_then_the_subnet_then_every_server() {
        let all = Cluster::to_build(&build(2, IpAllocation::All));
        check(
            ActionKind::Create,
            &all,
            &[
                &["network", "floatingip#0", "floatingip#1", "floatingip#2"],
                &["subnet"],
                &["server#0", "server#1", "server#2"],
            ],
        );
        let none = Cluster::to_build(&build(1, IpAllocation::None));
        check(
            ActionKind::Create,
            &none,
            &[&["network"], &["subnet"], &["server#0", "server#1"]],
        );
        assert_eq!(plan(ActionKind::Create, &none).command, Command::Create);
    }

    #[test]
    fn destroying_a_built_cluster_looks_for_what_was_not_recorded() {
        let mut c = Cluster::to_build(&build(2, IpAllocation::Master));
        c.servers[1] = Some("s1".into());
        c.floating_ips[0] = Some("ip".into());
        check(
            ActionKind::Destroy,
            &c,
            &[
                &["server#0", "s1", "server#2"],
                &["floatingip/ip", "network"],
            ],
        );
        // Nothing of it made: only the look-ups.
        let bare = Cluster::to_build(&build(0, IpAllocation::Master));
        check(ActionKind::Destroy, &bare, &[&["server#0"], &["network"]]);
        assert_eq!(plan(ActionKind::Destroy, &bare).command, Command::Delete);
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
            (Command::Create, vec![&m, &s1, &s2], "create 3 servers"),
            (
                Command::Create,
                vec![&net, &ip],
                "create the floating IP and the private network",
            ),
        ] {
            assert_eq!(describe(command, &targets), expected);
        }
    }
}
