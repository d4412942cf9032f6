//! What a create asks for (SPEC §5): the original's fields and defaults, every rule they are
//! held to, each refusal in the original's words, the flavor a master or a slave is made of,
//! and whether the quota of the project leaves room. Pure: the HTTP side brings what
//! ~okeanos says (the flavors, the projects, what is left), and this module decides.

use serde_json::{json, Map, Value};

use crate::build::IpAllocation;
use crate::okeanos::{Flavor, Left};

/// Flavor values a create may ask for, as the original's create restricts them.
const MIN_VCPUS: u64 = 2;
const MIN_RAM_MIB: u64 = 2048;
const MIN_DISK_GIB: u64 = 10;

/// A create request whose every field is valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Asked {
    pub instance_name: String,
    pub master_name: String,
    pub project_name: String,
    pub slaves: u32,
    pub master: Shape,
    pub slave: Shape,
    pub ip_allocation: IpAllocation,
    pub network_request: u64,
    pub public_key_name: Vec<String>,
    pub kafka_input_topics: Vec<String>,
    pub kafka_output_topics: Vec<String>,
}

/// What a VM is made of: vcpus, ram (MiB) and disk (GiB).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub vcpus: u64,
    pub ram: u64,
    pub disk: u64,
}

/// The values each of vcpus, ram and disk may take: every value of the flavors ~okeanos lets
/// servers be made of, sorted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Choices {
    pub vcpus: Vec<u64>,
    pub ram: Vec<u64>,
    pub disk: Vec<u64>,
}

impl Choices {
    /// Every value of the `allow_create` flavors (what the create form shows).
    pub fn all(flavors: &[Flavor]) -> Choices {
        let values = |f: fn(&Flavor) -> u64| {
            let mut v: Vec<u64> = flavors.iter().filter(|x| x.allow_create).map(f).collect();
            v.sort_unstable();
            v.dedup();
            v
        };
        Choices {
            vcpus: values(|f| f.vcpus),
            ram: values(|f| f.ram),
            disk: values(|f| f.disk),
        }
    }

    /// Those a create may ask for: as [`Choices::all`], restricted as the original's create
    /// restricts them.
    pub fn for_create(flavors: &[Flavor]) -> Choices {
        let all = Choices::all(flavors);
        Choices {
            vcpus: all.vcpus.into_iter().filter(|v| *v >= MIN_VCPUS).collect(),
            ram: all.ram.into_iter().filter(|v| *v >= MIN_RAM_MIB).collect(),
            disk: all
                .disk
                .into_iter()
                .filter(|v| *v >= MIN_DISK_GIB)
                .collect(),
        }
    }
}

/// The refusal of a field, as the original's clients read it: `"<field>: <sentence>"`.
fn refusal(field: &str, sentence: &str) -> String {
    format!("{field}: {sentence}")
}

const REQUIRED: &str = "This field is required.";

