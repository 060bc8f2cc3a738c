//! The optional TOML configuration file, read as the defaults of the flags it names,
//! so that precedence is flag > environment > file > default (no process environment
//! is changed).

use std::collections::HashMap;

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
/// sections take `sequence_column`, `include_columns`, `exclude_columns` and `ops`.
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
            "tables" => table_sections(value, &mut defaults).map_err(err)?,
            _ => {
                let Some((long, multiple)) = known
                    .iter()
                    .find(|(long, _)| long.replace('-', "_") == *key)
                else {
                    let mut names: Vec<String> = known
                        .iter()
                        .map(|(long, _)| long.replace('-', "_"))
                        .collect();
                    names.dedup();
                    return Err(err(format!(
                        "unknown key {key:?}; known keys: {}",
                        names.join(", ")
                    )));
                };
                let values = scalar(key, value, *multiple).map_err(err)?;
                defaults.entry(long.clone()).or_default().extend(values);
            }
        }
    }
    Ok(defaults)
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
/// table-scoped flags.
fn table_sections(value: &toml::Value, defaults: &mut Defaults) -> Result<(), String> {
    let toml::Value::Table(tables) = value else {
        return Err("tables: expected [tables.\"schema.table\"] sections".into());
    };
    for (name, settings) in tables {
        let toml::Value::Table(settings) = settings else {
            return Err(format!("tables.{name}: expected a table"));
        };
        for (k, v) in settings {
            let (flag, items): (&str, Vec<String>) = match k.as_str() {
                "sequence_column" => ("column-sequence", list(v)),
                "include_columns" => ("include-column", list(v)),
                "exclude_columns" => ("exclude-column", list(v)),
                "ops" => ("ops", vec![list(v).join("+")]),
                other => {
                    return Err(format!(
                        "tables.{name}: unknown setting {other:?} (sequence_column, include_columns, exclude_columns, ops)"
                    ))
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
    fn an_unknown_key_or_bad_toml_names_the_file_and_hides_the_line() {
        let e = parse_with_file("postgress_url = \"x\"\n", &["run"]).unwrap_err();
        assert!(
            e.to_string().contains("unknown key \"postgress_url\""),
            "{e}"
        );
        assert!(e.to_string().contains("walcast.toml"), "{e}");
        let e = parse_with_file("postgres_url = \"postgres://u:hunter2@h\n", &["run"]).unwrap_err();
        assert!(e.to_string().contains("line 1"), "{e}");
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }
}
