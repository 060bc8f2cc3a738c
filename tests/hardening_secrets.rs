//! No secret in any output: every command and log level, every path (hardening defect 4, split from hardening.rs).

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::*;
use walcast::testing::{free_port, NatsServer, PgOptions};

const PG_SECRET: &str = "Pg-S3cret-7781";
const NATS_SECRET: &str = "Nats-S3cret-4410";

/// Defect 4: no password in any output, at any log level, on any path.
#[tokio::test]
async fn no_output_carries_a_password() {
    let (mut s, db) = servers_with_table(PgOptions::default()).await;
    exec(
        &db,
        &format!(
            "CREATE ROLE walcast_u LOGIN REPLICATION PASSWORD '{PG_SECRET}'; GRANT SELECT ON t TO walcast_u;"
        ),
    )
    .await;
    s.nats = NatsServer::start_with_config(&format!(
        "authorization {{ user: walcast, password: \"{NATS_SECRET}\" }}"
    ))
    .unwrap();
    let pg = s.pg.url_for("walcast_u", Some(PG_SECRET), "postgres");
    let nats = format!("nats://walcast:{NATS_SECRET}@127.0.0.1:{}", s.nats.port);
    let dead_nats = format!("nats://walcast:{NATS_SECRET}@127.0.0.1:{}", free_port());
    let dead_pg = format!(
        "postgres://walcast_u:{PG_SECRET}@127.0.0.1:{}/postgres",
        free_port()
    );
    let metrics = format!("127.0.0.1:{}", free_port());
    let dir = tempfile::tempdir().unwrap();
    let bad_toml = dir.path().join("bad.toml");
    std::fs::write(
        &bad_toml,
        format!("postgres_url = \"{pg}\"\nnats_url = \"{nats}\n"),
    )
    .unwrap();
    let bad_toml = bad_toml.to_string_lossy().into_owned();
    let runs: Vec<Vec<&str>> = vec![
        vec!["check", "--postgres-url", &pg, "--nats-url", &nats],
        vec![
            "check",
            "--postgres-url",
            &dead_pg,
            "--nats-url",
            &dead_nats,
        ],
        vec![
            "run",
            "--postgres-url",
            &pg,
            "--nats-url",
            &dead_nats,
            "--connect-timeout",
            "2",
            "--metrics-addr",
            &metrics,
        ],
        vec![
            "run",
            "--postgres-url",
            &dead_pg,
            "--nats-url",
            &nats,
            "--connect-timeout",
            "2",
            "--metrics-addr",
            &metrics,
        ],
        vec!["run", "--config", &bad_toml],
        vec![
            "--log-format",
            "json",
            "run",
            "--postgres-url",
            &pg,
            "--nats-url",
            &dead_nats,
            "--connect-timeout",
            "2",
        ],
        vec!["tail", "walcast.>", "--nats-url", &dead_nats],
    ];
    for args in runs {
        let out = tokio::time::timeout(
            Duration::from_secs(60),
            tokio::process::Command::new(env!("CARGO_BIN_EXE_walcast"))
                .args(&args)
                .env("WALCAST_LOG", "trace")
                .stdin(Stdio::null())
                .output(),
        )
        .await
        .expect("walcast did not exit")
        .unwrap();
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!all.is_empty(), "{args:?} printed nothing");
        for secret in [PG_SECRET, NATS_SECRET] {
            assert!(!all.contains(secret), "{args:?} printed a password:\n{all}");
        }
    }
    // A running walcast and tail, at trace level.
    let mut args = RunArgs::new(&s, "walcast", "walcast");
    args.pg_url = pg.clone();
    args.nats_url = nats.clone();
    let mut w = Walcast::spawn_with_env(args, &[("WALCAST_LOG", "trace")]);
    w.wait_ready().await;
    let before = subscriptions_to(&s.nats, "walcast.>").await;
    let mut tail = tokio::process::Command::new(env!("CARGO_BIN_EXE_walcast"))
        .args(["tail", "walcast.>", "--nats-url", &nats, "--count", "1"])
        .env("WALCAST_LOG", "trace")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_subscribed(&s.nats, "walcast.>", before + 1).await;
    insert_range(&db, 1, 1).await;
    let out = tokio::time::timeout(Duration::from_secs(30), async {
        tail.wait().await.unwrap();
        let mut all = String::new();
        use tokio::io::AsyncReadExt;
        tail.stdout
            .take()
            .unwrap()
            .read_to_string(&mut all)
            .await
            .unwrap();
        tail.stderr
            .take()
            .unwrap()
            .read_to_string(&mut all)
            .await
            .unwrap();
        all
    })
    .await
    .expect("tail did not print the envelope");
    assert!(out.contains("walcast.public.t.1"), "{out}");
    for secret in [PG_SECRET, NATS_SECRET] {
        assert!(!out.contains(secret), "tail printed a password:\n{out}");
        assert!(
            !w.log().contains(secret),
            "run printed a password:\n{}",
            w.log()
        );
    }
}