/// Reads and checks every field of `body` (a JSON object) against `choices`; returns the
/// request, or every refusal at once, in the order of the fields.
pub fn read(body: &Map<String, Value>, choices: &Choices) -> Result<Asked, Vec<String>> {
    let mut refused = Vec::new();
    let mut text = |field: &str| -> Option<String> {
        let sentence = match body.get(field) {
            None | Some(Value::Null) => REQUIRED,
            Some(Value::String(s)) if s.trim().is_empty() => REQUIRED,
            Some(Value::String(s)) if s.chars().count() > 255 => {
                "Ensure this field has no more than 255 characters."
            }
            Some(Value::String(s)) if s.chars().any(char::is_control) => {
                "Ensure this field has no control characters."
            }
            Some(Value::String(s)) => return Some(s.clone()),
            Some(_) => "Not a valid string.",
        };
        refused.push(refusal(field, sentence));
        None
    };
    let instance_name = text("instance_name");
    let master_name = text("master_name");
    let project_name = text("project_name");
    let number = |field: &str| -> Result<u64, &'static str> {
        match body.get(field) {
            None | Some(Value::Null) => Err(REQUIRED),
            Some(v) => (v.as_u64().or_else(|| v.as_str()?.trim().parse().ok()))
                .ok_or("A valid integer is required."),
        }
    };
    let mut counted = |field: &str| match number(field) {
        Ok(n) => Some(n),
        Err(sentence) => {
            refused.push(refusal(field, sentence));
            None
        }
    };
    let slaves = counted("slaves");
    let values = [
        (
            "vcpus_master",
            "Wrong Number of master vcpus",
            &choices.vcpus,
        ),
        ("vcpus_slave", "Wrong Number of slave vcpus", &choices.vcpus),
        ("ram_master", "Wrong Amount of master ram", &choices.ram),
        ("ram_slave", "Wrong Amount of slave ram", &choices.ram),
        ("disk_master", "Wrong Size of master disk", &choices.disk),
        ("disk_slave", "Wrong Size of slave disk", &choices.disk),
    ];
    let mut shape = Vec::new();
    for (field, wrong, allowed) in values {
        let n = match number(field) {
            Ok(n) if allowed.contains(&n) => Some(n),
            Ok(_) => {
                let list: Vec<String> = allowed.iter().map(u64::to_string).collect();
                let sentence = format!("{wrong}, available choices [{}].", list.join(", "));
                refused.push(refusal(field, &sentence));
                None
            }
            Err(sentence) => {
                refused.push(refusal(field, sentence));
                None
            }
        };
        shape.push(n);
    }
    if slaves == Some(0) {
        refused.push(refusal(
            "slaves",
            "Ensure this value is greater than or equal to 1.",
        ));
    }
    let ip_allocation = match body.get("ip_allocation") {
        None | Some(Value::Null) => Some(IpAllocation::Master),
        Some(v) => {
            let parsed = v.as_str().and_then(IpAllocation::parse);
            if parsed.is_none() {
                let choices = "Wrong choice for ip_allocation, available choices ['none', \
                               'master', 'all'].";
                refused.push(refusal("ip_allocation", choices));
            }
            parsed
        }
    };
    let network_request = match body.get("network_request") {
        None | Some(Value::Null) => Some(1),
        Some(v) => {
            let n = v.as_u64().filter(|n| *n == 1);
            if n.is_none() {
                let sentence = "Wrong choice for network_request, available choices [1].";
                refused.push(refusal("network_request", sentence));
            }
            n
        }
    };
    let mut names = |field: &str| -> Vec<String> {
        match body.get(field) {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) if items.iter().all(Value::is_string) => items
                .iter()
                .filter_map(|s| Some(s.as_str()?.to_string()))
                .collect(),
            Some(_) => {
                refused.push(refusal(field, "Expected a list of strings."));
                Vec::new()
            }
        }
    };
    let public_key_name = names("public_key_name");
    let kafka_input_topics = names("kafka_input_topics");
    let kafka_output_topics = names("kafka_output_topics");
    if !refused.is_empty() {
        return Err(refused);
    }
    let (Some(instance_name), Some(master_name), Some(project_name), Some(slaves)) =
        (instance_name, master_name, project_name, slaves)
    else {
        return Err(vec![refusal("instance_name", REQUIRED)]);
    };
    let [Some(vm), Some(vs), Some(rm), Some(rs), Some(dm), Some(ds)] = shape[..] else {
        return Err(vec![refusal("vcpus_master", REQUIRED)]);
    };
    Ok(Asked {
        instance_name,
        master_name,
        project_name,
        slaves: u32::try_from(slaves).unwrap_or(u32::MAX),
        master: Shape {
            vcpus: vm,
            ram: rm,
            disk: dm,
        },
        slave: Shape {
            vcpus: vs,
            ram: rs,
            disk: ds,
        },
        ip_allocation: ip_allocation.unwrap_or(IpAllocation::Master),
        network_request: network_request.unwrap_or(1),
        public_key_name,
        kafka_input_topics,
        kafka_output_topics,
    })
}

