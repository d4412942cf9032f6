//! Bringing a database of any version this project has shipped up to the current schema.
//!
//! `PRAGMA user_version` says which version a file has: 1 (the first release), 2 (added
//! `idempotency_keys`), 3 (destroy, due times, `action_vms`), 4 (typed targets in
//! `action_targets`, idempotency keys that keep their request's outcome). A new database is
//! made from `schema.sql`; an older one goes through the steps below, one version at a time.
//! `schemas/` keeps the schema of every older version, so that the tests below build a
//! database of each one and migrate it with data in it. A file newer than the binary is
//! refused and left as it is.

use super::{Result, Store, StoreError};

/// The schema every database ends up with: `schema.sql` at the top of the repository.
pub(super) const SCHEMA: &str = include_str!("../../schema.sql");
/// The version `SCHEMA` is; bump it, and keep the old schema in `schemas/`, on every change.
pub const SCHEMA_VERSION: i64 = 4;
/// Version 3's schema, which the step from versions 1 and 2 builds on.
const V3: &str = include_str!("schemas/v3.sql");

/// The database's schema version, reading only; a version this binary does not know (a
/// newer one) is refused.
pub(super) fn checked_version(conn: &rusqlite::Connection) -> Result<i64> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::NewerSchema {
            found: version,
            known: SCHEMA_VERSION,
        });
    }
    Ok(version)
}

/// The schema of `version`, as that version shipped it.
pub(super) fn schema_of(version: i64) -> Option<&'static str> {
    match version {
        1 => Some(include_str!("schemas/v1.sql")),
        2 => Some(include_str!("schemas/v2.sql")),
        3 => Some(V3),
        SCHEMA_VERSION => Some(SCHEMA),
        _ => None,
    }
}

