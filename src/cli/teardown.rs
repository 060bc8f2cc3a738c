//! `walcast teardown`: remove what walcast made, or list it (`--dry-run`). A
//! forgotten slot retains WAL forever, so this is how a trial run is cleaned up.
//!
//! The plan comes first, for a dry run and a real one alike: each thing is looked at
//! (does it exist, may this role or NATS user remove it, is the slot in use), and a
//! run that cannot remove everything asked for removes nothing. A dry run prints the
//! plan and fails where the run would.

mod streams;

use crate::config::TeardownConfig;
use crate::source::catalog::Catalog;

/// What kind of thing.
#[derive(Clone, Copy)]
enum Kind {
    Stream,
    Publication,
    Slot,
}

impl Kind {
    fn noun(self) -> &'static str {
        match self {
            Kind::Stream => "stream",
            Kind::Publication => "publication",
            Kind::Slot => "replication slot",
        }
    }
}

/// One thing teardown removes.
struct Item {
    kind: Kind,
    name: String,
}

/// What the run does with it.
enum Plan {
    Remove,
    /// It does not exist.
    Absent,
    /// It exists and cannot be removed: why, and the fix.
    Refused(String),
}

struct Step {
    item: Item,
    plan: Plan,
}

impl Item {
    fn new(kind: Kind, name: &str) -> Self {
        Item {
            kind,
            name: name.to_string(),
        }
    }
    fn step(self, plan: Plan) -> Step {
        Step { item: self, plan }
    }
}

impl Step {
    /// Its line in the plan (`verb`: "would remove" or "removed").
    fn line(&self, verb: &str) -> String {
        let (kind, name) = (self.item.kind.noun(), &self.item.name);
        match &self.plan {
            Plan::Remove => format!("{verb} {kind} {name}"),
            Plan::Absent => format!("no {kind} {name}"),
            Plan::Refused(why) => format!("cannot remove {kind} {name}: {why}"),
        }
    }
    fn refused(&self) -> bool {
        matches!(self.plan, Plan::Refused(_))
    }
}

pub(super) async fn teardown(cfg: &TeardownConfig) -> anyhow::Result<()> {
    let run = &cfg.run;
    let catalog = Catalog::connect(&run.source_settings()?.params, run.connect_timeout).await?;
    let nats = if cfg.keep_streams {
        None
    } else {
        Some(streams::Nats::connect(run).await?)
    };
    // The order of removal: the streams first, so that a run stopped half-way never
    // leaves streams that record a slot which is gone (a later start would refuse).
    let mut steps = match &nats {
        Some(nats) => nats.plan(&run.stream_settings()).await,
        None => Vec::new(),
    };
    steps.extend(postgres_plan(&catalog, cfg).await?);
    let refused = steps.iter().filter(|s| s.refused()).count();
    if cfg.dry_run {
        for step in &steps {
            println!("{}", step.line("would remove"));
        }
        if refused > 0 {
            anyhow::bail!(
                "teardown would remove nothing: {refused} of these cannot be removed (see above)"
            );
        }
        return Ok(());
    }
    if refused > 0 {
        for step in steps.iter().filter(|s| s.refused()) {
            println!("{}", step.line("removed"));
        }
        anyhow::bail!("nothing removed: {refused} of the things to remove cannot be (see above)");
    }
    for step in &steps {
        if matches!(step.plan, Plan::Remove) {
            remove(&step.item, &catalog, nats.as_ref()).await?;
        }
        println!("{}", step.line("removed"));
    }
    Ok(())
}

/// The publication (with `--drop-publication`) and the slot: there, removable by
/// this role, not in use.
async fn postgres_plan(catalog: &Catalog, cfg: &TeardownConfig) -> anyhow::Result<Vec<Step>> {
    let run = &cfg.run;
    let rights = catalog.drop_rights(&run.publication).await?;
    let user = &rights.user;
    let mut steps = Vec::new();
    if cfg.drop_publication {
        let item = Item::new(Kind::Publication, &run.publication);
        steps.push(item.step(match &rights.publication {
            None => Plan::Absent,
            Some((_, true)) => Plan::Remove,
            Some((owner, false)) => Plan::Refused(format!(
                "it belongs to {owner}, and only its owner (or a superuser) may drop it; role {user} is neither -- fix: run teardown as {owner}, or leave out --drop-publication (sql/teardown.sql drops it too)"
            )),
        }));
    }
    let item = Item::new(Kind::Slot, &run.slot);
    steps.push(item.step(match catalog.slot(&run.slot).await? {
        None => Plan::Absent,
        Some(slot) if slot.active => Plan::Refused(
            "it is in use (a running walcast streams from it) -- fix: stop walcast first".into(),
        ),
        Some(_) if !rights.slots => Plan::Refused(format!(
            "role {user} has neither REPLICATION nor superuser -- fix: run teardown as the role walcast streams with"
        )),
        Some(_) => Plan::Remove,
    }));
    Ok(steps)
}

async fn remove(
    item: &Item,
    catalog: &Catalog,
    nats: Option<&streams::Nats>,
) -> anyhow::Result<()> {
    match item.kind {
        Kind::Stream => {
            let nats = nats.expect("streams are planned with a NATS connection");
            nats.delete(&item.name).await
        }
        Kind::Publication => Ok(catalog.drop_publication(&item.name).await?),
        Kind::Slot => Ok(catalog.drop_slot(&item.name).await?),
    }
}
