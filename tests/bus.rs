//! Nothing but envelopes under `<prefix>.>`: a plain NATS subscriber (async-nats and a
//! generic MessagePack decoder, none of walcast's code) sees only envelope maps with
//! the contract's fields (docs/envelope.md) across a start, a kill -9 and a restart,
//! heartbeats, the initial snapshot and a re-snapshot, and a column-mode refetch. The
//! start-up permission check publishes nothing, and a user that may not ask for its
//! permissions still runs.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use futures::StreamExt;
use rmpv::Value;

const WAIT: Duration = Duration::from_secs(60);

/// Every message a plain subscriber of `walcast.>` received: (subject, payload).
type Received = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

async fn plain_subscriber(nats_url: &str) -> Received {
    let client = async_nats::connect(nats_url).await.unwrap();
    let mut sub = client.subscribe("walcast.>").await.unwrap();
    client.flush().await.unwrap();
    let received: Received = Arc::default();
    let out = received.clone();
    tokio::spawn(async move {
        let _client = client;
        while let Some(msg) = sub.next().await {
            let entry = (msg.subject.to_string(), msg.payload.to_vec());
            out.lock().unwrap().push(entry);
        }
    });
    received
}

/// Whether a field's value has the contract's type.
type FieldCheck = fn(&Value) -> bool;

/// Why `payload` is not an envelope as docs/envelope.md defines it (a MessagePack map
/// with string keys holding `key`, `op`, `value`, `schema_version`, `sequence`, `lsn`
/// and `commit_ts` of their types), or `None` when it is one.
fn not_an_envelope(payload: &[u8]) -> Option<String> {
    let mut bytes = payload;
    let value = match rmpv::decode::read_value(&mut bytes) {
        Ok(v) => v,
        Err(e) => return Some(format!("not MessagePack ({} bytes): {e}", payload.len())),
    };
    if !bytes.is_empty() {
        return Some(format!("{} bytes after the value", bytes.len()));
    }
    let Value::Map(fields) = value else {
        return Some(format!("not a map: {value}"));
    };
    let field = |name: &str| {
        fields
            .iter()
            .find(|(k, _)| k.as_str() == Some(name))
            .map(|(_, v)| v)
    };
    let ops = ["insert", "update", "delete", "snapshot", "truncate"];
    let checks: [(&str, FieldCheck); 7] = [
        ("key", |v| v.as_str().is_some_and(|k| k.contains(':'))),
        ("op", |v| v.is_str()),
        ("value", |v| v.is_map() || v.is_nil()),
        ("schema_version", |v| {
            v.as_str().is_some_and(|s| s.contains('.'))
        }),
        ("sequence", |v| v.as_u64().is_some_and(|s| s >= 1)),
        ("lsn", |v| v.as_u64().is_some()),
        ("commit_ts", |v| matches!(v, Value::Ext(-1, _))),
    ];
    for (name, ok) in checks {
        match field(name) {
            None => return Some(format!("no `{name}`")),
            Some(v) if !ok(v) => return Some(format!("`{name}` is {v}")),
            Some(_) => {}
        }
    }
    let op = field("op").and_then(|v| v.as_str()).unwrap_or_default();
    (!ops.contains(&op)).then(|| format!("unknown op {op}"))
}

/// The `op` of an envelope.
fn op_of(payload: &[u8]) -> Option<String> {
    let Ok(Value::Map(fields)) = rmpv::decode::read_value(&mut &payload[..]) else {
        return None;
    };
    fields
        .into_iter()
        .find(|(k, _)| k.as_str() == Some("op"))
        .and_then(|(_, v)| v.as_str().map(String::from))
}

/// Wait until nothing new arrived for `quiet`.
async fn settle(received: &Received, quiet: Duration) {
    let mut last = usize::MAX;
    loop {
        let now = received.lock().unwrap().len();
        if now == last {
            return;
        }
        last = now;
        tokio::time::sleep(quiet).await;
    }
}

/// Changes of both tables: 50 orders from `from` inserted, every third updated, one
/// deleted; 10 accounts inserted and one updated.
async fn changes(db: &tokio_postgres::Client, from: i64) {
    exec(
        db,
        &format!(
            "INSERT INTO orders SELECT g, 'o' || g FROM generate_series({from}, {from} + 49) g;
             UPDATE orders SET note = note || '!' WHERE id % 3 = 0;
             DELETE FROM orders WHERE id = {from} + 7;
             INSERT INTO acct SELECT g, g * 10 FROM generate_series({from}, {from} + 9) g;
             UPDATE acct SET balance = balance + 1 WHERE id = {from};"
        ),
    )
    .await;
}

/// Two tables, `orders` (tracked) with rows before walcast starts, and `acct` in
/// column mode.
async fn two_tables(s: &Servers) -> tokio_postgres::Client {
    let db = s.pg.client().await;
    install_sequence_helper(&db).await;
    exec(
        &db,
        "CREATE TABLE orders (id bigint PRIMARY KEY, note text);
         CREATE TABLE acct (id bigint PRIMARY KEY, balance bigint);
         SELECT walcast_install_sequence('acct');
         INSERT INTO orders SELECT g, 'before' FROM generate_series(1000, 1019) g;
         CREATE PUBLICATION walcast FOR TABLE orders, acct;",
    )
    .await;
    db
}

