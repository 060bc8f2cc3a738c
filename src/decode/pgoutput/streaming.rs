//! The pgoutput messages of protocol 2 and later: stream blocks of a transaction still
//! in progress (Stream Start/Stop/Commit/Abort), with the xid that prefixes each change
//! inside a block, and (protocol 3+, `two_phase`) the two-phase commit messages.

use super::{Cursor, DecodeError, PgOutput};

/// The tags of the messages that carry the (sub)transaction's xid after the tag when
/// they come inside a stream block.
const XID_PREFIXED: &[u8] = b"RYIUDTM";

/// A message inside a stream block without its xid: `(xid, tag + body)`, the second
/// parseable by [`super::parse`]. `None` for a message that carries no xid there.
pub fn split_stream_xid(buf: &[u8]) -> Result<Option<(u32, Vec<u8>)>, DecodeError> {
    let tag = *buf.first().ok_or(DecodeError::Empty)?;
    if !XID_PREFIXED.contains(&tag) {
        return Ok(None);
    }
    let mut r = Cursor {
        buf,
        pos: 1,
        what: "streamed change",
    };
    let xid = r.u32()?;
    let mut out = Vec::with_capacity(buf.len() - 4);
    out.push(tag);
    out.extend_from_slice(&buf[5..]);
    Ok(Some((xid, out)))
}

impl<'a> Cursor<'a> {
    pub(super) fn stream_control(&mut self, tag: u8) -> Result<PgOutput<'a>, DecodeError> {
        Ok(match tag {
            b'S' => PgOutput::StreamStart {
                xid: self.u32()?,
                first_segment: self.u8()? == 1,
            },
            b'E' => PgOutput::StreamStop,
            b'c' => {
                let xid = self.u32()?;
                let _flags = self.u8()?;
                PgOutput::StreamCommit {
                    xid,
                    commit_lsn: self.lsn()?,
                    end_lsn: self.lsn()?,
                    commit_ts: self.i64()?,
                }
            }
            _ => {
                let xid = self.u32()?;
                let subxid = self.u32()?;
                // Protocol 4 with streaming 'parallel': the abort's LSN and time follow.
                let abort_lsn = if self.buf.len() >= self.pos + 16 {
                    let lsn = self.lsn()?;
                    let _abort_ts = self.i64()?;
                    Some(lsn)
                } else {
                    None
                };
                PgOutput::StreamAbort {
                    xid,
                    subxid,
                    abort_lsn,
                }
            }
        })
    }

    pub(super) fn two_phase(&mut self, tag: u8) -> Result<PgOutput<'a>, DecodeError> {
        if tag == b'b' {
            return Ok(PgOutput::BeginPrepare {
                prepare_lsn: self.lsn()?,
                end_lsn: self.lsn()?,
                prepare_ts: self.i64()?,
                xid: self.u32()?,
                gid: self.cstr()?,
            });
        }
        let _flags = self.u8()?;
        Ok(match tag {
            b'P' | b'p' => {
                let prepare_lsn = self.lsn()?;
                let end_lsn = self.lsn()?;
                let _prepare_ts = self.i64()?;
                PgOutput::Prepare {
                    streamed: tag == b'p',
                    prepare_lsn,
                    end_lsn,
                    xid: self.u32()?,
                    gid: self.cstr()?,
                }
            }
            b'K' => PgOutput::CommitPrepared {
                commit_lsn: self.lsn()?,
                end_lsn: self.lsn()?,
                commit_ts: self.i64()?,
                xid: self.u32()?,
                gid: self.cstr()?,
            },
            _ => {
                let prepare_end_lsn = self.lsn()?;
                let rollback_end_lsn = self.lsn()?;
                let _prepare_ts = self.i64()?;
                let _rollback_ts = self.i64()?;
                PgOutput::RollbackPrepared {
                    prepare_end_lsn,
                    rollback_end_lsn,
                    xid: self.u32()?,
                    gid: self.cstr()?,
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::parse;
    use super::*;
    use crate::wire::Lsn;

    #[test]
    fn stream_control_messages_parse_and_truncation_is_an_error() {
        assert_eq!(
            parse(b"S\x00\x00\x01\x00\x01").unwrap(),
            PgOutput::StreamStart {
                xid: 256,
                first_segment: true
            }
        );
        assert_eq!(parse(b"E").unwrap(), PgOutput::StreamStop);
        let mut commit = b"c\x00\x00\x00\x07\x00".to_vec();
        for v in [10u64, 20, 30] {
            commit.extend_from_slice(&v.to_be_bytes());
        }
        assert_eq!(
            parse(&commit).unwrap(),
            PgOutput::StreamCommit {
                xid: 7,
                commit_lsn: Lsn(10),
                end_lsn: Lsn(20),
                commit_ts: 30
            }
        );
        assert!(parse(&commit[..commit.len() - 1]).is_err());
        let abort = b"A\x00\x00\x00\x07\x00\x00\x00\x09";
        assert_eq!(
            parse(abort).unwrap(),
            PgOutput::StreamAbort {
                xid: 7,
                subxid: 9,
                abort_lsn: None
            }
        );
        let mut abort4 = abort.to_vec();
        abort4.extend_from_slice(&40u64.to_be_bytes());
        abort4.extend_from_slice(&50u64.to_be_bytes());
        assert!(matches!(
            parse(&abort4).unwrap(),
            PgOutput::StreamAbort {
                abort_lsn: Some(Lsn(40)),
                ..
            }
        ));
    }

    #[test]
    fn a_streamed_change_loses_its_xid_and_parses() {
        let msg = b"I\x00\x00\x00\x05\x00\x00\x40\x00N\x00\x01t\x00\x00\x00\x01x";
        let (xid, plain) = split_stream_xid(msg).unwrap().unwrap();
        assert_eq!(xid, 5);
        assert!(matches!(
            parse(&plain).unwrap(),
            PgOutput::Insert {
                relation_id: 0x4000,
                ..
            }
        ));
        assert_eq!(split_stream_xid(b"E").unwrap(), None);
        assert!(split_stream_xid(b"I\x00\x00").is_err());
    }

    #[test]
    fn two_phase_messages_parse() {
        let mut m = b"K\x00".to_vec();
        for v in [1u64, 2, 3] {
            m.extend_from_slice(&v.to_be_bytes());
        }
        m.extend_from_slice(b"\x00\x00\x00\x09gid-1\x00");
        assert_eq!(
            parse(&m).unwrap(),
            PgOutput::CommitPrepared {
                commit_lsn: Lsn(1),
                end_lsn: Lsn(2),
                commit_ts: 3,
                xid: 9,
                gid: "gid-1"
            }
        );
        assert!(parse(&m[..m.len() - 3]).is_err());
    }
}
