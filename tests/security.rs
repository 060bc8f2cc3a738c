//! Security (issue 12): TLS to PostgreSQL in every sslmode with a CA made here,
//! SCRAM over TLS with channel binding, client certificates.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use walcast::testing::{free_port, PgOptions};

const SCRAM_PW: &str = "Tls-Scram-9931";

/// A CA, a server certificate for `localhost` and `db.walcast.test` (not for the IP
/// address), and a client certificate for `certuser`, as PEM.
struct Pki {
    ca: String,
    other_ca: String,
    server_cert: String,
    server_key: String,
    client_cert: String,
    client_key: String,
}

fn ca(name: &str) -> (rcgen::Certificate, KeyPair) {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, name);
    let key = KeyPair::generate().unwrap();
    let cert = p.self_signed(&key).unwrap();
    (cert, key)
}

fn pki() -> Pki {
    let (ca_cert, ca_key) = ca("walcast test CA");
    let (other, _) = ca("some other CA");
    let mut sp =
        CertificateParams::new(vec!["localhost".into(), "db.walcast.test".into()]).unwrap();
    sp.distinguished_name.push(DnType::CommonName, "localhost");
    let server_key = KeyPair::generate().unwrap();
    let server = sp.signed_by(&server_key, &ca_cert, &ca_key).unwrap();
    let mut cp = CertificateParams::new(Vec::<String>::new()).unwrap();
    cp.distinguished_name.push(DnType::CommonName, "certuser");
    let client_key = KeyPair::generate().unwrap();
    let client = cp.signed_by(&client_key, &ca_cert, &ca_key).unwrap();
    Pki {
        ca: ca_cert.pem(),
        other_ca: other.pem(),
        server_cert: server.pem(),
        server_key: server_key.serialize_pem(),
        client_cert: client.pem(),
        client_key: client_key.serialize_pem(),
    }
}

/// PostgreSQL with `ssl = on`: `tls_scram` must use TLS (SCRAM), `certuser` a client
/// certificate; a table `t` in the publication `walcast`.
async fn tls_servers(p: &Pki) -> (Servers, tokio_postgres::Client) {
    let opts = PgOptions {
        extra_conf: vec![
            "ssl = on".into(),
            "ssl_cert_file = 'server.crt'".into(),
            "ssl_key_file = 'server.key'".into(),
            "ssl_ca_file = 'ca.crt'".into(),
        ],
        hba_first: vec![
            "hostssl all tls_scram 127.0.0.1/32 scram-sha-256".into(),
            "hostnossl all tls_scram 127.0.0.1/32 reject".into(),
            "hostssl all certuser 127.0.0.1/32 cert".into(),
            "hostnossl all certuser 127.0.0.1/32 reject".into(),
        ],
        data_files: vec![
            ("server.crt".into(), p.server_cert.clone().into_bytes()),
            ("server.key".into(), p.server_key.clone().into_bytes()),
            ("ca.crt".into(), p.ca.clone().into_bytes()),
        ],
        ..PgOptions::default()
    };
    let (s, db) = servers_with_table(opts).await;
    exec(
        &db,
        &format!(
            "CREATE ROLE tls_scram LOGIN REPLICATION PASSWORD '{SCRAM_PW}';
             CREATE ROLE certuser LOGIN REPLICATION;
             GRANT SELECT ON t TO tls_scram, certuser;"
        ),
    )
    .await;
    (s, db)
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}

/// Stream one insert through walcast connected with `url`.
async fn streams_with(s: &Servers, db: &tokio_postgres::Client, url: String, id: i32) -> String {
    let slot = format!("slot_{id}");
    let mut args = RunArgs::new(s, "walcast", &slot);
    args.pg_url = url;
    let mut w = Walcast::start(args).await;
    let mut c = Collector::new(&s.nats.url(), &format!("walcast.public.t.{id}")).await;
    exec(db, &format!("INSERT INTO t VALUES ({id})")).await;
    c.until(1, Duration::from_secs(30)).await;
    w.sigterm();
    w.wait_exit(Duration::from_secs(30)).await;
    let log = w.log();
    exec(db, &format!("SELECT pg_drop_replication_slot('slot_{id}')")).await;
    log
}

