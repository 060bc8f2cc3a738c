//! The per-table settings (`--column-sequence`, `--include-column`, `--exclude-column`,
//! `--ops`, `--delete-ttl`, `--compress`, `--encrypt`, `--encrypt-column`, or `[tables."schema.table"]` in the file), gathered once into one map, and
//! checked against the publication's tables and columns.

use std::collections::HashMap;

use super::RunConfig;
use crate::envelope::TableSettings;

/// Settings per `schema.table`.
pub type TableSettingsMap = HashMap<String, TableSettings>;

/// Per-table settings gathered from the table-scoped options.
pub fn table_settings(cfg: &RunConfig) -> TableSettingsMap {
    let mut out = TableSettingsMap::new();
    for (t, c) in &cfg.column_sequences {
        out.entry(t.clone()).or_default().sequence_column = Some(c.clone());
    }
    for (t, c) in &cfg.include_columns {
        out.entry(t.clone())
            .or_default()
            .include_columns
            .get_or_insert_with(Vec::new)
            .push(c.clone());
    }
    for (t, c) in &cfg.exclude_columns {
        out.entry(t.clone())
            .or_default()
            .exclude_columns
            .push(c.clone());
    }
    for (t, ttl) in &cfg.delete_ttls {
        out.entry(t.clone()).or_default().delete_ttl = Some(*ttl);
    }
    for (t, bytes) in &cfg.compress {
        out.entry(t.clone()).or_default().compress_min = Some(*bytes);
    }
    for t in &cfg.encrypt {
        out.entry(t.clone()).or_default().encrypt = true;
    }
    for (t, c) in &cfg.encrypt_columns {
        out.entry(t.clone())
            .or_default()
            .encrypt_columns
            .push(c.clone());
    }
    for (t, ops) in &cfg.ops {
        out.entry(t.clone())
            .or_default()
            .ops
            .get_or_insert_with(Vec::new)
            .extend(ops.iter().copied());
    }
    out
}

/// The published tables whose sequence walcast assigns (no sequence column).
pub fn tracked_tables<'a>(tables: &'a [String], settings: &TableSettingsMap) -> Vec<&'a String> {
    tables
        .iter()
        .filter(|t| settings.get(*t).is_none_or(|s| s.sequence_column.is_none()))
        .collect()
}

/// Whether any table's sequence is a column (refetches are then answered by walcast).
pub fn any_column_sequence(settings: &TableSettingsMap) -> bool {
    settings.values().any(|s| s.sequence_column.is_some())
}

/// Per-table settings that name a table outside the publication or a column the
/// table does not have (typos that would otherwise publish a hidden column).
pub fn settings_problems(
    settings: &TableSettingsMap,
    columns: &HashMap<String, Vec<String>>,
) -> Vec<String> {
    let mut problems = Vec::new();
    let mut names: Vec<&String> = settings.keys().collect();
    names.sort();
    for table in names {
        let Some(have) = columns.get(table) else {
            let mut known: Vec<&str> = columns.keys().map(String::as_str).collect();
            known.sort();
            problems.push(format!(
                "settings name table {table}, which is not in the publication (its tables: {})",
                known.join(", ")
            ));
            continue;
        };
        let s = &settings[table];
        if s.delete_ttl.is_some() && s.sequence_column.is_none() {
            problems.push(tracked_delete_ttl(table));
        }
        let named = s
            .sequence_column
            .iter()
            .chain(s.include_columns.iter().flatten())
            .chain(&s.exclude_columns)
            .chain(&s.encrypt_columns);
        for column in named {
            if !have.contains(column) {
                problems.push(format!(
                    "settings of {table} name column {column:?}, which the table does not have (its columns: {})",
                    have.join(", ")
                ));
            }
        }
    }
    problems
}

/// Why `--delete-ttl` is refused for a tracked table.
fn tracked_delete_ttl(table: &str) -> String {
    format!(
        "--delete-ttl {table}: refused, {table} is in tracked mode: its keys' last envelopes in the stream are their sequence state, so an expired delete would let the key, inserted again, start again at sequence 1 and reuse numbers consumers have already seen; only tables in column mode (--column-sequence {table}=column, sql/sequence_column.sql), whose sequence is a column of the row, can let their deletes expire"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_with_a_sequence_column_are_not_tracked() {
        let tables = vec!["public.a".to_string(), "public.b".to_string()];
        let mut settings = TableSettingsMap::new();
        settings.insert(
            "public.b".to_string(),
            TableSettings {
                sequence_column: Some("seq".into()),
                ..Default::default()
            },
        );
        assert_eq!(tracked_tables(&tables, &settings), vec![&tables[0]]);
        assert!(any_column_sequence(&settings));
        assert!(!any_column_sequence(&TableSettingsMap::new()));
    }

    #[test]
    fn a_delete_ttl_is_refused_for_a_tracked_table_with_the_reason() {
        let ttl = |sequence_column: Option<&str>| TableSettings {
            sequence_column: sequence_column.map(str::to_string),
            delete_ttl: Some(std::time::Duration::from_secs(60)),
            ..Default::default()
        };
        let mut settings = TableSettingsMap::new();
        settings.insert("public.col".into(), ttl(Some("seq")));
        settings.insert("public.tracked".into(), ttl(None));
        let columns = HashMap::from([
            ("public.col".to_string(), vec!["id".into(), "seq".into()]),
            ("public.tracked".to_string(), vec!["id".into()]),
        ]);
        let problems = settings_problems(&settings, &columns);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].starts_with("--delete-ttl public.tracked: refused"));
        assert!(problems[0].contains("reuse numbers"), "{}", problems[0]);
    }

    #[test]
    fn settings_naming_unknown_tables_or_columns_are_problems() {
        let mut settings = TableSettingsMap::new();
        settings.insert(
            "public.users".to_string(),
            TableSettings {
                exclude_columns: vec!["emial".into()],
                include_columns: Some(vec!["id".into()]),
                ..Default::default()
            },
        );
        settings.insert("public.userz".to_string(), TableSettings::default());
        let mut columns = HashMap::new();
        columns.insert(
            "public.users".to_string(),
            vec!["id".into(), "email".into()],
        );
        let problems = settings_problems(&settings, &columns);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("\"emial\""), "{problems:?}");
        assert!(problems[1].contains("public.userz"), "{problems:?}");
        settings.remove("public.userz");
        settings.get_mut("public.users").unwrap().exclude_columns = vec!["email".into()];
        assert!(settings_problems(&settings, &columns).is_empty());
    }

    #[test]
    fn table_scoped_flags_gather_into_one_map() {
        use clap::Parser;
        let cli = super::super::Cli::try_parse_from([
            "walcast",
            "run",
            "--postgres-url",
            "postgres://u@h/db",
            "--column-sequence",
            "public.a=seq",
            "--include-column",
            "public.a=id",
            "--include-column",
            "public.a=name",
            "--exclude-column",
            "public.b=secret",
            "--ops",
            "public.b=insert+delete",
        ])
        .unwrap();
        let super::super::Command::Run(run) = cli.command else {
            panic!("not run")
        };
        let map = table_settings(&run);
        let a = &map["public.a"];
        assert_eq!(a.sequence_column.as_deref(), Some("seq"));
        assert_eq!(a.include_columns, Some(vec!["id".into(), "name".into()]));
        let b = &map["public.b"];
        assert_eq!(b.exclude_columns, vec!["secret".to_string()]);
        assert_eq!(b.ops.as_ref().map(Vec::len), Some(2));
    }
}
