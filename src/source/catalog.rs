//! Ordinary SQL over `tokio-postgres`: the checks made before streaming, key columns,
//! type descriptions, slot state, and the rare row fetch for a missing TOAST value.

use std::time::Duration;

use tokio_postgres::{Client, NoTls};

use super::conn::quote_ident;
use super::SourceError;
use crate::decode::types::PgTypeRow;

/// A table of the publication that walcast cannot key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeylessTable {
    pub name: String,
}

/// What the checks before streaming found (only what does not stop the start).
#[derive(Debug, Clone, Default)]
pub struct Preflight {
    pub server_version: String,
    pub tables: Vec<String>,
    /// Tables with TOASTable columns whose replica identity is not FULL: an unchanged
    /// TOAST value of theirs may have to be fetched from the table.
    pub toast_without_full_identity: Vec<String>,
}

/// What `pg_replication_slots` says of a slot.
#[derive(Debug, Clone)]
pub struct SlotInfo {
    pub plugin: Option<String>,
    pub database: Option<String>,
    pub active: bool,
    pub active_pid: Option<i32>,
    pub confirmed_flush_lsn: Option<String>,
}

/// A `tokio-postgres` connection for catalog questions.
pub struct Catalog {
    client: Client,
}

fn connect_error(e: tokio_postgres::Error) -> SourceError {
    if let Some(db) = e.as_db_error() {
        if db.code().code().starts_with("28") {
            return SourceError::Auth(db.message().to_string());
        }
    }
    match std::error::Error::source(&e).and_then(|s| s.downcast_ref::<std::io::Error>()) {
        Some(io) => SourceError::Connect {
            target: "the configured host".into(),
            source: std::io::Error::new(io.kind(), io.to_string()),
        },
        None => SourceError::Query(e),
    }
}

impl Catalog {
    pub async fn connect(url: &str, timeout: Duration) -> Result<Catalog, SourceError> {
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| SourceError::Config(format!("invalid PostgreSQL URL: {e}")))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(timeout);
        }
        if config.get_application_name().is_none() {
            config.application_name("walcast-catalog");
        }
        let (client, connection) = config.connect(NoTls).await.map_err(connect_error)?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "catalog connection ended");
            }
        });
        Ok(Catalog { client })
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    /// Everything that must hold before streaming starts, each failure a clear
    /// one-line error with the fix.
    pub async fn preflight(&self, publication: &str) -> Result<Preflight, SourceError> {
        let row = self
            .client
            .query_one(
                "SELECT current_setting('wal_level'), current_setting('server_version')",
                &[],
            )
            .await?;
        let wal_level: String = row.get(0);
        let server_version: String = row.get(1);
        if wal_level != "logical" {
            return Err(SourceError::Preflight(format!(
                "wal_level is '{wal_level}', logical replication needs 'logical': run ALTER SYSTEM SET wal_level = logical and restart PostgreSQL"
            )));
        }
        let exists = self
            .client
            .query_opt(
                "SELECT 1 FROM pg_publication WHERE pubname = $1",
                &[&publication],
            )
            .await?;
        if exists.is_none() {
            return Err(SourceError::Preflight(format!(
                "publication \"{publication}\" does not exist: run CREATE PUBLICATION {} FOR TABLE ... (see sql/setup.sql)",
                quote_ident(publication)
            )));
        }
        let rows = self
            .client
            .query(
                "SELECT n.nspname || '.' || c.relname,
                        EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary),
                        c.relreplident = 'i' AND EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisreplident),
                        c.relreplident = 'f',
                        EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0
                                AND NOT a.attisdropped AND a.attlen = -1 AND a.attstorage <> 'p')
                 FROM pg_publication_tables pt
                 JOIN pg_namespace n ON n.nspname = pt.schemaname
                 JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = pt.tablename
                 WHERE pt.pubname = $1
                 ORDER BY 1",
                &[&publication],
            )
            .await?;
        let mut report = Preflight {
            server_version,
            ..Default::default()
        };
        let mut keyless = Vec::new();
        for r in rows {
            let name: String = r.get(0);
            let (has_pk, has_ri_index, full, toastable): (bool, bool, bool, bool) =
                (r.get(1), r.get(2), r.get(3), r.get(4));
            if !has_pk && !has_ri_index {
                keyless.push(name.clone());
            }
            if toastable && !full {
                report.toast_without_full_identity.push(name.clone());
            }
            report.tables.push(name);
        }
        if !keyless.is_empty() {
            return Err(SourceError::Preflight(format!(
                "table(s) {} in publication \"{publication}\" have no primary key: walcast keys every envelope by primary key; add one (ALTER TABLE ... ADD PRIMARY KEY) or use REPLICA IDENTITY USING INDEX on a unique index, or remove the table from the publication",
                keyless.join(", ")
            )));
        }
        Ok(report)
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

    pub async fn slot(&self, name: &str) -> Result<Option<SlotInfo>, SourceError> {
        let row = self
            .client
            .query_opt(
                "SELECT plugin::text, database::text, active, active_pid, confirmed_flush_lsn::text
                 FROM pg_replication_slots WHERE slot_name = $1",
                &[&name],
            )
            .await?;
        Ok(row.map(|r| SlotInfo {
            plugin: r.get(0),
            database: r.get(1),
            active: r.get(2),
            active_pid: r.get(3),
            confirmed_flush_lsn: r.get(4),
        }))
    }

    /// Current text values of `columns` of the row whose key columns have these text
    /// values; `None` values when the row no longer exists.
    pub async fn fetch_row_columns(
        &self,
        schema: &str,
        table: &str,
        key: &[(String, String)],
        columns: &[String],
    ) -> Result<Vec<Option<String>>, SourceError> {
        let select = columns
            .iter()
            .map(|c| format!("{}::text", quote_ident(c)))
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
            Some(r) => (0..columns.len()).map(|i| r.get(i)).collect(),
            None => vec![None; columns.len()],
        })
    }
}
