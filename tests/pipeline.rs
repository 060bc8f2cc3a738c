//! End to end against a real PostgreSQL (wal_level=logical) and a real nats-server:
//! the walcast binary streams, a NATS subscriber decodes, and Postgres is the oracle.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use walcast::wire::codec::Op;
use walcast::wire::key::{parse_key, parse_key_token, parse_name_token};

const WAIT: Duration = Duration::from_secs(30);

/// Replay envelopes into key → row value (deletes remove, truncates clear the table).
fn replay(
    received: &[(String, walcast::wire::codec::Envelope, Vec<u8>)],
) -> BTreeMap<String, rmpv::Value> {
    let mut state = BTreeMap::new();
    for (_, env, _) in received {
        match env.op {
            Op::Delete => {
                state.remove(&env.key);
            }
            Op::Truncate => state.retain(|k: &String, _| !k.starts_with(&env.key)),
            _ => {
                state.insert(env.key.clone(), env.value.clone());
            }
        }
    }
    state
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_reach_nats_and_equal_what_postgres_holds() {
    let (s, db) = with_sql(
        servers(),
        "CREATE TABLE users (id int PRIMARY KEY, name text NOT NULL, score float8, active bool);
         CREATE PUBLICATION walcast FOR TABLE users;",
    )
    .await;
    let mut collector = Collector::new(&s.nats.url(), "walcast.public.users.*").await;
    let mut w = Walcast::start(RunArgs::new(&s, "walcast", "walcast")).await;
    // The default on nats-server 2.14+: fast-ingest batches.
    assert!(w.log().contains("fast-ingest batches"), "{}", w.log());

    // One transaction with several rows, then many transactions.
    exec(
        &db,
        "BEGIN; INSERT INTO users VALUES (1,'ada',1.5,true),(2,'bob',NULL,false),(3,'cy',3,true); COMMIT;",
    )
    .await;
    for i in 0..10 {
        exec(
            &db,
            &format!("UPDATE users SET score = {i}.25 WHERE id = {}", 1 + i % 3),
        )
        .await;
    }
    exec(&db, "DELETE FROM users WHERE id = 2").await;
    collector.until(14, WAIT).await;

    let state = replay(&collector.received);
    let rows = db
        .query("SELECT id, name, score, active FROM users ORDER BY id", &[])
        .await
        .unwrap();
    assert_eq!(state.len(), rows.len());
    for row in &rows {
        let id: i32 = row.get(0);
        let v = &state[&format!("public.users:{id}")];
        let col = |n: &str| {
            v.as_map()
                .unwrap()
                .iter()
                .find(|(k, _)| k.as_str() == Some(n))
                .unwrap()
                .1
                .clone()
        };
        assert_eq!(col("id").as_i64(), Some(i64::from(id)));
        assert_eq!(col("name").as_str(), Some(row.get::<_, String>(1).as_str()));
        assert_eq!(col("score").as_f64(), row.get::<_, Option<f64>>(2));
        assert_eq!(col("active").as_bool(), row.get::<_, Option<bool>>(3));
    }
    let ops: Vec<Op> = collector.received.iter().map(|(_, e, _)| e.op).collect();
    assert_eq!(&ops[..3], &[Op::Insert, Op::Insert, Op::Insert]);
    assert_eq!(ops[13], Op::Delete);
    assert!(collector.received[13].1.value.is_nil());
    // Every envelope of one transaction carries its commit LSN.
    let first_lsn = collector.received[0].1.lsn;
    assert!(collector.received[..3]
        .iter()
        .all(|(_, e, _)| e.lsn == first_lsn));
    assert!(collector.received[3].1.lsn > first_lsn);

    // Truncate: a table-level envelope, then the table is empty for the replica too.
    let mut truncates = Collector::new(&s.nats.url(), "walcast.public.users.~truncate").await;
    exec(&db, "TRUNCATE users").await;
    exec(&db, "INSERT INTO users VALUES (9,'zed',0,true)").await;
    let t = truncates.until(1, WAIT).await;
    assert_eq!(t[0].1.op, Op::Truncate);
    assert_eq!(t[0].1.key, "public.users:");
    // The table wildcard sees the truncate too, in commit order.
    collector.until(16, WAIT).await;
    assert_eq!(collector.received[14].1.op, Op::Truncate);
    let state = replay(&collector.received);
    assert_eq!(state.keys().collect::<Vec<_>>(), vec!["public.users:9"]);

    // SIGTERM: clean exit, final status update sent.
    w.sigterm();
    let status = w.wait_exit(WAIT).await;
    assert!(status.success(), "exit {status}:\n{}", w.log());
    assert!(w.log().contains("final status sent"), "{}", w.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_type_maps_exactly() {
    let (s, db) = with_sql(
        servers(),
        "CREATE TYPE mood AS ENUM ('sad', 'happy');
         CREATE DOMAIN posint AS int CHECK (VALUE > 0);
         CREATE TABLE types (
            id int PRIMARY KEY, i2 int2, i8 int8, f4 float4, f8 float8, f8nan float8, f8inf float8,
            f8ninf float8, num numeric, bignum numeric, numnan numeric, b bool, t text, vc varchar(10),
            ch char(3), by bytea, u uuid, j json, jb jsonb, ts timestamp, tstz timestamptz,
            tsinf timestamptz, tsninf timestamp, d date, tm time, tmtz timetz, iv interval,
            ia int[], ta text[], ia2 int[], m mood, ma mood[], dom posint, pt point, nul text);
         CREATE PUBLICATION walcast FOR TABLE types;",
    )
    .await;
    let mut collector = Collector::new(&s.nats.url(), "walcast.public.types.*").await;
    let _w = Walcast::start(RunArgs::new(&s, "walcast", "walcast")).await;
    let big = format!("-{}.{}", "9".repeat(120), "1".repeat(30));
    exec(
        &db,
        &format!(
            "INSERT INTO types VALUES (1, -32768, 9223372036854775807, 1.5, 0.1, 'NaN', 'Infinity',
             '-Infinity', 12.340, '{big}', 'NaN', true, 'héllo \"w\"', 'v', 'ab', '\\x00ff0001',
             'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{{\"a\": [1, 2.5, null, \"x\"]}}',
             '{{\"nested\": {{\"deep\": [true, {{\"k\": -1}}]}}}}', '2024-02-29 12:34:56.789012',
             '2024-02-29 12:34:56.5+02', 'infinity', '-infinity', '2024-02-29', '13:14:15.5',
             '13:14:15+05:30', '1 year 2 mons 3 days 04:05:06.5', '{{1,NULL,3}}',
             '{{\"a b\",NULL,\"c,d\",\"\"}}', '{{{{1,2}},{{3,NULL}}}}', 'happy', '{{sad,happy}}', 7,
             '(1.5,2)', NULL)"
        ),
    )
    .await;
    let got = collector.until(1, WAIT).await;
    let env = &got[0].1;
    let col = |n: &str| {
        env.column(n)
            .unwrap_or_else(|| panic!("no column {n}"))
            .clone()
    };
    use rmpv::Value as V;
    assert_eq!(col("i2"), V::from(-32768));
    assert_eq!(col("i8"), V::from(9223372036854775807i64));
    assert_eq!(col("f4"), V::F32(1.5));
    assert_eq!(col("f8"), V::F64(0.1));
    assert!(matches!(col("f8nan"), V::F64(f) if f.is_nan()));
    assert_eq!(col("f8inf"), V::F64(f64::INFINITY));
    assert_eq!(col("f8ninf"), V::F64(f64::NEG_INFINITY));
    assert_eq!(col("num"), V::from("12.340"));
    assert_eq!(col("bignum"), V::from(big.as_str()));
    assert_eq!(col("numnan"), V::from("NaN"));
    assert_eq!(col("b"), V::Boolean(true));
    assert_eq!(col("t"), V::from("héllo \"w\""));
    assert_eq!(col("vc"), V::from("v"));
    assert_eq!(col("ch"), V::from("ab "));
    assert_eq!(col("by"), V::Binary(vec![0, 255, 0, 1]));
    assert_eq!(col("u"), V::from("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"));
    assert_eq!(
        col("j"),
        V::Map(vec![(
            V::from("a"),
            V::Array(vec![V::from(1), V::F64(2.5), V::Nil, V::from("x")])
        )])
    );
    assert_eq!(
        col("jb"),
        V::Map(vec![(
            V::from("nested"),
            V::Map(vec![(
                V::from("deep"),
                V::Array(vec![
                    V::Boolean(true),
                    V::Map(vec![(V::from("k"), V::from(-1))])
                ])
            )])
        )])
    );
    let ts = |v: V| walcast::wire::codec::timestamp_of(&v).expect("a timestamp ext");
    assert_eq!(ts(col("ts")).seconds, 1_709_210_096);
    assert_eq!(ts(col("ts")).nanos, 789_012_000);
    assert_eq!(ts(col("tstz")).seconds, 1_709_210_096 - 7200);
    assert_eq!(ts(col("tstz")).nanos, 500_000_000);
    assert_eq!(ts(col("tsinf")), walcast::wire::Timestamp::INFINITY);
    assert_eq!(ts(col("tsninf")), walcast::wire::Timestamp::NEG_INFINITY);
    assert_eq!(col("d"), V::from("2024-02-29"));
    assert_eq!(col("tm"), V::from("13:14:15.5"));
    assert_eq!(col("tmtz"), V::from("13:14:15+05:30"));
    assert_eq!(
        col("iv"),
        V::Map(vec![
            (V::from("months"), V::from(14)),
            (V::from("days"), V::from(3)),
            (V::from("microseconds"), V::from(14_706_500_000i64)),
        ])
    );
    assert_eq!(col("ia"), V::Array(vec![V::from(1), V::Nil, V::from(3)]));
    assert_eq!(
        col("ta"),
        V::Array(vec![V::from("a b"), V::Nil, V::from("c,d"), V::from("")])
    );
    assert_eq!(
        col("ia2"),
        V::Array(vec![
            V::Array(vec![V::from(1), V::from(2)]),
            V::Array(vec![V::from(3), V::Nil])
        ])
    );
    assert_eq!(col("m"), V::from("happy"));
    assert_eq!(col("ma"), V::Array(vec![V::from("sad"), V::from("happy")]));
    assert_eq!(col("dom"), V::from(7));
    assert_eq!(col("pt"), V::from("(1.5,2)"));
    assert_eq!(col("nul"), V::Nil);
    // The values equal what Postgres itself says of the row.
    let row = db
        .query_one(
            "SELECT num::text, bignum::text, extract(epoch FROM tstz)::float8 FROM types",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(col("num").as_str(), Some(row.get::<_, String>(0).as_str()));
    assert_eq!(
        col("bignum").as_str(),
        Some(row.get::<_, String>(1).as_str())
    );
    let epoch: f64 = row.get(2);
    let t = ts(col("tstz"));
    assert_eq!(t.seconds as f64 + f64::from(t.nanos) / 1e9, epoch);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn awkward_and_composite_keys_give_valid_reversible_subjects() {
    let (s, db) = with_sql(
        servers(),
        "CREATE TABLE \"odd.table\" (k text PRIMARY KEY, v int);
         CREATE TABLE items (order_id int, line text, qty int, PRIMARY KEY (order_id, line));
         CREATE PUBLICATION walcast FOR TABLE \"odd.table\", items;",
    )
    .await;
    let mut collector = Collector::new(&s.nats.url(), "walcast.>").await;
    let w = Walcast::start(RunArgs::new(&s, "walcast", "walcast")).await;
    let keys = [
        "a.b",
        "with space",
        "star*",
        "gt>",
        "",
        "x".repeat(500).as_str().to_owned().leak(),
    ];
    for (i, k) in keys.iter().enumerate() {
        db.execute(
            "INSERT INTO \"odd.table\" VALUES ($1, $2)",
            &[k, &(i as i32)],
        )
        .await
        .unwrap();
    }
    exec(
        &db,
        "INSERT INTO items VALUES (17, 'a.b c', 1), (17, '*', 2)",
    )
    .await;
    let got = collector.until(keys.len() + 2, WAIT).await;
    let seen: Vec<(&String, u64)> = got.iter().map(|(s, e, _)| (s, e.sequence)).collect();
    let distinct: std::collections::HashSet<_> = seen.iter().collect();
    assert_eq!(
        distinct.len(),
        seen.len(),
        "a replay: {seen:?}\n{}",
        w.log()
    );
    for (subject, env, _) in got {
        let tokens: Vec<&str> = subject.split('.').collect();
        assert_eq!(tokens.len(), 4, "{subject}");
        assert!(tokens.iter().all(|t| !t.is_empty()
            && t.bytes()
                .all(|b| b.is_ascii_graphic() && b != b'*' && b != b'>')));
        let key = parse_key(&env.key).unwrap();
        assert_eq!(parse_name_token(tokens[1]).unwrap(), key.schema);
        assert_eq!(parse_name_token(tokens[2]).unwrap(), key.table);
        match parse_key_token(tokens[3]) {
            Ok(values) => assert_eq!(values, key.values),
            // A very long key is hashed in the subject; the envelope keeps it whole.
            Err(_) => assert_eq!(key.values[0].len(), 500),
        }
        let pk_value = env.column("k").or_else(|| env.column("line")).unwrap();
        assert!(key.values.contains(&pk_value.as_str().unwrap().to_string()));
    }
    let composite: Vec<_> = got
        .iter()
        .filter(|(_, e, _)| e.key.starts_with("public.items"))
        .collect();
    assert_eq!(composite[0].1.key, "public.items:17,a%2Eb c");
    assert_eq!(composite[0].0, "walcast.public.items.17,a~2Eb~20c");
    assert_eq!(composite[1].0, "walcast.public.items.17,~2A");
    let odd: Vec<_> = got
        .iter()
        .filter(|(_, e, _)| e.key.starts_with("public.odd"))
        .collect();
    assert_eq!(odd[0].0, "walcast.public.odd~2Etable.a~2Eb");
    assert_eq!(odd[4].0, "walcast.public.odd~2Etable.~_");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_key_sequences_are_dense_and_in_commit_order() {
    let (s, db) = with_sql(
        servers(),
        "CREATE TABLE counters (id int PRIMARY KEY, n int NOT NULL);
         CREATE PUBLICATION walcast FOR TABLE counters;",
    )
    .await;
    let mut collector = Collector::new(&s.nats.url(), "walcast.public.counters.*").await;
    let _w = Walcast::start(RunArgs::new(&s, "walcast", "walcast")).await;
    exec(
        &db,
        "INSERT INTO counters SELECT g, 0 FROM generate_series(1, 5) g",
    )
    .await;
    // Interleaved updates: some transactions touch several keys, some one key twice.
    for round in 1..=20 {
        exec(
            &db,
            &format!(
                "BEGIN; UPDATE counters SET n = n + 1 WHERE id = {a}; UPDATE counters SET n = n + 1 WHERE id = {b}; COMMIT;",
                a = 1 + round % 5,
                b = 1 + (round * 3) % 5
            ),
        )
        .await;
    }
    exec(
        &db,
        "DELETE FROM counters WHERE id = 3; INSERT INTO counters VALUES (3, 100)",
    )
    .await;
    collector.until(5 + 40 + 2, WAIT).await;
    let mut per_key: BTreeMap<String, Vec<(u64, i64)>> = BTreeMap::new();
    for (_, env, _) in &collector.received {
        let n = env.column("n").and_then(|v| v.as_i64()).unwrap_or(-1);
        per_key
            .entry(env.key.clone())
            .or_default()
            .push((env.sequence, n));
    }
    let rows = db.query("SELECT id, n FROM counters", &[]).await.unwrap();
    for row in rows {
        let id: i32 = row.get(0);
        let seen = &per_key[&format!("public.counters:{id}")];
        let seqs: Vec<u64> = seen.iter().map(|(s, _)| *s).collect();
        assert_eq!(
            seqs,
            (1..=seqs.len() as u64).collect::<Vec<_>>(),
            "key {id}"
        );
        // n increases by one per update, in commit order (deletes carry no value).
        let ns: Vec<i64> = seen
            .iter()
            .map(|(_, n)| *n)
            .filter(|n| (0..100).contains(n))
            .collect();
        assert_eq!(ns, (0..ns.len() as i64).collect::<Vec<_>>(), "key {id}");
        assert_eq!(seen.last().unwrap().1, i64::from(row.get::<_, i32>(1)));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_version_bumps_on_add_and_drop_column() {
    let (s, db) = with_sql(
        servers(),
        "CREATE TABLE docs (id int PRIMARY KEY, title text, body text);
         CREATE PUBLICATION walcast FOR TABLE docs;",
    )
    .await;
    let mut collector = Collector::new(&s.nats.url(), "walcast.public.docs.*").await;
    let w = Walcast::start(RunArgs::new(&s, "walcast", "walcast")).await;
    // The initial snapshot describes the table from the catalog: DDL racing with its
    // first chunk can number versions out of WAL order (a known limit, see the
    // closing note of the first-touch work); this test is about DDL while streaming.
    w.wait_for_log("snapshot complete", 1, WAIT).await;
    exec(&db, "INSERT INTO docs VALUES (1, 'a', 'x')").await;
    exec(&db, "ALTER TABLE docs ADD COLUMN tags text[]").await;
    exec(&db, "INSERT INTO docs VALUES (2, 'b', 'y', '{t}')").await;
    exec(&db, "ALTER TABLE docs DROP COLUMN body").await;
    exec(&db, "UPDATE docs SET title = 'c' WHERE id = 1").await;
    exec(&db, "ALTER TABLE docs ADD COLUMN n int").await;
    exec(&db, "UPDATE docs SET n = 1 WHERE id = 2").await;
    let got = collector.until(4, WAIT).await;
    let versions: Vec<&str> = got
        .iter()
        .map(|(_, e, _)| e.schema_version.as_str())
        .collect();
    assert_eq!(versions, ["1.0", "1.1", "2.0", "2.1"]);
    assert!(got[2].1.column("body").is_none());
    assert!(got[1].1.column("tags").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_toast_values_are_published_whole() {
    let (s, db) = with_sql(
        servers(),
        "CREATE TABLE blobs (id int PRIMARY KEY, big text, n int);
         CREATE TABLE blobs_full (id int PRIMARY KEY, big text, n int);
         ALTER TABLE blobs_full REPLICA IDENTITY FULL;
         ALTER TABLE blobs ALTER COLUMN big SET STORAGE EXTERNAL;
         ALTER TABLE blobs_full ALTER COLUMN big SET STORAGE EXTERNAL;
         INSERT INTO blobs VALUES (1, repeat('x', 10000), 0);
         CREATE PUBLICATION walcast FOR TABLE blobs, blobs_full;",
    )
    .await;
    let mut collector = Collector::new(&s.nats.url(), "walcast.public.*.*").await;
    // Without a snapshot, row 1 (inserted before walcast ran) was never seen: its big
    // value must be fetched.
    let w =
        Walcast::start(RunArgs::new(&s, "walcast", "walcast").args(&["--snapshot", "never"])).await;
    exec(&db, "UPDATE blobs SET n = 1 WHERE id = 1").await;
    // Row 2's big value is seen at insert, then reused from memory.
    exec(&db, "INSERT INTO blobs VALUES (2, repeat('y', 9000), 0)").await;
    exec(&db, "UPDATE blobs SET n = 2 WHERE id = 2").await;
    // FULL identity: the old row carries the value.
    exec(
        &db,
        "INSERT INTO blobs_full VALUES (3, repeat('z', 8000), 0)",
    )
    .await;
    exec(&db, "UPDATE blobs_full SET n = 3 WHERE id = 3").await;
    let got = collector.until(5, WAIT).await;
    let big = |i: usize| {
        got[i]
            .1
            .column("big")
            .and_then(|v| v.as_str())
            .map(str::len)
    };
    assert_eq!(big(0), Some(10000));
    assert_eq!(big(2), Some(9000));
    assert_eq!(big(4), Some(8000));
    assert_eq!(got[4].1.column("n").and_then(|v| v.as_i64()), Some(3));
    let fetches = w.metric("walcast_toast_fetches_total").await.unwrap();
    assert_eq!(fetches, 1.0, "only the row never seen before is fetched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_larger_than_the_inflight_window_flows_through() {
    let (s, db) = with_sql(
        servers(),
        "CREATE TABLE big (id int PRIMARY KEY, v int);
         CREATE PUBLICATION walcast FOR TABLE big;",
    )
    .await;
    let mut collector = Collector::new(&s.nats.url(), "walcast.public.big.*").await;
    let w = Walcast::start(RunArgs::new(&s, "walcast", "walcast").args(&["--max-inflight", "100"]))
        .await;
    exec(
        &db,
        "INSERT INTO big SELECT g, g FROM generate_series(1, 5000) g",
    )
    .await;
    let got = collector.until(5000, WAIT).await;
    assert!(got.iter().all(|(_, e, _)| e.sequence == 1));
    // Every envelope is confirmed by the broker, window after window.
    w.wait_metric("walcast_published_total", 5000.0, WAIT).await;
}
