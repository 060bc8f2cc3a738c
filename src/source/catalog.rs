//! Ordinary SQL over `tokio-postgres`: the [`Catalog`] connection (waiting for a
//! server that is starting), key columns, type descriptions, slot state, dropping
//! slots and publications, and the rare row fetch for a missing TOAST value. The
//! checks before streaming are in [`preflight`](super::preflight).

use std::time::Duration;

use tokio_postgres::{Client, NoTls};

use super::conn::quote_ident;
use super::params::ConnectParams;
use super::visibility::{SeenSnapshot, SNAPSHOT_TEXT};
use super::SourceError;

pub use super::preflight::{missing_publication, Preflight, ServerFacts, TableFacts, TOAST_NOTE};

/// A row of `pg_type` as the resolver needs it.
#[derive(Debug, Clone)]
pub struct PgTypeRow {
    pub oid: u32,
    /// `b` base, `d` domain, `e` enum, `c` composite, `r` range, `m` multirange, `p` pseudo.
    pub typtype: u8,
    pub typelem: u32,
    pub typbasetype: u32,
    pub typdelim: u8,
    pub typlen: i16,
}

/// What `pg_replication_slots` says of a slot.
#[derive(Debug, Clone)]
pub struct SlotInfo {
    pub plugin: Option<String>,
    pub database: Option<String>,
    pub active: bool,
    pub confirmed_flush_lsn: Option<String>,
}

/// A failover slot's settings (PostgreSQL 17+).
#[derive(Debug, Clone)]
pub struct SlotFailover {
    pub failover: bool,
    /// The primary's `synchronized_standby_slots` (empty: it waits for no standby).
    pub standby_slots: String,
}

/// A slot's health, for metrics and `walcast check`.
#[derive(Debug, Clone)]
pub struct SlotHealth {
    pub active: bool,
    pub wal_status: Option<String>,
    pub safe_wal_size: Option<i64>,
    pub retained_bytes: Option<i64>,
}

/// What the connected role may drop of what walcast made (`walcast teardown`).
#[derive(Debug, Clone)]
pub struct DropRights {
    pub user: String,
    /// REPLICATION or superuser: it may drop replication slots.
    pub slots: bool,
    /// The publication's owner, and whether the role acts as it (a member of the
    /// owning role, or a superuser): `None` when there is no such publication.
    pub publication: Option<(String, bool)>,
}

/// A `tokio-postgres` connection for catalog questions.
pub struct Catalog {
    pub(super) client: Client,
}

/// Open a connection and drive it on a task of its own.
async fn start<T>(
    config: &tokio_postgres::Config,
    tls: T,
    target: String,
) -> Result<Client, SourceError>
where
    T: tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket>,
    T::Stream: Send + 'static,
{
    let (client, connection) = config
        .connect(tls)
        .await
        .map_err(|e| connect_error(e, target))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "catalog connection ended");
        }
    });
    Ok(client)
}

fn connect_error(e: tokio_postgres::Error, target: String) -> SourceError {
    if let Some(db) = e.as_db_error() {
        if db.code().code().starts_with("28") {
            return SourceError::Auth(db.message().to_string());
        }
    }
    match std::error::Error::source(&e).and_then(|s| s.downcast_ref::<std::io::Error>()) {
        Some(io) => SourceError::Connect {
            target,
            source: std::io::Error::new(io.kind(), io.to_string()),
        },
        None => SourceError::Query(e),
    }
}

/// Column texts, the version text and the read's snapshot of one row.
pub type FetchedColumns = (Vec<Option<String>>, Option<String>, Option<SeenSnapshot>);

impl Catalog {
    /// Connect, waiting up to `timeout` for a server that is down or starting
    /// (logged once per attempt); other failures (authentication, a missing
    /// database) are returned at once.
    pub async fn connect_waiting(
        params: &ConnectParams,
        timeout: Duration,
    ) -> Result<Catalog, SourceError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut backoff = Duration::from_millis(200);
        loop {
            match Catalog::connect(params, timeout).await {
                Err(e) if e.is_transient() && deadline > tokio::time::Instant::now() + backoff => {
                    tracing::warn!(error = %e, retry_in = ?backoff, "waiting for PostgreSQL");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
                other => return other,
            }
        }
    }

    pub async fn connect(
        params: &ConnectParams,
        timeout: Duration,
    ) -> Result<Catalog, SourceError> {
        let mut config = params.to_tokio_config("walcast-catalog");
        config.connect_timeout(timeout);
        let target = params.target.to_string();
        let client = match params.tls.client_config()? {
            None => {
                config.ssl_mode(tokio_postgres::config::SslMode::Disable);
                start(&config, NoTls, target).await?
            }
            Some(tls) => {
                // The certificate checks of sslmode are in the rustls configuration.
                config.ssl_mode(if params.tls.mode.requires_tls() {
                    tokio_postgres::config::SslMode::Require
                } else {
                    tokio_postgres::config::SslMode::Prefer
                });
                let tls = tokio_postgres_rustls::MakeRustlsConnect::new((*tls).clone());
                start(&config, tls, target).await?
            }
        };
        Ok(Catalog { client })
    }

    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    /// Key columns of a table, in key order: the primary key, else the replica
    /// identity index. Empty when it has neither.
    pub async fn key_columns(&self, relation_id: u32) -> Result<Vec<String>, SourceError> {
        let rows = self
            .client
            .query(
                "SELECT a.attname::text
                 FROM pg_index i
                 CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
                 JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                 WHERE i.indexrelid = (
                     SELECT indexrelid FROM pg_index
                     WHERE indrelid = $1 AND (indisprimary OR indisreplident)
                     ORDER BY indisprimary DESC LIMIT 1)
                 ORDER BY k.ord",
                &[&relation_id],
            )
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// `pg_type` rows of the given OIDs.
    pub async fn types(&self, oids: &[u32]) -> Result<Vec<PgTypeRow>, SourceError> {
        let rows = self
            .client
            .query(
                "SELECT oid, typtype, typelem, typbasetype, typdelim, typlen FROM pg_type WHERE oid = ANY($1)",
                &[&oids],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| PgTypeRow {
                oid: r.get(0),
                typtype: r.get::<_, i8>(1) as u8,
                typelem: r.get(2),
                typbasetype: r.get(3),
                typdelim: r.get::<_, i8>(4) as u8,
                typlen: r.get(5),
            })
            .collect())
    }

