//! `walcast check`: everything walcast needs from PostgreSQL and NATS, one line per
//! check, with the fix when it fails. Takes the same settings as `walcast run`.

use std::fmt;

use crate::client::{redact_url, NatsUrl};
use crate::config::tables::{settings_problems, table_settings, tracked_tables, TableSettingsMap};
use crate::config::RunConfig;
use crate::sink::delivery::{choose_delivery, default_sequence_mode, Delivery};
use crate::source::catalog::{missing_publication, Catalog, ServerFacts, SlotInfo, TableFacts};
use crate::source::slot::slot_problem;
use crate::state::inspect_stream;

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// Works, but something an operator should know (and maybe change).
    Warn,
    Fail,
}

/// One line of the report.
#[derive(Debug, Clone)]
pub struct Check {
    pub outcome: Outcome,
    pub name: String,
    pub detail: String,
    pub fix: Option<String>,
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tag = match self.outcome {
            Outcome::Ok => "ok  ",
            Outcome::Warn => "warn",
            Outcome::Fail => "FAIL",
        };
        write!(f, "{tag} {}: {}", self.name, self.detail)?;
        if let Some(fix) = &self.fix {
            write!(f, " -- fix: {fix}")?;
        }
        Ok(())
    }
}

#[derive(Default)]
struct Report(Vec<Check>);

impl Report {
    fn push(&mut self, outcome: Outcome, name: &str, detail: impl Into<String>, fix: Option<&str>) {
        self.0.push(Check {
            outcome,
            name: name.to_string(),
            detail: detail.into(),
            fix: fix.map(str::to_string),
        });
    }
    fn ok(&mut self, name: &str, detail: impl Into<String>) {
        self.push(Outcome::Ok, name, detail, None);
    }
    fn check(&mut self, pass: bool, name: &str, detail: impl Into<String>, fix: &str) {
        let outcome = if pass { Outcome::Ok } else { Outcome::Fail };
        self.push(outcome, name, detail, (!pass).then_some(fix));
    }
}

/// Run every check; the report is complete even when early ones fail.
pub async fn run(cfg: &RunConfig) -> Vec<Check> {
    let mut r = Report::default();
    let mut tables = Vec::new();
    let settings = table_settings(cfg);
    let connected = match cfg.source_settings() {
        Ok(source) => Catalog::connect(&source.params, cfg.connect_timeout).await,
        Err(e) => Err(e),
    };
    match connected {
        Err(e) => r.push(
            Outcome::Fail,
            "postgres connection",
            e.to_string(),
            Some("check --postgres-url, the network path and pg_hba.conf"),
        ),
        Ok(catalog) => {
            r.ok("postgres connection", "connected");
            tables = postgres_checks(&catalog, cfg, &settings, &mut r).await;
        }
    }
    let tracked = tracked_tables(&tables, &settings);
    nats_checks(cfg, &mut r, &tracked).await;
    r.0
}

/// The server, the role, the publication, its tables and the slot; the names of the
/// published tables.
async fn postgres_checks(
    catalog: &Catalog,
    cfg: &RunConfig,
    settings: &TableSettingsMap,
    r: &mut Report,
) -> Vec<String> {
    let server = match catalog.server_facts().await {
        Ok(s) => s,
        Err(e) => {
            r.push(Outcome::Fail, "server settings", e.to_string(), None);
            return Vec::new();
        }
    };
    let slot = catalog.slot(&cfg.slot).await.ok().flatten();
    server_checks(&server, slot.is_some(), r);
    let tables = publication_checks(catalog, cfg, r).await;
    for t in &tables {
        table_checks(t, &server, r);
    }
    if !tables.is_empty() {
        let columns = tables
            .iter()
            .map(|t| (t.name.clone(), t.columns.clone()))
            .collect();
        for problem in settings_problems(settings, &columns) {
            r.push(
                Outcome::Fail,
                "table settings",
                problem,
                Some("correct the name in --include-column/--exclude-column/--column-sequence/--ops or the [tables] section"),
            );
        }
    }
    slot_checks(catalog, cfg, slot, server.database.as_deref(), r).await;
    tables.into_iter().map(|t| t.name).collect()
}