#[tokio::test]
async fn postgres_tls_in_every_mode() {
    let p = pki();
    let (s, db) = tls_servers(&p).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = write(dir.path(), "ca.pem", &p.ca);
    let other = write(dir.path(), "other.pem", &p.other_ca);
    let cert = write(dir.path(), "client.pem", &p.client_cert);
    let key = write(dir.path(), "client.key", &p.client_key);
    let port = s.pg.port;
    let scram = |host: &str, query: &str| {
        format!("postgres://tls_scram:{SCRAM_PW}@{host}:{port}/postgres?{query}")
    };

    // verify-full: the CA and the host name; SCRAM with channel binding.
    let log = streams_with(
        &s,
        &db,
        scram(
            "localhost",
            &format!("sslmode=verify-full&sslrootcert={ca}"),
        ),
        1,
    )
    .await;
    assert!(
        log.contains("SCRAM-SHA-256-PLUS"),
        "no channel binding:\n{log}"
    );
    // require: encrypted, nothing checked.
    streams_with(&s, &db, scram("127.0.0.1", "sslmode=require"), 2).await;
    // verify-ca: the CA, not the name (the certificate is not for 127.0.0.1).
    streams_with(
        &s,
        &db,
        scram("127.0.0.1", &format!("sslmode=verify-ca&sslrootcert={ca}")),
        3,
    )
    .await;
    // A client certificate (pg_hba `cert`), key/value form.
    let kv = format!(
        "host=localhost port={port} user=certuser dbname=postgres sslmode=verify-full sslrootcert={ca} sslcert={cert} sslkey={key}"
    );
    streams_with(&s, &db, kv, 4).await;

    // Failures, clear and at once.
    let metrics = format!("127.0.0.1:{}", free_port());
    for (url, says) in [
        (
            scram(
                "localhost",
                &format!("sslmode=verify-full&sslrootcert={other}"),
            ),
            "certificate",
        ),
        (
            scram(
                "127.0.0.1",
                &format!("sslmode=verify-full&sslrootcert={ca}"),
            ),
            "certificate",
        ),
        (scram("localhost", "sslmode=disable"), "rejects"),
        (
            scram("localhost", "sslmode=verify-full"),
            "needs sslrootcert",
        ),
    ] {
        let (code, err) = run_to_exit(&[
            "run",
            "--postgres-url",
            &url,
            "--nats-url",
            &s.nats.url(),
            "--metrics-addr",
            &metrics,
        ])
        .await;
        assert_ne!(code, 0, "{url}");
        assert!(err.to_lowercase().contains(says), "{url}: {err}");
        assert!(!err.contains(SCRAM_PW), "{err}");
    }
}

