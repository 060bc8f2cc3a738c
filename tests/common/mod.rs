//! Shared test harness: real servers (see `walcast::testing`) and the real binary.
#![allow(dead_code)]

use std::fmt::Display;
use std::future::Future;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use futures::StreamExt;
use walcast::testing::{free_port, NatsServer, PgOptions, PgServer};
use walcast::wire::{Envelope, Lsn};

mod toast;
#[allow(unused_imports)]
pub use toast::*;

/// How often [`poll_until`] asks again.
const POLL_EVERY: Duration = Duration::from_millis(20);

/// What a [`poll_until`] condition answers: `true`, `Some(v)` or `Ok(v)` once the
/// awaited state is there; `false`, `None`, or `Err(seen)` with what it observed, while
/// it is not.
pub trait Awaited {
    type Value;
    fn reached(self) -> Result<Self::Value, Option<String>>;
}

impl Awaited for bool {
    type Value = ();
    fn reached(self) -> Result<(), Option<String>> {
        if self {
            Ok(())
        } else {
            Err(None)
        }
    }
}

impl<T> Awaited for Option<T> {
    type Value = T;
    fn reached(self) -> Result<T, Option<String>> {
        self.ok_or(None)
    }
}

impl<T, E: Display> Awaited for Result<T, E> {
    type Value = T;
    fn reached(self) -> Result<T, Option<String>> {
        self.map_err(|seen| Some(seen.to_string()))
    }
}

