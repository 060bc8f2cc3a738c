//! The optional TOML configuration file, read as the defaults of the flags it names,
//! so that precedence is flag > environment > file > default (no process environment
//! is changed).

use std::collections::HashMap;

use super::names::closest;
use super::Cli;

/// A configuration file that could not be used.
#[derive(Debug, thiserror::Error)]
#[error("configuration file {path}: {problem}")]
pub struct ConfigFileError {
    pub path: String,
    pub problem: String,
}

/// The command line, with the optional TOML configuration file (`--config <path>` or
/// `WALCAST_CONFIG`) as the defaults of the flags it names: clap then gives a flag
/// precedence over its variable, and the variable over the file. Top-level keys are
/// the flag names with `_` (`postgres_url = "..."`); `[tables."schema.table"]`
/// sections take `sequence_column`, `include_columns`, `exclude_columns`, `ops`,
/// `delete_ttl`, `compress` (bytes), `encrypt` (true) and `encrypt_columns`.
/// A bad command line exits the process with clap's message, as `Cli::parse` does.
pub fn parse_command_line(args: &[std::ffi::OsString]) -> Result<Cli, ConfigFileError> {
    let mut command = <Cli as clap::CommandFactory>::command();
    if let Some(path) = config_path(args) {
        let defaults = read_defaults(&path)?;
        command = with_defaults(command, &defaults);
    }
    let matches = command
        .try_get_matches_from(args)
        .unwrap_or_else(|e| e.exit());
    <Cli as clap::FromArgMatches>::from_arg_matches(&matches).map_err(|e| e.exit())
}

/// Each flag (by its long name) the file gives a value, with the value(s) as text.
type Defaults = HashMap<String, Vec<String>>;

/// The file's values, keyed by the flag they stand for.
fn read_defaults(path: &str) -> Result<Defaults, ConfigFileError> {
    let err = |problem: String| ConfigFileError {
        path: path.to_string(),
        problem,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    // The parser's own message quotes the offending line, which may hold a password:
    // only its message and position are shown.
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        let line = e
            .span()
            .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
        let at = line.map(|l| format!("line {l}: ")).unwrap_or_default();
        err(format!("{at}{}", e.message()))
    })?;
    let known = known_flags();
    let mut defaults = Defaults::new();
    for (key, value) in &table {
        match key.as_str() {
            "config" => {}
            "tables" => table_sections(value, &mut defaults).map_err(|(path, problem)| {
                let path: Vec<&str> = path.iter().map(String::as_str).collect();
                err(at_line(&text, &path, problem))
            })?,
            _ => {
                let Some((long, multiple)) = known_flag(&known, key) else {
                    return Err(err(at_line(&text, &[key], unknown_key(&known, key))));
                };
                let values = scalar(key, value, *multiple).map_err(err)?;
                defaults.entry(long.clone()).or_default().extend(values);
            }
        }
    }
    Ok(defaults)
}

/// Top-level keys accepted for a flag besides its own name: the names the table
/// sections use (`exclude_columns` there and here; the README shows these).
const KEY_ALIASES: &[(&str, &str)] = &[
    ("exclude_columns", "exclude-column"),
    ("include_columns", "include-column"),
    ("sequence_column", "column-sequence"),
];

/// The flag a top-level key stands for: its long name with `_`, or an alias.
fn known_flag<'a>(known: &'a [(String, bool)], key: &str) -> Option<&'a (String, bool)> {
    let long = KEY_ALIASES
        .iter()
        .find(|(alias, _)| *alias == key)
        .map_or_else(|| key.replace('_', "-"), |(_, long)| long.to_string());
    known.iter().find(|(l, _)| *l == long)
}

/// An unknown top-level key: the known key it most likely meant, else every key.
fn unknown_key(known: &[(String, bool)], key: &str) -> String {
    let mut names: Vec<String> = known
        .iter()
        .map(|(long, _)| long.replace('-', "_"))
        .chain(KEY_ALIASES.iter().map(|(alias, _)| alias.to_string()))
        .chain(["tables".to_string()])
        .collect();
    names.sort();
    names.dedup();
    match closest(key, names.iter().map(String::as_str)) {
        Some(meant) => format!("unknown key {key:?} (did you mean {meant:?}?)"),
        None => format!("unknown key {key:?}; known keys: {}", names.join(", ")),
    }
}

/// `problem`, prefixed with the line of the key at `path` (a top-level key, or
/// `["tables", "schema.table", key]`) when the file has it.
fn at_line(text: &str, path: &[&str], problem: String) -> String {
    match key_line(text, path) {
        Some(line) => format!("line {line}: {problem}"),
        None => problem,
    }
}

/// The line (from 1) where the key at `path` is written.
fn key_line(text: &str, path: &[&str]) -> Option<usize> {
    use toml::de::{DeTable, DeValue};
    let doc = DeTable::parse(text).ok()?;
    let (last, parents) = path.split_last()?;
    let mut table = doc.get_ref();
    for parent in parents {
        let (_, value) = table.iter().find(|(k, _)| k.get_ref() == parent)?;
        match value.get_ref() {
            DeValue::Table(t) => table = t,
            _ => return None,
        }
    }
    let (key, _) = table.iter().find(|(k, _)| k.get_ref() == last)?;
    Some(
        text[..key.span().start.min(text.len())]
            .matches('\n')
            .count()
            + 1,
    )
}

