//! The client side: one contract suite over both transports, local fan-out and
//! subscriber GC checked through nats-server's own monitoring endpoint, slow
//! subscribers, and the reconciling replica (also end to end from Postgres).

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use serde::Deserialize;
use walcast::client::{
    refetch_from_stream, refetch_from_walcast, ClientError, Envelope, InProcessTransport,
    NatsTransport, Refetch, Replica, ReplicaOptions, Status, Subscription, Transport,
};
use walcast::testing::NatsServer;
use walcast::wire::codec::Op;
use walcast::wire::Timestamp;

const SHORT: Duration = Duration::from_millis(300);
const WAIT: Duration = Duration::from_secs(10);

/// The tests of this file run one at a time: the churn test measures this process's
/// RSS, which the others' allocations would blur.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The table of the end-to-end replica tests, with one row, in the publication.
const ACCOUNTS: &str = "CREATE TABLE accounts (id bigint PRIMARY KEY, balance bigint NOT NULL);
     INSERT INTO accounts VALUES (1, 0);
     CREATE PUBLICATION walcast FOR TABLE accounts;";

fn envelope(key: &str, seq: u64, version: &str, balance: rmpv::Value) -> Envelope {
    Envelope {
        key: key.into(),
        op: Op::Update,
        value: rmpv::Value::Map(vec![("id".into(), 1.into()), ("balance".into(), balance)]),
        schema_version: version.into(),
        sequence: seq,
        lsn: seq * 100,
        commit_ts: Timestamp {
            seconds: 1_700_000_000,
            nanos: 0,
        },
        xid: None,
        tx_index: None,
        before: None,
        compression: None,
        key_id: None,
    }
}

async fn next(sub: &mut Subscription) -> Option<Arc<Envelope>> {
    tokio::time::timeout(WAIT, sub.recv()).await.ok().flatten()
}

async fn nothing_more(sub: &mut Subscription) {
    if let Ok(Some(e)) = tokio::time::timeout(SHORT, sub.recv()).await {
        panic!("unexpected envelope {} #{}", e.key, e.sequence);
    }
}

/// The transport contract, the same cases for every implementation.
async fn contract<T: Transport>(t: &T) {
    let k = "public.accounts:1";
    // Publishing to a key without subscribers is a no-op.
    t.publish(k, &envelope(k, 1, "1.0", 10.into()))
        .await
        .unwrap();
    assert_eq!(t.key_count(), 0);

    // A subscriber only receives what is published after it subscribed.
    let mut a = t.subscribe(k).await.unwrap();
    let mut b = t.subscribe(k).await.unwrap();
    assert_eq!(t.key_count(), 1);
    t.publish(k, &envelope(k, 2, "1.0", 20.into()))
        .await
        .unwrap();
    assert_eq!(next(&mut a).await.unwrap().sequence, 2);
    assert_eq!(next(&mut b).await.unwrap().sequence, 2);
    nothing_more(&mut a).await;

    // Not retained, not validated, not de-duplicated: the same envelope twice
    // arrives twice, an older one after a newer one arrives too.
    t.publish(k, &envelope(k, 2, "1.0", 20.into()))
        .await
        .unwrap();
    t.publish(k, &envelope(k, 1, "9.9", "x".into()))
        .await
        .unwrap();
    assert_eq!(next(&mut a).await.unwrap().sequence, 2);
    assert_eq!(next(&mut a).await.unwrap().sequence, 1);
    let _ = next(&mut b).await;
    let _ = next(&mut b).await;

    // Other keys are not delivered.
    t.publish(
        "public.accounts:2",
        &envelope("public.accounts:2", 1, "1.0", 1.into()),
    )
    .await
    .unwrap();
    nothing_more(&mut a).await;

    // Unsubscribe is idempotent; the key stays while another subscriber lives.
    a.unsubscribe();
    a.unsubscribe();
    assert!(a.recv().await.is_none());
    assert_eq!(t.key_count(), 1);
    // Dropping the subscription unsubscribes: no key leak.
    drop(b);
    assert_eq!(t.key_count(), 0);

    // Table-level subscriptions see every key of the table and no other table.
    let mut table = t.subscribe_table("public", "accounts").await.unwrap();
    t.publish(
        "public.accounts:7",
        &envelope("public.accounts:7", 1, "1.0", 7.into()),
    )
    .await
    .unwrap();
    t.publish(
        "public.other:7",
        &envelope("public.other:7", 1, "1.0", 7.into()),
    )
    .await
    .unwrap();
    assert_eq!(next(&mut table).await.unwrap().key, "public.accounts:7");
    nothing_more(&mut table).await;
    drop(table);

    // A handler subscription; dropping its handle (from another task) stops it.
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    let handle = t
        .subscribe_fn(k, move |_| {
            counter.fetch_add(1, Ordering::SeqCst);
        })
        .await
        .unwrap();
    t.publish(k, &envelope(k, 3, "1.0", 30.into()))
        .await
        .unwrap();
    poll_until("the handler to be called", WAIT, || async {
        seen.load(Ordering::SeqCst) > 0
    })
    .await;
    tokio::spawn(async move { drop(handle) }).await.unwrap();
    assert_eq!(t.key_count(), 0);
    t.publish(k, &envelope(k, 4, "1.0", 40.into()))
        .await
        .unwrap();
    // No call within SHORT: the time is the point.
    tokio::time::sleep(SHORT).await;
    assert_eq!(seen.load(Ordering::SeqCst), 1);
}

