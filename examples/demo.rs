//! `make demo`: walcast end to end.
//!
//! Starts a throwaway PostgreSQL (wal_level=logical) and nats-server unless
//! `WALCAST_POSTGRES_URL` / `WALCAST_NATS_URL` are given, creates a demo table and
//! publication, runs the real `walcast` binary, makes some writes, and prints what a
//! NATS subscriber receives, decoded. It cleans up what it created (table,
//! publication and slot: a forgotten slot would retain WAL forever).

use std::process::Stdio;
use std::time::{Duration, Instant};

use futures::StreamExt;
use walcast::testing::{free_port, NatsServer, PgOptions, PgServer};
use walcast::wire::codec;
use walcast::wire::Lsn;

const TABLE: &str = "walcast_demo_accounts";
const PUBLICATION: &str = "walcast_demo";
const SLOT: &str = "walcast_demo";

type DynError = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), DynError> {
    let mut _pg = None;
    let mut _nats = None;
    let pg_url = match std::env::var("WALCAST_POSTGRES_URL") {
        Ok(url) => url,
        Err(_) => {
            println!("== starting a throwaway PostgreSQL (wal_level=logical)");
            let pg = PgServer::start(PgOptions::default())?;
            let url = pg.url();
            _pg = Some(pg);
            url
        }
    };
    let nats_url = match std::env::var("WALCAST_NATS_URL") {
        Ok(url) => url,
        Err(_) => {
            println!("== starting a throwaway nats-server with JetStream");
            let n = NatsServer::start()?;
            let url = n.url();
            _nats = Some(n);
            url
        }
    };

    let (db, conn) = tokio_postgres::connect(&pg_url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    db.batch_execute(&format!(
        "DROP TABLE IF EXISTS {TABLE};
         CREATE TABLE {TABLE} (id int PRIMARY KEY, owner text NOT NULL, balance numeric(12,2),
             tags text[], meta jsonb, updated_at timestamptz DEFAULT now());
         ALTER TABLE {TABLE} REPLICA IDENTITY FULL;
         DROP PUBLICATION IF EXISTS {PUBLICATION};
         CREATE PUBLICATION {PUBLICATION} FOR TABLE {TABLE};"
    ))
    .await?;

    let walcast_bin = std::env::current_exe()?
        .parent()
        .and_then(|examples| examples.parent())
        .map(|dir| dir.join("walcast"))
        .ok_or("cannot locate the walcast binary")?;
    let metrics_port = free_port();
    println!(
        "== running {} run (metrics on 127.0.0.1:{metrics_port})",
        walcast_bin.display()
    );
    let mut walcast = tokio::process::Command::new(&walcast_bin)
        .args(["run", "--postgres-url", &pg_url, "--nats-url", &nats_url])
        .args(["--publication", PUBLICATION, "--slot", SLOT])
        .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}")])
        .env("WALCAST_LOG", "warn")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;

    let outcome = run_demo(&db, &nats_url, metrics_port, &mut walcast).await;

    if let Some(pid) = walcast.id() {
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    }
    let status = tokio::time::timeout(Duration::from_secs(30), walcast.wait()).await;
    println!(
        "== walcast stopped on SIGTERM: {:?}",
        status.ok().and_then(Result::ok)
    );
    let cleanup = format!(
        "DROP PUBLICATION IF EXISTS {PUBLICATION}; DROP TABLE IF EXISTS {TABLE};
         SELECT pg_drop_replication_slot('{SLOT}') FROM pg_replication_slots WHERE slot_name = '{SLOT}';"
    );
    // The walsender may need a moment to release the slot.
    for _ in 0..50 {
        if db.batch_execute(&cleanup).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    outcome
}

async fn run_demo(
    db: &tokio_postgres::Client,
    nats_url: &str,
    metrics_port: u16,
    walcast: &mut tokio::process::Child,
) -> Result<(), DynError> {
    let nats = async_nats::connect(nats_url).await?;
    let subject = format!("walcast.public.{TABLE}.*");
    let mut sub = nats.subscribe(subject.clone()).await?;
    nats.flush().await?;

    // Wait for /readyz.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = walcast.try_wait()? {
            return Err(format!("walcast exited early with {status}").into());
        }
        if ready(metrics_port).await {
            break;
        }
        if Instant::now() > deadline {
            return Err("walcast did not become ready within 60 s".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("== walcast is streaming; subscribed to {subject}\n");

    let writes = [
        format!("INSERT INTO {TABLE} (id, owner, balance, tags, meta) VALUES (1, 'ada', 100.00, '{{vip,early}}', '{{\"tier\": 1}}'), (2, 'bob', 5.50, NULL, NULL)"),
        format!("UPDATE {TABLE} SET balance = balance - 25.25 WHERE id = 1"),
        format!("UPDATE {TABLE} SET owner = 'bob.smith', tags = '{{new}}' WHERE id = 2"),
        format!("DELETE FROM {TABLE} WHERE id = 2"),
    ];
    for sql in &writes {
        println!("SQL> {sql}");
        db.batch_execute(sql).await?;
    }
    println!();
    let mut first = None;
    for n in 0..5 {
        let msg = tokio::time::timeout(Duration::from_secs(20), sub.next())
            .await
            .map_err(|_| format!("only {n} of 5 envelopes arrived within 20 s"))?
            .ok_or("subscription closed")?;
        let env = codec::decode(&msg.payload)?;
        println!(
            "{} {:<6} seq={} schema={} lsn={} value={}",
            msg.subject,
            env.op.as_str(),
            env.sequence,
            env.schema_version,
            Lsn(env.lsn),
            codec::to_json(&env.value)
        );
        first.get_or_insert((msg.payload.len(), env));
    }
    if let Some((bytes, env)) = first {
        println!("\n== the first envelope in full ({bytes} bytes of MessagePack), as JSON:");
        println!("{}", serde_json::to_string_pretty(&env.to_json())?);
    }
    Ok(())
}

async fn ready(port: u16) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    if s.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .is_err()
    {
        return false;
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out).await;
    out.starts_with("HTTP/1.1 200")
}
