//! The snapshot stage: rows that exist before walcast (or a re-snapshot) become
//! `op = "snapshot"` envelopes, read while the replication stream runs.
//!
//! Chunks are read in key order (keyset pagination, `--snapshot-chunk-rows` rows each:
//! bounded memory whatever the table size), one statement each, between two reads of
//! the WAL position: the low and high **watermarks** (the DBLog technique, read-only:
//! no write to the database, no long transaction holding WAL). Until the stream has
//! passed the high watermark, every live change of a key in the chunk removes that
//! row from the chunk (the stream carries the newer value); then the rest of the chunk
//! is published, placed in the WAL order just before the high watermark. No change is
//! lost or doubled at the hand-off and no key goes backwards.
//!
//! Progress (per table: done, the last key read, rows) is stored in the meta stream
//! once NATS confirmed the chunk; after a crash the snapshot resumes at the last
//! stored key, and rows already published with the same value are not published again.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::hash::BuildHasher;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::source::chunks::TableInfo;
use crate::wire::{Lsn, Position};

/// When existing rows are published (`--snapshot`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SnapshotMode {
    /// On a new slot (and to finish one a crash interrupted), then stream.
    Initial,
    /// Never: only changes from the slot on.
    Never,
    /// Snapshot (a new slot, or an unfinished snapshot), then exit.
    Only,
}

/// How the snapshot stage runs (`config/` builds it from the flags).
#[derive(Debug, Clone)]
pub struct SnapshotSettings {
    pub mode: SnapshotMode,
    /// Rows read per chunk (`--snapshot-chunk-rows`; memory is bounded by one chunk).
    pub chunk_rows: usize,
}

/// What a snapshot has done, as the meta stream stores it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    pub tables: BTreeMap<String, TableProgress>,
    pub complete: bool,
}

impl Progress {
    /// A snapshot of `tables` that has not read a row yet.
    pub fn started(tables: &[String]) -> Progress {
        let mut progress = Progress::default();
        progress.restart(tables);
        progress
    }

