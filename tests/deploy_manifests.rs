//! The Kubernetes manifest and the compose file are valid and agree with each other, the
//! Dockerfile and walcast: schemas (kubernetes-validate, the Compose Specification's
//! JSON schema through check-jsonschema, both offline in `.venv-deploy`), then what no
//! schema sees: names that refer to each other, ports, paths, versions, probes.
//! `make test-deploy` runs it (`make deps-deploy` installs the validators).

mod deploy_support;

use std::collections::{BTreeMap, BTreeSet};

use deploy_support::*;
use serde_json::Value;

const MANIFEST: &str = "deploy/kubernetes/walcast.yaml";
const COMPOSE: &str = "deploy/docker-compose.yml";

/// The manifest's resources by kind.
fn resources() -> BTreeMap<String, Value> {
    yaml_documents(MANIFEST)
        .into_iter()
        .map(|r| (r["kind"].as_str().unwrap().to_string(), r))
        .collect()
}

fn string_map(v: &Value) -> BTreeMap<String, String> {
    v.as_object()
        .unwrap_or_else(|| panic!("not a map: {v}"))
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                v.as_str().unwrap_or_else(|| panic!("{k}: {v}")).to_string(),
            )
        })
        .collect()
}

/// `labels` ⊆ `of`.
fn subset(labels: &Value, of: &Value) -> bool {
    string_map(labels)
        .iter()
        .all(|(k, v)| of[k].as_str() == Some(v.as_str()))
}

#[test]
fn the_manifest_passes_kubernetes_validate_strictly() {
    let (ok, out) = run(
        &venv_tool("kubernetes-validate"),
        &["--strict", "--quiet", MANIFEST],
    );
    assert!(ok, "kubernetes-validate --strict {MANIFEST}:\n{out}");
    // Every resource passes but the ServiceMonitor, whose schema (a CRD of the
    // Prometheus operator) kubernetes-validate does not have: it is checked below.
    let unchecked: Vec<&str> = out.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(
        unchecked
            .iter()
            .all(|l| l.contains("Couldn't find schema for kind ServiceMonitor")),
        "{out}"
    );
    let kinds: BTreeSet<String> = resources().into_keys().collect();
    assert_eq!(
        kinds,
        [
            "ConfigMap",
            "Deployment",
            "Secret",
            "Service",
            "ServiceMonitor"
        ]
        .map(String::from)
        .into()
    );
    println!("kubernetes-validate --strict: {kinds:?} (ServiceMonitor: a CRD, checked by hand)");
}

