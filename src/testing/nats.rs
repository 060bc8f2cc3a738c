//! [`NatsServer`]: a throwaway `nats-server` (JetStream on by default) in a
//! temporary directory.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::process::{free_port, wait_for_port_while_running, which};
use super::{io, FixtureError};

/// The `nats-server` binary to run.
pub fn nats_server_bin() -> Result<PathBuf, FixtureError> {
    if let Ok(p) = std::env::var("WALCAST_NATS_SERVER") {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv-nats/bin/nats-server");
    if venv.is_file() {
        return Ok(venv);
    }
    which("nats-server").ok_or(FixtureError::NoNats)
}

/// A nats-server with JetStream in a temporary directory.
pub struct NatsServer {
    pub port: u16,
    pub monitor_port: u16,
    bin: PathBuf,
    dir: tempfile::TempDir,
    jetstream: bool,
    /// Extra configuration file text (`authorization { ... }`, `max_payload`, ...).
    config: Option<String>,
    child: Option<Child>,
}

impl NatsServer {
    /// The server process, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Start with JetStream and this configuration file text.
    pub fn start_with_config(config: &str) -> Result<NatsServer, FixtureError> {
        Self::launch_new(true, Some(config.to_string()))
    }

    /// Start with JetStream enabled.
    pub fn start() -> Result<NatsServer, FixtureError> {
        Self::start_with(true)
    }

    /// Start with or without JetStream.
    pub fn start_with(jetstream: bool) -> Result<NatsServer, FixtureError> {
        Self::launch_new(jetstream, None)
    }

    fn launch_new(jetstream: bool, config: Option<String>) -> Result<NatsServer, FixtureError> {
        let bin = nats_server_bin()?;
        let dir = tempfile::Builder::new()
            .prefix("walcast-nats-")
            .tempdir()
            .map_err(io("creating a temp dir"))?;
        let mut s = NatsServer {
            port: free_port(),
            monitor_port: free_port(),
            bin,
            dir,
            jetstream,
            config,
            child: None,
        };
        // A port free a moment ago may have been taken since (another test's outgoing
        // connection): then the server exits at once, and fresh ports are tried.
        for _ in 0..3 {
            match s.launch() {
                Err(FixtureError::Failed { detail, .. })
                    if detail.contains("address already in use") =>
                {
                    s.kill();
                    s.port = free_port();
                    s.monitor_port = free_port();
                }
                other => return other.map(|()| s),
            }
        }
        s.launch().map(|()| s)
    }

    fn launch(&mut self) -> Result<(), FixtureError> {
        let log = std::fs::File::create(self.dir.path().join("nats.log"))
            .map_err(io("creating the nats log"))?;
        let mut cmd = Command::new(&self.bin);
        cmd.args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-m", &self.monitor_port.to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(io("nats log"))?)
            .stderr(log);
        if self.jetstream {
            cmd.arg("-js").arg("-sd").arg(self.dir.path().join("store"));
        }
        if let Some(config) = &self.config {
            let path = self.dir.path().join("nats.conf");
            std::fs::write(&path, config).map_err(io("writing the nats config"))?;
            cmd.arg("-c").arg(path);
        }
        let mut child = cmd.spawn().map_err(io("starting nats-server"))?;
        let listening = wait_for_port_while_running(&mut child, self.port, Duration::from_secs(30));
        self.child = Some(child);
        if !listening {
            return Err(FixtureError::Failed {
                what: "nats-server".into(),
                detail: std::fs::read_to_string(self.dir.path().join("nats.log"))
                    .unwrap_or_default(),
            });
        }
        Ok(())
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The monitoring endpoint base URL (`/subsz`, `/connz`, `/jsz`).
    pub fn monitor_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.monitor_port)
    }

    /// Kill -9.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start again on the same ports and store.
    pub fn start_again(&mut self) -> Result<(), FixtureError> {
        self.launch()
    }

    /// The JetStream store directory (`-sd`): the stream's files, for tests that look
    /// at what the server keeps on disk, or copy it away and put the copy back while
    /// the server is down (a host crash that lost unsynced pages).
    pub fn store_dir(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("nats.log")).unwrap_or_default()
    }

    /// Whether the process is running (started and not killed).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}
