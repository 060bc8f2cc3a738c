//! The fast-batch publisher's state on constructed server replies: flow acks, PubAcks
//! with and without a count, refusals, duplicates, the timeout, and what is sent next.

use std::time::{Duration, Instant};

use async_nats::Subject;
use bytes::Bytes;

use super::*;
use crate::ops::metrics::Metrics;
use crate::sink::{Publish, SinkBatch};
use crate::wire::{Lsn, Position};

const INBOX: &str = "_INBOX.test";

/// A flight whose open batch `id` holds the ordinals after `base`, `sent` of them
/// out, chained after stream sequence `chain_start`.
fn flight(id: &str, base: u64, sent: u64, chain_start: u64, ended: bool) -> Flight {
    let mut batch = OpenBatch::new(INBOX, id.into(), base, chain_start);
    batch.sent = sent;
    batch.ended = ended;
    Flight {
        sent: base + sent,
        acked: base,
        batch: Some(batch),
        last_reply: Some(Instant::now()),
        ..Flight::default()
    }
}

/// The server's reply to message `seq` of the open batch.
fn reply(f: &mut Flight, seq: u64, json: &str) -> Option<u64> {
    let subject = f.batch.as_ref().unwrap().reply_subject(seq, false);
    f.on_reply(&subject, json.as_bytes())
}

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

