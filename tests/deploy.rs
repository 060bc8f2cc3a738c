//! The monitoring artifacts match walcast: the alert rules, the Prometheus config and
//! every dashboard query pass promtool; every metric the dashboard, the alerts and the
//! README's metric list name is on a running walcast's `/metrics` after traffic, and
//! every metric walcast exports is in that list; a real Prometheus scrapes walcast and
//! every dashboard query returns data. Needs Debian's `prometheus` package (`make deps`).

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use walcast::testing::free_port;

const WAIT: Duration = Duration::from_secs(60);

/// Counted by table only once it happens, which this test's traffic does not bring
/// about (an unavailable TOAST value, a dropped column that a per-table setting names, a
/// re-snapshot finding a row gone): absent from /metrics until then, each is still a
/// metric of src/ops/metrics/names.rs.
const COUNTED_WHEN_IT_HAPPENS: [&str; 3] = [
    "walcast_toast_unavailable_total",
    "walcast_setting_columns_missing_total",
    "walcast_snapshot_deletes_total",
];

fn tool(name: &str) -> std::path::PathBuf {
    std::env::var_os("PATH")
        .and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(name))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| {
            panic!(
                "{name} not found: install it with `apt-get install prometheus` (make deps does)"
            )
        })
}

fn repo(path: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn promtool(args: &[&str]) {
    let out = Command::new(tool("promtool"))
        .args(args)
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

/// Every query of the dashboard: (panel title, PromQL), nested rows included.
fn dashboard_queries() -> Vec<(String, String)> {
    fn walk(panels: &serde_json::Value, out: &mut Vec<(String, String)>) {
        for p in panels.as_array().into_iter().flatten() {
            for t in p["targets"].as_array().into_iter().flatten() {
                let expr = t["expr"].as_str().expect("a target without expr");
                out.push((p["title"].as_str().unwrap().to_string(), expr.to_string()));
            }
            walk(&p["panels"], out);
        }
    }
    let dashboard: serde_json::Value =
        serde_json::from_str(&read("deploy/grafana/dashboards/walcast.json"))
            .expect("the dashboard is JSON");
    let mut out = vec![];
    walk(&dashboard["panels"], &mut out);
    assert!(out.len() >= 10, "{} queries", out.len());
    out
}

/// Every alert's expression (one line each; a multi-line one fails the count).
fn alert_expressions() -> Vec<String> {
    let rules = read("deploy/prometheus/alerts.yml");
    let exprs: Vec<String> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("expr:"))
        .map(|e| e.trim().to_string())
        .collect();
    assert_eq!(
        exprs.len(),
        rules.matches("- alert:").count(),
        "one expr line per alert"
    );
    exprs
}

/// The metric names in `text`: words starting with `walcast_` or `process_` (not the
/// README's "`process_*` family"), and `up`.
fn metric_names(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("walcast_") || w.starts_with("process_") || *w == "up")
        .filter(|w| !w.ends_with('_'))
        .map(str::to_string)
        .collect()
}

/// The README's list of metrics: the names in the `/metrics` item of "Operating it".
fn readme_metrics() -> BTreeSet<String> {
    let readme = read("README.md");
    let start = readme
        .find("- `/metrics` (Prometheus):")
        .expect("the README's /metrics list");
    let end = start + readme[start..].find("\n- `/healthz`").unwrap();
    let names = metric_names(&readme[start..end]);
    assert!(names.len() >= 20, "{names:?}");
    names
}

/// Metric names in `/metrics`: every sample's and every `# HELP`'s.
fn exposed(body: &str) -> BTreeSet<String> {
    body.lines()
        .filter_map(|l| match l.strip_prefix("# HELP ") {
            Some(help) => help.split(' ').next(),
            None if l.starts_with('#') => None,
            None => l.split(['{', ' ']).next(),
        })
        .filter(|n| !n.is_empty())
        .map(str::to_string)
        .collect()
}

#[test]
fn promtool_accepts_the_rules_the_config_and_every_dashboard_query() {
    promtool(&["check", "rules", "deploy/prometheus/alerts.yml"]);
    promtool(&["check", "config", "deploy/prometheus/prometheus.yml"]);
    // The dashboard's queries as recording rules, which promtool parses.
    let dir = tempfile::tempdir().unwrap();
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (title, expr)) in dashboard_queries().iter().enumerate() {
        rules += &format!(
            "      - record: dashboard:query_{i}\n        labels: {{ panel: {} }}\n        expr: {}\n",
            serde_json::to_string(title).unwrap(),
            serde_json::to_string(expr).unwrap()
        );
    }
    let file = dir.path().join("dashboard.rules.yml");
    std::fs::write(&file, rules).unwrap();
    promtool(&["check", "rules", file.to_str().unwrap()]);
}