/// Passwords from `PGPASSWORD`, a password file and `--postgres-password-file`.
#[tokio::test]
async fn postgres_passwords_from_the_environment_and_files() {
    let p = pki();
    let (s, db) = tls_servers(&p).await;
    let dir = tempfile::tempdir().unwrap();
    let url = format!(
        "postgres://tls_scram@127.0.0.1:{}/postgres?sslmode=require",
        s.pg.port
    );
    let metrics = || format!("127.0.0.1:{}", free_port());
    let check = |env: Vec<(&'static str, String)>, extra: Vec<String>| {
        let url = url.clone();
        let nats = s.nats.url();
        let m = metrics();
        async move {
            let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_walcast"))
                .args([
                    "check",
                    "--postgres-url",
                    &url,
                    "--nats-url",
                    &nats,
                    "--metrics-addr",
                    &m,
                ])
                .args(extra)
                .env_remove("PGPASSWORD")
                .env("HOME", "/nonexistent")
                .envs(env)
                .output()
                .await
                .unwrap();
            String::from_utf8_lossy(&out.stdout).into_owned()
        }
    };
    let connected = |report: &str| report.contains("ok   postgres connection");
    assert!(
        !connected(&check(vec![], vec![]).await),
        "no password, yet connected"
    );
    assert!(connected(
        &check(vec![("PGPASSWORD", SCRAM_PW.into())], vec![]).await
    ));
    let passfile = write(
        dir.path(),
        "pgpass",
        &format!("127.0.0.1:{}:*:tls_scram:{SCRAM_PW}\n", s.pg.port),
    );
    std::fs::set_permissions(
        &passfile,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    assert!(connected(
        &check(vec![("PGPASSFILE", passfile)], vec![]).await
    ));
    let secret = write(dir.path(), "secret", &format!("{SCRAM_PW}\n"));
    assert!(connected(
        &check(vec![], vec!["--postgres-password-file".into(), secret]).await
    ));
    drop(db);
}

/// A TLS nats-server that verifies clients, with a certificate for 127.0.0.1.
fn nats_tls_files(dir: &Path) -> (String, String, String, String) {
    let (ca_cert, ca_key) = ca("nats test CA");
    let sp = CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    let server_key = KeyPair::generate().unwrap();
    let server = sp.signed_by(&server_key, &ca_cert, &ca_key).unwrap();
    let mut cp = CertificateParams::new(Vec::<String>::new()).unwrap();
    cp.distinguished_name.push(DnType::CommonName, "walcast");
    let client_key = KeyPair::generate().unwrap();
    let client = cp.signed_by(&client_key, &ca_cert, &ca_key).unwrap();
    (
        write(dir, "nats-ca.pem", &ca_cert.pem()),
        write(dir, "nats-server.pem", &server.pem()),
        write(dir, "nats-server.key", &server_key.serialize_pem()),
        format!(
            "{}|{}",
            write(dir, "nats-client.pem", &client.pem()),
            write(dir, "nats-client.key", &client_key.serialize_pem())
        ),
    )
}

/// The number of envelopes walcast's stream holds, read with `auth`.
async fn stream_messages(url: &str, auth: &walcast::client::NatsAuth) -> u64 {
    let client = walcast::client::connect_with_auth(url, auth).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let mut stream = js.get_stream("WALCAST").await.unwrap();
    stream.info().await.unwrap().state.messages
}

/// Run walcast with `nats_args` until ready, insert a row, and see it in the stream.
async fn publishes_through(
    s: &Servers,
    db: &tokio_postgres::Client,
    url: &str,
    nats_args: &[String],
    auth: &walcast::client::NatsAuth,
    id: i32,
) {
    let slot = format!("nats_{id}");
    let mut args = RunArgs::new(s, "walcast", &slot);
    args.nats_url = url.to_string();
    args.extra = nats_args.to_vec();
    let mut w = Walcast::start(args).await;
    let before = stream_messages(url, auth).await;
    exec(db, &format!("INSERT INTO t VALUES ({id})")).await;
    poll_until(
        w.with_log(format!("more than {before} messages in the stream")),
        Duration::from_secs(30),
        || async {
            let n = stream_messages(url, auth).await;
            if n > before {
                Ok(())
            } else {
                Err(n)
            }
        },
    )
    .await;
    w.sigterm();
    w.wait_exit(Duration::from_secs(30)).await;
    exec(db, &format!("SELECT pg_drop_replication_slot('nats_{id}')")).await;
}

#[tokio::test]
async fn nats_tls_with_client_certificates_and_nkeys() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key, client) = nats_tls_files(dir.path());
    let (client_cert, client_key) = client.split_once('|').unwrap();
    let user = nkeys::KeyPair::new_user();
    let seed = write(dir.path(), "user.nk", &user.seed().unwrap());
    let (mut s, db) = servers_with_table(PgOptions::default()).await;
    s.nats = walcast::testing::NatsServer::start_with_config(&format!(
        "tls {{ cert_file: \"{cert}\", key_file: \"{key}\", ca_file: \"{ca}\", verify: true }}\n\
         authorization {{ users = [ {{ nkey: \"{}\" }} ] }}",
        user.public_key()
    ))
    .unwrap();
    let url = format!("tls://127.0.0.1:{}", s.nats.port);
    let auth = walcast::client::NatsAuth {
        nkey_seed_file: Some(seed.clone().into()),
        tls_ca: Some(ca.clone().into()),
        tls_cert: Some(client_cert.into()),
        tls_key: Some(client_key.into()),
        tls_required: true,
        ..Default::default()
    };
    let args: Vec<String> = [
        "--nats-nkey-seed",
        &seed,
        "--nats-tls-ca",
        &ca,
        "--nats-tls-cert",
        client_cert,
        "--nats-tls-key",
        client_key,
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    publishes_through(&s, &db, &url, &args, &auth, 1).await;
    // Without the client certificate the server refuses, clearly.
    let metrics = format!("127.0.0.1:{}", free_port());
    let (code, err) = run_to_exit(&[
        "run",
        "--postgres-url",
        &s.pg.url(),
        "--nats-url",
        &url,
        "--nats-tls-ca",
        &ca,
        "--nats-nkey-seed",
        &seed,
        "--metrics-addr",
        &metrics,
        "--connect-timeout",
        "3",
    ])
    .await;
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("NATS"), "{err}");
}

