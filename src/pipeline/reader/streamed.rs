//! Large transactions PostgreSQL streams while they are still in progress (pgoutput
//! protocol 2+, `streaming`), held until they end: the changes of each top-level
//! transaction, in arrival order, each with the (sub)transaction that made it. An
//! aborted subtransaction's changes are dropped, an aborted transaction all of them; a
//! committed one is replayed in order ([`Replay`]) through the ordinary change path.
//! Beyond the memory budget (`--stream-memory`, over all open transactions) the held
//! changes go to unnamed files in `--stream-spill-dir` (unlinked at creation, so a
//! crash leaves nothing behind); a replay reads the file, then what is in memory.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, Write};
use std::path::PathBuf;

use crate::pipeline::PipelineError;

/// One streamed transaction held.
#[derive(Default)]
struct Held {
    /// (subxid, message without its xid), after what went to the file.
    memory: Vec<(u32, Vec<u8>)>,
    memory_bytes: usize,
    file: Option<BufWriter<File>>,
    aborted: HashSet<u32>,
}

/// The streamed transactions in progress.
pub(super) struct StreamBuffers {
    budget: usize,
    dir: PathBuf,
    held_bytes: usize,
    txns: HashMap<u32, Held>,
    /// The top-level transaction of the open stream block.
    pub(super) block: Option<u32>,
    /// Bytes written to spill files, in all.
    pub(super) spilled_bytes: u64,
}

impl StreamBuffers {
    pub(super) fn new(budget: usize, dir: PathBuf) -> Self {
        StreamBuffers {
            budget,
            dir,
            held_bytes: 0,
            txns: HashMap::new(),
            block: None,
            spilled_bytes: 0,
        }
    }

    /// Streamed transactions are open (begun, not yet committed or aborted).
    pub(super) fn any_open(&self) -> bool {
        !self.txns.is_empty()
    }

    /// After a reconnect the server streams every open transaction again from its start.
    pub(super) fn clear(&mut self) {
        self.txns.clear();
        self.held_bytes = 0;
        self.block = None;
    }

    pub(super) fn start(&mut self, xid: u32, first_segment: bool) {
        if first_segment {
            // A transaction streamed again after a reconnect starts afresh.
            self.drop_txn(xid);
        }
        self.txns.entry(xid).or_default();
        self.block = Some(xid);
    }

    /// A change of `subxid` inside the open block; spills when over the budget.
    pub(super) fn push(&mut self, subxid: u32, msg: Vec<u8>) -> Result<(), PipelineError> {
        let Some(xid) = self.block else { return Ok(()) };
        let held = self.txns.entry(xid).or_default();
        held.memory_bytes += msg.len();
        self.held_bytes += msg.len();
        held.memory.push((subxid, msg));
        if self.held_bytes > self.budget {
            self.spill_all()?;
        }
        Ok(())
    }

    fn spill_all(&mut self) -> Result<(), PipelineError> {
        let dir = self.dir.clone();
        let err = |source| PipelineError::Spill {
            dir: dir.clone(),
            source,
        };
        for held in self.txns.values_mut() {
            if held.memory.is_empty() {
                continue;
            }
            if held.file.is_none() {
                held.file = Some(BufWriter::new(tempfile::tempfile_in(&dir).map_err(err)?));
            }
            let file = held.file.as_mut().expect("set above");
            for (subxid, msg) in held.memory.drain(..) {
                file.write_all(&subxid.to_be_bytes()).map_err(err)?;
                file.write_all(&(msg.len() as u32).to_be_bytes())
                    .map_err(err)?;
                file.write_all(&msg).map_err(err)?;
                self.spilled_bytes += 8 + msg.len() as u64;
            }
            self.held_bytes -= held.memory_bytes;
            held.memory_bytes = 0;
        }
        Ok(())
    }

    fn drop_txn(&mut self, xid: u32) -> Option<Held> {
        let held = self.txns.remove(&xid)?;
        self.held_bytes -= held.memory_bytes;
        Some(held)
    }

