//! The JetStream streams walcast keeps: the envelope stream over `<prefix>.>` (one
//! message per subject: each key's last envelope) and the meta stream of walcast's
//! own records (schema histories). Created when missing, validated when present.

use std::time::Duration;

use async_nats::jetstream::context::{Context, GetStreamErrorKind};
use async_nats::jetstream::stream::{Compression, Config, Placement, Stream};

use super::StateError;

/// How the streams are set up (`config/` builds it from the flags).
#[derive(Debug, Clone)]
pub struct StreamSettings {
    pub name: String,
    /// Envelope subjects: `<prefix>.>`.
    pub prefix: String,
    /// Messages kept per subject (1: the last state of every key).
    pub history: i64,
    /// A window (`--stream-max-age`, `--stream-max-bytes`; zero: none): envelopes
    /// leave the stream by age or size, for a catch-up window of column-mode tables.
    /// An existing stream is given it (`window.rs`).
    pub max_age: Duration,
    pub max_bytes: i64,
    /// Tables are tracked unless in column mode (not `--volatile-sequences`): their
    /// keys' last envelopes in the stream are their sequence state.
    pub tracked: bool,
    /// The tables in column mode (`schema.table`, `--column-sequence`).
    pub column_tables: Vec<String>,
    pub duplicate_window: Duration,
    /// Per-message TTLs (`allow_msg_ttl`, nats-server 2.11+): some table's deletes
    /// expire (`--delete-ttl`).
    pub message_ttl: bool,
    /// Servers each stream is replicated on (`--stream-replicas`; 3 in a cluster: an
    /// acknowledgement then means a quorum has the envelope).
    pub replicas: usize,
    /// Where the streams are placed: a cluster's name and server tags (`--stream-cluster`,
    /// `--stream-tags`), passed to JetStream as they are.
    pub placement_cluster: Option<String>,
    pub placement_tags: Vec<String>,
    /// JetStream's own s2 compression of the stream's files (`--stream-compression`).
    pub compression: bool,
    /// The key ring the stream's encrypted envelopes are opened with (walcast reads
    /// its keys' last envelopes back: sequences, unchanged TOAST values).
    pub keys: Option<std::sync::Arc<crate::wire::seal::Keyring>>,
}

impl StreamSettings {
    /// Subjects of walcast's own records (schema histories): `<prefix>_meta.>`.
    pub fn meta_prefix(&self) -> String {
        format!("{}_meta", self.prefix)
    }

    /// JetStream's duplicate window may not be longer than the age limit.
    fn duplicate_window(&self) -> Duration {
        match self.max_age {
            Duration::ZERO => self.duplicate_window,
            age => self.duplicate_window.min(age),
        }
    }

    /// The size limit as JetStream writes it (-1: none).
    fn max_bytes_or_unlimited(&self) -> i64 {
        if self.max_bytes > 0 {
            self.max_bytes
        } else {
            -1
        }
    }

    fn subjects(&self) -> Vec<String> {
        vec![format!("{}.>", self.prefix)]
    }

    /// The stream of walcast's own records (schema histories), kept apart so that
    /// the envelope stream has exactly one writer: the sink.
    pub fn meta_name(&self) -> String {
        format!("{}_META", self.name)
    }

    fn placement(&self) -> Option<Placement> {
        (self.placement_cluster.is_some() || !self.placement_tags.is_empty()).then(|| Placement {
            cluster: self.placement_cluster.clone(),
            tags: self.placement_tags.clone(),
        })
    }

    fn config(&self) -> Config {
        Config {
            name: self.name.clone(),
            num_replicas: self.replicas,
            placement: self.placement(),
            subjects: self.subjects(),
            max_messages_per_subject: self.history,
            max_age: self.max_age,
            max_bytes: self.max_bytes_or_unlimited(),
            duplicate_window: self.duplicate_window(),
            allow_direct: true,
            // Fast-ingest batches (nats-server 2.14+; an older server ignores it).
            allow_batch_publish: true,
            allow_message_ttl: self.message_ttl,
            compression: self.compression.then_some(Compression::S2),
            storage: async_nats::jetstream::stream::StorageType::File,
            ..Default::default()
        }
    }

