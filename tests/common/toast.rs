//! A table with a TOASTed column, and walcast set to read unchanged TOAST values from
//! it.

use walcast::testing::PgOptions;

use super::{servers_with, with_sql, RunArgs, Servers};

/// `t(id, small, big)` with `big` stored out of line, in the publication.
pub async fn toast_table(opts: PgOptions) -> (Servers, tokio_postgres::Client) {
    with_sql(
        servers_with(opts),
        "CREATE TABLE t (id int PRIMARY KEY, small int, big text);
         ALTER TABLE t ALTER big SET STORAGE EXTERNAL;
         CREATE PUBLICATION walcast FOR TABLE t;",
    )
    .await
}

/// walcast in core mode with a TOAST cache too small to hold a value: each unchanged
/// TOAST value of an update is read from the table.
pub fn toast_read_from_table(s: &Servers) -> RunArgs<'static> {
    RunArgs::new(s, "walcast", "walcast").args(&[
        "--delivery",
        "core",
        "--volatile-sequences",
        "--toast-cache-bytes",
        "16",
    ])
}
