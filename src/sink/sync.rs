//! What a JetStream acknowledgement guarantees, and the flush horizon that makes it
//! survive a NATS host crash. nats-server acknowledges a message once it is written
//! to its store (and, in a replicated stream, to a quorum's), but syncs the store to
//! disk only every `sync_interval` (2 minutes by default; `always` syncs each write):
//! a power loss or kernel crash can lose up to that much acknowledged data. walcast
//! therefore reports a WAL position to PostgreSQL only `--flush-delay` after NATS
//! acknowledged it; the default (`auto`) reads the servers' `sync_interval` from their
//! monitoring endpoint (`--nats-monitor-url`, `/varz`): the client protocol does not
//! carry it, and the system account's `$SYS` requests need privileges walcast's user
//! should not have.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `--flush-delay`: `auto` or a number of seconds (0: report at once).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushDelay {
    Auto,
    Fixed(Duration),
}

impl std::str::FromStr for FlushDelay {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.trim().eq_ignore_ascii_case("auto") {
            return Ok(FlushDelay::Auto);
        }
        let v: f64 = s
            .trim()
            .parse()
            .map_err(|_| format!("{s:?}: expected `auto` or a number of seconds"))?;
        if !(v >= 0.0 && v.is_finite()) {
            return Err(format!("{s:?}: the delay must be 0 or more seconds"));
        }
        Ok(FlushDelay::Fixed(Duration::from_secs_f64(v)))
    }
}

/// The flush horizon as configured (resolved at start by [`resolve`]).
#[derive(Debug, Clone)]
pub struct FlushSettings {
    pub delay: FlushDelay,
    /// A NATS server's monitoring endpoint (`--nats-monitor-url`).
    pub monitor_url: Option<String>,
}

/// How a NATS server syncs its JetStream store (`/varz`'s `jetstream.config`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerSync {
    pub interval: Duration,
    /// `sync_interval: always`: every write is synced before it is acknowledged.
    pub always: bool,
}

/// Read how the server behind `monitor_url` (`http://host:8222`) syncs.
pub async fn read_sync(monitor_url: &str) -> Result<ServerSync, String> {
    let varz = http_get_json(monitor_url, "/varz").await?;
    let config = &varz["jetstream"]["config"];
    let nanos = config["sync_interval"].as_u64().ok_or_else(|| {
        format!(
            "{}/varz names no jetstream sync_interval",
            crate::client::redact_url(monitor_url)
        )
    })?;
    Ok(ServerSync {
        interval: Duration::from_nanos(nanos),
        always: config["sync_always"].as_bool().unwrap_or(false),
    })
}

/// The delay to use, and what it rests on (for the log and `walcast check`).
pub async fn resolve(delay: FlushDelay, monitor_url: Option<&str>) -> (Duration, String) {
    match (delay, monitor_url) {
        (FlushDelay::Fixed(d), _) => (d, format!("--flush-delay {}", d.as_secs_f64())),
        (FlushDelay::Auto, None) => (
            Duration::ZERO,
            "--flush-delay auto without --nats-monitor-url: 0 (the servers' sync_interval is unknown)".into(),
        ),
        (FlushDelay::Auto, Some(url)) => match read_sync(url).await {
            Ok(ServerSync { always: true, .. }) => {
                (Duration::ZERO, "the server syncs every write (sync_interval: always)".into())
            }
            Ok(sync) => (
                sync.interval,
                format!("the server's sync_interval ({} s)", sync.interval.as_secs_f64()),
            ),
            Err(e) => (Duration::ZERO, format!("--flush-delay auto: 0, {e}")),
        },
    }
}

