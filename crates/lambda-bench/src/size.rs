//! The database's size per action: actions made, claimed and ended through the store as the
//! service does it (three VMs each, six steps), then the file's size over their count; and
//! per `Idempotency-Key`: a thousand keyed requests whose outcome is kept.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use lambda_api::model::{ActionKind, Status};
use lambda_api::store::{ActionRequest, Database, KeyUse, NewStep, Requested, Synchronous};

use crate::{err, instance, Res};

const INSTANCES: usize = 1_000;
const ACTIONS: usize = 20_000;

pub fn database_size(work: &Path, table: &mut String) -> Res<()> {
    eprintln!("measuring the database's size per action ...");
    let path = work.join("size.db");
    let db = Database::new(&path, Synchronous::Normal);
    let mut store = db.open().map_err(err("size database"))?;
    let owner = "size-owner".to_string();
    let new: Vec<_> = (0..INSTANCES)
        .map(|i| {
            let vms = (0..3).map(|v| format!("vm-{i}-{v}")).collect();
            instance(format!("cluster-{i}"), owner.clone(), vms, Status::Stopped)
        })
        .collect();
    let ids = store.add_instances(&new).map_err(err("instances"))?;
    let before = file_size(&db, &mut store)?;
    let token = "t".repeat(64);
    let compute = "https://cyclades.okeanos.grnet.gr/compute/v2.0";
    for n in 0..ACTIONS {
        let id = &ids[n % INSTANCES];
        let kind = if (n / INSTANCES).is_multiple_of(2) {
            ActionKind::Start
        } else {
            ActionKind::Stop
        };
        let snapshot = store.snapshot(id, &owner).map_err(err("snapshot"))?;
        let request = ActionRequest {
            instance_id: id.clone(),
            owner: owner.clone(),
            kind,
            token: token.clone(),
            compute_url: compute.into(),
            network_url: None,
            key: None,
            create: None,
        };
        match store
            .request_action(snapshot.as_ref(), request)
            .map_err(err("request"))?
        {
            Requested::Created(_) => {}
            other => return Err(format!("action {n}: {other:?}")),
        }
        let job = store
            .claim_due(Duration::from_secs(60), true)
            .map_err(err("claim"))?
            .ok_or("nothing to claim")?;
        let steps: Vec<NewStep> = job
            .targets
            .iter()
            .flat_map(|t| {
                [("start", "sent"), ("status", "ACTIVE")].map(|(op, result)| NewStep {
                    vm: t.target.label(),
                    op: op.into(),
                    result: result.into(),
                })
            })
            .collect();
        store.finish(&job, None, &steps).map_err(err("finish"))?;
    }
    let after = file_size(&db, &mut store)?;
    let per_action = (after - before) as f64 / ACTIONS as f64;
    let _ = writeln!(
        table,
        "| database size per ended action (3 VMs, 6 steps; {ACTIONS} actions) | | {per_action:.0} bytes = {:.0} MiB per million | | | | | |",
        per_action * 1e6 / (1 << 20) as f64
    );
    // Every instance is STOPPED now: a keyed stop on each is refused, and the refusal kept
    // under its key, as an owner's thousand keys would be.
    for (n, id) in ids.iter().enumerate() {
        let snapshot = store.snapshot(id, &owner).map_err(err("snapshot"))?;
        let request = ActionRequest {
            instance_id: id.clone(),
            owner: owner.clone(),
            kind: ActionKind::Stop,
            token: token.clone(),
            compute_url: compute.into(),
            network_url: None,
            key: Some(KeyUse {
                key: format!("{:08x}-7d2c-4f1e-9a3b-{n:012x}", n * 2654435761),
                fingerprint: format!("{:064x}", n),
                base_url: "https://lambda.example.org".into(),
                max_age_ms: 24 * 3600 * 1000,
                max_per_owner: INSTANCES as u64,
            }),
            create: None,
        };
        match store.request_action(snapshot.as_ref(), request) {
            Ok(Requested::Conflict(_)) => {}
            other => return Err(format!("keyed request {n}: {other:?}")),
        }
    }
    let keyed = file_size(&db, &mut store)?;
    let per_key = (keyed - after) as f64 / INSTANCES as f64;
    let _ = writeln!(
        table,
        "| database size per `Idempotency-Key` (a kept 409; {INSTANCES} keys) | | {per_key:.0} bytes | | | | | |"
    );
    Ok(())
}

/// The file's size once the write-ahead log is folded into it.
fn file_size(db: &Database, store: &mut lambda_api::store::Store) -> Res<u64> {
    store.truncate_wal().map_err(err("checkpoint"))?;
    Ok(std::fs::metadata(db.path()).map_err(err("size"))?.len())
}
