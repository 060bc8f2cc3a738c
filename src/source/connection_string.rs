//! Reading a libpq connection string into its settings: the URL form
//! (`postgres://user:pw@host:5432/db?sslmode=verify-full`) or the key/value form
//! (`host=db user=walcast sslmode=require`), each keyword checked against those libpq
//! knows; then what the settings say of the target, the user, the timeout and TLS,
//! with a precise error naming what is wrong.
//!
//! [`Settings`] has no `Debug`: it holds the password.

use std::path::PathBuf;
use std::time::Duration;

use super::params::Target;
use super::tls::{SslMode, TlsSettings};
use super::SourceError;

/// The error for a connection string that cannot be read.
pub(super) fn invalid(why: impl Into<String>) -> SourceError {
    SourceError::Config(format!("invalid PostgreSQL URL: {}", why.into()))
}

/// The keywords of libpq a connection string may use.
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

/// The settings a connection string gives, by libpq keyword.
#[derive(Default)]
pub(super) struct Settings(Vec<(String, String)>);

impl Settings {
    /// Read a libpq URL or key/value string.
    pub(super) fn parse(text: &str) -> Result<Settings, SourceError> {
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            parse_url(text)
        } else if text.contains('=') || text.is_empty() {
            parse_key_values(text)
        } else {
            Err(invalid(
                "expected postgres://… or key=value pairs (host=… user=… dbname=…)",
            ))
        }
    }

    fn set(&mut self, key: &str, value: String) -> Result<(), SourceError> {
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

    pub(super) fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// `host` (or `hostaddr`; the first of a list) and `port`: a Unix socket
    /// directory when the host is a path. Default `localhost:5432`.
    pub(super) fn target(&self) -> Result<Target, SourceError> {
        let port = match self.get("port") {
            Some(p) => p
                .parse::<u16>()
                .map_err(|_| invalid(format!("port {p:?} is not a port number")))?,
            None => 5432,
        };
        let host = self
            .get("host")
            .or(self.get("hostaddr"))
            .unwrap_or("localhost");
        let host = host.split(',').next().unwrap_or(host);
        Ok(if host.starts_with('/') {
            Target::Unix {
                dir: PathBuf::from(host),
                port,
            }
        } else {
            Target::Tcp {
                host: host.trim_matches(['[', ']']).to_string(),
                port,
            }
        })
    }

    /// `user`, else `PGUSER`, else `USER`.
    pub(super) fn user(&self) -> Result<String, SourceError> {
        self.get("user")
            .map(str::to_string)
            .or_else(|| std::env::var("PGUSER").ok())
            .or_else(|| std::env::var("USER").ok())
            .ok_or_else(|| invalid("no user given"))
    }

    /// `connect_timeout` in seconds, 10 by default.
    pub(super) fn connect_timeout(&self) -> Result<Duration, SourceError> {
        Ok(match self.get("connect_timeout") {
            Some(t) => Duration::from_secs(
                t.parse()
                    .map_err(|_| invalid(format!("connect_timeout {t:?} is not a number")))?,
            ),
            None => Duration::from_secs(10),
        })
    }

    /// `sslmode` (`prefer` by default), `sslrootcert`, `sslcert`, `sslkey`, checked.
    pub(super) fn tls(&self) -> Result<TlsSettings, SourceError> {
        let mode = match self.get("sslmode") {
            Some(m) => SslMode::parse(m).ok_or_else(|| {
                invalid(format!(
                    "sslmode {m:?} (disable, allow, prefer, require, verify-ca, verify-full)"
                ))
            })?,
            None => SslMode::Prefer,
        };
        let tls = TlsSettings {
            mode,
            root_cert: self.get("sslrootcert").map(PathBuf::from),
            cert: self.get("sslcert").map(PathBuf::from),
            key: self.get("sslkey").map(PathBuf::from),
        };
        tls.check()?;
        Ok(tls)
    }
}

/// `postgres://[user[:password]@][host][:port][/dbname][?key=value&…]`.
fn parse_url(text: &str) -> Result<Settings, SourceError> {
    let rest = text.split_once("://").map(|(_, r)| r).unwrap_or(text);
    let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let mut s = Settings::default();
    let host_port = match authority.rsplit_once('@') {
        Some((user_info, host_port)) => {
            set_user_info(&mut s, user_info)?;
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

/// The `user[:password]` before the `@` of a URL.
fn set_user_info(s: &mut Settings, user_info: &str) -> Result<(), SourceError> {
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
    Ok(())
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

/// Percent-decoding of a URL part.
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

type Chars<'a> = std::iter::Peekable<std::str::Chars<'a>>;

/// `key=value key='quoted value' key=with\ escape`.
fn parse_key_values(text: &str) -> Result<Settings, SourceError> {
    let mut s = Settings::default();
    let mut chars = text.chars().peekable();
    loop {
        skip_whitespace(&mut chars);
        if chars.peek().is_none() {
            return Ok(s);
        }
        let key: String =
            std::iter::from_fn(|| chars.next_if(|c| *c != '=' && !c.is_whitespace())).collect();
        skip_whitespace(&mut chars);
        if chars.next() != Some('=') {
            return Err(invalid(format!("{key:?} is not followed by '='")));
        }
        skip_whitespace(&mut chars);
        let value = if chars.next_if_eq(&'\'').is_some() {
            quoted_value(&mut chars, &key)?
        } else {
            bare_value(&mut chars)
        };
        s.set(&key, value)?;
    }
}

fn skip_whitespace(chars: &mut Chars<'_>) {
    while chars.next_if(|c| c.is_whitespace()).is_some() {}
}

/// The rest of a `'…'` value (after the opening quote): `\` escapes the next character.
fn quoted_value(chars: &mut Chars<'_>, key: &str) -> Result<String, SourceError> {
    let mut value = String::new();
    loop {
        match chars.next() {
            Some('\\') => value.extend(chars.next()),
            Some('\'') => return Ok(value),
            Some(c) => value.push(c),
            None => return Err(invalid(format!("unterminated quote in the value of {key}"))),
        }
    }
}

/// A value up to the next whitespace: `\` escapes the next character.
fn bare_value(chars: &mut Chars<'_>) -> String {
    let mut value = String::new();
    while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
        if c == '\\' {
            value.extend(chars.next());
        } else {
            value.push(c);
        }
    }
    value
}
