//! Which delivery walcast uses — core NATS or JetStream, and how it publishes there —
//! with the JetStream streams set up for it and the sequence mode that follows. The
//! rules are shared with `walcast check`: JetStream when asked for or available;
//! tracked sequences need it, unless the operator accepts volatile ones or puts the
//! tables in column mode.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, Context};

use super::{CoreSink, FastBatchSink, JetStreamSink, NatsState, Sink, SinkError, SinkSettings};
use crate::client::{redact_url, NatsAuth};
use crate::envelope::sequence::SequenceMode;
use crate::ops::metrics::Metrics;
use crate::state::{self, StateStore, StreamSettings};

/// `--delivery`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Delivery {
    Auto,
    Jetstream,
    Core,
}

/// How envelopes are published to JetStream (`--publish-mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PublishMode {
    /// Fast-ingest batches when the server and the stream take them (nats-server
    /// 2.14+, `allow_batched`), else per message.
    Batched,
    /// One PubAck per message.
    PerMessage,
}

/// How to reach NATS.
#[derive(Debug, Clone)]
pub struct NatsSettings {
    /// The server URL(s), comma-separated (may hold credentials: shown redacted).
    pub url: String,
    pub auth: NatsAuth,
    pub connect_timeout: Duration,
}

/// How the sink delivers (`config/` builds it from the flags).
#[derive(Debug, Clone)]
pub struct DeliverySettings {
    pub delivery: Delivery,
    pub publish_mode: PublishMode,
    /// Without JetStream, sequences from memory (`--volatile-sequences`).
    pub volatile_sequences: bool,
    /// What every publisher is handed.
    pub sink: SinkSettings,
    /// The envelope subjects' prefix (checked against walcast's publish permissions).
    pub subject_prefix: String,
    pub stream: StreamSettings,
}

/// The sink chosen, the state store (JetStream only) and the sequence mode of tables
/// without a sequence column.
pub struct Delivered {
    pub sink: Sink,
    pub store: Option<StateStore>,
    pub mode: SequenceMode,
}

/// The delivery used with a server that has (or lacks) JetStream; `Err` explains why
/// the requested one is impossible.
pub fn choose_delivery(requested: Delivery, has_jetstream: bool) -> Result<Delivery, String> {
    match (requested, has_jetstream) {
        (Delivery::Auto | Delivery::Jetstream, true) => Ok(Delivery::Jetstream),
        (Delivery::Auto, false) | (Delivery::Core, _) => Ok(Delivery::Core),
        (Delivery::Jetstream, false) => Err(
            "--delivery jetstream, but the NATS server has no JetStream (start nats-server with -js)"
                .into(),
        ),
    }
}

/// The sequence mode of tables without a sequence column (`tracked`); `Err` names
/// the tables that would lose durable sequences and the ways out.
pub fn default_sequence_mode(
    delivery: Delivery,
    has_jetstream: bool,
    volatile_sequences: bool,
    tracked: &[&String],
) -> Result<SequenceMode, String> {
    match delivery {
        Delivery::Jetstream => Ok(SequenceMode::Tracked),
        _ if volatile_sequences || tracked.is_empty() => Ok(SequenceMode::Volatile),
        _ => Err(format!(
            "NATS {} JetStream, so walcast cannot keep the sequences of {} durable: enable JetStream (nats-server -js), put the tables in column mode (--column-sequence schema.table=column, see sql/sequence_column.sql), or accept sequences that restart on every start (--volatile-sequences)",
            if has_jetstream { "is used without" } else { "has no" },
            tracked.iter().map(|t| t.as_str()).collect::<Vec<_>>().join(", ")
        )),
    }
}

/// `--delete-ttl` needs JetStream (it is the stream that keeps deletes) and
/// per-message TTLs (nats-server 2.11+).
pub fn delete_ttl_possible(delivery: Delivery, server_version: &str) -> Result<(), String> {
    if delivery != Delivery::Jetstream {
        return Err(
            "--delete-ttl: refused on core NATS, where no stream keeps deletes (nothing to expire)"
                .into(),
        );
    }
    if !crate::state::server_has_message_ttl(server_version) {
        return Err(format!(
            "--delete-ttl needs per-message TTLs, which nats-server {server_version} lacks (2.11+)"
        ));
    }
    Ok(())
}

