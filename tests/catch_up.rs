//! Catch-up since a position (issue 26): a consumer offline for 10,000 changes reads
//! them page by page (`changes_since`) and then follows live (`follow_since`) — every
//! change once, in per-key order, final state equal to the database; filters by table,
//! key pattern and op; a position older than the stream's window is the documented
//! error; a window with a tracked table is refused.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use futures::StreamExt;
use walcast::client::{changes_since, follow_since, latest_position, ChangeFilter, ClientError};
use walcast::wire::Op;

const WAIT: Duration = Duration::from_secs(120);
const KEYS: i64 = 500;

async fn js(s: &Servers) -> async_nats::jetstream::Context {
    async_nats::jetstream::new(async_nats::connect(s.nats.url()).await.unwrap())
}

/// `rounds` updates of every key of `kv`, one transaction per 100 keys.
async fn update_all(db: &tokio_postgres::Client, rounds: usize) {
    for _ in 0..rounds {
        for first in (1..=KEYS).step_by(100) {
            let sql = format!(
                "UPDATE kv SET v = v + 1 WHERE id BETWEEN {first} AND {}",
                first + 99
            );
            exec(db, &sql).await;
        }
    }
}

/// Every page from `position` on (pages of `size`): the envelopes' (key, sequence),
/// how many pages, and the last page's watermark.
async fn all_pages(
    js: &async_nats::jetstream::Context,
    position: u64,
    filter: &ChangeFilter,
    size: usize,
) -> (Vec<(String, u64, Op)>, usize, u64) {
    let (mut out, mut pages, mut at) = (Vec::new(), 0, position);
    loop {
        let page = changes_since(js, "WALCAST", "walcast", at, filter, size)
            .await
            .unwrap();
        pages += 1;
        assert!(page.changes.len() <= size, "a page holds at most {size}");
        assert!(page.next >= at, "the watermark never goes back");
        out.extend(
            page.changes
                .iter()
                .map(|c| (c.envelope.key.clone(), c.envelope.sequence, c.envelope.op)),
        );
        at = page.next;
        if !page.has_more {
            return (out, pages, at);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_consumer_catches_up_page_by_page_then_follows_live() {
    let (s, db) = with_sql(
        servers(),
        "CREATE TABLE kv (id bigint PRIMARY KEY, v bigint NOT NULL);
         CREATE TABLE other (id bigint PRIMARY KEY);
         CREATE PUBLICATION walcast FOR TABLE kv, other;",
    )
    .await;
    let args = RunArgs::new(&s, "walcast", "walcast").args(&["--stream-history", "64"]);
    let w = Walcast::start(args).await;
    exec(
        &db,
        &format!("INSERT INTO kv SELECT g, 0 FROM generate_series(1, {KEYS}) g"),
    )
    .await;
    wait_caught_up(&db, &w, WAIT).await;
    let js = js(&s).await;
    // The consumer goes away here; 10,000 changes (and some of another table) follow.
    let position = latest_position(&js, "WALCAST").await.unwrap();
    update_all(&db, 10).await;
    exec(
        &db,
        "INSERT INTO other SELECT g FROM generate_series(1, 50) g",
    )
    .await;
    update_all(&db, 10).await;
    wait_caught_up(&db, &w, WAIT).await;

    let only_kv = ChangeFilter {
        tables: vec!["public.kv".into()],
        ..Default::default()
    };
    let (seen, pages, next) = all_pages(&js, position, &only_kv, 1000).await;
    assert_eq!(seen.len(), 10_000, "every change of kv once");
    assert!(pages >= 10, "{pages} pages of at most 1,000");
    let mut per_key: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for (key, seq, op) in &seen {
        assert_eq!(*op, Op::Update, "{key}");
        per_key.entry(key.clone()).or_default().push(*seq);
    }
    assert_eq!(per_key.len(), KEYS as usize);
    for (key, seqs) in &per_key {
        assert_eq!(
            *seqs,
            (2..=21).collect::<Vec<u64>>(),
            "{key}: in order, none missed"
        );
    }

    // The other filters: a key pattern, an op, another table.
    let pattern = ChangeFilter {
        key_pattern: Some("public.kv:1*".into()),
        ..only_kv.clone()
    };
    let (some, _, _) = all_pages(&js, position, &pattern, 700).await;
    assert_eq!(
        some.len(),
        111 * 20,
        "keys 1, 10-19, 100-199: 111 keys x 20"
    );
    assert!(some.iter().all(|(k, _, _)| k.starts_with("public.kv:1")));
    let inserts = ChangeFilter {
        ops: vec![Op::Insert],
        ..Default::default()
    };
    let (ins, _, _) = all_pages(&js, position, &inserts, 1000).await;
    assert_eq!(ins.len(), 50, "the inserts of other only");
    assert!(ins.iter().all(|(k, _, _)| k.starts_with("public.other:")));

    // Live from the last watermark: what happens meanwhile arrives once, in order.
    let mut live = Box::pin(
        follow_since(&js, "WALCAST", "walcast", next, only_kv)
            .await
            .unwrap(),
    );
    update_all(&db, 2).await;
    let mut last: BTreeMap<String, (u64, i64)> = BTreeMap::new();
    for _ in 0..(2 * KEYS) {
        let item = tokio::time::timeout(WAIT, live.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let e = item.envelope;
        let before = last.get(&e.key).map_or(21, |(s, _)| *s);
        assert_eq!(
            e.sequence,
            before + 1,
            "{}: no gap, no duplicate at the hand-over",
            e.key
        );
        let v = e.column("v").and_then(|v| v.as_i64()).unwrap();
        last.insert(e.key.clone(), (e.sequence, v));
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(500), live.next())
            .await
            .is_err(),
        "nothing more than the changes"
    );
    for r in db.query("SELECT id, v FROM kv", &[]).await.unwrap() {
        let key = format!("public.kv:{}", r.get::<_, i64>(0));
        assert_eq!(
            last[&key],
            (23, r.get::<_, i64>(1)),
            "{key} equals the database"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_position_older_than_the_window_is_refused_and_tracked_tables_with_a_window_too() {
    let s = servers();
    let db = s.pg.client().await;
    install_sequence_helper(&db).await;
    exec(
        &db,
        "CREATE TABLE acct (id int PRIMARY KEY, pad text);
         SELECT walcast_install_sequence('acct');
         CREATE TABLE tracked (id int PRIMARY KEY);
         CREATE PUBLICATION colpub FOR TABLE acct;
         CREATE PUBLICATION mixed FOR TABLE acct, tracked;",
    )
    .await;
    let window = [
        "--stream-max-bytes",
        "65536",
        "--column-sequence",
        "public.acct=walcast_seq",
    ];

    // A window over a tracked table: refused, naming the table and the ways out.
    let mut refused = Walcast::spawn(RunArgs::new(&s, "mixed", "s_mixed").args(&window));
    exec(&db, "INSERT INTO tracked VALUES (1)").await;
    assert!(
        !refused.wait_exit(WAIT).await.success(),
        "{}",
        refused.log()
    );
    let log = refused.log();
    assert!(
        log.contains("table public.tracked is in tracked mode")
            && log.contains("--stream-max-age/--stream-max-bytes"),
        "{log}"
    );

    let w = Walcast::start(RunArgs::new(&s, "colpub", "walcast").args(&window)).await;
    let js = js(&s).await;
    exec(
        &db,
        "INSERT INTO acct SELECT g, repeat('x', 200) FROM generate_series(1, 20) g",
    )
    .await;
    wait_caught_up(&db, &w, WAIT).await;
    let early = latest_position(&js, "WALCAST").await.unwrap();
    assert!(early >= 20, "{early}");
    // About 1,000 envelopes of ~300 bytes: the 64 KiB window keeps the newest only.
    for _ in 0..50 {
        exec(&db, "UPDATE acct SET pad = repeat(md5(random()::text), 8)").await;
    }
    wait_caught_up(&db, &w, WAIT).await;
    let all = ChangeFilter::default();
    match changes_since(&js, "WALCAST", "walcast", early, &all, 100).await {
        Err(ClientError::PositionTooOld { position, oldest }) => {
            assert_eq!(position, early);
            assert!(oldest > early + 1, "{oldest}");
        }
        other => panic!(
            "expected PositionTooOld, got {:?}",
            other.map(|p| p.changes.len())
        ),
    }
    let now = latest_position(&js, "WALCAST").await.unwrap();
    let page = changes_since(&js, "WALCAST", "walcast", now - 5, &all, 100)
        .await
        .unwrap();
    assert_eq!(
        page.changes.len(),
        5,
        "inside the window: what the stream holds"
    );
    assert!(!page.has_more);
    assert_eq!(page.next, now);
}
