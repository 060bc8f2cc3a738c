//! The image `make image` builds, exercised: its files (no shell, a numeric non-root
//! user, the CA certificates), and its walcast run as the image's user through chroot
//! (the image mounted by podman, read-only, /proc mounted as a container runtime
//! would, in a private mount namespace) against throwaway PostgreSQL and nats-server
//! instances, configured as the compose file and the Kubernetes manifest configure it.
//! As root: `make test-deploy` builds the image and runs this.

mod common;
mod deploy_support;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use deploy_support::*;
use serde_json::Value;
use walcast::testing::free_port;

const WAIT: Duration = Duration::from_secs(60);

/// The image, mounted (read-only) for as long as this lives.
struct Image {
    name: String,
    root: PathBuf,
    config: Value,
}

fn podman(args: &[&str]) -> (bool, String) {
    let out = Command::new("podman")
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("podman: {e}: run `make deps-deploy` (apt-get install -y podman)")
        });
    let text = if out.status.success() {
        String::from_utf8_lossy(&out.stdout).into_owned()
    } else {
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    (out.status.success(), text.trim().to_string())
}

impl Image {
    fn mount() -> Image {
        // SAFETY: geteuid has no preconditions.
        assert_eq!(
            unsafe { libc::geteuid() },
            0,
            "the image tests mount the image and chroot into it: run them as root (make test-deploy)"
        );
        let name = std::env::var("WALCAST_IMAGE").unwrap_or_else(|_| "walcast:latest".into());
        let (exists, _) = podman(&["image", "exists", &name]);
        assert!(
            exists,
            "no image {name}: run `make image` (make test-deploy does)"
        );
        let (ok, root) = podman(&["image", "mount", &name]);
        assert!(ok, "podman image mount {name}: {root}");
        let (ok, config) = podman(&["image", "inspect", "--format", "{{json .Config}}", &name]);
        assert!(ok, "{config}");
        Image {
            name,
            root: PathBuf::from(root),
            config: serde_json::from_str(&config).unwrap(),
        }
    }

    fn strings(&self, field: &str) -> Vec<String> {
        self.config[field]
            .as_array()
            .unwrap_or_else(|| panic!("the image has no {field}: {}", self.config))
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect()
    }

    fn user(&self) -> String {
        self.config["User"].as_str().unwrap_or_default().to_string()
    }

    fn env(&self) -> Vec<(String, String)> {
        self.strings("Env")
            .iter()
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap();
                (k.to_string(), v.to_string())
            })
            .collect()
    }

    /// The image's entrypoint with `args`, as the image's user with the image's
    /// environment and then `env` (as a container's environment overrides the image's).
    fn command(&self, args: &[String], env: &BTreeEnv) -> tokio::process::Command {
        let script = "set -e; root=$1; user=$2; shift 2; \
             mount --bind \"$root\" \"$root\"; mount -o remount,bind,ro \"$root\"; \
             mount -t proc proc \"$root/proc\"; \
             exec chroot --userspec=\"$user\" \"$root\" \"$@\"";
        let mut cmd = tokio::process::Command::new("unshare");
        cmd.args([
            "--mount",
            "--propagation",
            "private",
            "--",
            "sh",
            "-c",
            script,
            "sh",
        ])
        .arg(&self.root)
        .arg(self.user())
        .args(self.strings("Entrypoint"))
        .args(args)
        .env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        );
        let mut all: BTreeEnv = self.env().into_iter().collect();
        all.extend(env.clone());
        cmd.envs(all);
        cmd
    }

    /// `walcast run` (the image's CMD) with `env`, serving its metrics on a free port.
    fn run(&self, env: &BTreeEnv) -> Walcast {
        let port = free_port();
        let mut env = env.clone();
        env.insert("WALCAST_METRICS_ADDR".into(), format!("127.0.0.1:{port}"));
        Walcast::spawn_command(self.command(&self.strings("Cmd"), &env), port)
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        let _ = podman(&["image", "unmount", &self.name]);
    }
}

type BTreeEnv = std::collections::BTreeMap<String, String>;

/// `url` with its host and port replaced by `host_port` (`postgres:5432` → the test's).
fn at(url: &str, host_port: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap();
    let (auth, rest) = match rest.rsplit_once('@') {
        Some((auth, rest)) => (format!("{auth}@"), rest),
        None => (String::new(), rest),
    };
    let path = rest.find('/').map_or("", |i| &rest[i..]);
    format!("{scheme}://{auth}{host_port}{path}")
}