/// Every schema object by type and name, each table with its columns and each index with its
/// columns and uniqueness: what two databases of one version share, however they were made.
pub(super) fn shape(
    conn: &rusqlite::Connection,
) -> Result<std::collections::BTreeMap<String, Vec<String>>> {
    let objects: Vec<(String, String)> = conn
        .prepare("SELECT type, name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let mut all = std::collections::BTreeMap::new();
    for (kind, name) in objects {
        let described: Vec<String> = match kind.as_str() {
            "table" => conn
                .prepare(
                    "SELECT name || ' ' || type || ' ' || \"notnull\" || ' ' || pk
                     FROM pragma_table_info(?1) ORDER BY name",
                )?
                .query_map([&name], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?,
            "index" => conn
                .prepare(
                    "SELECT coalesce(name, '?') || ' ' || \"desc\" FROM pragma_index_xinfo(?1)
                     WHERE key ORDER BY seqno",
                )?
                .query_map([&name], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?,
            _ => Vec::new(),
        };
        all.insert(format!("{kind} {name}"), described);
    }
    Ok(all)
}

impl Store {
    pub(super) fn migrate(&mut self) -> Result<()> {
        let version = checked_version(&self.conn)?;
        if version == SCHEMA_VERSION {
            // Nothing to write: a current database opens even where it cannot be written.
            return Ok(());
        }
        if version == 0 {
            let tx = self.begin_write()?;
            // Read again under the write lock: another process may have made it meanwhile.
            if checked_version(&tx)? == 0 {
                tx.execute_batch(SCHEMA)?;
                tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
            }
            return tx.commit();
        }
        if version < 3 {
            self.migrate_to_3()?;
        }
        if checked_version(&self.conn)? == 3 {
            self.migrate_to_4()?;
        }
        Ok(())
    }

    /// Versions 1 and 2 to 3: the `actions` table is rebuilt (its CHECK now allows
    /// `destroy`, and it has `due_at` and `network_url`), and `lambda_instances` gains
    /// `network_id` and `public_ip_id`. SQLite's way: foreign keys off (outside the
    /// transaction), the old table renamed without rewriting the references to it, the new one
    /// made by version 3's schema, the rows copied, the old table dropped.
    fn migrate_to_3(&mut self) -> Result<()> {
        self.rebuild(3, |tx| {
            tx.execute_batch(
                "ALTER TABLE actions RENAME TO actions_v2;
                 DROP INDEX IF EXISTS actions_one_live_per_instance;
                 DROP INDEX IF EXISTS actions_live;
                 DROP INDEX IF EXISTS actions_by_instance;
                 ALTER TABLE lambda_instances ADD COLUMN network_id TEXT;
                 ALTER TABLE lambda_instances ADD COLUMN public_ip_id TEXT;",
            )?;
            tx.execute_batch(V3)?;
            tx.execute_batch(
                "INSERT INTO actions (id, instance_id, action, state, attempts, error, token,
                     compute_url, claim, lease_until, created_at, started_at, finished_at,
                     due_at)
                 SELECT id, instance_id, action, state, attempts, error, token, compute_url,
                     claim, lease_until, created_at, started_at, finished_at,
                     CASE WHEN state IN ('queued', 'running') THEN created_at END
                 FROM actions_v2;
                 DROP TABLE actions_v2;
                 PRAGMA user_version = 3;",
            )
        })
    }

    /// Version 3 to 4: `action_vms`, whose `vm` column held `floatingip/<id>` and
    /// `network/<id>` at positions 1000000 and 1000001, becomes `action_targets`, with a
    /// kind, a slot and a command; `actions` is rebuilt, its CHECK allowing `create`;
    /// `lambda_instances` gains `info` and `build`, and its `public_ip_id` becomes a row of
    /// `instance_floating_ips`; `idempotency_keys` keeps each request's outcome (the 202's
    /// action, the 409's sentence) instead of the answer's bytes, read out of them here.
    /// Foreign keys are off meanwhile (outside the transaction), as for version 3.
    fn migrate_to_4(&mut self) -> Result<()> {
        self.rebuild(4, |tx| {
            tx.execute_batch(
                "ALTER TABLE actions RENAME TO actions_v3;
                 DROP INDEX IF EXISTS actions_one_live_per_instance;
                 DROP INDEX IF EXISTS actions_live;
                 DROP INDEX IF EXISTS actions_by_instance;
                 DROP INDEX IF EXISTS actions_due;
                 ALTER TABLE idempotency_keys RENAME TO idempotency_keys_v3;
                 DROP INDEX IF EXISTS idempotency_keys_by_age;
                 ALTER TABLE lambda_instances ADD COLUMN info TEXT;
                 ALTER TABLE lambda_instances ADD COLUMN build TEXT;",
            )?;
            tx.execute_batch(SCHEMA)?;
            tx.execute_batch(
                "INSERT INTO actions SELECT id, instance_id, action, state, attempts, error,
                     token, compute_url, network_url, claim, lease_until, created_at,
                     started_at, finished_at, due_at
                 FROM actions_v3;
                 DROP TABLE actions_v3;
                 INSERT INTO action_targets (action_id, kind, slot, target_id, command, phase,
                     seq, state, sent, since, next_at, polls, tries)
                 SELECT v.action_id,
                     CASE WHEN vm LIKE 'floatingip/%' THEN 'floating_ip'
                          WHEN vm LIKE 'network/%' THEN 'network' ELSE 'server' END,
                     CASE WHEN position >= 1000000 THEN 0 ELSE position END,
                     CASE WHEN vm LIKE 'floatingip/%' THEN substr(vm, 12)
                          WHEN vm LIKE 'network/%' THEN substr(vm, 9) ELSE vm END,
                     CASE a.action WHEN 'start' THEN 'start' WHEN 'stop' THEN 'shutdown'
                          ELSE 'delete' END,
                     phase,
                     ROW_NUMBER() OVER (PARTITION BY v.action_id ORDER BY phase, position) - 1,
                     v.state, sent, since, next_at, polls, tries
                 FROM action_vms v JOIN actions a ON a.id = v.action_id;
                 DROP TABLE action_vms;
                 INSERT INTO instance_floating_ips (instance_id, slot, floating_ip_id)
                 SELECT id, 0, public_ip_id FROM lambda_instances WHERE public_ip_id IS NOT NULL;
                 ALTER TABLE lambda_instances DROP COLUMN public_ip_id;
                 INSERT INTO idempotency_keys (owner, key, fingerprint, status, instance_id,
                     action_id, base_url, message, created_at)
                 SELECT k.owner, k.key, k.fingerprint, k.status, a.instance_id,
                     CASE WHEN k.status = 202 THEN json_extract(k.body, '$.data[0].id') END,
                     CASE WHEN k.status = 202
                          THEN substr(k.location, 1, instr(k.location, '/api/') - 1) END,
                     CASE WHEN k.status = 409
                          THEN json_extract(k.body, '$.errors[0].message') END,
                     k.created_at
                 FROM idempotency_keys_v3 k
                 LEFT JOIN actions a ON a.id = json_extract(k.body, '$.data[0].id')
                 WHERE k.status IN (202, 409) AND json_valid(k.body);
                 DROP TABLE idempotency_keys_v3;
                 PRAGMA user_version = 4;",
            )
        })
    }

    /// Rebuilds tables to reach `version` with `steps`, in one write transaction, SQLite's
    /// way: foreign keys off and renames that leave references alone (both set outside the
    /// transaction, and set back whatever happens), the steps, then a check that every row
    /// still has what it refers to. Nothing is done if another process got there first.
    fn rebuild(
        &mut self,
        version: i64,
        steps: impl FnOnce(&rusqlite::Transaction) -> rusqlite::Result<()>,
    ) -> Result<()> {
        self.conn.pragma_update(None, "foreign_keys", "OFF")?;
        self.conn.pragma_update(None, "legacy_alter_table", "ON")?;
        let rebuilt = (|| -> Result<()> {
            let tx = self.begin_write()?;
            if checked_version(&tx)? >= version {
                return Ok(());
            }
            steps(&tx)?;
            let broken: i64 =
                tx.query_row("SELECT COUNT(*) FROM pragma_foreign_key_check", [], |r| {
                    r.get(0)
                })?;
            if broken != 0 {
                return Err(StoreError::Corrupt(format!(
                    "{broken} row(s) lost their references while migrating to version {version}"
                )));
            }
            tx.commit()
        })();
        self.conn.pragma_update(None, "legacy_alter_table", "OFF")?;
        self.conn.pragma_update(None, "foreign_keys", "ON")?;
        rebuilt
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rusqlite::Connection;

    use super::*;
    use crate::clock::ManualClock;
    use crate::model::{ActionState, Status};
    use crate::plan::Command;
    use crate::store::{Database, TargetState};

    /// Every version shipped before this one, with its schema as it was released.
    const SHIPPED: &[(i64, &str)] = &[
        (1, include_str!("schemas/v1.sql")),
        (2, include_str!("schemas/v2.sql")),
        (3, V3),
    ];

    #[test]
    fn the_schema_of_each_version_is_known() {
        for &(version, schema) in SHIPPED {
            assert_eq!(schema_of(version), Some(schema));
        }
        assert_eq!(schema_of(SCHEMA_VERSION), Some(SCHEMA));
        assert_eq!(schema_of(SCHEMA_VERSION + 1), None);
    }

    fn store_on(conn: Connection) -> Store {
        Store {
            conn,
            shared: Arc::default(),
            clock: ManualClock::at(1_000),
        }
    }

    /// A database of `version`, as that version would have left it: a running instance with
    /// a live action (and its token), and a stopped one with a finished action and its steps.
    fn old_database(version: i64, schema: &str) -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(schema).unwrap();
        conn.pragma_update(None, "user_version", version).unwrap();
        conn.execute_batch(
            "INSERT INTO lambda_instances (id, name, owner, status, failure_message, created_at)
             VALUES ('i1', 'hadoop', 'u', 'STARTING', NULL, 5);
             INSERT INTO instance_servers VALUES ('i1', 0, 'm1'), ('i1', 1, 's1');
             INSERT INTO actions (id, instance_id, action, state, token, compute_url, created_at)
             VALUES ('a1', 'i1', 'start', 'queued', 't', 'http://c', 7);
             INSERT INTO lambda_instances (id, name, owner, status, failure_message, created_at)
             VALUES ('i2', 'spark', 'u', 'STOPPED', NULL, 6);
             INSERT INTO instance_servers VALUES ('i2', 0, 'm2');
             INSERT INTO actions (id, instance_id, action, state, attempts, created_at,
                                  started_at, finished_at)
             VALUES ('a2', 'i2', 'stop', 'succeeded', 1, 8, 9, 10);
             INSERT INTO action_steps VALUES ('a2', 0, 'm2', 'shutdown', 'STOPPED', 10);",
        )
        .unwrap();
        if version >= 2 {
            conn.execute(
                "INSERT INTO idempotency_keys VALUES ('u', 'k', 'f', 202,
                     '{\"data\":[{\"id\":\"a2\"}]}', 'http://h/api/x', 900)",
                [],
            )
            .unwrap();
        }
        if version >= 3 {
            // The live action's run had begun: its slave is waiting, its master still to do.
            // The stopped instance has a private network and a floating IP.
            conn.execute_batch(
                "UPDATE lambda_instances SET network_id = 'n2', public_ip_id = 'ip2'
                 WHERE id = 'i2';
                 UPDATE actions SET due_at = 7 WHERE id = 'a1';
                 INSERT INTO action_vms (action_id, vm, position, phase, state, sent, next_at)
                 VALUES ('a1', 's1', 1, 0, 'waiting', 1, 7), ('a1', 'm1', 0, 1, 'todo', 0, 7);",
            )
            .unwrap();
        }
        conn
    }

    #[test]
    fn every_shipped_version_migrates_with_its_data() {
        let fresh = Database::in_memory(ManualClock::at(0));
        let want = shape(&fresh.conn).unwrap();
        for &(version, schema) in SHIPPED {
            let mut store = store_on(old_database(version, schema));
            store.migrate().unwrap();
            let at = |what: &str| format!("version {version}: {what}");
            let now: i64 = store
                .conn
                .pragma_query_value(None, "user_version", |r| r.get(0))
                .unwrap();
            assert_eq!(now, SCHEMA_VERSION, "{}", at("user_version"));
            assert_eq!(
                shape(&store.conn).unwrap(),
                want,
                "{}",
                at("tables and indexes")
            );

            let running = store.owned_instance("i1", "u").unwrap().expect("i1");
            assert_eq!(running.status, Status::Starting, "{}", at("i1"));
            let stopped = store.owned_instance("i2", "u").unwrap().expect("i2");
            assert_eq!(stopped.status, Status::Stopped, "{}", at("i2"));
            if version >= 3 {
                let cluster = store.cluster("i2").unwrap();
                let resources = (stopped.network.as_deref(), cluster.floating_ips);
                assert_eq!(
                    resources,
                    (Some("n2"), vec![Some("ip2".into())]),
                    "{}",
                    at("i2")
                );
            }
            let done = store.action("i2", "a2").unwrap().expect("a2");
            assert_eq!(done.state, ActionState::Succeeded, "{}", at("a2"));
            assert_eq!(done.steps.len(), 1, "{}", at("a2's steps"));

            // The live action is taken up, with the token it was accepted with.
            let job = store
                .claim_due(std::time::Duration::from_secs(60), true)
                .unwrap()
                .unwrap_or_else(|| panic!("{}", at("the live action is not due")));
            assert_eq!(job.action_id, "a1", "{}", at("claimed"));
            assert_eq!(job.token, "t", "{}", at("token"));
            let targets: Vec<(String, u32, TargetState, bool)> = job
                .targets
                .iter()
                .map(|t| (t.target.label(), t.phase, t.state, t.sent))
                .collect();
            assert!(job.targets.iter().all(|t| t.command == Command::Start));
            let waiting = if version >= 3 {
                (TargetState::Waiting, true)
            } else {
                (TargetState::Todo, false)
            };
            assert_eq!(
                targets,
                vec![
                    ("s1".to_string(), 0, waiting.0, waiting.1),
                    ("m1".to_string(), 1, TargetState::Todo, false)
                ],
                "{}",
                at("the plan")
            );

            let keys: i64 = store
                .conn
                .query_row("SELECT COUNT(*) FROM idempotency_keys", [], |r| r.get(0))
                .unwrap();
            assert_eq!(keys, i64::from(version >= 2), "{}", at("idempotency keys"));
            if version >= 2 {
                let kept: (i64, String, String, String) = store
                    .conn
                    .query_row(
                        "SELECT status, instance_id, action_id, base_url FROM idempotency_keys",
                        [],
                        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                    )
                    .unwrap();
                let want = (202, "i2".into(), "a2".into(), "http://h".to_string());
                assert_eq!(kept, want, "{}", at("the kept outcome"));
            }
            let bad: Vec<String> = store
                .conn
                .prepare("PRAGMA foreign_key_check")
                .unwrap()
                .query_map([], |r| r.get(0))
                .unwrap()
                .collect::<rusqlite::Result<_>>()
                .unwrap();
            assert!(bad.is_empty(), "{}: {bad:?}", at("foreign keys"));
            store.migrate().unwrap();
        }
    }

    #[test]
    fn migrate_is_idempotent() {
        let mut store = Database::in_memory(ManualClock::at(0));
        store.migrate().unwrap();
        store.migrate().unwrap();
    }

    #[test]
    fn a_newer_schema_is_refused_and_left_alone() {
        let mut store = Database::in_memory(ManualClock::at(0));
        store.conn.pragma_update(None, "user_version", 99).unwrap();
        let e = store.migrate().unwrap_err();
        assert!(
            matches!(e, StoreError::NewerSchema { found: 99, .. }),
            "{e}"
        );
        let v: i64 = store
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(v, 99);
    }
}