/// No encryption key material in any output: a running walcast at trace level with
/// the key ring in its environment, its `--help` with the variable set, a bad key
/// ring (the error names the line, not the key), and a consumer without the key
/// (`tail` says which key id it lacks).
#[tokio::test]
async fn no_output_carries_an_encryption_key() {
    const KEY_HEX: &str = "5ec2e75ec2e75ec2e75ec2e75ec2e75ec2e75ec2e75ec2e75ec2e75ec2e75ec2";
    let (s, db) = servers_with_table(PgOptions::default()).await;
    let ring = format!("k9:{KEY_HEX}");
    let env = [
        ("WALCAST_LOG", "trace"),
        ("WALCAST_ENCRYPTION_KEYS", ring.as_str()),
    ];
    let args = RunArgs::new(&s, "walcast", "walcast").args(&["--encrypt", "public.t"]);
    let mut w = Walcast::spawn_with_env(args, &env);
    w.wait_ready().await;
    let before = subscriptions_to(&s.nats, "walcast.>").await;
    let tail = tokio::process::Command::new(env!("CARGO_BIN_EXE_walcast"))
        .args([
            "tail",
            "walcast.>",
            "--nats-url",
            &s.nats.url(),
            "--count",
            "1",
        ])
        .env("WALCAST_LOG", "trace")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let tail = tokio::spawn(tail);
    wait_subscribed(&s.nats, "walcast.>", before + 1).await;
    insert_range(&db, 1, 1).await;
    wait_caught_up(&db, &w, Duration::from_secs(30)).await;
    let dir = tempfile::tempdir().unwrap();
    let bad_ring = dir.path().join("keys");
    std::fs::write(&bad_ring, format!("k1:{}\n", &KEY_HEX[..63])).unwrap();
    let bad_ring = bad_ring.to_string_lossy().into_owned();
    let mut outputs = vec![("run".to_string(), w.log())];
    for (args, env) in [
        (vec!["run", "--help"], env.to_vec()),
        (
            vec![
                "run",
                "--postgres-url",
                &s.pg.url(),
                "--encrypt",
                "public.t",
                "--encryption-keys-file",
                &bad_ring,
            ],
            vec![("WALCAST_LOG", "trace")],
        ),
    ] {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_walcast"))
            .args(&args)
            .envs(env)
            .stdin(Stdio::null())
            .output()
            .await
            .unwrap();
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        outputs.push((args.join(" "), all));
    }
    assert!(
        outputs[2].1.contains("encryption keys line 1"),
        "{}",
        outputs[2].1
    );
    let tail = tokio::time::timeout(Duration::from_secs(5), tail).await;
    if let Ok(Ok(Ok(out))) = tail {
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            all.contains("\"k9\""),
            "tail does not name the key id it lacks: {all}"
        );
        outputs.push(("tail".into(), all));
    }
    for (what, out) in &outputs {
        assert!(!out.is_empty(), "{what} printed nothing");
        assert!(
            !out.contains(&KEY_HEX[..16]),
            "{what} printed the key:\n{out}"
        );
    }
}
