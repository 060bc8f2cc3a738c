//! NATS server URLs as users write them: `nats://user:password@host:4222`,
//! `nats://token@host`, several servers comma-separated. The client library does not
//! take credentials from a URL, so they are moved into the connect options here; and
//! every URL is shown redacted (`***` for a password or token), never as given.

use std::path::PathBuf;

use async_nats::ConnectOptions;

use super::ClientError;

/// Credentials found in a NATS URL.
#[derive(Clone, PartialEq, Eq)]
enum UrlAuth {
    UserPassword(String, String),
    Token(String),
}

/// Parsed NATS server URL(s).
#[derive(Clone)]
pub struct NatsUrl {
    /// The servers, without credentials.
    servers: Vec<String>,
    auth: Option<UrlAuth>,
}

impl std::fmt::Debug for NatsUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NatsUrl({})", self.redacted())
    }
}

impl NatsUrl {
    /// Read one URL or several comma-separated ones (a cluster). Credentials may sit
    /// in any of them; they must agree.
    pub fn parse(text: &str) -> Result<NatsUrl, ClientError> {
        let mut servers = Vec::new();
        let mut auth = None;
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (server, found) = split_user_info(part);
            if let Some(found) = found {
                if auth.as_ref().is_some_and(|a| *a != found) {
                    return Err(ClientError::Url(format!(
                        "{}: the servers name different credentials",
                        redact_url(text)
                    )));
                }
                auth = Some(found);
            }
            servers.push(server);
        }
        if servers.is_empty() {
            return Err(ClientError::Url("no NATS server URL given".into()));
        }
        Ok(NatsUrl { servers, auth })
    }

    /// The servers as they may be shown: `nats://***@host:4222` when credentials
    /// were given.
    pub fn redacted(&self) -> String {
        let mark = if self.auth.is_some() { "***@" } else { "" };
        self.servers
            .iter()
            .map(|s| match s.split_once("://") {
                Some((scheme, rest)) => format!("{scheme}://{mark}{rest}"),
                None => format!("{mark}{s}"),
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The servers, without credentials.
    pub fn servers(&self) -> &[String] {
        &self.servers
    }

    /// Connect options carrying the URL's credentials.
    pub fn options(&self) -> ConnectOptions {
        match &self.auth {
            Some(UrlAuth::UserPassword(u, p)) => {
                ConnectOptions::new().user_and_password(u.clone(), p.clone())
            }
            Some(UrlAuth::Token(t)) => ConnectOptions::new().token(t.clone()),
            None => ConnectOptions::new(),
        }
    }

    /// Connect with `options` (which should come from [`NatsUrl::options`]).
    pub async fn connect_with(
        &self,
        options: ConnectOptions,
    ) -> Result<async_nats::Client, async_nats::ConnectError> {
        options.connect(self.servers.clone()).await
    }
}

/// Credentials and TLS for NATS beyond what a URL carries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NatsAuth {
    /// A `.creds` file (user JWT and NKey seed).
    pub creds_file: Option<PathBuf>,
    /// A file holding a user NKey seed (`SU…`).
    pub nkey_seed_file: Option<PathBuf>,
    /// CA certificate(s) (PEM) the server's certificate must chain to.
    pub tls_ca: Option<PathBuf>,
    /// Client certificate and key (PEM), for servers that verify clients.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Refuse a connection without TLS (implied by `tls://` URLs).
    pub tls_required: bool,
}

impl NatsUrl {
    /// Connect options with the URL's credentials and `auth`'s.
    pub async fn options_with(&self, auth: &NatsAuth) -> Result<ConnectOptions, ClientError> {
        let file_error = |what: &str, path: &PathBuf, e: std::io::Error| {
            ClientError::Url(format!("{what} {}: {e}", path.display()))
        };
        let mut options = match &auth.creds_file {
            Some(path) => ConnectOptions::with_credentials_file(path)
                .await
                .map_err(|e| file_error("NATS credentials file", path, e))?,
            None => self.options(),
        };
        if let Some(path) = &auth.nkey_seed_file {
            let seed = std::fs::read_to_string(path)
                .map_err(|e| file_error("NATS NKey seed file", path, e))?;
            options = options.nkey(seed.trim().to_string());
        }
        if let Some(ca) = &auth.tls_ca {
            options = options.add_root_certificates(ca.clone());
        }
        match (&auth.tls_cert, &auth.tls_key) {
            (Some(cert), Some(key)) => {
                options = options.add_client_certificate(cert.clone(), key.clone())
            }
            (None, None) => {}
            _ => {
                return Err(ClientError::Url(
                    "a NATS client certificate needs both its certificate and its key".into(),
                ))
            }
        }
        let tls_url = self.servers.iter().any(|s| s.starts_with("tls://"));
        Ok(options.require_tls(auth.tls_required || tls_url))
    }
}

/// Connect to NATS with the credentials the URL carries.
pub async fn connect(url: &str) -> Result<async_nats::Client, ClientError> {
    connect_with_auth(url, &NatsAuth::default()).await
}

/// Connect to NATS with the URL's credentials and `auth`'s.
pub async fn connect_with_auth(
    url: &str,
    auth: &NatsAuth,
) -> Result<async_nats::Client, ClientError> {
    let url = NatsUrl::parse(url)?;
    url.connect_with(url.options_with(auth).await?)
        .await
        .map_err(|e| ClientError::Nats(format!("cannot connect to {}: {e}", url.redacted())))
}

/// `scheme://user:pass@host` → (`scheme://host`, credentials).
fn split_user_info(part: &str) -> (String, Option<UrlAuth>) {
    let (scheme, rest) = match part.split_once("://") {
        Some((s, r)) => (Some(s), r),
        None => (None, part),
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    let Some((user_info, host)) = authority.rsplit_once('@') else {
        return (part.to_string(), None);
    };
    let auth = match user_info.split_once(':') {
        Some((u, p)) => UrlAuth::UserPassword(percent_decode(u), percent_decode(p)),
        None => UrlAuth::Token(percent_decode(user_info)),
    };
    let server = match scheme {
        Some(s) => format!("{s}://{host}{path}"),
        None => format!("{host}{path}"),
    };
    (server, Some(auth))
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) if hex(h).is_some() && hex(l).is_some() => {
                out.push((hex(h).unwrap() * 16 + hex(l).unwrap()) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Any URL or libpq key/value string with its secrets replaced by `***`: the
/// password (or token) of `scheme://user:password@host`, and `password=...`.
pub fn redact_url(text: &str) -> String {
    let mut out = Vec::new();
    for part in text.split(',') {
        out.push(redact_one(part));
    }
    out.join(",")
}

fn redact_one(part: &str) -> String {
    if let Some((scheme, rest)) = part.split_once("://") {
        let authority_end = rest.find('/').unwrap_or(rest.len());
        let (authority, path) = rest.split_at(authority_end);
        if let Some((user_info, host)) = authority.rsplit_once('@') {
            let shown = match user_info.split_once(':') {
                Some((user, _)) => format!("{user}:***"),
                // A PostgreSQL URL's lone user info is the user; a NATS URL's, a token.
                None if scheme.starts_with("postgres") => user_info.to_string(),
                None => "***".to_string(),
            };
            let path = redact_query(path);
            return format!("{scheme}://{shown}@{host}{path}");
        }
        return format!("{scheme}://{authority}{}", redact_query(path));
    }
    redact_key_values(part)
}

/// `?password=...` and `&sslpassword=...` in a URL's query.
fn redact_query(path: &str) -> String {
    match path.split_once('?') {
        Some((p, q)) => {
            let q: Vec<String> = q
                .split('&')
                .map(|kv| match kv.split_once('=') {
                    Some((k, _)) if k.to_ascii_lowercase().contains("password") => {
                        format!("{k}=***")
                    }
                    _ => kv.to_string(),
                })
                .collect();
            format!("{p}?{}", q.join("&"))
        }
        None => path.to_string(),
    }
}

/// `password=secret` (or `password='se cret'`) in a libpq key/value string.
fn redact_key_values(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("password") {
        let (before, after) = rest.split_at(i + "password".len());
        out.push_str(before);
        let trimmed = after.trim_start();
        let Some(value) = trimmed.strip_prefix('=') else {
            rest = after;
            continue;
        };
        out.push_str("=***");
        let value = value.trim_start();
        let end = if let Some(quoted) = value.strip_prefix('\'') {
            quoted.find('\'').map(|j| j + 2).unwrap_or(value.len())
        } else {
            value.find(char::is_whitespace).unwrap_or(value.len())
        };
        rest = &value[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_move_out_of_the_url() {
        let u = NatsUrl::parse("nats://walcast:p%40ss@127.0.0.1:4222").unwrap();
        assert_eq!(u.servers(), ["nats://127.0.0.1:4222"]);
        assert!(u.auth == Some(UrlAuth::UserPassword("walcast".into(), "p@ss".into())));
        assert_eq!(u.redacted(), "nats://***@127.0.0.1:4222");
        let t = NatsUrl::parse("tls://s3cr3t@a:1, tls://s3cr3t@b:2").unwrap();
        assert_eq!(t.servers(), ["tls://a:1", "tls://b:2"]);
        assert!(t.auth == Some(UrlAuth::Token("s3cr3t".into())));
        assert!(!format!("{t:?}").contains("s3cr3t"));
        assert!(NatsUrl::parse("nats://a:x@h1,nats://b:y@h2").is_err());
        assert!(NatsUrl::parse(" , ").is_err());
    }

    #[test]
    fn redaction_hides_every_password_form() {
        for (given, shown) in [
            (
                "postgres://u:pw@db:5432/app",
                "postgres://u:***@db:5432/app",
            ),
            (
                "postgres://u@db/app?password=pw&sslmode=require",
                "postgres://u@db/app?password=***&sslmode=require",
            ),
            (
                "host=db user=u password=pw dbname=app",
                "host=db user=u password=*** dbname=app",
            ),
            (
                "host=db password = 'p w' dbname=app",
                "host=db password=*** dbname=app",
            ),
            (
                "nats://tok@h:1,nats://u:pw@h:2",
                "nats://***@h:1,nats://u:***@h:2",
            ),
            ("nats://h:4222", "nats://h:4222"),
        ] {
            assert_eq!(redact_url(given), shown);
        }
    }
}
