//! What must hold before streaming starts, asked of the catalog: server settings and
//! the connected role ([`ServerFacts`]), the publication and its tables
//! ([`TableFacts`]), each failure a one-line error with the fix. `walcast check`
//! reports the same facts.

use std::collections::HashMap;

use super::catalog::Catalog;
use super::conn::quote_ident;
use super::SourceError;

/// What the checks before streaming found (only what does not stop the start).
#[derive(Debug, Clone, Default)]
pub struct Preflight {
    pub server_version: String,
    pub tables: Vec<String>,
    /// Each table's columns.
    pub columns: HashMap<String, Vec<String>>,
    /// Tables with TOASTable columns whose replica identity is not FULL: an unchanged
    /// TOAST value of theirs may have to be fetched from the table.
    pub toast_without_full_identity: Vec<String>,
    /// Tables the role may not SELECT from (a snapshot, a refetch and TOAST reads
    /// need it), and the role.
    pub unreadable: Vec<String>,
    pub user: String,
}

/// Server settings and the connected role.
#[derive(Debug, Clone)]
pub struct ServerFacts {
    pub wal_level: String,
    pub server_version: String,
    pub server_version_num: i32,
    pub max_replication_slots: i32,
    pub replication_slots: i32,
    pub max_wal_senders: i32,
    pub wal_senders: i32,
    pub superuser: bool,
    pub replication: bool,
    pub user: String,
    /// The database connected to.
    pub database: Option<String>,
}

/// The oldest server walcast runs against, as `server_version_num`: PostgreSQL 14, whose
/// pgoutput is the first with the `messages` option (walcast's heartbeat travels as a
/// logical decoding message) and with protocol 2 (large transactions streamed while
/// in progress).
pub const MIN_SERVER_VERSION_NUM: i32 = 140_000;

impl ServerFacts {
    /// Why this server is too old for walcast, if it is.
    pub fn version_problem(&self) -> Option<String> {
        (self.server_version_num < MIN_SERVER_VERSION_NUM).then(|| format!(
            "PostgreSQL {} is too old: walcast needs PostgreSQL 14 or later (pgoutput's messages option, which carries walcast's heartbeat, and protocol 2 streaming arrived in 14)",
            self.server_version
        ))
    }

    pub fn wal_level_problem(&self) -> Option<String> {
        (self.wal_level != "logical").then(|| format!(
            "wal_level is '{}', logical replication needs 'logical': run ALTER SYSTEM SET wal_level = logical and restart PostgreSQL",
            self.wal_level
        ))
    }
}

/// The error for a publication that does not exist.
pub fn missing_publication(publication: &str) -> String {
    format!(
        "publication \"{publication}\" does not exist: run CREATE PUBLICATION {} FOR TABLE ... (see sql/setup.sql)",
        quote_ident(publication)
    )
}

/// One table of the publication.
#[derive(Debug, Clone)]
pub struct TableFacts {
    pub name: String,
    pub has_primary_key: bool,
    pub has_identity_index: bool,
    pub full_identity: bool,
    /// Has columns whose values can be TOASTed.
    pub toastable: bool,
    /// The connected role may SELECT from it (needed for unchanged-TOAST fetches).
    pub can_select: bool,
    /// Column names, in order.
    pub columns: Vec<String>,
}

impl TableFacts {
    pub fn is_keyed(&self) -> bool {
        self.has_primary_key || self.has_identity_index
    }
}

impl Catalog {
    /// Server settings walcast depends on.
    pub async fn server_facts(&self) -> Result<ServerFacts, SourceError> {
        let r = self
            .client
            .query_one(
                "SELECT current_setting('wal_level'), current_setting('server_version'),
                        current_setting('server_version_num')::int,
                        current_setting('max_replication_slots')::int,
                        (SELECT count(*) FROM pg_replication_slots)::int,
                        current_setting('max_wal_senders')::int,
                        (SELECT count(*) FROM pg_stat_replication)::int,
                        r.rolsuper, r.rolreplication, current_user::text,
                        current_database()::text
                 FROM pg_roles r WHERE r.rolname = current_user",
                &[],
            )
            .await?;
        Ok(ServerFacts {
            wal_level: r.get(0),
            server_version: r.get(1),
            server_version_num: r.get(2),
            max_replication_slots: r.get(3),
            replication_slots: r.get(4),
            max_wal_senders: r.get(5),
            wal_senders: r.get(6),
            superuser: r.get(7),
            replication: r.get(8),
            user: r.get(9),
            database: r.get(10),
        })
    }