    fn meta_config(&self) -> Config {
        Config {
            name: self.meta_name(),
            num_replicas: self.replicas,
            placement: self.placement(),
            subjects: vec![format!("{}.>", self.meta_prefix())],
            max_messages_per_subject: 1,
            allow_direct: true,
            storage: async_nats::jetstream::stream::StorageType::File,
            ..Default::default()
        }
    }
}

pub(crate) fn js_err(what: &str, e: impl std::fmt::Display) -> StateError {
    StateError::JetStream(format!("{what}: {e}"))
}

/// What makes an existing stream's configuration unusable for walcast.
pub fn stream_problems(c: &Config, settings: &StreamSettings) -> Vec<String> {
    let mut problems = Vec::new();
    for s in settings.subjects() {
        if !c.subjects.contains(&s) {
            problems.push(format!("subjects {:?} lack {s:?}", c.subjects));
        }
    }
    if c.max_messages_per_subject != settings.history {
        problems.push(format!(
            "max_msgs_per_subject is {}, walcast is configured for {}",
            c.max_messages_per_subject, settings.history
        ));
    }
    if !c.allow_direct {
        problems.push("allow_direct is off".into());
    }
    if c.max_messages > 0 {
        problems.push("it has a message count limit that would drop key state".into());
    }
    // Another window is not a problem: walcast changes it (window.rs).
    problems
}

/// A stream looked up that does not exist.
pub(crate) fn not_found(e: &async_nats::jetstream::context::GetStreamError) -> bool {
    matches!(e.kind(), GetStreamErrorKind::JetStream(ref j)
        if j.error_code() == async_nats::jetstream::ErrorCode::STREAM_NOT_FOUND)
}

/// The stream's problems, or `None` when it does not exist yet.
pub async fn inspect_stream(
    js: &Context,
    settings: &StreamSettings,
) -> Result<Option<Vec<String>>, StateError> {
    match js.get_stream(&settings.name).await {
        Ok(mut stream) => {
            let info = stream
                .info()
                .await
                .map_err(|e| js_err("reading the stream config", e))?;
            Ok(Some(stream_problems(&info.config, settings)))
        }
        Err(e) if not_found(&e) => Ok(None),
        Err(e) => Err(js_err("looking up the stream", e)),
    }
}

/// Create the meta stream (schema histories) when missing.
pub async fn ensure_meta_stream(
    js: &Context,
    settings: &StreamSettings,
) -> Result<Stream, StateError> {
    let mut meta = js
        .get_or_create_stream(settings.meta_config())
        .await
        .map_err(|e| js_err(&format!("creating stream {}", settings.meta_name()), e))?;
    scale(js, &mut meta, settings.replicas).await?;
    Ok(meta)
}

/// Replicate an existing stream on `replicas` servers (`--stream-replicas` changed
/// since it was created): JetStream copies it to the new peers. An error when the
/// server refuses (too few servers, no permission): walcast does not run with fewer
/// copies than asked for.
async fn scale(js: &Context, stream: &mut Stream, replicas: usize) -> Result<(), StateError> {
    let mut config = stream.cached_info().config.clone();
    if config.num_replicas.max(1) == replicas {
        return Ok(());
    }
    let name = config.name.clone();
    tracing::info!(stream = %name, from = config.num_replicas, to = replicas, "scaling the stream (--stream-replicas)");
    config.num_replicas = replicas;
    update_config(js, stream, config, |e| {
        StateError::JetStream(format!(
            "--stream-replicas {replicas}: cannot scale stream {name} to {replicas} replicas: {e}"
        ))
    })
    .await
}

/// Give the stream `config`, then read its state again; `refused` words the server's
/// refusal.
pub(super) async fn update_config(
    js: &Context,
    stream: &mut Stream,
    config: Config,
    refused: impl FnOnce(String) -> StateError,
) -> Result<(), StateError> {
    js.update_stream(config)
        .await
        .map_err(|e| refused(e.to_string()))?;
    stream
        .info()
        .await
        .map_err(|e| js_err("re-reading the stream", e))?;
    Ok(())
}

