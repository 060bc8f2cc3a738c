//! Catch-up since a position: a consumer that was offline reads what walcast's stream
//! holds after its last position — filtered by table, key or op — page by page, then
//! follows live from the last page's watermark with no gap and no duplicate at the
//! hand-over. A position is a sequence of walcast's JetStream stream
//! ([`StoredEnvelope::stream_sequence`]); everything is read through JetStream ordered
//! consumers with subject filters.
//!
//! What a catch-up returns depends on the stream's retention (README, "Catch-up"):
//! with `--stream-history N` the last N envelopes of each key (a key changed more often
//! while the consumer was away shows a jump in its `sequence`: the latest is still its
//! current state); with a window (`--stream-max-age`, `--stream-max-bytes`) whole
//! envelopes leave the stream, and a position older than the window is
//! [`ClientError::PositionTooOld`]: the consumer must refetch (snapshot) instead.

use std::time::Duration;

use async_nats::jetstream::consumer::{pull, DeliverPolicy};
use async_nats::jetstream::stream::Info;
use futures::{Stream, StreamExt};

use super::stream::StoredEnvelope;
use super::{ClientError, Envelope};
use crate::wire::key::{subject_for_key, subject_for_table};
use crate::wire::seal::Keyring;
use crate::wire::Op;

/// How long a page waits for a message the consumer said was pending.
const PAGE_WAIT: Duration = Duration::from_secs(10);

/// Which envelopes a catch-up returns: those of these tables or keys (all when both
/// are empty; the stream filters by subject) and of these ops (all when empty).
#[derive(Debug, Clone, Default)]
pub struct ChangeFilter {
    /// `schema.table` names.
    pub tables: Vec<String>,
    /// Keys (`schema.table:value`), exactly.
    pub keys: Vec<String>,
    pub ops: Vec<Op>,
    /// Keys matching this pattern only: `*` stands for any run of characters
    /// (`public.orders:42*`).
    pub key_pattern: Option<String>,
    /// The keys encrypted rows are opened with (`None`: an encrypted row is an error
    /// that says so).
    pub keyring: Option<std::sync::Arc<Keyring>>,
}

impl ChangeFilter {
    /// The stream subjects the filter reads (`<prefix>.>` when it names none).
    fn subjects(&self, prefix: &str) -> Result<Vec<String>, ClientError> {
        let mut out = Vec::new();
        for t in &self.tables {
            let (schema, table) = t
                .split_once('.')
                .ok_or_else(|| ClientError::Filter(format!("{t:?} is not schema.table")))?;
            out.push(subject_for_table(prefix, schema, table));
        }
        for k in &self.keys {
            out.push(subject_for_key(prefix, k).map_err(|e| ClientError::Key(k.clone(), e))?);
        }
        if out.is_empty() {
            out.push(format!("{prefix}.>"));
        }
        Ok(out)
    }

    /// Whether an envelope the subjects let through is wanted.
    pub fn accepts(&self, e: &Envelope) -> bool {
        (self.ops.is_empty() || self.ops.contains(&e.op))
            && self
                .key_pattern
                .as_deref()
                .is_none_or(|p| glob_matches(p, &e.key))
    }
}

/// `*` in `pattern` matches any run of characters; everything else itself.
fn glob_matches(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    let (first, rest) = parts.split_first().expect("split yields one part");
    let Some(mut left) = text.strip_prefix(first) else {
        return false;
    };
    let Some((last, middle)) = rest.split_last() else {
        return left.is_empty();
    };
    for part in middle {
        match left.find(part) {
            Some(i) => left = &left[i + part.len()..],
            None => return false,
        }
    }
    left.ends_with(last)
}

/// One page of a catch-up.
#[derive(Debug, Clone)]
pub struct Page {
    /// The envelopes after the position that the filter wants, in stream order.
    pub changes: Vec<StoredEnvelope>,
    /// Whether the stream held more for the filter when the page ended.
    pub has_more: bool,
    /// The position to ask from next (the last stream sequence the page covered).
    pub next: u64,
}

/// The stream's last sequence: a position to catch up from later.
pub async fn latest_position(
    js: &async_nats::jetstream::Context,
    stream: &str,
) -> Result<u64, ClientError> {
    Ok(stream_info(js, stream).await?.state.last_sequence)
}

async fn stream_info(
    js: &async_nats::jetstream::Context,
    stream: &str,
) -> Result<Info, ClientError> {
    let mut s = js
        .get_stream(stream)
        .await
        .map_err(|e| ClientError::Nats(format!("stream {stream}: {e}")))?;
    s.info()
        .await
        .cloned()
        .map_err(|e| ClientError::Nats(format!("stream {stream}: {e}")))
}

/// [`ClientError::PositionTooOld`] when the stream has a window and envelopes after
/// `position` have left it.
fn check_window(info: &Info, position: u64) -> Result<(), ClientError> {
    let c = &info.config;
    let window = c.max_age != Duration::ZERO || c.max_bytes > 0 || c.max_messages > 0;
    let oldest = info.state.first_sequence;
    if window && position.saturating_add(1) < oldest && info.state.messages > 0 {
        return Err(ClientError::PositionTooOld { position, oldest });
    }
    Ok(())
}