#[test]
fn the_manifests_names_ports_and_probes_fit_together() {
    let r = resources();
    let deployment = &r["Deployment"];
    let pod = &deployment["spec"]["template"];
    let service = &r["Service"];
    assert!(subset(
        &deployment["spec"]["selector"]["matchLabels"],
        &pod["metadata"]["labels"]
    ));
    assert!(subset(
        &service["spec"]["selector"],
        &pod["metadata"]["labels"]
    ));
    let monitor = &r["ServiceMonitor"];
    assert!(subset(
        &monitor["spec"]["selector"]["matchLabels"],
        &service["metadata"]["labels"]
    ));
    let containers = pod["spec"]["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    let port_names: BTreeMap<&str, u64> = c["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap(),
                p["containerPort"].as_u64().unwrap(),
            )
        })
        .collect();
    let service_ports: Vec<&Value> = service["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .collect();
    for p in &service_ports {
        let target = p["targetPort"].as_str().unwrap();
        assert!(
            port_names.contains_key(target),
            "Service targetPort {target}"
        );
    }
    for e in monitor["spec"]["endpoints"].as_array().unwrap() {
        let port = e["port"].as_str().unwrap();
        assert!(
            service_ports.iter().any(|p| p["name"] == port),
            "ServiceMonitor port {port} is not a port of the Service"
        );
    }
    // The environment: from the ConfigMap and the Secret of this file, all names walcast
    // reads; walcast serves its metrics where the container port says.
    let mut env = BTreeMap::new();
    for source in c["envFrom"].as_array().unwrap() {
        let (kind, field, reference) = if source["configMapRef"].is_object() {
            ("ConfigMap", "data", &source["configMapRef"])
        } else {
            ("Secret", "stringData", &source["secretRef"])
        };
        assert_eq!(
            reference["name"], r[kind]["metadata"]["name"],
            "{kind} name"
        );
        env.extend(string_map(&r[kind][field]));
    }
    let known = walcast_env_vars();
    for name in env.keys() {
        assert!(
            known.contains(name),
            "{name} is not an environment variable of walcast run"
        );
    }
    let metrics_addr = env
        .get("WALCAST_METRICS_ADDR")
        .cloned()
        .unwrap_or_else(image_metrics_addr);
    assert!(
        metrics_addr.starts_with("0.0.0.0:"),
        "{metrics_addr}: not reachable from the kubelet"
    );
    assert_eq!(u64::from(port_of(&metrics_addr)), port_names["metrics"]);
    assert_eq!(
        pod["metadata"]["annotations"]["prometheus.io/port"],
        port_names["metrics"].to_string()
    );
    // Probes: liveness /healthz, and readiness /healthz too: the standby answers
    // /readyz 503 (tests/deploy_image.rs shows both), and must count as available.
    for probe in ["livenessProbe", "readinessProbe"] {
        let get = &c[probe]["httpGet"];
        assert_eq!(get["path"], "/healthz", "{probe}");
        assert!(
            port_names.contains_key(get["port"].as_str().unwrap()),
            "{probe} port"
        );
    }
    // SIGTERM's drain fits in the grace period.
    let shutdown: u64 = env
        .get("WALCAST_SHUTDOWN_TIMEOUT")
        .cloned()
        .unwrap_or_else(|| walcast_default("--shutdown-timeout"))
        .parse()
        .unwrap();
    let grace = pod["spec"]["terminationGracePeriodSeconds"]
        .as_u64()
        .unwrap();
    assert!(
        grace > shutdown + 5,
        "grace {grace} s, shutdown timeout {shutdown} s"
    );
    // runAsNonRoot needs a numeric user in the image, else the kubelet refuses to start it.
    assert_eq!(c["securityContext"]["runAsNonRoot"], true);
    let user = runtime_instruction("USER");
    let uid: u32 = user
        .split(':')
        .next()
        .unwrap()
        .parse()
        .unwrap_or_else(|_| panic!("USER {user}: runAsNonRoot cannot verify a user name"));
    assert_ne!(uid, 0);
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    // Two replicas on one slot.
    assert_eq!(deployment["spec"]["replicas"], 2);
    assert_eq!(env.get("WALCAST_SLOT").map(String::as_str), Some("walcast"));
    let text = read(MANIFEST);
    assert!(
        text.contains("nats-server 2.14+"),
        "the manifest names the NATS it needs"
    );
    println!("manifest: env {:?}, metrics {metrics_addr}, grace {grace} s > shutdown {shutdown} s, USER {user}", env.keys());
}

#[test]
fn the_compose_file_passes_the_compose_specification_schema() {
    // check-jsonschema (python-jsonschema) ships the Compose Specification's own JSON
    // schema, the one Docker Compose validates with: no engine, no network.
    let (ok, out) = run(
        &venv_tool("check-jsonschema"),
        &["--builtin-schema", "vendor.compose-spec", COMPOSE],
    );
    assert!(
        ok,
        "check-jsonschema --builtin-schema vendor.compose-spec {COMPOSE}:\n{out}"
    );
    println!("{}", out.trim());
}

/// `major.minor` of an image tag (`nats:2.15` → (2, 15)).
fn tag_version(image: &str) -> (u32, u32) {
    let tag = image
        .split(':')
        .nth(1)
        .unwrap_or_else(|| panic!("{image}: no tag"));
    let mut parts = tag.split(['.', '-']).map(|p| p.parse::<u32>());
    match (parts.next(), parts.next()) {
        (Some(Ok(major)), Some(Ok(minor))) => (major, minor),
        _ => panic!("{image}: the tag is no version"),
    }
}