/// Create the stream, or check that the existing one fits (and give it the
/// configured window, replicas, TTLs, compression and batches).
pub async fn ensure_stream(js: &Context, settings: &StreamSettings) -> Result<Stream, StateError> {
    match inspect_stream(js, settings).await? {
        Some(problems) if !problems.is_empty() => Err(StateError::StreamConflict {
            stream: settings.name.clone(),
            problems: problems.join("; "),
        }),
        Some(_) => {
            let mut stream = js
                .get_stream(&settings.name)
                .await
                .map_err(|e| js_err("opening the stream", e))?;
            scale(js, &mut stream, settings.replicas).await?;
            super::window::apply_window(js, &mut stream, settings).await?;
            let config = stream.cached_info().config.clone();
            if settings.message_ttl && !config.allow_message_ttl {
                enable_message_ttl(js, &mut stream, config).await?;
            }
            let config = stream.cached_info().config.clone();
            if settings.compression && config.compression != Some(Compression::S2) {
                enable_compression(js, &mut stream, config).await?;
            }
            let config = stream.cached_info().config.clone();
            if !config.allow_batch_publish {
                enable_batches(js, &mut stream, config).await;
            }
            Ok(stream)
        }
        None => js
            .create_stream(settings.config())
            .await
            .map_err(|e| js_err(&format!("creating stream {}", settings.name), e)),
    }
}

/// Turn fast-ingest batches on for an existing stream (made by an older walcast or an
/// administrator); without them (an older server, no permission to update the
/// stream) walcast publishes with one PubAck per message.
async fn enable_batches(js: &Context, stream: &mut Stream, mut config: Config) {
    config.allow_batch_publish = true;
    match js.update_stream(config).await {
        Ok(info) if info.config.allow_batch_publish => {
            tracing::info!(stream = %info.config.name, "fast-ingest batch publishing enabled on the stream");
            if let Err(e) = stream.info().await {
                tracing::debug!(error = %e, "re-reading the stream");
            }
        }
        Ok(info) => tracing::info!(
            stream = %info.config.name,
            "the NATS server does not offer fast-ingest batches (2.14+): publishing with one PubAck per message"
        ),
        Err(e) => tracing::warn!(
            error = %e,
            "cannot enable fast-ingest batches on the stream (allow_batched): publishing with one PubAck per message"
        ),
    }
}

/// Turn s2 compression on for an existing stream (`--stream-compression s2`): the
/// server compresses its blocks from then on.
async fn enable_compression(
    js: &Context,
    stream: &mut Stream,
    mut config: Config,
) -> Result<(), StateError> {
    config.compression = Some(Compression::S2);
    update_config(js, stream, config, |e| {
        js_err("turning on the stream's s2 compression", e)
    })
    .await
}

/// Turn per-message TTLs on for an existing stream (`--delete-ttl`): an error when
/// the server refuses (it cannot be turned off again, so walcast never does).
async fn enable_message_ttl(
    js: &Context,
    stream: &mut Stream,
    mut config: Config,
) -> Result<(), StateError> {
    let name = config.name.clone();
    config.allow_message_ttl = true;
    let refused = |e: String| {
        StateError::JetStream(format!("--delete-ttl needs per-message TTLs (allow_msg_ttl) on stream {name}, and the server refused to turn them on: {e}"))
    };
    match js.update_stream(config).await {
        Ok(info) if info.config.allow_message_ttl => {
            tracing::info!(stream = %name, "per-message TTLs enabled on the stream (--delete-ttl)");
            stream
                .info()
                .await
                .map_err(|e| js_err("re-reading the stream", e))?;
            Ok(())
        }
        Ok(_) => Err(refused(
            "the setting did not stay (nats-server 2.11+ needed)".into(),
        )),
        Err(e) => Err(refused(e.to_string())),
    }
}

/// Whether the stream takes fast-ingest batches.
pub fn takes_batches(stream: &Stream) -> bool {
    stream.cached_info().config.allow_batch_publish
}
