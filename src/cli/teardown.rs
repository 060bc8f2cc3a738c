//! `walcast teardown`: remove what walcast made, or list it (`--dry-run`). A
//! forgotten slot retains WAL forever, so this is how a trial run is cleaned up.

use anyhow::Context;

use crate::client::NatsUrl;
use crate::config::TeardownConfig;
use crate::source::catalog::Catalog;

pub(super) async fn teardown(cfg: &TeardownConfig) -> anyhow::Result<()> {
    let run = &cfg.run;
    let catalog = Catalog::connect(&run.source_settings()?.params, run.connect_timeout).await?;
    let verb = if cfg.dry_run {
        "would remove"
    } else {
        "removed"
    };
    match catalog.slot(&run.slot).await? {
        Some(slot) if slot.active && !cfg.dry_run => anyhow::bail!(
            "replication slot \"{}\" is in use: stop walcast first",
            run.slot
        ),
        Some(_) => {
            if !cfg.dry_run {
                catalog.drop_slot(&run.slot).await?;
            }
            println!("{verb} replication slot {}", run.slot);
        }
        None => println!("no replication slot {}", run.slot),
    }
    if cfg.drop_publication {
        if catalog.publication_exists(&run.publication).await? {
            if !cfg.dry_run {
                catalog.drop_publication(&run.publication).await?;
            }
            println!("{verb} publication {}", run.publication);
        } else {
            println!("no publication {}", run.publication);
        }
    }
    if !cfg.keep_streams {
        remove_streams(cfg, verb).await?;
    }
    Ok(())
}

/// The envelope stream and the meta stream.
async fn remove_streams(cfg: &TeardownConfig, verb: &str) -> anyhow::Result<()> {
    let url = NatsUrl::parse(&cfg.run.nats.url)?;
    let options = url.options_with(&cfg.run.nats.auth()).await?;
    let client = url
        .connect_with(options.connection_timeout(cfg.run.connect_timeout))
        .await
        .with_context(|| format!("cannot connect to NATS at {}", url.redacted()))?;
    let js = async_nats::jetstream::new(client);
    let settings = cfg.run.stream_settings();
    for name in [settings.name.clone(), settings.meta_name()] {
        if js.get_stream(&name).await.is_err() {
            println!("no stream {name}");
            continue;
        }
        if !cfg.dry_run {
            js.delete_stream(&name)
                .await
                .with_context(|| format!("deleting stream {name}"))?;
        }
        println!("{verb} stream {name}");
    }
    Ok(())
}