impl Asked {
    /// What the owner asked for, as `instance_info` shows it, defaults filled in.
    pub fn info(&self) -> Value {
        json!({
            "instance_name": self.instance_name,
            "master_name": self.master_name,
            "project_name": self.project_name,
            "slaves": self.slaves,
            "vcpus_master": self.master.vcpus,
            "vcpus_slave": self.slave.vcpus,
            "ram_master": self.master.ram,
            "ram_slave": self.slave.ram,
            "disk_master": self.master.disk,
            "disk_slave": self.slave.disk,
            "ip_allocation": self.ip_allocation.name(),
            "network_request": self.network_request,
            "public_key_name": self.public_key_name,
            "kafka_input_topics": self.kafka_input_topics,
            "kafka_output_topics": self.kafka_output_topics,
        })
    }

    /// What makes two creates the same request (for an `Idempotency-Key`): every field.
    pub fn fingerprint_text(&self) -> String {
        format!("create {}", self.info())
    }

    /// How many floating IPs it takes.
    pub fn floating_ips(&self) -> u64 {
        match self.ip_allocation {
            IpAllocation::None => 0,
            IpAllocation::Master => 1,
            IpAllocation::All => u64::from(self.slaves) + 1,
        }
    }

    /// The refusal of a shape no flavor has, naming the master or the slaves.
    pub fn no_flavor(role: &str, shape: Shape) -> String {
        refusal(
            &format!("flavor_{role}"),
            &format!(
                "No flavor has {} vcpus, {} MiB of ram and {} GiB of disk for the {role}.",
                shape.vcpus, shape.ram, shape.disk
            ),
        )
    }

    /// The first resource `left` is short of, as the refusal says it (SPEC §5), or None when
    /// the cluster fits.
    pub fn short_of(&self, left: &Left, project: &str) -> Option<String> {
        const MIB: u64 = 1 << 20;
        const GIB: u64 = 1 << 30;
        let n = u64::from(self.slaves);
        let (m, s) = (self.master, self.slave);
        let asked = [
            ("VMs", 1 + n, left.vm, 1, ""),
            ("CPUs", m.vcpus + n * s.vcpus, left.cpu, 1, ""),
            ("ram", m.ram + n * s.ram, left.ram, MIB, " MiB"),
            ("disk", m.disk + n * s.disk, left.disk, GIB, " GiB"),
            ("floating IPs", self.floating_ips(), left.floating_ip, 1, ""),
            ("private networks", 1, left.private_network, 1, ""),
        ];
        asked
            .into_iter()
            .find_map(|(what, want, have, unit, suffix)| {
                let have = have / unit;
                (want > have).then(|| {
                    format!(
                        "Not enough {what} quota in project {project}: {want}{suffix} asked, \
                     {have}{suffix} left."
                    )
                })
            })
    }
}

