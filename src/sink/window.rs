//! The chain both JetStream publishers keep ([`super::fast_batch`], [`super::jetstream`]):
//! walcast is the stream's only writer, so every message names its predecessor's
//! stream sequence (`Nats-Expected-Last-Sequence`). While walcast's own publishes
//! follow each other that sequence is known; after a refusal, a duplicate, a timeout or
//! at start it is not, and the next message is chained after the stream's last
//! sequence, read from the stream.
//!
//! The chain also tells what to publish again after a failure: the stream holds
//! walcast's messages strictly in order, so of the messages not acknowledged it holds
//! a prefix (acknowledgements lost with a connection, messages flushed from the
//! client's buffer after a reconnect). [`stored_prefix`] finds how long it is, and
//! only the rest is published again: every attempt reaches plain subscribers, stored
//! or not.

use std::future::Future;

use super::Publish;
use crate::state::StateStore;

/// The stream sequence the next message is chained after, when known.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ExpectedSequence(Option<u64>);

impl ExpectedSequence {
    /// The stream sequence the next message expects as the stream's last: the one
    /// known, else the stream's last, asked for with `read_last` (only then called).
    pub(crate) async fn resolve<E, F, Fut>(&self, read_last: F) -> Result<u64, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<u64, E>>,
    {
        match self.0 {
            Some(expected) => Ok(expected),
            None => read_last().await,
        }
    }

    /// Messages were published in order up to stream sequence `last`: the next one is
    /// chained after it.
    pub(crate) fn chain_after(&mut self, last: u64) {
        self.0 = Some(last);
    }

    /// The chain is off (a message refused, a duplicate, a batch given up, a publish
    /// that failed): the next message is chained after the stream's last sequence.
    pub(crate) fn forget(&mut self) {
        self.0 = None;
    }
}

/// How many of `n` messages (the ones not acknowledged, in order) the stream holds
/// already: they are a prefix, so a binary search asks `is_stored` about
/// log2(n) + 1 of them. `None` (the stream could not be read) ends the search: what
/// is not known to be stored is published again.
pub(crate) async fn stored_prefix<F, Fut>(n: usize, mut is_stored: F) -> usize
where
    F: FnMut(usize) -> Fut,
    Fut: Future<Output = Option<bool>>,
{
    // Messages before `lo` are stored; from `hi` on they are not (or not known).
    let (mut lo, mut hi) = (0, n);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        match is_stored(mid).await {
            Some(true) => lo = mid + 1,
            Some(false) => hi = mid,
            None => break,
        }
    }
    lo
}

/// Whether the stream holds `item`: its subject's last message is this change or a
/// later one (by `Walcast-Position`); `None` when the stream cannot be read.
pub(crate) async fn is_stored(store: &StateStore, item: &Publish) -> Option<bool> {
    match store.load_key(item.subject.as_str()).await {
        Ok(Some((state, _))) => Some(state.position >= item.position),
        Ok(None) => Some(false),
        Err(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::{stored_prefix, ExpectedSequence};

    /// `resolve` with a stream whose last sequence is `last`, counting the reads.
    fn resolve(
        expected: &ExpectedSequence,
        last: Result<u64, &'static str>,
        reads: &Cell<u32>,
    ) -> Result<u64, &'static str> {
        futures::executor::block_on(expected.resolve(|| {
            reads.set(reads.get() + 1);
            std::future::ready(last)
        }))
    }

    #[test]
    fn unknown_at_start_reads_the_stream() {
        let reads = Cell::new(0);
        let expected = ExpectedSequence::default();
        assert_eq!(resolve(&expected, Ok(41), &reads), Ok(41));
        assert_eq!(reads.get(), 1);
        // Resolving does not remember: the publisher says how far it got.
        assert_eq!(resolve(&expected, Ok(42), &reads), Ok(42));
        assert_eq!(reads.get(), 2);
    }

    #[test]
    fn known_sequence_is_used_without_reading() {
        let reads = Cell::new(0);
        let mut expected = ExpectedSequence::default();
        expected.chain_after(7);
        assert_eq!(resolve(&expected, Ok(100), &reads), Ok(7));
        expected.chain_after(9);
        assert_eq!(resolve(&expected, Err("unreachable"), &reads), Ok(9));
        assert_eq!(reads.get(), 0);
    }

    #[test]
    fn forgotten_sequence_is_read_again() {
        let reads = Cell::new(0);
        let mut expected = ExpectedSequence::default();
        expected.chain_after(7);
        expected.forget();
        assert_eq!(expected, ExpectedSequence::default());
        assert_eq!(resolve(&expected, Ok(12), &reads), Ok(12));
        assert_eq!(reads.get(), 1);
    }

    #[test]
    fn a_failed_read_is_reported_and_leaves_it_unknown() {
        let reads = Cell::new(0);
        let expected = ExpectedSequence::default();
        assert_eq!(
            resolve(&expected, Err("stream gone"), &reads),
            Err("stream gone")
        );
        assert_eq!(expected, ExpectedSequence::default());
        assert_eq!(resolve(&expected, Ok(3), &reads), Ok(3));
        assert_eq!(reads.get(), 2);
    }

    /// `stored_prefix` over `n` messages of which the stream holds `held`; `broken`:
    /// the stream cannot be read from that message on. Returns (found, questions).
    fn prefix(n: usize, held: usize, broken: Option<usize>) -> (usize, usize) {
        let asked = Cell::new(0);
        let found = futures::executor::block_on(stored_prefix(n, |i| {
            asked.set(asked.get() + 1);
            assert!(i < n, "asked about message {i} of {n}");
            let answer = match broken {
                Some(b) if i >= b => None,
                _ => Some(i < held),
            };
            std::future::ready(answer)
        }));
        (found, asked.get())
    }

    #[test]
    fn the_stored_prefix_is_found_with_few_questions() {
        assert_eq!(prefix(0, 0, None), (0, 0));
        for n in [1, 2, 3, 10, 500, 10_000] {
            for held in [0, 1, n / 2, n - 1, n] {
                let (found, asked) = prefix(n, held, None);
                assert_eq!(found, held, "{held} of {n} stored");
                let bound = (usize::BITS - n.leading_zeros()) as usize + 1;
                assert!(asked <= bound, "{asked} questions for {n} messages");
            }
        }
    }

    #[test]
    fn an_unreadable_stream_republishes_what_is_not_known_stored() {
        // Never more than what is stored; exactly what was established before.
        for broken in [0, 1, 5, 9] {
            let (found, _) = prefix(10, 7, Some(broken));
            assert!(found <= broken.min(7), "unreadable from {broken}: {found}");
        }
        assert_eq!(prefix(10, 7, Some(0)).0, 0);
    }
}
