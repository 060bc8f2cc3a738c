//! Reading walcast's envelopes: the messages of a subscription, each decoded once,
//! and walcast's JetStream stream, whose last message per key is the authoritative
//! snapshot a consumer refetches (and the state walcast itself reloads).

use async_nats::jetstream::message::StreamMessage;
use async_nats::jetstream::stream::DirectGetErrorKind;
use async_nats::Subject;
use bytes::Bytes;
use futures::{Stream, StreamExt};

use super::{ClientError, Envelope};
use crate::wire::key::{refetch_subject, subject_for_key, REFETCH_ERROR_HEADER, REFETCH_NOT_FOUND};
use crate::wire::seal::Keyring;
use crate::wire::{codec, DecodeEnvelopeError, Position, POSITION_HEADER};

/// A key's last envelope as the stream holds it.
#[derive(Debug, Clone)]
pub struct StoredEnvelope {
    pub envelope: Envelope,
    /// The `Walcast-Position` header (`None`: not published by walcast).
    pub position: Option<Position>,
    /// The message's sequence in the stream.
    pub stream_sequence: u64,
}

impl StoredEnvelope {
    /// Decode a message read from the stream (encrypted rows are an error: see
    /// [`StoredEnvelope::read_with`]).
    pub fn read(msg: StreamMessage) -> Result<Self, DecodeEnvelopeError> {
        Self::read_with(msg, None)
    }

    /// Decode a message read from the stream, opening encrypted rows with `keys`.
    pub fn read_with(
        msg: StreamMessage,
        keys: Option<&Keyring>,
    ) -> Result<Self, DecodeEnvelopeError> {
        Self::from_parts(&msg.payload, Some(&msg.headers), msg.sequence, keys)
    }

    /// Decode a stored message from its payload, headers and stream sequence, opening
    /// encrypted rows with `keys`.
    pub fn from_parts(
        payload: &[u8],
        headers: Option<&async_nats::HeaderMap>,
        stream_sequence: u64,
        keys: Option<&Keyring>,
    ) -> Result<Self, DecodeEnvelopeError> {
        Ok(StoredEnvelope {
            envelope: codec::decode_with(payload, keys)?,
            position: headers
                .and_then(|h| h.get(POSITION_HEADER))
                .and_then(|v| Position::from_header(v.as_str())),
            stream_sequence,
        })
    }
}

/// The last envelope of `key` in walcast's stream `stream` (subjects under
/// `prefix`); `None` when the key has none.
pub async fn last_envelope(
    js: &async_nats::jetstream::Context,
    stream: &str,
    prefix: &str,
    key: &str,
) -> Result<Option<StoredEnvelope>, ClientError> {
    last_envelope_with(js, stream, prefix, key, None).await
}

/// [`last_envelope`], opening an encrypted row with `keys`.
pub async fn last_envelope_with(
    js: &async_nats::jetstream::Context,
    stream: &str,
    prefix: &str,
    key: &str,
    keys: Option<&Keyring>,
) -> Result<Option<StoredEnvelope>, ClientError> {
    let subject = subject_for_key(prefix, key).map_err(|e| ClientError::Key(key.to_string(), e))?;
    let stream = js
        .get_stream(stream)
        .await
        .map_err(|e| ClientError::Refetch(e.to_string()))?;
    match stream.direct_get_last_for_subject(subject).await {
        Ok(msg) => StoredEnvelope::read_with(msg, keys)
            .map(Some)
            .map_err(|e| ClientError::Refetch(e.to_string())),
        Err(e) if e.kind() == DirectGetErrorKind::NotFound => Ok(None),
        Err(e) => Err(ClientError::Refetch(e.to_string())),
    }
}

/// A refetch from walcast's JetStream stream: the last envelope of `key`'s subject
/// (the authoritative snapshot walcast keeps).
pub async fn refetch_from_stream(
    js: &async_nats::jetstream::Context,
    stream: &str,
    prefix: &str,
    key: &str,
) -> Result<Envelope, ClientError> {
    refetch_from_stream_with(js, stream, prefix, key, None).await
}

/// [`refetch_from_stream`], opening an encrypted row with `keys`.
pub async fn refetch_from_stream_with(
    js: &async_nats::jetstream::Context,
    stream: &str,
    prefix: &str,
    key: &str,
    keys: Option<&Keyring>,
) -> Result<Envelope, ClientError> {
    last_envelope_with(js, stream, prefix, key, keys)
        .await?
        .map(|stored| stored.envelope)
        .ok_or_else(|| ClientError::NotFound(key.to_string()))
}

/// A refetch answered by walcast itself (tables in column mode, on core NATS or
/// JetStream): the row's current envelope, read from the table when asked. A key
/// without a row is [`ClientError::NotFound`].
pub async fn refetch_from_walcast(
    client: &async_nats::Client,
    prefix: &str,
    key: &str,
    timeout: std::time::Duration,
) -> Result<Envelope, ClientError> {
    refetch_from_walcast_with(client, prefix, key, timeout, None).await
}

/// [`refetch_from_walcast`], opening an encrypted row with `keys` (walcast seals its
/// answers as it seals the table's changes).
pub async fn refetch_from_walcast_with(
    client: &async_nats::Client,
    prefix: &str,
    key: &str,
    timeout: std::time::Duration,
    keys: Option<&Keyring>,
) -> Result<Envelope, ClientError> {
    let request = client.request(
        refetch_subject(prefix),
        Bytes::copy_from_slice(key.as_bytes()),
    );
    let reply = tokio::time::timeout(timeout, request)
        .await
        .map_err(|_| ClientError::Refetch(format!("no answer from walcast within {timeout:?}")))?
        .map_err(|e| ClientError::Refetch(format!("asking walcast: {e}")))?;
    let refused = reply
        .headers
        .as_ref()
        .and_then(|h| h.get(REFETCH_ERROR_HEADER))
        .map(|v| v.as_str().to_string());
    match refused {
        Some(why) if why == REFETCH_NOT_FOUND => Err(ClientError::NotFound(key.to_string())),
        Some(why) => Err(ClientError::Refetch(format!("walcast: {why}"))),
        None => codec::decode_with(&reply.payload, keys)
            .map_err(|e| ClientError::Refetch(e.to_string())),
    }
}

/// One message received on a walcast subject.
#[derive(Debug)]
pub struct Received {
    pub subject: Subject,
    /// The decoded envelope, or why the message is not one.
    pub envelope: Result<Envelope, DecodeEnvelopeError>,
    /// The bytes as published.
    pub payload: Bytes,
}

/// The messages of a NATS subscription on walcast subjects, each decoded once (every
/// message under walcast's prefix is an envelope; anything else shows as a decoding
/// error).
pub fn envelopes(sub: async_nats::Subscriber) -> impl Stream<Item = Received> + Send + Unpin {
    envelopes_with(sub, None)
}

/// [`envelopes`], opening encrypted rows with `keys` (without them, or with the wrong
/// ones, an encrypted envelope is a decoding error that says so).
pub fn envelopes_with(
    sub: async_nats::Subscriber,
    keys: Option<std::sync::Arc<Keyring>>,
) -> impl Stream<Item = Received> + Send + Unpin {
    sub.map(move |msg| Received {
        envelope: codec::decode_with(&msg.payload, keys.as_deref()),
        subject: msg.subject,
        payload: msg.payload,
    })
}
