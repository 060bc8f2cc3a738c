//! The value parsers of the command line: each refuses a bad value with the reason.

use std::net::SocketAddr;
use std::time::Duration;

use crate::wire::Op;

/// A NATS subject pattern: non-empty tokens without white space, `*` a whole token,
/// `>` only as the whole last token.
pub(super) fn parse_subject_pattern(s: &str) -> Result<String, String> {
    let tokens: Vec<&str> = s.split('.').collect();
    let bad = |why: &str| Err(format!("{s:?} is not a valid subject pattern: {why}"));
    for (i, t) in tokens.iter().enumerate() {
        if t.is_empty() {
            return bad("empty token");
        }
        if t.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return bad("white space or control characters");
        }
        if t.contains('>') && (*t != ">" || i + 1 != tokens.len()) {
            return bad("'>' must be the whole last token");
        }
        if t.contains('*') && *t != "*" {
            return bad("'*' must be a whole token");
        }
    }
    Ok(s.to_string())
}

/// `host:port` or `ip:port`, resolved once.
pub(super) fn parse_listen_addr(s: &str) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs;
    s.to_socket_addrs()
        .map_err(|e| format!("{s:?} is not a host:port address: {e}"))?
        .next()
        .ok_or_else(|| format!("{s:?} resolves to no address"))
}

/// Seconds, or 0 for off.
pub(super) fn parse_seconds_or_off(s: &str) -> Result<Duration, String> {
    if s.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    parse_seconds(s)
}

pub(super) fn parse_millis(s: &str) -> Result<Duration, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of milliseconds"))?;
    if !(0.0..=1000.0).contains(&v) {
        return Err(format!("{s:?} must be between 0 and 1000 milliseconds"));
    }
    Ok(Duration::from_secs_f64(v / 1000.0))
}

pub(super) fn parse_seconds(s: &str) -> Result<Duration, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !(v > 0.0 && v.is_finite()) {
        return Err(format!("{s:?} must be a positive number of seconds"));
    }
    Ok(Duration::from_secs_f64(v))
}

pub(super) fn parse_table_value(s: &str) -> Result<(String, String), String> {
    let (table, value) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected schema.table=value"))?;
    if !table.contains('.') || value.is_empty() {
        return Err(format!("{s:?}: expected schema.table=value"));
    }
    Ok((table.to_string(), value.to_string()))
}

/// `schema.table=seconds`, whole seconds of at least 1 (`--delete-ttl`: NATS message
/// TTLs count whole seconds).
pub(super) fn parse_table_seconds(s: &str) -> Result<(String, Duration), String> {
    let (table, secs) = parse_table_value(s)?;
    match secs.parse::<u64>() {
        Ok(n) if n >= 1 => Ok((table, Duration::from_secs(n))),
        _ => Err(format!(
            "{s:?}: expected schema.table=<whole seconds, at least 1>"
        )),
    }
}

/// `schema.table=bytes` (`--compress`: the smallest row encoding compressed).
pub(super) fn parse_table_bytes(s: &str) -> Result<(String, usize), String> {
    let (table, bytes) = parse_table_value(s)?;
    let bytes = bytes
        .parse::<usize>()
        .map_err(|_| format!("{s:?}: expected schema.table=<bytes>"))?;
    Ok((table, bytes))
}

/// `schema.table` (`--encrypt`).
pub(super) fn parse_table_name(s: &str) -> Result<String, String> {
    match s.split_once('.') {
        Some((schema, table)) if !schema.is_empty() && !table.is_empty() && !s.contains('=') => {
            Ok(s.to_string())
        }
        _ => Err(format!("{s:?}: expected schema.table")),
    }
}

pub(super) fn parse_table_ops(s: &str) -> Result<(String, Vec<Op>), String> {
    let (table, ops) = parse_table_value(s)?;
    let ops = ops
        .split('+')
        .map(|o| {
            Op::parse(o)
                .ok_or_else(|| format!("{o:?} is not an op (insert, update, delete, truncate)"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((table, ops))
}

pub(super) fn parse_slot_name(s: &str) -> Result<String, String> {
    if s.is_empty()
        || s.len() > 63
        || !s
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(format!(
            "{s:?} is not a valid slot name: use 1 to 63 lower-case letters, digits and underscores"
        ));
    }
    Ok(s.to_string())
}

pub(super) fn parse_prefix(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.split('.').all(|t| {
            !t.is_empty()
                && t.bytes()
                    .all(|b| b.is_ascii_graphic() && b != b'*' && b != b'>')
        });
    if !ok {
        return Err(format!(
            "{s:?} is not a valid subject prefix: dot-separated non-empty tokens without spaces, '*' or '>'"
        ));
    }
    Ok(s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_values_with_a_reason() {
        assert!(parse_slot_name("Bad-Slot").is_err());
        assert!(parse_slot_name("good_slot_1").is_ok());
        assert!(parse_prefix("a..b").is_err());
        assert!(parse_prefix("cdc.prod").is_ok());
        assert!(parse_prefix("a.*").is_err());
        assert!(parse_seconds("0").is_err());
        assert_eq!(parse_seconds("0.5").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_millis("0").unwrap(), Duration::ZERO);
        assert_eq!(parse_millis("2.5").unwrap(), Duration::from_micros(2500));
        for bad in ["-1", "1001", "soon", "NaN"] {
            assert!(parse_millis(bad).is_err(), "{bad}");
        }
        let ttl = parse_table_seconds("public.s=3600").unwrap();
        assert_eq!(ttl, ("public.s".into(), Duration::from_secs(3600)));
        for bad in ["public.s=0", "public.s=1.5", "public.s=", "s=60"] {
            assert!(parse_table_seconds(bad).is_err(), "{bad}");
        }
    }
}
