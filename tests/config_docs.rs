//! The configuration reference in README.md is checked against the real flags, so it
//! cannot go stale.

use clap::CommandFactory;
use walcast::config::Cli;

#[test]
fn readme_lists_every_run_flag_with_its_variable_and_nothing_else() {
    let readme = include_str!("../README.md");
    let rows: Vec<&str> = readme.lines().filter(|l| l.starts_with("| `--")).collect();
    let cli = Cli::command();
    let run = cli.find_subcommand("run").expect("run subcommand");
    let mut documented = 0;
    for arg in run.get_arguments().chain(cli.get_arguments()) {
        let Some(long) = arg.get_long() else { continue };
        if matches!(long, "help" | "version") {
            continue;
        }
        let flag = format!("`--{long}`");
        let row = rows
            .iter()
            .find(|r| r.starts_with(&format!("| {flag}")))
            .unwrap_or_else(|| panic!("README's configuration table lacks {flag}"));
        let env = arg
            .get_env()
            .unwrap_or_else(|| panic!("--{long} has no WALCAST_* variable"))
            .to_string_lossy()
            .into_owned();
        assert!(
            row.contains(&format!("`{env}`")),
            "row of {flag} does not name {env}: {row}"
        );
        if let Some(default) = arg.get_default_values().first() {
            let default = default.to_string_lossy();
            assert!(
                row.contains(&format!("`{default}`")),
                "row of {flag} does not give the default {default}: {row}"
            );
        }
        documented += 1;
    }
    assert_eq!(
        documented,
        rows.len(),
        "README documents flags walcast does not have"
    );
}
