//! The operator commands tell the truth: `walcast check` fails where `walcast run` will
//! refuse, `walcast teardown --dry-run` predicts what the run does, and the run checks
//! its rights before it removes anything; their output is their own.

mod common;

use std::time::Duration;

use common::*;
use walcast::testing::{NatsServer, PgOptions};

/// `walcast <args>` with extra environment variables: (exit code, stdout, stderr).
async fn walcast(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_walcast"))
            .args(args)
            .envs(env.iter().copied())
            .stdin(std::process::Stdio::null())
            .output(),
    )
    .await
    .expect("walcast did not exit within 60 s")
    .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    println!("walcast {args:?}:\n{stdout}{stderr}");
    (out.status.code().unwrap_or(-1), stdout, stderr)
}

/// `command` with the connection flags of `pg_url` and `nats_url`, then `extra`.
fn with_urls<'a>(
    command: &'a str,
    pg_url: &'a str,
    nats_url: &'a str,
    extra: &[&'a str],
) -> Vec<&'a str> {
    let mut args = vec![command, "--postgres-url", pg_url, "--nats-url", nats_url];
    args.extend(extra);
    args
}

async fn slots(db: &tokio_postgres::Client) -> Vec<String> {
    db.query("SELECT slot_name::text FROM pg_replication_slots", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Start walcast on slot `walcast`, let it record the slot, stop it.
async fn stream_once(args: RunArgs<'_>) {
    let mut w = Walcast::start(args).await;
    w.sigterm();
    assert!(
        w.wait_exit(Duration::from_secs(30)).await.success(),
        "{}",
        w.log()
    );
}

/// The slot walcast streamed from is gone while the streams still hold its record:
/// `run` refuses to start (changes may be lost), so `check` fails, naming
/// `--recreate-slot`; with that flag both go ahead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_fails_where_run_refuses_a_slot_that_went() {
    let (s, db) = servers_with_table(PgOptions::default()).await;
    stream_once(RunArgs::new(&s, "walcast", "walcast")).await;
    exec(&db, "SELECT pg_drop_replication_slot('walcast')").await;
    let (pg, nats) = (s.pg.url(), s.nats.url());

    let (code, report, _) = walcast(&with_urls("check", &pg, &nats, &[]), &[]).await;
    assert_ne!(code, 0, "{report}");
    let slot = report
        .lines()
        .find(|l| l.starts_with("FAIL slot:"))
        .unwrap_or_else(|| panic!("{report}"));
    assert!(slot.contains("--recreate-slot"), "{slot}");

    let (code, stderr) = run_to_exit(&with_urls(
        "run",
        &pg,
        &nats,
        &["--metrics-addr", "127.0.0.1:0"],
    ))
    .await;
    assert_ne!(code, 0);
    assert!(
        stderr.contains("--recreate-slot"),
        "run refuses too: {stderr}"
    );

    let (code, report, _) =
        walcast(&with_urls("check", &pg, &nats, &["--recreate-slot"]), &[]).await;
    assert_eq!(code, 0, "{report}");
    assert!(
        report.contains("ok   slot: \"walcast\" is gone"),
        "{report}"
    );
    // Another slot walcast never streamed from is simply created.
    let (code, report, _) =
        walcast(&with_urls("check", &pg, &nats, &["--slot", "fresh"]), &[]).await;
    assert_eq!(code, 0, "{report}");
    assert!(slots(&db).await.is_empty());
}

/// As the role `sql/setup.sql` makes and a least-privilege NATS user: the dry run says
/// that the publication (not the role's) and the streams (no delete permission)
/// cannot be removed and fails; the run then removes nothing, not even the slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn teardown_checks_its_rights_before_removing_anything() {
    let (mut s, db) = with_sql(
        servers(),
        "CREATE TABLE users (id int PRIMARY KEY, name text);",
    )
    .await;
    let (pg, nats) = least_privilege(&mut s);
    let password = [("PGPASSWORD", "pw-td")];
    let mut args = RunArgs::new(&s, "walcast", "walcast");
    (args.pg_url, args.nats_url) = (pg.clone(), nats.clone());
    let mut w = Walcast::spawn_with_env(args, &password);
    w.wait_ready().await;
    w.sigterm();
    assert!(
        w.wait_exit(Duration::from_secs(30)).await.success(),
        "{}",
        w.log()
    );

    let teardown = |extra: &'static [&'static str]| with_urls("teardown", &pg, &nats, extra);
    let (code, listed, _) =
        walcast(&teardown(&["--drop-publication", "--dry-run"]), &password).await;
    assert_ne!(code, 0, "the run would fail, so the dry run does: {listed}");
    for line in [
        "cannot remove publication walcast: it belongs to postgres",
        "cannot remove stream WALCAST: the NATS user may not delete it",
        "cannot remove stream WALCAST_META: the NATS user may not delete it",
        "would remove replication slot walcast",
    ] {
        assert!(listed.contains(line), "{line:?} in:\n{listed}");
    }
    let (code, said, _) = walcast(&teardown(&["--drop-publication"]), &password).await;
    assert_ne!(code, 0, "{said}");
    assert!(said.contains("cannot remove publication walcast"), "{said}");
    assert_eq!(slots(&db).await, ["walcast"], "nothing is removed");
    let js = async_nats::jetstream::new(walcast::client::connect(&nats).await.unwrap());
    assert!(js.get_stream("WALCAST").await.is_ok(), "the stream stays");

    // What this role and user may remove, they remove.
    let (code, said, _) = walcast(&teardown(&["--keep-streams", "--dry-run"]), &password).await;
    assert_eq!(code, 0, "{said}");
    let (code, said, _) = walcast(&teardown(&["--keep-streams"]), &password).await;
    assert_eq!(code, 0, "{said}");
    assert!(said.contains("removed replication slot walcast"), "{said}");
    assert!(slots(&db).await.is_empty());
}

