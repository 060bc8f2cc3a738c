//! Where and as whom to connect: a libpq URL (`postgres://user:pw@host:5432/db?sslmode=
//! verify-full`) or key/value string (`host=db user=walcast sslmode=require`), read
//! once, with a precise error naming what is wrong. The password comes from the
//! string, else `PGPASSWORD`, else a password file (`passfile`, `PGPASSFILE`,
//! `~/.pgpass`), else `--postgres-password-file` (a Kubernetes secret mounted as a file).

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::tls::{SslMode, TlsSettings};
use super::SourceError;

/// Where and as whom to connect, for the replication connection and the catalog.
#[derive(Clone)]
pub struct ConnectParams {
    pub target: Target,
    pub user: String,
    pub password: Option<Vec<u8>>,
    pub dbname: String,
    pub application_name: String,
    pub connect_timeout: Duration,
    pub tls: TlsSettings,
}

impl std::fmt::Debug for ConnectParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectParams")
            .field("target", &self.target)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("dbname", &self.dbname)
            .field("sslmode", &self.tls.mode)
            .finish()
    }
}

/// A TCP address or a Unix socket directory.
#[derive(Debug, Clone)]
pub enum Target {
    Tcp { host: String, port: u16 },
    Unix { dir: PathBuf, port: u16 },
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Tcp { host, port } => write!(f, "{host}:{port}"),
            Target::Unix { dir, port } => write!(f, "{}/.s.PGSQL.{port}", dir.display()),
        }
    }
}

fn invalid(why: impl Into<String>) -> SourceError {
    SourceError::Config(format!("invalid PostgreSQL URL: {}", why.into()))
}

/// The settings a connection string gives, by libpq keyword.
#[derive(Default)]
struct Settings(Vec<(String, String)>);

impl Settings {
    fn set(&mut self, key: &str, value: String) -> Result<(), SourceError> {
        const KNOWN: &[&str] = &[
            "host",
            "hostaddr",
            "port",
            "user",
            "password",
            "dbname",
            "application_name",
            "connect_timeout",
            "sslmode",
            "sslrootcert",
            "sslcert",
            "sslkey",
            "passfile",
            "options",
            "channel_binding",
            "target_session_attrs",
            "keepalives",
        ];
        if !KNOWN.contains(&key) {
            return Err(invalid(format!(
                "unknown parameter {key:?} (known: {})",
                KNOWN.join(", ")
            )));
        }
        self.0.retain(|(k, _)| k != key);
        self.0.push((key.to_string(), value));
        Ok(())
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

impl ConnectParams {
    /// Read a libpq URL or key/value string.
    pub fn from_url(text: &str) -> Result<Self, SourceError> {
        Self::parse(text, None)
    }

    /// Read a connection string; `password_file` is read when nothing else gives the
    /// password.
    pub fn parse(text: &str, password_file: Option<&Path>) -> Result<Self, SourceError> {
        let text = text.trim();
        let settings = if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            parse_url(text)?
        } else if text.contains('=') || text.is_empty() {
            parse_key_values(text)?
        } else {
            return Err(invalid(
                "expected postgres://… or key=value pairs (host=… user=… dbname=…)",
            ));
        };
        Self::from_settings(&settings, password_file)
    }

    fn from_settings(s: &Settings, password_file: Option<&Path>) -> Result<Self, SourceError> {
        let port = match s.get("port") {
            Some(p) => p
                .parse::<u16>()
                .map_err(|_| invalid(format!("port {p:?} is not a port number")))?,
            None => 5432,
        };
        let host = s.get("host").or(s.get("hostaddr")).unwrap_or("localhost");
        let host = host.split(',').next().unwrap_or(host);
        let target = if host.starts_with('/') {
            Target::Unix {
                dir: PathBuf::from(host),
                port,
            }
        } else {
            Target::Tcp {
                host: host.trim_matches(['[', ']']).to_string(),
                port,
            }
        };
        let user = s
            .get("user")
            .map(str::to_string)
            .or_else(|| std::env::var("PGUSER").ok())
            .or_else(|| std::env::var("USER").ok())
            .ok_or_else(|| invalid("no user given"))?;
        let dbname = s.get("dbname").unwrap_or(&user).to_string();
        let connect_timeout = match s.get("connect_timeout") {
            Some(t) => Duration::from_secs(
                t.parse()
                    .map_err(|_| invalid(format!("connect_timeout {t:?} is not a number")))?,
            ),
            None => Duration::from_secs(10),
        };
        let mode = match s.get("sslmode") {
            Some(m) => SslMode::parse(m).ok_or_else(|| {
                invalid(format!(
                    "sslmode {m:?} (disable, allow, prefer, require, verify-ca, verify-full)"
                ))
            })?,
            None => SslMode::Prefer,
        };
        let tls = TlsSettings {
            mode,
            root_cert: s.get("sslrootcert").map(PathBuf::from),
            cert: s.get("sslcert").map(PathBuf::from),
            key: s.get("sslkey").map(PathBuf::from),
        };
        tls.check()?;
        let password = password_of(s, &target, &dbname, &user, password_file)?;
        Ok(ConnectParams {
            target,
            user,
            password,
            dbname,
            application_name: s.get("application_name").unwrap_or("walcast").to_string(),
            connect_timeout,
            tls,
        })
    }

    /// The same settings for `tokio-postgres` (ordinary connections).
    pub fn to_tokio_config(&self, application_name: &str) -> tokio_postgres::Config {
        let mut c = tokio_postgres::Config::new();
        match &self.target {
            Target::Tcp { host, port } => c.host(host).port(*port),
            Target::Unix { dir, port } => c.host_path(dir).port(*port),
        };
        // The text forms of values must be those the replication session sends.
        c.user(&self.user)
            .dbname(&self.dbname)
            .application_name(application_name)
            .connect_timeout(self.connect_timeout)
            .options(
                "-c DateStyle=ISO -c IntervalStyle=iso_8601 -c TimeZone=UTC -c extra_float_digits=3 -c bytea_output=hex",
            );
        if let Some(p) = &self.password {
            c.password(p);
        }
        c
    }
}

/// The password: the string's, `PGPASSWORD`, a password file, `password_file`.
fn password_of(
    s: &Settings,
    target: &Target,
    dbname: &str,
    user: &str,
    password_file: Option<&Path>,
) -> Result<Option<Vec<u8>>, SourceError> {
    if let Some(p) = s.get("password") {
        return Ok(Some(p.as_bytes().to_vec()));
    }
    if let Ok(p) = std::env::var("PGPASSWORD") {
        return Ok(Some(p.into_bytes()));
    }
    let passfile = s
        .get("passfile")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("PGPASSFILE").map(PathBuf::from))
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".pgpass")));
    if let Some(found) = passfile.and_then(|f| pgpass_lookup(&f, target, dbname, user)) {
        return Ok(Some(found.into_bytes()));
    }
    match password_file {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                SourceError::Config(format!(
                    "cannot read the password file {}: {e}",
                    path.display()
                ))
            })?;
            Ok(Some(
                text.trim_end_matches(['\n', '\r']).as_bytes().to_vec(),
            ))
        }
        None => Ok(None),
    }
}

