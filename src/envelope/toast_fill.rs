//! Unchanged-TOAST values the caller read for a change ([`super::ToastNeeded`]): from
//! the table (valid only while its row is still the change's version) or from the
//! key's last envelope in the stream; kept for the next change of the key whatever the
//! cache's budget.

use super::{EnvelopeBuilder, EnvelopeError, ToastNeeded};
use crate::decode::value::parse_text;
use crate::wire::Value;

impl EnvelopeBuilder {
    /// Values read from the table for a [`ToastNeeded`] (text forms, by column), and
    /// whether the row read is still the version the change wrote: when it is not,
    /// the columns are published as unavailable. Returns how many published columns
    /// are unavailable.
    pub fn provide_toast(
        &mut self,
        needed: &ToastNeeded,
        texts: &[Option<String>],
        same_version: bool,
    ) -> Result<usize, EnvelopeError> {
        let rel = self.relation(needed.relation_id)?;
        let mut vals = Vec::new();
        for (name, text) in needed.columns.iter().zip(texts) {
            let Some(idx) = rel.shape.columns.iter().position(|c| &c.name == name) else {
                continue;
            };
            let col = &rel.shape.columns[idx];
            let v = match text {
                _ if !same_version => Value::Unavailable,
                None => Value::Null,
                Some(t) => parse_text(&col.kind, t.as_bytes())
                    .map_err(|source| EnvelopeError::Value {
                        table: rel.qualified_name(),
                        column: col.name.clone(),
                        source,
                    })?
                    .into_owned(),
            };
            vals.push((idx, v));
        }
        Ok(self.set_pending_toast(needed, vals))
    }

    /// The row value of the key's last envelope in the stream (`None`: the stream
    /// has none) for a [`ToastNeeded`] from [`ToastSource::Stream`]: each needed column
    /// as it was published. Returns how many published columns are unavailable.
    pub fn provide_toast_from_envelope(
        &mut self,
        needed: &ToastNeeded,
        row: Option<&rmpv::Value>,
    ) -> Result<usize, EnvelopeError> {
        let rel = self.relation(needed.relation_id)?;
        let published = row.and_then(rmpv::Value::as_map);
        let mut vals = Vec::new();
        for name in &needed.columns {
            let Some(idx) = rel.shape.columns.iter().position(|c| &c.name == name) else {
                continue;
            };
            let found = published.and_then(|m| {
                m.iter()
                    .find(|(k, _)| k.as_str() == Some(name))
                    .map(|(_, v)| v.clone())
            });
            vals.push((idx, found.map_or(Value::Unavailable, Value::Raw)));
        }
        Ok(self.set_pending_toast(needed, vals))
    }

    /// Values for the next change of `needed.key`, whatever the cache's budget; the
    /// cache keeps them too when they fit.
    fn set_pending_toast(
        &mut self,
        needed: &ToastNeeded,
        mut vals: Vec<(usize, Value<'static>)>,
    ) -> usize {
        let rel = &self.relations[&needed.relation_id];
        let unavailable = vals
            .iter()
            .filter(|(i, v)| *v == Value::Unavailable && rel.published[*i])
            .count();
        if let Some(existing) = self.toast.entries.get(&needed.key) {
            for (i, v) in existing {
                if !vals.iter().any(|(j, _)| j == i) {
                    vals.push((*i, v.clone()));
                }
            }
        }
        let cached: Vec<(usize, Value<'static>)> = vals
            .iter()
            .filter(|(_, v)| *v != Value::Unavailable)
            .cloned()
            .collect();
        self.toast.insert(needed.key.clone(), cached);
        self.pending_toast = Some((needed.key.clone(), vals));
        unavailable
    }

    /// An unchanged TOAST value of `key`'s column `i`: just provided, else cached.
    pub(super) fn toast_value(&self, key: &str, i: usize) -> Option<&Value<'static>> {
        match &self.pending_toast {
            Some((k, vals)) if k == key => vals.iter().find(|(j, _)| *j == i).map(|(_, v)| v),
            _ => None,
        }
        .or_else(|| self.toast.get(key, i))
    }
}