#[test]
fn flow_acks_acknowledge_what_is_stored_and_keep_the_batch_open() {
    let mut f = flight("b1", 1000, 700, 41, false);
    assert_eq!(
        reply(&mut f, 500, r#"{"type":"ack","seq":500,"msgs":500}"#),
        Some(541)
    );
    assert_eq!((f.acked, f.failure.as_deref()), (1500, None));
    assert!(!f.batch.as_ref().unwrap().ended);
    // An ack for more than was sent (a reply of an earlier attempt) counts what was.
    assert_eq!(reply(&mut f, 800, r#"{"type":"ack","seq":800}"#), Some(741));
    assert_eq!(f.acked, 1700);
}

#[test]
fn the_commit_pubacks_count_ends_the_batch() {
    let mut f = flight("b1", 0, 1024, 100, true);
    let ack = r#"{"stream":"WALCAST","seq":1124,"batch":"b1","count":1024}"#;
    assert_eq!(reply(&mut f, 1024, ack), Some(1124));
    assert_eq!((f.acked, f.failure.as_deref()), (1024, None));
    assert!(f.batch.as_ref().unwrap().ended && !f.failed());
}

#[test]
fn a_plain_pubacks_sequence_tells_for_a_batch_of_one() {
    let mut f = flight("b1", 9, 1, 100, true);
    assert_eq!(
        reply(&mut f, 1, r#"{"stream":"WALCAST","seq":101}"#),
        Some(101)
    );
    assert_eq!((f.acked, f.failure.as_deref()), (10, None));
}

#[test]
fn a_refusal_acknowledges_the_messages_before_it_and_fails() {
    // The burst was written out (its commit sent): the refusal fails it at once.
    let mut f = flight("b1", 0, 100, 3974, true);
    let err = r#"{"type":"err","seq":22,"error":{"code":400,"err_code":10071,"description":"wrong last sequence: 3995"}}"#;
    assert_eq!(reply(&mut f, 22, err), None);
    assert_eq!(f.acked, 21);
    assert!(f.failed());
    assert_eq!(
        f.failure.as_deref(),
        Some("err at batch sequence 22: wrong last sequence: 3995 (10071)")
    );
    // The PubAck that follows counts the same messages.
    let pub_ack = r#"{"stream":"WALCAST","seq":3995,"batch":"b1","count":21}"#;
    assert_eq!(reply(&mut f, 22, pub_ack), Some(3995));
    assert_eq!(f.acked, 21);
    // A gap: the messages before the first missing one are stored.
    let mut f = flight("b2", 50, 60, 10, false);
    reply(&mut f, 40, r#"{"type":"gap","last_seq":37,"seq":40}"#);
    assert_eq!(f.acked, 86);
    assert_eq!(f.failure.as_deref(), Some("gap at batch sequence 40"));
}

#[test]
fn a_duplicate_is_acknowledged_but_breaks_the_chain() {
    let mut f = flight("b1", 5, 1, 100, true);
    let dup = r#"{"stream":"WALCAST","seq":7,"duplicate": true,"batch":"b1","count":1}"#;
    assert_eq!(
        reply(&mut f, 1, dup),
        None,
        "nothing written by this attempt"
    );
    assert_eq!(f.acked, 6, "a duplicate is in the stream");
    assert!(f.failed());
}

#[test]
fn other_batches_and_unreadable_or_refused_replies() {
    let mut f = flight("b2", 0, 10, 0, false);
    let old = "_INBOX.test.b1.500.fail.3.1.$FI";
    assert_eq!(f.on_reply(old, br#"{"type":"ack","seq":3}"#), None);
    assert_eq!(
        (f.acked, f.failure.is_none()),
        (0, true),
        "a batch given up on"
    );
    reply(&mut f, 3, "{not json");
    assert!(f.failed());
    let mut f = flight("b3", 0, 10, 0, false);
    let unknown =
        r#"{"error":{"code":400,"err_code":10205,"description":"batch publish unknown batch ID"}}"#;
    reply(&mut f, 3, unknown);
    assert!(f.failed());
    assert_eq!(f.acked, 0);
    assert_eq!(
        f.failure.as_deref(),
        Some("batch publish unknown batch ID (10205)")
    );
}

#[test]
fn the_confirm_timeout_gives_the_batch_up_only_while_messages_wait() {
    let mut f = flight("b1", 0, 10, 0, true);
    f.check_timeout(Duration::from_secs(5));
    assert!(f.failure.is_none());
    f.last_reply = Instant::now().checked_sub(Duration::from_secs(6));
    f.check_timeout(Duration::from_secs(5));
    assert!(f.batch.is_none() && f.failed());
    assert_eq!(f.failure.as_deref(), Some("no acknowledgement within 5s"));
    // Everything answered: no timeout however long the silence.
    let mut f = flight("b1", 0, 10, 0, true);
    f.acked = 10;
    f.last_reply = Instant::now().checked_sub(Duration::from_secs(60));
    f.check_timeout(Duration::from_secs(5));
    assert!(f.failure.is_none());
}

#[test]
fn bursts_stay_within_the_window_and_a_failure_sends_nothing() {
    let f = Flight::default();
    assert_eq!(f.next_burst(0, 100), None);
    assert_eq!(f.next_burst(250, 100), Some((1, 100)));
    let f = Flight {
        sent: 100,
        acked: 60,
        ..Flight::default()
    };
    assert_eq!(f.next_burst(250, 100), Some((101, 160)));
    assert_eq!(f.next_burst(100, 100), None);
    let failing = Flight {
        failure: Some("x".into()),
        ..Flight::default()
    };
    assert_eq!(failing.next_burst(250, 100), None);
}

#[test]
fn after_a_failure_only_what_is_not_stored_goes_again_its_first_message_alone() {
    let mut f = flight("b1", 0, 2000, 500, true);
    f.acked = 300;
    f.failure = Some("no acknowledgement within 5s".into());
    // The stream holds 1,200 more (their acknowledgements were lost); its last
    // sequence is 2000.
    f.restart(1200, 2000);
    assert_eq!((f.acked, f.sent, f.failure.is_none()), (1500, 1500, true));
    assert!(f.batch.is_none());
    assert_eq!(
        f.next_burst(3000, 2000),
        Some((1501, 1501)),
        "the probe alone"
    );
    f.batch = Some(OpenBatch::new(INBOX, "p".into(), 1500, 2000));
    f.sent_one(1501, true);
    assert_eq!(f.next_burst(3000, 2000), None, "until it is stored");
    assert_eq!(
        reply(&mut f, 1, r#"{"stream":"WALCAST","seq":2001}"#),
        Some(2001)
    );
    assert_eq!(f.acked, 1501);
    assert_eq!(f.next_burst(3000, 2000), Some((1502, 3000)));
    let read = futures::executor::block_on(f.expected.resolve(|| async { Err::<u64, ()>(()) }));
    assert_eq!(read, Ok(2000), "chained after the stream's last sequence");
}

#[test]
fn a_burst_commits_with_its_last_envelope_whatever_batches_follow() {
    // A transaction of exactly 1,024 envelopes and its closing batch without any,
    // both waiting: one burst, its last message the commit.
    let (tx, mut rx) = tokio::sync::mpsc::channel(8);
    tx.try_send(batch(0, Some(200))).unwrap();
    let mut w = Window::default();
    w.receive(batch(1024, None), &mut rx, 0, 10_000);
    assert_eq!(w.received, 1024);
    assert!(rx.try_recv().is_err(), "the closing batch was taken too");
    let f = Flight::default();
    assert_eq!(f.next_burst(w.received, 10_000), Some((1, 1024)));
    let b = OpenBatch::new(INBOX, "b".into(), 0, 0);
    assert!(b.reply_subject(1024, true).ends_with(".1024.2.$FI"));
    assert!(b.reply_subject(1, false).ends_with(".1.0.$FI"));
    assert!(b.reply_subject(2, false).ends_with(".2.1.$FI"));
    // Once all 1,024 are acknowledged, both batches are confirmed.
    let done = w.take_confirmed(1024, &Metrics::new());
    assert_eq!(done.len(), 2);
    assert_eq!(done[1].commit_end, Some(Lsn(200)));
    assert!(w.is_empty());
}

#[test]
fn the_window_numbers_messages_across_batches() {
    let mut w = Window::default();
    for n in [3, 0, 2] {
        w.push(batch(n, None));
    }
    let from = |w: &Window, first| w.items_from(first).map(|(o, _)| o).collect::<Vec<_>>();
    assert_eq!(from(&w, 1), [1, 2, 3, 4, 5]);
    assert_eq!(from(&w, 3), [3, 4, 5]);
    assert_eq!(from(&w, 6), Vec::<u64>::new());
    let m = Metrics::new();
    assert_eq!(w.take_confirmed(2, &m).len(), 0);
    assert_eq!(
        w.take_confirmed(3, &m).len(),
        2,
        "the empty batch goes with it"
    );
    assert_eq!(from(&w, 1), [4, 5]);
}
