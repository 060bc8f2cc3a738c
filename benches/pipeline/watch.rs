//! The timing rule every contender is held to, and the subscriber that counts what a
//! publisher delivered.
//!
//! A [`SlotWatch`] polls the contender's slot every [`POLL`]: a run starts when a
//! walsender holds the slot (the contender asked for the first byte: process and
//! interpreter start-up, NATS connections and stream set-up are before it) and its
//! slot part ends when `confirmed_flush_lsn` reached the backlog's end. The same
//! polls sample the CPU time of the contender's process, of its walsender and of
//! nats-server, and the contender's resident memory. A [`Counter`] subscribes to a
//! publisher's subjects before it starts and notes when the last message came; a
//! publisher's run ends at the later of the two.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use walcast::testing::{cpu_seconds, rss_kib};
use walcast::wire::Lsn;

/// How often the slot is looked at (one short query on its own connection).
pub const POLL: Duration = Duration::from_millis(2);

/// What a watch saw.
#[derive(Debug, Default, Clone)]
pub struct Watched {
    /// When a walsender first held the slot.
    pub started: Option<Instant>,
    /// When the confirmed position first reached the end.
    pub confirmed_at: Option<Instant>,
    /// CPU seconds of the contender's process between start and stop.
    pub contender_cpu: f64,
    /// CPU seconds of the slot's walsender (a new process per connection).
    pub walsender_cpu: f64,
    /// CPU seconds of nats-server between start and stop.
    pub nats_cpu: f64,
    /// The contender's largest resident set seen, KiB.
    pub peak_rss_kib: u64,
}

/// A running watch of one slot; [`SlotWatch::finish`] stops it.
pub struct SlotWatch {
    stop: Arc<AtomicBool>,
    confirmed: Arc<AtomicBool>,
    started: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Watched>,
}

/// The processes a watch samples (0: none).
#[derive(Debug, Clone, Copy)]
pub struct Pids {
    pub contender: u32,
    pub nats: u32,
}

impl SlotWatch {
    pub fn start(db: Arc<tokio_postgres::Client>, slot: &str, endpos: Lsn, pids: Pids) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let confirmed = Arc::new(AtomicBool::new(false));
        let started = Arc::new(AtomicBool::new(false));
        let flags = (stop.clone(), confirmed.clone(), started.clone());
        let slot = slot.to_string();
        let task = tokio::spawn(poll(db, slot, endpos, pids, flags));
        SlotWatch {
            stop,
            confirmed,
            started,
            task,
        }
    }

    /// The slot's confirmed position reached the end.
    pub fn confirmed(&self) -> bool {
        self.confirmed.load(Ordering::Relaxed)
    }

    /// A walsender held the slot.
    pub fn started(&self) -> bool {
        self.started.load(Ordering::Relaxed)
    }

    /// Stop polling (after one last sample) and return what was seen.
    pub async fn finish(self) -> Watched {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("the slot watch")
    }
}

fn cpu_of(pid: u32) -> f64 {
    if pid == 0 {
        0.0
    } else {
        cpu_seconds(pid)
    }
}

type Flags = (Arc<AtomicBool>, Arc<AtomicBool>, Arc<AtomicBool>);

