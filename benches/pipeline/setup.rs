//! The bench's servers and schema: a throwaway PostgreSQL and nats-server, the tables,
//! publications and procedures every scenario uses, and the handles the parts share.

use std::sync::Arc;

use walcast::testing::{NatsCluster, NatsServer, PgOptions, PgServer};
use walcast::wire::Lsn;

use crate::{DynError, Settings};

/// The servers, two database connections (one for the bench's statements, one for
/// the slot watcher's polls) and the walcast binary under test; a 3-node JetStream
/// cluster too when `BENCH_ONLY` asks for `r3`.
pub struct Bench {
    pub pg: PgServer,
    pub nats: NatsServer,
    pub cluster: Option<NatsCluster>,
    pub db: tokio_postgres::Client,
    pub watch_db: Arc<tokio_postgres::Client>,
    pub walcast_bin: String,
    pub settings: Settings,
}

/// Tables, publications and the procedures that write each backlog. Every loop
/// iteration of a procedure changes exactly one row, so a backlog of `n` iterations
/// is `n` row changes.
const SCHEMA: &str = "
CREATE TABLE bench_narrow (id int PRIMARY KEY, v bigint NOT NULL);
INSERT INTO bench_narrow SELECT g, 0 FROM generate_series(1, 10000) g;
CREATE TABLE bench_wide (id int PRIMARY KEY, amount numeric(18,4), doc jsonb, ref uuid,
    tags text[], blob bytea, at timestamptz, body text);
ALTER TABLE bench_wide ALTER COLUMN body SET STORAGE EXTERNAL;
CREATE TABLE bench_old (LIKE bench_wide INCLUDING ALL);
ALTER TABLE bench_old ALTER COLUMN body SET STORAGE EXTERNAL;
CREATE TABLE bench_big (id int PRIMARY KEY, v int);
CREATE PUBLICATION bench_narrow FOR TABLE bench_narrow;
CREATE PUBLICATION bench_mixed FOR TABLE bench_narrow, bench_wide;
CREATE PUBLICATION bench_existing FOR TABLE bench_narrow, bench_old;
CREATE PUBLICATION bench_big FOR TABLE bench_big;
CREATE FUNCTION wide_row(k int, salt int) RETURNS bench_wide LANGUAGE sql AS $$
  SELECT k, k * 1.5, jsonb_build_object('k', k, 'tags', jsonb_build_array(1, 2)),
    md5(k::text)::uuid, ARRAY['a', k::text], decode(md5(k::text), 'hex'), now(),
    repeat(md5((k + salt)::text), 128)::text $$;
CREATE PROCEDURE updates(n int, per_tx int) LANGUAGE plpgsql AS $$
BEGIN
  FOR i IN 1..n LOOP
    UPDATE bench_narrow SET v = v + 1 WHERE id = (i % 10000) + 1;
    IF i % per_tx = 0 THEN COMMIT; END IF;
  END LOOP;
END $$;
CREATE PROCEDURE mixed(n int) LANGUAGE plpgsql AS $$
DECLARE k int;
BEGIN
  FOR i IN 1..n LOOP
    k := (i * 7919) % 5000;
    IF i % 2 = 0 THEN
      UPDATE bench_narrow SET v = v + 1 WHERE id = k + 1;
    ELSIF NOT EXISTS (SELECT 1 FROM bench_wide WHERE id = k) THEN
      INSERT INTO bench_wide SELECT * FROM wide_row(k, 0);
    ELSIF i % 3 = 0 THEN
      DELETE FROM bench_wide WHERE id = k;
    ELSE
      UPDATE bench_wide SET amount = amount + 1, doc = doc || '{\"u\": 1}' WHERE id = k;
    END IF;
    IF i % 10 = 0 THEN COMMIT; END IF;
  END LOOP;
END $$;
-- (d): half the changes on the narrow table, half on bench_old's 1,000 keys (rows
-- that exist before the slot): of those, 10 % delete (or insert a deleted key again),
-- the updates change the 4 kB body 30 % of the time and leave it unchanged 70 %.
CREATE PROCEDURE existing(n int) LANGUAGE plpgsql AS $$
DECLARE k int; w int;
BEGIN
  FOR i IN 1..n LOOP
    w := i / 2;
    k := (w * 7919) % 1000;
    IF i % 2 = 0 THEN
      UPDATE bench_narrow SET v = v + 1 WHERE id = (w * 31) % 10000 + 1;
    ELSIF NOT EXISTS (SELECT 1 FROM bench_old WHERE id = k) THEN
      INSERT INTO bench_old SELECT * FROM wide_row(k, i);
    ELSIF w % 100 < 10 THEN
      DELETE FROM bench_old WHERE id = k;
    ELSIF w % 100 < 37 THEN
      UPDATE bench_old SET amount = amount + 1, body = repeat(md5((k + i)::text), 128) WHERE id = k;
    ELSE
      UPDATE bench_old SET amount = amount + 1, doc = doc || '{\"u\": 1}' WHERE id = k;
    END IF;
    IF i % 10 = 0 THEN COMMIT; END IF;
  END LOOP;
