//! Core delivery's confirmation: it stands only for writes that went out on the
//! connection the round trip used, told apart by the ids in the server's INFO (no
//! event callback involved, so a late `Disconnected` event cannot confirm writes
//! lost with the old connection).

use std::time::Duration;

use async_nats::Subject;
use bytes::Bytes;

use super::*;
use crate::ops::metrics::Metrics;
use crate::sink::{Publish, SinkBatch};
use crate::wire::{Lsn, Position};

/// The INFO nats-server 2.15 sends a client (its id, the client's id), as the client
/// parses it.
fn info(server_id: &str, client_id: u64) -> async_nats::ServerInfo {
    let json = format!(
        r#"{{"server_id":"{server_id}","server_name":"n","version":"2.15.1","proto":1,"host":"127.0.0.1","port":4222,"headers":true,"max_payload":1048576,"jetstream":true,"client_id":{client_id},"client_ip":"127.0.0.1"}}"#
    );
    serde_json::from_str(&json).unwrap()
}

#[test]
fn a_round_trip_confirms_only_on_the_connection_of_the_writes() {
    let first = ConnectionId::from_info(&info("NAEAD", 5));
    let changed = "the connection changed before confirmation";
    assert_eq!(confirmation(Ok(()), &first, &first.clone()), Ok(()));
    // A reconnect to the same server: a new client id.
    let reconnected = ConnectionId::from_info(&info("NAEAD", 6));
    assert_eq!(confirmation(Ok(()), &first, &reconnected), Err(changed));
    // A restarted server numbers its clients from 1 again, under a new server id.
    let restarted = ConnectionId::from_info(&info("ND45G", 5));
    assert_eq!(confirmation(Ok(()), &first, &restarted), Err(changed));
    // A failed round trip stays failed.
    let timeout = Err("no confirmation in time");
    assert_eq!(confirmation(timeout, &first, &first.clone()), timeout);
}

fn batch(n: u32) -> SinkBatch {
    SinkBatch {
        items: (0..n)
            .map(|i| Publish {
                subject: Subject::from(format!("walcast.public.t.{i}")),
                payload: Bytes::from_static(b"\x80"),
                msg_id: String::new(),
                position: Position {
                    commit_lsn: Lsn(1),
                    ordinal: i,
                },
                ttl: None,
            })
            .collect(),
        commit_end: Some(Lsn(2)),
        commit_times: vec![],
    }
}

/// On a real server: writes, then a reconnect, then a round trip that succeeds on the
/// new connection. The client has no event callback at all: what tells the
/// connections apart is the INFO the client recorded when it reconnected.
#[cfg(feature = "test-utils")]
#[tokio::test]
async fn a_reconnect_between_the_writes_and_the_round_trip_is_not_confirmed() {
    let server = crate::testing::NatsServer::start_with(false).unwrap();
    let client = async_nats::connect(server.url()).await.unwrap();
    let settings = SinkSettings {
        max_unconfirmed: 100,
        confirm_timeout: Duration::from_secs(5),
    };
    let mut sink = CoreSink::new(client.clone(), &settings, Metrics::new())
        .await
        .unwrap();
    let pending = [batch(3)];
    assert_eq!(sink.publish_and_confirm(&pending, 3).await, Ok(()));

    let before = ConnectionId::of(&client);
    assert!(sink.write_all(&pending).await);
    client.force_reconnect().await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while ConnectionId::of(&client) == before {
        assert!(tokio::time::Instant::now() < deadline, "no reconnect");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let round_trip = sink.round_trip().await;
    assert_eq!(
        round_trip,
        Ok(()),
        "the round trip works on the new connection"
    );
    let after = ConnectionId::of(&client);
    assert_eq!(
        confirmation(round_trip, &before, &after),
        Err("the connection changed before confirmation")
    );
    // The next attempt, all on the new connection, is confirmed.
    assert_eq!(sink.publish_and_confirm(&pending, 3).await, Ok(()));
}