    pub async fn publication_exists(&self, publication: &str) -> Result<bool, SourceError> {
        Ok(self
            .client
            .query_opt(
                "SELECT 1 FROM pg_publication WHERE pubname = $1",
                &[&publication],
            )
            .await?
            .is_some())
    }

    /// The publication's tables and what walcast needs to know of each.
    pub async fn publication_tables(
        &self,
        publication: &str,
    ) -> Result<Vec<TableFacts>, SourceError> {
        let rows = self
            .client
            .query(
                "SELECT n.nspname || '.' || c.relname,
                        EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary),
                        c.relreplident = 'i' AND EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisreplident),
                        c.relreplident = 'f',
                        EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0
                                AND NOT a.attisdropped AND a.attlen = -1 AND a.attstorage <> 'p'),
                        has_table_privilege(c.oid, 'SELECT'),
                        ARRAY(SELECT a.attname::text FROM pg_attribute a WHERE a.attrelid = c.oid
                              AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum)
                 FROM pg_publication_tables pt
                 JOIN pg_namespace n ON n.nspname = pt.schemaname
                 JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = pt.tablename
                 WHERE pt.pubname = $1
                 ORDER BY 1",
                &[&publication],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| TableFacts {
                name: r.get(0),
                has_primary_key: r.get(1),
                has_identity_index: r.get(2),
                full_identity: r.get(3),
                toastable: r.get(4),
                can_select: r.get(5),
                columns: r.get(6),
            })
            .collect())
    }

    /// Everything that must hold before streaming starts, each failure a clear
    /// one-line error with the fix.
    pub async fn preflight(&self, publication: &str) -> Result<Preflight, SourceError> {
        let server = self.server_facts().await?;
        if let Some(problem) = server
            .version_problem()
            .or_else(|| server.wal_level_problem())
        {
            return Err(SourceError::Preflight(problem));
        }
        if !self.publication_exists(publication).await? {
            return Err(SourceError::Preflight(missing_publication(publication)));
        }
        let tables = self.publication_tables(publication).await?;
        let keyless: Vec<&str> = tables
            .iter()
            .filter(|t| !t.is_keyed())
            .map(|t| t.name.as_str())
            .collect();
        if !keyless.is_empty() {
            return Err(SourceError::Preflight(format!(
                "table(s) {} in publication \"{publication}\" have no primary key: walcast keys every envelope by primary key; add one (ALTER TABLE ... ADD PRIMARY KEY) or use REPLICA IDENTITY USING INDEX on a unique index, or remove the table from the publication",
                keyless.join(", ")
            )));
        }
        Ok(Preflight {
            server_version: server.server_version,
            unreadable: tables
                .iter()
                .filter(|t| !t.can_select)
                .map(|t| t.name.clone())
                .collect(),
            user: server.user,
            toast_without_full_identity: tables
                .iter()
                .filter(|t| t.toastable && !t.full_identity)
                .map(|t| t.name.clone())
                .collect(),
            columns: tables
                .iter()
                .map(|t| (t.name.clone(), t.columns.clone()))
                .collect(),
            tables: tables.into_iter().map(|t| t.name).collect(),
        })
    }
}

/// What a table with TOASTable columns and no FULL identity costs (nothing to fix).
pub const TOAST_NOTE: &str = "TOASTable columns without REPLICA IDENTITY FULL: an unchanged large value walcast has not seen is read exactly, from the key's last envelope or from the table (batched: one query per table and read), so FULL is not needed; FULL would carry it in the WAL instead, at the cost of the whole old row written to the WAL and streamed for every UPDATE and DELETE";

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(version: &str, num: i32) -> ServerFacts {
        ServerFacts {
            wal_level: "logical".into(),
            server_version: version.into(),
            server_version_num: num,
            max_replication_slots: 10,
            replication_slots: 0,
            max_wal_senders: 10,
            wal_senders: 0,
            superuser: false,
            replication: true,
            user: "walcast".into(),
            database: None,
        }
    }

    #[test]
    fn servers_older_than_14_are_refused_with_the_reason() {
        let old = facts("13.23", 130_023)
            .version_problem()
            .expect("13 refused");
        assert!(old.contains("PostgreSQL 13.23 is too old") && old.contains("14 or later"));
        assert_eq!(facts("14.23", 140_023).version_problem(), None);
        assert_eq!(facts("18.4", 180_004).version_problem(), None);
    }
}
