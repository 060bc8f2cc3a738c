//! What the stream holds under a subject pattern, read without walcast's settings:
//! the stream is found by its subjects, then every matching subject's last envelope
//! is read with batched direct gets (`walcast tail --stored`). Only reads.

use std::sync::Arc;

use async_nats::jetstream::context::{Context, GetStreamByNameErrorKind};

use super::stream::js_err;
use super::{batch, next_subjects, StateError, StateStore, SubjectPages};
use crate::client::StoredEnvelope;

/// Subjects listed (and their last envelopes read) per round.
pub const STORED_PAGE: usize = batch::MULTI_LAST_MAX;

impl StateStore {
    /// A store that reads the stream holding `pattern`'s subjects (walcast's envelope
    /// stream); `None` when no stream holds them. It never writes. `keys` open the
    /// envelopes of encrypted tables.
    pub async fn reading(
        js: Context,
        pattern: &str,
        keys: Option<Arc<crate::wire::seal::Keyring>>,
    ) -> Result<Option<StateStore>, StateError> {
        let name = match js.stream_by_subject(pattern).await {
            Ok(name) => name,
            Err(e) if e.kind() == GetStreamByNameErrorKind::NotFound => return Ok(None),
            Err(e) => {
                let what = "looking for the stream of the subjects (is JetStream enabled?)";
                return Err(js_err(what, e));
            }
        };
        let mut stream = js
            .get_stream(&name)
            .await
            .map_err(|e| js_err("looking up the stream", e))?;
        let info = stream
            .info()
            .await
            .map_err(|e| js_err("reading the stream config", e))?;
        let prefix = info
            .config
            .subjects
            .first()
            .and_then(|s| s.strip_suffix(".>"))
            .unwrap_or_default()
            .to_string();
        Ok(Some(StateStore {
            multi_last: batch::server_has_multi_last(&js.client().server_info().version),
            meta_prefix: format!("{prefix}_meta"),
            prefix,
            meta: stream.clone(),
            stream,
            js,
            last_written: Arc::default(),
            keys,
        }))
    }

    /// The stream's name.
    pub fn stream_name(&self) -> String {
        self.stream.cached_info().config.name.clone()
    }

    /// Every subject matching `pattern` that has a message, sorted.
    pub async fn stored_subjects(&self, pattern: &str) -> Result<Vec<String>, StateError> {
        let pages = self
            .stream
            .info_with_subjects(pattern)
            .await
            .map_err(|e| js_err("listing the stream's subjects", e))?;
        let mut pages = SubjectPages(Box::pin(pages));
        let mut subjects = Vec::new();
        loop {
            let page = next_subjects(&mut pages, STORED_PAGE).await?;
            let done = page.len() < STORED_PAGE;
            subjects.extend(page);
            if done {
                break;
            }
        }
        subjects.sort_unstable();
        Ok(subjects)
    }

    /// The last envelopes of `subjects` (at most [`STORED_PAGE`] of them) in their
    /// order; a subject whose message went meanwhile is left out.
    pub async fn stored_page(
        &self,
        subjects: &[String],
    ) -> Result<Vec<(String, StoredEnvelope)>, StateError> {
        let mut found = self.last_envelopes(subjects).await?.by_subject;
        Ok(subjects
            .iter()
            .filter_map(|s| found.remove(s).map(|e| (s.clone(), e)))
            .collect())
    }
}