/// `command` with the file's values as the defaults of the flags they name, in every
/// subcommand that has such a flag.
fn with_defaults(command: clap::Command, defaults: &Defaults) -> clap::Command {
    let set = |arg: clap::Arg| match arg.get_long().and_then(|l| defaults.get(l)) {
        // A value from the file satisfies a required flag.
        Some(values) => arg.default_values(values.clone()).required(false),
        None => arg,
    };
    command
        .mut_args(set)
        .mut_subcommands(|sub| sub.mut_args(set))
}
/// `--config <path>`, `--config=<path>` or `WALCAST_CONFIG`.
fn config_path(args: &[std::ffi::OsString]) -> Option<String> {
    let mut path = std::env::var("WALCAST_CONFIG").ok();
    let mut it = args.iter().map(|a| a.to_string_lossy().into_owned());
    while let Some(a) = it.next() {
        if a == "--config" {
            path = it.next();
        } else if let Some(p) = a.strip_prefix("--config=") {
            path = Some(p.to_string());
        }
    }
    path
}

/// The flags a file may set (those of `walcast run` and the global ones): long name,
/// and whether it takes several values.
fn known_flags() -> Vec<(String, bool)> {
    let command = <Cli as clap::CommandFactory>::command();
    let run = command.find_subcommand("run").expect("run subcommand");
    run.get_arguments()
        .chain(command.get_arguments())
        .filter(|a| a.get_env().is_some())
        .filter_map(|a| {
            let multiple = matches!(a.get_action(), clap::ArgAction::Append);
            Some((a.get_long()?.to_string(), multiple))
        })
        .collect()
}

/// A top-level value as the flag's text: an array is several values of a flag that
/// takes several, else one comma-separated value (a list of NATS URLs).
fn scalar(key: &str, v: &toml::Value, multiple: bool) -> Result<Vec<String>, String> {
    match v {
        toml::Value::Table(_) => Err(format!("{key}: expected a value, found a table")),
        toml::Value::Array(items) if multiple => Ok(items.iter().map(text_of).collect()),
        toml::Value::Array(items) => Ok(vec![items
            .iter()
            .map(text_of)
            .collect::<Vec<_>>()
            .join(",")]),
        other => Ok(vec![text_of(other)]),
    }
}

fn text_of(v: &toml::Value) -> String {
    v.as_str()
        .map(str::to_string)
        .unwrap_or_else(|| v.to_string())
}

/// One value or an array of them, as texts.
fn list(v: &toml::Value) -> Vec<String> {
    match v {
        toml::Value::Array(a) => a.iter().map(text_of).collect(),
        other => vec![text_of(other)],
    }
}

