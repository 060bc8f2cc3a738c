//! A Relation message resolved into the table's typed columns and its key (primary
//! key, else replica identity index, in key order). No I/O: the caller asks the
//! catalog for the types the registry lacks and for the key's column names.

use super::pgoutput::RelationColumn;
use super::types::{TypeKind, TypeRegistry};

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

/// Type every column with what `types` knows (ask the catalog for
/// [`TypeRegistry::missing`] first) and find the key: the catalog's key column names
/// in key order, else the Relation message's identity flags.
pub fn resolve(
    types: &mut TypeRegistry,
    replica_identity: u8,
    columns: &[RelationColumn<'_>],
    catalog_key: &[String],
) -> ResolvedRelation {
    let cols: Vec<Column> = columns
        .iter()
        .map(|c| Column {
            name: c.name.to_string(),
            type_oid: c.type_oid,
            type_modifier: c.type_modifier,
            kind: types.resolve(c.type_oid),
        })
        .collect();
    let from_catalog: Option<Vec<usize>> = catalog_key
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
    ResolvedRelation { columns: cols, key }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn column(name: &str, flags: u8) -> RelationColumn<'_> {
        RelationColumn {
            flags,
            name,
            type_oid: 23,
            type_modifier: -1,
        }
    }

    #[test]
    fn the_catalog_key_wins_in_key_order_else_the_identity_flags() {
        let mut types = TypeRegistry::new();
        let cols = [column("a", 1), column("b", 0), column("c", 1)];
        let r = resolve(&mut types, b'd', &cols, &["c".into(), "b".into()]);
        assert_eq!(r.key, vec![2, 1]);
        assert_eq!(Some(r.columns[0].kind.clone()), TypeKind::builtin(23));
        let r = resolve(&mut types, b'd', &cols, &[]);
        assert_eq!(r.key, vec![0, 2]);
        // Identity FULL flags every column: not a key.
        assert!(resolve(&mut types, b'f', &cols, &[]).key.is_empty());
        // A key column the message lacks: the flags decide.
        assert_eq!(
            resolve(&mut types, b'd', &cols, &["zz".into()]).key,
            vec![0, 2]
        );
    }
}