    /// Stream Abort: the subtransaction's changes (all of them when `subxid == xid`).
    pub(super) fn abort(&mut self, xid: u32, subxid: u32) {
        if subxid == xid {
            self.drop_txn(xid);
            return;
        }
        let Some(held) = self.txns.get_mut(&xid) else {
            return;
        };
        held.aborted.insert(subxid);
        let before = held.memory_bytes;
        held.memory.retain(|(s, _)| *s != subxid);
        held.memory_bytes = held.memory.iter().map(|(_, m)| m.len()).sum();
        self.held_bytes -= before - held.memory_bytes;
    }

    /// Stream Commit: the transaction's surviving changes, in order.
    pub(super) fn take(&mut self, xid: u32) -> Result<Replay, PipelineError> {
        let held = self.drop_txn(xid).unwrap_or_default();
        let file = match held.file {
            Some(w) => {
                let err = |source| PipelineError::Spill {
                    dir: self.dir.clone(),
                    source,
                };
                let mut f = w.into_inner().map_err(|e| err(e.into_error()))?;
                f.rewind().map_err(err)?;
                Some(BufReader::new(f))
            }
            None => None,
        };
        Ok(Replay {
            file,
            memory: held.memory.into_iter(),
            aborted: held.aborted,
            dir: self.dir.clone(),
        })
    }
}

/// A committed streamed transaction's changes, one at a time.
pub(super) struct Replay {
    file: Option<BufReader<File>>,
    memory: std::vec::IntoIter<(u32, Vec<u8>)>,
    aborted: HashSet<u32>,
    dir: PathBuf,
}

impl Replay {
    /// The next change (a message parseable by `pgoutput::parse`), `None` at the end.
    pub(super) fn next_change(&mut self) -> Result<Option<Vec<u8>>, PipelineError> {
        loop {
            let next = match self.file.as_mut() {
                Some(f) => match read_record(f) {
                    Ok(Some(r)) => Some(r),
                    Ok(None) => {
                        self.file = None;
                        continue;
                    }
                    Err(source) => {
                        return Err(PipelineError::Spill {
                            dir: self.dir.clone(),
                            source,
                        })
                    }
                },
                None => self.memory.next(),
            };
            match next {
                Some((subxid, _)) if self.aborted.contains(&subxid) => continue,
                Some((_, msg)) => return Ok(Some(msg)),
                None => return Ok(None),
            }
        }
    }
}

fn read_record(f: &mut BufReader<File>) -> std::io::Result<Option<(u32, Vec<u8>)>> {
    let mut head = [0u8; 8];
    match f.read_exact(&mut head) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let subxid = u32::from_be_bytes(head[..4].try_into().expect("4 bytes"));
    let len = u32::from_be_bytes(head[4..].try_into().expect("4 bytes")) as usize;
    let mut msg = vec![0; len];
    f.read_exact(&mut msg)?;
    Ok(Some((subxid, msg)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(mut r: Replay) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(m) = r.next_change().unwrap() {
            out.push(m);
        }
        out
    }

    #[test]
    fn spilled_and_held_changes_replay_in_order_without_aborted_subtransactions() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = StreamBuffers::new(10, dir.path().to_path_buf());
        b.start(1, true);
        for i in 0..20u8 {
            let sub = if i % 5 == 0 { 2 } else { 1 };
            b.push(sub, vec![i; 3]).unwrap();
        }
        b.start(3, true);
        b.push(3, vec![99]).unwrap();
        b.abort(1, 2);
        assert!(b.spilled_bytes > 0, "over the budget: spilled");
        let got = drain(b.take(1).unwrap());
        let want: Vec<Vec<u8>> = (0..20u8)
            .filter(|i| i % 5 != 0)
            .map(|i| vec![i; 3])
            .collect();
        assert_eq!(got, want);
        b.abort(3, 3);
        assert!(!b.any_open());
        assert_eq!(b.held_bytes, 0);
    }
}
