//! A Relation message resolved against the catalog: the table's typed columns and
//! its key (primary key, else replica identity index, in key order).

use super::pgoutput::RelationColumn;
use super::types::{TypeKind, TypeRegistry};
use crate::source::catalog::Catalog;
use crate::source::SourceError;

/// One column of a table shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub type_oid: u32,
    pub type_modifier: i32,
    pub kind: TypeKind,
}

impl AsRef<str> for Column {
    fn as_ref(&self) -> &str {
        &self.name
    }
}

/// A table's columns and key, as the envelope stage needs them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedRelation {
    pub columns: Vec<Column>,
    /// Indexes into `columns` of the key columns, in key order (empty: no key).
    pub key: Vec<usize>,
}

/// Type every column (asking the catalog for types not known yet, domains and
/// arrays down to their base) and find the key.
pub async fn resolve(
    catalog: &Catalog,
    types: &mut TypeRegistry,
    relation_id: u32,
    replica_identity: u8,
    columns: &[RelationColumn<'_>],
) -> Result<ResolvedRelation, SourceError> {
    let oids: Vec<u32> = columns.iter().map(|c| c.type_oid).collect();
    for _ in 0..8 {
        let missing = types.missing(oids.iter().copied());
        if missing.is_empty() {
            break;
        }
        let rows = catalog.types(&missing).await?;
        if rows.is_empty() {
            break;
        }
        types.add_rows(rows);
    }
    let cols: Vec<Column> = columns
        .iter()
        .map(|c| Column {
            name: c.name.to_string(),
            type_oid: c.type_oid,
            type_modifier: c.type_modifier,
            kind: types.resolve(c.type_oid),
        })
        .collect();
    // The key: primary key (else replica identity index) in key order, from the
    // catalog; the Relation message's identity flags when the catalog disagrees.
    let names = catalog.key_columns(relation_id).await?;
    let from_catalog: Option<Vec<usize>> = names
        .iter()
        .map(|n| cols.iter().position(|c| &c.name == n))
        .collect();
    let key = match from_catalog {
        Some(k) if !k.is_empty() => k,
        _ => columns
            .iter()
            .enumerate()
            .filter(|(_, c)| c.is_identity() && replica_identity != b'f')
            .map(|(i, _)| i)
            .collect(),
    };
    Ok(ResolvedRelation { columns: cols, key })
}
