//! How a cluster the service creates is to be built: settled when the create is accepted,
//! kept with the instance, and read by the create's plan and its worker. Pure data.

/// Which VMs of a cluster get a floating IP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IpAllocation {
    None,
    Master,
    All,
}

impl IpAllocation {
    pub const ALL: [IpAllocation; 3] =
        [IpAllocation::None, IpAllocation::Master, IpAllocation::All];

    pub fn name(self) -> &'static str {
        match self {
            IpAllocation::None => "none",
            IpAllocation::Master => "master",
            IpAllocation::All => "all",
        }
    }

    pub fn parse(name: &str) -> Option<IpAllocation> {
        IpAllocation::ALL.into_iter().find(|a| a.name() == name)
    }
}

/// How a cluster is to be built: everything its create action needs besides the owner's
/// token, settled when the request was accepted.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Build {
    /// The ~okeanos project (uuid) every resource is made in.
    pub project: String,
    pub master_name: String,
    pub slaves: u32,
    pub master_flavor: String,
    pub slave_flavor: String,
    pub image: String,
    pub ip_allocation: IpAllocation,
    /// The contents of every VM's `/root/.ssh/authorized_keys` (empty: none installed).
    pub authorized_keys: String,
}

impl Build {
    /// How many floating IPs the cluster gets.
    pub fn floating_ips(&self) -> u32 {
        match self.ip_allocation {
            IpAllocation::None => 0,
            IpAllocation::Master => 1,
            IpAllocation::All => self.slaves + 1,
        }
    }

    /// The floating IP slot of the server at `slot`, if it gets one.
    pub fn floating_ip_of(&self, slot: u32) -> Option<u32> {
        (slot < self.floating_ips()).then_some(slot)
    }

    /// The name of the server at `slot`: the master's as asked, the slaves `lambda-node1` on.
    pub fn server_name(&self, slot: u32) -> String {
        match slot {
            0 => self.master_name.clone(),
            n => format!("lambda-node{n}"),
        }
    }

    pub fn flavor(&self, slot: u32) -> &str {
        match slot {
            0 => &self.master_flavor,
            _ => &self.slave_flavor,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A build of a master and `slaves` slaves, for the tests of what is made of it.
    pub(crate) fn build(slaves: u32, ip_allocation: IpAllocation) -> Build {
        Build {
            project: "p".into(),
            master_name: "m".into(),
            slaves,
            master_flavor: "f1".into(),
            slave_flavor: "f2".into(),
            image: "i".into(),
            ip_allocation,
            authorized_keys: String::new(),
        }
    }

    #[test]
    fn a_build_names_its_servers_and_gives_out_its_ips() {
        let b = build(3, IpAllocation::Master);
        assert_eq!(b.server_name(0), "m");
        assert_eq!(b.server_name(2), "lambda-node2");
        assert_eq!((b.flavor(0), b.flavor(3)), ("f1", "f2"));
        assert_eq!((b.floating_ip_of(0), b.floating_ip_of(1)), (Some(0), None));
        let all = build(3, IpAllocation::All);
        assert_eq!((all.floating_ips(), all.floating_ip_of(3)), (4, Some(3)));
        assert_eq!(build(3, IpAllocation::None).floating_ips(), 0);
        for a in IpAllocation::ALL {
            assert_eq!(IpAllocation::parse(a.name()), Some(a));
        }
    }
}
