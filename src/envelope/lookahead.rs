//! Looking ahead: what a change still in the read buffer will ask for, found before it
//! is built and without changing any state, so that the caller can load the states of
//! many keys in one request instead of one round trip per key.

use super::toast_fill::full_old;
use super::{EnvelopeBuilder, RowVersion, ToastNeeded};
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

    /// The unchanged-TOAST values an update of transaction `xid` will ask for (neither
    /// in its old row nor remembered), as building it would ask for them.
    pub fn toast_ahead(
        &self,
        relation_id: u32,
        old: Option<&OldTuple<'_>>,
        new: &[TupleValue<'_>],
        xid: u32,
    ) -> Option<ToastNeeded> {
        let rel = self.relation(relation_id).ok()?;
        let publishes = rel.publishes(Op::Update) || rel.publishes(Op::Delete);
        let old_values = old.map(|o| o.values());
        if rel.shape.key.is_empty()
            || !publishes
            || rel.check_column_count([Some(new), old_values]).is_err()
            || !new.contains(&TupleValue::UnchangedToast)
        {
            return None;
        }
        let (key, subject) = rel.key_of(new, "lookahead").ok()?;
        let moved_from = old_values
            .and_then(|o| rel.key_of(o, "lookahead").ok())
            .filter(|(old_key, _)| *old_key != key);
        let toast_key = moved_from.as_ref().map_or(key, |(k, _)| k.clone());
        let missing = self.missing_toast(new, full_old(old), &toast_key);
        if missing.is_empty() {
            return None;
        }
        let mut source = self.toast_source(rel, new, &toast_key, &subject, moved_from.as_ref());
        if let RowVersion::Xmin { .. } = source.version {
            source.version = RowVersion::Xmin { xid };
        }
        source.xid = xid;
        Some(rel.toast_needed(relation_id, toast_key, new, &missing, source))
    }

    /// How many key states may be loaded ahead without pushing out one another.
    pub fn lookahead_room(&self) -> usize {
        (self.keys.capacity() / 2).max(1)
    }
}
