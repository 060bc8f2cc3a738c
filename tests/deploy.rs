//! The deployment artifacts are valid, and a real Prometheus scrapes walcast.
//! Needs Debian's `prometheus` package (prometheus and promtool on PATH).

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use walcast::testing::{free_port, PgOptions};

fn tool(name: &str) -> std::path::PathBuf {
    std::env::var_os("PATH")
        .and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(name))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| {
            panic!("{name} not found: install it with `apt-get install prometheus` (.ci/run does)")
        })
}

fn repo(path: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

#[test]
fn promtool_accepts_the_alert_rules_and_the_prometheus_config() {
    for args in [
        vec!["check", "rules", "deploy/prometheus/alerts.yml"],
        vec!["check", "config", "deploy/prometheus/prometheus.yml"],
    ] {
        let out = Command::new(tool("promtool"))
            .args(&args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Metric names walcast registers (the string literals of src/ops/metrics/names.rs,
/// where every name is a named constant, and src/ops/metrics.rs).
fn exported_metrics() -> BTreeSet<String> {
    let src = ["src/ops/metrics/names.rs", "src/ops/metrics.rs"]
        .map(|p| std::fs::read_to_string(repo(p)).unwrap())
        .join("\n");
    let mut names: BTreeSet<String> = src
        .split('"')
        .filter(|s| {
            s.starts_with("walcast_") && s.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
        })
        .map(str::to_string)
        .collect();
    for p in [
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "up",
    ] {
        names.insert(p.into());
    }
    names
}

fn referenced_metrics(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if text[i..].starts_with("walcast_")
            && (i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_'))
        {
            let end = text[i..]
                .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
                .map_or(text.len(), |e| i + e);
            let mut name = text[i..end].to_string();
            for suffix in ["_bucket", "_sum", "_count"] {
                if let Some(base) = name.strip_suffix(suffix) {
                    name = base.to_string();
                }
            }
            out.insert(name);
            i = end;
        } else {
            i += 1;
        }
    }
    out
}

#[test]
fn dashboard_and_alerts_reference_only_exported_metrics() {
    let exported = exported_metrics();
    let dashboard =
        std::fs::read_to_string(repo("deploy/grafana/dashboards/walcast.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&dashboard).expect("dashboard JSON parses");
    let exprs: Vec<String> = json["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().iter())
        .map(|t| t["expr"].as_str().unwrap().to_string())
        .collect();
    assert!(exprs.len() >= 10);
    let alerts = std::fs::read_to_string(repo("deploy/prometheus/alerts.yml")).unwrap();
    for (what, text) in [("dashboard", exprs.join("\n")), ("alerts", alerts)] {
        let used = referenced_metrics(&text);
        assert!(!used.is_empty());
        for m in &used {
            assert!(
                exported.contains(m),
                "{what} uses {m}, which walcast does not export"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_walcast() {
    let (s, db) = servers_with_table(PgOptions::default()).await;
    let w = Walcast::start(RunArgs::new(&s, "walcast", "walcast")).await;
    exec(&db, "INSERT INTO t VALUES (1), (2)").await;

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: walcast\n    static_configs:\n      - targets: [\"127.0.0.1:{}\"]\n",
            w.metrics_port
        ),
    )
    .unwrap();
    let port = free_port();
    let mut prom = tokio::process::Command::new(tool("prometheus"))
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("prometheus.log")).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let query = |q: &'static str| async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut sock = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        let path = format!("/api/v1/query?query={}", q.replace(' ', "%20"));
        sock.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .ok()?;
        let mut out = String::new();
        sock.read_to_string(&mut out).await.ok()?;
        let body = out.split_once("\r\n\r\n")?.1.to_string();
        serde_json::from_str::<serde_json::Value>(&body).ok()
    };
    let (up, tx) = poll_until(
        "Prometheus to scrape walcast",
        Duration::from_secs(60),
        || {
            assert!(
                prom.try_wait().unwrap().is_none(),
                "prometheus exited: {}",
                std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default()
            );
            async {
                let up = query("up{job=\"walcast\"}").await;
                let tx = query("walcast_transactions_total").await;
                let value = |v: &Option<serde_json::Value>| {
                    v.as_ref()?["data"]["result"][0]["value"][1]
                        .as_str()
                        .and_then(|s| s.parse::<f64>().ok())
                };
                match (value(&up), value(&tx)) {
                    (Some(u), Some(t)) if u == 1.0 && t >= 1.0 => Ok((u, t)),
                    _ => Err(format!("up={up:?} tx={tx:?}")),
                }
            }
        },
    )
    .await;
    println!("Prometheus scraped walcast: up={up}, walcast_transactions_total={tx}");
}
