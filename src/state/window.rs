//! An existing stream's window (`--stream-max-age`, `--stream-max-bytes`) brought to
//! what walcast is configured for: JetStream updates `max_age` and `max_bytes` in
//! place, and walcast logs the change from what to what.
//!
//! Unless the new window could drop key states walcast depends on: a tracked table's
//! keys keep their sequence in their last envelope, so walcast never lets a tracked
//! table publish into a stream with a window (`TrackedInWindow`). A stream that
//! already has a window therefore holds no tracked key state and may take any other
//! window; a stream without one may hold some, and a window is added to it only when
//! none of the tables it holds (its schema histories in the meta stream) is tracked
//! under the current settings; otherwise walcast refuses to start, naming them.

use std::fmt;
use std::time::Duration;

use async_nats::jetstream::context::Context;
use async_nats::jetstream::stream::{Config, Stream};
use futures::TryStreamExt;

use super::stream::{js_err, not_found, update_config, StreamSettings};
use super::StateError;
use crate::wire::key;

/// A stream's window: what it lets go by age or by size (zero: no limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub max_age: Duration,
    pub max_bytes: i64,
}

impl Window {
    fn of_config(c: &Config) -> Window {
        Window {
            max_age: c.max_age,
            max_bytes: c.max_bytes.max(0),
        }
    }

    fn of_settings(s: &StreamSettings) -> Window {
        Window {
            max_age: s.max_age,
            max_bytes: s.max_bytes.max(0),
        }
    }

    /// Neither limit.
    pub fn is_none(&self) -> bool {
        self.max_age.is_zero() && self.max_bytes == 0
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let age = match self.max_age.as_secs() {
            0 => "none".to_string(),
            s => format!("{s} s"),
        };
        let bytes = match self.max_bytes {
            0 => "none".to_string(),
            b => format!("{b} bytes"),
        };
        write!(f, "max_age {age} / max_bytes {bytes}")
    }
}

/// The existing stream's window and the configured one, when they differ.
pub fn window_change(c: &Config, settings: &StreamSettings) -> Option<(Window, Window)> {
    let (from, to) = (Window::of_config(c), Window::of_settings(settings));
    (from != to).then_some((from, to))
}

/// Give `stream` the configured window (see the module documentation), or refuse.
pub(super) async fn apply_window(
    js: &Context,
    stream: &mut Stream,
    settings: &StreamSettings,
) -> Result<(), StateError> {
    let mut config = stream.cached_info().config.clone();
    let Some((from, to)) = window_change(&config, settings) else {
        return Ok(());
    };
    if from.is_none() && settings.tracked {
        let tables = tracked_tables(js, settings).await?;
        if !tables.is_empty() {
            return Err(StateError::WindowDropsKeyState {
                stream: settings.name.clone(),
                from: from.to_string(),
                to: to.to_string(),
                tables: tables.join(", "),
            });
        }
    }
    tracing::info!(stream = %settings.name, from = %from, to = %to, "changing the stream's window (--stream-max-age, --stream-max-bytes)");
    config.max_age = settings.max_age;
    config.max_bytes = if settings.max_bytes > 0 {
        settings.max_bytes
    } else {
        -1
    };
    // JetStream's duplicate window may not be longer than the age limit.
    if !config.max_age.is_zero() {
        config.duplicate_window = config.duplicate_window.min(config.max_age);
    }
    update_config(js, stream, config, |e| {
        StateError::JetStream(format!(
            "changing stream {}'s window from {from} to {to} (--stream-max-age, --stream-max-bytes): {e}",
            settings.name
        ))
    })
    .await
}

/// The tables whose schema histories the meta stream holds (tables walcast published
/// into this stream) that are tracked under `settings`: not in column mode.
async fn tracked_tables(
    js: &Context,
    settings: &StreamSettings,
) -> Result<Vec<String>, StateError> {
    let meta = match js.get_stream(settings.meta_name()).await {
        Ok(meta) => meta,
        Err(e) if not_found(&e) => return Ok(Vec::new()),
        Err(e) => return Err(js_err("looking up the meta stream", e)),
    };
    let schemas = format!("{}.schema.", settings.meta_prefix());
    let column: Vec<String> = settings
        .column_tables
        .iter()
        .filter_map(|t| t.split_once('.'))
        .map(|(s, t)| format!("{}.{}", key::name_token(s), key::name_token(t)))
        .collect();
    let mut subjects = meta
        .info_with_subjects(format!("{schemas}>"))
        .await
        .map_err(|e| js_err("listing the meta stream's subjects", e))?;
    let mut tracked = Vec::new();
    while let Some((subject, _)) = subjects
        .try_next()
        .await
        .map_err(|e| js_err("listing the meta stream's subjects", e))?
    {
        let table = subject.strip_prefix(&schemas).unwrap_or(&subject);
        if !column.iter().any(|c| c == table) {
            tracked.push(table.to_string());
        }
    }
    tracked.sort();
    Ok(tracked)
}
