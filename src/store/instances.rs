//! The `lambda_instances`, `instance_servers` and `instance_floating_ips` tables: registering,
//! creating, reading and listing instances, and what a create has made of one.

use rusqlite::{params, Connection, OptionalExtension};

use super::{status_of, Result, Store, StoreError};
use crate::build::Build;
use crate::model::Status;
use crate::plan::{Cluster, Target, TargetKind};

/// A lambda instance as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Instance {
    pub id: String,
    pub name: String,
    pub owner: String,
    pub status: Status,
    pub failure_message: Option<String>,
    /// The master's server id; None while a create has not made it yet, or never did.
    pub master: Option<String>,
    /// The slaves' server ids, in order (those made so far, while a create runs).
    pub slaves: Vec<String>,
    pub created_at: i64,
    /// The private network destroy deletes, if any.
    pub network: Option<String>,
    /// What the owner asked for, for an instance the service created (JSON).
    pub info: Option<String>,
}

/// An instance as the list shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub id: String,
    pub name: String,
    pub status: Status,
    pub failure_message: Option<String>,
}

/// An instance to register: VMs someone else made.
#[derive(Debug, Clone, PartialEq)]
pub struct NewInstance {
    pub name: String,
    pub owner: String,
    pub master: String,
    pub slaves: Vec<String>,
    pub status: Status,
    pub network: Option<String>,
    /// The floating IPs a destroy deletes with the VMs.
    pub floating_ips: Vec<String>,
}

/// An instance's own columns, as `with_servers` takes them.
struct InstanceRow {
    id: String,
    name: String,
    owner: String,
    status: String,
    failure_message: Option<String>,
    created_at: i64,
    network: Option<String>,
    info: Option<String>,
}

/// The columns `instance_row` reads, in its order.
const INSTANCE_COLUMNS: &str = "i.id, i.name, i.owner, i.status, i.failure_message, \
     i.created_at, i.network_id, i.info";

/// Reads the columns of [`INSTANCE_COLUMNS`] (and ignores what follows).
fn instance_row(r: &rusqlite::Row) -> rusqlite::Result<InstanceRow> {
    Ok(InstanceRow {
        id: r.get(0)?,
        name: r.get(1)?,
        owner: r.get(2)?,
        status: r.get(3)?,
        failure_message: r.get(4)?,
        created_at: r.get(5)?,
        network: r.get(6)?,
        info: r.get(7)?,
    })
}

/// An instance from its row and its VMs, (position, server id) in order.
fn with_servers(row: InstanceRow, servers: Vec<(i64, String)>) -> Result<Instance> {
    let mut master = None;
    let mut slaves = Vec::new();
    for (position, id) in servers {
        match position {
            0 => master = Some(id),
            _ => slaves.push(id),
        }
    }
    Ok(Instance {
        status: status_of(row.status)?,
        id: row.id,
        name: row.name,
        owner: row.owner,
        failure_message: row.failure_message,
        master,
        slaves,
        created_at: row.created_at,
        network: row.network,
        info: row.info,
    })
}

/// The ~okeanos things instance `id` is made of: its servers and floating IPs by slot, its
/// private network, and whether the service built it.
pub(super) fn read_cluster(conn: &Connection, id: &str) -> Result<Cluster> {
    let row: Option<(Option<String>, Option<String>)> = conn
        .prepare_cached("SELECT network_id, build FROM lambda_instances WHERE id = ?1")?
        .query_row(params![id], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let (network, build) = row.unwrap_or_default();
    let build = build.as_deref().map(parse_build).transpose()?;
    let by_slot = |sql: &str| -> Result<Vec<(usize, String)>> {
        let rows = conn
            .prepare_cached(sql)?
            .query_map(params![id], |r| {
                Ok((r.get::<_, i64>(0)? as usize, r.get(1)?))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    };
    let place = |rows: Vec<(usize, String)>, at_least: usize| {
        let len = rows.iter().map(|(slot, _)| slot + 1).max().unwrap_or(0);
        let mut all = vec![None; len.max(at_least)];
        for (slot, id) in rows {
            all[slot] = Some(id);
        }
        all
    };
    let servers = by_slot(
        "SELECT position, server_id FROM instance_servers WHERE instance_id = ?1 ORDER BY position",
    )?;
    let ips = by_slot(
        "SELECT slot, floating_ip_id FROM instance_floating_ips WHERE instance_id = ?1
         ORDER BY slot",
    )?;
    Ok(Cluster {
        servers: place(servers, build.as_ref().map_or(0, |b| b.slaves as usize + 1)),
        network,
        floating_ips: place(ips, 0),
        built: build.is_some(),
    })
}

/// The build of an instance, as stored.
pub(super) fn parse_build(text: &str) -> Result<Build> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("an instance's build: {e}")))
}

