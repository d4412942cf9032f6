//! What a create is checked against: the flavors and images of Cyclades, the caller's
//! projects and what is left of their quotas (Astakos `account`), and the caller's public
//! keys (Cyclades `userdata`).

use std::collections::BTreeMap;

use serde_json::Value;

use super::{Client, OkeanosError};

/// A flavor of Cyclades.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flavor {
    pub id: String,
    pub vcpus: u64,
    /// MiB.
    pub ram: u64,
    /// GiB.
    pub disk: u64,
    /// Whether servers may be created of it (`SNF:allow_create`).
    pub allow_create: bool,
}

/// A project the caller is a member of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Project {
    pub id: String,
    pub name: String,
    /// Only an active project can be used.
    pub active: bool,
}

/// What is left of a project's quotas for the caller: the smaller of the caller's own left
/// and the project's left, in ~okeanos's units (ram, disk and pithos space in bytes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Left {
    pub vm: u64,
    pub cpu: u64,
    pub ram: u64,
    pub disk: u64,
    pub floating_ip: u64,
    pub private_network: u64,
    pub pithos_space: u64,
}

impl Client {
    /// `GET {compute}/flavors/detail`.
    pub fn flavors(&self, compute: &str, token: &str) -> Result<Vec<Flavor>, OkeanosError> {
        let url = format!("{compute}/flavors/detail");
        let v = self.get_json("flavors", &url, token)?;
        let all = v["flavors"]
            .as_array()
            .ok_or_else(|| OkeanosError::reply("flavors reply without flavors"))?;
        Ok(all
            .iter()
            .filter_map(|f| {
                Some(Flavor {
                    id: id_of(&f["id"])?,
                    vcpus: f["vcpus"].as_u64()?,
                    ram: f["ram"].as_u64()?,
                    disk: f["disk"].as_u64()?,
                    allow_create: f["SNF:allow_create"].as_bool().unwrap_or(true),
                })
            })
            .collect())
    }

    /// `GET {compute}/images/detail`: (id, name) of each image.
    pub fn images(
        &self,
        compute: &str,
        token: &str,
    ) -> Result<Vec<(String, String)>, OkeanosError> {
        let url = format!("{compute}/images/detail");
        let v = self.get_json("images", &url, token)?;
        let all = v["images"]
            .as_array()
            .ok_or_else(|| OkeanosError::reply("images reply without images"))?;
        Ok(all
            .iter()
            .filter_map(|i| Some((id_of(&i["id"])?, i["name"].as_str()?.to_string())))
            .collect())
    }

    /// `GET {account}/projects?mode=member`.
    pub fn projects(&self, account: &str, token: &str) -> Result<Vec<Project>, OkeanosError> {
        let url = format!("{account}/projects?mode=member");
        let v = self.get_json("projects", &url, token)?;
        let all = v
            .as_array()
            .ok_or_else(|| OkeanosError::reply("projects reply is not a list"))?;
        Ok(all
            .iter()
            .filter_map(|p| {
                Some(Project {
                    id: p["id"].as_str()?.to_string(),
                    name: p["name"].as_str()?.to_string(),
                    active: p["state"] == "active",
                })
            })
            .collect())
    }

    /// `GET {account}/quotas`: what is left in each project, by project id.
    pub fn quotas(
        &self,
        account: &str,
        token: &str,
    ) -> Result<BTreeMap<String, Left>, OkeanosError> {
        let v = self.get_json("quotas", &format!("{account}/quotas"), token)?;
        let all = v
            .as_object()
            .ok_or_else(|| OkeanosError::reply("quotas reply is not an object"))?;
        Ok(all.iter().map(|(id, q)| (id.clone(), left(q))).collect())
    }

    /// `GET {userdata}/keys`: the caller's public keys, as ~okeanos writes them.
    pub fn keys(&self, userdata: &str, token: &str) -> Result<Vec<Value>, OkeanosError> {
        let v = self.get_json("keys", &format!("{userdata}/keys"), token)?;
        match v {
            Value::Array(keys) => Ok(keys),
            _ => Err(OkeanosError::reply("keys reply is not a list")),
        }
    }
}

/// An id written as a string or a number.
pub(super) fn id_of(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// What is left of one project's quotas: per resource, the smaller of the user's
/// `limit − usage − pending` and the project's `project_limit − project_usage −
/// project_pending` (never below zero).
fn left(q: &Value) -> Left {
    let one = |resource: &str| {
        let r = &q[resource];
        let n = |k: &str| r[k].as_u64().unwrap_or(0);
        let mine = n("limit").saturating_sub(n("usage") + n("pending"));
        let project =
            (n("project_limit")).saturating_sub(n("project_usage") + n("project_pending"));
        if r.is_null() {
            0
        } else {
            mine.min(project)
        }
    };
    Left {
        vm: one("cyclades.vm"),
        cpu: one("cyclades.cpu"),
        ram: one("cyclades.ram"),
        disk: one("cyclades.disk"),
        floating_ip: one("cyclades.floating_ip"),
        private_network: one("cyclades.network.private"),
        pithos_space: one("pithos.diskspace"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn what_is_left_is_the_smaller_of_the_users_and_the_projects() {
        let q = json!({
            "cyclades.vm": {"limit": 10, "usage": 2, "pending": 1,
                            "project_limit": 20, "project_usage": 18, "project_pending": 0},
            "cyclades.cpu": {"limit": 8, "usage": 2, "pending": 0,
                             "project_limit": 100, "project_usage": 0, "project_pending": 0},
            "cyclades.ram": {"limit": 4, "usage": 9, "pending": 0,
                             "project_limit": 100, "project_usage": 0, "project_pending": 0},
        });
        let l = left(&q);
        assert_eq!((l.vm, l.cpu, l.ram, l.disk), (2, 6, 0, 0));
    }
}
