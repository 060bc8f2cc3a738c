//! The per-message publisher's state on constructed PubAcks: acknowledgements in any
//! order, duplicates, refusals and timeouts, the in-flight bound, and what goes again
//! after a failure.

use async_nats::jetstream::publish::PublishAck;
use async_nats::Subject;
use bytes::Bytes;

use super::*;
use crate::ops::metrics::Metrics;
use crate::sink::{Publish, SinkBatch};
use crate::wire::{Lsn, Position};

fn batch(n: u32, commit: Option<u64>) -> SinkBatch {
    SinkBatch {
        items: (0..n)
            .map(|i| Publish {
                subject: Subject::from(format!("walcast.public.t.{i}")),
                payload: Bytes::from_static(b"\x80"),
                msg_id: format!("public.t:{i}:1"),
                position: Position {
                    commit_lsn: Lsn(100),
                    ordinal: i,
                },
                ttl: None,
            })
            .collect(),
        commit_end: commit.map(Lsn),
        commit_times: vec![],
    }
}

/// A PubAck as the server sends it.
fn pub_ack(json: &str) -> Outcome {
    let ack: PublishAck = serde_json::from_str(json).unwrap();
    Outcome::of(Ok::<_, String>(ack))
}

fn stored(sequence: u64) -> Outcome {
    pub_ack(&format!(r#"{{"stream":"WALCAST","seq":{sequence}}}"#))
}

/// Publish everything `next_to_send` allows with `room`; the slots sent.
fn pump(p: &mut Pending, room: usize) -> Vec<Slot> {
    let mut sent = vec![];
    while let Some(slot) = p.next_to_send(room) {
        p.sent(slot);
        sent.push(slot);
    }
    sent
}

#[test]
fn pubacks_are_read_with_and_without_a_duplicate_flag() {
    assert_eq!(
        stored(12),
        Outcome::Stored {
            sequence: 12,
            duplicate: false
        }
    );
    let dup = pub_ack(r#"{"stream":"WALCAST","seq":7,"duplicate":true}"#);
    assert_eq!(
        dup,
        Outcome::Stored {
            sequence: 7,
            duplicate: true
        }
    );
    let timeout = Outcome::of(Err::<PublishAck, _>(
        "timed out: didn't receive ack in time",
    ));
    assert!(matches!(timeout, Outcome::Refused(why) if why.contains("timed out")));
}

#[test]
fn batches_are_confirmed_once_every_message_is_acknowledged_in_any_order() {
    let mut p = Pending::default();
    p.push(batch(3, None));
    p.push(batch(0, Some(50)));
    p.push(batch(2, Some(60)));
    assert_eq!(pump(&mut p, 10), [(0, 0), (0, 1), (0, 2), (2, 0), (2, 1)]);
    let m = Metrics::new();
    assert_eq!(p.on_ack((0, 1), stored(11)), Some(11));
    assert_eq!(p.on_ack((0, 2), stored(12)), Some(12));
    assert!(p.take_confirmed(&m).is_empty());
    assert_eq!(p.on_ack((0, 0), stored(10)), Some(10));
    let done = p.take_confirmed(&m);
    assert_eq!(done.len(), 2, "the empty batch goes with the one before");
    assert_eq!(done[1].commit_end, Some(Lsn(50)));
    p.on_ack((2, 0), stored(13));
    p.on_ack((2, 1), stored(14));
    assert_eq!(p.take_confirmed(&m).len(), 1);
    assert!(p.is_empty() && p.unacked == 0 && p.failure.is_none());
    // A late answer for a confirmed batch changes nothing.
    assert_eq!(p.on_ack((0, 0), stored(10)), None);
}

#[test]
fn at_most_room_messages_wait_for_their_pubacks() {
    let mut p = Pending::default();
    p.push(batch(5, Some(10)));
    assert_eq!(pump(&mut p, 2), [(0, 0), (0, 1)]);
    p.on_ack((0, 0), stored(1));
    assert_eq!(pump(&mut p, 2), [(0, 2)]);
    assert_eq!(p.unacked, 4);
}

#[test]
fn a_duplicate_is_acknowledged_and_breaks_the_chain() {
    let mut p = Pending::default();
    p.push(batch(2, None));
    pump(&mut p, 10);
    p.expected.chain_after(40);
    let dup = pub_ack(r#"{"stream":"WALCAST","seq":7,"duplicate":true}"#);
    assert_eq!(p.on_ack((0, 0), dup), None);
    assert_eq!(p.state((0, 0)), Some(State::Acked));
    assert_eq!(p.failure.as_deref(), Some("duplicate"));
    assert_eq!(p.expected, ExpectedSequence::default());
    assert_eq!(
        p.next_to_send(10),
        None,
        "nothing new while the failure waits"
    );
}

#[test]
fn a_refusal_or_a_timeout_leaves_the_message_to_publish_again() {
    let mut p = Pending::default();
    p.push(batch(3, None));
    pump(&mut p, 10);
    let refused = Outcome::Refused("wrong last sequence: 3995".into());
    assert_eq!(p.on_ack((0, 1), refused), None);
    assert_eq!(p.state((0, 1)), Some(State::Unsent));
    assert_eq!(p.failure.as_deref(), Some("wrong last sequence: 3995"));
    assert_eq!(p.unacked, 3);
}

#[test]
fn after_a_failure_only_what_is_not_stored_goes_again_its_first_message_alone() {
    let mut p = Pending::default();
    p.push(batch(4, None));
    p.push(batch(3, Some(9)));
    pump(&mut p, 100);
    p.on_ack((0, 0), stored(21));
    for slot in [(0, 1), (0, 2), (0, 3), (1, 0), (1, 1), (1, 2)] {
        p.on_ack(slot, Outcome::Refused("timed out".into()));
    }
    assert_eq!(p.unacked_slots().count(), 6);
    // The stream holds three of them (their PubAcks were lost); its last is 24.
    p.restart(3, 24);
    assert_eq!((p.unacked, p.failure.is_none()), (3, true));
    assert_eq!(p.state((0, 3)), Some(State::Acked));
    assert_eq!(pump(&mut p, 100), [(1, 0)], "the probe alone");
    assert_eq!(pump(&mut p, 100), [], "until it is stored");
    p.on_ack((1, 0), stored(25));
    assert_eq!(pump(&mut p, 100), [(1, 1), (1, 2)]);
    let read = futures::executor::block_on(p.expected.resolve(|| async { Err::<u64, ()>(()) }));
    assert_eq!(read, Ok(24), "chained after the stream's last sequence");
    // Everything stored: the next message received goes alone first.
    let mut q = Pending::default();
    q.push(batch(1, None));
    pump(&mut q, 10);
    q.on_ack((0, 0), Outcome::Refused("timed out".into()));
    q.restart(1, 30);
    q.push(batch(2, None));
    assert_eq!(pump(&mut q, 10), [(1, 0)]);
    assert_eq!(q.take_confirmed(&Metrics::new()).len(), 1);
}
