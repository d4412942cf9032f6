//! The calls a create makes: private networks and their subnets, floating IPs, and servers,
//! each with the look-up that finds one already made (by a call that timed out, or by a run
//! the service did not live to record), so that nothing is made twice.

use serde_json::{json, Value};

use super::account::id_of;
use super::error::fault;
use super::{Client, Method, OkeanosError};

/// The network a cluster's private network is named by: Synnefo's networks have names, and
/// this one is the instance's.
pub fn network_name(instance: &str) -> String {
    format!("lambda-{instance}")
}

/// A floating IP as the network API lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FloatingIp {
    pub id: String,
    pub address: String,
    /// The network a server reaches it on.
    pub network_id: String,
    /// Attached to no server.
    pub free: bool,
}

/// A server to make.
#[derive(Debug, Clone)]
pub struct NewServer<'a> {
    pub name: &'a str,
    pub image: &'a str,
    pub flavor: &'a str,
    pub project: &'a str,
    /// The cluster's private network.
    pub network: &'a str,
    /// The floating IP it gets, if any.
    pub floating_ip: Option<&'a FloatingIp>,
    /// The contents of `/root/.ssh/authorized_keys`, if any key is to be installed.
    pub authorized_keys: &'a str,
    /// The metadata that names the server's instance and place: what finds it again.
    pub instance: &'a str,
    pub slot: u32,
}

impl Client {
    /// A call whose answer is any 2xx with a JSON body: Synnefo answers 201 for a new network
    /// or subnet, and 200 or 201 for a floating IP.
    fn make(
        &self,
        op: &'static str,
        url: &str,
        token: &str,
        body: &Value,
    ) -> Result<Value, OkeanosError> {
        let (status, reply) = self.with_token(op, Method::Post, url, token, Some(body))?;
        if !(200..300).contains(&status) {
            return Err(fault(status, &reply));
        }
        serde_json::from_slice(&reply).map_err(|e| OkeanosError::Reply {
            what: format!("the {op} reply is not JSON"),
            source: Some(std::sync::Arc::new(e)),
        })
    }

    /// The private network named `name`, if the caller has one: `GET {network}/networks`.
    pub fn find_network(
        &self,
        network: &str,
        token: &str,
        name: &str,
    ) -> Result<Option<String>, OkeanosError> {
        let v = self.get_json("networks", &format!("{network}/networks"), token)?;
        Ok(list(&v, "networks")?
            .iter()
            .find(|n| n["name"] == name)
            .and_then(|n| id_of(&n["id"])))
    }

    /// `POST {network}/networks`: a MAC-filtered private network in `project`.
    pub fn create_network(
        &self,
        network: &str,
        token: &str,
        name: &str,
        project: &str,
    ) -> Result<String, OkeanosError> {
        let body = json!({"network": {"name": name, "type": "MAC_FILTERED", "project": project}});
        let v = self.make(
            "create_network",
            &format!("{network}/networks"),
            token,
            &body,
        )?;
        id_of(&v["network"]["id"]).ok_or_else(|| OkeanosError::reply("network reply without id"))
    }

    /// The subnet of network `network_id`, if it has one: `GET {network}/subnets`.
    pub fn find_subnet(
        &self,
        network: &str,
        token: &str,
        network_id: &str,
    ) -> Result<Option<String>, OkeanosError> {
        let v = self.get_json("subnets", &format!("{network}/subnets"), token)?;
        Ok(list(&v, "subnets")?
            .iter()
            .find(|s| id_of(&s["network_id"]).as_deref() == Some(network_id))
            .and_then(|s| id_of(&s["id"])))
    }

    /// `POST {network}/subnets`: 192.168.0.0/24 with DHCP on network `network_id`.
    pub fn create_subnet(
        &self,
        network: &str,
        token: &str,
        network_id: &str,
    ) -> Result<String, OkeanosError> {
        let body = json!({"subnet": {"network_id": network_id, "cidr": "192.168.0.0/24",
                                     "ip_version": 4, "enable_dhcp": true}});
        let v = self.make("create_subnet", &format!("{network}/subnets"), token, &body)?;
        id_of(&v["subnet"]["id"]).ok_or_else(|| OkeanosError::reply("subnet reply without id"))
    }

