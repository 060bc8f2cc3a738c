//! The NATS side of `walcast check`: the connection, JetStream, the stream, and
//! whether walcast's meta stream records streaming from the slot.

use super::{Outcome, Report};
use crate::client::{redact_url, NatsUrl};
use crate::config::RunConfig;
use crate::sink::delivery::{choose_delivery, default_sequence_mode, Delivery};
use crate::state::inspect_stream;

/// A connection to NATS with the settings of `run` (the error as text).
pub(super) async fn connect(cfg: &RunConfig) -> Result<async_nats::Client, String> {
    let url = NatsUrl::parse(&cfg.nats.url).map_err(|e| e.to_string())?;
    let options = url
        .options_with(&cfg.nats.auth())
        .await
        .map_err(|e| e.to_string())?;
    url.connect_with(options.connection_timeout(cfg.connect_timeout))
        .await
        .map_err(|e| e.to_string())
}

/// Whether walcast's meta stream records streaming from the slot (as `run` decides
/// whether it may create a missing slot); `None` when walcast would not use
/// JetStream or the record cannot be read.
pub(super) async fn slot_recorded(cfg: &RunConfig, client: &async_nats::Client) -> Option<bool> {
    let jetstream = client.server_info().jetstream;
    if choose_delivery(cfg.delivery, jetstream) != Ok(Delivery::Jetstream) {
        return None;
    }
    let js = async_nats::jetstream::new(client.clone());
    crate::state::slot_recorded(&js, &cfg.stream_settings(), &cfg.slot)
        .await
        .ok()
}

/// The connection, JetStream and the stream.
pub(super) async fn checks(
    cfg: &RunConfig,
    connected: Result<async_nats::Client, String>,
    r: &mut Report,
    tracked: &[&String],
) {
    let shown = redact_url(&cfg.nats.url);
    let client = match connected {
        Ok(c) => c,
        Err(e) => {
            r.push(
                Outcome::Fail,
                "nats connection",
                format!("{shown}: {e}"),
                Some("check --nats-url and that nats-server runs"),
            );
            return;
        }
    };
    let info = client.server_info();
    r.ok(
        "nats connection",
        format!("{shown} (server {})", info.version),
    );
    if jetstream_checks(cfg, &info, r, tracked) {
        stream_checks(cfg, client, r).await;
        durability_check(cfg, r).await;
    }
}

/// Which guarantee an acknowledgement carries with these replicas, this flush delay
/// and the servers' sync (`sink::sync::guarantee`).
async fn durability_check(cfg: &RunConfig, r: &mut Report) {
    use crate::sink::sync;
    let monitor = cfg.nats_monitor_url.as_deref();
    let (delay, _) = sync::resolve(cfg.flush_delay, monitor).await;
    let server = match monitor {
        Some(url) => sync::read_sync(url).await.ok(),
        None => None,
    };
    let (held, why) = sync::guarantee(usize::from(cfg.stream_replicas), delay, server);
    r.push(
        if held { Outcome::Ok } else { Outcome::Warn },
        "acknowledgement",
        why,
        (!held).then_some(
            "--flush-delay at least the servers' sync_interval (or auto with --nats-monitor-url), or sync_interval: always on the servers; see docs/scaling.md",
        ),
    );
}

/// Whether JetStream is used (and a durable sequence possible for every table);
/// `true` when the stream is to be checked.
fn jetstream_checks(
    cfg: &RunConfig,
    info: &async_nats::ServerInfo,
    r: &mut Report,
    tracked: &[&String],
) -> bool {
    let delivery = choose_delivery(cfg.delivery, info.jetstream);
    if delivery != Ok(Delivery::Jetstream) {
        let mode = delivery.and_then(|d| {
            default_sequence_mode(d, info.jetstream, cfg.volatile_sequences, tracked)
        });
        r.push(
            if mode.is_err() {
                Outcome::Fail
            } else {
                Outcome::Warn
            },
            "jetstream",
            if info.jetstream {
                "available, not used (--delivery core)".to_string()
            } else {
                "not available".to_string()
            },
            mode.err().as_deref(),
        );
        return false;
    }
    r.ok("jetstream", "available");
    true
}

/// What walcast will do with the existing stream's window ("" when it is the same).
async fn window_note(
    js: &async_nats::jetstream::Context,
    stream: &crate::state::StreamSettings,
) -> String {
    let Ok(mut s) = js.get_stream(&stream.name).await else {
        return String::new();
    };
    let Ok(info) = s.info().await else {
        return String::new();
    };
    match crate::state::window::window_change(&info.config, stream) {
        Some((from, to)) => format!(
            "; walcast changes its window from {from} to {to} at start (refused when that could drop tracked key state)"
        ),
        None => String::new(),
    }
}

/// The stream exists and fits, or does not exist yet.
async fn stream_checks(cfg: &RunConfig, client: async_nats::Client, r: &mut Report) {
    let js = async_nats::jetstream::new(client);
    let stream = cfg.stream_settings();
    match inspect_stream(&js, &stream).await {
        Ok(None) => r.ok(
            "stream",
            format!(
                "\"{}\" does not exist yet: walcast creates it at start",
                stream.name
            ),
        ),
        Ok(Some(problems)) => r.check(
            problems.is_empty(),
            "stream",
            if problems.is_empty() {
                format!(
                    "\"{}\" fits{}",
                    stream.name,
                    window_note(&js, &stream).await
                )
            } else {
                format!("\"{}\": {}", stream.name, problems.join("; "))
            },
            "fix or delete the stream, or choose another --stream",
        ),
        Err(e) => r.push(Outcome::Fail, "stream", e.to_string(), None),
    }
}
