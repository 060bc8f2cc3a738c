//! Where the password comes from, first found wins: the connection string, else
//! `PGPASSWORD`, else a password file (`passfile`, `PGPASSFILE`, `~/.pgpass`, lines
//! `hostname:port:database:username:password`), else `--postgres-password-file` (a
//! Kubernetes secret mounted as a file). The password is never logged.

use std::path::{Path, PathBuf};

use super::connection_string::Settings;
use super::params::Target;
use super::SourceError;

/// The password: the string's, `PGPASSWORD`, a password file, `password_file`.
pub(super) fn password_of(
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
    password_file.map(read_password_file).transpose()
}

/// The whole of `--postgres-password-file`, without the line end.
fn read_password_file(path: &Path) -> Result<Vec<u8>, SourceError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        SourceError::Config(format!(
            "cannot read the password file {}: {e}",
            path.display()
        ))
    })?;
    Ok(text.trim_end_matches(['\n', '\r']).as_bytes().to_vec())
}

/// A `hostname:port:database:username:password` line matching the connection
/// (`*` matches anything; `\:` and `\\` escape). A Unix socket is `localhost`.
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

/// The fields of a password file line, escapes resolved (the last field takes the
/// rest of the line, colons included).
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

#[cfg(test)]
mod tests {
    use super::*;

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
