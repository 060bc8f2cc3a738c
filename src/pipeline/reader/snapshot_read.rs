//! Reading a snapshot chunk between watermarks: the next rows of a table in key order,
//! or (a re-snapshot's sweep) the next keys the stream holds and which of them lost
//! their row; and whether a row was published already with the same value.

use std::collections::HashSet;

use super::envelopes::Envelopes;
use super::snapshot_driver::SnapshotDriver;
use crate::decode::pgoutput::TupleValue;
use crate::pipeline::snapshot::{Chunk, Snapshot};
use crate::pipeline::PipelineError;
use crate::source::chunks::TableInfo;
use crate::state::StateStore;
use crate::wire::key::{make_key, parse_key, parse_key_token, TRUNCATE_TOKEN};

impl SnapshotDriver {
    /// Read the next chunk of the table being read (starting the next table when none
    /// is); `false` when there was nothing to read.
    pub(super) async fn read_chunk(&mut self, env: &mut Envelopes) -> Result<bool, PipelineError> {
        let Some(snapshot) = self.snapshot.as_mut() else {
            return Ok(false);
        };
        if let Some(name) = snapshot.next_table() {
            let info = env.catalog.table_info(&name).await?;
            env.register_relation(&info).await?;
            snapshot.start_table(info);
        }
        let Some((info, after)) = snapshot.current() else {
            return Ok(false);
        };
        let (info, after) = (info.clone(), after.map(<[String]>::to_vec));
        let chunk = if snapshot.sweep().is_some() {
            read_sweep_chunk(snapshot, env, &info, after).await?
        } else {
            read_rows_chunk(snapshot, env, &info, after).await?
        };
        snapshot.pending = Some(chunk);
        Ok(true)
    }
}

/// The next rows of the table, in key order.
async fn read_rows_chunk(
    snapshot: &mut Snapshot,
    env: &mut Envelopes,
    info: &TableInfo,
    after: Option<Vec<String>>,
) -> Result<Chunk, PipelineError> {
    let limit = snapshot.chunk_rows;
    let texts = env
        .catalog
        .read_chunk(info, (after.as_deref(), limit), env.recent.must_see())
        .await?;
    env.recent.all_seen();
    let high = env.catalog.current_wal_lsn().await?;
    let mut rows = Vec::with_capacity(texts.len());
    for row in texts {
        let key = env.builder.key_of_row(info.relation_id, &tuple(&row))?.0;
        rows.push((key, row));
    }
    let last_key = rows
        .last()
        .map(|(_, row)| {
            info.key
                .iter()
                .map(|&i| row[i].clone().unwrap_or_default())
                .collect()
        })
        .or(after);
    let mut last = rows.len() < limit;
    // A re-snapshot (or a resumed one) in tracked mode: keys the stream holds and the
    // table lost get a delete.
    if last
        && snapshot.verify.contains(&info.qualified())
        && env.store.is_some()
        && env.builder.is_tracked(info.relation_id)
    {
        snapshot.start_sweep();
        last = false;
    }
    Ok(Chunk {
        table: info.qualified(),
        relation_id: info.relation_id,
        high,
        last,
        rows,
        removed: Default::default(),
        vanished: Vec::new(),
        last_key,
    })
}

/// The next keys the stream holds for the table, and which of them have no row.
async fn read_sweep_chunk(
    snapshot: &mut Snapshot,
    env: &mut Envelopes,
    info: &TableInfo,
    last_key: Option<Vec<String>>,
) -> Result<Chunk, PipelineError> {
    let limit = snapshot.chunk_rows;
    let store = env.store.clone().expect("a sweep runs with JetStream");
    let sweep = snapshot.sweep().expect("sweeping");
    if sweep.is_none() {
        *sweep = Some(store.table_subjects(&info.schema, &info.name).await?);
    }
    let pages = sweep.as_mut().expect("listing started");
    let subjects = crate::state::next_subjects(pages, limit).await?;
    let last = subjects.len() < limit;
    let mut keys = Vec::with_capacity(subjects.len());
    for subject in &subjects {
        if let Some(values) = key_values_of(&store, subject).await? {
            keys.push(values);
        }
    }
    let existing: HashSet<Vec<String>> = env
        .catalog
        .existing_keys(info, &keys, env.recent.must_see())
        .await?
        .into_iter()
        .collect();
    env.recent.all_seen();
    let high = env.catalog.current_wal_lsn().await?;
    let vanished = keys
        .into_iter()
        .filter(|values| !existing.contains(values))
        .map(|values| {
            let key = make_key(&info.schema, &info.name, values.iter().map(String::as_str));
            (key, values)
        })
        .collect();
    Ok(Chunk {
        table: info.qualified(),
        relation_id: info.relation_id,
        high,
        last,
        rows: Vec::new(),
        removed: Default::default(),
        vanished,
        last_key,
    })
}

/// The key column texts of a key subject (from the subject, or for a hashed key token
/// from its last envelope); `None` for the table's truncate subject.
async fn key_values_of(
    store: &StateStore,
    subject: &str,
) -> Result<Option<Vec<String>>, PipelineError> {
    let token = subject.rsplit('.').next().unwrap_or_default();
    if token == TRUNCATE_TOKEN {
        return Ok(None);
    }
    if let Ok(values) = parse_key_token(token) {
        return Ok(Some(values));
    }
    let Some(last) = store.last_envelope(subject).await? else {
        return Ok(None);
    };
    Ok(parse_key(&last.envelope.key).ok().map(|k| k.values))
}

/// After a resume: the row's key was published with this very value.
pub(super) async fn published_already(
    env: &mut Envelopes,
    relation_id: u32,
    row: &[TupleValue<'_>],
) -> Result<bool, PipelineError> {
    let (_, subject) = env.builder.key_of_row(relation_id, row)?;
    let Some(store) = &env.store else {
        return Ok(false);
    };
    if !env.builder.may_have_published(&subject) {
        return Ok(false);
    }
    let Some(last) = store.last_envelope(&subject).await? else {
        return Ok(false);
    };
    let state = store.key_state_of(&subject, &last)?;
    env.builder.offer_key_state(&last.envelope.key, state);
    if env.builder.is_too_large_marker(&last.envelope.value) {
        // Published as too large: the same again while the row is still too large.
        return Ok(env.builder.row_too_large(relation_id, row)?);
    }
    Ok(last.envelope.value == env.builder.row_value(relation_id, row)?)
}

pub(super) use crate::decode::pgoutput::text_tuple as tuple;
