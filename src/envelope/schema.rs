//! Table shapes and their `major.minor` schema versions.
//!
//! Every Relation message describes a table's current shape. Compared with the shape
//! seen before: a dropped or retyped column, or a changed key, is a breaking change
//! (major + 1, minor reset to 0); only added columns is an additive change (minor + 1);
//! the same shape (the server re-sends Relation after every cache invalidation) keeps
//! the version.

use std::fmt;

use serde::{Deserialize, Serialize};

pub use crate::decode::relation::Column;
use crate::wire::Lsn;

/// A `major.minor` schema version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
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

/// What identifies a shape: columns (name, type OID, type modifier) and key names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature {
    pub columns: Vec<(String, u32, i32)>,
    pub key: Vec<String>,
}

impl TableShape {
    pub fn signature(&self) -> Signature {
        Signature {
            columns: self
                .columns
                .iter()
                .map(|c| (c.name.clone(), c.type_oid, c.type_modifier))
                .collect(),
            key: self
                .key
                .iter()
                .map(|&i| self.columns[i].name.clone())
                .collect(),
        }
    }
}

impl Signature {
    /// Classify `new` against `self`.
    pub fn compare(&self, new: &Signature) -> ShapeChange {
        if self.key != new.key {
            return ShapeChange::Breaking;
        }
        for (name, oid, typmod) in &self.columns {
            match new.columns.iter().find(|c| &c.0 == name) {
                None => return ShapeChange::Breaking,
                Some(c) if c.1 != *oid || c.2 != *typmod => return ShapeChange::Breaking,
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

/// One recorded version of a table: the shape it had from `since` (a commit LSN).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchemaEntry {
    pub version: SchemaVersion,
    pub since: u64,
    pub shape: Signature,
}

/// Every version a table had, so that a restart or a replay gives a change the
/// version it had when first published ("3.2" never resets to "1.0").
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchemaHistory {
    pub entries: Vec<SchemaEntry>,
}

impl SchemaHistory {
    /// The version of `shape` for a change committed at `at`; `true` when a new
    /// version was recorded (the history must then be persisted).
    pub fn version_for(&mut self, shape: &TableShape, at: Lsn) -> (SchemaVersion, bool) {
        let sig = shape.signature();
        let current = self
            .entries
            .iter()
            .filter(|e| e.since <= at.0)
            .max_by_key(|e| (e.since, e.version));
        if let Some(e) = current {
            if e.shape == sig {
                return (e.version, false);
            }
        }
        let latest = self.entries.iter().max_by_key(|e| e.version);
        let version = match latest {
            None => SchemaVersion::INITIAL,
            Some(l) => match l.shape.compare(&sig) {
                ShapeChange::Same => return (l.version, false),
                change => next_version(l.version, change),
            },
        };
        self.entries.push(SchemaEntry {
            version,
            since: at.0,
            shape: sig,
        });
        (version, true)
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
    use crate::decode::types::TypeKind;

    /// Classify `new` against `old`.
    fn compare(old: &TableShape, new: &TableShape) -> ShapeChange {
        old.signature().compare(&new.signature())
    }

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
        assert_eq!(compare(&base, &base.clone()), ShapeChange::Same);
        let added = TableShape {
            columns: vec![col("id", 23), col("name", 25), col("age", 23)],
            key: vec![0],
        };
        assert_eq!(compare(&base, &added), ShapeChange::Additive);
        let dropped = TableShape {
            columns: vec![col("id", 23)],
            key: vec![0],
        };
        assert_eq!(compare(&base, &dropped), ShapeChange::Breaking);
        let retyped = TableShape {
            columns: vec![col("id", 20), col("name", 25)],
            key: vec![0],
        };
        assert_eq!(compare(&base, &retyped), ShapeChange::Breaking);
        let rekeyed = TableShape {
            columns: vec![col("id", 23), col("name", 25)],
            key: vec![0, 1],
        };
        assert_eq!(compare(&base, &rekeyed), ShapeChange::Breaking);

        // A history gives replays the version they had, and new shapes the next one.
        let mut h = SchemaHistory::default();
        assert_eq!(
            h.version_for(&base, Lsn(100)),
            (SchemaVersion::INITIAL, true)
        );
        assert!(!h.version_for(&base, Lsn(150)).1);
        assert_eq!(h.version_for(&added, Lsn(200)).0.to_string(), "1.1");
        assert_eq!(h.version_for(&dropped, Lsn(300)).0.to_string(), "2.0");
        // Replay from before the changes: the original versions come back.
        assert_eq!(
            h.version_for(&base, Lsn(120)),
            (SchemaVersion::INITIAL, false)
        );
        assert_eq!(h.version_for(&added, Lsn(250)).0.to_string(), "1.1");
        assert_eq!(
            h.version_for(&dropped, Lsn(400)),
            (SchemaVersion { major: 2, minor: 0 }, false)
        );
        // A shape that comes back later is a new version, never an old one.
        assert_eq!(h.version_for(&base, Lsn(500)).0.to_string(), "2.1");
        let json = serde_json::to_string(&h).unwrap();
        assert_eq!(serde_json::from_str::<SchemaHistory>(&json).unwrap(), h);

        let v = SchemaVersion::INITIAL;
        let v = next_version(v, ShapeChange::Additive);
        assert_eq!(v.to_string(), "1.1");
        let v = next_version(v, ShapeChange::Breaking);
        assert_eq!(v.to_string(), "2.0");
        assert_eq!(next_version(v, ShapeChange::Same).to_string(), "2.0");
    }
}