/// The flavor of `shape`, if one that allows creating servers has it exactly.
pub fn flavor_of(flavors: &[Flavor], shape: Shape) -> Option<&Flavor> {
    flavors
        .iter()
        .filter(|f| f.allow_create)
        .find(|f| f.vcpus == shape.vcpus && f.ram == shape.ram && f.disk == shape.disk)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flavor(id: &str, vcpus: u64, ram: u64, disk: u64, allow_create: bool) -> Flavor {
        Flavor {
            id: id.into(),
            vcpus,
            ram,
            disk,
            allow_create,
        }
    }

    fn flavors() -> Vec<Flavor> {
        vec![
            flavor("1", 1, 1024, 5, true),
            flavor("2", 2, 2048, 10, true),
            flavor("3", 4, 4096, 20, true),
            flavor("4", 8, 8192, 40, false),
        ]
    }

    fn body(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    fn good() -> Value {
        json!({"instance_name": "hadoop", "master_name": "m", "project_name": "p",
               "slaves": 2, "vcpus_master": 4, "vcpus_slave": 2, "ram_master": 4096,
               "ram_slave": 2048, "disk_master": 20, "disk_slave": 10})
    }

    fn check(v: Value, expected: &[&str]) {
        let choices = Choices::for_create(&flavors());
        let got = read(&body(v), &choices).err().unwrap_or_default();
        assert_eq!(got, expected);
    }

    #[test]
    fn the_form_shows_every_value_and_a_create_takes_the_larger_ones() {
        let all = Choices::all(&flavors());
        assert_eq!(all.vcpus, [1, 2, 4]);
        let create = Choices::for_create(&flavors());
        assert_eq!(
            (create.vcpus, create.ram, create.disk),
            (vec![2, 4], vec![2048, 4096], vec![10, 20])
        );
    }

    #[test]
    fn a_good_request_with_its_defaults() {
        let asked = read(&body(good()), &Choices::for_create(&flavors())).unwrap();
        assert_eq!(asked.slaves, 2);
        assert_eq!(asked.ip_allocation, IpAllocation::Master);
        assert_eq!(asked.network_request, 1);
        assert!(asked.public_key_name.is_empty());
        assert_eq!(asked.info()["ip_allocation"], "master");
        assert_eq!(asked.floating_ips(), 1);
    }

    #[test]
    fn every_refusal_at_once_in_the_originals_words() {
        check(
            json!({"slaves": 0, "vcpus_master": 3, "ram_slave": "lots", "ip_allocation": "some",
                   "master_name": "a\u{7}b", "public_key_name": "k"}),
            &[
                "instance_name: This field is required.",
                "master_name: Ensure this field has no control characters.",
                "project_name: This field is required.",
                "vcpus_master: Wrong Number of master vcpus, available choices [2, 4].",
                "vcpus_slave: This field is required.",
                "ram_master: This field is required.",
                "ram_slave: A valid integer is required.",
                "disk_master: This field is required.",
                "disk_slave: This field is required.",
                "slaves: Ensure this value is greater than or equal to 1.",
                "ip_allocation: Wrong choice for ip_allocation, available choices ['none', \
                 'master', 'all'].",
                "public_key_name: Expected a list of strings.",
            ],
        );
        let mut v = good();
        v["disk_slave"] = json!(40);
        v["ram_master"] = json!(1024);
        check(
            v,
            &[
                "ram_master: Wrong Amount of master ram, available choices [2048, 4096].",
                "disk_slave: Wrong Size of slave disk, available choices [10, 20].",
            ],
        );
        let mut v = good();
        v["instance_name"] = json!("x".repeat(256));
        v["network_request"] = json!(2);
        check(
            v,
            &[
                "instance_name: Ensure this field has no more than 255 characters.",
                "network_request: Wrong choice for network_request, available choices [1].",
            ],
        );
    }

    #[test]
    fn a_shape_needs_a_flavor_that_allows_creating() {
        let all = flavors();
        let shape = |vcpus, ram, disk| Shape { vcpus, ram, disk };
        assert_eq!(flavor_of(&all, shape(4, 4096, 20)).unwrap().id, "3");
        assert_eq!(flavor_of(&all, shape(4, 2048, 20)), None);
        assert_eq!(
            flavor_of(&all, shape(8, 8192, 40)),
            None,
            "not allow_create"
        );
        assert_eq!(
            Asked::no_flavor("master", shape(4, 2048, 20)),
            "flavor_master: No flavor has 4 vcpus, 2048 MiB of ram and 20 GiB of disk for \
             the master."
        );
    }

    #[test]
    fn quotas_name_the_first_resource_short() {
        let asked = read(&body(good()), &Choices::for_create(&flavors())).unwrap();
        let plenty = Left {
            vm: 10,
            cpu: 100,
            ram: 100 << 30,
            disk: 1000 << 30,
            floating_ip: 5,
            private_network: 5,
            pithos_space: 0,
        };
        assert_eq!(asked.short_of(&plenty, "p"), None);
        let short_ram = Left {
            ram: 4096 << 20,
            ..plenty
        };
        assert_eq!(
            asked.short_of(&short_ram, "lambda.grnet.gr").as_deref(),
            Some("Not enough ram quota in project lambda.grnet.gr: 8192 MiB asked, 4096 MiB left.")
        );
        let no_vm_no_ip = Left {
            vm: 2,
            floating_ip: 0,
            ..plenty
        };
        assert_eq!(
            asked.short_of(&no_vm_no_ip, "p").as_deref(),
            Some("Not enough VMs quota in project p: 3 asked, 2 left.")
        );
    }
}
