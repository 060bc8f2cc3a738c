//! `walcast check`: everything walcast needs from PostgreSQL and NATS, one line per
//! check, with the fix when it fails. Takes the same settings as `walcast run`.

use std::fmt;

mod nats;

use crate::config::tables::{settings_problems, table_settings, tracked_tables, TableSettingsMap};
use crate::config::RunConfig;
use crate::source::catalog::{
    missing_publication, Catalog, ServerFacts, SlotHealth, SlotInfo, TableFacts, TOAST_NOTE,
};
use crate::source::slot::slot_problem;

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
    let nats = nats::connect(cfg).await;
    let recorded = match &nats {
        Ok(client) => nats::slot_recorded(cfg, client).await,
        Err(_) => None,
    };
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
            tables = postgres_checks(&catalog, cfg, &settings, recorded, &mut r).await;
        }
    }
    let tracked = tracked_tables(&tables, &settings);
    nats::checks(cfg, nats, &mut r, &tracked).await;
    r.0
}

/// The server, the role, the publication, its tables and the slot (`recorded`: whether
/// walcast's meta stream records streaming from it, when known); the names of the
/// published tables.
async fn postgres_checks(
    catalog: &Catalog,
    cfg: &RunConfig,
    settings: &TableSettingsMap,
    recorded: Option<bool>,
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
    let slot = SlotFound {
        info: slot,
        database: server.database.as_deref(),
        recorded,
    };
    slot_checks(catalog, cfg, slot, r).await;
    tables.into_iter().map(|t| t.name).collect()
}

fn server_checks(server: &ServerFacts, slot_exists: bool, r: &mut Report) {
    r.check(
        server.version_problem().is_none(),
        "server version",
        server.server_version.clone(),
        "walcast needs PostgreSQL 14 or later (pgoutput's messages option, which carries the heartbeat, and protocol 2 streaming arrived in 14): upgrade the server",
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
        r.ok(&name, TOAST_NOTE);
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

/// The slot as found: `pg_replication_slots`' row, the database connected to, and
/// whether walcast's meta stream records streaming from it (`None`: not known).
struct SlotFound<'a> {
    info: Option<SlotInfo>,
    database: Option<&'a str>,
    recorded: Option<bool>,
}

/// The slot fits (same rule as at start) and has not lost WAL; a missing slot is a
/// failure where `run` refuses to create it (the streams record streaming from it).
async fn slot_checks(catalog: &Catalog, cfg: &RunConfig, slot: SlotFound<'_>, r: &mut Report) {
    let Some(s) = slot.info else {
        return missing_slot(cfg, slot.recorded == Some(true), r);
    };
    let problem = slot_problem(&s, slot.database);
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
        slot_wal(cfg, &h, slot.recorded == Some(true), r);
    }
    failover_check(catalog, cfg, r).await;
}

/// The slot as a failover slot (PostgreSQL 17+): whether it is one, and whether the
/// primary holds walcast back until the standby's copy of the slot has caught up.
async fn failover_check(catalog: &Catalog, cfg: &RunConfig, r: &mut Report) {
    const NAME: &str = "failover slot";
    match catalog.slot_failover(&cfg.slot).await {
        Ok(Some(f)) if f.failover && f.standby_slots.is_empty() => r.push(
            Outcome::Warn,
            NAME,
            "FAILOVER true, but synchronized_standby_slots is empty: walcast may publish changes the standby has not received, which a failover then loses",
            Some("set synchronized_standby_slots on the primary to the standby's physical slot"),
        ),
        Ok(Some(f)) if f.failover => r.ok(
            NAME,
            format!("FAILOVER true; the primary keeps walcast behind the standby slot(s) {} (on the standby, pg_replication_slots.synced says whether the copy is synchronised)", f.standby_slots),
        ),
        Ok(Some(_)) if cfg.failover_slot => r.push(
            Outcome::Warn,
            NAME,
            "FAILOVER false: `walcast run --failover-slot` makes it one at start",
            None,
        ),
        Ok(Some(_)) => r.ok(NAME, "FAILOVER false (--failover-slot makes it one a standby keeps)"),
        Ok(None) if cfg.failover_slot => r.push(
            Outcome::Fail,
            NAME,
            "--failover-slot needs PostgreSQL 17 or later",
            Some("leave --failover-slot off, or upgrade"),
        ),
        Ok(None) => {}
        Err(e) => r.push(Outcome::Warn, NAME, e.to_string(), None),
    }
}

/// The slot's WAL: `run` refuses a slot that lost WAL once walcast streamed from it
/// (without --recreate-slot), and drops and creates again one it never streamed from.
fn slot_wal(cfg: &RunConfig, h: &SlotHealth, recorded: bool, r: &mut Report) {
    let status = h.wal_status.as_deref().unwrap_or("?");
    let detail = format!(
        "wal_status {status}, {} MiB retained",
        h.retained_bytes.unwrap_or(0) / (1024 * 1024)
    );
    match status {
        "lost" if recorded && !cfg.recreate_slot => r.push(
            Outcome::Fail,
            "slot WAL",
            format!("{detail}: the slot lost WAL walcast needs (changes may be gone), so `walcast run` refuses to start"),
            Some("start once with --recreate-slot (creates the slot again and snapshots every table again); raise max_slot_wal_keep_size"),
        ),
        "lost" => r.push(
            Outcome::Warn,
            "slot WAL",
            format!("{detail}: walcast drops the slot and creates it again at start, then snapshots every table"),
            Some("raise max_slot_wal_keep_size"),
        ),
        "unreserved" => r.push(
            Outcome::Fail,
            "slot WAL",
            format!("{detail}: the slot may lose WAL it needs"),
            Some("let walcast catch up, or raise max_slot_wal_keep_size"),
        ),
        _ => r.ok("slot WAL", detail),
    }
}

/// No slot: `run` creates it, unless walcast streamed from it before (the meta stream
/// says so) and --recreate-slot is not given: then it refuses, as changes may be gone.
fn missing_slot(cfg: &RunConfig, recorded: bool, r: &mut Report) {
    let slot = &cfg.slot;
    let meta = cfg.stream_settings().meta_name();
    if !recorded {
        return r.ok(
            "slot",
            format!(
                "\"{slot}\" does not exist yet: walcast creates it at start and snapshots the existing rows (--snapshot {})",
                snapshot_mode(cfg)
            ),
        );
    }
    if cfg.recreate_slot {
        return r.ok(
            "slot",
            format!("\"{slot}\" is gone although walcast streamed from it (stream {meta} records it): walcast creates it again (--recreate-slot) and snapshots every table again"),
        );
    }
    r.push(
        Outcome::Fail,
        "slot",
        format!("\"{slot}\" does not exist, but walcast streamed from it (stream {meta} records it): changes made since it went may be lost, so `walcast run` refuses to start"),
        Some("start once with --recreate-slot (creates the slot again and snapshots every table again: changed rows published, vanished keys deleted), or choose another --slot"),
    );
}

/// `--snapshot` as written on the command line.
fn snapshot_mode(cfg: &RunConfig) -> String {
    use clap::ValueEnum;
    cfg.snapshot
        .to_possible_value()
        .map_or_else(String::new, |v| v.get_name().to_string())
}
