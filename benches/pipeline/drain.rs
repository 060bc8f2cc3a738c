//! The limit's drain: a child process (`pipeline drain ...`) that speaks the
//! replication protocol itself over a blocking socket, reads pgoutput from a slot to
//! the backlog's end, decodes nothing but Begin/Commit, discards the bytes and (in
//! the timed runs) confirms the end. Its one knob is the read pacing — after a read
//! of `floor <= n < below` bytes it naps `nap_us` before reading again, so that the
//! walsender fills the socket instead of being woken per message — which is swept
//! before the timed runs (`sweep`, on a slot that is never confirmed, so every point
//! drains the same backlog) and the fastest point kept. One point is walcast's own
//! reader pacing (50 µs after a 4–32 KiB read), so the drain reads at least as well
//! as walcast does.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use walcast::wire::Lsn;

use crate::DynError;

/// Bytes asked for per read (walcast's reader asks for the same).
const READ_CHUNK: usize = 256 * 1024;
/// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01).
const PG_EPOCH_OFFSET_MICROS: i64 = 946_684_800_000_000;

/// How the drain paces its reads.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Pacing {
    pub nap_us: u64,
    pub floor: usize,
    pub below: usize,
}

impl Pacing {
    /// Never nap.
    pub const NONE: Pacing = Pacing {
        nap_us: 0,
        floor: 0,
        below: 0,
    };

    /// The default sweep: never nap; naps of 50, 200, 1,000 and 3,000 µs after reads
    /// in walcast's window (4–32 KiB), under 32 KiB, and under a full read (the
    /// longest naps let the walsender fill the socket: its sends get fewer and larger).
    pub fn default_sweep() -> Vec<Pacing> {
        let mut out = vec![Pacing::NONE];
        for nap_us in [50, 200, 1000, 3000] {
            for (floor, below) in [(4096, 32768), (0, 32768), (0, READ_CHUNK)] {
                out.push(Pacing {
                    nap_us,
                    floor,
                    below,
                });
            }
        }
        out
    }

    /// `BENCH_DRAIN_SWEEP=nap_us:floor:below,...`, else the default sweep.
    pub fn sweep_from_env() -> Vec<Pacing> {
        let Ok(text) = std::env::var("BENCH_DRAIN_SWEEP") else {
            return Self::default_sweep();
        };
        text.split(',')
            .filter_map(|p| {
                let v: Vec<u64> = p.split(':').filter_map(|x| x.trim().parse().ok()).collect();
                (v.len() == 3).then(|| Pacing {
                    nap_us: v[0],
                    floor: v[1] as usize,
                    below: v[2] as usize,
                })
            })
            .collect()
    }

    pub fn label(&self) -> String {
        if self.nap_us == 0 {
            return "no nap".into();
        }
        format!(
            "{} µs after {}–{} KiB reads",
            self.nap_us,
            self.floor / 1024,
            self.below / 1024
        )
    }

    /// The child's command line (`confirm`: report the end as flushed).
    pub fn command(
        &self,
        port: u16,
        slot: &str,
        publication: &str,
        endpos: Lsn,
        confirm: bool,
    ) -> std::process::Command {
        let mut cmd =
            std::process::Command::new(std::env::current_exe().expect("the bench binary"));
        cmd.arg("drain")
            .args([&port.to_string(), slot, publication, &endpos.to_string()])
            .args([self.nap_us, self.floor as u64, self.below as u64].map(|x| x.to_string()))
            .arg(if confirm { "confirm" } else { "no-confirm" });
        cmd
    }
}

/// `drain <port> <slot> <publication> <endpos> <nap_us> <floor> <below> <confirm|no-confirm>`:
/// prints `seconds <s> bytes <n> reads <n> naps <n>` (timed from START_REPLICATION).
pub fn child_main(args: &[String]) -> Result<(), DynError> {
    let [port, slot, publication, endpos, nap, floor, below, confirm] = args else {
        return Err("drain: expected 8 arguments".into());
    };
    let pacing = Pacing {
        nap_us: nap.parse()?,
        floor: floor.parse()?,
        below: below.parse()?,
    };
    // Naps as asked: the default timer slack (50 µs) would stretch the short ones.
    // SAFETY: prctl with PR_SET_TIMERSLACK only changes this thread's timer slack.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1u64) };
    let mut conn = Conn::connect(port.parse()?)?;
    let sql = format!(
        "START_REPLICATION SLOT {slot} LOGICAL 0/0 (proto_version '1', publication_names '{publication}')"
    );
    let started = Instant::now();
    conn.send(b'Q', &[sql.as_bytes(), &[0]].concat())?;
    let end = conn.stream_to(endpos.parse()?, pacing)?;
    let seconds = started.elapsed().as_secs_f64();
    let flushed = if confirm == "confirm" { end } else { Lsn(0) };
    conn.status(end, flushed)?;
    conn.send(b'X', &[])?;
    println!(
        "seconds {seconds} bytes {} reads {} naps {}",
        conn.bytes, conn.reads, conn.naps
    );
    Ok(())
}