/// What an acknowledged change survives with `replicas` copies, this flush delay and
/// the server's sync (when known): (whether a NATS host crash loses nothing, why).
pub fn guarantee(replicas: usize, delay: Duration, sync: Option<ServerSync>) -> (bool, String) {
    let copies = if replicas > 1 {
        format!("a quorum of {replicas} servers holds each acknowledged envelope (one host lost is survived)")
    } else {
        "one server holds each acknowledged envelope".to_string()
    };
    match sync {
        Some(ServerSync { always: true, .. }) => (true, format!("{copies}; the server syncs every write: a host crash loses nothing acknowledged")),
        Some(s) if delay >= s.interval => (true, format!("{copies}; WAL is held {} s after acknowledgement, at least the server's sync_interval ({} s): what a host crash loses unsynced is published again from the slot", delay.as_secs_f64(), s.interval.as_secs_f64())),
        Some(s) => (false, format!("{copies}; the server syncs every {} s and walcast holds WAL {} s after acknowledgement: a host crash (power loss) may lose up to {} s of acknowledged changes for good", s.interval.as_secs_f64(), delay.as_secs_f64(), (s.interval.saturating_sub(delay)).as_secs_f64())),
        None => (delay > Duration::ZERO, format!("{copies}; WAL is held {} s after acknowledgement; the server's sync_interval is unknown (give --nats-monitor-url): with nats-server's default of 120 s a host crash may lose acknowledged changes unless the delay covers it", delay.as_secs_f64())),
    }
}

/// GET `path` from a plain-HTTP monitoring endpoint, as JSON.
/// Errors name the URL redacted (a monitoring URL may carry credentials).
async fn http_get_json(url: &str, path: &str) -> Result<serde_json::Value, String> {
    let base = crate::client::redact_url(url);
    let base = base.as_str();
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{base}: the monitoring URL must be http://host:port"))?;
    let authority = rest.split('/').next().unwrap_or(rest);
    // Credentials in the URL are not sent (the monitoring endpoint is read unauthenticated).
    let host = authority.rsplit('@').next().unwrap_or(authority);
    let fetch = async {
        let mut s = tokio::net::TcpStream::connect(host).await?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes())
            .await?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await?;
        Ok::<_, std::io::Error>(out)
    };
    let out = tokio::time::timeout(Duration::from_secs(5), fetch)
        .await
        .map_err(|_| format!("{base}{path}: no answer within 5 s"))?
        .map_err(|e| format!("{base}{path}: {e}"))?;
    let text = String::from_utf8_lossy(&out);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .ok_or_else(|| format!("{base}{path}: not an HTTP answer"))?;
    serde_json::from_str(body).map_err(|e| format!("{base}{path}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flush_delay_is_auto_or_seconds() {
        assert_eq!("auto".parse(), Ok(FlushDelay::Auto));
        assert_eq!("0".parse(), Ok(FlushDelay::Fixed(Duration::ZERO)));
        assert_eq!(
            "2.5".parse(),
            Ok(FlushDelay::Fixed(Duration::from_millis(2500)))
        );
        assert!("-1".parse::<FlushDelay>().is_err());
        assert!("soon".parse::<FlushDelay>().is_err());
    }

    #[test]
    fn an_unreachable_monitoring_url_is_named_without_its_password() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let url = format!("http://u:s3cret@127.0.0.1:{port}");
        let e = rt.block_on(read_sync(&url)).unwrap_err();
        assert!(!e.contains("s3cret") && e.contains("u:***"), "{e}");
    }

    #[test]
    fn the_guarantee_holds_when_the_delay_covers_the_sync() {
        let sync = |secs, always| {
            Some(ServerSync {
                interval: Duration::from_secs(secs),
                always,
            })
        };
        assert!(guarantee(1, Duration::from_secs(120), sync(120, false)).0);
        assert!(guarantee(1, Duration::ZERO, sync(120, true)).0);
        let (held, why) = guarantee(3, Duration::ZERO, sync(120, false));
        assert!(!held && why.contains("120 s of acknowledged changes") && why.contains("quorum"));
        assert!(!guarantee(1, Duration::ZERO, None).0);
    }
}
