//! Many keys' last envelopes in few requests: a `multi_last` direct get asks the
//! stream for the last message of up to [`MULTI_LAST_MAX`] subjects at once
//! (nats-server 2.11+, ADR-31), the replies streaming back until an end-of-batch
//! marker; several requests are in flight together. Older servers get pipelined
//! single direct gets instead.

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream::message::StreamMessage;
use futures::{StreamExt, TryStreamExt};

use super::stream::js_err;
use super::{StateError, StateStore};
use crate::client::StoredEnvelope;

/// Subjects per `multi_last` request (the server's limit is 1024).
pub const MULTI_LAST_MAX: usize = 1024;
/// Requests (or, on an older server, single gets) in flight at once.
const IN_FLIGHT: usize = 4;
/// Single direct gets in flight at once on a server without `multi_last`.
const SINGLE_IN_FLIGHT: usize = 64;
/// How long one batch may take before it is an error.
const BATCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Last envelopes by subject (a subject without a message is absent), and how many
/// requests it took.
pub struct LastEnvelopes {
    pub by_subject: HashMap<String, StoredEnvelope>,
    pub requests: u64,
}

impl StateStore {
    /// The last envelope of each of `subjects`.
    pub async fn last_envelopes(&self, subjects: &[String]) -> Result<LastEnvelopes, StateError> {
        if !self.multi_last {
            return self.last_envelopes_one_by_one(subjects).await;
        }
        let batches: Vec<HashMap<String, StoredEnvelope>> =
            futures::stream::iter(subjects.chunks(MULTI_LAST_MAX))
                .map(|chunk| self.multi_last(chunk))
                .buffer_unordered(IN_FLIGHT)
                .try_collect()
                .await?;
        Ok(LastEnvelopes {
            requests: batches.len() as u64,
            by_subject: batches.into_iter().flatten().collect(),
        })
    }

    /// One `multi_last` request: its replies until the end-of-batch marker.
    async fn multi_last(
        &self,
        subjects: &[String],
    ) -> Result<HashMap<String, StoredEnvelope>, StateError> {
        let client = self.js.client();
        let inbox = client.new_inbox();
        let mut replies = client
            .subscribe(inbox.clone())
            .await
            .map_err(|e| js_err("subscribing for a batched get", e))?;
        let request = serde_json::json!({ "multi_last": subjects, "batch": subjects.len() });
        client
            .publish_with_reply(self.direct_get_subject(), inbox, request.to_string().into())
            .await
            .map_err(|e| js_err("asking for a batched get", e))?;
        let mut out = HashMap::with_capacity(subjects.len());
        loop {
            let reply = tokio::time::timeout(BATCH_TIMEOUT, replies.next())
                .await
                .map_err(|_| js_err("a batched get", "no reply in time"))?
                .ok_or_else(|| js_err("a batched get", "the subscription ended"))?;
            if is_end_of_batch(&reply) {
                return Ok(out);
            }
            let (subject, stored) = self.read_reply(reply)?;
            out.insert(subject, stored);
        }
    }

    /// One reply of a batch: the subject and its decoded last envelope.
    fn read_reply(
        &self,
        reply: async_nats::Message,
    ) -> Result<(String, StoredEnvelope), StateError> {
        if let Some(status) = reply.status.filter(|s| !s.is_success()) {
            let why = reply.description.unwrap_or_default();
            return Err(js_err("a batched get", format!("{status} {why}")));
        }
        if reply.payload.is_empty() {
            return Err(js_err(
                "a batched get",
                "an empty reply that is not the end",
            ));
        }
        let msg = StreamMessage::try_from(reply).map_err(|e| js_err("a batched get reply", e))?;
        let (subject, sequence) = (msg.subject.to_string(), msg.sequence);
        let stored = StoredEnvelope::read_with(msg, self.keys.as_deref())
            .map_err(|e| self.foreign(&subject, sequence, format!("not an envelope: {e}")))?;
        Ok((subject, stored))
    }

    /// Pipelined single direct gets (a server without `multi_last`).
    async fn last_envelopes_one_by_one(
        &self,
        subjects: &[String],
    ) -> Result<LastEnvelopes, StateError> {
        let found: Vec<(String, Option<StoredEnvelope>)> = futures::stream::iter(subjects)
            .map(|s| async move { Ok::<_, StateError>((s.clone(), self.last_envelope(s).await?)) })
            .buffer_unordered(SINGLE_IN_FLIGHT)
            .try_collect()
            .await?;
        Ok(LastEnvelopes {
            requests: subjects.len() as u64,
            by_subject: found
                .into_iter()
                .filter_map(|(s, e)| e.map(|e| (s, e)))
                .collect(),
        })
    }
}

/// The end of a batch: status 204 (`EOB`), or 404 (`No Results`: none of the subjects
/// has a message; one without a message is otherwise only left out). Any other
/// status is an error of the request.
fn is_end_of_batch(reply: &async_nats::Message) -> bool {
    reply
        .status
        .is_some_and(|s| matches!(s.as_u16(), 204 | 404))
}

/// Whether a server of this version answers `multi_last` requests (2.11+).
pub(super) fn server_has_multi_last(version: &str) -> bool {
    let mut parts = version
        .split(['.', '-'])
        .map(|p| p.parse::<u64>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (major, minor) >= (2, 11)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_last_needs_2_11() {
        assert!(server_has_multi_last("2.15.1"));
        assert!(server_has_multi_last("2.11.0-RC.1"));
        assert!(server_has_multi_last("3.0.0"));
        assert!(!server_has_multi_last("2.10.22"));
        assert!(!server_has_multi_last("garbage"));
    }
}