    /// Read `tables` again from their first row; the snapshot is not complete.
    pub fn restart(&mut self, tables: &[String]) {
        for t in tables {
            self.tables.insert(t.clone(), TableProgress::default());
        }
        self.complete = false;
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableProgress {
    pub done: bool,
    /// Text forms of the last key read.
    pub last_key: Option<Vec<String>>,
    pub rows: u64,
}

/// A chunk read and waiting for the stream to pass its high watermark.
pub(super) struct Chunk {
    pub table: String,
    pub relation_id: u32,
    pub high: Lsn,
    /// (key, column texts) in key order.
    pub rows: Vec<(String, Vec<Option<String>>)>,
    /// Keys the stream changed since the low watermark.
    pub removed: HashSet<String>,
    /// Keys the stream holds and the table no longer has (a re-snapshot's sweep):
    /// (key, key column texts); each gets a `delete` unless the stream changed it.
    pub vanished: Vec<(String, Vec<String>)>,
    /// The last key's text forms, and whether the table ends with this chunk.
    pub last_key: Option<Vec<String>>,
    pub last: bool,
}

/// Keys the stream changed since the snapshot began or last queued tables (hashes):
/// a chunk read after such a change sees it (the read waits until it does), so the
/// stream already carries the row's value and the row is not published again.
/// Bounded: past the bound, rows are published again (duplicates, never a loss).
#[derive(Default)]
pub(super) struct StreamedKeys {
    hashes: HashSet<u64>,
    state: std::hash::RandomState,
}

/// How many keys [`StreamedKeys`] holds at most (about 16 MiB).
const STREAMED_KEYS_MAX: usize = 1 << 20;

impl StreamedKeys {
    pub fn record(&mut self, key: &str) {
        if self.hashes.len() < STREAMED_KEYS_MAX {
            self.hashes.insert(self.state.hash_one(key));
        }
    }

    pub fn contains(&self, key: &str) -> bool {
        !self.hashes.is_empty() && self.hashes.contains(&self.state.hash_one(key))
    }

    /// Tables were queued (again): what the stream carried may be older than their
    /// rows (changes made while a table was out of the publication).
    pub fn forget(&mut self) {
        self.hashes = HashSet::new();
    }
}

/// A table being read.
struct TableRun {
    info: TableInfo,
    rows: u64,
    started: Instant,
    logged: Instant,
    /// Every row is read; the stream's subjects of the table are being compared
    /// with the table (the listing, once started).
    sweep: Option<Option<crate::state::SubjectPages>>,
}

/// The snapshot of a list of tables, driven by the reader.
pub(super) struct Snapshot {
    pub chunk_rows: usize,
    queue: VecDeque<String>,
    current: Option<TableRun>,
    pub pending: Option<Chunk>,
    pub progress: Progress,
    /// Progress to store once NATS confirmed everything up to the position.
    unstored: VecDeque<(Position, Progress)>,
    /// Tables resumed after a crash: rows equal to the stream's are not published again.
    pub verify: HashSet<String>,
    pub streamed: StreamedKeys,
    pub started: Instant,
    pub rows_total: u64,
}

impl Snapshot {
    /// A snapshot of `tables`, resuming `progress` (from the meta stream).
    pub fn new(tables: &[String], progress: Progress, chunk_rows: usize) -> Snapshot {
        let queue: VecDeque<String> = tables
            .iter()
            .filter(|t| !progress.tables.get(*t).is_some_and(|p| p.done))
            .cloned()
            .collect();
        // Resuming: chunks published after the last stored progress may be read
        // again; their rows are compared with what the stream holds.
        let verify = if progress.tables.is_empty() {
            HashSet::new()
        } else {
            queue.iter().cloned().collect()
        };
        Snapshot {
            chunk_rows: chunk_rows.max(1),
            queue,
            current: None,
            pending: None,
            progress,
            unstored: VecDeque::new(),
            verify,
            streamed: StreamedKeys::default(),
            started: Instant::now(),
            rows_total: 0,
        }
    }

    /// Tables not finished (the one being read included).
    pub fn tables_remaining(&self) -> usize {
        self.queue.len() + usize::from(self.current.is_some())
    }

    /// The next table to read, when no table is being read.
    pub fn next_table(&mut self) -> Option<String> {
        if self.current.is_some() {
            return None;
        }
        self.queue.front().cloned()
    }

    /// Start reading `info` (the table [`Snapshot::next_table`] named).
    pub fn start_table(&mut self, info: TableInfo) {
        self.queue.pop_front();
        self.progress.tables.entry(info.qualified()).or_default();
        self.current = Some(TableRun {
            info,
            rows: 0,
            started: Instant::now(),
            logged: Instant::now(),
            sweep: None,
        });
    }

    /// Queue a re-snapshot of `tables` (rows equal to the stream's last envelope are
    /// not published again; keys without a row get a `delete`). Returns the tables
    /// queued (not already queued or being read).
    pub fn add_tables(&mut self, tables: &[String]) -> Vec<String> {
        self.streamed.forget();
        let reading = self.current.as_ref().map(|r| r.info.qualified());
        let mut added = Vec::new();
        for t in tables {
            if self.queue.contains(t) || reading.as_ref() == Some(t) {
                continue;
            }
            self.progress
                .tables
                .insert(t.clone(), TableProgress::default());
            self.progress.complete = false;
            self.queue.push_back(t.clone());
            self.verify.insert(t.clone());
            added.push(t.clone());
        }
        added
    }

    /// The table being read has no rows left: compare the stream's keys with it next.
    pub fn start_sweep(&mut self) {
        if let Some(run) = self.current.as_mut() {
            run.sweep.get_or_insert(None);
        }
    }

    /// The sweep of the table being read, when its rows are all read.
    pub fn sweep(&mut self) -> Option<&mut Option<crate::state::SubjectPages>> {
        self.current.as_mut()?.sweep.as_mut()
    }

    /// The table being read and where to continue.
    pub fn current(&self) -> Option<(&TableInfo, Option<&[String]>)> {
        let run = self.current.as_ref()?;
        let last = self
            .progress
            .tables
            .get(&run.info.qualified())
            .and_then(|p| p.last_key.as_deref());
        Some((&run.info, last))
    }

    /// Whether a chunk should be read now.
    pub fn wants_chunk(&self) -> bool {
        self.pending.is_none() && (self.current.is_some() || !self.queue.is_empty())
    }

    /// Everything read, published and confirmed.
    pub fn is_finished(&self) -> bool {
        self.queue.is_empty() && self.current.is_none() && self.pending.is_none()
    }

    /// The pending chunk was published: envelopes up to `last`, `published` rows.
    /// Returns the log line when one is due.
    pub fn chunk_done(
        &mut self,
        chunk: Chunk,
        last: Option<Position>,
        published: u64,
    ) -> Option<String> {
        self.rows_total += published;
        let table = self.progress.tables.entry(chunk.table.clone()).or_default();
        table.rows += published;
        table.last_key = chunk.last_key.clone();
        table.done = chunk.last;
        let rows = table.rows;
        if let Some(last) = last {
            self.unstored.push_back((last, self.progress.clone()));
        }
        let run = self.current.as_mut()?;
        run.rows += published;
        let line = if chunk.last || run.logged.elapsed() >= Duration::from_secs(5) {
            run.logged = Instant::now();
            Some(progress_line(
                &run.info,
                rows,
                run.rows,
                run.started.elapsed(),
                chunk.last,
            ))
        } else {
            None
        };
        if chunk.last {
            self.current = None;
            self.verify.remove(&chunk.table);
        }
        line
    }

    /// The newest progress whose envelopes are all confirmed (up to `confirmed`).
    pub fn confirmed_progress(&mut self, confirmed: Position) -> Option<Progress> {
        let mut latest = None;
        while self.unstored.front().is_some_and(|(p, _)| *p <= confirmed) {
            latest = self.unstored.pop_front().map(|(_, p)| p);
        }
        latest
    }

    /// Nothing confirmed is left to store.
    pub fn all_stored(&self) -> bool {
        self.unstored.is_empty()
    }

    /// The text `/readyz` shows while snapshotting.
    pub fn note(&self) -> String {
        match &self.current {
            Some(run) => format!(
                "snapshotting: {} {} of ~{} rows, {} table(s) to go",
                run.info.qualified(),
                self.progress
                    .tables
                    .get(&run.info.qualified())
                    .map_or(0, |p| p.rows),
                run.info.estimated_rows.max(0),
                self.tables_remaining()
            ),
            None => format!("snapshotting: {} table(s) to go", self.tables_remaining()),
        }
    }
}

/// `public.t: 12000 of ~20000 rows, 8100 rows/s, ETA 1 s`.
fn progress_line(
    info: &TableInfo,
    total: u64,
    this_run: u64,
    elapsed: Duration,
    done: bool,
) -> String {
    let rate = this_run as f64 / elapsed.as_secs_f64().max(0.001);
    let estimate = info.estimated_rows.max(total as i64) as u64;
    if done {
        return format!(
            "snapshot of {} done: {total} rows, {:.0} rows/s",
            info.qualified(),
            rate
        );
    }
    let eta = (estimate.saturating_sub(total)) as f64 / rate.max(1.0);
    format!(
        "snapshot of {}: {total} of ~{estimate} rows, {rate:.0} rows/s, ETA {eta:.0} s",
        info.qualified()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(name: &str) -> TableInfo {
        TableInfo {
            relation_id: 1,
            schema: "public".into(),
            name: name.into(),
            replica_identity: b'd',
            columns: vec![],
            key: vec![0],
            estimated_rows: 10,
        }
    }

    #[test]
    fn positions_and_progress_move_only_forwards() {
        let mut s = Snapshot::new(
            &["public.a".into(), "public.b".into()],
            Progress::default(),
            2,
        );
        assert_eq!(s.next_table().as_deref(), Some("public.a"));
        s.start_table(info("a"));
        let chunk = |last| Chunk {
            table: "public.a".into(),
            relation_id: 1,
            high: Lsn(800),
            rows: vec![],
            removed: HashSet::new(),
            vanished: vec![],
            last_key: Some(vec!["2".into()]),
            last,
        };
        s.chunk_done(
            chunk(false),
            Some(Position {
                commit_lsn: Lsn(799),
                ordinal: 1,
            }),
            2,
        );
        assert!(s
            .confirmed_progress(Position {
                commit_lsn: Lsn(799),
                ordinal: 0
            })
            .is_none());
        let stored = s
            .confirmed_progress(Position {
                commit_lsn: Lsn(799),
                ordinal: 1,
            })
            .unwrap();
        assert_eq!(
            stored.tables["public.a"].last_key,
            Some(vec!["2".to_string()])
        );
        s.chunk_done(chunk(true), None, 0);
        assert_eq!(s.next_table().as_deref(), Some("public.b"));
        // Resuming: done tables are skipped, the interrupted one is verified.
        let mut progress = Progress::default();
        progress.tables.insert(
            "public.a".into(),
            TableProgress {
                done: true,
                last_key: None,
                rows: 5,
            },
        );
        progress.tables.insert(
            "public.b".into(),
            TableProgress {
                done: false,
                last_key: Some(vec!["3".into()]),
                rows: 3,
            },
        );
        let mut r = Snapshot::new(&["public.a".into(), "public.b".into()], progress, 2);
        assert_eq!(r.next_table().as_deref(), Some("public.b"));
        assert!(r.verify.contains("public.b"));
        assert!(!r.verify.contains("public.a"));
    }
}
