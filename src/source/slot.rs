//! The replication slot: created when missing, validated when present, and the
//! position streaming starts from (the slot's confirmed flush position).

use super::catalog::{Catalog, SlotInfo};
use super::{ReplicationConnection, SourceError};
use crate::wire::Lsn;

/// What makes an existing slot unusable for walcast (`None`: it fits). Shared by
/// start-up and `walcast check`.
pub fn slot_problem(info: &SlotInfo, database: Option<&str>) -> Option<String> {
    if info.plugin.as_deref() != Some("pgoutput") {
        return Some(format!(
            "uses plugin {:?}, walcast needs pgoutput (drop it or choose another --slot)",
            info.plugin.clone().unwrap_or_default()
        ));
    }
    if let Some(db) = database {
        if info.database.as_deref() != Some(db) {
            return Some(format!(
                "belongs to database {:?}, not {db:?}",
                info.database.clone().unwrap_or_default()
            ));
        }
    }
    None
}

/// Create `slot` when missing or check that it fits; the position streaming starts
/// from, and whether the slot was created now.
///
/// `may_create`: false when walcast streamed from this slot before (a missing or
/// invalidated slot then means changes may be gone: an error, not a silent new slot).
pub async fn ensure_slot(
    conn: &mut ReplicationConnection,
    catalog: &Catalog,
    slot: &str,
    (may_create, failover): (bool, bool),
) -> Result<(Lsn, bool), SourceError> {
    if failover {
        let version = conn.server_version_num().await?;
        if version < 170_000 {
            return Err(SourceError::Preflight(format!(
                "--failover-slot needs PostgreSQL 17 or later (the server is {}.{}): leave it off, or upgrade",
                version / 10_000,
                version % 10_000
            )));
        }
    }
    let system = conn.identify_system().await?;
    tracing::debug!(
        system_id = %system.system_id,
        timeline = system.timeline,
        xlog_pos = %system.xlog_pos,
        "identified the server"
    );
    let mut created = false;
    let lost = |why: &str| SourceError::SlotLost {
        slot: slot.to_string(),
        why: why.to_string(),
    };
    let mut existing = catalog.slot(slot).await?;
    let wal_lost = existing.is_some()
        && catalog
            .slot_health(slot)
            .await?
            .is_some_and(|h| h.wal_status.as_deref() == Some("lost"));
    if wal_lost {
        if !may_create {
            return Err(lost("lost WAL it needs (wal_status lost)"));
        }
        tracing::warn!(slot = %slot, "dropping the invalidated slot to create it again (--recreate-slot)");
        catalog.drop_slot(slot).await?;
        existing = None;
    }
    match existing {
        None if !may_create => return Err(lost("no longer exists")),
        None => {
            let at = conn.create_slot(slot, failover).await?;
            created = true;
            tracing::info!(slot = %slot, consistent_point = %at, "created replication slot");
        }
        Some(info) => {
            if let Some(problem) = slot_problem(&info, system.dbname.as_deref()) {
                return Err(SourceError::Slot {
                    slot: slot.to_string(),
                    problem,
                });
            }
            if failover
                && catalog
                    .slot_failover(slot)
                    .await?
                    .is_some_and(|f| !f.failover)
            {
                conn.simple_query(&format!(
                    "ALTER_REPLICATION_SLOT {} (FAILOVER true)",
                    super::commands::quote_ident(slot)
                ))
                .await?;
                tracing::info!(slot = %slot, "the slot is a failover slot now (--failover-slot)");
            }
        }
    }
    let start = catalog
        .slot(slot)
        .await?
        .and_then(|s| s.confirmed_flush_lsn)
        .and_then(|l| l.parse().ok())
        .unwrap_or(Lsn(0));
    Ok((start, created))
}