/// What the process `pid` runs as: its `Uid:`, `Gid:` and `CapEff:` lines.
fn identity(pid: u32) -> BTreeEnv {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(k, _)| ["Name", "Uid", "Gid", "CapEff"].contains(k))
        .map(|(k, v)| {
            (
                k.to_string(),
                v.split_whitespace().next().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn the_image_has_no_shell_a_numeric_user_and_the_ca_certificates() {
    let image = Image::mount();
    let root = &image.root;
    // The Dockerfile's runtime stage as written.
    assert_eq!(image.user(), runtime_instruction("USER"));
    let uid: u32 = image.user().split(':').next().unwrap().parse().unwrap();
    assert_ne!(uid, 0);
    assert_eq!(image.strings("Entrypoint"), ["/usr/local/bin/walcast"]);
    assert_eq!(image.strings("Cmd"), ["run"]);
    assert!(image
        .env()
        .contains(&("WALCAST_METRICS_ADDR".into(), image_metrics_addr())));
    assert!(image.config["ExposedPorts"]
        .as_object()
        .unwrap()
        .contains_key(&format!("{}/tcp", port_of(&image_metrics_addr()))));
    assert!(
        !runtime_stage().iter().any(|l| l.starts_with("RUN ")),
        "the runtime stage runs nothing"
    );
    // No shell: what runs is walcast alone.
    for shell in [
        "bin/sh",
        "bin/bash",
        "bin/dash",
        "usr/bin/sh",
        "usr/bin/bash",
        "usr/bin/dash",
    ] {
        assert!(!root.join(shell).exists(), "the image has /{shell}");
    }
    let walcast = root.join("usr/local/bin/walcast");
    use std::os::unix::fs::PermissionsExt;
    assert_ne!(walcast.metadata().unwrap().permissions().mode() & 0o111, 0);
    // Debian's CA bundle where rustls-native-certs (openssl-probe) looks for it.
    let bundle = std::fs::read_to_string(root.join("etc/ssl/certs/ca-certificates.crt"))
        .expect("the image has /etc/ssl/certs/ca-certificates.crt");
    let certs = bundle.matches("-----BEGIN CERTIFICATE-----").count();
    assert!(certs >= 100, "{certs} certificates");
    let (_, size) = podman(&["image", "inspect", "--format", "{{.Size}}", &image.name]);
    println!(
        "image {}: {} MB, user {}, entrypoint {:?} {:?}, {certs} CA certificates, no shell",
        image.name,
        size.parse::<u64>().unwrap() / 1_000_000,
        image.user(),
        image.strings("Entrypoint"),
        image.strings("Cmd"),
    );
}

/// The compose file's settings of the walcast service, pointed at `s`.
fn compose_env(s: &Servers) -> BTreeEnv {
    let compose = yaml("deploy/docker-compose.yml");
    let mut env: BTreeEnv = compose["services"]["walcast"]["environment"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
        .collect();
    let pg = at(
        &env["WALCAST_POSTGRES_URL"],
        &format!("127.0.0.1:{}", s.pg.port),
    );
    env.insert("WALCAST_POSTGRES_URL".into(), pg);
    let nats = at(
        &env["WALCAST_NATS_URL"],
        &format!("127.0.0.1:{}", s.nats.port),
    );
    env.insert("WALCAST_NATS_URL".into(), nats);
    env
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_images_walcast_checks_and_streams_with_the_compose_settings() {
    let image = Image::mount();
    // The compose file's database: deploy/init.sql, the role walcast with its password.
    let (s, db) = with_sql(servers(), &read("deploy/init.sql")).await;
    let env = compose_env(&s);

    let check = tokio::time::timeout(WAIT, image.command(&["check".into()], &env).output())
        .await
        .expect("walcast check did not end within 60 s")
        .unwrap();
    let report = String::from_utf8_lossy(&check.stdout).into_owned()
        + &String::from_utf8_lossy(&check.stderr);
    assert!(
        check.status.success(),
        "the image's walcast check:\n{report}"
    );
    println!("walcast check (in the image, compose settings):\n{report}");

    let mut collector = Collector::new(&s.nats.url(), "walcast.>").await;
    let mut w = image.run(&env);
    w.wait_ready().await;
    let who = identity(w.child.id().unwrap());
    assert_eq!(who["Name"], "walcast", "{who:?}");
    let uid = image.user().split(':').next().unwrap().to_string();
    assert_eq!(who["Uid"], uid, "{who:?}");
    assert_eq!(who["CapEff"], "0000000000000000", "{who:?}");
    exec(&db, "INSERT INTO accounts VALUES (1, 'ada', 10.50)").await;
    let got = collector.until(1, WAIT).await;
    let (subject, envelope, _) = &got[0];
    assert_eq!(subject, "walcast.public.accounts.1");
    assert_eq!(envelope.sequence, 1);
    let owner = envelope.column("owner").and_then(|v| v.as_str());
    assert_eq!(owner, Some("ada"), "{:?}", envelope.value);
    w.wait_metric("walcast_published_total", 1.0, WAIT).await;
    let (status, metrics) = w.http_get("/metrics").await.unwrap();
    assert_eq!(status, 200);
    assert!(
        metrics.contains("process_resident_memory_bytes"),
        "/proc is there"
    );
    // WALCAST_LOG_FORMAT=json from the compose file.
    let log = w.log();
    let first = log.lines().next().unwrap_or_default();
    serde_json::from_str::<Value>(first).unwrap_or_else(|e| panic!("{e}: {first}"));
    assert!(!log.contains("heartbeat off"), "{log}");

    let stop = Instant::now();
    w.sigterm();
    let status = w.wait_exit(Duration::from_secs(30)).await;
    assert!(status.success(), "SIGTERM: {status}\n{}", w.log());
    println!(
        "the image's walcast (uid {}): envelope on {subject}, /metrics {} bytes, SIGTERM → exit 0 in {:?}",
        who["Uid"],
        metrics.len(),
        stop.elapsed()
    );
}

/// The Kubernetes manifest's environment (ConfigMap and Secret), pointed at `s`; the
/// Secret's URL is a placeholder, replaced by the role deploy/init.sql makes.
fn manifest_env(s: &Servers) -> (BTreeEnv, u64) {
    let mut env = BTreeEnv::new();
    let mut grace = 0;
    for r in yaml_documents("deploy/kubernetes/walcast.yaml") {
        let data = match r["kind"].as_str().unwrap() {
            "ConfigMap" => &r["data"],
            "Secret" => &r["stringData"],
            "Deployment" => {
                grace = r["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
                    .as_u64()
                    .unwrap();
                continue;
            }
            _ => continue,
        };
        for (k, v) in data.as_object().unwrap() {
            env.insert(k.clone(), v.as_str().unwrap().to_string());
        }
    }
    env.insert(
        "WALCAST_POSTGRES_URL".into(),
        s.pg.url_for("walcast", Some("walcast"), "postgres"),
    );
    let nats = at(
        &env["WALCAST_NATS_URL"],
        &format!("127.0.0.1:{}", s.nats.port),
    );
    env.insert("WALCAST_NATS_URL".into(), nats);
    (env, grace)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_with_the_manifests_settings_share_the_slot_as_its_comments_say() {
    let image = Image::mount();
    let (s, db) = with_sql(servers(), &read("deploy/init.sql")).await;
    let (env, grace) = manifest_env(&s);
    let mut collector = Collector::new(&s.nats.url(), "walcast.>").await;

    let mut active = image.run(&env);
    active.wait_ready().await;
    let mut standby = image.run(&env);
    // The standby: alive (the manifest's liveness and readiness probe, /healthz), not
    // ready in walcast's own terms (/readyz 503 with the reason).
    standby.wait_standing_by(WAIT).await;
    let (code, reason) = standby.http_get("/readyz").await.unwrap();
    assert_eq!(code, 503);
    // The reason the manifest's comment quotes.
    assert!(reason.contains("is active for PID"), "{reason}");
    assert!(read("deploy/kubernetes/walcast.yaml").contains("is active for PID"));
    assert_eq!(standby.http_get("/healthz").await.unwrap().0, 200);
    assert_eq!(active.http_get("/healthz").await.unwrap().0, 200);
    exec(&db, "INSERT INTO accounts VALUES (1, 'ada', 1)").await;
    collector.until(1, WAIT).await;

    // A rollout or an eviction: SIGTERM to the active replica, which drains and exits 0
    // within the grace period; the standby takes the slot.
    let stop = Instant::now();
    active.sigterm();
    let status = active.wait_exit(Duration::from_secs(grace)).await;
    assert!(status.success(), "SIGTERM: {status}\n{}", active.log());
    let drained = stop.elapsed();
    standby.wait_ready().await;
    let took_over = stop.elapsed();
    exec(&db, "INSERT INTO accounts VALUES (2, 'bob', 2)").await;
    collector
        .until_with("public.accounts:2 from the standby", WAIT, |got| {
            got.iter().any(|(_, e, _)| e.key == "public.accounts:2")
        })
        .await;
    // A replay is the same envelope, byte for byte.
    let mut seen: std::collections::HashMap<(String, u64), Vec<u8>> = Default::default();
    for (_, e, bytes) in &collector.received {
        let first = seen
            .entry((e.key.clone(), e.sequence))
            .or_insert_with(|| bytes.clone());
        assert_eq!(first, bytes, "two envelopes for {} #{}", e.key, e.sequence);
    }
    assert_eq!(seen.len(), 2);
    standby.sigterm();
    assert!(standby
        .wait_exit(Duration::from_secs(grace))
        .await
        .success());
    println!(
        "manifest settings, two replicas of the image: standby /readyz 503 {reason:?}, /healthz 200; \
         SIGTERM to the active: exit 0 after {drained:?} (grace {grace} s), the standby ready after {took_over:?}"
    );
}