/// A replication connection: the socket and a read buffer zeroed once (frames are
/// looked at in place, never copied).
struct Conn {
    sock: TcpStream,
    buf: Vec<u8>,
    /// The unparsed bytes are `buf[start..end]`.
    start: usize,
    end: usize,
    bytes: u64,
    reads: u64,
    naps: u64,
}

/// What one backend message means to the drain.
enum Step {
    Go,
    Begin,
    Commit(Lsn),
    Keepalive(Lsn, bool),
}

fn be_u64(b: &[u8]) -> u64 {
    u64::from_be_bytes(b[..8].try_into().expect("8 bytes"))
}

fn step(tag: u8, body: &[u8]) -> Result<Step, DynError> {
    Ok(match (tag, body.first()) {
        (b'd', Some(b'w')) if body.len() > 25 => match body[25] {
            b'B' => Step::Begin,
            b'C' if body.len() >= 25 + 18 => Step::Commit(Lsn(be_u64(&body[25 + 10..]))),
            _ => Step::Go,
        },
        (b'd', Some(b'k')) if body.len() >= 18 => {
            Step::Keepalive(Lsn(be_u64(&body[1..])), body[17] == 1)
        }
        (b'E', _) => return Err(format!("drain: {}", String::from_utf8_lossy(body)).into()),
        (b'c', _) => return Err("drain: the stream ended before the end".into()),
        _ => Step::Go,
    })
}

impl Conn {
    /// Connect and authenticate (the fixture trusts local TCP) in replication mode.
    fn connect(port: u16) -> Result<Conn, DynError> {
        let sock = TcpStream::connect(("127.0.0.1", port))?;
        sock.set_nodelay(true)?;
        let mut conn = Conn {
            sock,
            buf: vec![0; 4 * READ_CHUNK],
            start: 0,
            end: 0,
            bytes: 0,
            reads: 0,
            naps: 0,
        };
        let mut body = 196_608i32.to_be_bytes().to_vec();
        for (k, v) in [
            ("user", "postgres"),
            ("database", "postgres"),
            ("replication", "database"),
        ] {
            body.extend_from_slice(k.as_bytes());
            body.push(0);
            body.extend_from_slice(v.as_bytes());
            body.push(0);
        }
        body.push(0);
        let mut msg = ((body.len() + 4) as i32).to_be_bytes().to_vec();
        msg.extend_from_slice(&body);
        conn.sock.write_all(&msg)?;
        loop {
            let Some((tag, s, e)) = conn.next_frame() else {
                conn.fill(Pacing::NONE)?;
                continue;
            };
            match tag {
                b'Z' => return Ok(conn),
                b'E' => {
                    return Err(
                        format!("drain: {}", String::from_utf8_lossy(&conn.buf[s..e])).into(),
                    )
                }
                b'R' if conn.buf[s..s + 4] != [0, 0, 0, 0] => {
                    return Err("drain: needs trust auth".into())
                }
                _ => {}
            }
        }
    }

    fn send(&mut self, tag: u8, body: &[u8]) -> std::io::Result<()> {
        let mut msg = vec![tag];
        msg.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        msg.extend_from_slice(body);
        self.sock.write_all(&msg)
    }

