//! Looking ahead: what a change still in the read buffer will ask for, found before it
//! is built and without changing any state, so that the caller can load the states of
//! many keys in one request instead of one round trip per key.

use super::EnvelopeBuilder;
use crate::decode::pgoutput::{OldTuple, TupleValue};
use crate::wire::Op;

impl EnvelopeBuilder {
    /// The keys of a change (with their subjects) whose state a tracked table's change
    /// would have to load: not in memory, and possibly in the stream. Changes of
    /// relations not described yet, keyless tables and malformed tuples are passed
    /// over (building them reports what is wrong).
    pub fn unseen_keys(
        &self,
        relation_id: u32,
        op: Op,
        old: Option<&OldTuple<'_>>,
        new: Option<&[TupleValue<'_>]>,
        found: &mut impl FnMut(String, String),
    ) {
        let Ok(rel) = self.relation(relation_id) else {
            return;
        };
        if rel.shape.key.is_empty()
            || !self.tracked(rel)
            || rel
                .check_column_count([new, old.map(|o| o.values())])
                .is_err()
        {
            return;
        }
        let tuples = match op {
            Op::Delete => [old.map(|o| o.values()), None],
            _ => [new, old.map(|o| o.values())],
        };
        for tuple in tuples.into_iter().flatten() {
            let Ok((key, subject)) = rel.key_of(tuple, "lookahead") else {
                continue;
            };
            if self.keys.needs_load(&key) && self.may_have_published(&subject) {
                found(key, subject);
            }
        }
    }

    /// How many key states may be loaded ahead without pushing out one another.
    pub fn lookahead_room(&self) -> usize {
        (self.keys.capacity() / 2).max(1)
    }
}
