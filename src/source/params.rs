//! Where and as whom to connect: [`ConnectParams`], read once from a libpq URL or
//! key/value string ([`connection_string`](super::connection_string)), the password
//! from wherever it is given ([`password`](super::password)), TLS as `sslmode` says
//! ([`tls`](super::tls)). `Debug` never shows the password.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::connection_string::Settings;
use super::password::password_of;
use super::tls::TlsSettings;
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

impl ConnectParams {
    /// Read a libpq URL or key/value string.
    pub fn from_url(text: &str) -> Result<Self, SourceError> {
        Self::parse(text, None)
    }

    /// Read a connection string; `password_file` is read when nothing else gives the
    /// password.
    pub fn parse(text: &str, password_file: Option<&Path>) -> Result<Self, SourceError> {
        Self::from_settings(&Settings::parse(text.trim())?, password_file)
    }

    fn from_settings(s: &Settings, password_file: Option<&Path>) -> Result<Self, SourceError> {
        let target = s.target()?;
        let user = s.user()?;
        let dbname = s.get("dbname").unwrap_or(&user).to_string();
        let connect_timeout = s.connect_timeout()?;
        let tls = s.tls()?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::tls::SslMode;

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
}
