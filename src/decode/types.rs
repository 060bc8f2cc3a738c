//! Which wire type a column's text value becomes, by PostgreSQL type OID.
//!
//! Built-in types are known up front; anything else (enums, domains, arrays of them,
//! extension types) is resolved once from `pg_type` when a Relation message names it.

use std::collections::HashMap;

use crate::source::catalog::PgTypeRow;

/// How a column's text form is turned into a typed value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TypeKind {
    Bool,
    /// int2, int4, int8, oid: a MessagePack integer.
    Int,
    /// float4: a MessagePack float32.
    Float4,
    /// float8: a MessagePack float64.
    Float8,
    /// numeric: an exact decimal string.
    Numeric,
    /// text-like types, enums, and every type without a dedicated mapping.
    Text,
    Bytea,
    Uuid,
    /// json and jsonb: native MessagePack maps/arrays.
    Json,
    Timestamp,
    TimestampTz,
    Date,
    Time,
    TimeTz,
    Interval,
    /// An array whose elements are of `element` kind, separated by `delimiter`.
    Array {
        element: Box<TypeKind>,
        delimiter: u8,
    },
}

impl TypeKind {
    /// The kind of a built-in type, or `None` when the catalog must be asked.
    pub fn builtin(oid: u32) -> Option<TypeKind> {
        use TypeKind::*;
        let arr = |k: TypeKind| Array {
            element: Box::new(k),
            delimiter: b',',
        };
        Some(match oid {
            16 => Bool,
            20 | 21 | 23 | 26 => Int,
            700 => Float4,
            701 => Float8,
            1700 => Numeric,
            18 | 19 | 25 | 1042 | 1043 => Text,
            17 => Bytea,
            2950 => Uuid,
            114 | 3802 => Json,
            1114 => Timestamp,
            1184 => TimestampTz,
            1082 => Date,
            1083 => Time,
            1266 => TimeTz,
            1186 => Interval,
            1000 => arr(Bool),
            1005 | 1007 | 1016 | 1028 => arr(Int),
            1021 => arr(Float4),
            1022 => arr(Float8),
            1231 => arr(Numeric),
            1002 | 1003 | 1009 | 1014 | 1015 => arr(Text),
            1001 => arr(Bytea),
            2951 => arr(Uuid),
            199 | 3807 => arr(Json),
            1115 => arr(Timestamp),
            1185 => arr(TimestampTz),
            1182 => arr(Date),
            1183 => arr(Time),
            1270 => arr(TimeTz),
            1187 => arr(Interval),
            _ => return None,
        })
    }

    /// Whether a change in this column's values could arrive as "unchanged TOAST".
    pub fn is_toastable(&self) -> bool {
        !matches!(
            self,
            TypeKind::Bool
                | TypeKind::Int
                | TypeKind::Float4
                | TypeKind::Float8
                | TypeKind::Uuid
                | TypeKind::Timestamp
                | TypeKind::TimestampTz
                | TypeKind::Date
                | TypeKind::Time
                | TypeKind::TimeTz
                | TypeKind::Interval
        )
    }
}

/// Type OID → kind, for built-ins and for the types resolved from the catalog so far.
#[derive(Debug, Default)]
pub struct TypeRegistry {
    resolved: HashMap<u32, TypeKind>,
    rows: HashMap<u32, PgTypeRow>,
}

impl TypeRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    /// The kind of `oid` if it is known without asking the catalog.
    pub fn get(&self, oid: u32) -> Option<TypeKind> {
        TypeKind::builtin(oid).or_else(|| self.resolved.get(&oid).cloned())
    }

    /// OIDs (among `oids` and what they refer to) whose `pg_type` row is still needed.
    pub fn missing(&self, oids: impl IntoIterator<Item = u32>) -> Vec<u32> {
        let mut out = Vec::new();
        let mut stack: Vec<u32> = oids.into_iter().collect();
        while let Some(oid) = stack.pop() {
            if TypeKind::builtin(oid).is_some() || self.resolved.contains_key(&oid) {
                continue;
            }
            match self.rows.get(&oid) {
                Some(row) => {
                    if row.typtype == b'd' {
                        stack.push(row.typbasetype);
                    } else if row.typelem != 0 && row.typlen == -1 {
                        stack.push(row.typelem);
                    }
                }
                None => {
                    if !out.contains(&oid) {
                        out.push(oid)
                    }
                }
            }
        }
        out
    }

    /// Record catalog rows fetched for [`TypeRegistry::missing`].
    pub fn add_rows(&mut self, rows: impl IntoIterator<Item = PgTypeRow>) {
        for row in rows {
            self.rows.insert(row.oid, row);
        }
    }

    /// The kind of `oid`, following domains to their base type and arrays to their
    /// element type. A type the catalog did not describe is carried as text.
    pub fn resolve(&mut self, oid: u32) -> TypeKind {
        self.resolve_depth(oid, 0)
    }

    fn resolve_depth(&mut self, oid: u32, depth: u32) -> TypeKind {
        if let Some(kind) = self.get(oid) {
            return kind;
        }
        let Some(row) = self.rows.get(&oid).cloned() else {
            return TypeKind::Text;
        };
        if depth > 32 {
            return TypeKind::Text;
        }
        let kind = if row.typtype == b'd' {
            self.resolve_depth(row.typbasetype, depth + 1)
        } else if row.typelem != 0 && row.typlen == -1 {
            let delimiter = self
                .rows
                .get(&row.typelem)
                .map(|e| e.typdelim)
                .unwrap_or(b',');
            TypeKind::Array {
                element: Box::new(self.resolve_depth(row.typelem, depth + 1)),
                delimiter,
            }
        } else {
            // enums, composites, ranges, extension types: their text form.
            TypeKind::Text
        };
        self.resolved.insert(oid, kind.clone());
        kind
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(oid: u32, typtype: u8, typelem: u32, typbasetype: u32, typlen: i16) -> PgTypeRow {
        PgTypeRow {
            oid,
            typtype,
            typelem,
            typbasetype,
            typdelim: b',',
            typlen,
        }
    }

    #[test]
    fn resolves_domains_enums_and_arrays_of_them() {
        let mut reg = TypeRegistry::new();
        // 90001: domain over int4; 90002: enum; 90003: array of the enum;
        // 90004: domain over the domain; 90005: array of the domain.
        assert_eq!(reg.missing([23, 90003]), vec![90003]);
        reg.add_rows([row(90003, b'b', 90002, 0, -1)]);
        assert_eq!(reg.missing([90003]), vec![90002]);
        reg.add_rows([
            row(90001, b'd', 0, 23, 4),
            row(90002, b'e', 0, 0, 4),
            row(90004, b'd', 0, 90001, 4),
            row(90005, b'b', 90004, 0, -1),
        ]);
        assert!(reg.missing([90003, 90004, 90005]).is_empty());
        assert_eq!(reg.resolve(90001), TypeKind::Int);
        assert_eq!(reg.resolve(90004), TypeKind::Int);
        assert_eq!(reg.resolve(90002), TypeKind::Text);
        assert_eq!(
            reg.resolve(90005),
            TypeKind::Array {
                element: Box::new(TypeKind::Int),
                delimiter: b','
            }
        );
        // Unknown to the catalog: carried as text.
        assert_eq!(reg.resolve(12345678), TypeKind::Text);
    }
}