/// Inserts an instance the service is to create, PENDING, with what was asked (`info`) and
/// how it is built; returns its new uuid.
pub(super) fn insert_created(
    conn: &Connection,
    name: &str,
    owner: &str,
    info: &str,
    build: &Build,
    now: i64,
) -> Result<String> {
    let id = uuid::Uuid::new_v4().to_string();
    let build = serde_json::to_string(build)
        .map_err(|e| StoreError::Corrupt(format!("writing a build: {e}")))?;
    conn.prepare_cached(
        "INSERT INTO lambda_instances (id, name, owner, status, created_at, info, build)
         VALUES (?1, ?2, ?3, 'PENDING', ?4, ?5, ?6)",
    )?
    .execute(params![id, name, owner, now, info, build])?;
    Ok(id)
}

/// Records on instance `id` a thing its create has made (or found made): so that whatever
/// happens next, a destroy or the undoing of a failed create finds it.
pub(super) fn record_made(conn: &Connection, id: &str, target: &Target) -> Result<()> {
    let Some(made) = &target.id else {
        return Ok(());
    };
    let sql = match target.kind {
        TargetKind::Server => {
            "INSERT OR REPLACE INTO instance_servers (instance_id, position, server_id)
             VALUES (?1, ?2, ?3)"
        }
        TargetKind::FloatingIp => {
            "INSERT OR REPLACE INTO instance_floating_ips (instance_id, slot, floating_ip_id)
             VALUES (?1, ?2, ?3)"
        }
        TargetKind::Network => {
            "UPDATE lambda_instances SET network_id = ?3 WHERE id = ?1 AND ?2 = 0"
        }
        // Deleted with its network.
        TargetKind::Subnet => return Ok(()),
    };
    conn.prepare_cached(sql)?
        .execute(params![id, target.slot, made])?;
    Ok(())
}

/// Forgets everything instance `id` was made of: its create was undone, and all of it
/// deleted.
pub(super) fn forget_made(conn: &Connection, id: &str) -> Result<()> {
    conn.prepare_cached("DELETE FROM instance_servers WHERE instance_id = ?1")?
        .execute(params![id])?;
    conn.prepare_cached("DELETE FROM instance_floating_ips WHERE instance_id = ?1")?
        .execute(params![id])?;
    conn.prepare_cached("UPDATE lambda_instances SET network_id = NULL WHERE id = ?1")?
        .execute(params![id])?;
    Ok(())
}

impl Store {
    /// Registers instances in one transaction and returns their new uuids in order.
    pub fn add_instances(&mut self, new: &[NewInstance]) -> Result<Vec<String>> {
        let now = self.now_ms();
        let tx = self.begin_write()?;
        let mut ids = Vec::with_capacity(new.len());
        {
            let mut instance = tx.prepare(
                "INSERT INTO lambda_instances (id, name, owner, status, created_at, network_id)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            let mut server = tx.prepare(
                "INSERT INTO instance_servers (instance_id, position, server_id) VALUES (?1, ?2, ?3)",
            )?;
            let mut ip = tx.prepare(
                "INSERT INTO instance_floating_ips (instance_id, slot, floating_ip_id)
                 VALUES (?1, ?2, ?3)",
            )?;
            for i in new {
                let id = uuid::Uuid::new_v4().to_string();
                instance.execute(params![
                    id,
                    i.name,
                    i.owner,
                    i.status.name(),
                    now,
                    i.network
                ])?;
                let servers = std::iter::once(&i.master).chain(&i.slaves);
                for (position, s) in servers.enumerate() {
                    server.execute(params![id, position as i64, s])?;
                }
                for (slot, f) in i.floating_ips.iter().enumerate() {
                    ip.execute(params![id, slot as i64, f])?;
                }
                ids.push(id);
            }
        }
        tx.commit()?;
        Ok(ids)
    }

    /// Registers one instance and returns its new uuid.
    pub fn add_instance(&mut self, new: &NewInstance) -> Result<String> {
        let mut ids = self.add_instances(std::slice::from_ref(new))?;
        Ok(ids.remove(0))
    }

    /// Removes an instance and its history. Returns whether it existed.
    pub fn remove_instance(&mut self, id: &str) -> Result<bool> {
        let tx = self.begin_write()?;
        let n = tx.execute("DELETE FROM lambda_instances WHERE id = ?1", params![id])?;
        tx.commit()?;
        Ok(n > 0)
    }

    /// What instance `id` is made of on ~okeanos.
    pub fn cluster(&self, id: &str) -> Result<Cluster> {
        read_cluster(&self.conn, id)
    }

