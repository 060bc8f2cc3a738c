//! [`NatsCluster`]: a throwaway JetStream cluster of nats-servers on 127.0.0.1, each
//! node in its own temporary directory with routes to the others, each killable
//! (kill -9) and restartable on the same ports and store.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use super::process::free_port;
use super::{FixtureError, NatsServer};

/// The cluster's name (`cluster { name }`), what `--stream-cluster` names.
pub const CLUSTER_NAME: &str = "walcast-test";

/// A JetStream cluster of `nodes.len()` servers named `n0`, `n1`, ... with the tag
/// `node:<i>` each.
pub struct NatsCluster {
    pub nodes: Vec<NatsServer>,
}

impl NatsCluster {
    /// Start `n` servers routed to each other, and wait until JetStream has a meta
    /// leader (streams can be created).
    pub fn start(n: usize) -> Result<NatsCluster, FixtureError> {
        let route_ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let mut nodes = Vec::with_capacity(n);
        for i in 0..n {
            let routes: Vec<String> = route_ports
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, p)| format!("nats-route://127.0.0.1:{p}"))
                .collect();
            let config = format!(
                "server_name: n{i}\nserver_tags: [\"node:{i}\"]\n\
                 cluster {{\n  name: {CLUSTER_NAME}\n  listen: 127.0.0.1:{}\n  routes: [{}]\n}}\n",
                route_ports[i],
                routes.join(", ")
            );
            nodes.push(NatsServer::start_with_config(&config)?);
        }
        let cluster = NatsCluster { nodes };
        cluster.wait_meta_leader(Duration::from_secs(60))?;
        Ok(cluster)
    }

    /// Every node's client URL, comma-separated (what `--nats-url` takes).
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(NatsServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The node of a server name (`n1` → 1), as JetStream's stream info names leaders.
    pub fn index_of(&self, server_name: &str) -> Option<usize> {
        server_name
            .strip_prefix('n')?
            .parse()
            .ok()
            .filter(|i| *i < self.nodes.len())
    }

    /// Kill -9 node `i`.
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].kill();
    }

    /// Start node `i` again on its ports and store.
    pub fn start_again(&mut self, i: usize) -> Result<(), FixtureError> {
        self.nodes[i].start_again()
    }

    /// Wait until every running node names the same JetStream meta leader and the
    /// leader sees every running node current.
    pub fn wait_meta_leader(&self, timeout: Duration) -> Result<(), FixtureError> {
        let deadline = Instant::now() + timeout;
        while !self.meta_ready().unwrap_or(false) {
            if Instant::now() >= deadline {
                return Err(FixtureError::Failed {
                    what: "the NATS cluster's JetStream meta leader election".into(),
                    detail: self
                        .nodes
                        .iter()
                        .map(NatsServer::log)
                        .collect::<Vec<_>>()
                        .join("\n---\n"),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    fn meta_ready(&self) -> Option<bool> {
        let running: Vec<usize> = (0..self.nodes.len())
            .filter(|i| self.nodes[*i].is_running())
            .collect();
        let mut leaders = Vec::new();
        for i in &running {
            let jsz = monitor_json(self.nodes[*i].monitor_port, "/jsz")?;
            leaders.push(
                jsz.get("meta_cluster")?
                    .get("leader")?
                    .as_str()?
                    .to_string(),
            );
        }
        let leader = leaders.first()?.clone();
        if leader.is_empty() || leaders.iter().any(|l| *l != leader) {
            return Some(false);
        }
        let at = self.index_of(&leader)?;
        let jsz = monitor_json(self.nodes[at].monitor_port, "/jsz")?;
        let replicas = jsz
            .get("meta_cluster")?
            .get("replicas")?
            .as_array()?
            .clone();
        Some(running.iter().filter(|i| **i != at).all(|i| {
            replicas.iter().any(|r| {
                r.get("name").and_then(|n| n.as_str()) == Some(&format!("n{i}"))
                    && r.get("current") == Some(&true.into())
            })
        }))
    }
}

/// A JSON page of a nats-server's monitoring endpoint (`/jsz`, `/varz`, ...), or
/// `None` when it does not answer.
pub fn monitor_json(port: u16, path: &str) -> Option<serde_json::Value> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    serde_json::from_str(out.split_once("\r\n\r\n")?.1).ok()
}