    /// A standby status update (CopyData 'r').
    fn status(&mut self, written: Lsn, flushed: Lsn) -> std::io::Result<()> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as i64);
        let mut body = vec![b'r'];
        for lsn in [written.0, flushed.0, flushed.0] {
            body.extend_from_slice(&lsn.to_be_bytes());
        }
        body.extend_from_slice(&(now - PG_EPOCH_OFFSET_MICROS).to_be_bytes());
        body.push(0);
        self.send(b'd', &body)
    }

    /// The next complete backend message in the buffer: (tag, body start, body end).
    fn next_frame(&mut self) -> Option<(u8, usize, usize)> {
        let have = &self.buf[self.start..self.end];
        if have.len() < 5 {
            return None;
        }
        let len = i32::from_be_bytes(have[1..5].try_into().ok()?) as usize;
        if have.len() <= len {
            return None;
        }
        let frame = (have[0], self.start + 5, self.start + len + 1);
        self.start += len + 1;
        Some(frame)
    }

    /// One read of up to `READ_CHUNK` bytes, then a nap if the pacing asks for it.
    fn fill(&mut self, pacing: Pacing) -> Result<(), DynError> {
        if self.buf.len() - self.end < READ_CHUNK {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            if self.buf.len() - self.end < READ_CHUNK {
                self.buf.resize(self.buf.len() * 2, 0);
            }
        }
        let n = self
            .sock
            .read(&mut self.buf[self.end..self.end + READ_CHUNK])?;
        if n == 0 {
            return Err("drain: PostgreSQL closed the connection".into());
        }
        self.end += n;
        self.bytes += n as u64;
        self.reads += 1;
        if pacing.nap_us > 0 && (pacing.floor..pacing.below).contains(&n) {
            self.naps += 1;
            std::thread::sleep(Duration::from_micros(pacing.nap_us));
        }
        Ok(())
    }

    /// Stream until a Commit ends at or after `endpos` (or, between transactions, the
    /// server says it sent everything before `endpos`); returns the position reached.
    fn stream_to(&mut self, endpos: Lsn, pacing: Pacing) -> Result<Lsn, DynError> {
        let mut in_txn = false;
        let mut received = Lsn(0);
        loop {
            let Some((tag, s, e)) = self.next_frame() else {
                self.fill(pacing)?;
                continue;
            };
            match step(tag, &self.buf[s..e])? {
                Step::Go => {}
                Step::Begin => in_txn = true,
                Step::Commit(end) => {
                    in_txn = false;
                    received = end;
                    if end >= endpos {
                        return Ok(end);
                    }
                }
                Step::Keepalive(wal_end, _) if !in_txn && wal_end >= endpos => return Ok(wal_end),
                Step::Keepalive(_, true) => self.status(received, Lsn(0))?,
                Step::Keepalive(..) => {}
            }
        }
    }
}

/// One point of the sweep: the drain's own seconds (START_REPLICATION to the end)
/// and what its walsender spent.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SweepPoint {
    pub pacing: Pacing,
    pub label: String,
    pub seconds: f64,
    pub walsender_cpu_seconds: f64,
    pub reads: u64,
    pub naps: u64,
}

/// Drain the backlog of `slot` (never confirmed, so each point reads the same
/// backlog) once per pacing of the sweep; returns the fastest and every point.
pub async fn sweep(
    b: &crate::setup::Bench,
    slot: &str,
    publication: &str,
    endpos: Lsn,
) -> (Pacing, Vec<SweepPoint>) {
    let mut points = Vec::new();
    for pacing in b.settings.sweep.clone() {
        b.wait_slot_free(slot).await;
        let point = sweep_point(b, slot, publication, endpos, pacing).await;
        eprintln!(
            "  drain sweep, {}: {:.3} s, walsender CPU {:.2} s, {} reads, {} naps",
            point.label, point.seconds, point.walsender_cpu_seconds, point.reads, point.naps
        );
        points.push(point);
    }
    let best = points
        .iter()
        .filter(|p| p.seconds.is_finite())
        .min_by(|x, y| x.seconds.total_cmp(&y.seconds))
        .map_or(Pacing::NONE, |p| p.pacing);
    (best, points)
}

async fn sweep_point(
    b: &crate::setup::Bench,
    slot: &str,
    publication: &str,
    endpos: Lsn,
    pacing: Pacing,
) -> SweepPoint {
    let mut cmd = pacing.command(b.pg.port, slot, publication, endpos, false);
    let pids = crate::watch::Pids {
        contender: 0,
        nats: 0,
    };
    // Never "confirmed": it only samples the walsender's CPU.
    let watch = crate::watch::SlotWatch::start(b.watch_db.clone(), slot, Lsn(u64::MAX), pids);
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .expect("the drain")
        .expect("starting the drain");
    let watched = watch.finish().await;
    assert!(
        out.status.success(),
        "the drain failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let figure = |name: &str| -> f64 {
        let mut words = text.split_whitespace();
        words.find(|w| *w == name);
        words
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(f64::NAN)
    };
    SweepPoint {
        pacing,
        label: pacing.label(),
        seconds: figure("seconds"),
        walsender_cpu_seconds: watched.walsender_cpu,
        reads: figure("reads") as u64,
        naps: figure("naps") as u64,
    }
}