/// While walcast streams, the dry run says the slot cannot be removed, as the run
/// does, and neither removes the streams.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn teardown_dry_run_while_walcast_runs_predicts_the_refusal() {
    let (s, db) = servers_with_table(PgOptions::default()).await;
    let w = Walcast::start(RunArgs::new(&s, "walcast", "walcast")).await;
    let (pg, nats) = (s.pg.url(), s.nats.url());
    for extra in [&["--dry-run"][..], &[]] {
        let (code, said, _) = walcast(&with_urls("teardown", &pg, &nats, extra), &[]).await;
        assert_ne!(code, 0, "{said}");
        assert!(
            said.contains("cannot remove replication slot walcast: it is in use"),
            "{said}"
        );
    }
    let js = async_nats::jetstream::new(async_nats::connect(&nats).await.unwrap());
    assert!(js.get_stream("WALCAST").await.is_ok(), "the stream stays");
    assert_eq!(slots(&db).await, ["walcast"]);
    drop(w);
}

/// `check`, `tail`, `snapshot` and `teardown` print their own lines, not the NATS
/// client's; a misspelled `WALCAST_*` variable is warned about; `walcast snapshot t`
/// means `public.t`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_commands_print_their_own_output() {
    let (s, db) = servers_with_table(PgOptions::default()).await;
    let w = Walcast::start(RunArgs::new(&s, "walcast", "walcast")).await;
    let (pg, nats) = (s.pg.url(), s.nats.url());
    let typo = [("WALCAST_SLTO", "other")];
    let (_, report, stderr) = walcast(&with_urls("check", &pg, &nats, &[]), &typo).await;
    assert!(
        stderr.contains("WALCAST_SLTO is not one walcast reads (did you mean WALCAST_SLOT?)"),
        "{stderr}"
    );
    let mut outputs = vec![report + &stderr];
    let (code, said, stderr) = walcast(&["snapshot", "t", "--nats-url", &nats], &[]).await;
    assert_eq!(code, 0, "{said}{stderr}");
    assert!(
        said.contains("queued   public.t") || said.contains("already  public.t"),
        "{said}"
    );
    outputs.push(said + &stderr);
    let subscribers = subscriptions_to(&s.nats, "walcast.public.t.*").await;
    let tail_args = [
        "tail",
        "walcast.public.t.*",
        "--count",
        "1",
        "--nats-url",
        &nats,
    ]
    .map(String::from);
    let tail = tokio::spawn(async move {
        let args: Vec<&str> = tail_args.iter().map(String::as_str).collect();
        walcast(&args, &[]).await
    });
    wait_subscribed(&s.nats, "walcast.public.t.*", subscribers + 1).await;
    exec(&db, "INSERT INTO t VALUES (7)").await;
    let (code, said, stderr) = tokio::time::timeout(Duration::from_secs(30), tail)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(code, 0, "{stderr}");
    assert!(said.contains("walcast.public.t.7 insert"), "{said}");
    outputs.push(said + &stderr);
    let (_, said, stderr) = walcast(&with_urls("teardown", &pg, &nats, &["--dry-run"]), &[]).await;
    outputs.push(said + &stderr);
    for output in outputs {
        assert!(!output.contains("async_nats"), "{output}");
    }
    drop(w);
}