/// A `hostname:port:database:username:password` line matching the connection
/// (`*` matches anything; `\:` and `\\` escape).
fn pgpass_lookup(path: &Path, target: &Target, dbname: &str, user: &str) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let (host, port) = match target {
        Target::Tcp { host, port } => (host.clone(), port.to_string()),
        Target::Unix { port, .. } => ("localhost".to_string(), port.to_string()),
    };
    let want = [host.as_str(), port.as_str(), dbname, user];
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
        .find_map(|line| {
            let fields = split_pgpass(line);
            if fields.len() != 5 {
                return None;
            }
            let matches = fields[..4]
                .iter()
                .zip(want)
                .all(|(f, w)| f == "*" || f == w);
            matches.then(|| fields[4].clone())
        })
}

fn split_pgpass(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    fields.last_mut().expect("one field").push(n);
                }
            }
            ':' if fields.len() < 5 => fields.push(String::new()),
            c => fields.last_mut().expect("one field").push(c),
        }
    }
    fields
}

/// `postgres://[user[:password]@][host][:port][/dbname][?key=value&…]`.
fn parse_url(text: &str) -> Result<Settings, SourceError> {
    let rest = text.split_once("://").map(|(_, r)| r).unwrap_or(text);
    let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let mut s = Settings::default();
    let host_port = match authority.rsplit_once('@') {
        Some((user_info, host_port)) => {
            let (user, password) = match user_info.split_once(':') {
                Some((u, p)) => (u, Some(p)),
                None => (user_info, None),
            };
            if !user.is_empty() {
                s.set("user", decode(user)?)?;
            }
            if let Some(p) = password {
                s.set("password", decode(p)?)?;
            }
            host_port
        }
        None => authority,
    };
    let (host, port) = split_host_port(host_port)?;
    if !host.is_empty() {
        s.set("host", decode(host)?)?;
    }
    if let Some(p) = port {
        s.set("port", p.to_string())?;
    }
    if !path.is_empty() {
        s.set("dbname", decode(path)?)?;
    }
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| invalid(format!("query parameter {k:?} has no value", k = pair)))?;
        s.set(&decode(k)?, decode(v)?)?;
    }
    Ok(s)
}

