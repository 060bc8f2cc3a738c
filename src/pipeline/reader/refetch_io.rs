//! The reader's side of refetch requests: read the key's row from the table and
//! build its envelope with the shape and schema version the stream published.

use super::ChangeReader;
use crate::pipeline::refetch::{RefetchAnswer, RefetchRequest};
use crate::pipeline::PipelineError;
use crate::source::chunks::TableInfo;
use crate::wire::key::parse_key;
use crate::wire::Timestamp;

impl ChangeReader {
    /// Answer one request (between transactions: the builder is not mid-change).
    pub(in crate::pipeline) async fn answer_refetch(&mut self, request: RefetchRequest) {
        let answer = match self.refetch_answer(&request.key).await {
            Ok(answer) => answer,
            Err(e) => {
                tracing::warn!(key = %request.key, error = %e, "refetch request failed");
                self.refetch_tables.clear();
                RefetchAnswer::Refused(e.to_string())
            }
        };
        let _ = request.reply.send(answer);
    }

    async fn refetch_answer(&mut self, key: &str) -> Result<RefetchAnswer, PipelineError> {
        let refuse = |why: String| Ok(RefetchAnswer::Refused(why));
        let Ok(parsed) = parse_key(key) else {
            return refuse(format!("{key:?} is not a walcast key"));
        };
        let qualified = format!("{}.{}", parsed.schema, parsed.table);
        if !self.tables.contains(&qualified) {
            return refuse(format!("{qualified} is not a published table"));
        }
        let info = self.refetch_table(&qualified).await?;
        if parsed.values.len() != info.key.len() {
            return refuse(format!(
                "{key:?} has {} key value(s); {qualified}'s key has {}",
                parsed.values.len(),
                info.key.len()
            ));
        }
        let Some(texts) = self.catalog.read_row(&info, &parsed.values).await? else {
            return Ok(RefetchAnswer::NotFound);
        };
        let row = super::snapshot_io::tuple(&texts);
        let envelope = self.builder.refetch_envelope(
            info.relation_id,
            &row,
            self.cp.received(),
            Timestamp::now(),
        )?;
        Ok(match envelope {
            Some(bytes) => RefetchAnswer::Envelope(bytes),
            None => RefetchAnswer::Refused(format!(
                "{qualified} is in tracked mode: its key's last envelope is the last message of the subject in walcast's stream"
            )),
        })
    }

    /// The table as the catalog describes it, known to the envelope stage.
    async fn refetch_table(&mut self, qualified: &str) -> Result<TableInfo, PipelineError> {
        if let Some(info) = self.refetch_tables.get(qualified) {
            return Ok(info.clone());
        }
        let info = self.catalog.table_info(qualified).await?;
        if !self.builder.knows_relation(info.relation_id) {
            self.register_relation(&info).await?;
        }
        self.refetch_tables
            .insert(qualified.to_string(), info.clone());
        Ok(info)
    }
}
