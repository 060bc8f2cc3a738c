//! `walcast verify`: every row of the tables against its key's last envelope in
//! walcast's stream, key by key, read-only (it publishes nothing).
//!
//! Each table is read in key order, in chunks of `--chunk-rows` (the snapshot's keyset
//! reads, with the WAL position after each: its high watermark). Each row becomes the
//! value walcast would publish (the envelope stage, told about the table as the reader
//! tells it) and is compared with its key's last envelope (batched direct gets). Then
//! the stream's keys of the table are listed: those the row pass did not read are
//! looked for in the table, and those without a row whose last envelope is not a
//! delete are the keys gone from the table. A key that differs at the first look is
//! looked at again ([`recheck`]) once the stream has passed the watermark, so a change
//! in flight is never reported as a difference.
//!
//! - [`compare`]: the verdict on a row and an envelope (no I/O);
//! - [`recheck`]: the second look, and waiting for the stream;
//! - [`report`]: counts, keys, text and JSON;
//! - [`repair`]: `--repair`, re-snapshot requests to the running instance.

mod compare;
mod recheck;
mod repair;
mod report;

use std::collections::HashSet;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::bail;

use crate::client::{redact_url, StoredEnvelope};
use crate::config::tables::{settings_problems, table_settings};
use crate::config::{Delivery, VerifyConfig};
use crate::decode::pgoutput::text_tuple as tuple;
use crate::decode::types::TypeRegistry;
use crate::envelope::sequence::SequenceMode;
use crate::envelope::EnvelopeBuilder;
use crate::source::catalog::Catalog;
use crate::source::chunks::TableInfo;
use crate::state::{next_subjects, StateStore, SubjectPages};
use crate::wire::key::{make_key, name_token, parse_key, parse_key_token, TRUNCATE_TOKEN};
use crate::wire::Position;
use compare::{on_bus, verdict, Verdict};
use report::TableReport;

