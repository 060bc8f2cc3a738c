//! At start: may walcast publish envelopes under its prefix? The server is asked for
//! the user's own permissions (`$SYS.REQ.USER.INFO`, nats-server 2.10+) and the
//! envelope subjects (`<prefix>.*.*.*`) are checked against its publish rules.
//! Nothing is published for it, so a subscriber of `<prefix>.>` only ever sees
//! envelopes.
//!
//! Refused when no envelope subject could be published: no allow rule reaches them,
//! or a deny rule covers them all. A narrower rule (one schema denied) shows at the
//! first publish it stops: an ERROR in the log, the changes kept in the slot. A user
//! that may not ask (an allow list without `$SYS.REQ.USER.INFO`) or a server that
//! does not answer: the check is skipped with a warning.

use std::time::Duration;

use async_nats::Client;
use serde::Deserialize;

use super::{NatsState, SinkError};

/// The subject a user asks for its own account and permissions on.
pub const USER_INFO_SUBJECT: &str = "$SYS.REQ.USER.INFO";

/// How long the server may take to answer.
const ANSWER_WITHIN: Duration = Duration::from_secs(2);

/// The server's answer: `{"data": {"user": …, "permissions": {"publish": {…}}}}`.
#[derive(Debug, Default, Deserialize)]
struct UserInfoReply {
    data: Option<UserInfo>,
}

#[derive(Debug, Default, Deserialize)]
struct UserInfo {
    #[serde(default)]
    user: String,
    permissions: Option<Permissions>,
}

#[derive(Debug, Default, Deserialize)]
struct Permissions {
    publish: Option<SubjectRules>,
}

/// Publish rules: allowed when some `allow` pattern matches (or there is none) and
/// no `deny` pattern does.
#[derive(Debug, Default, Clone, Deserialize)]
struct SubjectRules {
    #[serde(default)]
    allow: Vec<String>,
    #[serde(default)]
    deny: Vec<String>,
}

/// What asking gave.
#[derive(Debug)]
enum Answer {
    /// The user's name and publish rules (`None`: no restriction).
    Rules(String, Option<SubjectRules>),
    /// The user may not ask, or the server did not answer (why).
    Unknown(String),
}

/// Fail when the server would refuse every envelope walcast publishes under `prefix`.
pub async fn check_publish_permission(
    client: &Client,
    prefix: &str,
    state: &NatsState,
) -> Result<(), SinkError> {
    match ask(client, state).await {
        Answer::Rules(user, rules) => match rules.unwrap_or_default().refusal(prefix) {
            Some(detail) => Err(SinkError::Permission {
                subject: format!("{prefix}.>"),
                detail: format!("user {user}: {detail}"),
            }),
            None => Ok(()),
        },
        Answer::Unknown(why) => {
            tracing::warn!(
                why,
                "cannot read walcast's NATS permissions ({USER_INFO_SUBJECT}); a missing publish permission will show at the first publish"
            );
            Ok(())
        }
    }
}

/// Ask the server for this user's permissions. A refused request gets no answer but
/// a permissions-violation error, delivered on the client's own task: looked at
/// every 10 ms.
async fn ask(client: &Client, state: &NatsState) -> Answer {
    let answer = client.request(USER_INFO_SUBJECT, bytes::Bytes::new());
    tokio::pin!(answer);
    let mut check = tokio::time::interval(Duration::from_millis(10));
    let deadline = tokio::time::sleep(ANSWER_WITHIN);
    tokio::pin!(deadline);
    loop {
        if let Some(e) = take_denial(state) {
            return Answer::Unknown(e);
        }
        tokio::select! {
            reply = &mut answer => return match reply {
                Ok(msg) => parse(&msg.payload),
                Err(e) => Answer::Unknown(e.to_string()),
            },
            _ = check.tick() => {}
            _ = &mut deadline => return Answer::Unknown(format!("no answer within {ANSWER_WITHIN:?}")),
        }
    }
}

/// The permissions violation of the request itself, if the server reported one.
fn take_denial(state: &NatsState) -> Option<String> {
    let mut denied = state.permission_denied.lock().unwrap();
    denied.take_if(|e| e.contains(USER_INFO_SUBJECT))
}

fn parse(payload: &[u8]) -> Answer {
    match serde_json::from_slice::<UserInfoReply>(payload) {
        Ok(UserInfoReply { data: Some(info) }) => {
            Answer::Rules(info.user, info.permissions.and_then(|p| p.publish))
        }
        Ok(_) => Answer::Unknown(format!(
            "unexpected answer: {}",
            String::from_utf8_lossy(payload)
        )),
        Err(e) => Answer::Unknown(format!("unreadable answer: {e}")),
    }
}

impl SubjectRules {
    /// Why no envelope subject under `prefix` can be published, if none can.
    fn refusal(&self, prefix: &str) -> Option<String> {
        let envelopes = format!("{prefix}.*.*.*");
        if !self.allow.is_empty() && !self.allow.iter().any(|a| intersects(a, &envelopes)) {
            return Some(format!("publish allowed only on {}", self.allow.join(", ")));
        }
        self.deny
            .iter()
            .find(|d| covers(d, &envelopes))
            .map(|d| format!("publish denied on {d}"))
    }
}

