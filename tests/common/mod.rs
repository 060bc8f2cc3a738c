//! Shared test harness: real servers (see `walcast::testing`) and the real binary.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use futures::StreamExt;
use walcast::testing::{free_port, NatsServer, PgOptions, PgServer};
use walcast::wire::Envelope;

pub struct Servers {
    pub pg: PgServer,
    pub nats: NatsServer,
}

pub fn servers() -> Servers {
    servers_with(PgOptions::default())
}

/// Servers with a one-column table `t` and the publication `walcast` over it.
pub async fn servers_with_table(opts: PgOptions) -> (Servers, tokio_postgres::Client) {
    let s = servers_with(opts);
    let db = s.pg.client().await;
    exec(
        &db,
        "CREATE TABLE t (id int PRIMARY KEY); CREATE PUBLICATION walcast FOR TABLE t;",
    )
    .await;
    (s, db)
}

pub fn servers_with(opts: PgOptions) -> Servers {
    let pg = PgServer::start(opts).unwrap_or_else(|e| panic!("{e}"));
    let nats = NatsServer::start().unwrap_or_else(|e| panic!("{e}"));
    Servers { pg, nats }
}

/// A running `walcast run` process.
pub struct Walcast {
    pub child: tokio::process::Child,
    pub metrics_port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

pub struct RunArgs<'a> {
    pub pg_url: String,
    pub nats_url: String,
    pub publication: &'a str,
    pub slot: &'a str,
    pub extra: Vec<String>,
}

impl<'a> RunArgs<'a> {
    pub fn new(s: &Servers, publication: &'a str, slot: &'a str) -> Self {
        RunArgs {
            pg_url: s.pg.url(),
            nats_url: s.nats.url(),
            publication,
            slot,
            extra: vec![],
        }
    }
}

impl Walcast {
    pub fn spawn(args: RunArgs<'_>) -> Walcast {
        Self::spawn_with_env(args, &[])
    }

    /// Spawn with extra environment variables (they win over the defaults here).
    pub fn spawn_with_env(args: RunArgs<'_>, env: &[(&str, &str)]) -> Walcast {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("walcast.log");
        let metrics_port = free_port();
        let file = std::fs::File::create(&log).unwrap();
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_walcast"))
            .arg("run")
            .args(["--postgres-url", &args.pg_url])
            .args(["--nats-url", &args.nats_url])
            .args(["--publication", args.publication])
            .args(["--slot", args.slot])
            .args(if args.extra.iter().any(|a| a == "--metrics-addr") {
                vec![]
            } else {
                vec![
                    "--metrics-addr".to_string(),
                    format!("127.0.0.1:{metrics_port}"),
                ]
            })
            .args(&args.extra)
            .env("WALCAST_LOG", "info,walcast=debug")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .expect("spawning walcast");
        Walcast {
            child,
            metrics_port,
            log,
            _dir: dir,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub async fn http_get(&self, path: &str) -> Option<(u16, String)> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", self.metrics_port))
            .await
            .ok()?;
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).await.ok()?;
        let code = out.split_whitespace().nth(1)?.parse().ok()?;
        let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
        Some((code, body))
    }

    /// Wait until `/readyz` answers 200 (streaming and NATS connected).
    pub async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "walcast exited with {status} before becoming ready:\n{}",
                    self.log()
                );
            }
            if let Some((200, _)) = self.http_get("/readyz").await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("walcast not ready within 60 s:\n{}", self.log());
    }

    /// The value of a metric line without labels.
    pub async fn metric(&self, name: &str) -> Option<f64> {
        let (_, body) = self.http_get("/metrics").await?;
        body.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
    }

    pub fn sigterm(&self) {
        if let Some(pid) = self.child.id() {
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        }
    }

    pub async fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        tokio::time::timeout(timeout, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("walcast did not exit within {timeout:?}:\n{}", self.log()))
            .unwrap()
    }
}

/// Run `walcast run` with these arguments to its end; (exit code, stderr).
pub async fn run_to_exit(args: &[&str]) -> (i32, String) {
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_walcast"))
            .args(args)
            .stdin(Stdio::null())
            .output(),
    )
    .await
    .expect("walcast did not exit within 60 s")
    .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A NATS subscription collecting decoded envelopes.
pub struct Collector {
    sub: std::pin::Pin<Box<dyn futures::Stream<Item = walcast::client::Received> + Send>>,
    pub received: Vec<(String, Envelope, Vec<u8>)>,
}

impl Collector {
    pub async fn new(nats_url: &str, subject: &str) -> Collector {
        let client = walcast::client::connect(nats_url)
            .await
            .expect("connecting to NATS");
        let sub = client.subscribe(subject.to_string()).await.unwrap();
        client.flush().await.unwrap();
        Collector {
            sub: Box::pin(walcast::client::envelopes(sub)),
            received: vec![],
        }
    }

    /// Wait until `n` envelopes in all have arrived.
    pub async fn until(&mut self, n: usize, timeout: Duration) -> &[(String, Envelope, Vec<u8>)] {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.received.len() < n {
            match tokio::time::timeout_at(deadline, self.sub.next()).await {
                Ok(Some(msg)) => {
                    let env = msg
                        .envelope
                        .unwrap_or_else(|e| panic!("{}: not an envelope: {e}", msg.subject));
                    self.received
                        .push((msg.subject.to_string(), env, msg.payload.to_vec()));
                }
                Ok(None) => panic!("subscription closed"),
                Err(_) => panic!(
                    "got {} of {n} envelopes within {timeout:?}: {:#?}",
                    self.received.len(),
                    self.received
                        .iter()
                        .map(|(s, e, _)| (s, e.op, e.sequence))
                        .collect::<Vec<_>>()
                ),
            }
        }
        &self.received
    }

    /// Whatever arrives within `window`, without expecting a count.
    pub async fn collect_for(&mut self, window: Duration) {
        let deadline = tokio::time::Instant::now() + window;
        while let Ok(Some(msg)) = tokio::time::timeout_at(deadline, self.sub.next()).await {
            let env = msg
                .envelope
                .unwrap_or_else(|e| panic!("{}: not an envelope: {e}", msg.subject));
            self.received
                .push((msg.subject.to_string(), env, msg.payload.to_vec()));
        }
    }

    /// Nothing more arrives within `quiet`.
    pub async fn assert_quiet(&mut self, quiet: Duration) {
        if let Ok(Some(msg)) = tokio::time::timeout(quiet, self.sub.next()).await {
            panic!("unexpected envelope on {}: {:?}", msg.subject, msg.envelope);
        }
    }
}

pub async fn exec(client: &tokio_postgres::Client, sql: &str) {
    client
        .batch_execute(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
}

/// Install the column-mode helper (`sql/sequence_column.sql`) in the database.
pub async fn install_sequence_helper(db: &tokio_postgres::Client) {
    let sql = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/sql/sequence_column.sql"
    ))
    .unwrap();
    exec(db, &sql).await;
}