/// `host`, `host:port`, `[::1]:port`.
fn split_host_port(text: &str) -> Result<(&str, Option<&str>), SourceError> {
    if let Some(inner) = text.strip_prefix('[') {
        let (host, after) = inner
            .split_once(']')
            .ok_or_else(|| invalid(format!("unclosed '[' in host {text:?}")))?;
        return Ok((host, after.strip_prefix(':')));
    }
    Ok(match text.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (text, None),
    })
}

fn decode(text: &str) -> Result<String, SourceError> {
    let b = text.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = text
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| invalid(format!("bad percent escape in {text:?}")))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| invalid(format!("{text:?} is not UTF-8 once decoded")))
}

/// `key=value key='quoted value' key=with\ escape`.
fn parse_key_values(text: &str) -> Result<Settings, SourceError> {
    let mut s = Settings::default();
    let mut chars = text.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(s);
        }
        let key: String =
            std::iter::from_fn(|| chars.next_if(|c| *c != '=' && !c.is_whitespace())).collect();
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(invalid(format!("{key:?} is not followed by '='")));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    Some('\\') => value.extend(chars.next()),
                    Some('\'') => break,
                    Some(c) => value.push(c),
                    None => {
                        return Err(invalid(format!("unterminated quote in the value of {key}")))
                    }
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.extend(chars.next());
                } else {
                    value.push(c);
                }
            }
        }
        s.set(&key, value)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_parsing_keeps_the_password_out_of_debug() {
        let p = ConnectParams::from_url("postgres://alice:s3cret@db.example:6543/app").unwrap();
        assert_eq!(p.user, "alice");
        assert_eq!(p.dbname, "app");
        assert_eq!(p.password.as_deref(), Some(&b"s3cret"[..]));
        assert!(matches!(p.target, Target::Tcp { ref host, port: 6543 } if host == "db.example"));
        assert!(!format!("{p:?}").contains("s3cret"));
        let u = ConnectParams::from_url("host=/tmp/pg port=5999 user=bob dbname=x").unwrap();
        assert!(matches!(u.target, Target::Unix { port: 5999, .. }));
        assert!(ConnectParams::from_url("postgres://[bad").is_err());
    }

    #[test]
    fn both_forms_with_tls_settings() {
        let u = ConnectParams::from_url(
            "postgresql://w%40x:p%2Fw@[::1]:5433/my%20db?sslmode=verify-full&sslrootcert=/ca.pem&application_name=a",
        )
        .unwrap();
        assert_eq!((u.user.as_str(), u.dbname.as_str()), ("w@x", "my db"));
        assert_eq!(u.password.as_deref(), Some(&b"p/w"[..]));
        assert!(matches!(u.target, Target::Tcp { ref host, port: 5433 } if host == "::1"));
        assert_eq!(u.tls.mode, SslMode::VerifyFull);
        assert_eq!(u.tls.root_cert.as_deref(), Some(Path::new("/ca.pem")));
        assert_eq!(u.application_name, "a");
        let k = ConnectParams::from_url(
            "host=db user=w password='it''s \\' x' dbname=app sslmode=require",
        );
        assert!(k.is_err(), "'' is not an escape in libpq");
        let k =
            ConnectParams::from_url("host=db user=w password='a \\' b' sslmode=require").unwrap();
        assert_eq!(k.password.as_deref(), Some(&b"a ' b"[..]));
        assert_eq!(k.tls.mode, SslMode::Require);
    }

    #[test]
    fn errors_name_what_is_wrong() {
        for (text, names) in [
            ("postgres://u@h/db?sslmode=verify", "sslmode \"verify\""),
            (
                "postgres://u@h/db?sslmod=require",
                "unknown parameter \"sslmod\"",
            ),
            ("postgres://u@h:54x2/db", "port \"54x2\""),
            ("host=h user", "\"user\" is not followed by '='"),
            ("host=h user=u password='x", "unterminated quote"),
            ("just-a-host", "expected postgres://"),
            ("postgres://u@h/db?sslmode=verify-ca", "needs sslrootcert"),
        ] {
            let e = ConnectParams::from_url(text).unwrap_err().to_string();
            assert!(e.contains(names), "{text}: {e}");
        }
    }

    #[test]
    fn password_file_lines_match_with_wildcards_and_escapes() {
        let dir = tempfile_dir();
        let f = dir.join("pgpass");
        std::fs::write(
            &f,
            "# comment\nother:5432:*:u:no\ndb:5432:app:u:p\\:w\\\\d\n*:*:*:*:fallback\n",
        )
        .unwrap();
        let tcp = Target::Tcp {
            host: "db".into(),
            port: 5432,
        };
        assert_eq!(
            pgpass_lookup(&f, &tcp, "app", "u").as_deref(),
            Some("p:w\\d")
        );
        assert_eq!(
            pgpass_lookup(&f, &tcp, "x", "v").as_deref(),
            Some("fallback")
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    fn tempfile_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("walcast-pgpass-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