END $$;
";

impl Bench {
    /// Start the servers and create the schema.
    pub async fn start(settings: Settings) -> Result<Bench, DynError> {
        let pg = PgServer::start(PgOptions {
            extra_conf: vec![
                "max_wal_size = '4GB'".into(),
                "checkpoint_timeout = '30min'".into(),
                "logical_decoding_work_mem = '256MB'".into(),
                // One slot per contender and repetition, created before each backlog.
                "max_replication_slots = 80".into(),
            ],
            ..Default::default()
        })?;
        let nats = NatsServer::start()?;
        let cluster = if settings.want("r3") {
            Some(NatsCluster::start(3)?)
        } else {
            None
        };
        let db = connect(&pg.url()).await?;
        let watch_db = Arc::new(connect(&pg.url()).await?);
        let b = Bench {
            pg,
            nats,
            cluster,
            db,
            watch_db,
            // BENCH_WALCAST_BIN: another build of walcast (to compare two commits).
            walcast_bin: std::env::var("BENCH_WALCAST_BIN")
                .unwrap_or_else(|_| env!("CARGO_BIN_EXE_walcast").to_string()),
            settings,
        };
        b.exec(SCHEMA).await;
        Ok(b)
    }

    pub async fn exec(&self, sql: &str) {
        self.db
            .batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    }

    /// Create logical slots (as an operator would: `pg_create_logical_replication_slot`).
    pub async fn make_slots(&self, names: &[String], plugin: &str) {
        for n in names {
            self.exec(&format!(
                "SELECT pg_create_logical_replication_slot('{n}', '{plugin}')"
            ))
            .await;
        }
    }

    pub async fn drop_slot(&self, name: &str) {
        let _ = self
            .db
            .batch_execute(&format!("SELECT pg_drop_replication_slot('{name}')"))
            .await;
    }

    /// libpq's key=value form (the peers and `pg_recvlogical` take it).
    pub fn pg_kv_url(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres",
            self.pg.port
        )
    }

    pub async fn current_lsn(&self) -> Lsn {
        walcast::testing::current_wal_lsn(&self.db).await
    }

    /// CPU seconds nats-server used so far.
    pub fn nats_cpu(&self) -> f64 {
        self.nats.pid().map_or(0.0, walcast::testing::cpu_seconds)
    }

    /// The nats-server's pid (0 when unknown).
    pub fn nats_pid(&self) -> u32 {
        self.nats.pid().unwrap_or(0)
    }

    /// The NATS URL a run with this many stream replicas uses: 0 is the bench's single
    /// server, 1 or more the cluster's nodes (all of them, comma-separated).
    pub fn nats_url(&self, replicas: u8) -> String {
        match (&self.cluster, replicas) {
            (Some(cluster), 1..) => cluster.urls(),
            _ => self.nats.url(),
        }
    }

    /// The nats-server whose CPU a run samples: the bench's server, or the
    /// cluster's first node.
    pub fn nats_pid_for(&self, replicas: u8) -> u32 {
        match (&self.cluster, replicas) {
            (Some(cluster), 1..) => cluster.nodes[0].pid().unwrap_or(0),
            _ => self.nats_pid(),
        }
    }

    /// Remove JetStream streams (missing ones are fine).
    pub async fn delete_streams(&self, names: &[String]) {
        self.delete_streams_at(&self.nats.url(), names).await;
    }

    /// Remove JetStream streams of the server(s) at `url`.
    pub async fn delete_streams_at(&self, url: &str, names: &[String]) {
        let first = url.split(',').next().unwrap_or(url).to_string();
        let Ok(client) = async_nats::connect(first).await else {
            return;
        };
        let js = async_nats::jetstream::new(client);
        for name in names {
            let _ = js.delete_stream(name).await;
        }
    }

    /// Wait until no process holds `slot` (a walsender outlives its client briefly).
    pub async fn wait_slot_free(&self, slot: &str) {
        for _ in 0..500 {
            let active = self
                .db
                .query_opt(
                    "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1 AND active",
                    &[&slot],
                )
                .await
                .ok()
                .flatten();
            if active.is_none() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
}

async fn connect(url: &str) -> Result<tokio_postgres::Client, DynError> {
    let (db, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    Ok(db)
}