/// Whether every subject `family` matches is matched by `pattern`.
fn covers(pattern: &str, family: &str) -> bool {
    let (mut p, mut f) = (pattern.split('.'), family.split('.'));
    loop {
        match (p.next(), f.next()) {
            (Some(">"), Some(_)) | (None, None) => return true,
            (Some("*"), Some(t)) if t != ">" => {}
            (Some(a), Some(b)) if a == b && a != "*" && a != ">" => {}
            _ => return false,
        }
    }
}

/// Whether some subject is matched by both patterns.
fn intersects(a: &str, b: &str) -> bool {
    let (mut x, mut y) = (a.split('.'), b.split('.'));
    loop {
        match (x.next(), y.next()) {
            (Some(">"), Some(_)) | (Some(_), Some(">")) | (None, None) => return true,
            (Some(s), Some(t)) if s == "*" || t == "*" || s == t => {}
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(allow: &[&str], deny: &[&str]) -> SubjectRules {
        SubjectRules {
            allow: allow.iter().map(|s| s.to_string()).collect(),
            deny: deny.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn covering_and_intersecting_patterns() {
        let family = "walcast.*.*.*";
        for p in [">", "walcast.>", "walcast.*.>", "walcast.*.*.*", "*.*.*.*"] {
            assert!(covers(p, family), "{p}");
            assert!(intersects(p, family), "{p}");
        }
        for p in [
            "walcast.public.>",
            "walcast.*.orders.*",
            "walcast.public.t.1",
        ] {
            assert!(!covers(p, family), "{p}");
            assert!(intersects(p, family), "{p}");
        }
        for p in [
            "walcast",
            "walcast.*",
            "walcast.*.*",
            "walcast_meta.>",
            "foo.>",
            "walcast.a.b.c.d",
        ] {
            assert!(!covers(p, family), "{p}");
            assert!(!intersects(p, family), "{p}");
        }
        // A prefix of several tokens.
        assert!(covers("acme.cdc.>", "acme.cdc.*.*.*"));
        assert!(!intersects("acme.>", "acme_cdc.*.*.*"));
    }

    #[test]
    fn refused_only_when_no_envelope_subject_can_be_published() {
        let refused = |allow: &[&str], deny: &[&str]| rules(allow, deny).refusal("walcast");
        assert_eq!(refused(&[], &[]), None);
        assert_eq!(refused(&["walcast.>", "walcast_meta.>"], &[]), None);
        assert_eq!(refused(&["walcast.public.>"], &[]), None);
        assert_eq!(refused(&[], &["walcast.secret.>"]), None);
        assert_eq!(
            refused(&["walcast_meta.>"], &["$JS.>"]).as_deref(),
            Some("publish allowed only on walcast_meta.>")
        );
        assert_eq!(
            refused(&[], &["walcast.>"]).as_deref(),
            Some("publish denied on walcast.>")
        );
        assert_eq!(
            refused(&["walcast.>"], &[">"]).as_deref(),
            Some("publish denied on >")
        );
    }

    #[test]
    fn the_servers_answers_are_read() {
        // nats-server 2.15, a user with rules; one without any; an error; garbage.
        let with_rules = br#"{"server":{"name":"N","ver":"2.15.1"},"data":{"user":"w","account":"$G","permissions":{"publish":{"deny":["walcast.\u003e"]},"subscribe":{}}}}"#;
        match parse(with_rules) {
            Answer::Rules(user, Some(r)) => {
                assert_eq!(user, "w");
                assert_eq!(r.deny, ["walcast.>"]);
                assert!(r.allow.is_empty());
            }
            other => panic!("{other:?}"),
        }
        let unrestricted =
            br#"{"server":{},"data":{"user":"r","account":"$G","account_name":"$G"}}"#;
        assert!(matches!(parse(unrestricted), Answer::Rules(u, None) if u == "r"));
        let error = br#"{"server":{},"error":{"code":500,"description":"nope"}}"#;
        assert!(matches!(parse(error), Answer::Unknown(_)));
        assert!(matches!(parse(b"\x00"), Answer::Unknown(_)));
    }

    #[test]
    fn only_the_requests_own_denial_is_taken() {
        let state = NatsState::default();
        *state.permission_denied.lock().unwrap() =
            Some("Permissions Violation for Publish to \"walcast.public.t.1\"".into());
        assert_eq!(take_denial(&state), None);
        assert!(state.permission_denied.lock().unwrap().is_some());
        *state.permission_denied.lock().unwrap() =
            Some("Permissions Violation for Publish to \"$SYS.REQ.USER.INFO\"".into());
        assert!(take_denial(&state).is_some());
        assert!(state.permission_denied.lock().unwrap().is_none());
    }
}
