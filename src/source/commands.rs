//! Commands on the replication connection, over the simple query protocol: queries
//! with text rows, `IDENTIFY_SYSTEM`, `CREATE_REPLICATION_SLOT`, and
//! `START_REPLICATION`, after which the connection is a [`ReplicationStream`].

use bytes::Buf;
use postgres_protocol::message::frontend;

use super::conn::ReplicationConnection;
use super::error::{io_err, parse_error_fields, proto};
use super::frames::DEFAULT_READ_NAP;
use super::stream::ReplicationStream;
use super::SourceError;
use crate::wire::Lsn;

/// What `IDENTIFY_SYSTEM` reports.
#[derive(Debug, Clone)]
pub struct SystemInfo {
    pub system_id: String,
    pub timeline: u32,
    pub xlog_pos: Lsn,
    pub dbname: Option<String>,
}

impl ReplicationConnection {
    /// Run a simple query; rows come back as text columns.
    pub async fn simple_query(
        &mut self,
        sql: &str,
    ) -> Result<Vec<Vec<Option<String>>>, SourceError> {
        frontend::query(sql, &mut self.wbuf).map_err(io_err("encoding a query"))?;
        self.flush().await?;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            let (tag, body) = self.read_frame().await?;
            match tag {
                b'D' => rows.push(parse_data_row(&body)?),
                b'E' => error = Some(parse_error_fields(&body)),
                b'Z' => {
                    return match error {
                        Some(e) => Err(SourceError::from_pg(e)),
                        None => Ok(rows),
                    }
                }
                b'T' | b'C' | b'N' | b'I' | b'S' => {}
                other => {
                    return Err(proto(format!(
                        "unexpected message {:?} after a query",
                        other as char
                    )))
                }
            }
        }
    }

    pub async fn identify_system(&mut self) -> Result<SystemInfo, SourceError> {
        let rows = self.simple_query("IDENTIFY_SYSTEM").await?;
        let row = rows
            .first()
            .ok_or_else(|| proto("IDENTIFY_SYSTEM returned no row"))?;
        let col = |i: usize| row.get(i).cloned().flatten();
        Ok(SystemInfo {
            system_id: col(0).unwrap_or_default(),
            timeline: col(1).and_then(|t| t.parse().ok()).unwrap_or(0),
            xlog_pos: col(2)
                .and_then(|l| l.parse().ok())
                .ok_or_else(|| proto("IDENTIFY_SYSTEM: bad xlogpos"))?,
            dbname: col(3),
        })
    }

    /// `CREATE_REPLICATION_SLOT <slot> LOGICAL pgoutput`: a permanent slot, with
    /// `failover` one a standby synchronises (PostgreSQL 17+). Returns the consistent
    /// point.
    pub async fn create_slot(&mut self, slot: &str, failover: bool) -> Result<Lsn, SourceError> {
        let options = if failover {
            "(SNAPSHOT 'nothing', FAILOVER true)"
        } else {
            "NOEXPORT_SNAPSHOT"
        };
        let rows = self
            .simple_query(&format!(
                "CREATE_REPLICATION_SLOT {} LOGICAL pgoutput {options}",
                quote_ident(slot)
            ))
            .await?;
        rows.first()
            .and_then(|r| r.get(1).cloned().flatten())
            .and_then(|l| l.parse().ok())
            .ok_or_else(|| proto("CREATE_REPLICATION_SLOT: no consistent point"))
    }

    /// The server's `server_version_num`.
    pub async fn server_version_num(&mut self) -> Result<i32, SourceError> {
        let rows = self.simple_query("SHOW server_version_num").await?;
        rows.first()
            .and_then(|r| r.first().cloned().flatten())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| proto("SHOW server_version_num: no number"))
    }

    /// `START_REPLICATION ... LOGICAL`: from here on the connection is a stream. With
    /// `streaming`, the highest pgoutput protocol the server speaks and large
    /// transactions streamed while in progress.
    pub async fn start_replication(
        mut self,
        slot: &str,
        start: Lsn,
        publication: &str,
        streaming: bool,
    ) -> Result<ReplicationStream, SourceError> {
        let version = if streaming {
            self.server_version_num().await?
        } else {
            0
        };
        let sql = format!(
            "START_REPLICATION SLOT {} LOGICAL {} ({}, publication_names '{}', messages 'true')",
            quote_ident(slot),
            start,
            protocol_options(version, streaming),
            quote_ident(publication).replace('\'', "''")
        );
        frontend::query(&sql, &mut self.wbuf).map_err(io_err("encoding START_REPLICATION"))?;
        self.flush().await?;
        loop {
            let (tag, body) = self.read_frame().await?;
            match tag {
                // CopyBothResponse: postgres-protocol's Message::parse rejects this tag.
                b'W' => {
                    if self.read_nap.is_zero() {
                        self.read_nap = DEFAULT_READ_NAP;
                    }
                    return Ok(ReplicationStream::new(self));
                }
                b'E' => return Err(SourceError::from_pg(parse_error_fields(&body))),
                b'N' | b'S' => {}
                other => {
                    return Err(proto(format!(
                        "unexpected message {:?} after START_REPLICATION",
                        other as char
                    )))
                }
            }
        }
    }
}

/// pgoutput's protocol version and streaming option: protocol 1 without streaming;
/// with it the highest the server offers: 2 on 14, 3 on 15, 4 (streaming 'parallel',
/// whose Stream Abort says where) on 16 and later.
pub fn protocol_options(server_version_num: i32, streaming: bool) -> String {
    match (streaming, server_version_num / 10_000) {
        (false, _) => "proto_version '1'".into(),
        (true, ..=14) => "proto_version '2', streaming 'on'".into(),
        (true, 15) => "proto_version '3', streaming 'on'".into(),
        (true, _) => "proto_version '4', streaming 'parallel'".into(),
    }
}

/// A `DataRow`'s columns as text (`None` for NULL).
fn parse_data_row(body: &[u8]) -> Result<Vec<Option<String>>, SourceError> {
    let mut b = body;
    if b.len() < 2 {
        return Err(proto("short DataRow"));
    }
    let n = b.get_i16();
    let mut out = Vec::with_capacity(n.max(0) as usize);
    for _ in 0..n {
        if b.len() < 4 {
            return Err(proto("short DataRow"));
        }
        let len = b.get_i32();
        if len < 0 {
            out.push(None);
        } else {
            let len = len as usize;
            if b.len() < len {
                return Err(proto("short DataRow"));
            }
            out.push(Some(String::from_utf8_lossy(&b[..len]).into_owned()));
            b.advance(len);
        }
    }
    Ok(out)
}

/// Double-quote an identifier for a replication command.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_protocol_is_the_highest_the_server_offers_when_streaming() {
        assert_eq!(protocol_options(180_004, false), "proto_version '1'");
        assert_eq!(
            protocol_options(140_023, true),
            "proto_version '2', streaming 'on'"
        );
        assert_eq!(
            protocol_options(150_014, true),
            "proto_version '3', streaming 'on'"
        );
        for v in [160_014, 170_010, 180_004] {
            assert_eq!(
                protocol_options(v, true),
                "proto_version '4', streaming 'parallel'"
            );
        }
    }

    #[test]
    fn data_rows_parse_with_nulls_and_reject_truncation() {
        let body = b"\x00\x02\x00\x00\x00\x02ab\xff\xff\xff\xff";
        assert_eq!(
            parse_data_row(body).unwrap(),
            vec![Some("ab".to_string()), None]
        );
        assert!(parse_data_row(&body[..7]).is_err());
    }
}