/// A NATS user that may not publish under the prefix: a clear error at start-up.
#[tokio::test]
async fn a_nats_user_without_publish_rights_is_refused_at_start() {
    let (mut s, _db) = servers_with_table(PgOptions::default()).await;
    s.nats = walcast::testing::NatsServer::start_with_config(
        "authorization { users = [ { user: w, password: pw, permissions: { publish: { deny: [\"walcast.>\"] } } } ] }",
    )
    .unwrap();
    let url = format!("nats://w:pw@127.0.0.1:{}", s.nats.port);
    let metrics = format!("127.0.0.1:{}", free_port());
    let (code, err) = run_to_exit(&[
        "run",
        "--postgres-url",
        &s.pg.url(),
        "--nats-url",
        &url,
        "--metrics-addr",
        &metrics,
    ])
    .await;
    assert_ne!(code, 0, "{err}");
    assert!(
        err.contains(
            "does not let walcast publish on walcast.> (user w: publish denied on walcast.>)"
        ),
        "{err}"
    );
}

/// The least-privilege NATS user shipped in deploy/ is enough for walcast.
#[tokio::test]
async fn least_privilege_nats_user_runs_walcast() {
    let conf = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/nats/walcast-user.conf"
    ))
    .unwrap()
    .replace("change-me", "Least-Priv-77");
    let (mut s, db) = servers_with_table(PgOptions::default()).await;
    s.nats = walcast::testing::NatsServer::start_with_config(&conf).unwrap();
    let url = format!("nats://walcast:Least-Priv-77@127.0.0.1:{}", s.nats.port);
    let mut args = RunArgs::new(&s, "walcast", "walcast");
    args.nats_url = url.clone();
    let w = Walcast::start(args).await;
    exec(
        &db,
        "INSERT INTO t VALUES (1); UPDATE t SET id = 2 WHERE id = 1",
    )
    .await;
    // An admin-free check: the stream holds both keys' envelopes.
    let admin = async_nats::ConnectOptions::new()
        .user_and_password("walcast".into(), "Least-Priv-77".into())
        .connect(format!("127.0.0.1:{}", s.nats.port))
        .await
        .unwrap();
    let js = async_nats::jetstream::new(admin);
    poll_until(
        w.with_log("2 envelopes in the stream"),
        Duration::from_secs(30),
        || async {
            let log = w.log();
            assert!(!log.contains("Permissions Violation"), "{log}");
            let n = js
                .get_stream("WALCAST")
                .await
                .unwrap()
                .info()
                .await
                .unwrap()
                .state
                .messages;
            if n >= 2 {
                Ok(())
            } else {
                Err(n)
            }
        },
    )
    .await;
}

/// A 2 MB row against a server whose max_payload is 1 MB: a clear error naming the
/// key and size by default (nothing lost), a counted marker when asked for.
#[tokio::test]
async fn oversize_rows_stop_clearly_or_become_markers() {
    let (mut s, db) = servers_with_table(PgOptions::default()).await;
    s.nats = walcast::testing::NatsServer::start_with_config("max_payload: 1048576").unwrap();
    exec(
        &db,
        "CREATE TABLE blob (id int PRIMARY KEY, b text); ALTER PUBLICATION walcast ADD TABLE blob;",
    )
    .await;
    let mut w = Walcast::start(RunArgs::new(&s, "walcast", "walcast")).await;
    exec(&db, "INSERT INTO blob VALUES (1, repeat('x', 2000000))").await;
    let status = w.wait_exit(Duration::from_secs(30)).await;
    assert!(!status.success());
    let log = w.log();
    assert!(log.contains("public.blob:1"), "{log}");
    assert!(log.contains("max_payload of 1048576"), "{log}");
    assert!(
        log.contains("--exclude-column public.blob=<column>"),
        "{log}"
    );

    let mut c = Collector::new(&s.nats.url(), "walcast.public.blob.*").await;
    let w = Walcast::start(RunArgs::new(&s, "walcast", "walcast").args(&["--oversize", "marker"]))
        .await;
    exec(&db, "INSERT INTO blob VALUES (2, 'small')").await;
    let got = c.until(2, Duration::from_secs(30)).await;
    let (big, small) = (&got[0].1, &got[1].1);
    assert_eq!((big.key.as_str(), big.sequence), ("public.blob:1", 1));
    let marker = big.column("$walcast_too_large").and_then(|v| v.as_u64());
    assert!(marker.is_some_and(|n| n > 2_000_000), "{:?}", big.value);
    assert_eq!(small.column("b").and_then(|v| v.as_str()), Some("small"));
    assert_eq!(w.metric("walcast_oversize_markers_total").await, Some(1.0));
}

