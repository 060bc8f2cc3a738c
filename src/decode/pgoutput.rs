//! The `pgoutput` logical replication message format (protocol versions 1 to 4), parsed
//! without copying: every name and tuple value borrows from the received buffer. The
//! messages of protocol 2+ (streamed transactions) and 3+ (two-phase commit) are in
//! [`streaming`]; a change inside a stream block carries its (sub)transaction's xid
//! after the tag, which [`streaming::split_stream_xid`] takes off.
//!
//! Reference: PostgreSQL's "Logical Replication Message Formats". Malformed input
//! (truncated buffers, unknown tags, bad lengths) is a [`DecodeError`], never a panic.

use crate::wire::Lsn;

/// Why a pgoutput message could not be parsed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error(
        "pgoutput message truncated: needed {needed} more byte(s) at offset {offset} of a {what}"
    )]
    Truncated {
        what: &'static str,
        offset: usize,
        needed: usize,
    },
    #[error("unknown pgoutput message tag {0:?}")]
    UnknownTag(char),
    #[error("unknown tuple column kind {0:?}")]
    UnknownColumnKind(char),
    #[error("unexpected tuple marker {0:?} in a {1} message")]
    UnexpectedMarker(char, &'static str),
    #[error("negative length {0} in a pgoutput message")]
    NegativeLength(i32),
    #[error("string in a pgoutput message is not NUL-terminated")]
    UnterminatedString,
    #[error("string in a pgoutput message is not UTF-8")]
    NotUtf8,
    #[error("empty pgoutput message")]
    Empty,
}

/// Microseconds since 2000-01-01 00:00:00 UTC, PostgreSQL's epoch.
pub type PgTimestamp = i64;

/// One column of a tuple as pgoutput sends it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TupleValue<'a> {
    Null,
    /// An unchanged TOASTed value: the server did not send it.
    UnchangedToast,
    /// The value in the type's text output format.
    Text(&'a [u8]),
    /// The value in the type's binary send format (only when `binary 'true'`).
    Binary(&'a [u8]),
}

/// Column texts (a table read in text form) as the replication stream would carry them.
pub fn text_tuple(texts: &[Option<String>]) -> Vec<TupleValue<'_>> {
    texts
        .iter()
        .map(|t| match t {
            Some(s) => TupleValue::Text(s.as_bytes()),
            None => TupleValue::Null,
        })
        .collect()
}

/// A column description in a Relation message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationColumn<'a> {
    /// Bit 1: part of the replica identity (key).
    pub flags: u8,
    pub name: &'a str,
    pub type_oid: u32,
    pub type_modifier: i32,
}

impl RelationColumn<'_> {
    /// Whether this column is part of the replica identity.
    pub fn is_identity(&self) -> bool {
        self.flags & 1 == 1
    }
}

/// The old-row image an Update or Delete carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OldTuple<'a> {
    /// `K`: only the replica identity columns (others are null).
    Key(Vec<TupleValue<'a>>),
    /// `O`: the whole old row (`REPLICA IDENTITY FULL`).
    Full(Vec<TupleValue<'a>>),
}

impl<'a> OldTuple<'a> {
    pub fn values(&self) -> &[TupleValue<'a>] {
        match self {
            OldTuple::Key(v) | OldTuple::Full(v) => v,
        }
    }
}

/// One decoded pgoutput message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PgOutput<'a> {
    Begin {
        final_lsn: Lsn,
        commit_ts: PgTimestamp,
        xid: u32,
    },
    Commit {
        flags: u8,
        commit_lsn: Lsn,
        end_lsn: Lsn,
        commit_ts: PgTimestamp,
    },
    Origin {
        commit_lsn: Lsn,
        name: &'a str,
    },
    Relation {
        relation_id: u32,
        namespace: &'a str,
        name: &'a str,
        replica_identity: u8,
        columns: Vec<RelationColumn<'a>>,
    },
    Type {
        type_oid: u32,
        namespace: &'a str,
        name: &'a str,
    },
    Insert {
        relation_id: u32,
        new: Vec<TupleValue<'a>>,
    },
    Update {
        relation_id: u32,
        old: Option<OldTuple<'a>>,
        new: Vec<TupleValue<'a>>,
    },
    Delete {
        relation_id: u32,
        old: OldTuple<'a>,
    },
    Truncate {
        options: u8,
        relation_ids: Vec<u32>,
    },
    Message {
        transactional: bool,
        lsn: Lsn,
        prefix: &'a str,
        content: &'a [u8],
    },
    /// `S` (protocol 2+): the changes up to Stream Stop belong to `xid`, in progress.
    StreamStart {
        xid: u32,
        first_segment: bool,
    },
    /// `E`: the end of a stream block.
    StreamStop,
    /// `c`: the streamed transaction `xid` committed.
    StreamCommit {
        xid: u32,
        commit_lsn: Lsn,
        end_lsn: Lsn,
        commit_ts: PgTimestamp,
    },
    /// `A`: the streamed (sub)transaction `subxid` of `xid` aborted (the whole
    /// transaction when they are equal); protocol 4 in parallel mode adds where.
    StreamAbort {
        xid: u32,
        subxid: u32,
        abort_lsn: Option<Lsn>,
    },
    /// `b` (protocol 3+, two-phase): the changes up to Prepare belong to prepared `xid`.
    BeginPrepare {
        prepare_lsn: Lsn,
        end_lsn: Lsn,
        prepare_ts: PgTimestamp,
        xid: u32,
        gid: &'a str,
    },
    /// `P` (or `p` for a streamed transaction): `xid` is prepared.
    Prepare {
        streamed: bool,
        prepare_lsn: Lsn,
        end_lsn: Lsn,
        xid: u32,
        gid: &'a str,
    },
    /// `K`: the prepared transaction committed.
    CommitPrepared {
        commit_lsn: Lsn,
        end_lsn: Lsn,
        commit_ts: PgTimestamp,
        xid: u32,
        gid: &'a str,
    },
    /// `r`: the prepared transaction was rolled back.
    RollbackPrepared {
        prepare_end_lsn: Lsn,
        rollback_end_lsn: Lsn,
        xid: u32,
        gid: &'a str,
    },
}