fn spawn(s: &Servers) -> Walcast {
    let mut a = RunArgs::new(s, "walcast", "walcast");
    a.extra = [
        "--heartbeat-interval",
        "1",
        "--status-interval",
        "0.2",
        "--column-sequence",
        "public.acct=walcast_seq",
    ]
    .map(String::from)
    .to_vec();
    Walcast::spawn(a)
}

/// A re-snapshot of `orders`, as `walcast snapshot` asks for it, until it is done.
async fn resnapshot(s: &Servers, w: &Walcast) {
    let before = w.log().matches("snapshot complete").count();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_walcast"))
        .args(["snapshot", "public.orders", "--nats-url", &s.nats.url()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    poll_until("the re-snapshot", WAIT, || async {
        w.log().matches("snapshot complete").count() > before
    })
    .await;
}

/// Column-mode refetches (a row, a missing one): answered on the requester's inbox.
async fn refetch(s: &Servers) {
    let client = async_nats::connect(s.nats.url()).await.unwrap();
    let ask = |key| walcast::client::refetch_from_walcast(&client, "walcast", key, WAIT);
    assert_eq!(ask("public.acct:100").await.unwrap().key, "public.acct:100");
    assert!(ask("public.acct:99999").await.is_err());
}

/// Every message received is an envelope; how many, and how many snapshot ones.
fn check_all_envelopes(received: &[(String, Vec<u8>)]) -> (usize, usize) {
    let bad: Vec<String> = received
        .iter()
        .filter_map(|(subject, payload)| {
            not_an_envelope(payload).map(|why| format!("{subject}: {why}"))
        })
        .collect();
    assert!(
        bad.is_empty(),
        "messages under walcast.> that are no envelope: {bad:#?}"
    );
    let snapshots = received
        .iter()
        .filter(|(_, p)| op_of(p).as_deref() == Some("snapshot"))
        .count();
    (received.len(), snapshots)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_subscriber_of_the_prefix_receives_only_envelopes() {
    let s = servers();
    let db = two_tables(&s).await;
    let received = plain_subscriber(&s.nats.url()).await;
    // A start (with its initial snapshot), changes, kill -9, a restart, more changes.
    let mut w = spawn(&s);
    w.wait_ready().await;
    changes(&db, 1).await;
    wait_caught_up(&db, &w, WAIT).await;
    w.child.start_kill().unwrap();
    w.wait_exit(WAIT).await;
    let mut w = spawn(&s);
    w.wait_ready().await;
    changes(&db, 100).await;
    exec(&db, "TRUNCATE orders").await;
    changes(&db, 200).await;
    // Heartbeats come back through the stream (one a second).
    poll_until("a heartbeat", WAIT, || async {
        let age = w.metric("walcast_heartbeat_age_seconds").await;
        age.unwrap_or(0.0) > 0.0
    })
    .await;
    resnapshot(&s, &w).await;
    refetch(&s).await;
    wait_caught_up(&db, &w, WAIT).await;
    settle(&received, Duration::from_millis(500)).await;
    let (count, snapshots) = check_all_envelopes(&received.lock().unwrap());
    println!("plain subscriber of walcast.>: {count} messages, all envelopes, {snapshots} of them snapshot ones");
    assert!(count >= 150, "only {count} messages");
    // The initial snapshot's 20 rows, less the (at most 6) the first changes' update
    // overtakes while it reads; the re-snapshot publishes only rows whose key's last
    // envelope differs, which after the writes above may be none.
    assert!(snapshots >= 14, "only {snapshots} snapshot envelopes");
}

/// A least-privilege user from before the permission check asked the server (no
/// `$SYS.REQ.USER.INFO` in its allow list) still runs walcast: the check is skipped
/// with a warning, and no permission error is logged.
#[tokio::test]
async fn a_user_that_may_not_ask_for_its_permissions_still_runs() {
    let conf = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/nats/walcast-user.conf"
    ))
    .unwrap()
    .replace("\"$SYS.REQ.USER.INFO\",", "")
    .replace("change-me", "Old-Conf-1");
    assert!(!conf.contains("USER.INFO"), "{conf}");
    let mut s = servers();
    s.nats = walcast::testing::NatsServer::start_with_config(&conf).unwrap();
    let db = s.pg.client().await;
    exec(
        &db,
        "CREATE TABLE t (id int PRIMARY KEY); CREATE PUBLICATION walcast FOR TABLE t;",
    )
    .await;
    let mut args = RunArgs::new(&s, "walcast", "walcast");
    args.nats_url = format!("nats://walcast:Old-Conf-1@127.0.0.1:{}", s.nats.port);
    let mut w = Walcast::spawn(args);
    w.wait_ready().await;
    exec(&db, "INSERT INTO t VALUES (1)").await;
    wait_caught_up(&db, &w, WAIT).await;
    let log = w.log();
    assert!(
        log.contains("cannot read walcast's NATS permissions"),
        "{log}"
    );
    assert!(!log.contains("ERROR"), "{log}");
}
