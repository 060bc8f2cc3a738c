//! [`PgServer`]: a throwaway PostgreSQL (initdb, configuration, start, crash and
//! restart) in a temporary directory, run as the `postgres` OS user under root.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::process::{free_port, signal, wait_exit, which};
use super::{io, FixtureError};

/// The server's current WAL position.
pub async fn current_wal_lsn(db: &tokio_postgres::Client) -> crate::wire::Lsn {
    db.query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .expect("pg_current_wal_lsn()")
        .get::<_, String>(0)
        .parse()
        .expect("an LSN")
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

/// The temporary directory the server lives in, given to `user` when there is one.
fn server_dir(user: Option<(u32, u32)>) -> Result<tempfile::TempDir, FixtureError> {
    let dir = tempfile::Builder::new()
        .prefix("walcast-pg-")
        .tempdir()
        .map_err(io("creating a temp dir"))?;
    if let Some((uid, gid)) = user {
        std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
            .map_err(io("giving the temp dir to postgres"))?;
    }
    Ok(dir)
}

/// Create the cluster in `data` (superuser `postgres`, trust, UTF8, no locale).
fn initdb(bin: &Path, data: &Path, user: Option<(u32, u32)>) -> Result<(), FixtureError> {
    let mut initdb = Command::new(bin.join("initdb"));
    initdb
        .args(["-D"])
        .arg(data)
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
    Ok(())
}

/// The lines appended to `postgresql.conf`.
fn postgresql_conf(port: u16, socket_dir: &Path, opts: &PgOptions) -> String {
    let mut conf = format!(
        "listen_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{}'\n\
         wal_level = {}\nmax_replication_slots = 20\nmax_wal_senders = 20\n\
         wal_sender_timeout = '{}'\nfsync = off\nfull_page_writes = off\n\
         shared_buffers = 128MB\nmax_connections = 50\nlogging_collector = off\n\
         password_encryption = 'scram-sha-256'\n",
        socket_dir.display(),
        opts.wal_level,
        opts.wal_sender_timeout
    );
    for line in &opts.extra_conf {
        conf.push_str(line);
        conf.push('\n');
    }
    conf
}

/// `pg_hba.conf`: `first`, then the fixture's users and methods.
fn pg_hba_conf(first: &[String]) -> String {
    let mut hba = first.join("\n");
    hba.push('\n');
    hba + "local all all trust\n\
             host all scram_user 127.0.0.1/32 scram-sha-256\n\
             host all md5_user 127.0.0.1/32 md5\n\
             host all clear_user 127.0.0.1/32 password\n\
             host all pw_user 127.0.0.1/32 scram-sha-256\n\
             host all walcast 127.0.0.1/32 scram-sha-256\n\
             host all all 127.0.0.1/32 trust\n"
}

/// Append `text` to (or, with `replace`, replace) the data directory's `file`.
fn write_config(data: &Path, file: &str, text: &str, replace: bool) -> Result<(), FixtureError> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .append(!replace)
        .write(true)
        .truncate(replace)
        .open(data.join(file))
        .map_err(io("writing the server config"))?;
    f.write_all(text.as_bytes())
        .map_err(io("writing the server config"))
}

/// Write [`PgOptions::data_files`] into the data directory, mode 0600, owned by `user`.
fn write_data_files(
    data: &Path,
    files: &[(String, Vec<u8>)],
    user: Option<(u32, u32)>,
) -> Result<(), FixtureError> {
    use std::os::unix::fs::PermissionsExt;
    for (name, content) in files {
        let path = data.join(name);
        std::fs::write(&path, content).map_err(io("writing a server file"))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .map_err(io("setting a server file's mode"))?;
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(&path, Some(uid), Some(gid))
                .map_err(io("giving a server file to postgres"))?;
        }
    }
    Ok(())
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
        // SAFETY: geteuid has no preconditions.
        if user.is_none() && unsafe { libc::geteuid() } == 0 {
            return Err(FixtureError::Failed {
                what: "finding the postgres OS user".into(),
                detail: "running as root and there is no 'postgres' user: install the postgresql package, which creates it".into(),
            });
        }
        let dir = server_dir(user)?;
        let data = dir.path().join("data");
        initdb(&bin, &data, user)?;
        let port = free_port();
        let conf = postgresql_conf(port, dir.path(), &opts);
        write_config(&data, "postgresql.conf", &conf, false)?;
        write_data_files(&data, &opts.data_files, user)?;
        write_config(&data, "pg_hba.conf", &pg_hba_conf(&opts.hba_first), true)?;
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