/// A walcast with traffic that makes its metric families appear: a row to snapshot, an
/// insert, update and delete, a schema change, a keyless table added to the publication.
async fn walcast_after_traffic() -> (Servers, Walcast) {
    let (s, db) = with_sql(
        servers(),
        "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'a');
         CREATE TABLE keyless (v int); CREATE PUBLICATION walcast FOR TABLE t;",
    )
    .await;
    let w = Walcast::start(RunArgs::new(&s, "walcast", "walcast")).await;
    exec(
        &db,
        "INSERT INTO t VALUES (2, 'b'); UPDATE t SET v = 'c' WHERE id = 2;
         DELETE FROM t WHERE id = 1; ALTER TABLE t ADD COLUMN w int;
         INSERT INTO t VALUES (3, 'd', 3);
         ALTER PUBLICATION walcast ADD TABLE keyless; INSERT INTO keyless VALUES (1);",
    )
    .await;
    (s, w)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_alerts_and_readme_name_is_exported() {
    let (_s, w) = walcast_after_traffic().await;
    let queries: Vec<String> = dashboard_queries().into_iter().map(|(_, e)| e).collect();
    let used: Vec<(&str, BTreeSet<String>)> = vec![
        ("the dashboard", metric_names(&queries.join("\n"))),
        (
            "the alert rules",
            metric_names(&alert_expressions().join("\n")),
        ),
        ("the README's metric list", readme_metrics()),
    ];
    let wanted: BTreeSet<String> = used
        .iter()
        .flat_map(|(_, names)| names.iter().cloned())
        // `up` is Prometheus's own.
        .filter(|n| n != "up" && !COUNTED_WHEN_IT_HAPPENS.contains(&n.as_str()))
        .collect();
    let metrics = poll_until(
        w.with_log("every metric named to be on /metrics"),
        WAIT,
        || async {
            let body = w
                .http_get("/metrics")
                .await
                .map(|(_, b)| b)
                .unwrap_or_default();
            let exported = exposed(&body);
            let missing: Vec<&String> = wanted.iter().filter(|n| !exported.contains(*n)).collect();
            if missing.is_empty() {
                Ok(exported)
            } else {
                Err(format!("missing {missing:?}"))
            }
        },
    )
    .await;
    // The families counted only when it happens are walcast's metrics all the same.
    let names_rs = read("src/ops/metrics/names.rs");
    for n in COUNTED_WHEN_IT_HAPPENS {
        assert!(
            names_rs.contains(&format!("\"{n}\"")),
            "{n} is no metric of walcast"
        );
    }
    // And the README lists every metric walcast exports.
    let listed = readme_metrics();
    assert!(
        metrics.iter().any(|n| n.starts_with("process_")),
        "the process_* family"
    );
    let unlisted: Vec<&String> = metrics
        .iter()
        .filter(|n| n.starts_with("walcast_"))
        .filter(|n| {
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| n.strip_suffix(s))
                .unwrap_or(n);
            !listed.contains(base) && !listed.contains(*n)
        })
        .collect();
    assert!(
        unlisted.is_empty(),
        "exported but not in the README's metric list: {unlisted:?}"
    );
    for n in COUNTED_WHEN_IT_HAPPENS {
        assert!(listed.contains(n), "{n} is not in the README's metric list");
    }
    for (what, names) in &used {
        println!("{what}: {} metrics, all exported: {names:?}", names.len());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_walcast_and_every_dashboard_query_has_data() {
    let (_s, w) = walcast_after_traffic().await;
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
    let queries = dashboard_queries();
    let results = poll_until(
        "every dashboard query to return data from Prometheus",
        WAIT,
        || {
            assert!(
                prom.try_wait().unwrap().is_none(),
                "prometheus exited: {}",
                std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default()
            );
            let queries = &queries;
            async move {
                let up = query(port, "up{job=\"walcast\"}").await;
                let first = up.as_ref().and_then(|r| r.first());
                if first.map(|s| s["value"][1] == "1") != Some(true) {
                    return Err(format!("up: {up:?}"));
                }
                let mut series = vec![];
                for (title, expr) in queries {
                    let r = match query(port, expr).await {
                        Some(r) if !r.is_empty() => r,
                        other => return Err(format!("{title}: {expr} → {other:?}")),
                    };
                    // `a or b` adds b's series only where a has none with the same
                    // labels: of two aggregations without `by`, b never shows.
                    assert!(
                        !expr.contains(" or ") || r.len() > 1,
                        "{title}: {expr} shows one series, its left side"
                    );
                    series.push((title.clone(), r.len()));
                }
                Ok(series)
            }
        },
    )
    .await;
    println!("Prometheus: every dashboard query has data (panel, series): {results:?}");
}

/// An instant query's result vector, `None` until Prometheus answers.
async fn query(port: u16, q: &str) -> Option<Vec<serde_json::Value>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut sock = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    let encoded: String = q
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'.' | b'-' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let path = format!("/api/v1/query?query={encoded}");
    sock.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut out = String::new();
    sock.read_to_string(&mut out).await.ok()?;
    let body: serde_json::Value = serde_json::from_str(out.split_once("\r\n\r\n")?.1).ok()?;
    assert_ne!(body["status"], "error", "{q}: {body}");
    body["data"]["result"].as_array().cloned()
}