/// Ask `condition` every few milliseconds until it answers that `what` has come about,
/// and return its answer; after `timeout`, panic naming `what` and the last value the
/// condition observed. `what` is formatted only then (see [`Walcast::with_log`]).
pub async fn poll_until<A: Awaited, F: Future<Output = A>>(
    what: impl Display,
    timeout: Duration,
    mut condition: impl FnMut() -> F,
) -> A::Value {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let seen = match condition().await.reached() {
            Ok(value) => return value,
            Err(seen) => seen,
        };
        if tokio::time::Instant::now() >= deadline {
            match seen {
                Some(seen) => {
                    panic!("timed out after {timeout:?} (last seen: {seen}) waiting for {what}")
                }
                None => panic!("timed out after {timeout:?} waiting for {what}"),
            }
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

pub struct Servers {
    pub pg: PgServer,
    pub nats: NatsServer,
}

pub fn servers() -> Servers {
    servers_with(PgOptions::default())
}

/// Servers with a one-column table `t` and the publication `walcast` over it.
pub async fn servers_with_table(opts: PgOptions) -> (Servers, tokio_postgres::Client) {
    with_sql(
        servers_with(opts),
        "CREATE TABLE t (id int PRIMARY KEY); CREATE PUBLICATION walcast FOR TABLE t;",
    )
    .await
}

/// `s`, a client of its PostgreSQL, and `sql` (tables, publications, roles) run there.
pub async fn with_sql(s: Servers, sql: &str) -> (Servers, tokio_postgres::Client) {
    let db = s.pg.client().await;
    exec(&db, sql).await;
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

    /// These flags after the others.
    pub fn args(mut self, extra: &[&str]) -> Self {
        self.extra.extend(extra.iter().map(|a| a.to_string()));
        self
    }
}

impl Walcast {
    pub fn spawn(args: RunArgs<'_>) -> Walcast {
        Self::spawn_with_env(args, &[])
    }

    /// Spawn, then wait until it is ready.
    pub async fn start(args: RunArgs<'_>) -> Walcast {
        let mut w = Self::spawn(args);
        w.wait_ready().await;
        w
    }

    /// Spawn with extra environment variables (they win over the defaults here).
    pub fn spawn_with_env(args: RunArgs<'_>, env: &[(&str, &str)]) -> Walcast {
        let metrics_port = free_port();
        let mut argv: Vec<String> = [
            "run",
            "--postgres-url",
            &args.pg_url,
            "--nats-url",
            &args.nats_url,
            "--publication",
            args.publication,
            "--slot",
            args.slot,
        ]
        .iter()
        .map(|a| a.to_string())
        .collect();
        if !args.extra.iter().any(|a| a == "--metrics-addr") {
            argv.push("--metrics-addr".into());
            argv.push(format!("127.0.0.1:{metrics_port}"));
        }
        argv.extend(args.extra);
        Self::spawn_argv(&argv, env, metrics_port)
    }

    /// Spawn `walcast` with exactly these arguments; `metrics_port` is where it serves
    /// its metrics (for [`Walcast::http_get`]).
    pub fn spawn_argv(argv: &[String], env: &[(&str, &str)], metrics_port: u16) -> Walcast {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_walcast"));
        command
            .args(argv)
            .env("WALCAST_LOG", "info,walcast=debug")
            .envs(env.iter().copied());
        Self::spawn_command(command, metrics_port)
    }

    /// Spawn `command`, a walcast however started (the image's, through chroot), its
    /// output into the log; `metrics_port` is where it serves its metrics.
    pub fn spawn_command(mut command: tokio::process::Command, metrics_port: u16) -> Walcast {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("walcast.log");
        let file = std::fs::File::create(&log).unwrap();
        let child = command
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

    /// `what`, followed by this walcast's log read when it is formatted: the `what` of a
    /// [`poll_until`] whose failure should show the log.
    pub fn with_log(&self, what: impl Display) -> impl Display {
        struct WithLog<W>(W, PathBuf);
        impl<W: Display> Display for WithLog<W> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                let log = std::fs::read_to_string(&self.1).unwrap_or_default();
                write!(f, "{}; walcast's log:\n{log}", self.0)
            }
        }
        WithLog(what, self.log.clone())
    }

    /// Panic (with the log) if the process has exited.
    pub fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("walcast exited with {status}:\n{}", self.log());
        }
    }

    pub async fn http_get(&self, path: &str) -> Option<(u16, String)> {
        http_get(self.metrics_port, path).await
    }

    /// Wait until `/readyz` answers 200 (streaming and NATS connected).
    pub async fn wait_ready(&mut self) {
        let what = self.with_log("walcast to be ready");
        let port = self.metrics_port;
        poll_until(what, Duration::from_secs(60), || {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "walcast exited with {status} before becoming ready:\n{}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            async move {
                match http_get(port, "/readyz").await {
                    Some((200, _)) => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            }
        })
        .await;
    }

    /// The value of a metric line without labels.
    pub async fn metric(&self, name: &str) -> Option<f64> {
        let (_, body) = self.http_get("/metrics").await?;
        body.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
    }

    /// Wait until the log holds `text` `times` times.
    pub async fn wait_for_log(&self, text: &str, times: usize, timeout: Duration) {
        poll_until(
            self.with_log(format!("{times} × {text:?} in the log")),
            timeout,
            || async { self.log().matches(text).count() >= times },
        )
        .await;
    }

    /// Wait until the metric `name` (a line as [`Walcast::metric`] reads it) is at least
    /// `at_least`; returns its value then.
    pub async fn wait_metric(&self, name: &str, at_least: f64, timeout: Duration) -> f64 {
        poll_until(
            self.with_log(format!("{name} >= {at_least}")),
            timeout,
            || async {
                match self.metric(name).await {
                    Some(v) if v >= at_least => Ok(v),
                    other => Err(format!("{other:?}")),
                }
            },
        )
        .await
    }

    /// Wait until `/readyz` answers that this process is standing by: not ready, the
    /// slot active in another process.
    pub async fn wait_standing_by(&self, timeout: Duration) {
        poll_until(
            self.with_log("the standby to report the busy slot"),
            timeout,
            || async {
                match self.http_get("/readyz").await {
                    Some((503, body)) if body.contains("active") => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            },
        )
        .await;
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

/// A plain HTTP GET of walcast's metrics server: (status, body).
async fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
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
        self.until_with(&format!("{n} envelopes"), timeout, |got| got.len() >= n)
            .await
    }

    /// Wait until what has arrived in all satisfies `done` (`what` names that).
    pub async fn until_with(
        &mut self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&[(String, Envelope, Vec<u8>)]) -> bool,
    ) -> &[(String, Envelope, Vec<u8>)] {
        let deadline = tokio::time::Instant::now() + timeout;
        while !done(&self.received) {
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
                    "no {what} within {timeout:?}; got {} envelopes: {:#?}",
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

/// Rows `from..=to` into table `t` (its key column only).
pub async fn insert_range(db: &tokio_postgres::Client, from: i64, to: i64) {
    exec(
        db,
        &format!("INSERT INTO t SELECT g FROM generate_series({from}, {to}) g"),
    )
    .await;
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

/// The confirmed flush position of `slot`.
pub async fn confirmed_flush(db: &tokio_postgres::Client, slot: &str) -> Lsn {
    db.query_one(
        "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
        &[&slot],
    )
    .await
    .unwrap()
    .get::<_, String>(0)
    .parse()
    .unwrap()
}

/// Wait until `w`'s slot `walcast` has confirmed `target`; returns its position then.
pub async fn wait_confirmed(
    db: &tokio_postgres::Client,
    w: &Walcast,
    target: Lsn,
    timeout: Duration,
) -> Lsn {
    poll_until(
        w.with_log(format!("the slot to confirm {target}")),
        timeout,
        || async {
            let flushed = confirmed_flush(db, "walcast").await;
            if flushed >= target {
                Ok(flushed)
            } else {
                Err(flushed)
            }
        },
    )
    .await
}

/// Wait until `w`'s slot `walcast` has confirmed everything written so far.
pub async fn wait_caught_up(db: &tokio_postgres::Client, w: &Walcast, timeout: Duration) -> Lsn {
    let target = walcast::testing::current_wal_lsn(db).await;
    wait_confirmed(db, w, target, timeout).await
}

/// A JSON page of nats-server's monitoring endpoint (`/subsz`, `/connz`, ...).
pub async fn nats_monitor(nats: &NatsServer, path: &str) -> serde_json::Value {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", nats.monitor_port))
        .await
        .unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let body = out.split_once("\r\n\r\n").unwrap().1;
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
}

/// How many subscriptions to exactly `subject` the server holds, its own included (a
/// JetStream stream subscribes to its subjects).
pub async fn subscriptions_to(nats: &NatsServer, subject: &str) -> usize {
    let subs = nats_monitor(nats, "/subsz?subs=1").await;
    subs["subscriptions_list"]
        .as_array()
        .map_or(0, |l| l.iter().filter(|s| s["subject"] == subject).count())
}

/// Wait until the server holds `n` subscriptions to exactly `subject` (a subscriber
/// started elsewhere, such as `walcast tail`, is listening): `n` is what
/// [`subscriptions_to`] counted before it started, plus its subscriptions.
pub async fn wait_subscribed(nats: &NatsServer, subject: &str, n: usize) {
    poll_until(
        format!("{n} subscriptions to {subject}"),
        Duration::from_secs(30),
        || async {
            let found = subscriptions_to(nats, subject).await;
            if found >= n {
                Ok(())
            } else {
                Err(found)
            }
        },
    )
    .await;
}
