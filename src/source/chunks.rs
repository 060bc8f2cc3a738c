//! Reading a table in key order, one bounded chunk at a time (keyset pagination): what
//! the snapshot stage reads, with the WAL position around each chunk (its watermarks).

use tokio_postgres::SimpleQueryMessage;

use super::catalog::Catalog;
use super::conn::quote_ident;
use super::visibility::{SeenSnapshot, TextRows};
use super::SourceError;
use crate::wire::Lsn;

/// A published table as a snapshot reads it.
#[derive(Debug, Clone)]
pub struct TableInfo {
    pub relation_id: u32,
    pub schema: String,
    pub name: String,
    /// `d`, `n`, `f` or `i`, as `pg_class.relreplident`.
    pub replica_identity: u8,
    /// Columns as the replication stream sends them (not dropped; not generated,
    /// except stored ones of a table whose publication has `publish_generated_columns
    /// = stored`, PostgreSQL 18): name, type OID, type modifier, SQL type name.
    pub columns: Vec<(String, u32, i32, String)>,
    /// Indexes into `columns` of the key, in key order.
    pub key: Vec<usize>,
    /// The planner's row estimate (`-1`: never analysed).
    pub estimated_rows: i64,
}

impl TableInfo {
    pub fn qualified(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }
}

/// Rows read by key: key column texts → (column texts, version text).
pub type RowsByKey = std::collections::HashMap<Vec<String>, (Vec<Option<String>>, Option<String>)>;

/// Rows read by key, and the snapshot they were read in.
pub struct RowsRead {
    pub rows: RowsByKey,
    pub seen: SeenSnapshot,
}

/// `'text'` as an SQL literal.
fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// A key's column texts as typed SQL literals, in key order.
fn typed_key(table: &TableInfo, values: &[String]) -> Vec<String> {
    table
        .key
        .iter()
        .zip(values)
        .map(|(&i, v)| format!("{}::{}", literal(v), table.columns[i].3))
        .collect()
}

impl Catalog {
    /// What a snapshot needs to know of `schema.table`.
    pub async fn table_info(&self, qualified: &str) -> Result<TableInfo, SourceError> {
        let quoted = match qualified.split_once('.') {
            Some((schema, table)) => format!("{}.{}", quote_ident(schema), quote_ident(table)),
            None => quote_ident(qualified),
        };
        let row = self
            .client
            .query_one(
                "SELECT c.oid, n.nspname::text, c.relname::text, c.relreplident::text, c.reltuples::bigint
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE c.oid = $1::text::regclass",
                &[&quoted],
            )
            .await?;
        let relation_id: u32 = row.get(0);
        let columns = self
            .client
            .query(
                "SELECT attname::text, atttypid, atttypmod, format_type(atttypid, atttypmod)
                 FROM pg_attribute
                 WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped
                   AND (attgenerated = '' OR (attgenerated = 's' AND EXISTS (
                        SELECT 1 FROM pg_publication p
                        WHERE to_jsonb(p) ->> 'pubgencols' = 's'
                          AND (p.puballtables OR EXISTS (SELECT 1 FROM pg_publication_rel r
                               WHERE r.prpubid = p.oid AND r.prrelid = $1)))))
                 ORDER BY attnum",
                &[&relation_id],
            )
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
            .collect::<Vec<(String, u32, i32, String)>>();
        let key_names = self.key_columns(relation_id).await?;
        let key = key_names
            .iter()
            .filter_map(|k| columns.iter().position(|c| &c.0 == k))
            .collect();
        let identity: String = row.get(3);
        Ok(TableInfo {
            relation_id,
            schema: row.get(1),
            name: row.get(2),
            replica_identity: identity.bytes().next().unwrap_or(b'd'),
            columns,
            key,
            estimated_rows: row.get(4),
        })
    }

    /// Some columns of the rows with these keys (key column texts in key order), and
    /// beside them the text of `version` (an SQL expression), in one statement: by key
    /// texts, the column texts and the version text. The read sees the committed
    /// transactions `must_see` (it waits for them).
    pub async fn read_rows_columns(
        &self,
        table: &TableInfo,
        keys: &[Vec<String>],
        columns: &[String],
        (version, must_see): (&str, &[u32]),
    ) -> Result<RowsRead, SourceError> {
        let key_cols: Vec<String> = table
            .key
            .iter()
            .map(|&i| quote_ident(&table.columns[i].0))
            .collect();
        let select: Vec<String> = key_cols
            .iter()
            .chain(&columns.iter().map(|c| quote_ident(c)).collect::<Vec<_>>())
            .map(|c| format!("{c}::text"))
            .chain([version.to_string()])
            .collect();
        let sql = select_by_keys(table, &select, &key_cols, keys);
        let (texts, seen) = self.text_rows_seeing(&sql, must_see).await?;
        let mut read = RowsRead {
            rows: RowsByKey::new(),
            seen,
        };
        let (k, n) = (key_cols.len(), columns.len());
        for mut row in texts {
            let version = row.pop().flatten();
            let texts = row.split_off(k);
            let key = row.into_iter().map(Option::unwrap_or_default).collect();
            debug_assert_eq!(texts.len(), n);
            read.rows.insert(key, (texts, version));
        }
        Ok(read)
    }

    /// A heartbeat: a non-transactional logical decoding message holding the time.
    pub async fn emit_heartbeat(&self, prefix: &str) -> Result<(), SourceError> {
        let micros = crate::wire::Timestamp::now().unix_micros().to_string();
        self.client
            .execute(
                "SELECT pg_logical_emit_message(false, $1, $2)",
                &[&prefix, &micros],
            )
            .await?;
        Ok(())
    }

