//! Where and as whom to connect: a libpq-style URL or key/value string, read once.

use std::path::PathBuf;
use std::time::Duration;

use super::SourceError;

/// Where and as whom to connect.
#[derive(Clone)]
pub struct ConnectParams {
    pub target: Target,
    pub user: String,
    pub password: Option<Vec<u8>>,
    pub dbname: String,
    pub application_name: String,
    pub connect_timeout: Duration,
}

impl std::fmt::Debug for ConnectParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectParams")
            .field("target", &self.target)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("dbname", &self.dbname)
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

impl ConnectParams {
    /// Read a libpq-style URL or key/value string (as `tokio-postgres` accepts it).
    pub fn from_url(url: &str) -> Result<Self, SourceError> {
        let config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| SourceError::Config(format!("invalid PostgreSQL URL: {e}")))?;
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let target = match config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => Target::Tcp {
                host: h.clone(),
                port,
            },
            Some(tokio_postgres::config::Host::Unix(p)) => Target::Unix {
                dir: p.clone(),
                port,
            },
            None => Target::Tcp {
                host: "localhost".into(),
                port,
            },
        };
        let user = config
            .get_user()
            .map(str::to_string)
            .or_else(|| std::env::var("USER").ok())
            .ok_or_else(|| SourceError::Config("PostgreSQL URL names no user".into()))?;
        Ok(ConnectParams {
            target,
            dbname: config.get_dbname().unwrap_or(&user).to_string(),
            user,
            password: config.get_password().map(<[u8]>::to_vec),
            application_name: config
                .get_application_name()
                .unwrap_or("walcast")
                .to_string(),
            connect_timeout: config
                .get_connect_timeout()
                .copied()
                .unwrap_or(Duration::from_secs(10)),
        })
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
        assert!(matches!(p.target, Target::Tcp { ref host, port: 6543 } if host == "db.example"));
        assert!(!format!("{p:?}").contains("s3cret"));
        let u = ConnectParams::from_url("host=/tmp/pg port=5999 user=bob dbname=x").unwrap();
        assert!(matches!(u.target, Target::Unix { port: 5999, .. }));
        assert!(ConnectParams::from_url("postgres://[bad").is_err());
    }
}
