//! What a create builds on and makes, as data: flavors, images, projects and their quotas,
//! public keys, private networks and their subnets, floating IPs. `catalog.rs` reads it, and
//! `make.rs` changes it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The network every floating IP belongs to.
pub const FLOATING_NETWORK: &str = "floating-net";

/// A flavor servers can be made of.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Flavor {
    pub id: String,
    pub vcpus: u64,
    /// MiB.
    pub ram: u64,
    /// GiB.
    pub disk: u64,
    #[serde(default = "yes")]
    pub allow_create: bool,
}

fn yes() -> bool {
    true
}

/// An image servers can be made from.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Image {
    pub id: String,
    pub name: String,
}

/// A project, its members and the limits of each member in it (the project's own limits are
/// the same, counted over every member).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Project {
    pub id: String,
    pub name: String,
    #[serde(default = "active")]
    pub state: String,
    pub members: Vec<String>,
    pub limits: Limits,
}

fn active() -> String {
    "active".into()
}

/// Quota limits, in ~okeanos's resources; ram in MiB and disk in GiB here (the quotas call
/// answers in bytes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub vm: u64,
    pub cpu: u64,
    pub ram: u64,
    pub disk: u64,
    pub floating_ip: u64,
    pub private_network: u64,
}

/// A public key a user uploaded.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Key {
    pub owner: String,
    pub name: String,
    pub content: String,
}

pub(crate) struct Network {
    pub(crate) owner: String,
    pub(crate) name: String,
    pub(crate) project: Option<String>,
}

pub(crate) struct Subnet {
    pub(crate) owner: String,
    pub(crate) network: String,
    pub(crate) cidr: String,
}

pub(crate) struct FloatingIp {
    pub(crate) owner: String,
    pub(crate) project: Option<String>,
    pub(crate) address: String,
    /// The server it is attached to.
    pub(crate) server: Option<String>,
}

/// Everything a create makes or reads.
#[derive(Default)]
pub(crate) struct World {
    pub(crate) flavors: Vec<Flavor>,
    pub(crate) images: Vec<Image>,
    pub(crate) projects: Vec<Project>,
    pub(crate) keys: Vec<Key>,
    pub(crate) networks: BTreeMap<String, Network>,
    pub(crate) subnets: BTreeMap<String, Subnet>,
    pub(crate) floating_ips: BTreeMap<String, FloatingIp>,
    /// Numbers new ids and addresses.
    pub(crate) made: u64,
}

impl World {
    pub(crate) fn next(&mut self) -> u64 {
        self.made += 1;
        self.made
    }

    pub(crate) fn flavor(&self, id: &str) -> Option<&Flavor> {
        self.flavors.iter().find(|f| f.id == id)
    }
}