/// `walcast verify`: the report of each table; exit status 1 when any differs. A
/// repair that fails is said in the table's report, and is the command's error once
/// every table is reported.
pub(super) async fn verify(cfg: VerifyConfig) -> anyhow::Result<ExitCode> {
    let mut v = Verifier::open(&cfg).await?;
    let tables = v.tables_to_verify(&cfg).await?;
    let (mut differs, mut repair_failed) = (false, None);
    for table in &tables {
        let mut report = v.verify_table(table).await?;
        differs |= report.differs();
        let to_repair = report.differs() || report.repair_keys().is_some_and(|k| !k.is_empty());
        if cfg.repair && to_repair {
            report.repair = Some(match repair::repair(&v.client, &v.prefix, &report).await {
                Ok(done) => done,
                Err(e) => {
                    let said = format!("failed: {e:#}");
                    repair_failed.get_or_insert(e.context(format!("repairing {table}")));
                    said
                }
            });
        }
        if cfg.json {
            println!("{}", report.json());
        } else {
            println!("{}", report.text());
        }
    }
    if let Some(e) = repair_failed {
        return Err(e);
    }
    Ok(if differs {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// A key to look at: its key, subject and key column texts.
#[derive(Debug, Clone)]
struct KeyRef {
    key: String,
    subject: String,
    values: Vec<String>,
}

/// A table being verified.
struct Table {
    info: TableInfo,
    /// The subject of its truncate envelopes.
    truncate_subject: String,
    /// The subjects of the rows read (a 64-bit hash each, 16 bytes a row): the
    /// stream's keys among them have a row, the others are looked for in the table.
    seen: HashSet<u64>,
}

/// A subject's hash in [`Table::seen`].
fn subject_hash(subject: &str) -> u64 {
    use std::hash::BuildHasher;
    foldhash::quality::FixedState::default().hash_one(subject)
}

/// What verify reads: the catalog, the stream, and the envelope stage that turns a
/// row into its key, subject and published value.
struct Verifier {
    catalog: Catalog,
    store: StateStore,
    client: async_nats::Client,
    builder: EnvelopeBuilder,
    types: TypeRegistry,
    prefix: String,
    slot: String,
    chunk_rows: usize,
    /// walcast's slot streams (else the stream is compared as it is, without waiting).
    streaming: bool,
}

impl Verifier {
    /// Connect to PostgreSQL and to walcast's stream (an error without it).
    async fn open(cfg: &VerifyConfig) -> anyhow::Result<Verifier> {
        let run = &cfg.run;
        let settings = run.resolve()?;
        let needs_stream = |why: String| {
            anyhow::anyhow!(
                "verify compares the tables with walcast's JetStream stream {} (each key's last envelope) and {why}: verify needs the stream (walcast on core NATS keeps no per-key state to compare with)",
                settings.delivery.stream.name
            )
        };
        if run.delivery == Delivery::Core {
            return Err(needs_stream("--delivery core has none".into()));
        }
        let catalog = Catalog::connect(&settings.source.params, run.connect_timeout).await?;
        let client = crate::client::connect_with_auth(&run.nats.url, &run.nats.auth()).await?;
        let js = async_nats::jetstream::new(client.clone());
        let stream_settings = &settings.delivery.stream;
        let mut streams = Vec::new();
        for name in [stream_settings.name.clone(), stream_settings.meta_name()] {
            let stream = js.get_stream(&name).await.map_err(|e| {
                needs_stream(format!(
                    "{} has no stream {name} ({e})",
                    redact_url(&run.nats.url)
                ))
            })?;
            streams.push(stream);
        }
        let meta = streams.pop().expect("two streams");
        let stream = streams.pop().expect("two streams");
        let store = StateStore::new(js, stream, meta, stream_settings);
        Ok(Verifier {
            catalog,
            store,
            client,
            builder: EnvelopeBuilder::new(settings.envelope, SequenceMode::Tracked),
            types: TypeRegistry::new(),
            prefix: run.subject_prefix.clone(),
            slot: run.slot.clone(),
            chunk_rows: cfg.chunk_rows as usize,
            streaming: true,
        })
    }

    /// The tables named (each must be published), or every table of the publication.
    async fn tables_to_verify(&self, cfg: &VerifyConfig) -> anyhow::Result<Vec<String>> {
        let publication = &cfg.run.publication;
        let facts = self.catalog.publication_tables(publication).await?;
        let columns = facts
            .iter()
            .map(|t| (t.name.clone(), t.columns.clone()))
            .collect();
        let problems = settings_problems(&table_settings(&cfg.run), &columns);
        if !problems.is_empty() {
            bail!("{}", problems.join("; "));
        }
        let published: Vec<String> = facts.into_iter().map(|t| t.name).collect();
        if cfg.tables.is_empty() {
            return Ok(published);
        }
        for t in &cfg.tables {
            if !published.contains(t) {
                bail!(
                    "{t} is not a table of publication \"{publication}\" (its tables: {})",
                    published.join(", ")
                );
            }
        }
        Ok(cfg.tables.clone())
    }

    /// One table: its rows against the stream, then the stream's keys against the table.
    async fn verify_table(&mut self, name: &str) -> anyhow::Result<TableReport> {
        let started = Instant::now();
        let info = self.catalog.table_info(name).await?;
        if info.key.is_empty() {
            bail!("{name} has no primary key or replica identity index: walcast publishes none of its rows");
        }
        self.register(&info).await?;
        self.slot_confirmed().await?;
        let truncate_subject = format!(
            "{}.{}.{}.{TRUNCATE_TOKEN}",
            self.prefix,
            name_token(&info.schema),
            name_token(&info.name)
        );
        let mut table = Table {
            info,
            truncate_subject,
            seen: HashSet::new(),
        };
        let mut report = TableReport::new(name);
        let mut after = None;
        loop {
            after = self.rows_chunk(&mut table, after, &mut report).await?;
            if after.is_none() {
                break;
            }
        }
        let mut pages = self
            .store
            .table_subjects(&table.info.schema, &table.info.name)
            .await?;
        while self.sweep_page(&table, &mut pages, &mut report).await? {}
        report.streaming = self.streaming;
        report.timed(started.elapsed());
        Ok(report)
    }

    /// Tell the envelope stage about a table the way the reader does: column types
    /// (domains and arrays down to their base) and the key from the catalog.
    async fn register(&mut self, info: &TableInfo) -> anyhow::Result<()> {
        let columns = crate::pipeline::catalog_columns(info);
        let resolved = crate::pipeline::resolve_from_catalog(
            &self.catalog,
            &mut self.types,
            info.relation_id,
            info.replica_identity,
            &columns,
        )
        .await?;
        self.builder.on_relation(
            info.relation_id,
            &info.schema,
            &info.name,
            info.replica_identity,
            resolved.columns,
            resolved.key,
        )?;
        Ok(())
    }

    /// A row read from the table: its key and its published value.
    fn key_and_value(
        &self,
        info: &TableInfo,
        texts: &[Option<String>],
    ) -> anyhow::Result<(KeyRef, rmpv::Value)> {
        let row = tuple(texts);
        let (key, subject) = self.builder.key_of_row(info.relation_id, &row)?;
        let values = info
            .key
            .iter()
            .map(|&i| texts[i].clone().unwrap_or_default())
            .collect();
        let value = self.builder.row_value(info.relation_id, &row)?;
        Ok((
            KeyRef {
                key,
                subject,
                values,
            },
            value,
        ))
    }

    /// Where the table's last truncate sits (`None`: never truncated).
    async fn truncated(&self, table: &Table) -> anyhow::Result<Option<Position>> {
        let last = self.store.last_envelope(&table.truncate_subject).await?;
        Ok(last.as_ref().map(compare::position_of))
    }

    /// The next chunk of rows after `after`, compared (a key that differs is looked at
    /// again); the chunk's last key, `None` once the table is read.
    async fn rows_chunk(
        &mut self,
        table: &mut Table,
        after: Option<Vec<String>>,
        report: &mut TableReport,
    ) -> anyhow::Result<Option<Vec<String>>> {
        let info = &table.info;
        let texts = self
            .catalog
            .read_chunk(info, (after.as_deref(), self.chunk_rows), &[])
            .await?;
        let mut rows = Vec::with_capacity(texts.len());
        for row in &texts {
            rows.push(self.key_and_value(info, row)?);
        }
        let subjects: Vec<String> = rows.iter().map(|(k, _)| k.subject.clone()).collect();
        table.seen.extend(subjects.iter().map(|s| subject_hash(s)));
        let bus = self.store.last_envelopes(&subjects).await?.by_subject;
        let truncated = self.truncated(table).await?;
        let mut again = Vec::new();
        for (key, value) in rows {
            match verdict(Some(&value), on_bus(bus.get(&key.subject), truncated)) {
                v if v.settled() => report.add(key.key, v),
                _ => again.push(key),
            }
        }
        report.rows += texts.len() as u64;
        for (key, v) in self.recheck(table, again, report).await? {
            report.add(key.key, v);
        }
        if texts.len() < self.chunk_rows {
            return Ok(None);
        }
        let last = texts.last().expect("a full chunk");
        Ok(Some(
            table
                .info
                .key
                .iter()
                .map(|&i| last[i].clone().unwrap_or_default())
                .collect(),
        ))
    }

    /// The next page of the stream's keys of the table: those the row pass did not
    /// read are looked for in the table, and those without a row whose last envelope
    /// is not a delete are looked at again and counted as gone. `false` once the
    /// listing is done.
    async fn sweep_page(
        &mut self,
        table: &Table,
        pages: &mut SubjectPages,
        report: &mut TableReport,
    ) -> anyhow::Result<bool> {
        let listed = next_subjects(pages, self.chunk_rows).await?;
        let subjects: Vec<String> = listed
            .iter()
            .filter(|s| !table.seen.contains(&subject_hash(s)))
            .cloned()
            .collect();
        let keys = self.keys_of_subjects(table, &subjects).await?;
        let values: Vec<Vec<String>> = keys.iter().map(|k| k.values.clone()).collect();
        let existing: HashSet<Vec<String>> = self
            .catalog
            .existing_keys(&table.info, &values, &[])
            .await?
            .into_iter()
            .collect();
        let rowless: Vec<KeyRef> = keys
            .into_iter()
            .filter(|k| !existing.contains(&k.values))
            .collect();
        let rowless_subjects: Vec<String> = rowless.iter().map(|k| k.subject.clone()).collect();
        let bus = self
            .store
            .last_envelopes(&rowless_subjects)
            .await?
            .by_subject;
        let truncated = self.truncated(table).await?;
        let gone: Vec<KeyRef> = rowless
            .into_iter()
            .filter(|k| verdict(None, on_bus(bus.get(&k.subject), truncated)) == Verdict::Gone)
            .collect();
        for (key, v) in self.recheck(table, gone, report).await? {
            // A row that came back meanwhile was not read by the row pass: not counted.
            if v != Verdict::Equal {
                report.add(key.key, v);
            }
        }
        Ok(listed.len() == self.chunk_rows)
    }

    /// The keys of key subjects of the table (from the subject, or for a hashed key
    /// token from its last envelope); the truncate subject is left out.
    async fn keys_of_subjects(
        &self,
        table: &Table,
        subjects: &[String],
    ) -> anyhow::Result<Vec<KeyRef>> {
        let (schema, name) = (&table.info.schema, &table.info.name);
        let mut keys = Vec::with_capacity(subjects.len());
        let mut hashed = Vec::new();
        for subject in subjects {
            let token = subject.rsplit('.').next().unwrap_or_default();
            if token == TRUNCATE_TOKEN {
                continue;
            }
            match parse_key_token(token) {
                Ok(values) => keys.push(KeyRef {
                    key: make_key(schema, name, values.iter().map(String::as_str)),
                    subject: subject.clone(),
                    values,
                }),
                Err(_) => hashed.push(subject.clone()),
            }
        }
        let found = self.store.last_envelopes(&hashed).await?.by_subject;
        for (subject, stored) in found {
            if let Some(key) = key_of_envelope(subject, &stored) {
                keys.push(key);
            }
        }
        Ok(keys)
    }
}

/// The key an envelope names, on its subject.
fn key_of_envelope(subject: String, stored: &StoredEnvelope) -> Option<KeyRef> {
    let parsed = parse_key(&stored.envelope.key).ok()?;
    Some(KeyRef {
        key: stored.envelope.key.clone(),
        subject,
        values: parsed.values,
    })
}
