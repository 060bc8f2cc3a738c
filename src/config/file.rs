//! The optional TOML configuration file, read into the `WALCAST_*` variables that are
//! not set, so that precedence is flag > environment > file > default.

use std::collections::HashMap;

use super::Cli;

/// A configuration file that could not be used.
#[derive(Debug, thiserror::Error)]
#[error("configuration file {path}: {problem}")]
pub struct ConfigFileError {
    pub path: String,
    pub problem: String,
}

/// Read the optional TOML configuration file (`--config <path>` or `WALCAST_CONFIG`)
/// into the `WALCAST_*` variables that are not set. Top-level keys are the flag names
/// with `_` (`postgres_url = "..."`); `[tables."schema.table"]` sections take
/// `sequence_column`, `include_columns`, `exclude_columns` and `ops`.
/// Call it before parsing the command line, while the process is single-threaded.
pub fn load_config_file(args: &[std::ffi::OsString]) -> Result<(), ConfigFileError> {
    let Some(path) = config_path(args) else {
        return Ok(());
    };
    let err = |problem: String| ConfigFileError {
        path: path.clone(),
        problem,
    };
    let text = std::fs::read_to_string(&path).map_err(|e| err(e.to_string()))?;
    // The parser's own message quotes the offending line, which may hold a password:
    // only its message and position are shown.
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        let line = e
            .span()
            .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
        let at = line.map(|l| format!("line {l}: ")).unwrap_or_default();
        err(format!("{at}{}", e.message()))
    })?;
    let known = known_keys();
    let mut values: Vec<(String, String)> = Vec::new();
    let mut per_table: HashMap<&'static str, Vec<String>> = HashMap::new();
    for (key, value) in &table {
        match key.as_str() {
            "config" => {}
            "tables" => table_sections(value, &mut per_table).map_err(err)?,
            _ => {
                let Some((_, env)) = known.iter().find(|(k, _)| k == key) else {
                    let names: Vec<&str> = known.iter().map(|(k, _)| k.as_str()).collect();
                    return Err(err(format!(
                        "unknown key {key:?}; known keys: {}",
                        names.join(", ")
                    )));
                };
                values.push((env.clone(), scalar(key, value).map_err(err)?));
            }
        }
    }
    for (var, items) in per_table {
        values.push((var.to_string(), items.join(",")));
    }
    for (var, value) in values {
        if std::env::var_os(&var).is_none() {
            std::env::set_var(var, value);
        }
    }
    Ok(())
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

/// The file keys (flag names with `_`) and their environment variables.
fn known_keys() -> Vec<(String, String)> {
    let command = <Cli as clap::CommandFactory>::command();
    let run = command.find_subcommand("run").expect("run subcommand");
    run.get_arguments()
        .chain(command.get_arguments())
        .filter_map(|a| {
            Some((
                a.get_long()?.replace('-', "_"),
                a.get_env()?.to_string_lossy().into_owned(),
            ))
        })
        .collect()
}

/// A top-level value as its variable's text (arrays comma-separated).
fn scalar(key: &str, v: &toml::Value) -> Result<String, String> {
    match v {
        toml::Value::String(s) => Ok(s.clone()),
        toml::Value::Integer(i) => Ok(i.to_string()),
        toml::Value::Float(f) => Ok(f.to_string()),
        toml::Value::Boolean(b) => Ok(b.to_string()),
        toml::Value::Array(items) => Ok(items.iter().map(text_of).collect::<Vec<_>>().join(",")),
        _ => Err(format!("{key}: expected a value, found a table")),
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

/// `[tables."schema.table"]` sections into `schema.table=value` items per variable.
fn table_sections(
    value: &toml::Value,
    per_table: &mut HashMap<&'static str, Vec<String>>,
) -> Result<(), String> {
    let toml::Value::Table(tables) = value else {
        return Err("tables: expected [tables.\"schema.table\"] sections".into());
    };
    for (name, settings) in tables {
        let toml::Value::Table(settings) = settings else {
            return Err(format!("tables.{name}: expected a table"));
        };
        for (k, v) in settings {
            let (var, items): (&'static str, Vec<String>) = match k.as_str() {
                "sequence_column" => ("WALCAST_COLUMN_SEQUENCE", list(v)),
                "include_columns" => ("WALCAST_INCLUDE_COLUMN", list(v)),
                "exclude_columns" => ("WALCAST_EXCLUDE_COLUMN", list(v)),
                "ops" => ("WALCAST_OPS", vec![list(v).join("+")]),
                other => {
                    return Err(format!(
                        "tables.{name}: unknown setting {other:?} (sequence_column, include_columns, exclude_columns, ops)"
                    ))
                }
            };
            per_table
                .entry(var)
                .or_default()
                .extend(items.into_iter().map(|i| format!("{name}={i}")));
        }
    }
    Ok(())
}
