//! Where a change sits in the WAL, as the `Walcast-Position` header carries it: how a
//! restart recognises a change that was already published.

use super::Lsn;

/// Header carrying a change's WAL position.
pub const POSITION_HEADER: &str = "Walcast-Position";

/// Where a change sits in the WAL: its transaction's commit LSN and its ordinal in
/// the transaction. Totally ordered in commit order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Position {
    pub commit_lsn: Lsn,
    pub ordinal: u32,
}

impl Position {
    /// The `Walcast-Position` header value: `<commit lsn as decimal>:<ordinal>`.
    pub fn to_header(&self) -> String {
        let (mut lsn, mut ordinal) = (itoa::Buffer::new(), itoa::Buffer::new());
        let (lsn, ordinal) = (lsn.format(self.commit_lsn.0), ordinal.format(self.ordinal));
        let mut out = String::with_capacity(lsn.len() + 1 + ordinal.len());
        out.push_str(lsn);
        out.push(':');
        out.push_str(ordinal);
        out
    }

    pub fn from_header(s: &str) -> Option<Position> {
        let (lsn, ord) = s.split_once(':')?;
        Some(Position {
            commit_lsn: Lsn(lsn.parse().ok()?),
            ordinal: ord.parse().ok()?,
        })
    }
}
