//! Generated columns: on PostgreSQL 18 a publication with `publish_generated_columns =
//! stored` sends stored generated columns, and walcast publishes them, in the
//! snapshot's envelopes as in the stream's, under one schema version; before 18 they
//! are not sent, and envelopes lack them.

mod common;

use std::time::Duration;

use common::*;
use walcast::wire::codec::Envelope;

const WAIT: Duration = Duration::from_secs(60);

fn field(e: &Envelope, name: &str) -> Option<rmpv::Value> {
    e.value
        .as_map()?
        .iter()
        .find(|(k, _)| k.as_str() == Some(name))
        .map(|(_, v)| v.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_generated_columns_are_published_when_the_publication_includes_them() {
    let (s, db) = with_sql(
        servers(),
        "CREATE TABLE g (id int PRIMARY KEY, a int, twice int GENERATED ALWAYS AS (a * 2) STORED);
         INSERT INTO g (id, a) VALUES (1, 10);",
    )
    .await;
    let version: i32 = db
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await
        .unwrap()
        .get(0);
    let on_18 = version >= 180_000;
    let with = if on_18 {
        " WITH (publish_generated_columns = stored)"
    } else {
        ""
    };
    exec(
        &db,
        &format!("CREATE PUBLICATION walcast FOR TABLE g{with}"),
    )
    .await;
    let mut collector = Collector::new(&s.nats.url(), "walcast.public.g.*").await;
    let _w = Walcast::start(RunArgs::new(&s, "walcast", "walcast")).await;
    // The snapshot's envelope first (a change to the row before it would supersede it).
    collector.until(1, WAIT).await;
    exec(
        &db,
        "INSERT INTO g (id, a) VALUES (2, 21); UPDATE g SET a = 11 WHERE id = 1",
    )
    .await;
    let got = collector.until(3, WAIT).await;
    let twice: Vec<Option<rmpv::Value>> = got.iter().map(|(_, e, _)| field(e, "twice")).collect();
    if on_18 {
        // The snapshot's row, the insert, the update.
        let want = [20, 42, 22].map(|v| Some(rmpv::Value::from(v)));
        assert_eq!(twice, want, "{got:#?}");
        let versions: Vec<&str> = got
            .iter()
            .map(|(_, e, _)| e.schema_version.as_str())
            .collect();
        assert!(
            versions.windows(2).all(|w| w[0] == w[1]),
            "one schema version: {versions:?}"
        );
    } else {
        assert!(twice.iter().all(Option::is_none), "{got:#?}");
    }
}
