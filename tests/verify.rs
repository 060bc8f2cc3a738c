//! `walcast verify` (issue 22, item 2): every row against its key's last envelope in
//! the stream, against real servers: all equal after a snapshot; rows changed behind
//! walcast's back reported as differing, missing or gone (exit 1, `--json`);
//! `--repair` fixes them; a writer running during verify gives no false difference;
//! without the stream it is an error (exit 2).

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use walcast::testing::NatsServer;

const WAIT: Duration = Duration::from_secs(120);

/// What a `walcast verify` run printed.
struct Verified {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Verified {
    /// The `--json` reports, by table.
    fn tables(&self) -> HashMap<String, serde_json::Value> {
        self.stdout
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap_or_else(|e| panic!("{e}: {l}"))
            })
            .map(|r| (r["table"].as_str().unwrap().to_string(), r))
            .collect()
    }
}

impl std::fmt::Display for Verified {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\nstdout:\n{}\nstderr:\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// `walcast verify` against `s` with these arguments, to its end.
async fn verify(s: &Servers, args: &[&str]) -> Verified {
    verify_within(s, args, WAIT).await
}

/// [`verify`], ending within `within`.
async fn verify_within(s: &Servers, args: &[&str], within: Duration) -> Verified {
    let out = tokio::time::timeout(
        within,
        tokio::process::Command::new(env!("CARGO_BIN_EXE_walcast"))
            .args([
                "verify",
                "--postgres-url",
                &s.pg.url(),
                "--nats-url",
                &s.nats.url(),
            ])
            .args(args)
            .stdin(std::process::Stdio::null())
            .output(),
    )
    .await
    .expect("verify did not end in time")
    .unwrap();
    Verified {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The counts of a table's report: (rows, equal, differing, missing, gone, markers).
fn counts(report: &serde_json::Value) -> [u64; 6] {
    ["rows", "equal", "differing", "missing", "gone", "markers"].map(|k| {
        report[k]
            .as_u64()
            .unwrap_or_else(|| panic!("{k} in {report}"))
    })
}

fn args(s: &Servers) -> RunArgs<'static> {
    RunArgs::new(s, "walcast", "walcast").args(&["--status-interval", "0.2"])
}

/// walcast started on `s`, its snapshot complete and confirmed.
async fn snapshotted(s: &Servers, db: &tokio_postgres::Client, extra: &[&str]) -> Walcast {
    let w = Walcast::start(args(s).args(extra)).await;
    w.wait_for_log("snapshot complete", 1, WAIT).await;
    wait_caught_up(db, &w, WAIT).await;
    w
}

/// A table `s` of `rows` rows of many types (NaN floats, numerics, JSON, times,
/// bytes, arrays), and the publication.
const TYPED_TABLE: &str = "
    CREATE TABLE s (id bigint PRIMARY KEY, version int NOT NULL, pad text, f float8, r real,
                    n numeric, j jsonb, ts timestamptz, d date, b bytea, a int[]);
    INSERT INTO s SELECT g, 0, 'row ' || g,
        CASE WHEN g % 7 = 0 THEN 'NaN'::float8 ELSE g / 3.0 END, (g / 7.0)::real,
        g * 1.10, jsonb_build_object('g', g, 'x', 0.1, 'big', 3.141592653589793238462643383279),
        '2024-01-01 00:00:00+00'::timestamptz + g * interval '1 second', '2024-02-29',
        decode(md5(g::text), 'hex'), ARRAY[g, NULL, 3]
    FROM generate_series(1, ROWS) g;";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_key_is_equal_after_the_snapshot() {
    let (s, db) = with_sql(
        servers(),
        &format!(
            "{}
             CREATE TABLE c (a int, b text, v text, PRIMARY KEY (a, b));
             INSERT INTO c VALUES (1, 'x.y', 'dot'), (1, 'a b', 'space'), (2, '', 'empty'),
                                  (3, repeat('k', 300), 'hashed subject');
             CREATE TABLE col (id int PRIMARY KEY, v text);
             INSERT INTO col SELECT g, 'c' || g FROM generate_series(1, 50) g;
             CREATE TABLE big (id int PRIMARY KEY, doc text);
             INSERT INTO big SELECT 1, string_agg(md5(g::text), '') FROM generate_series(1, 40000) g;
             INSERT INTO big VALUES (2, 'small');
             CREATE PUBLICATION walcast FOR TABLE s, c, col, big;",
            TYPED_TABLE.replace("ROWS", "3000")
        ),
    )
    .await;
    install_sequence_helper(&db).await;
    exec(&db, "SELECT walcast_install_sequence('public.col')").await;
    // The 1.3 MB row of `big` is published as a too-large marker.
    let column = [
        "--column-sequence",
        "public.col=walcast_seq",
        "--oversize",
        "marker",
    ];
    let w = snapshotted(&s, &db, &column).await;
    // Changes through the stream after the snapshot, a truncate among them.
    exec(
        &db,
        "UPDATE s SET version = 1, pad = NULL WHERE id <= 100;
         DELETE FROM s WHERE id BETWEEN 101 AND 110;
         UPDATE col SET v = 'changed' WHERE id <= 5;
         TRUNCATE c;
         INSERT INTO c VALUES (9, 'after', 'truncate'), (3, repeat('k', 300), 'hashed again');",
    )
    .await;
    wait_caught_up(&db, &w, WAIT).await;

    let all = verify(
        &s,
        &[&column[..], &["--json", "--chunk-rows", "700"]].concat(),
    )
    .await;
    assert_eq!(all.code, 0, "{all}");
    let tables = all.tables();
    assert_eq!(
        counts(&tables["public.s"]),
        [2990, 2990, 0, 0, 0, 0],
        "{all}"
    );
    assert_eq!(counts(&tables["public.c"]), [2, 2, 0, 0, 0, 0], "{all}");
    assert_eq!(counts(&tables["public.big"]), [2, 1, 0, 0, 0, 1], "{all}");
    assert_eq!(
        tables["public.big"]["keys"]["markers"][0], "public.big:1",
        "{all}"
    );
    assert_eq!(counts(&tables["public.col"]), [50, 50, 0, 0, 0, 0], "{all}");
    assert_eq!(tables["public.s"]["streaming"], true);

    let one = verify(
        &s,
        &[&column[..], &["public.c", "--chunk-rows", "1"]].concat(),
    )
    .await;
    assert_eq!(one.code, 0, "{one}");
    assert!(
        one.stdout.starts_with("public.c: 2 rows: 2 equal, 0 differing, 0 missing on the bus, 0 on the bus but gone from the table, 0 markers"),
        "{one}"
    );
    assert_eq!(one.stdout.lines().count(), 1, "{one}");

    let unknown = verify(&s, &["public.nope"]).await;
    assert_eq!(unknown.code, 2, "{unknown}");
    assert!(
        unknown
            .stderr
            .contains("public.nope is not a table of publication"),
        "{unknown}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_behind_walcasts_back_are_reported_and_repaired() {
    let (s, db) = with_sql(
        servers(),
        &format!(
            "{} CREATE PUBLICATION walcast FOR TABLE s;",
            TYPED_TABLE.replace("ROWS", "2000")
        ),
    )
    .await;
    let mut w = snapshotted(&s, &db, &[]).await;
    // Changes the stream never carries: the publication publishes no change for a
    // while (the table stays in it, so walcast does not re-snapshot it by itself).
    exec(&db, "ALTER PUBLICATION walcast SET (publish = '')").await;
    exec(
        &db,
        "DELETE FROM s WHERE id BETWEEN 1 AND 10;
         UPDATE s SET version = 7 WHERE id BETWEEN 11 AND 20;
         INSERT INTO s (id, version) SELECT g, 0 FROM generate_series(2001, 2005) g;",
    )
    .await;
    exec(
        &db,
        "ALTER PUBLICATION walcast SET (publish = 'insert, update, delete, truncate')",
    )
    .await;
    // A key's envelope purged from the stream (walcast holds the key's state; one whose
    // state it had to load would start again at sequence 1, which JetStream drops as a
    // duplicate for --duplicate-window).
    let js = async_nats::jetstream::new(async_nats::connect(s.nats.url()).await.unwrap());
    let stream = js.get_stream("WALCAST").await.unwrap();
    stream.purge().filter("walcast.public.s.100").await.unwrap();
    wait_caught_up(&db, &w, WAIT).await;

    let found = verify(&s, &["--json"]).await;
    println!("{found}");
    assert_eq!(found.code, 1, "{found}");
    let report = &found.tables()["public.s"];
    assert_eq!(counts(report), [1995, 1979, 10, 6, 10, 0], "{found}");
    assert_eq!(report["keys"]["differing"][0], "public.s:11", "{found}");
    assert!(
        report["keys"]["missing"]
            .as_array()
            .unwrap()
            .contains(&"public.s:100".into()),
        "{found}"
    );
    assert!(
        report["keys"]["missing"]
            .as_array()
            .unwrap()
            .contains(&"public.s:2005".into()),
        "{found}"
    );
    assert!(
        report["keys"]["gone"]
            .as_array()
            .unwrap()
            .contains(&"public.s:1".into()),
        "{found}"
    );
    assert!(report.get("repair").is_none());

    let repaired = verify(&s, &["--json", "--repair"]).await;
    println!("{repaired}");
    assert_eq!(repaired.code, 1, "{repaired}");
    let report = &repaired.tables()["public.s"];
    assert_eq!(
        report["repair"], "26 keys queued for re-snapshot",
        "{repaired}"
    );
    let what = w.with_log("a verify exiting 0 after the repair");
    let clean = poll_until(what, WAIT, || async {
        let v = verify(&s, &[]).await;
        if v.code == 0 {
            Ok(v)
        } else {
            Err(v.to_string())
        }
    })
    .await;
    assert!(
        clean.stdout.contains("public.s: 1995 rows: 1995 equal"),
        "{clean}"
    );
    assert!(w.log().contains("key re-snapshot requested"), "{}", w.log());

    // walcast stopped: a change still in the slot is a difference, and the report says
    // nothing streams.
    w.sigterm();
    assert!(w.wait_exit(WAIT).await.success(), "{}", w.log());
    exec(&db, "UPDATE s SET version = 8 WHERE id = 500").await;
    let stopped = verify(&s, &["--json"]).await;
    assert_eq!(stopped.code, 1, "{stopped}");
    let report = &stopped.tables()["public.s"];
    assert_eq!(counts(report)[2], 1, "{stopped}");
    assert_eq!(report["streaming"], false, "{stopped}");
    // Nobody to repair it: said in the report, and an error.
    let unrepaired = verify(&s, &["--repair"]).await;
    assert_eq!(unrepaired.code, 2, "{unrepaired}");
    assert!(
        unrepaired
            .stdout
            .contains("repair     failed: no running walcast answers on walcast_snapshot"),
        "{unrepaired}"
    );
}

/// Changes to random rows (updates, inserts, deletes; half of them on the first 1,000
/// rows) at about `per_s` a second until `stop`; counts them in `written`.
async fn writer(
    url: String,
    rows: i64,
    per_s: u64,
    stop: tokio::sync::watch::Receiver<bool>,
    written: Arc<AtomicU64>,
) {
    let (db, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next_new = rows + 1;
    let pause = Duration::from_micros(1_000_000 / per_s.max(1));
    while !*stop.borrow() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        // Half of the changes on the first rows, which verify reads first.
        let id = if x % 4 < 2 {
            (x >> 8) % 1000
        } else {
            x % rows as u64
        } as i64
            + 1;
        let sql = match x % 10 {
            0 => {
                next_new += 1;
                format!("INSERT INTO s (id, version) VALUES ({next_new}, 0)")
            }
            1 => format!("DELETE FROM s WHERE id = {id}"),
            _ => format!("UPDATE s SET version = version + 1, f = random() WHERE id = {id}"),
        };
        db.batch_execute(&sql).await.unwrap();
        written.fetch_add(1, Ordering::SeqCst);
        // The rate is the point.
        tokio::time::sleep(pause).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_during_verify_gives_no_false_difference_and_repairs_go_through() {
    let rows = 20_000;
    let (s, db) = with_sql(
        servers(),
        &format!(
            "{} CREATE PUBLICATION walcast FOR TABLE s;",
            TYPED_TABLE.replace("ROWS", &rows.to_string())
        ),
    )
    .await;
    let w = snapshotted(&s, &db, &[]).await;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let written = Arc::new(AtomicU64::new(0));
    let writing = tokio::spawn(writer(s.pg.url(), rows, 400, stopped, written.clone()));
    poll_until("the writer to start", WAIT, || async {
        written.load(Ordering::SeqCst) >= 50
    })
    .await;
    let mut rechecked = 0;
    for _ in 0..2 {
        let before = written.load(Ordering::SeqCst);
        let v = verify(&s, &["--json", "--chunk-rows", "500"]).await;
        let during = written.load(Ordering::SeqCst) - before;
        println!(
            "verify with {during} changes written meanwhile: {}",
            v.stdout.trim()
        );
        assert_eq!(v.code, 0, "{during} changes meanwhile; {v}; {}", w.log());
        assert!(
            during >= 100,
            "the writer wrote {during} changes during verify"
        );
        let report = &v.tables()["public.s"];
        assert!(
            report["equal"].as_u64().unwrap() + 50 >= report["rows"].as_u64().unwrap(),
            "{v}"
        );
        rechecked += report["rechecked"].as_u64().unwrap();
    }
    // Rows changed between verify's read and its look at the stream: looked at again,
    // found equal.
    assert!(
        rechecked > 0,
        "no key was looked at twice: the race was not exercised"
    );

    // Keys' envelopes purged from the stream, repaired by key while the writer goes on.
    let js = async_nats::jetstream::new(async_nats::connect(s.nats.url()).await.unwrap());
    let stream = js.get_stream("WALCAST").await.unwrap();
    for id in 15_001..15_021 {
        let subject = format!("walcast.public.s.{id}");
        stream.purge().filter(subject).await.unwrap();
    }
    let found = verify(&s, &["--json", "--repair"]).await;
    println!("{found}");
    assert_eq!(found.code, 1, "{found}");
    let report = &found.tables()["public.s"];
    let [_, _, differing, missing, gone, _] = counts(report);
    assert!(differing + missing + gone > 0, "{found}");
    let queued = format!("{} keys queued for re-snapshot", differing + missing + gone);
    assert_eq!(report["repair"], queued.as_str(), "{found}");
    poll_until(
        w.with_log("a verify exiting 0 after the repair"),
        WAIT,
        || async {
            let v = verify(&s, &["--chunk-rows", "500"]).await;
            if v.code == 0 {
                Ok(())
            } else {
                Err(v.to_string())
            }
        },
    )
    .await;
    stop.send(true).unwrap();
    writing.await.unwrap();
}

#[tokio::test]
async fn without_the_stream_verify_is_an_error() {
    let pg = walcast::testing::PgServer::start(Default::default()).unwrap();
    let nats = NatsServer::start_with(false).unwrap();
    let s = Servers { pg, nats };
    let (s, _db) = with_sql(
        s,
        "CREATE TABLE t (id int PRIMARY KEY); CREATE PUBLICATION walcast FOR TABLE t;",
    )
    .await;
    let v = verify(&s, &[]).await;
    assert_eq!(v.code, 2, "{v}");
    assert!(v.stderr.contains("verify needs the stream"), "{v}");
    let core = verify(&s, &["--delivery", "core"]).await;
    assert_eq!(core.code, 2, "{core}");
    assert!(core.stderr.contains("--delivery core has none"), "{core}");
}

/// The rate quoted in the README: `cargo test --release --test verify -- --ignored
/// --nocapture verify_rate` (WALCAST_VERIFY_ROWS rows, 1,000,000 by default).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: minutes"]
async fn verify_rate_on_a_large_table() {
    let rows: u64 = std::env::var("WALCAST_VERIFY_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let (s, db) = with_sql(
        servers(),
        &format!(
            "CREATE TABLE s (id bigint PRIMARY KEY, version int NOT NULL, pad text, at timestamptz);
             INSERT INTO s SELECT g, 0, 'row ' || g, now() FROM generate_series(1, {rows}) g;
             ANALYZE s; CREATE PUBLICATION walcast FOR TABLE s;"
        ),
    )
    .await;
    let _w = snapshotted(&s, &db, &["--snapshot-chunk-rows", "10000"]).await;
    let nats_pid = s.nats.pid().unwrap();
    let nats_cpu = walcast::testing::cpu_seconds(nats_pid);
    let (verify_cpu, started) = (children_cpu_seconds(), Instant::now());
    let v = verify_within(&s, &["--json"], Duration::from_secs(1800)).await;
    let took = started.elapsed().as_secs_f64();
    let verify_cpu = children_cpu_seconds() - verify_cpu;
    let nats_cpu = walcast::testing::cpu_seconds(nats_pid) - nats_cpu;
    assert_eq!(v.code, 0, "{v}");
    println!(
        "verify of {rows} rows: {took:.1} s, {:.0} rows/s; CPU: verify {verify_cpu:.1} s, nats-server {nats_cpu:.1} s; report: {}",
        rows as f64 / took,
        v.stdout.trim()
    );
}

/// CPU time (user + system, seconds) of the children this process waited for.
fn children_cpu_seconds() -> f64 {
    // SAFETY: getrusage writes into the struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage);
        usage
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}