    /// The caller's floating IPs: `GET {network}/floatingips`.
    pub fn floating_ips(
        &self,
        network: &str,
        token: &str,
    ) -> Result<Vec<FloatingIp>, OkeanosError> {
        let v = self.get_json("floatingips", &format!("{network}/floatingips"), token)?;
        Ok(list(&v, "floatingips")?
            .iter()
            .filter_map(floating_ip)
            .collect())
    }

    /// `POST {network}/floatingips`: a new floating IP in `project`.
    pub fn create_floating_ip(
        &self,
        network: &str,
        token: &str,
        project: &str,
    ) -> Result<FloatingIp, OkeanosError> {
        let body = json!({"floatingip": {"project": project}});
        let url = format!("{network}/floatingips");
        let v = self.make("create_floatingip", &url, token, &body)?;
        floating_ip(&v["floatingip"])
            .ok_or_else(|| OkeanosError::reply("floating IP reply without id or address"))
    }

    /// `POST {compute}/servers`: returns the new server's id. Its metadata names its instance,
    /// role and slot, so that `servers/detail` finds it again.
    pub fn create_server(
        &self,
        compute: &str,
        token: &str,
        s: &NewServer,
    ) -> Result<String, OkeanosError> {
        let mut networks = vec![json!({"uuid": s.network})];
        if let Some(ip) = s.floating_ip {
            networks.push(json!({"uuid": ip.network_id, "fixed_ip": ip.address}));
        }
        let personality: Vec<Value> = if s.authorized_keys.is_empty() {
            Vec::new()
        } else {
            vec![json!({"path": "/root/.ssh/authorized_keys",
                        "contents": base64(s.authorized_keys.as_bytes()),
                        "owner": "root", "group": "root", "mode": 0o600})]
        };
        let role = if s.slot == 0 { "master" } else { "slave" };
        let body = json!({"server": {
            "name": s.name, "imageRef": s.image, "flavorRef": s.flavor, "project": s.project,
            "networks": networks, "personality": personality,
            "metadata": {"lambda_instance": s.instance, "lambda_role": role,
                         "lambda_slot": s.slot.to_string()},
        }});
        let v = self.make("create_server", &format!("{compute}/servers"), token, &body)?;
        id_of(&v["server"]["id"]).ok_or_else(|| OkeanosError::reply("server reply without id"))
    }
}

/// The list under `key` of a reply.
fn list<'v>(v: &'v Value, key: &str) -> Result<&'v Vec<Value>, OkeanosError> {
    v[key]
        .as_array()
        .ok_or_else(|| OkeanosError::reply(format!("{key} reply without {key}")))
}

fn floating_ip(v: &Value) -> Option<FloatingIp> {
    Some(FloatingIp {
        id: id_of(&v["id"])?,
        address: v["floating_ip_address"].as_str()?.to_string(),
        network_id: id_of(&v["floating_network_id"]).unwrap_or_default(),
        free: v["instance_id"].is_null() && v["port_id"].is_null(),
    })
}

/// Standard base64 with padding, for a file's contents in `personality`.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_as_rfc_4648_says() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes()), encoded, "{plain}");
        }
    }

    #[test]
    fn floating_ips_are_free_when_attached_to_nothing() {
        let free = json!({"id": 7, "floating_ip_address": "83.212.1.2",
                          "floating_network_id": "2", "instance_id": null, "port_id": null});
        let ip = floating_ip(&free).unwrap();
        assert_eq!((ip.id.as_str(), ip.free), ("7", true));
        let used = json!({"id": "8", "floating_ip_address": "83.212.1.3",
                          "floating_network_id": "2", "instance_id": "101", "port_id": "5"});
        assert!(!floating_ip(&used).unwrap().free);
    }
}