fn server_checks(server: &ServerFacts, slot_exists: bool, r: &mut Report) {
    r.check(
        server.server_version_num >= 140_000,
        "server version",
        server.server_version.clone(),
        "walcast needs PostgreSQL 14 or later (pgoutput messages and protocol features)",
    );
    r.check(
        server.wal_level == "logical",
        "wal_level",
        server.wal_level.clone(),
        "ALTER SYSTEM SET wal_level = logical; then restart PostgreSQL",
    );
    r.check(
        server.replication_slots < server.max_replication_slots || slot_exists,
        "max_replication_slots",
        format!(
            "{} of {} in use",
            server.replication_slots, server.max_replication_slots
        ),
        "raise max_replication_slots (restart needed) or drop unused slots",
    );
    r.check(
        server.wal_senders < server.max_wal_senders,
        "max_wal_senders",
        format!(
            "{} of {} in use",
            server.wal_senders, server.max_wal_senders
        ),
        "raise max_wal_senders (restart needed)",
    );
    r.check(
        server.replication || server.superuser,
        "role",
        format!(
            "{} (replication: {}, superuser: {})",
            server.user, server.replication, server.superuser
        ),
        &format!("ALTER ROLE {} REPLICATION (see sql/setup.sql)", server.user),
    );
    if server.superuser {
        r.push(
            Outcome::Warn,
            "least privilege",
            format!("{} is a superuser", server.user),
            Some("run walcast as the role sql/setup.sql creates (REPLICATION + SELECT)"),
        );
    }
}

/// The publication exists and lists tables; its tables (empty when it fails).
async fn publication_checks(catalog: &Catalog, cfg: &RunConfig, r: &mut Report) -> Vec<TableFacts> {
    match catalog.publication_exists(&cfg.publication).await {
        Ok(true) => {}
        Ok(false) => {
            r.push(
                Outcome::Fail,
                "publication",
                format!("\"{}\" does not exist", cfg.publication),
                Some(&missing_publication(&cfg.publication)),
            );
            return Vec::new();
        }
        Err(e) => {
            r.push(Outcome::Fail, "publication", e.to_string(), None);
            return Vec::new();
        }
    }
    let tables = match catalog.publication_tables(&cfg.publication).await {
        Ok(t) => t,
        Err(e) => {
            r.push(Outcome::Fail, "publication", e.to_string(), None);
            return Vec::new();
        }
    };
    if tables.is_empty() {
        r.push(
            Outcome::Warn,
            "publication",
            format!("\"{}\" has no tables", cfg.publication),
            Some("ALTER PUBLICATION ... ADD TABLE ..."),
        );
    } else {
        let names: Vec<&str> = tables.iter().map(|t| t.name.as_str()).collect();
        r.ok(
            "publication",
            format!("\"{}\": {}", cfg.publication, names.join(", ")),
        );
    }
    tables
}

/// A table can be keyed, its TOASTed columns reached, its rows read.
fn table_checks(t: &TableFacts, server: &ServerFacts, r: &mut Report) {
    let name = format!("table {}", t.name);
    let identity = if t.full_identity {
        "replica identity FULL"
    } else if t.has_identity_index {
        "replica identity index"
    } else {
        "replica identity default"
    };
    r.check(
        t.is_keyed(),
        &name,
        format!(
            "{}, {identity}",
            if t.has_primary_key {
                "primary key"
            } else {
                "no primary key"
            }
        ),
        &format!(
            "ALTER TABLE {} ADD PRIMARY KEY (...), or REPLICA IDENTITY USING INDEX <unique index>",
            t.name
        ),
    );
    if t.toastable && !t.full_identity {
        r.push(
            Outcome::Warn,
            &name,
            "has TOASTable columns without REPLICA IDENTITY FULL: an unchanged large value not seen before is read from the table",
            Some(&format!("ALTER TABLE {} REPLICA IDENTITY FULL", t.name)),
        );
    }
    if !t.can_select {
        r.push(
            Outcome::Warn,
            &name,
            "no SELECT privilege (needed to read an unchanged TOAST value)",
            Some(&format!("GRANT SELECT ON {} TO {}", t.name, server.user)),
        );
    }
}

