//! A row against its key's last envelope: what the stream says of the key, the
//! verdict, and value equality (floats by their bits: a NaN equals itself). No I/O.

use crate::client::StoredEnvelope;
use crate::envelope::TOO_LARGE_KEY;
use crate::wire::{Lsn, Op, Position, UNAVAILABLE_KEY};

/// What the stream says of a key.
#[derive(Debug, Clone, Copy)]
pub(super) enum OnBus<'a> {
    /// No envelope.
    Nothing,
    /// The last envelope is a delete, or the table was truncated after it.
    Deleted,
    /// The last envelope's row value.
    Value(&'a rmpv::Value),
}

/// A value walcast published in place of the row (see `docs/envelope.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Marker {
    /// A column is `{"$walcast_unavailable": …}`: a re-snapshot publishes it in full.
    Unavailable,
    /// The value is `{"$walcast_too_large": <bytes>}` (`--oversize marker`).
    TooLarge,
}

/// What a key's row and its last envelope say together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    Equal,
    Differing,
    /// A row, and no envelope or a delete on the bus.
    Missing,
    /// An envelope on the bus, and no row.
    Gone,
    /// The last envelope carries a marker: not compared.
    Marker(Marker),
    /// No row, and nothing or a delete on the bus: nothing to compare.
    Absent,
    /// A newer envelope at every look: the key kept changing while verified.
    Changing,
}

impl Verdict {
    /// Whether a look at a newer state may settle otherwise.
    pub(super) fn settled(self) -> bool {
        matches!(self, Verdict::Equal | Verdict::Absent | Verdict::Marker(_))
    }
}

/// Where an envelope sits in the WAL: its `Walcast-Position`, else its commit LSN.
pub(super) fn position_of(stored: &StoredEnvelope) -> Position {
    stored.position.unwrap_or(Position {
        commit_lsn: Lsn(stored.envelope.lsn),
        ordinal: 0,
    })
}

/// What the stream says of a key whose last envelope is `stored`, the table's last
/// truncate being at `truncated`.
pub(super) fn on_bus(stored: Option<&StoredEnvelope>, truncated: Option<Position>) -> OnBus<'_> {
    match stored {
        None => OnBus::Nothing,
        Some(s) if s.envelope.op == Op::Delete => OnBus::Deleted,
        Some(s) if truncated.is_some_and(|t| position_of(s) < t) => OnBus::Deleted,
        Some(s) => OnBus::Value(&s.envelope.value),
    }
}

/// The verdict on a key whose row's published value is `row` (`None`: no row).
pub(super) fn verdict(row: Option<&rmpv::Value>, bus: OnBus<'_>) -> Verdict {
    match (row, bus) {
        (None, OnBus::Nothing | OnBus::Deleted) => Verdict::Absent,
        (None, OnBus::Value(_)) => Verdict::Gone,
        (Some(_), OnBus::Nothing | OnBus::Deleted) => Verdict::Missing,
        (Some(row), OnBus::Value(value)) if same_value(row, value) => Verdict::Equal,
        (Some(_), OnBus::Value(value)) => match marker(value) {
            Some(m) => Verdict::Marker(m),
            None => Verdict::Differing,
        },
    }
}

/// Equal values, floats compared by their bits (NaN equals NaN, -0.0 is not 0.0).
pub(super) fn same_value(a: &rmpv::Value, b: &rmpv::Value) -> bool {
    use rmpv::Value as V;
    match (a, b) {
        (V::F32(x), V::F32(y)) => x.to_bits() == y.to_bits(),
        (V::F64(x), V::F64(y)) => x.to_bits() == y.to_bits(),
        (V::Array(x), V::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same_value(x, y))
        }
        (V::Map(x), V::Map(y)) => {
            x.len() == y.len()
                && x.iter()
                    .zip(y)
                    .all(|((kx, vx), (ky, vy))| same_value(kx, ky) && same_value(vx, vy))
        }
        _ => a == b,
    }
}

