//! The JetStream streams of `walcast teardown`: whether each exists and whether this
//! NATS user may delete it, found out without deleting anything.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::context::Context;

use super::{Item, Kind, Plan, Step};
use crate::client::NatsUrl;
use crate::config::RunConfig;
use crate::state::StreamSettings;

/// JetStream's answer to a delete request that is not empty: the request is refused
/// before the stream is looked at ("expected an empty request payload").
const NOT_EMPTY_REQUEST: u64 = 10038;

/// A NATS connection that records the permission violations the server reports.
pub(super) struct Nats {
    client: async_nats::Client,
    js: Context,
    denied: Arc<Mutex<Vec<String>>>,
    timeout: Duration,
}

impl Nats {
    pub(super) async fn connect(run: &RunConfig) -> anyhow::Result<Nats> {
        let url = NatsUrl::parse(&run.nats.url)?;
        let denied: Arc<Mutex<Vec<String>>> = Arc::default();
        let seen = denied.clone();
        let options = url
            .options_with(&run.nats.auth())
            .await?
            .connection_timeout(run.connect_timeout)
            .event_callback(move |event| {
                let seen = seen.clone();
                async move {
                    if let async_nats::Event::ServerError(async_nats::ServerError::Other(e)) = event
                    {
                        if e.to_lowercase().contains("permissions violation") {
                            seen.lock().unwrap().push(e);
                        }
                    }
                }
            });
        let client = url
            .connect_with(options)
            .await
            .with_context(|| format!("cannot connect to NATS at {}", url.redacted()))?;
        Ok(Nats {
            js: async_nats::jetstream::new(client.clone()),
            client,
            denied,
            timeout: run.connect_timeout,
        })
    }

    /// The envelope stream and the meta stream: there, and deletable by this user.
    pub(super) async fn plan(&self, settings: &StreamSettings) -> Vec<Step> {
        let mut steps = Vec::new();
        for name in [settings.name.clone(), settings.meta_name()] {
            let plan = match self.js.get_stream(&name).await {
                Ok(_) => match self.may_delete(&name).await {
                    Ok(()) => Plan::Remove,
                    Err(why) => Plan::Refused(why),
                },
                Err(e) if crate::state::stream::not_found(&e) => Plan::Absent,
                Err(e) => Plan::Refused(format!("looking it up failed: {e}")),
            };
            steps.push(Item::new(Kind::Stream, &name).step(plan));
        }
        steps
    }

    /// Whether this user may delete stream `name`, asked without deleting it: a
    /// delete request whose payload is not an empty JSON object, which JetStream
    /// answers with an error and never carries out; a user without the permission
    /// gets a permissions violation from the server instead, and no answer.
    async fn may_delete(&self, name: &str) -> Result<(), String> {
        let subject = format!("$JS.API.STREAM.DELETE.{name}");
        let request = self
            .client
            .request(subject.clone(), "walcast-permission-probe".into());
        tokio::pin!(request);
        let mut look = tokio::time::interval(Duration::from_millis(10));
        let deadline = tokio::time::sleep(self.timeout);
        tokio::pin!(deadline);
        loop {
            // The violation is reported on the client's own task: looked at every 10 ms.
            if let Some(e) = self.violation(&subject) {
                return Err(format!(
                    "the NATS user may not delete it ({e}) -- fix: allow it to publish on {subject}, or have an administrator delete the stream (nats stream rm {name}), or keep the streams (--keep-streams)"
                ));
            }
            tokio::select! {
                answer = &mut request => return match answer {
                    Ok(msg) => probe_answer(&msg.payload),
                    Err(e) => Err(format!("the permission probe on {subject} failed: {e}")),
                },
                _ = look.tick() => {}
                _ = &mut deadline => {
                    return Err(format!("no answer to the permission probe on {subject} within {:?}", self.timeout))
                }
            }
        }
    }

    /// A permissions violation the server reported for `subject`.
    fn violation(&self, subject: &str) -> Option<String> {
        let denied = self.denied.lock().unwrap();
        denied.iter().find(|e| e.contains(subject)).cloned()
    }

    pub(super) async fn delete(&self, name: &str) -> anyhow::Result<()> {
        self.js
            .delete_stream(name)
            .await
            .with_context(|| format!("deleting stream {name}"))?;
        Ok(())
    }
}

/// The answer to the permission probe: the request refused as not empty means it
/// reached JetStream, so the user may delete the stream.
fn probe_answer(payload: &[u8]) -> Result<(), String> {
    let answer: serde_json::Value = serde_json::from_slice(payload).unwrap_or_default();
    if answer["error"]["err_code"].as_u64() == Some(NOT_EMPTY_REQUEST) {
        return Ok(());
    }
    Err(format!(
        "unexpected answer to the permission probe: {}",
        String::from_utf8_lossy(payload)
    ))
}