/// A bounds-checked reader over one message.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        match end {
            Some(end) => {
                let s = &self.buf[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => Err(DecodeError::Truncated {
                what: self.what,
                offset: self.pos,
                needed: n - (self.buf.len() - self.pos.min(self.buf.len())),
            }),
        }
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn i16(&mut self) -> Result<i16, DecodeError> {
        Ok(i16::from_be_bytes(self.take(2)?.try_into().unwrap()))
    }
    fn i32(&mut self) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn i64(&mut self) -> Result<i64, DecodeError> {
        Ok(i64::from_be_bytes(self.take(8)?.try_into().unwrap()))
    }
    fn lsn(&mut self) -> Result<Lsn, DecodeError> {
        Ok(Lsn(self.i64()? as u64))
    }
    fn cstr(&mut self) -> Result<&'a str, DecodeError> {
        let rest = &self.buf[self.pos.min(self.buf.len())..];
        let nul = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or(DecodeError::UnterminatedString)?;
        let s = std::str::from_utf8(&rest[..nul]).map_err(|_| DecodeError::NotUtf8)?;
        self.pos += nul + 1;
        Ok(s)
    }
    fn len(&mut self) -> Result<usize, DecodeError> {
        let n = self.i32()?;
        usize::try_from(n).map_err(|_| DecodeError::NegativeLength(n))
    }
    fn tuple(&mut self) -> Result<Vec<TupleValue<'a>>, DecodeError> {
        let n = self.i16()?;
        let n = usize::try_from(n).map_err(|_| DecodeError::NegativeLength(n.into()))?;
        // Each column takes at least one byte: cap the allocation by what is left.
        let mut values = Vec::with_capacity(n.min(self.buf.len().saturating_sub(self.pos)));
        for _ in 0..n {
            let kind = self.u8()?;
            values.push(match kind {
                b'n' => TupleValue::Null,
                b'u' => TupleValue::UnchangedToast,
                b't' => {
                    let len = self.len()?;
                    TupleValue::Text(self.take(len)?)
                }
                b'b' => {
                    let len = self.len()?;
                    TupleValue::Binary(self.take(len)?)
                }
                other => return Err(DecodeError::UnknownColumnKind(other as char)),
            });
        }
        Ok(values)
    }
}