/// The marker a published row value carries, if any.
pub(super) fn marker(value: &rmpv::Value) -> Option<Marker> {
    let map = value.as_map()?;
    if map.iter().any(|(k, _)| k.as_str() == Some(TOO_LARGE_KEY)) {
        return Some(Marker::TooLarge);
    }
    let unavailable = |v: &rmpv::Value| {
        v.as_map()
            .is_some_and(|m| m.iter().any(|(k, _)| k.as_str() == Some(UNAVAILABLE_KEY)))
    };
    map.iter()
        .any(|(_, v)| unavailable(v))
        .then_some(Marker::Unavailable)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rmpv::Value as V;

    fn row(pairs: &[(&str, V)]) -> V {
        V::Map(
            pairs
                .iter()
                .map(|(k, v)| (V::from(*k), v.clone()))
                .collect(),
        )
    }

    fn stored(op: Op, value: V, at: u64) -> StoredEnvelope {
        StoredEnvelope {
            envelope: crate::wire::Envelope {
                key: "public.t:1".into(),
                op,
                value,
                schema_version: "1.0".into(),
                sequence: 1,
                lsn: at,
                commit_ts: crate::wire::Timestamp::now(),
                xid: None,
                tx_index: None,
                before: None,
                compression: None,
                key_id: None,
            },
            position: Some(Position {
                commit_lsn: Lsn(at),
                ordinal: 0,
            }),
            stream_sequence: 1,
        }
    }

    #[test]
    fn floats_compare_by_their_bits() {
        let nan = row(&[("x", V::F64(f64::NAN)), ("y", V::F32(f32::NAN))]);
        assert!(same_value(&nan, &nan.clone()));
        assert!(!same_value(&V::F64(0.0), &V::F64(-0.0)));
        assert!(!same_value(&V::F64(1.0), &V::F32(1.0)));
        let nested = V::Array(vec![row(&[("a", V::from(1))])]);
        assert!(same_value(&nested, &nested.clone()));
        assert!(!same_value(
            &nested,
            &V::Array(vec![row(&[("a", V::from(2))])])
        ));
        // Column order is part of the value.
        let ab = row(&[("a", V::from(1)), ("b", V::from(2))]);
        let ba = row(&[("b", V::from(2)), ("a", V::from(1))]);
        assert!(!same_value(&ab, &ba));
    }

    #[test]
    fn verdicts() {
        let value = row(&[("id", V::from(1)), ("v", V::from("a"))]);
        let other = row(&[("id", V::from(1)), ("v", V::from("b"))]);
        let live = stored(Op::Update, value.clone(), 100);
        let deleted = stored(Op::Delete, V::Nil, 100);
        let bus = |s| on_bus(Some(s), None);
        assert_eq!(verdict(Some(&value), bus(&live)), Verdict::Equal);
        assert_eq!(verdict(Some(&other), bus(&live)), Verdict::Differing);
        assert_eq!(verdict(Some(&value), bus(&deleted)), Verdict::Missing);
        assert_eq!(verdict(Some(&value), on_bus(None, None)), Verdict::Missing);
        assert_eq!(verdict(None, bus(&live)), Verdict::Gone);
        assert_eq!(verdict(None, bus(&deleted)), Verdict::Absent);
        assert_eq!(verdict(None, on_bus(None, None)), Verdict::Absent);
        // A truncate after the key's last envelope deleted it; one before did not.
        let at = |lsn| {
            Some(Position {
                commit_lsn: Lsn(lsn),
                ordinal: 0,
            })
        };
        assert_eq!(verdict(None, on_bus(Some(&live), at(200))), Verdict::Absent);
        assert_eq!(verdict(None, on_bus(Some(&live), at(50))), Verdict::Gone);
        assert!(Verdict::Equal.settled() && !Verdict::Differing.settled());
    }

    #[test]
    fn markers_are_found_and_not_compared() {
        let value = row(&[("id", V::from(1)), ("doc", V::from("long"))]);
        let unavailable = row(&[
            ("id", V::from(1)),
            ("doc", row(&[(UNAVAILABLE_KEY, V::from("unchanged-toast"))])),
        ]);
        let too_large = row(&[(TOO_LARGE_KEY, V::from(2_000_000))]);
        let on = |v: &V| {
            verdict(
                Some(&value),
                on_bus(Some(&stored(Op::Update, v.clone(), 1)), None),
            )
        };
        assert_eq!(on(&unavailable), Verdict::Marker(Marker::Unavailable));
        assert_eq!(on(&too_large), Verdict::Marker(Marker::TooLarge));
        assert_eq!(marker(&value), None);
        assert_eq!(marker(&V::Nil), None);
    }
}