/// Choose the delivery for this server and build its sink (and, with JetStream, the
/// streams and the state store). `tracked`: the tables whose sequence walcast assigns.
pub async fn build(
    settings: &DeliverySettings,
    nats: &NatsSettings,
    tracked: &[&String],
    (client, nats_state): (async_nats::Client, Arc<NatsState>),
    metrics: &Arc<Metrics>,
) -> Result<Delivered, SinkError> {
    let has_jetstream = client.server_info().jetstream;
    let shown = redact_url(&nats.url);
    let delivery = choose_delivery(settings.delivery, has_jetstream)
        .map_err(|e| SinkError::Delivery(format!("NATS at {shown}: {e}")))?;
    let mode = default_sequence_mode(
        delivery,
        has_jetstream,
        settings.volatile_sequences,
        tracked,
    )
    .map_err(|e| SinkError::Delivery(format!("{e} (NATS at {shown})")))?;
    if settings.stream.message_ttl {
        delete_ttl_possible(delivery, &client.server_info().version)
            .map_err(|e| SinkError::Delivery(format!("{e} (NATS at {shown})")))?;
    }
    tracing::info!(delivery = ?delivery, sequences = ?mode, "delivery chosen");
    if delivery != Delivery::Jetstream {
        let sink = CoreSink::new(client, &settings.sink, metrics.clone()).await?;
        return Ok(Delivered {
            sink: Sink::Core(sink),
            store: None,
            mode,
        });
    }
    let (sink, store) = build_jetstream(settings, client, &nats_state, metrics).await?;
    Ok(Delivered {
        sink,
        store: Some(store),
        mode,
    })
}

/// The JetStream context, walcast's streams, the permission check, and the publisher
/// the stream allows (fast-ingest batches, else one PubAck per message).
async fn build_jetstream(
    settings: &DeliverySettings,
    client: async_nats::Client,
    nats_state: &NatsState,
    metrics: &Arc<Metrics>,
) -> Result<(Sink, StateStore), SinkError> {
    let context: Context = jetstream::ContextBuilder::new()
        .ack_timeout(settings.sink.confirm_timeout)
        // The sink bounds what is in flight itself (checked before each batch); the
        // client's own limit must never be the one that blocks, or a publish would
        // wait for acks nobody polls.
        .max_ack_inflight(settings.sink.max_unconfirmed.saturating_add(1 << 20))
        .backpressure_on_inflight(true)
        .build(client);
    let stream = state::ensure_stream(&context, &settings.stream).await?;
    let meta = state::ensure_meta_stream(&context, &settings.stream).await?;
    super::check_publish_permission(&context.client(), &settings.subject_prefix, nats_state)
        .await?;
    let batched = settings.publish_mode == PublishMode::Batched && state::takes_batches(&stream);
    tracing::info!(
        publish = if batched {
            "fast-ingest batches"
        } else {
            "one PubAck per message"
        },
        "JetStream publishing"
    );
    let store = StateStore::new(context.clone(), stream, meta, &settings.stream);
    let sink = if batched {
        Sink::FastBatch(FastBatchSink::new(
            context.client(),
            store.clone(),
            &settings.sink,
            metrics.clone(),
        ))
    } else {
        Sink::JetStream(JetStreamSink::new(
            context,
            store.clone(),
            &settings.sink,
            metrics.clone(),
        ))
    };
    Ok((sink, store))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracked_tables_need_jetstream_unless_volatile() {
        let tables = ["public.a".to_string()];
        let tracked: Vec<&String> = tables.iter().collect();
        let err = default_sequence_mode(Delivery::Core, false, false, &tracked).unwrap_err();
        assert!(err.contains("public.a"), "{err}");
        assert_eq!(
            default_sequence_mode(Delivery::Core, false, true, &tracked),
            Ok(SequenceMode::Volatile)
        );
        assert_eq!(
            default_sequence_mode(Delivery::Core, true, false, &[]),
            Ok(SequenceMode::Volatile)
        );
        assert_eq!(
            default_sequence_mode(Delivery::Jetstream, true, false, &tracked),
            Ok(SequenceMode::Tracked)
        );
        assert_eq!(choose_delivery(Delivery::Auto, false), Ok(Delivery::Core));
        assert_eq!(
            choose_delivery(Delivery::Auto, true),
            Ok(Delivery::Jetstream)
        );
        assert!(choose_delivery(Delivery::Jetstream, false).is_err());
    }
}