/// An ordered consumer of `stream` from `position + 1` over the filter's subjects.
async fn consumer_from(
    js: &async_nats::jetstream::Context,
    stream: &str,
    prefix: &str,
    position: u64,
    filter: &ChangeFilter,
) -> Result<async_nats::jetstream::consumer::Consumer<pull::OrderedConfig>, ClientError> {
    let nats = |e: &dyn std::fmt::Display| ClientError::Nats(format!("stream {stream}: {e}"));
    let s = js.get_stream(stream).await.map_err(|e| nats(&e))?;
    s.create_consumer(pull::OrderedConfig {
        filter_subjects: filter.subjects(prefix)?,
        deliver_policy: DeliverPolicy::ByStartSequence {
            start_sequence: position + 1,
        },
        ..Default::default()
    })
    .await
    .map_err(|e| nats(&e))
}

/// Up to `page_size` envelopes after `position` that `filter` wants, from walcast's
/// stream `stream` (subjects under `prefix`).
pub async fn changes_since(
    js: &async_nats::jetstream::Context,
    stream: &str,
    prefix: &str,
    position: u64,
    filter: &ChangeFilter,
    page_size: usize,
) -> Result<Page, ClientError> {
    let info = stream_info(js, stream).await?;
    check_window(&info, position)?;
    let mut page = Page {
        changes: Vec::new(),
        has_more: false,
        next: position,
    };
    let last = info.state.last_sequence;
    if last <= position {
        return Ok(page);
    }
    let consumer = consumer_from(js, stream, prefix, position, filter).await?;
    if consumer.cached_info().num_pending == 0 {
        // Nothing the filter wants up to `last` (read before the consumer was made).
        page.next = last;
        return Ok(page);
    }
    let nats = |e: &dyn std::fmt::Display| ClientError::Nats(format!("catch-up: {e}"));
    let mut messages = consumer.messages().await.map_err(|e| nats(&e))?;
    while page.changes.len() < page_size.max(1) {
        let msg = match tokio::time::timeout(PAGE_WAIT, messages.next()).await {
            Ok(Some(m)) => m.map_err(|e| nats(&e))?,
            Ok(None) => return Err(nats(&"the consumer ended")),
            Err(_) => return Err(nats(&"no message within 10 s though some were pending")),
        };
        let (stored, pending) = read_message(&msg, filter.keyring.as_deref())?;
        page.next = stored.stream_sequence;
        page.has_more = pending > 0;
        if filter.accepts(&stored.envelope) {
            page.changes.push(stored);
        }
        if pending == 0 {
            break;
        }
    }
    Ok(page)
}

/// Every envelope after `position` that `filter` wants, the stored ones first and then
/// the live ones as the stream stores them: one ordered consumer, so nothing is missed
/// or repeated at the hand-over. Ends with an error when the consumer does.
pub async fn follow_since(
    js: &async_nats::jetstream::Context,
    stream: &str,
    prefix: &str,
    position: u64,
    filter: ChangeFilter,
) -> Result<impl Stream<Item = Result<StoredEnvelope, ClientError>>, ClientError> {
    check_window(&stream_info(js, stream).await?, position)?;
    let consumer = consumer_from(js, stream, prefix, position, &filter).await?;
    let messages = consumer
        .messages()
        .await
        .map_err(|e| ClientError::Nats(format!("follow: {e}")))?;
    Ok(messages.filter_map(move |m| {
        let out = match m {
            Ok(msg) => read_message(&msg, filter.keyring.as_deref())
                .map(|(stored, _)| stored)
                .map(|s| filter.accepts(&s.envelope).then_some(s))
                .transpose(),
            Err(e) => Some(Err(ClientError::Nats(format!("follow: {e}")))),
        };
        std::future::ready(out)
    }))
}

/// A message of an ordered consumer: its envelope, and how many more the consumer had.
fn read_message(
    msg: &async_nats::jetstream::Message,
    keys: Option<&Keyring>,
) -> Result<(StoredEnvelope, u64), ClientError> {
    let info = msg
        .info()
        .map_err(|e| ClientError::Nats(format!("message info: {e}")))?;
    let (seq, pending) = (info.stream_sequence, info.pending);
    let stored = StoredEnvelope::from_parts(&msg.payload, msg.headers.as_ref(), seq, keys)
        .map_err(|e| ClientError::Decode(format!("stream sequence {seq}: {e}")))?;
    Ok((stored, pending))
}

#[cfg(test)]
mod tests {
    use super::glob_matches;

    #[test]
    fn glob_patterns_match_runs_of_characters() {
        assert!(glob_matches("public.orders:*", "public.orders:42"));
        assert!(glob_matches("public.orders:4*", "public.orders:42"));
        assert!(!glob_matches("public.orders:5*", "public.orders:42"));
        assert!(glob_matches("*:42", "public.orders:42"));
        assert!(glob_matches("public.*:4*2", "public.orders:402"));
        assert!(!glob_matches("public.*:4*3", "public.orders:402"));
        assert!(glob_matches("public.orders:42", "public.orders:42"));
        assert!(!glob_matches("public.orders:42", "public.orders:421"));
        assert!(glob_matches("*", ""));
    }
}
