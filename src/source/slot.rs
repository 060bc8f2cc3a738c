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
pub async fn ensure_slot(
    conn: &mut ReplicationConnection,
    catalog: &Catalog,
    slot: &str,
) -> Result<(Lsn, bool), SourceError> {
    let system = conn.identify_system().await?;
    tracing::debug!(
        system_id = %system.system_id,
        timeline = system.timeline,
        xlog_pos = %system.xlog_pos,
        "identified the server"
    );
    let mut created = false;
    match catalog.slot(slot).await? {
        None => {
            let at = conn.create_slot(slot).await?;
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
