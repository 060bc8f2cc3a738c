//! Commit and column timestamps as the MessagePack timestamp extension (type -1).
//!
//! `+infinity`/`-infinity` are `i64::MAX`/`i64::MIN` seconds with zero nanoseconds:
//! every standard MessagePack decoder reads them without a custom extension.

use serde::{Serialize, Serializer};

/// Seconds and nanoseconds since the Unix epoch, as the MessagePack timestamp
/// extension (type -1) carries them. `+infinity`/`-infinity` are `i64::MAX`/`i64::MIN`
/// seconds with zero nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timestamp {
    pub seconds: i64,
    pub nanos: u32,
}

impl Timestamp {
    pub const INFINITY: Timestamp = Timestamp {
        seconds: i64::MAX,
        nanos: 0,
    };
    pub const NEG_INFINITY: Timestamp = Timestamp {
        seconds: i64::MIN,
        nanos: 0,
    };
    /// Seconds between 1970-01-01 and PostgreSQL's epoch 2000-01-01.
    pub const PG_EPOCH_OFFSET: i64 = 946_684_800;

    /// The current time.
    pub fn now() -> Timestamp {
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Timestamp {
            seconds: d.as_secs() as i64,
            nanos: d.subsec_nanos(),
        }
    }

    /// Seconds since the Unix epoch, with the fraction (for ages and lags).
    pub fn as_secs_f64(&self) -> f64 {
        self.seconds as f64 + f64::from(self.nanos) / 1e9
    }

    /// How many seconds ago this was (never negative: a clock step is no lag).
    pub fn age_secs(&self) -> f64 {
        (Timestamp::now().as_secs_f64() - self.as_secs_f64()).max(0.0)
    }

    /// From microseconds since the Unix epoch.
    pub fn from_unix_micros(micros: i64) -> Timestamp {
        Timestamp {
            seconds: micros.div_euclid(1_000_000),
            nanos: (micros.rem_euclid(1_000_000) * 1000) as u32,
        }
    }

    /// Microseconds since the Unix epoch.
    pub fn unix_micros(&self) -> i64 {
        self.seconds
            .saturating_mul(1_000_000)
            .saturating_add(i64::from(self.nanos / 1000))
    }

    /// Microseconds since PostgreSQL's epoch 2000-01-01 (the protocol's clock).
    pub fn pg_micros(&self) -> i64 {
        self.unix_micros() - Self::PG_EPOCH_OFFSET * 1_000_000
    }

    /// From microseconds since 2000-01-01 UTC (the pgoutput Begin/Commit timestamp).
    pub fn from_pg_micros(micros: i64) -> Timestamp {
        match micros {
            i64::MAX => Timestamp::INFINITY,
            i64::MIN => Timestamp::NEG_INFINITY,
            _ => {
                let secs = micros.div_euclid(1_000_000);
                let frac = micros.rem_euclid(1_000_000);
                Timestamp {
                    seconds: secs + Self::PG_EPOCH_OFFSET,
                    nanos: (frac * 1000) as u32,
                }
            }
        }
    }

    /// The MessagePack timestamp extension body: 32-, 64- or 96-bit form, the
    /// smallest that holds the value (as the MessagePack spec asks).
    pub fn ext_bytes(&self) -> Vec<u8> {
        let (s, n) = (self.seconds, self.nanos);
        if s >> 34 == 0 {
            let data64 = (u64::from(n) << 34) | s as u64;
            if data64 & 0xffff_ffff_0000_0000 == 0 {
                (data64 as u32).to_be_bytes().to_vec()
            } else {
                data64.to_be_bytes().to_vec()
            }
        } else {
            let mut out = Vec::with_capacity(12);
            out.extend_from_slice(&n.to_be_bytes());
            out.extend_from_slice(&s.to_be_bytes());
            out
        }
    }

    /// Read a MessagePack timestamp extension body.
    pub fn from_ext_bytes(data: &[u8]) -> Option<Timestamp> {
        match data.len() {
            4 => Some(Timestamp {
                seconds: i64::from(u32::from_be_bytes(data.try_into().ok()?)),
                nanos: 0,
            }),
            8 => {
                let v = u64::from_be_bytes(data.try_into().ok()?);
                Some(Timestamp {
                    seconds: (v & 0x3_ffff_ffff) as i64,
                    nanos: (v >> 34) as u32,
                })
            }
            12 => Some(Timestamp {
                nanos: u32::from_be_bytes(data[..4].try_into().ok()?),
                seconds: i64::from_be_bytes(data[4..].try_into().ok()?),
            }),
            _ => None,
        }
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_newtype_struct(
            rmp_serde::MSGPACK_EXT_STRUCT_NAME,
            &(-1i8, serde_bytes::ByteBuf::from(self.ext_bytes())),
        )
    }
}

/// Year, month, day of a day count since 1970-01-01 (inverse of [`days_from_civil`]).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

impl Timestamp {
    /// RFC 3339 in UTC with microseconds (`infinity` / `-infinity` for the extremes).
    pub fn to_rfc3339(&self) -> String {
        if *self == Timestamp::INFINITY {
            return "infinity".into();
        }
        if *self == Timestamp::NEG_INFINITY {
            return "-infinity".into();
        }
        let days = self.seconds.div_euclid(86_400);
        let secs = self.seconds.rem_euclid(86_400);
        let (y, m, d) = civil_from_days(days);
        format!(
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:06}Z",
            secs / 3600,
            secs / 60 % 60,
            secs % 60,
            self.nanos / 1000
        )
    }
}

/// Days from 1970-01-01 to the proleptic Gregorian date (Howard Hinnant's algorithm).
pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_and_postgres_clocks_agree() {
        let t = Timestamp::from_unix_micros(1_700_000_000_123_456);
        assert_eq!((t.seconds, t.nanos), (1_700_000_000, 123_456_000));
        assert_eq!(t.unix_micros(), 1_700_000_000_123_456);
        assert_eq!(Timestamp::from_pg_micros(t.pg_micros()), t);
        assert_eq!(Timestamp::from_unix_micros(-1).nanos, 999_999_000);
        assert!((t.as_secs_f64() - 1_700_000_000.123_456).abs() < 1e-6);
        assert!(Timestamp::INFINITY.age_secs() == 0.0);
        assert!(t.age_secs() > 0.0);
    }

    #[test]
    fn formats_utc() {
        let t = Timestamp {
            seconds: 1_709_210_096,
            nanos: 789_012_000,
        };
        assert_eq!(t.to_rfc3339(), "2024-02-29T12:34:56.789012Z");
        assert_eq!(
            Timestamp {
                seconds: -1,
                nanos: 0
            }
            .to_rfc3339(),
            "1969-12-31T23:59:59.000000Z"
        );
        assert_eq!(Timestamp::INFINITY.to_rfc3339(), "infinity");
        for days in [-800_000i64, -1, 0, 59, 10_000, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m.into(), d.into()), days);
        }
    }
}
