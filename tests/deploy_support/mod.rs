//! What the deployment tests share: the repository's files, YAML read by the PyYAML of
//! `.venv-deploy` (made by `make deps-deploy`), and what the walcast binary accepts.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

pub fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

pub fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// A program of `.venv-deploy`, or a panic naming the step that installs it.
pub fn venv_tool(name: &str) -> PathBuf {
    let path = repo(".venv-deploy/bin").join(name);
    assert!(
        path.is_file(),
        "{} missing: run `make deps-deploy` (kubernetes-validate and check-jsonschema into .venv-deploy)",
        path.display()
    );
    path
}

/// Every document of a YAML file, as JSON values (PyYAML's safe loader).
pub fn yaml_documents(path: &str) -> Vec<serde_json::Value> {
    let out = Command::new(venv_tool("python"))
        .args([
            "-c",
            "import json, sys, yaml; json.dump(list(yaml.safe_load_all(open(sys.argv[1]))), sys.stdout)",
        ])
        .arg(repo(path))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{path} is not YAML: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

pub fn yaml(path: &str) -> serde_json::Value {
    let mut docs = yaml_documents(path);
    assert_eq!(docs.len(), 1, "{path}: one document");
    docs.remove(0)
}

/// `program args…`: (success, stdout + stderr).
pub fn run(program: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(program)
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", program.display()));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// `walcast run --help`.
pub fn run_help() -> String {
    let (ok, help) = run(Path::new(env!("CARGO_BIN_EXE_walcast")), &["run", "--help"]);
    assert!(ok, "{help}");
    help
}

/// The environment variables `walcast run` reads (`[env: NAME=]` in its help).
pub fn walcast_env_vars() -> BTreeSet<String> {
    let names: BTreeSet<String> = run_help()
        .split("[env: ")
        .skip(1)
        .map(|s| s.split('=').next().unwrap().to_string())
        .collect();
    assert!(names.contains("WALCAST_POSTGRES_URL"), "{names:?}");
    names
}

/// The default of a `walcast run` flag, from its help (`--shutdown-timeout` → `20`).
pub fn walcast_default(flag: &str) -> String {
    let help = run_help();
    let at = help
        .find(&format!("{flag} <"))
        .unwrap_or_else(|| panic!("{flag} not in `walcast run --help`"));
    let rest = &help[at..];
    let next = rest[2..].find("\n      -").map_or(rest.len(), |n| n + 2);
    let default = rest[..next]
        .split("[default: ")
        .nth(1)
        .unwrap_or_else(|| panic!("{flag} has no default"));
    default.split(']').next().unwrap().to_string()
}

/// The port of a `host:port` address.
pub fn port_of(addr: &str) -> u16 {
    addr.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {addr}"))
}

/// The Dockerfile's runtime stage: its lines from the last `FROM` on.
pub fn runtime_stage() -> Vec<String> {
    let dockerfile = read("deploy/Dockerfile");
    let lines: Vec<&str> = dockerfile.lines().collect();
    let last = lines
        .iter()
        .rposition(|l| l.starts_with("FROM "))
        .expect("a FROM line");
    lines[last..].iter().map(|l| l.to_string()).collect()
}

/// The value of an instruction of the runtime stage (`USER` → `10001:10001`).
pub fn runtime_instruction(name: &str) -> String {
    runtime_stage()
        .iter()
        .find_map(|l| l.strip_prefix(&format!("{name} ")).map(str::to_string))
        .unwrap_or_else(|| panic!("no {name} in the Dockerfile's runtime stage"))
}

/// `WALCAST_METRICS_ADDR` as the image sets it (the runtime stage's `ENV`).
pub fn image_metrics_addr() -> String {
    runtime_stage()
        .iter()
        .find_map(|l| {
            l.strip_prefix("ENV WALCAST_METRICS_ADDR=")
                .map(str::to_string)
        })
        .expect("ENV WALCAST_METRICS_ADDR in the runtime stage")
}
