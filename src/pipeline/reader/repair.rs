//! No marker stays: a key published with the unavailable-TOAST marker (its unchanged
//! large value could not be read exactly) is read again from the table — a targeted
//! chunk of those keys between watermarks, as the snapshot reads — and published as a
//! `snapshot` envelope with the exact row, unless a later change of the key carried
//! its value first (then that change decides).

use std::collections::{BTreeMap, HashSet};

use super::envelopes::Envelopes;
use super::handover::Handover;
use super::snapshot_read::tuple;
use crate::envelope::Outgoing;
use crate::pipeline::snapshot::Chunk;
use crate::pipeline::PipelineError;
use crate::wire::key::parse_key;
use crate::wire::{Lsn, Position, Timestamp, UNAVAILABLE_KEY};

/// Keys whose last envelope is marked, and the chunk of them being read again.
#[derive(Default)]
pub(super) struct Repairs {
    /// Key → relation id, for keys whose last published envelope carries the marker.
    marked: BTreeMap<String, u32>,
    /// A chunk of such keys read, waiting for the stream to pass its high watermark.
    pending: Option<Chunk>,
}

/// Whether an encoded envelope carries the unavailable marker.
fn carries_marker(payload: &[u8]) -> bool {
    let needle = UNAVAILABLE_KEY.as_bytes();
    payload.windows(needle.len()).any(|w| w == needle)
}

/// The key of a built envelope (its message id is `<key>:<sequence>`).
fn key_of(o: &Outgoing) -> &str {
    o.msg_id
        .rsplit_once(':')
        .map_or(o.msg_id.as_str(), |(k, _)| k)
}

impl Repairs {
    /// Envelopes of a change were built: their keys' last envelopes are these (marked
    /// or exact); a waiting chunk's row of such a key is stale. `maybe_marked`: a TOAST
    /// value was unavailable while building them.
    pub(super) fn built(&mut self, relation_id: u32, built: &[Outgoing], maybe_marked: bool) {
        for o in built {
            let key = key_of(o);
            if let Some(chunk) = self.pending.as_mut() {
                chunk.removed.insert(key.to_string());
            }
            if maybe_marked && carries_marker(&o.payload) {
                self.marked.insert(key.to_string(), relation_id);
            } else if !self.marked.is_empty() {
                self.marked.remove(key);
            }
        }
    }

    /// A TRUNCATE: the tables' keys are gone, nothing to repair.
    pub(super) fn truncated(&mut self, relation_ids: &[u32]) {
        self.marked.retain(|_, r| !relation_ids.contains(r));
        if self
            .pending
            .as_ref()
            .is_some_and(|c| relation_ids.contains(&c.relation_id))
        {
            self.pending = None;
        }
    }

    /// The stream opens again: a chunk read before is read again.
    pub(super) fn forget_pending(&mut self) {
        self.pending = None;
    }

    /// Whether a chunk of marked keys is to be read now.
    pub(super) fn wants_chunk(&self) -> bool {
        self.pending.is_none() && !self.marked.is_empty()
    }

    /// The waiting chunk's high watermark, when the stream at `at` passed it.
    pub(super) fn chunk_passed(&self, at: Lsn) -> Option<Lsn> {
        self.pending
            .as_ref()
            .map(|c| c.high)
            .filter(|&high| at >= high)
    }

    /// Whether a chunk waits for the stream to pass its high watermark.
    pub(super) fn chunk_waiting(&self) -> bool {
        self.pending.is_some()
    }