/// Parse one pgoutput message (the payload of an XLogData frame).
pub fn parse(buf: &[u8]) -> Result<PgOutput<'_>, DecodeError> {
    let tag = *buf.first().ok_or(DecodeError::Empty)?;
    let what = match tag {
        b'B' => "Begin",
        b'C' => "Commit",
        b'O' => "Origin",
        b'R' => "Relation",
        b'Y' => "Type",
        b'I' => "Insert",
        b'U' => "Update",
        b'D' => "Delete",
        b'T' => "Truncate",
        b'M' => "Message",
        b'S' => "Stream Start",
        b'E' => "Stream Stop",
        b'c' => "Stream Commit",
        b'A' => "Stream Abort",
        b'b' => "Begin Prepare",
        b'P' | b'p' => "Prepare",
        b'K' => "Commit Prepared",
        b'r' => "Rollback Prepared",
        other => return Err(DecodeError::UnknownTag(other as char)),
    };
    let mut r = Cursor { buf, pos: 1, what };
    let msg = match tag {
        b'B' => PgOutput::Begin {
            final_lsn: r.lsn()?,
            commit_ts: r.i64()?,
            xid: r.u32()?,
        },
        b'C' => PgOutput::Commit {
            flags: r.u8()?,
            commit_lsn: r.lsn()?,
            end_lsn: r.lsn()?,
            commit_ts: r.i64()?,
        },
        b'O' => PgOutput::Origin {
            commit_lsn: r.lsn()?,
            name: r.cstr()?,
        },
        b'R' => r.relation()?,
        b'Y' => PgOutput::Type {
            type_oid: r.u32()?,
            namespace: r.cstr()?,
            name: r.cstr()?,
        },
        b'I' => r.insert()?,
        b'U' => r.update()?,
        b'D' => r.delete()?,
        b'T' => r.truncate()?,
        b'M' => r.message()?,
        b'S' | b'E' | b'c' | b'A' => r.stream_control(tag)?,
        b'b' | b'P' | b'p' | b'K' | b'r' => r.two_phase(tag)?,
        _ => unreachable!("tag checked above"),
    };
    Ok(msg)
}

/// The bodies of the messages with more than a few fields.
impl<'a> Cursor<'a> {
    fn relation(&mut self) -> Result<PgOutput<'a>, DecodeError> {
        let relation_id = self.u32()?;
        let namespace = self.cstr()?;
        let name = self.cstr()?;
        let replica_identity = self.u8()?;
        let n = self.i16()?;
        let n = usize::try_from(n).map_err(|_| DecodeError::NegativeLength(n.into()))?;
        let mut columns = Vec::with_capacity(n.min(self.buf.len()));
        for _ in 0..n {
            columns.push(RelationColumn {
                flags: self.u8()?,
                name: self.cstr()?,
                type_oid: self.u32()?,
                type_modifier: self.i32()?,
            });
        }
        Ok(PgOutput::Relation {
            relation_id,
            namespace,
            name,
            replica_identity,
            columns,
        })
    }

    fn insert(&mut self) -> Result<PgOutput<'a>, DecodeError> {
        let relation_id = self.u32()?;
        match self.u8()? {
            b'N' => Ok(PgOutput::Insert {
                relation_id,
                new: self.tuple()?,
            }),
            m => Err(DecodeError::UnexpectedMarker(m as char, self.what)),
        }
    }

    fn update(&mut self) -> Result<PgOutput<'a>, DecodeError> {
        let relation_id = self.u32()?;
        let mut marker = self.u8()?;
        let old = match marker {
            b'K' | b'O' => {
                let values = self.tuple()?;
                let old = if marker == b'K' {
                    OldTuple::Key(values)
                } else {
                    OldTuple::Full(values)
                };
                marker = self.u8()?;
                Some(old)
            }
            _ => None,
        };
        if marker != b'N' {
            return Err(DecodeError::UnexpectedMarker(marker as char, self.what));
        }
        Ok(PgOutput::Update {
            relation_id,
            old,
            new: self.tuple()?,
        })
    }

    fn delete(&mut self) -> Result<PgOutput<'a>, DecodeError> {
        let relation_id = self.u32()?;
        let old = match self.u8()? {
            b'K' => OldTuple::Key(self.tuple()?),
            b'O' => OldTuple::Full(self.tuple()?),
            m => return Err(DecodeError::UnexpectedMarker(m as char, self.what)),
        };
        Ok(PgOutput::Delete { relation_id, old })
    }

    fn truncate(&mut self) -> Result<PgOutput<'a>, DecodeError> {
        let n = self.len()?;
        let options = self.u8()?;
        let mut relation_ids = Vec::with_capacity(n.min(self.buf.len() / 4));
        for _ in 0..n {
            relation_ids.push(self.u32()?);
        }
        Ok(PgOutput::Truncate {
            options,
            relation_ids,
        })
    }

    fn message(&mut self) -> Result<PgOutput<'a>, DecodeError> {
        let flags = self.u8()?;
        let lsn = self.lsn()?;
        let prefix = self.cstr()?;
        let len = self.len()?;
        Ok(PgOutput::Message {
            transactional: flags & 1 == 1,
            lsn,
            prefix,
            content: self.take(len)?,
        })
    }
}

pub mod streaming;
#[cfg(test)]
mod tests;