/// `[tables."schema.table"]` sections into `schema.table=value` values of the
/// table-scoped flags; a problem comes with the path of the key it is about (for
/// its line).
fn table_sections(
    value: &toml::Value,
    defaults: &mut Defaults,
) -> Result<(), (Vec<String>, String)> {
    let path = |keys: &[&str]| keys.iter().map(|k| k.to_string()).collect::<Vec<_>>();
    let toml::Value::Table(tables) = value else {
        let problem = "tables: expected [tables.\"schema.table\"] sections";
        return Err((path(&["tables"]), problem.into()));
    };
    for (name, settings) in tables {
        let toml::Value::Table(settings) = settings else {
            let problem = format!("tables.{name}: expected a table");
            return Err((path(&["tables", name]), problem));
        };
        for (k, v) in settings {
            let (flag, items): (&str, Vec<String>) = match k.as_str() {
                "sequence_column" | "column_sequence" => ("column-sequence", list(v)),
                "include_columns" | "include_column" => ("include-column", list(v)),
                "exclude_columns" | "exclude_column" => ("exclude-column", list(v)),
                "ops" => ("ops", vec![list(v).join("+")]),
                "delete_ttl" => ("delete-ttl", list(v)),
                "compress" => ("compress", list(v)),
                "encrypt_columns" | "encrypt_column" => ("encrypt-column", list(v)),
                "encrypt" => {
                    if v.as_bool() != Some(true) {
                        let problem = format!("tables.\"{name}\".encrypt: expected true (leave it out for a table in the clear)");
                        return Err((path(&["tables", name, "encrypt"]), problem));
                    }
                    let names = defaults.entry("encrypt".to_string()).or_default();
                    names.push(name.clone());
                    continue;
                }
                other => {
                    let known = [
                        "sequence_column",
                        "include_columns",
                        "exclude_columns",
                        "ops",
                        "delete_ttl",
                        "compress",
                        "encrypt",
                        "encrypt_columns",
                    ];
                    let meant = closest(other, known)
                        .map(|m| format!(" (did you mean {m:?}?)"))
                        .unwrap_or_default();
                    return Err((
                        path(&["tables", name, other]),
                        format!(
                            "tables.\"{name}\": unknown setting {other:?}{meant}; settings: {}",
                            known.join(", ")
                        ),
                    ));
                }
            };
            defaults
                .entry(flag.to_string())
                .or_default()
                .extend(items.into_iter().map(|i| format!("{name}={i}")));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Command;

    fn parse_with_file(toml: &str, args: &[&str]) -> Result<Cli, ConfigFileError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("walcast.toml");
        std::fs::write(&path, toml).unwrap();
        let mut all: Vec<std::ffi::OsString> = vec!["walcast".into()];
        all.extend(args.iter().map(std::ffi::OsString::from));
        all.push("--config".into());
        all.push(path.into_os_string());
        parse_command_line(&all)
    }

    #[test]
    fn the_file_fills_flags_and_a_flag_wins_over_it() {
        let toml = "postgres_url = \"postgres://u@h/db\"\nslot = \"fromfile\"\n\
                    nats_url = [\"nats://a:4222\", \"nats://b:4222\"]\nrecreate_slot = true\n\
                    [tables.\"public.t\"]\nexclude_columns = [\"secret\", \"pin\"]\nops = [\"insert\", \"delete\"]\n";
        let Command::Run(run) = parse_with_file(toml, &["run"]).unwrap().command else {
            panic!("not run")
        };
        assert_eq!(run.slot, "fromfile");
        assert_eq!(run.nats.url, "nats://a:4222,nats://b:4222");
        assert!(run.recreate_slot);
        assert_eq!(run.exclude_columns.len(), 2);
        assert_eq!(run.ops[0].1.len(), 2);
        let Command::Run(run) = parse_with_file(toml, &["run", "--slot", "fromflag"])
            .unwrap()
            .command
        else {
            panic!("not run")
        };
        assert_eq!(run.slot, "fromflag");
    }

    #[test]
    fn tables_sections_compress_and_encrypt() {
        let toml = "postgres_url = \"postgres://u@h/db\"\n[tables.\"public.docs\"]\ncompress = 512\nencrypt = true\nencrypt_columns = [\"ssn\"]\n";
        let Command::Run(run) = parse_with_file(toml, &["run"]).unwrap().command else {
            panic!("not run")
        };
        let tables = crate::config::tables::table_settings(&run);
        let docs = &tables["public.docs"];
        assert_eq!((docs.compress_min, docs.encrypt), (Some(512), true));
        assert_eq!(docs.encrypt_columns, vec!["ssn".to_string()]);
        let bad = "[tables.\"public.docs\"]\nencrypt = \"yes\"\n";
        let e = parse_with_file(bad, &["run"]).unwrap_err().to_string();
        assert!(e.contains("encrypt: expected true"), "{e}");
    }

    #[test]
    fn include_and_exclude_columns_have_one_name_at_both_levels() {
        let toml = "postgres_url = \"postgres://u@h/db\"\n\
                    exclude_columns = [\"public.a=x\"]\ninclude_column = [\"public.b=y\"]\n\
                    [tables.\"public.t\"]\nexclude_column = \"secret\"\ninclude_columns = [\"id\"]\n";
        let Command::Run(run) = parse_with_file(toml, &["run"]).unwrap().command else {
            panic!("not run")
        };
        let pairs = |v: &[(String, String)]| {
            let mut v: Vec<String> = v.iter().map(|(t, c)| format!("{t}={c}")).collect();
            v.sort();
            v
        };
        assert_eq!(
            pairs(&run.exclude_columns),
            ["public.a=x", "public.t=secret"]
        );
        assert_eq!(pairs(&run.include_columns), ["public.b=y", "public.t=id"]);
    }

    #[test]
    fn an_unknown_key_or_bad_toml_names_the_file_and_hides_the_line() {
        let e = parse_with_file("slot = \"s\"\n\npostgress_url = \"x\"\n", &["run"]).unwrap_err();
        assert!(
            e.to_string()
                .contains("line 3: unknown key \"postgress_url\" (did you mean \"postgres_url\"?)"),
            "{e}"
        );
        let e = parse_with_file("colour = 1\n", &["run"]).unwrap_err();
        assert!(e.to_string().contains("known keys: "), "{e}");
        let toml = "postgres_url = \"postgres://u@h/db\"\n[tables.\"public.t\"]\nops = [\"insert\"]\nexclude_colums = [\"a\"]\n";
        let e = parse_with_file(toml, &["run"]).unwrap_err();
        assert!(
            e.to_string().contains(
                "line 4: tables.\"public.t\": unknown setting \"exclude_colums\" (did you mean \"exclude_columns\"?)"
            ),
            "{e}"
        );
        assert!(e.to_string().contains("walcast.toml"), "{e}");
        let e = parse_with_file("postgres_url = \"postgres://u:hunter2@h\n", &["run"]).unwrap_err();
        assert!(e.to_string().contains("line 1"), "{e}");
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }
}