/// The role `sql/setup.sql` makes (password `pw-td`, publishing `users`) and a NATS
/// server with the least-privilege user of `deploy/nats`: their URLs.
fn least_privilege(s: &mut Servers) -> (String, String) {
    let tables = ("tables", "public.users");
    let out = psql_file(
        s,
        "sql/setup.sql",
        &[("walcast_password", "'pw-td'"), tables],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let conf = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/nats/walcast-user.conf"
    ))
    .unwrap()
    .replace("change-me", "Td-Nats-9");
    s.nats = NatsServer::start_with_config(&conf).unwrap();
    let nats = format!("nats://walcast:Td-Nats-9@127.0.0.1:{}", s.nats.port);
    (s.pg.url_for("walcast", None, "postgres"), nats)
}

/// Run a file of `sql/` through psql as the superuser, with psql variables.
fn psql_file(s: &Servers, file: &str, vars: &[(&str, &str)]) -> std::process::Output {
    let bin = walcast::testing::postgres_bin_dir().unwrap().join("psql");
    let mut cmd = std::process::Command::new(bin);
    cmd.arg(s.pg.url())
        .args(["-v", "ON_ERROR_STOP=1", "-q", "-f", file]);
    for (k, v) in vars {
        cmd.arg("-v").arg(format!("{k}={v}"));
    }
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap()
}

/// `walcast tail --stored` prints what the stream holds under the pattern, the last
/// envelope of each subject (a deleted key's `delete`), more subjects than one
/// batched get answers, then exits; where no stream holds the pattern it says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_stored_prints_the_last_envelope_of_each_subject() {
    let (s, db) = with_sql(
        servers(),
        "CREATE TABLE accounts (id int PRIMARY KEY, owner text);
         CREATE TABLE other (id int PRIMARY KEY);
         INSERT INTO accounts SELECT i, 'o' || i FROM generate_series(1, 1500) i;
         INSERT INTO other VALUES (1);
         CREATE PUBLICATION walcast FOR TABLE accounts, other;",
    )
    .await;
    let mut snapshot = Collector::new(&s.nats.url(), "walcast.public.accounts.*").await;
    let w = Walcast::start(RunArgs::new(&s, "walcast", "walcast")).await;
    // After the snapshot (a change before its row's chunk would replace the row).
    snapshot.until(1500, Duration::from_secs(60)).await;
    exec(&db, "UPDATE accounts SET owner = 'ada' WHERE id = 1").await;
    exec(&db, "DELETE FROM accounts WHERE id = 2").await;
    wait_caught_up(&db, &w, Duration::from_secs(60)).await;
    let nats = s.nats.url();
    let pattern = "walcast.public.accounts.*";
    let (code, out, err) = walcast(&["tail", pattern, "--stored", "--nats-url", &nats], &[]).await;
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("1500 subjects"), "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 1500, "one line per stored subject");
    let mut sorted = lines.clone();
    sorted.sort_unstable();
    assert_eq!(lines, sorted, "in subject order");
    let line = |id: u32| {
        let start = format!("walcast.public.accounts.{id} ");
        lines
            .iter()
            .find(|l| l.starts_with(&start))
            .copied()
            .unwrap()
    };
    assert!(
        line(1).contains(" update key=public.accounts:1 seq=2 "),
        "{}",
        line(1)
    );
    assert!(line(1).contains(r#""owner":"ada""#));
    assert!(line(2).contains(" delete ") && line(2).ends_with("value=null"));
    assert!(line(3).contains(" snapshot key=public.accounts:3 seq=1 "));
    assert!(!out.contains("public.other"));

    let args = [
        "tail",
        "walcast.public.accounts.1",
        "--stored",
        "--json",
        "--nats-url",
        &nats,
    ];
    let (code, out, err) = walcast(&args, &[]).await;
    assert_eq!(code, 0, "{err}");
    let obj: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        (obj["op"].as_str(), obj["sequence"].as_u64()),
        (Some("update"), Some(2))
    );

    // A NATS server whose JetStream holds no stream of the pattern.
    let empty = NatsServer::start().unwrap_or_else(|e| panic!("{e}"));
    let (code, _, err) = walcast(
        &["tail", pattern, "--stored", "--nats-url", &empty.url()],
        &[],
    )
    .await;
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("no JetStream stream") && err.contains(pattern),
        "{err}"
    );
}