#[test]
fn the_compose_files_services_paths_and_ports_fit_together() {
    let compose = yaml(COMPOSE);
    let services = compose["services"].as_object().unwrap();
    let dir = repo("deploy");
    for (name, s) in services {
        let depends: Vec<String> = match &s["depends_on"] {
            Value::Array(a) => a.iter().map(|d| d.as_str().unwrap().to_string()).collect(),
            Value::Object(o) => o.keys().cloned().collect(),
            _ => vec![],
        };
        for d in depends {
            assert!(
                services.contains_key(&d),
                "{name} depends on {d}, no such service"
            );
        }
        for v in s["volumes"].as_array().into_iter().flatten() {
            let source = v.as_str().unwrap().split(':').next().unwrap();
            if source.starts_with('.') {
                assert!(dir.join(source).exists(), "{name}: {source} does not exist");
            }
        }
    }
    // The walcast service: built from deploy/Dockerfile; the environment is walcast's.
    let walcast = &services["walcast"];
    let context = dir.join(walcast["build"]["context"].as_str().unwrap());
    assert!(context
        .join(walcast["build"]["dockerfile"].as_str().unwrap())
        .is_file());
    let env = string_map(&walcast["environment"]);
    let known = walcast_env_vars();
    for name in env.keys() {
        assert!(
            known.contains(name),
            "{name} is not an environment variable of walcast run"
        );
    }
    for (var, service) in [
        ("WALCAST_POSTGRES_URL", "postgres"),
        ("WALCAST_NATS_URL", "nats"),
    ] {
        assert!(
            env[var].contains(&format!("@{service}:"))
                || env[var].contains(&format!("//{service}:")),
            "{var} does not name the {service} service"
        );
    }
    let metrics_port = port_of(
        &env.get("WALCAST_METRICS_ADDR")
            .cloned()
            .unwrap_or_else(image_metrics_addr),
    );
    let published: Vec<String> = walcast["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_string())
        .collect();
    assert!(
        published
            .iter()
            .any(|p| p.ends_with(&format!(":{metrics_port}"))),
        "{published:?} does not publish walcast's metrics port {metrics_port}"
    );
    // NATS 2.14+: fast-ingest batches.
    let nats = services["nats"]["image"].as_str().unwrap();
    assert!(
        tag_version(nats) >= (2, 14),
        "{nats}: walcast's batches need nats-server 2.14+"
    );
    // Prometheus scrapes walcast where it serves, with the rules beside its config.
    let prometheus = yaml("deploy/prometheus/prometheus.yml");
    let targets = &prometheus["scrape_configs"][0]["static_configs"][0]["targets"];
    assert_eq!(targets[0], format!("walcast:{metrics_port}"));
    for rules in prometheus["rule_files"].as_array().unwrap() {
        assert!(dir
            .join("prometheus")
            .join(rules.as_str().unwrap())
            .is_file());
    }
    let prom_volume = services["prometheus"]["volumes"][0].as_str().unwrap();
    assert!(
        prom_volume.starts_with("./prometheus:/etc/prometheus"),
        "{prom_volume}"
    );
    // Grafana: the dashboards' folder is where the provider looks; the datasource's uid is
    // the one every panel names.
    let provider = yaml("deploy/grafana/provisioning/dashboards/walcast.yml");
    let path = provider["providers"][0]["options"]["path"]
        .as_str()
        .unwrap();
    let mounts: Vec<&str> = services["grafana"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        mounts
            .iter()
            .any(|m| m.starts_with("./grafana/dashboards:") && m.contains(&format!(":{path}"))),
        "{mounts:?} does not mount the dashboards at {path}"
    );
    let datasource = yaml("deploy/grafana/provisioning/datasources/prometheus.yml");
    let uid = &datasource["datasources"][0]["uid"];
    assert!(datasource["datasources"][0]["url"]
        .as_str()
        .unwrap()
        .starts_with("http://prometheus:"));
    let dashboard: Value =
        serde_json::from_str(&read("deploy/grafana/dashboards/walcast.json")).unwrap();
    for panel in dashboard["panels"].as_array().unwrap() {
        assert_eq!(&panel["datasource"]["uid"], uid, "panel {}", panel["title"]);
        for t in panel["targets"].as_array().unwrap() {
            assert_eq!(&t["datasource"]["uid"], uid, "panel {}", panel["title"]);
        }
    }
    println!(
        "compose: services {:?}, nats {nats}, walcast metrics on {metrics_port}",
        services.keys()
    );
}
