//! The publication as it is now: every few seconds (sooner when a table walcast does
//! not know streams, and before a re-snapshot request is answered) its tables are read
//! again. A table added is snapshotted (its rows existed before it was published, and
//! after `publish_via_partition_root` a partitioned table's rows move to its root's
//! keys); a table dropped is forgotten, by the answers to requests and by `/readyz`.

use std::time::{Duration, Instant};

use super::ChangeReader;
use crate::pipeline::snapshot::SnapshotMode;
use crate::pipeline::PipelineError;

/// How often the publication's tables are read again.
const REFRESH_EVERY: Duration = Duration::from_secs(10);

/// When the publication was last read, and whether it is to be read now.
pub(super) struct PublicationWatch {
    last: Instant,
    pub(super) due: bool,
}

impl Default for PublicationWatch {
    fn default() -> Self {
        PublicationWatch {
            last: Instant::now(),
            due: false,
        }
    }
}

impl ChangeReader {
    /// Read the publication again when it is time.
    pub(super) async fn refresh_tables_if_due(&mut self) -> Result<(), PipelineError> {
        if self.publication.due || self.publication.last.elapsed() >= REFRESH_EVERY {
            self.refresh_tables().await?;
        }
        Ok(())
    }

    /// Read the publication's tables; snapshot the keyed ones added, forget the ones
    /// dropped.
    pub(super) async fn refresh_tables(&mut self) -> Result<(), PipelineError> {
        self.publication = PublicationWatch::default();
        let facts = self
            .envelopes
            .catalog
            .publication_tables(&self.source.publication)
            .await?;
        let now: Vec<String> = facts.iter().map(|t| t.name.clone()).collect();
        // Also a table added and dropped again between two reads.
        self.metrics
            .forget_degraded_unless(|table| now.iter().any(|t| t == table));
        if now == self.tables {
            return Ok(());
        }
        let added: Vec<String> = now
            .iter()
            .filter(|t| !self.tables.contains(t))
            .cloned()
            .collect();
        let removed: Vec<&String> = self.tables.iter().filter(|t| !now.contains(t)).collect();
        tracing::info!(?added, ?removed, "the publication changed");
        self.tables = now;
        let keyed: Vec<String> = facts
            .iter()
            .filter(|t| t.is_keyed() && added.contains(&t.name))
            .map(|t| t.name.clone())
            .collect();
        if !keyed.is_empty() && self.settings.snapshot.mode != SnapshotMode::Never {
            let store = self.envelopes.store.as_ref();
            let queued = self.snapshot.queue(&keyed, store).await?;
            tracing::info!(
                ?queued,
                "tables added to the publication: their rows are snapshotted"
            );
            self.snapshot.show();
        }
        Ok(())
    }
}