/// base64url without padding (JWT).
fn b64url(data: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(ABC[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// A NATS JWT (v2) for `subject`, signed by `issuer`.
fn jwt(issuer: &nkeys::KeyPair, subject: &str, name: &str, nats: serde_json::Value) -> String {
    let header = b64url(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let claims = serde_json::json!({
        "jti": format!("{name}-{}", std::process::id()),
        "iat": 1_700_000_000u64,
        "iss": issuer.public_key(),
        "name": name,
        "sub": subject,
        "nats": nats,
    });
    let body = b64url(claims.to_string().as_bytes());
    let signed = format!("{header}.{body}");
    let signature = issuer.sign(signed.as_bytes()).unwrap();
    format!("{signed}.{}", b64url(&signature))
}

/// Operator mode (a JWT-verifying server) and a user `.creds` file made here.
#[tokio::test]
async fn nats_creds_file_in_operator_mode() {
    let operator = nkeys::KeyPair::new_operator();
    let account = nkeys::KeyPair::new_account();
    let user = nkeys::KeyPair::new_user();
    let system = nkeys::KeyPair::new_account();
    let operator_jwt = jwt(
        &operator,
        &operator.public_key(),
        "op",
        serde_json::json!({"type": "operator", "version": 2}),
    );
    let account_jwt = jwt(
        &operator,
        &account.public_key(),
        "acc",
        serde_json::json!({
            "type": "account", "version": 2,
            "limits": {"subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
                       "wildcards": true, "conn": -1, "leaf": -1,
                       "mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1},
            "default_permissions": {"pub": {}, "sub": {}},
        }),
    );
    let system_jwt = jwt(
        &operator,
        &system.public_key(),
        "SYS",
        serde_json::json!({"type": "account", "version": 2}),
    );
    let user_jwt = jwt(
        &account,
        &user.public_key(),
        "walcast",
        serde_json::json!({"type": "user", "version": 2, "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1}),
    );
    let dir = tempfile::tempdir().unwrap();
    let creds = write(
        dir.path(),
        "walcast.creds",
        &format!(
            "-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n\
             -----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n",
            user.seed().unwrap()
        ),
    );
    let (mut s, db) = servers_with_table(PgOptions::default()).await;
    s.nats = walcast::testing::NatsServer::start_with_config(&format!(
        "operator: {operator_jwt}\nsystem_account: {sys}\nresolver: MEMORY\n\
         resolver_preload: {{ {acc}: {account_jwt}, {sys}: {system_jwt} }}\n",
        acc = account.public_key(),
        sys = system.public_key(),
    ))
    .unwrap();
    let url = format!("nats://127.0.0.1:{}", s.nats.port);
    let auth = walcast::client::NatsAuth {
        creds_file: Some(creds.clone().into()),
        ..Default::default()
    };
    publishes_through(
        &s,
        &db,
        &url,
        &["--nats-creds".to_string(), creds],
        &auth,
        7,
    )
    .await;
    // Without the credentials: refused, clearly.
    let metrics = format!("127.0.0.1:{}", free_port());
    let (code, err) = run_to_exit(&[
        "run",
        "--postgres-url",
        &s.pg.url(),
        "--nats-url",
        &url,
        "--metrics-addr",
        &metrics,
        "--connect-timeout",
        "3",
    ])
    .await;
    assert_ne!(code, 0);
    assert!(err.to_lowercase().contains("authoriz"), "{err}");
}
