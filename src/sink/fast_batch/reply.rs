//! The server's replies on a fast batch's inbox, parsed without policy: a flow
//! acknowledgement (`{"type":"ack","seq":N}`: batch messages up to N stored), a gap or
//! an error (`{"type":"gap"|"err",…}`: the batch ends there), and the PubAck that ends
//! every batch (with the batch's `count`, or a plain PubAck when its first message
//! committed it).

use serde::Deserialize;

/// A reply on the batch inbox: flow ack, gap, error, or the final PubAck.
#[derive(Debug, Deserialize)]
pub(super) struct Reply {
    #[serde(rename = "type")]
    pub(super) kind: Option<String>,
    /// A flow ack's or refusal's batch sequence; a PubAck's stream sequence.
    pub(super) seq: Option<u64>,
    /// A gap's first missing batch sequence.
    last_seq: Option<u64>,
    count: Option<u64>,
    #[serde(default)]
    pub(super) duplicate: bool,
    pub(super) error: Option<ApiError>,
}

#[derive(Debug, Deserialize)]
pub(super) struct ApiError {
    #[serde(default)]
    pub(super) err_code: u64,
    #[serde(default)]
    pub(super) description: String,
}

impl Reply {
    pub(super) fn parse(payload: &[u8]) -> Result<Reply, serde_json::Error> {
        serde_json::from_slice(payload)
    }

    /// The batch messages stored, as a flow ack or the batch's PubAck names them
    /// (`count`; a batch committed by its first message gets a plain PubAck: its
    /// stream sequence tells, the chain fixing every message's sequence).
    pub(super) fn stored(&self, chain_start: u64) -> Option<u64> {
        match (self.kind.as_deref(), &self.error) {
            (Some("ack"), _) => self.seq,
            (None, None) => self
                .count
                .or_else(|| self.seq.map(|s| s.saturating_sub(chain_start))),
            _ => None,
        }
    }

    /// A refusal of kind `kind` (a `gap`, or another): the batch messages before the
    /// refused one, and why. Every message before it is in the stream: stored now, or
    /// skipped as a duplicate of one stored before (which the PubAck's count does not
    /// include).
    pub(super) fn refusal(&self, kind: &str) -> (Option<u64>, String) {
        let before = match kind {
            "gap" => self.last_seq.map(|e| e.saturating_sub(1)),
            _ => self.seq.map(|n| n.saturating_sub(1)),
        };
        let detail = self.error.as_ref().map_or_else(String::new, |e| {
            format!(": {} ({})", e.description, e.err_code)
        });
        let seq = self.seq.unwrap_or(0);
        (before, format!("{kind} at batch sequence {seq}{detail}"))
    }
}

#[cfg(test)]
mod tests {
    use super::Reply;

    fn reply(json: &str) -> Reply {
        Reply::parse(json.as_bytes()).unwrap_or_else(|e| panic!("{json}: {e}"))
    }

    #[test]
    fn flow_acks_name_the_batch_messages_stored() {
        let r = reply(r#"{"type":"ack","seq":500,"msgs":500}"#);
        assert_eq!(r.stored(41), Some(500));
        // The first message's flow-control settings: nothing stored yet.
        assert_eq!(
            reply(r#"{"type":"ack","seq":0,"msgs":500}"#).stored(41),
            Some(0)
        );
    }

    #[test]
    fn pubacks_with_and_without_a_count() {
        // The commit of a 1,024-message batch chained after stream sequence 100.
        let counted = reply(r#"{"stream":"WALCAST","seq":1124,"batch":"b1","count":1024}"#);
        assert_eq!(counted.stored(100), Some(1024));
        assert!(!counted.duplicate);
        // A batch committed by its first message: a plain PubAck.
        let plain = reply(r#"{"stream":"WALCAST","seq":101}"#);
        assert_eq!(plain.stored(100), Some(1));
        // After a refusal the PubAck counts what was stored before it.
        let partial = reply(r#"{"stream":"WALCAST","seq":121,"batch":"b1","count":21}"#);
        assert_eq!(partial.stored(100), Some(21));
    }

    #[test]
    fn a_duplicate_is_in_the_stream_and_says_so() {
        // nats-server's answer to a batch whose first message is a duplicate.
        let dup = reply(r#"{"stream":"WALCAST","seq":7,"duplicate": true,"batch":"b2","count":1}"#);
        assert!(dup.duplicate);
        assert_eq!(dup.stored(100), Some(1));
    }

    #[test]
    fn gaps_and_errors_end_the_batch_before_the_refused_message() {
        let gap = reply(r#"{"type":"gap","last_seq":37,"seq":40}"#);
        assert_eq!(gap.stored(0), None);
        let (before, why) = gap.refusal("gap");
        assert_eq!(before, Some(36));
        assert_eq!(why, "gap at batch sequence 40");
        let err = reply(
            r#"{"type":"err","seq":22,"error":{"code":400,"err_code":10071,"description":"wrong last sequence: 3995"}}"#,
        );
        assert_eq!(err.stored(0), None);
        let (before, why) = err.refusal("err");
        assert_eq!(before, Some(21));
        assert_eq!(
            why,
            "err at batch sequence 22: wrong last sequence: 3995 (10071)"
        );
    }

    #[test]
    fn a_refused_batch_stores_nothing() {
        let refused = reply(
            r#"{"stream":"WALCAST","error":{"code":400,"err_code":10205,"description":"batch publish unknown batch ID"}}"#,
        );
        assert_eq!(refused.stored(5), None);
        assert!(refused.kind.is_none() && refused.error.is_some());
        assert!(Reply::parse(b"not json").is_err());
    }
}