/// The slot fits (same rule as at start) and has not lost WAL.
async fn slot_checks(
    catalog: &Catalog,
    cfg: &RunConfig,
    slot: Option<SlotInfo>,
    database: Option<&str>,
    r: &mut Report,
) {
    let Some(s) = slot else {
        r.ok(
            "slot",
            format!(
                "\"{}\" does not exist yet: walcast creates it at start and snapshots the existing rows (--snapshot {})",
                cfg.slot,
                snapshot_mode(cfg)
            ),
        );
        return;
    };
    let problem = slot_problem(&s, database);
    r.check(
        problem.is_none(),
        "slot",
        format!(
            "\"{}\" plugin {}, {}{}; the first time walcast streams it (made by walcast or by an operator) it snapshots the existing rows (--snapshot {})",
            cfg.slot,
            s.plugin.as_deref().unwrap_or("?"),
            if s.active { "active" } else { "inactive" },
            problem
                .as_deref()
                .map(|p| format!(": {p}"))
                .unwrap_or_default(),
            snapshot_mode(cfg)
        ),
        "drop the slot or choose another --slot",
    );
    if let Ok(Some(h)) = catalog.slot_health(&cfg.slot).await {
        let lost = matches!(h.wal_status.as_deref(), Some("lost" | "unreserved"));
        r.check(
            !lost,
            "slot WAL",
            format!(
                "wal_status {}, {} MiB retained",
                h.wal_status.as_deref().unwrap_or("?"),
                h.retained_bytes.unwrap_or(0) / (1024 * 1024)
            ),
            "the slot lost or may lose WAL it needs: drop it (sql/teardown.sql) and start again; raise max_slot_wal_keep_size",
        );
    }
}

/// `--snapshot` as written on the command line.
fn snapshot_mode(cfg: &RunConfig) -> String {
    use clap::ValueEnum;
    cfg.snapshot
        .to_possible_value()
        .map_or_else(String::new, |v| v.get_name().to_string())
}

async fn nats_checks(cfg: &RunConfig, r: &mut Report, tracked: &[&String]) {
    let shown = redact_url(&cfg.nats.url);
    let connected = match NatsUrl::parse(&cfg.nats.url) {
        Ok(url) => match url.options_with(&cfg.nats.auth()).await {
            Ok(options) => url
                .connect_with(options.connection_timeout(cfg.connect_timeout))
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        },
        Err(e) => Err(e.to_string()),
    };
    let client = match connected {
        Ok(c) => c,
        Err(e) => {
            r.push(
                Outcome::Fail,
                "nats connection",
                format!("{shown}: {e}"),
                Some("check --nats-url and that nats-server runs"),
            );
            return;
        }
    };
    let info = client.server_info();
    r.ok(
        "nats connection",
        format!("{shown} (server {})", info.version),
    );
    if jetstream_checks(cfg, &info, r, tracked) {
        stream_checks(cfg, client, r).await;
    }
}

/// Whether JetStream is used (and a durable sequence possible for every table);
/// `true` when the stream is to be checked.
fn jetstream_checks(
    cfg: &RunConfig,
    info: &async_nats::ServerInfo,
    r: &mut Report,
    tracked: &[&String],
) -> bool {
    let delivery = choose_delivery(cfg.delivery, info.jetstream);
    if delivery != Ok(Delivery::Jetstream) {
        let mode = delivery.and_then(|d| {
            default_sequence_mode(d, info.jetstream, cfg.volatile_sequences, tracked)
        });
        r.push(
            if mode.is_err() {
                Outcome::Fail
            } else {
                Outcome::Warn
            },
            "jetstream",
            if info.jetstream {
                "available, not used (--delivery core)".to_string()
            } else {
                "not available".to_string()
            },
            mode.err().as_deref(),
        );
        return false;
    }
    r.ok("jetstream", "available");
    true
}

/// The stream exists and fits, or does not exist yet.
async fn stream_checks(cfg: &RunConfig, client: async_nats::Client, r: &mut Report) {
    let js = async_nats::jetstream::new(client);
    let stream = cfg.stream_settings();
    match inspect_stream(&js, &stream).await {
        Ok(None) => r.ok(
            "stream",
            format!(
                "\"{}\" does not exist yet: walcast creates it at start",
                stream.name
            ),
        ),
        Ok(Some(problems)) => r.check(
            problems.is_empty(),
            "stream",
            if problems.is_empty() {
                format!("\"{}\" fits", stream.name)
            } else {
                format!("\"{}\": {}", stream.name, problems.join("; "))
            },
            "fix or delete the stream, or choose another --stream",
        ),
        Err(e) => r.push(Outcome::Fail, "stream", e.to_string(), None),
    }
}
