//! The chain both JetStream publishers keep ([`super::fast_batch`], [`super::jetstream`]):
//! walcast is the stream's only writer, so every message names its predecessor's
//! stream sequence (`Nats-Expected-Last-Sequence`). While walcast's own publishes
//! follow each other that sequence is known; after a refusal, a duplicate, a timeout or
//! at start it is not, and the next message is chained after the stream's last
//! sequence, read from the stream.

use std::future::Future;

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

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::ExpectedSequence;

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
}
