//! Table shapes and their `major.minor` schema versions.
//!
//! Every Relation message describes a table's current shape. Compared with the shape
//! seen before: a dropped or retyped column, or a changed key, is a breaking change
//! (major + 1, minor reset to 0); only added columns is an additive change (minor + 1);
//! the same shape (the server re-sends Relation after every cache invalidation) keeps
//! the version.

use std::fmt;

use crate::decode::types::TypeKind;

/// A `major.minor` schema version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct SchemaVersion {
    pub major: u32,
    pub minor: u32,
}

impl SchemaVersion {
    pub const INITIAL: SchemaVersion = SchemaVersion { major: 1, minor: 0 };
}

impl fmt::Display for SchemaVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// One column of a table shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub type_oid: u32,
    pub type_modifier: i32,
    pub kind: TypeKind,
}

/// The shape of a table as the last Relation message described it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableShape {
    pub columns: Vec<Column>,
    /// Indexes into `columns` of the key columns, in key order.
    pub key: Vec<usize>,
}

/// What a new shape is, compared with the previous one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShapeChange {
    Same,
    Additive,
    Breaking,
}

impl TableShape {
    fn key_names(&self) -> Vec<&str> {
        self.key
            .iter()
            .map(|&i| self.columns[i].name.as_str())
            .collect()
    }

    /// Classify `new` against `self`.
    pub fn compare(&self, new: &TableShape) -> ShapeChange {
        if self.key_names() != new.key_names() {
            return ShapeChange::Breaking;
        }
        for old in &self.columns {
            match new.columns.iter().find(|c| c.name == old.name) {
                None => return ShapeChange::Breaking,
                Some(c) if c.type_oid != old.type_oid || c.type_modifier != old.type_modifier => {
                    return ShapeChange::Breaking
                }
                Some(_) => {}
            }
        }
        if new.columns.len() > self.columns.len() {
            ShapeChange::Additive
        } else {
            ShapeChange::Same
        }
    }
}

/// The next version after a change.
pub fn next_version(v: SchemaVersion, change: ShapeChange) -> SchemaVersion {
    match change {
        ShapeChange::Same => v,
        ShapeChange::Additive => SchemaVersion {
            major: v.major,
            minor: v.minor + 1,
        },
        ShapeChange::Breaking => SchemaVersion {
            major: v.major + 1,
            minor: 0,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(name: &str, oid: u32) -> Column {
        Column {
            name: name.into(),
            type_oid: oid,
            type_modifier: -1,
            kind: TypeKind::Text,
        }
    }

    #[test]
    fn classifies_shape_changes() {
        let base = TableShape {
            columns: vec![col("id", 23), col("name", 25)],
            key: vec![0],
        };
        assert_eq!(base.compare(&base.clone()), ShapeChange::Same);
        let added = TableShape {
            columns: vec![col("id", 23), col("name", 25), col("age", 23)],
            key: vec![0],
        };
        assert_eq!(base.compare(&added), ShapeChange::Additive);
        let dropped = TableShape {
            columns: vec![col("id", 23)],
            key: vec![0],
        };
        assert_eq!(base.compare(&dropped), ShapeChange::Breaking);
        let retyped = TableShape {
            columns: vec![col("id", 20), col("name", 25)],
            key: vec![0],
        };
        assert_eq!(base.compare(&retyped), ShapeChange::Breaking);
        let rekeyed = TableShape {
            columns: vec![col("id", 23), col("name", 25)],
            key: vec![0, 1],
        };
        assert_eq!(base.compare(&rekeyed), ShapeChange::Breaking);

        let v = SchemaVersion::INITIAL;
        let v = next_version(v, ShapeChange::Additive);
        assert_eq!(v.to_string(), "1.1");
        let v = next_version(v, ShapeChange::Breaking);
        assert_eq!(v.to_string(), "2.0");
        assert_eq!(next_version(v, ShapeChange::Same).to_string(), "2.0");
    }
}
