//! Names a user may misspell: the closest known name for "did you mean", and the
//! `WALCAST_*` variables of the environment that no option reads (they would be
//! ignored silently).

use super::Cli;

/// Variables read besides the options' own: the log filter, and the test and
/// tooling helpers (`walcast::testing`, the TypeScript client's tests).
const OTHER_VARIABLES: &[&str] = &[
    "WALCAST_LOG",
    "WALCAST_PG_BIN",
    "WALCAST_NATS_SERVER",
    "WALCAST_BIN",
];

/// The known name closest to `name`, when one is close enough to be a misspelling.
pub(super) fn closest<'a>(name: &str, known: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    known
        .into_iter()
        .map(|k| (strsim::jaro_winkler(name, k), k))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, k)| k)
}

/// Every `WALCAST_*` variable an option of any command reads, and the others.
fn known_variables() -> Vec<String> {
    let command = <Cli as clap::CommandFactory>::command();
    let mut names: Vec<String> = command
        .get_subcommands()
        .flat_map(|sub| sub.get_arguments())
        .chain(command.get_arguments())
        .filter_map(|a| a.get_env())
        .map(|e| e.to_string_lossy().into_owned())
        .chain(OTHER_VARIABLES.iter().map(|v| v.to_string()))
        .collect();
    names.sort();
    names.dedup();
    names
}

/// The `WALCAST_*` variables among `variables` that walcast does not read, each with
/// the known variable it most likely meant.
pub fn unknown_variables(
    variables: impl IntoIterator<Item = String>,
) -> Vec<(String, Option<String>)> {
    let known = known_variables();
    let mut unknown: Vec<(String, Option<String>)> = variables
        .into_iter()
        .filter(|v| v.starts_with("WALCAST_") && !known.contains(v))
        .map(|v| {
            // Every name shares the prefix: compare what follows it.
            let rest = &v["WALCAST_".len()..];
            let meant = closest(rest, known.iter().map(|k| &k["WALCAST_".len()..]))
                .map(|k| format!("WALCAST_{k}"));
            (v, meant)
        })
        .collect();
    unknown.sort();
    unknown
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_misspelled_variable_is_found_with_what_it_meant() {
        let found = unknown_variables(
            [
                "WALCAST_SLTO",
                "WALCAST_SLOT",
                "WALCAST_LOG",
                "WALCAST_POSTGRES_PASWORD_FILE",
                "WALCAST_XYZZY",
                "PATH",
            ]
            .map(String::from),
        );
        assert_eq!(
            found,
            vec![
                (
                    "WALCAST_POSTGRES_PASWORD_FILE".into(),
                    Some("WALCAST_POSTGRES_PASSWORD_FILE".into())
                ),
                ("WALCAST_SLTO".into(), Some("WALCAST_SLOT".into())),
                ("WALCAST_XYZZY".into(), None),
            ]
        );
    }

    #[test]
    fn closest_suggests_only_near_names() {
        let known = ["postgres_url", "publication", "slot"];
        assert_eq!(closest("postgress_url", known), Some("postgres_url"));
        assert_eq!(closest("publicaton", known), Some("publication"));
        assert_eq!(closest("colour", known), None);
    }
}