    /// Drop an inactive replication slot.
    pub async fn drop_slot(&self, name: &str) -> Result<(), SourceError> {
        self.client
            .execute("SELECT pg_drop_replication_slot($1)", &[&name])
            .await?;
        Ok(())
    }

    /// What the connected role may drop: slots, and the publication `publication`.
    pub async fn drop_rights(&self, publication: &str) -> Result<DropRights, SourceError> {
        let r = self
            .client
            .query_one(
                "SELECT current_user::text, r.rolsuper OR r.rolreplication,
                        p.pubowner::regrole::text, pg_has_role(p.pubowner, 'USAGE')
                 FROM pg_roles r LEFT JOIN pg_publication p ON p.pubname = $1
                 WHERE r.rolname = current_user",
                &[&publication],
            )
            .await?;
        let owner: Option<String> = r.get(2);
        Ok(DropRights {
            user: r.get(0),
            slots: r.get(1),
            publication: owner.map(|o| (o, r.get::<_, Option<bool>>(3).unwrap_or(false))),
        })
    }

    /// Drop a publication.
    pub async fn drop_publication(&self, name: &str) -> Result<(), SourceError> {
        self.client
            .batch_execute(&format!("DROP PUBLICATION {}", quote_ident(name)))
            .await?;
        Ok(())
    }

    pub async fn slot(&self, name: &str) -> Result<Option<SlotInfo>, SourceError> {
        let row = self
            .client
            .query_opt(
                "SELECT plugin::text, database::text, active, confirmed_flush_lsn::text
                 FROM pg_replication_slots WHERE slot_name = $1",
                &[&name],
            )
            .await?;
        Ok(row.map(|r| SlotInfo {
            plugin: r.get(0),
            database: r.get(1),
            active: r.get(2),
            confirmed_flush_lsn: r.get(3),
        }))
    }

    /// A slot's failover settings (PostgreSQL 17+; `None` before 17 or without the
    /// slot): whether it is a failover slot, and the primary's
    /// `synchronized_standby_slots` (the standbys it waits for).
    pub async fn slot_failover(&self, name: &str) -> Result<Option<SlotFailover>, SourceError> {
        let version: i32 = self
            .client
            .query_one("SELECT current_setting('server_version_num')::int", &[])
            .await?
            .get(0);
        if version < 170_000 {
            return Ok(None);
        }
        let row = self
            .client
            .query_opt(
                "SELECT failover, current_setting('synchronized_standby_slots')
                 FROM pg_replication_slots WHERE slot_name = $1",
                &[&name],
            )
            .await?;
        Ok(row.map(|r| SlotFailover {
            failover: r.get(0),
            standby_slots: r.get(1),
        }))
    }

    pub async fn slot_health(&self, name: &str) -> Result<Option<SlotHealth>, SourceError> {
        let row = self
            .client
            .query_opt(
                "SELECT active, wal_status, safe_wal_size,
                        (pg_current_wal_lsn() - restart_lsn)::bigint
                 FROM pg_replication_slots WHERE slot_name = $1",
                &[&name],
            )
            .await?;
        Ok(row.map(|r| SlotHealth {
            active: r.get(0),
            wal_status: r.get(1),
            safe_wal_size: r.get(2),
            retained_bytes: r.get(3),
        }))
    }

    /// Current text values of `columns` of the row whose key columns have these text
    /// values, the text of `version`, and the snapshot of the read; `None` values (and
    /// no snapshot) when the row no longer exists.
    pub async fn fetch_row_columns(
        &self,
        schema: &str,
        table: &str,
        key: &[(String, String)],
        columns: &[String],
        version: &str,
    ) -> Result<FetchedColumns, SourceError> {
        let select = columns
            .iter()
            .map(|c| format!("{}::text", quote_ident(c)))
            .chain([version.to_string(), SNAPSHOT_TEXT.to_string()])
            .collect::<Vec<_>>()
            .join(", ");
        let filter = key
            .iter()
            .enumerate()
            .map(|(i, (c, _))| format!("{}::text = ${}", quote_ident(c), i + 1))
            .collect::<Vec<_>>()
            .join(" AND ");
        let sql = format!(
            "SELECT {select} FROM {}.{} WHERE {filter}",
            quote_ident(schema),
            quote_ident(table)
        );
        let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = key
            .iter()
            .map(|(_, v)| v as &(dyn tokio_postgres::types::ToSql + Sync))
            .collect();
        let row = self.client.query_opt(&sql, &params).await?;
        Ok(match row {
            Some(r) => (
                (0..columns.len()).map(|i| r.get(i)).collect(),
                r.get(columns.len()),
                SeenSnapshot::parse(r.get(columns.len() + 1)),
            ),
            None => (vec![None; columns.len()], None, None),
        })
    }
}