async fn nats_transport(nats: &NatsServer, capacity: usize) -> NatsTransport {
    let client = async_nats::connect(nats.url()).await.unwrap();
    NatsTransport::new(client, "walcast", capacity)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contract_holds_for_the_in_process_transport() {
    let _serial = SERIAL.lock().await;
    contract(&InProcessTransport::default()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contract_holds_for_the_nats_transport() {
    let _serial = SERIAL.lock().await;
    let nats = NatsServer::start().unwrap();
    contract(&nats_transport(&nats, 1024).await).await;
}

async fn server_subscriptions(nats: &NatsServer) -> u64 {
    nats_monitor(nats, "/subsz").await["num_subscriptions"]
        .as_u64()
        .unwrap()
}

/// Wait until the server holds `expected` subscriptions; returns that number.
async fn wait_server_subscriptions(nats: &NatsServer, expected: u64) -> u64 {
    poll_until(format!("{expected} server subscriptions"), WAIT, || async {
        let n = server_subscriptions(nats).await;
        if n == expected {
            Ok(n)
        } else {
            Err(n)
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_local_subscribers_share_one_server_subscription() {
    let _serial = SERIAL.lock().await;
    let nats = NatsServer::start().unwrap();
    let t = nats_transport(&nats, 16).await;
    let before = server_subscriptions(&nats).await;
    let k = "public.accounts:42";
    let mut subs = Vec::new();
    for _ in 0..1000 {
        subs.push(t.subscribe(k).await.unwrap());
    }
    let during = wait_server_subscriptions(&nats, before + 1).await;
    println!("server subscriptions: before {before}, with 1000 local subscribers {during}");
    assert_eq!(during, before + 1);
    assert_eq!(t.key_count(), 1);
    t.publish(k, &envelope(k, 1, "1.0", 1.into()))
        .await
        .unwrap();
    for s in subs.iter_mut() {
        assert_eq!(next(s).await.unwrap().sequence, 1);
    }
    // Remove all but one: still one server subscription; then the last one.
    let last = subs.pop().unwrap();
    drop(subs);
    assert_eq!(
        wait_server_subscriptions(&nats, before + 1).await,
        before + 1
    );
    drop(last);
    let after = wait_server_subscriptions(&nats, before).await;
    println!("server subscriptions after the last local subscriber left: {after}");
    assert_eq!(after, before);
    assert_eq!(t.key_count(), 0);
}

fn rss_kib() -> u64 {
    walcast::testing::rss_kib(std::process::id())
}

async fn churn<T: Transport>(t: &T) -> (u64, u64) {
    // Warm up, then measure: 10,000 subscribe/unsubscribe cycles over 1,000 keys,
    // half of the handles dropped from other tasks.
    let key = |i: usize| format!("public.churn:{}", i % 1000);
    for i in 0..1000 {
        drop(t.subscribe(&key(i)).await.unwrap());
    }
    let before = rss_kib();
    for i in 0..10_000 {
        let sub = t.subscribe(&key(i)).await.unwrap();
        if i % 2 == 0 {
            tokio::spawn(async move { drop(sub) }).await.unwrap();
        } else {
            drop(sub);
        }
    }
    assert_eq!(t.key_count(), 0);
    (before, rss_kib())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_unsubscribe_churn_leaks_no_keys_and_no_memory() {
    let _serial = SERIAL.lock().await;
    let nats = NatsServer::start().unwrap();
    let t = nats_transport(&nats, 16).await;
    let base = server_subscriptions(&nats).await;
    let (before, after) = churn(&t).await;
    println!("NATS churn: RSS {before} KiB -> {after} KiB");
    assert!(
        after < before + 20 * 1024,
        "RSS grew from {before} to {after} KiB"
    );
    assert_eq!(wait_server_subscriptions(&nats, base).await, base);
    let (before, after) = churn(&InProcessTransport::default()).await;
    println!("in-process churn: RSS {before} KiB -> {after} KiB");
    assert!(after < before + 20 * 1024);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_subscriber_does_not_delay_a_fast_one() {
    let _serial = SERIAL.lock().await;
    let nats = NatsServer::start().unwrap();
    let t = nats_transport(&nats, 32).await;
    let k = "public.accounts:1";
    let slow = t.subscribe(k).await.unwrap(); // never reads
    let mut fast = t.subscribe(k).await.unwrap();
    let reader = tokio::spawn(async move {
        let mut seqs = Vec::new();
        while seqs.len() < 200 {
            match tokio::time::timeout(WAIT, fast.recv()).await {
                Ok(Some(e)) => seqs.push(e.sequence),
                _ => break,
            }
        }
        (seqs, fast.dropped())
    });
    let started = tokio::time::Instant::now();
    for seq in 1..=200u64 {
        t.publish(k, &envelope(k, seq, "1.0", (seq as i64).into()))
            .await
            .unwrap();
        if seq % 10 == 0 {
            // Pacing a reader can keep up with (the fast one must drop nothing): the
            // time is the point.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    let (seqs, fast_dropped) = reader.await.unwrap();
    let took = started.elapsed();
    println!(
        "fast subscriber got {} envelopes in {took:?} beside a stalled one",
        seqs.len(),
    );
    // A delivery that waited for the stalled subscriber would never finish (its queue
    // never drains): the fast one would time out after WAIT with fewer envelopes.
    assert!(took < WAIT, "the fast subscriber waited {took:?}");
    assert_eq!(seqs, (1..=200).collect::<Vec<u64>>());
    assert_eq!(fast_dropped, 0);
    assert_eq!(
        slow.dropped(),
        200 - 32,
        "the slow subscriber's overflow is counted"
    );
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
struct Account {
    id: i64,
    balance: i64,
}

/// A refetch that serves `snapshot` (or fails when it is `None`) and counts calls.
fn refetch_of(snapshot: Arc<Mutex<Option<Envelope>>>) -> Refetch {
    Arc::new(move || {
        let snap = snapshot.lock().unwrap().clone();
        Box::pin(async move { snap.ok_or_else(|| ClientError::Refetch("unavailable".into())) })
    })
}

/// Wait until `r` is in the state `check` looks for.
async fn until_replica(
    r: &Replica<Account>,
    what: &str,
    check: impl Fn(&Replica<Account>) -> bool,
) {
    poll_until(what, WAIT, || async {
        if check(r) {
            Ok(())
        } else {
            Err(format!("{:?} {:?} {:?}", r.get(), r.meta(), r.stats()))
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_reconciles_stale_gaps_skews_and_parse_failures() {
    let _serial = SERIAL.lock().await;
    let t = InProcessTransport::default();
    let k = "public.accounts:1";
    let snapshot = Arc::new(Mutex::new(Some(envelope(k, 5, "1.0", 500.into()))));
    let mut opts = ReplicaOptions::new(k);
    opts.seed = Some(envelope(k, 1, "1.0", 100.into()));
    opts.refetch = Some(refetch_of(snapshot.clone()));
    opts.schema_version = Some("1.0".into());
    let r: Replica<Account> = Replica::start(&t, opts).await.unwrap();
    assert_eq!(
        r.get(),
        Some(Account {
            id: 1,
            balance: 100
        })
    );
    assert_eq!(r.status(), Status::Ok);

    // In order: applied. A minor schema difference applies.
    t.publish(k, &envelope(k, 2, "1.3", 200.into()))
        .await
        .unwrap();
    until_replica(&r, "#2 applied", |r| r.meta().sequence == Some(2)).await;
    assert_eq!(r.get().unwrap().balance, 200);
    assert_eq!(r.meta().schema_version.as_deref(), Some("1.3"));

    // Stale: dropped.
    t.publish(k, &envelope(k, 2, "1.0", 999.into()))
        .await
        .unwrap();
    t.publish(k, &envelope(k, 1, "1.0", 999.into()))
        .await
        .unwrap();
    until_replica(&r, "two stale envelopes seen", |r| {
        r.stats().ignored_stale >= 2
    })
    .await;
    assert_eq!(r.get().unwrap().balance, 200);
    assert_eq!(r.stats().ignored_stale, 2);

    // Gap: not applied; refetch converges on the snapshot.
    t.publish(k, &envelope(k, 4, "1.0", 400.into()))
        .await
        .unwrap();
    until_replica(&r, "the refetched #5", |r| r.meta().sequence == Some(5)).await;
    r.when_idle().await;
    assert_eq!(r.stats().gaps, 1);
    assert_eq!(r.get().unwrap().balance, 500);
    assert_eq!(r.meta().sequence, Some(5));
    assert_eq!(r.status(), Status::Ok);

    // Major skew: not applied, refetch.
    *snapshot.lock().unwrap() = Some(envelope(k, 7, "1.0", 700.into()));
    t.publish(k, &envelope(k, 6, "2.0", 600.into()))
        .await
        .unwrap();
    until_replica(&r, "the refetched #7", |r| r.meta().sequence == Some(7)).await;
    r.when_idle().await;
    assert_eq!(r.stats().schema_skews, 1);
    assert_eq!(r.get().unwrap().balance, 700);

    // Parse failure: skew, refetch, never a panic.
    *snapshot.lock().unwrap() = Some(envelope(k, 9, "1.0", 900.into()));
    t.publish(k, &envelope(k, 8, "1.0", "not a number".into()))
        .await
        .unwrap();
    until_replica(&r, "the refetched #9", |r| r.meta().sequence == Some(9)).await;
    r.when_idle().await;
    assert_eq!(r.stats().parse_errors, 1);
    assert_eq!(r.get().unwrap().balance, 900);
    assert_eq!(r.status(), Status::Ok);

    // Refetch failure: stale.
    *snapshot.lock().unwrap() = None;
    t.publish(k, &envelope(k, 11, "1.0", 1100.into()))
        .await
        .unwrap();
    until_replica(&r, "a failed refetch", |r| r.status() == Status::Stale).await;
    r.when_idle().await;
    assert_eq!(r.status(), Status::Stale);
    assert_eq!(r.get().unwrap().balance, 900);

    // A watch sees applied values; dispose is idempotent and stops applying.
    let mut w = r.watch();
    t.publish(k, &envelope(k, 10, "1.0", 1000.into()))
        .await
        .unwrap();
    tokio::time::timeout(WAIT, w.changed())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(w.borrow().as_ref().unwrap().balance, 1000);
    r.dispose();
    r.dispose();
    t.publish(k, &envelope(k, 11, "1.0", 1100.into()))
        .await
        .unwrap();
    // Nothing applied within SHORT: the time is the point.
    tokio::time::sleep(SHORT).await;
    assert_eq!(r.get().unwrap().balance, 1000);
    let stats = r.stats();
    assert_eq!((stats.applied, stats.refetches), (6, 4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_without_refetch_goes_stale_on_a_gap() {
    let _serial = SERIAL.lock().await;
    let t = InProcessTransport::default();
    let k = "public.accounts:1";
    let r: Replica<Account> = Replica::start(&t, ReplicaOptions::new(k)).await.unwrap();
    assert_eq!(r.status(), Status::Stale);
    t.publish(k, &envelope(k, 3, "1.0", 300.into()))
        .await
        .unwrap();
    until_replica(&r, "#3 applied", |r| r.meta().sequence == Some(3)).await;
    assert_eq!(r.get().unwrap().balance, 300);
    assert_eq!(r.status(), Status::Ok);
    t.publish(k, &envelope(k, 5, "1.0", 500.into()))
        .await
        .unwrap();
    until_replica(&r, "the gap seen", |r| r.stats().gaps >= 1).await;
    assert_eq!(r.stats().gaps, 1);
    assert_eq!(r.status(), Status::Stale);
    assert_eq!(r.get().unwrap().balance, 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_follows_a_postgres_row_end_to_end() {
    let _serial = SERIAL.lock().await;
    let (s, db) = with_sql(servers(), ACCOUNTS).await;
    let _w = Walcast::start(RunArgs::new(&s, "walcast", "walcast")).await;
    exec(&db, "UPDATE accounts SET balance = 1 WHERE id = 1").await;

    let client = async_nats::connect(s.nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    let t = NatsTransport::new(client, "walcast", 1024);
    let k = "public.accounts:1";
    // Wait until walcast has the row in its stream, then seed from a refetch.
    poll_until("the row in walcast's stream", WAIT, || async {
        refetch_from_stream(&js, "WALCAST", "walcast", k).await
    })
    .await;
    let mut opts = ReplicaOptions::new(k);
    let js2 = js.clone();
    opts.refetch = Some(Arc::new(move || {
        let js = js2.clone();
        Box::pin(async move { refetch_from_stream(&js, "WALCAST", "walcast", k).await })
    }));
    opts.schema_version = Some("1.0".into());
    let r: Replica<Account> = Replica::start(&t, opts).await.unwrap();
    r.when_idle().await;
    for i in 2..=50 {
        exec(
            &db,
            &format!("UPDATE accounts SET balance = {i} WHERE id = 1"),
        )
        .await;
    }
    until_replica(&r, "balance 50", |r| r.get().map(|a| a.balance) == Some(50)).await;
    let balance: i64 = db
        .query_one("SELECT balance FROM accounts WHERE id = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(r.get().unwrap().balance, balance);
    // The row existed before walcast: its snapshot envelope and the 50 updates (the
    // first one may fall in the snapshot's window and replace it) — the replica is at
    // the stream's last envelope.
    let last = refetch_from_stream(&js, "WALCAST", "walcast", k)
        .await
        .unwrap();
    assert_eq!(r.meta().sequence, Some(last.sequence));
    assert!((50..=51).contains(&last.sequence), "{}", last.sequence);
    assert_eq!(r.status(), Status::Ok);
}

/// How a test refetches a key: walcast's stream (tracked mode) or walcast's refetch
/// subject (column mode).
#[derive(Clone, Copy, Debug)]
enum RefetchVia {
    Stream,
    Walcast,
}

fn refetch_via(via: RefetchVia, client: async_nats::Client, key: &'static str) -> Refetch {
    let js = async_nats::jetstream::new(client.clone());
    Arc::new(move || {
        let (js, client) = (js.clone(), client.clone());
        Box::pin(async move {
            match via {
                RefetchVia::Stream => refetch_from_stream(&js, "WALCAST", "walcast", key).await,
                RefetchVia::Walcast => {
                    refetch_from_walcast(&client, "walcast", key, Duration::from_secs(5)).await
                }
            }
        })
    })
}

/// A replica fed by walcast's live subject with envelopes 5..=7 of the key held back
/// (an induced gap) refetches and, with the live envelopes after it, ends equal to
/// the row in PostgreSQL; after a delete a refetch finds no row.
async fn replica_recovers_from_a_gap(via: RefetchVia) {
    let (s, db) = with_sql(servers(), ACCOUNTS).await;
    install_sequence_helper(&db).await;
    let mut args = RunArgs::new(&s, "walcast", "walcast");
    if let RefetchVia::Walcast = via {
        exec(&db, "SELECT walcast_install_sequence('accounts')").await;
        args = args.args(&["--column-sequence", "public.accounts=walcast_seq"]);
    }
    let mut w = Walcast::start(args).await;
    let k = "public.accounts:1";
    let client = async_nats::connect(s.nats.url()).await.unwrap();
    let refetch = refetch_via(via, client.clone(), k);
    poll_until(format!("a first refetch via {via:?}"), WAIT, || async {
        refetch().await
    })
    .await;
    // Live envelopes through a local transport that holds back 5..=7.
    let nats = NatsTransport::new(client.clone(), "walcast", 1024);
    let mut live = nats.subscribe(k).await.unwrap();
    let local = Arc::new(InProcessTransport::new(1024));
    let mut opts = ReplicaOptions::new(k);
    opts.refetch = Some(refetch.clone());
    let r: Replica<Account> = Replica::start(local.as_ref(), opts).await.unwrap();
    r.when_idle().await;
    let forward = local.clone();
    tokio::spawn(async move {
        while let Some(env) = live.recv().await {
            if !(5..=7).contains(&env.sequence) {
                forward.publish(k, &env).await.unwrap();
            }
        }
    });
    for i in 1..=20 {
        exec(
            &db,
            &format!("UPDATE accounts SET balance = {i} WHERE id = 1"),
        )
        .await;
    }
    until_replica(&r, &format!("{via:?}: balance 20 and status Ok"), |r| {
        r.get().map(|a| a.balance) == Some(20) && matches!(r.status(), Status::Ok)
    })
    .await;
    r.when_idle().await;
    let row = db
        .query_one("SELECT balance FROM accounts WHERE id = 1", &[])
        .await
        .unwrap();
    assert_eq!(r.get().unwrap().balance, row.get::<_, i64>(0));
    let stats = r.stats();
    assert!(
        stats.gaps >= 1 && stats.refetches >= 2,
        "{via:?}: {stats:?}"
    );
    let authoritative = refetch().await.unwrap();
    assert_eq!(r.meta().sequence, Some(authoritative.sequence), "{via:?}");
    if let RefetchVia::Walcast = via {
        let seq: i64 = db
            .query_one("SELECT walcast_seq FROM accounts WHERE id = 1", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(authoritative.sequence, seq as u64);
        assert_eq!(authoritative.op, Op::Snapshot);
        // A key without a row, and a malformed one.
        let missing = refetch_from_walcast(&client, "walcast", "public.accounts:99", WAIT).await;
        assert!(
            matches!(missing, Err(ClientError::NotFound(_))),
            "{missing:?}"
        );
        let bad = refetch_from_walcast(&client, "walcast", "public.nope:1", WAIT).await;
        assert!(
            matches!(&bad, Err(ClientError::Refetch(m)) if m.contains("not a published table")),
            "{bad:?}"
        );
    }
    w.sigterm();
    assert!(w.wait_exit(WAIT).await.success(), "{}", w.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_recovers_from_a_gap_by_the_streams_last_message_in_tracked_mode() {
    let _serial = SERIAL.lock().await;
    replica_recovers_from_a_gap(RefetchVia::Stream).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_recovers_from_a_gap_by_asking_walcast_in_column_mode() {
    let _serial = SERIAL.lock().await;
    replica_recovers_from_a_gap(RefetchVia::Walcast).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn walcast_tail_prints_a_live_table() {
    let _serial = SERIAL.lock().await;
    let (s, db) = with_sql(
        servers(),
        "CREATE TABLE accounts (id bigint PRIMARY KEY, owner text, balance numeric);
         CREATE PUBLICATION walcast FOR TABLE accounts;",
    )
    .await;
    let _w = Walcast::start(RunArgs::new(&s, "walcast", "walcast")).await;
    let tail = |json: bool| {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_walcast"));
        cmd.args([
            "tail",
            "walcast.public.accounts.*",
            "--nats-url",
            &s.nats.url(),
            "--count",
            "3",
        ]);
        if json {
            cmd.arg("--json");
        }
        cmd.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    };
    let before = subscriptions_to(&s.nats, "walcast.public.accounts.*").await;
    let human = tail(false);
    let json = tail(true);
    wait_subscribed(&s.nats, "walcast.public.accounts.*", before + 2).await;
    exec(
        &db,
        "INSERT INTO accounts VALUES (1, 'ada', 10.50);
         UPDATE accounts SET balance = 7.25 WHERE id = 1;
         DELETE FROM accounts WHERE id = 1;",
    )
    .await;
    let human = tokio::time::timeout(WAIT, human.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let json = tokio::time::timeout(WAIT, json.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let human = String::from_utf8(human.stdout).unwrap();
    println!("{human}");
    let lines: Vec<&str> = human.lines().collect();
    assert_eq!(lines.len(), 3, "{human}");
    assert!(lines[0]
        .starts_with("walcast.public.accounts.1 insert key=public.accounts:1 seq=1 schema=1.0"));
    assert!(lines[0].contains(r#""balance":"10.50""#), "{}", lines[0]);
    assert!(lines[1].contains("update") && lines[1].contains("seq=2"));
    assert!(lines[2].contains("delete") && lines[2].ends_with("value=null"));
    let json = String::from_utf8(json.stdout).unwrap();
    let objs: Vec<serde_json::Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(objs.len(), 3);
    assert_eq!(objs[1]["value"]["balance"], "7.25");
    assert_eq!(objs[2]["op"], "delete");
}