async fn poll(
    db: Arc<tokio_postgres::Client>,
    slot: String,
    endpos: Lsn,
    pids: Pids,
    (stop, confirmed, started): Flags,
) -> Watched {
    let stmt = db
        .prepare("SELECT active_pid, confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1")
        .await
        .expect("preparing the slot poll");
    let mut w = Watched::default();
    let (mut cpu_start, mut cpu_last, mut nats_start, mut walsender) = (0.0, 0.0, 0.0, 0u32);
    loop {
        let last = stop.load(Ordering::Relaxed);
        let row = db.query_opt(&stmt, &[&slot]).await.ok().flatten();
        let now = Instant::now();
        let active: Option<i32> = row.as_ref().and_then(|r| r.get(0));
        let position: Option<Lsn> = row
            .as_ref()
            .and_then(|r| r.get::<_, Option<String>>(1))
            .and_then(|t| t.parse().ok());
        if let (None, Some(pid)) = (w.started, active) {
            w.started = Some(now);
            started.store(true, Ordering::Relaxed);
            walsender = pid as u32;
            cpu_start = cpu_of(pids.contender);
            nats_start = cpu_of(pids.nats);
        }
        if walsender != 0 {
            // 0 once the walsender is gone: keep its last figure.
            w.walsender_cpu = w.walsender_cpu.max(cpu_of(walsender));
        }
        if pids.contender != 0 {
            // 0 once the process is reaped: keep its last figures.
            cpu_last = f64::max(cpu_last, cpu_of(pids.contender));
            w.peak_rss_kib = w.peak_rss_kib.max(rss_kib(pids.contender));
        }
        if w.confirmed_at.is_none() && position.is_some_and(|p| p >= endpos) {
            w.confirmed_at = Some(now);
            confirmed.store(true, Ordering::Relaxed);
        }
        if last {
            w.contender_cpu = cpu_last - cpu_start;
            w.nats_cpu = cpu_of(pids.nats) - nats_start;
            return w;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// A subscriber on its own connection counting a publisher's messages (subjects
/// under `<prefix>._walcast…` are not envelopes and not counted).
pub struct Counter {
    count: Arc<AtomicU64>,
    bytes: Arc<AtomicU64>,
    /// Nanoseconds after `base` of the last message (0: none yet).
    last_nanos: Arc<AtomicU64>,
    base: Instant,
    task: tokio::task::JoinHandle<()>,
}

impl Counter {
    /// Subscribe to `pattern`; returns once the server knows the subscription.
    pub async fn start(url: String, pattern: String) -> Counter {
        let client = async_nats::ConnectOptions::new()
            .subscription_capacity(1 << 21)
            .connect(url)
            .await
            .expect("connecting the counting subscriber");
        let mut sub = client.subscribe(pattern).await.expect("subscribing");
        client.flush().await.expect("flushing the subscription");
        let (count, bytes, last_nanos) = (Arc::default(), Arc::default(), Arc::default());
        let base = Instant::now();
        let shared: (Arc<AtomicU64>, Arc<AtomicU64>, Arc<AtomicU64>) = (
            Arc::clone(&count),
            Arc::clone(&bytes),
            Arc::clone(&last_nanos),
        );
        let task = tokio::spawn(async move {
            let _client = client;
            while let Some(msg) = sub.next().await {
                // Not an envelope (walcast's permission probe): not counted.
                if msg.subject.as_str().contains("._walcast") {
                    continue;
                }
                shared
                    .1
                    .fetch_add(msg.payload.len() as u64, Ordering::Relaxed);
                shared
                    .2
                    .store(base.elapsed().as_nanos() as u64, Ordering::Relaxed);
                shared.0.fetch_add(1, Ordering::Relaxed);
            }
        });
        Counter {
            count,
            bytes,
            last_nanos,
            base,
            task,
        }
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Average payload size so far (bytes).
    pub fn mean_payload(&self) -> f64 {
        self.bytes.load(Ordering::Relaxed) as f64 / self.count().max(1) as f64
    }

    /// Payload bytes so far.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// When the last message came.
    pub fn last_at(&self) -> Option<Instant> {
        match self.last_nanos.load(Ordering::Relaxed) {
            0 => None,
            n => Some(self.base + Duration::from_nanos(n)),
        }
    }

    /// Nothing came for `quiet` (or nothing at all for that long).
    pub fn quiet_for(&self, quiet: Duration) -> bool {
        self.last_at().unwrap_or(self.base).elapsed() >= quiet
    }

    pub fn stop(self) {
        self.task.abort();
    }
}

/// A run's seconds by the rule: from the slot's start to the later of its
/// confirmation and the subscriber's last message (NaN if it never started or ended).
pub fn seconds(w: &Watched, last_message: Option<Instant>) -> f64 {
    let (Some(start), Some(confirmed)) = (w.started, w.confirmed_at) else {
        return f64::NAN;
    };
    let end = last_message.map_or(confirmed, |m| m.max(confirmed));
    end.duration_since(start).as_secs_f64()
}
