//! The delivery and sequence-mode rules, shared by `walcast run` and `walcast check`:
//! JetStream when asked for or available; tracked sequences need it, unless the
//! operator accepts volatile ones or puts the tables in column mode.

use std::collections::HashMap;

use crate::config::Delivery;
use crate::envelope::sequence::SequenceMode;
use crate::envelope::TableSettings;

/// The delivery used with a server that has (or lacks) JetStream; `Err` explains why
/// the requested one is impossible.
pub fn choose_delivery(requested: Delivery, has_jetstream: bool) -> Result<Delivery, String> {
    match (requested, has_jetstream) {
        (Delivery::Auto | Delivery::Jetstream, true) => Ok(Delivery::Jetstream),
        (Delivery::Auto, false) | (Delivery::Core, _) => Ok(Delivery::Core),
        (Delivery::Jetstream, false) => Err(
            "--delivery jetstream, but the NATS server has no JetStream (start nats-server with -js)"
                .into(),
        ),
    }
}

/// The published tables whose sequence walcast assigns (no sequence column).
pub fn tracked_tables<'a>(
    tables: &'a [String],
    settings: &HashMap<String, TableSettings>,
) -> Vec<&'a String> {
    tables
        .iter()
        .filter(|t| settings.get(*t).is_none_or(|s| s.sequence_column.is_none()))
        .collect()
}

/// The sequence mode of tables without a sequence column; `Err` names the tables
/// that would lose durable sequences and the ways out.
pub fn default_sequence_mode(
    delivery: Delivery,
    has_jetstream: bool,
    volatile_sequences: bool,
    tracked: &[&String],
) -> Result<SequenceMode, String> {
    match delivery {
        Delivery::Jetstream => Ok(SequenceMode::Tracked),
        _ if volatile_sequences || tracked.is_empty() => Ok(SequenceMode::Volatile),
        _ => Err(format!(
            "NATS {} JetStream, so walcast cannot keep the sequences of {} durable: enable JetStream (nats-server -js), put the tables in column mode (--column-sequence schema.table=column, see sql/sequence_column.sql), or accept sequences that restart on every start (--volatile-sequences)",
            if has_jetstream { "is used without" } else { "has no" },
            tracked.iter().map(|t| t.as_str()).collect::<Vec<_>>().join(", ")
        )),
    }
}

/// Per-table settings that name a table outside the publication or a column the
/// table does not have (typos that would otherwise publish a hidden column).
pub fn settings_problems(
    settings: &HashMap<String, TableSettings>,
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
        let named = s
            .sequence_column
            .iter()
            .chain(s.include_columns.iter().flatten())
            .chain(&s.exclude_columns);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracked_tables_need_jetstream_unless_volatile() {
        let tables = vec!["public.a".to_string(), "public.b".to_string()];
        let mut settings = HashMap::new();
        settings.insert(
            "public.b".to_string(),
            TableSettings {
                sequence_column: Some("seq".into()),
                ..Default::default()
            },
        );
        let tracked = tracked_tables(&tables, &settings);
        assert_eq!(tracked, vec![&tables[0]]);
        let err = default_sequence_mode(Delivery::Core, false, false, &tracked).unwrap_err();
        assert!(
            err.contains("public.a") && !err.contains("public.b"),
            "{err}"
        );
        assert_eq!(
            default_sequence_mode(Delivery::Core, false, true, &tracked),
            Ok(SequenceMode::Volatile)
        );
        assert_eq!(
            default_sequence_mode(Delivery::Jetstream, true, false, &tracked),
            Ok(SequenceMode::Tracked)
        );
        assert_eq!(choose_delivery(Delivery::Auto, false), Ok(Delivery::Core));
        assert!(choose_delivery(Delivery::Jetstream, false).is_err());
    }

    #[test]
    fn settings_naming_unknown_tables_or_columns_are_problems() {
        let mut settings = HashMap::new();
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
}