    /// Read the rows of up to `limit` marked keys of one table.
    pub(super) async fn read_chunk(
        &mut self,
        env: &mut Envelopes,
        limit: usize,
    ) -> Result<(), PipelineError> {
        let Some(&relation_id) = self.marked.values().next() else {
            return Ok(());
        };
        let keys: Vec<String> = self
            .marked
            .iter()
            .filter(|(_, r)| **r == relation_id)
            .map(|(k, _)| k.clone())
            .take(limit)
            .collect();
        for k in &keys {
            self.marked.remove(k);
        }
        let Some(qualified) = env.builder.relation_name(relation_id) else {
            return Ok(()); // the table left the stream
        };
        let info = env.catalog.table_info(&qualified).await?;
        let values: Vec<Vec<String>> = keys
            .iter()
            .filter_map(|k| parse_key(k).ok().map(|p| p.values))
            .collect();
        let names: Vec<String> = info.columns.iter().map(|c| c.0.clone()).collect();
        let rows = env
            .catalog
            .read_rows_columns(&info, &values, &names, ("NULL", env.recent.must_see()))
            .await?
            .rows;
        env.recent.all_seen();
        let high = env.catalog.current_wal_lsn().await?;
        let rows = keys
            .into_iter()
            .zip(values)
            .filter_map(|(key, v)| rows.get(&v).map(|(texts, _)| (key, texts.clone())))
            .collect();
        self.pending = Some(Chunk {
            table: qualified,
            relation_id,
            high,
            last: true,
            rows,
            removed: HashSet::new(),
            vanished: Vec::new(),
            last_key: None,
        });
        Ok(())
    }

    /// Publish the waiting chunk's rows that no live change overtook, placed at
    /// `position` (just before its high watermark); the position after them.
    pub(super) async fn emit(
        &mut self,
        env: &mut Envelopes,
        handover: &mut Handover,
        position: Position,
    ) -> Result<Position, PipelineError> {
        let chunk = self.pending.take().expect("a repair chunk is pending");
        env.builder.begin_snapshot(position, Timestamp::now());
        let before = handover.built.len();
        for (key, texts) in &chunk.rows {
            if chunk.removed.contains(key) {
                continue;
            }
            let row = tuple(texts);
            env.build(&mut handover.built, |b, out| {
                b.snapshot_row(chunk.relation_id, &row, out)
            })
            .await?;
        }
        let next = env
            .builder
            .next_position()
            .expect("in the repair transaction");
        env.builder.commit();
        let repaired = handover.built.len() - before;
        if repaired > 0 {
            handover.batch();
            env.metrics.envelope.toast_repairs.inc_by(repaired as u64);
            tracing::info!(table = %chunk.table, keys = repaired, "keys published with an unavailable TOAST value read again: exact rows published");
        }
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn built(key: &str, payload: &'static [u8]) -> Outgoing {
        Outgoing {
            subject: format!("w.{key}"),
            payload: Bytes::from_static(payload),
            msg_id: format!("{key}:7"),
            position: Position::default(),
            ttl: None,
        }
    }

    #[test]
    fn a_marked_key_waits_for_a_repair_until_an_exact_envelope_comes() {
        let mut r = Repairs::default();
        r.built(1, &[built("public.t:1", b"..$walcast_unavailable..")], true);
        r.built(1, &[built("public.t:2", b"exact")], true);
        assert!(r.wants_chunk());
        assert_eq!(r.marked.len(), 1);
        // A later exact change of the key: nothing to repair.
        r.built(1, &[built("public.t:1", b"exact")], false);
        assert!(!r.wants_chunk());
        r.built(2, &[built("public.u:1", b"$walcast_unavailable")], true);
        r.truncated(&[2]);
        assert!(!r.wants_chunk());
    }

    #[test]
    fn a_live_change_overtakes_the_waiting_chunk() {
        let mut r = Repairs {
            marked: BTreeMap::new(),
            pending: Some(Chunk {
                table: "public.t".into(),
                relation_id: 1,
                high: Lsn(100),
                last: true,
                rows: vec![("public.t:1".into(), vec![Some("1".into())])],
                removed: HashSet::new(),
                vanished: Vec::new(),
                last_key: None,
            }),
        };
        assert!(r.chunk_passed(Lsn(99)).is_none() && r.chunk_passed(Lsn(100)) == Some(Lsn(100)));
        r.built(1, &[built("public.t:1", b"exact")], false);
        assert!(r.pending.as_ref().unwrap().removed.contains("public.t:1"));
    }
}