    /// The server's current WAL insert position.
    pub async fn current_wal_lsn(&self) -> Result<Lsn, SourceError> {
        let row = self
            .client
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await?;
        let text: String = row.get(0);
        text.parse()
            .map_err(|_| SourceError::Protocol(format!("pg_current_wal_lsn gave {text:?}")))
    }

    /// The row whose key is `key_values`, each column in its text form; `None` when
    /// there is none.
    pub async fn read_row(
        &self,
        table: &TableInfo,
        key_values: &[String],
    ) -> Result<Option<Vec<Option<String>>>, SourceError> {
        let cols: Vec<String> = table.columns.iter().map(|c| quote_ident(&c.0)).collect();
        let filter: Vec<String> = table
            .key
            .iter()
            .zip(typed_key(table, key_values))
            .map(|(&i, v)| format!("{} = {v}", cols[i]))
            .collect();
        let sql = format!(
            "SELECT {} FROM {}.{} WHERE {}",
            cols.join(", "),
            quote_ident(&table.schema),
            quote_ident(&table.name),
            filter.join(" AND ")
        );
        Ok(self.text_rows(&sql).await?.into_iter().next())
    }

    /// Which of `keys` (key column texts, in key order) have a row now, read in a
    /// snapshot that sees the committed transactions `must_see`.
    pub async fn existing_keys(
        &self,
        table: &TableInfo,
        keys: &[Vec<String>],
        must_see: &[u32],
    ) -> Result<Vec<Vec<String>>, SourceError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let cols: Vec<String> = table
            .key
            .iter()
            .map(|&i| quote_ident(&table.columns[i].0))
            .collect();
        let tuples: Vec<String> = keys
            .iter()
            .map(|values| format!("({})", typed_key(table, values).join(", ")))
            .collect();
        let sql = format!(
            "SELECT {cols} FROM {}.{} WHERE ({cols}) IN ({})",
            quote_ident(&table.schema),
            quote_ident(&table.name),
            tuples.join(", "),
            cols = cols.join(", "),
        );
        Ok(self
            .text_rows_seeing(&sql, must_see)
            .await?
            .0
            .into_iter()
            .map(|row| row.into_iter().map(Option::unwrap_or_default).collect())
            .collect())
    }

    /// The rows of `keys` (key column texts, in key order) that exist, each column in
    /// its text form, in no particular order, read in a snapshot that sees the
    /// committed transactions `must_see`.
    pub async fn read_rows(
        &self,
        table: &TableInfo,
        keys: &[Vec<String>],
        must_see: &[u32],
    ) -> Result<TextRows, SourceError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let cols: Vec<String> = table.columns.iter().map(|c| quote_ident(&c.0)).collect();
        let key: Vec<&str> = table.key.iter().map(|&i| cols[i].as_str()).collect();
        let sql = select_by_keys(table, &cols, &key, keys);
        Ok(self.text_rows_seeing(&sql, must_see).await?.0)
    }

    /// The rows of a simple query, each column in its text form.
    async fn text_rows(&self, sql: &str) -> Result<TextRows, SourceError> {
        Ok(rows_of(self.client.simple_query(sql).await?))
    }

    /// Up to `limit` rows after the key `after` (in key order), each column in its
    /// text form (the form the replication stream sends, this connection having the
    /// same session settings), read in a snapshot that sees the committed
    /// transactions `must_see`.
    pub async fn read_chunk(
        &self,
        table: &TableInfo,
        (after, limit): (Option<&[String]>, usize),
        must_see: &[u32],
    ) -> Result<TextRows, SourceError> {
        let cols: Vec<String> = table.columns.iter().map(|c| quote_ident(&c.0)).collect();
        let key: Vec<&String> = table.key.iter().map(|&i| &cols[i]).collect();
        let key_list = key
            .iter()
            .map(|k| k.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        let filter = match after {
            Some(values) => {
                format!(
                    "WHERE ({key_list}) > ({})",
                    typed_key(table, values).join(", ")
                )
            }
            None => String::new(),
        };
        let sql = format!(
            "SELECT {} FROM {}.{} {filter} ORDER BY {key_list} LIMIT {limit}",
            cols.join(", "),
            quote_ident(&table.schema),
            quote_ident(&table.name)
        );
        Ok(self.text_rows_seeing(&sql, must_see).await?.0)
    }
}

/// The rows among the messages of a simple query, each column in its text form.
pub(super) fn rows_of(messages: Vec<SimpleQueryMessage>) -> TextRows {
    messages
        .into_iter()
        .filter_map(|message| match message {
            SimpleQueryMessage::Row(row) => Some(
                (0..row.len())
                    .map(|i| row.get(i).map(str::to_string))
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

/// `SELECT <select> FROM <table> WHERE (<key columns>) IN (<each key, typed>)`.
fn select_by_keys(
    table: &TableInfo,
    select: &[impl AsRef<str>],
    key_cols: &[impl AsRef<str>],
    keys: &[Vec<String>],
) -> String {
    fn join(items: &[impl AsRef<str>]) -> String {
        items
            .iter()
            .map(AsRef::as_ref)
            .collect::<Vec<&str>>()
            .join(", ")
    }
    let tuples: Vec<String> = keys
        .iter()
        .map(|values| format!("({})", typed_key(table, values).join(", ")))
        .collect();
    format!(
        "SELECT {} FROM {}.{} WHERE ({}) IN ({})",
        join(select),
        quote_ident(&table.schema),
        quote_ident(&table.name),
        join(key_cols),
        tuples.join(", ")
    )
}
