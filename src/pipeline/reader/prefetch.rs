//! Loading ahead: before a read is worked through, the key states (tracked mode)
//! that the changes already in the read buffer will ask for are loaded together, in
//! batched gets, instead of one blocking round trip per key; their last envelopes are
//! kept for the unchanged-TOAST values of those keys. Only done while misses happen
//! (a warm cache costs no second look at the buffer).

use std::collections::HashSet;

use super::envelopes::Envelopes;
use super::ChangeReader;
use crate::decode::pgoutput::{self, PgOutput};
use crate::pipeline::PipelineError;
use crate::source::{ReplicationEvent, ReplicationStream};
use crate::wire::Op;

/// Keys loaded ahead per read at the most (their last envelopes are held meanwhile).
const AHEAD_MAX: usize = 4096;

/// The unseen keys found ahead, with their subjects, in the order first seen.
pub(super) struct Wanted {
    limit: usize,
    seen: HashSet<String>,
    pub(super) keys: Vec<(String, String)>,
}

impl Wanted {
    fn new(limit: usize) -> Self {
        Wanted {
            limit,
            seen: HashSet::new(),
            keys: Vec::new(),
        }
    }

    fn full(&self) -> bool {
        self.keys.len() >= self.limit
    }

    fn add(&mut self, key: String, subject: String) {
        if !self.full() && self.seen.insert(key.clone()) {
            self.keys.push((key, subject));
        }
    }
}

impl ChangeReader {
    /// Load the states of the keys that the first event (if any) and the rest of the
    /// read buffer will ask for, when unseen keys were met lately; remember how many
    /// messages that covered, so the next look comes when they are worked through.
    pub(super) async fn load_ahead(
        &mut self,
        first: Option<&ReplicationEvent>,
        stream: &ReplicationStream,
    ) -> Result<(), PipelineError> {
        if self.envelopes.store.is_none() || !self.envelopes.take_missed() {
            return Ok(());
        }
        let room = self.envelopes.builder.lookahead_room().min(AHEAD_MAX);
        let mut wanted = Wanted::new(room);
        let first = match first {
            Some(ReplicationEvent::XLogData { data, .. }) => Some(&data[..]),
            _ => None,
        };
        let mut covered = 0;
        for data in first.into_iter().chain(stream.buffered_messages()) {
            if wanted.full() {
                break;
            }
            look_at(&self.envelopes, data, &mut wanted);
            covered += 1;
        }
        self.ahead_left = covered;
        self.envelopes.load_keys(wanted).await
    }

    /// A message was worked through: when the looked-at ones are done, look again.
    pub(super) async fn load_ahead_when_due(
        &mut self,
        stream: &ReplicationStream,
    ) -> Result<(), PipelineError> {
        if self.ahead_left > 0 {
            self.ahead_left -= 1;
            return Ok(());
        }
        self.load_ahead(None, stream).await
    }
}

/// The unseen keys of one pgoutput message (changes of relations described so far).
fn look_at(envelopes: &Envelopes, data: &[u8], wanted: &mut Wanted) {
    let Ok(msg) = pgoutput::parse(data) else {
        return; // reported when the message is worked through
    };
    let mut found = |key, subject| wanted.add(key, subject);
    let builder = &envelopes.builder;
    match msg {
        PgOutput::Insert { relation_id, new } => {
            builder.unseen_keys(relation_id, Op::Insert, None, Some(&new), &mut found)
        }
        PgOutput::Update {
            relation_id,
            old,
            new,
        } => builder.unseen_keys(
            relation_id,
            Op::Update,
            old.as_ref(),
            Some(&new),
            &mut found,
        ),
        PgOutput::Delete { relation_id, old } => {
            builder.unseen_keys(relation_id, Op::Delete, Some(&old), None, &mut found)
        }
        _ => {}
    }
}
