//! The flags resolved once into per-stage settings: each stage is handed its own
//! struct and never sees [`RunConfig`]. `walcast run`, `check` and `teardown` all
//! start here.

use std::net::SocketAddr;

use super::tables::table_settings;
use super::RunConfig;
use crate::envelope::EnvelopeSettings;
use crate::pipeline::snapshot::SnapshotSettings;
use crate::pipeline::ReaderSettings;
use crate::sink::delivery::{DeliverySettings, NatsSettings};
use crate::sink::sync::FlushSettings;
use crate::sink::SinkSettings;
use crate::source::{ConnectParams, SourceError, SourceSettings};
use crate::state::StreamSettings;
use crate::wire::seal::Keyring;

/// Every stage's settings, resolved from `walcast run`'s flags.
#[derive(Debug, Clone)]
pub struct RunSettings {
    pub source: SourceSettings,
    pub nats: NatsSettings,
    pub delivery: DeliverySettings,
    /// With the per-table settings, built once.
    pub envelope: EnvelopeSettings,
    pub reader: ReaderSettings,
    /// The flush horizon (`--flush-delay`, `--nats-monitor-url`).
    pub flush: FlushSettings,
    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    pub metrics_addr: SocketAddr,
}

impl RunConfig {
    /// Resolve the flags into each stage's settings (the PostgreSQL URL parsed once).
    pub fn resolve(&self) -> Result<RunSettings, SourceError> {
        let keys = self.encryption_keys()?.map(std::sync::Arc::new);
        Ok(RunSettings {
            source: self.source_settings()?,
            nats: NatsSettings {
                url: self.nats.url.clone(),
                auth: self.nats.auth(),
                connect_timeout: self.connect_timeout,
            },
            delivery: DeliverySettings {
                delivery: self.delivery,
                publish_mode: self.publish_mode,
                volatile_sequences: self.volatile_sequences,
                sink: SinkSettings {
                    max_unconfirmed: self.max_inflight,
                    confirm_timeout: self.confirm_timeout,
                },
                subject_prefix: self.subject_prefix.clone(),
                stream: StreamSettings {
                    keys: keys.clone(),
                    ..self.stream_settings()
                },
            },
            envelope: EnvelopeSettings {
                subject_prefix: self.subject_prefix.clone(),
                key_cache: self.key_cache,
                toast_cache_bytes: self.toast_cache_bytes,
                oversize: self.oversize,
                tables: table_settings(self),
                stream_window: !self.stream_max_age.is_zero() || self.stream_max_bytes > 0,
                keys,
            },
            reader: ReaderSettings {
                publish_linger: self.publish_linger,
                shutdown_timeout: self.shutdown_timeout,
                stream_memory: self.stream_memory.saturating_mul(1 << 20),
                stream_spill_dir: self
                    .stream_spill_dir
                    .clone()
                    .unwrap_or_else(std::env::temp_dir),
                progress_interval: self.progress_interval,
                // Resolved at start (`sink::sync::resolve`), from `flush`.
                flush_delay: std::time::Duration::ZERO,
                snapshot: SnapshotSettings {
                    mode: self.snapshot,
                    chunk_rows: self.snapshot_chunk_rows as usize,
                },
            },
            flush: FlushSettings {
                delay: self.flush_delay,
                monitor_url: self.nats_monitor_url.clone(),
            },
            metrics_addr: self.metrics_addr,
        })
    }

    /// The source's settings (the PostgreSQL URL parsed).
    pub fn source_settings(&self) -> Result<SourceSettings, SourceError> {
        Ok(SourceSettings {
            params: ConnectParams::parse(
                &self.postgres_url,
                self.postgres_password_file.as_deref(),
            )?,
            publication: self.publication.clone(),
            slot: self.slot.clone(),
            connect_timeout: self.connect_timeout,
            status_interval: self.status_interval,
            recreate_slot: self.recreate_slot,
            streaming: self.stream_large_transactions,
            failover_slot: self.failover_slot,
            heartbeat_interval: self.heartbeat_interval,
        })
    }

    /// The encryption key ring (`--encryption-keys-file` or `--encryption-keys`);
    /// `None` when neither is given. An error names the line, never a key.
    pub fn encryption_keys(&self) -> Result<Option<Keyring>, SourceError> {
        self.keyring.keys().map_err(SourceError::Config)
    }

    /// The JetStream streams walcast keeps.
    pub fn stream_settings(&self) -> StreamSettings {
        StreamSettings {
            name: self.stream_name(),
            prefix: self.subject_prefix.clone(),
            history: self.stream_history,
            max_age: self.stream_max_age,
            max_bytes: self.stream_max_bytes,
            tracked: !self.volatile_sequences,
            column_tables: table_settings(self)
                .into_iter()
                .filter(|(_, t)| t.sequence_column.is_some())
                .map(|(name, _)| name)
                .collect(),
            duplicate_window: self.duplicate_window,
            message_ttl: !self.delete_ttls.is_empty(),
            replicas: usize::from(self.stream_replicas),
            placement_cluster: self.stream_cluster.clone(),
            placement_tags: self.stream_tags.clone(),
            compression: self.stream_compression == super::StreamCompression::S2,
            keys: None,
        }
    }

    /// The stream's name: `--stream`, else derived from the subject prefix.
    fn stream_name(&self) -> String {
        self.stream.clone().unwrap_or_else(|| {
            self.subject_prefix
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() {
                        c.to_ascii_uppercase()
                    } else {
                        '_'
                    }
                })
                .collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Cli, Command};
    use clap::Parser;

    fn run(args: &[&str]) -> super::RunConfig {
        let mut all = vec![
            "walcast",
            "run",
            "--postgres-url",
            "postgres://u:secret@h/db",
        ];
        all.extend_from_slice(args);
        match Cli::try_parse_from(all).unwrap().command {
            Command::Run(run) => run,
            _ => panic!("not run"),
        }
    }

    #[test]
    fn each_stage_gets_its_flags() {
        let s = run(&[
            "--subject-prefix",
            "cdc.prod",
            "--max-inflight",
            "77",
            "--snapshot-chunk-rows",
            "5",
            "--oversize",
            "marker",
        ])
        .resolve()
        .unwrap();
        assert_eq!(s.delivery.stream.name, "CDC_PROD");
        assert_eq!(s.delivery.stream.prefix, "cdc.prod");
        assert_eq!(s.delivery.sink.max_unconfirmed, 77);
        assert_eq!(s.reader.snapshot.chunk_rows, 5);
        assert_eq!(s.envelope.oversize, crate::envelope::Oversize::Marker);
        assert_eq!(s.source.slot, "walcast");
        assert!(
            !format!("{:?}", s.source).contains("secret"),
            "{:?}",
            s.source
        );
        let named = run(&["--stream", "MINE"]).stream_settings();
        assert_eq!(named.name, "MINE");
    }

    #[test]
    fn a_bad_url_is_an_error_at_resolve() {
        assert!(run(&[]).resolve().is_ok());
        let mut bad = run(&[]);
        bad.postgres_url = "mysql://nope".into();
        assert!(bad.resolve().is_err());
    }
}