    /// The instance `id` if `owner` owns it (a DESTROYED one is kept for reference); another
    /// user's instance is as absent as a missing one.
    pub fn owned_instance(&self, id: &str, owner: &str) -> Result<Option<Instance>> {
        // One statement, so one read transaction: a row per VM (or one with none), the
        // master first.
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {INSTANCE_COLUMNS}, s.position, s.server_id
             FROM lambda_instances i LEFT JOIN instance_servers s ON s.instance_id = i.id
             WHERE i.id = ?1 AND i.owner = ?2
             ORDER BY s.position"
        ))?;
        let mut rows = stmt.query(params![id, owner])?;
        let Some(first) = rows.next()? else {
            return Ok(None);
        };
        let row = instance_row(first)?;
        let mut servers = Vec::new();
        let mut next = Some(first);
        while let Some(r) = next {
            if let Some(position) = r.get::<_, Option<i64>>(8)? {
                servers.push((position, r.get(9)?));
            }
            next = rows.next()?;
        }
        with_servers(row, servers).map(Some)
    }

    /// Every instance, for the command line.
    pub fn all_instances(&self) -> Result<Vec<Instance>> {
        let rows = self
            .conn
            .prepare(&format!(
                "SELECT {INSTANCE_COLUMNS} FROM lambda_instances i ORDER BY created_at, rowid"
            ))?
            .query_map([], instance_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        rows.into_iter()
            .map(|row| {
                let servers = self
                    .conn
                    .prepare_cached(
                        "SELECT position, server_id FROM instance_servers WHERE instance_id = ?1
                         ORDER BY position",
                    )?
                    .query_map(params![row.id], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                with_servers(row, servers)
            })
            .collect()
    }

    /// A page of `owner`'s instances, oldest first; DESTROYED ones are never listed.
    pub fn list_instances(
        &self,
        owner: &str,
        limit: Option<u64>,
        offset: u64,
    ) -> Result<Vec<Summary>> {
        let limit = limit.map_or(-1, |l| l as i64);
        let rows = self
            .conn
            .prepare_cached(
                "SELECT id, name, status, failure_message FROM lambda_instances
                 WHERE owner = ?1 AND status <> 'DESTROYED'
                 ORDER BY created_at, rowid LIMIT ?2 OFFSET ?3",
            )?
            .query_map(params![owner, limit, offset as i64], |r| {
                Ok(Summary {
                    id: r.get(0)?,
                    name: r.get(1)?,
                    status: status_of(r.get(2)?)?,
                    failure_message: r.get(3)?,
                })
            })?
            .collect::<rusqlite::Result<Vec<Summary>>>()?;
        Ok(rows)
    }

    /// How many instances `owner` has, DESTROYED ones left out.
    pub fn count_instances(&self, owner: &str) -> Result<u64> {
        let n: i64 = self
            .conn
            .prepare_cached(
                "SELECT COUNT(*) FROM lambda_instances WHERE owner = ?1 AND status <> 'DESTROYED'",
            )?
            .query_row(params![owner], |r| r.get(0))?;
        Ok(n as u64)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::store::Database;

    pub(crate) const OWNER: &str = "u1";

    /// A store on a manual clock at 1 000 000 ms.
    pub(crate) fn store() -> (Store, std::sync::Arc<ManualClock>) {
        let clock = ManualClock::at(1_000_000);
        (Database::in_memory(clock.clone()), clock)
    }

    /// Registers an instance of OWNER with master `m` and slaves `s1`, `s2`.
    pub(crate) fn instance(store: &mut Store, status: Status) -> String {
        store
            .add_instance(&NewInstance {
                name: "demo".into(),
                owner: OWNER.into(),
                master: "m".into(),
                slaves: vec!["s1".into(), "s2".into()],
                status,
                network: None,
                floating_ips: Vec::new(),
            })
            .unwrap()
    }

    pub(crate) fn status(store: &Store, id: &str) -> Status {
        store.owned_instance(id, OWNER).unwrap().unwrap().status
    }

    #[test]
    fn servers_keep_their_order() {
        let (mut store, _) = store();
        let id = instance(&mut store, Status::Stopped);
        let i = store.owned_instance(&id, OWNER).unwrap().unwrap();
        assert_eq!(i.master.as_deref(), Some("m"));
        assert_eq!(i.slaves, vec!["s1", "s2"]);
        assert_eq!(i.created_at, 1_000_000);
        assert!(store.owned_instance(&id, "someone else").unwrap().is_none());
    }

    #[test]
    fn lists_and_counts_leave_destroyed_out() {
        let (mut store, clock) = store();
        let a = instance(&mut store, Status::Stopped);
        clock.advance(std::time::Duration::from_millis(1));
        instance(&mut store, Status::Destroyed);
        clock.advance(std::time::Duration::from_millis(1));
        let c = instance(&mut store, Status::Failed);
        assert_eq!(store.count_instances(OWNER).unwrap(), 2);
        let all: Vec<String> = store
            .list_instances(OWNER, None, 0)
            .unwrap()
            .into_iter()
            .map(|s| s.id)
            .collect();
        assert_eq!(all, vec![a.clone(), c.clone()]);
        let page = store.list_instances(OWNER, Some(1), 1).unwrap();
        assert_eq!(page[0].id, c);
        assert!(store.list_instances(OWNER, Some(5), 9).unwrap().is_empty());
        assert!(store.list_instances("nobody", None, 0).unwrap().is_empty());
    }

    #[test]
    fn remove_takes_the_history_along() {
        let (mut store, _) = store();
        let id = instance(&mut store, Status::Stopped);
        assert!(store.remove_instance(&id).unwrap());
        assert!(!store.remove_instance(&id).unwrap());
        assert!(store.all_instances().unwrap().is_empty());
    }
}
