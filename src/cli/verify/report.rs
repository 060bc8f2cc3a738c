//! What `walcast verify` found in one table: counts, the keys behind them (the first
//! [`KEYS_KEPT`]), and how it is printed (a text block, or one JSON line).

use std::time::Duration;

use serde::Serialize;

use super::compare::{Marker, Verdict};

/// Keys kept per table (for the listing and a key repair); counts go on beyond.
pub(super) const KEYS_KEPT: usize = 10_000;
/// Keys of each kind the text output lists.
const KEYS_SHOWN: usize = 10;

/// The keys behind the counts, by kind.
#[derive(Debug, Default, Serialize)]
pub(super) struct KeyLists {
    pub differing: Vec<String>,
    pub missing: Vec<String>,
    pub gone: Vec<String>,
    pub markers: Vec<String>,
    pub changing: Vec<String>,
}

/// One table's result.
#[derive(Debug, Default, Serialize)]
pub(super) struct TableReport {
    pub table: String,
    /// Rows read from the table.
    pub rows: u64,
    pub equal: u64,
    pub differing: u64,
    /// Rows whose key has no envelope, or a delete, on the bus.
    pub missing: u64,
    /// Keys on the bus (last envelope not a delete) without a row.
    pub gone: u64,
    /// Keys whose last envelope carries `$walcast_unavailable` or `$walcast_too_large`.
    pub markers: u64,
    /// Keys with a newer envelope at every look (changing while verified).
    pub changing: u64,
    /// Keys that differed at the first look and were looked at again.
    pub rechecked: u64,
    pub seconds: f64,
    pub rows_per_s: f64,
    /// walcast's slot was streaming (else the stream was compared as it was).
    pub streaming: bool,
    pub keys: KeyLists,
    /// More keys than [`KEYS_KEPT`] were counted: the lists stop there.
    pub keys_truncated: bool,
    /// What `--repair` asked the running instance for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repair: Option<String>,
    /// Keys whose marker a re-snapshot replaces (`$walcast_unavailable`).
    #[serde(skip)]
    repairable_markers: Vec<String>,
    /// Keys in the lists.
    #[serde(skip)]
    kept: usize,
}

impl TableReport {
    pub fn new(table: &str) -> Self {
        TableReport {
            table: table.to_string(),
            streaming: true,
            ..Default::default()
        }
    }

    /// Count a key's verdict, keeping the key while there is room.
    pub fn add(&mut self, key: String, verdict: Verdict) {
        let (count, list) = match verdict {
            Verdict::Equal => {
                self.equal += 1;
                return;
            }
            Verdict::Absent => return,
            Verdict::Differing => (&mut self.differing, &mut self.keys.differing),
            Verdict::Missing => (&mut self.missing, &mut self.keys.missing),
            Verdict::Gone => (&mut self.gone, &mut self.keys.gone),
            Verdict::Changing => (&mut self.changing, &mut self.keys.changing),
            Verdict::Marker(m) => {
                if m == Marker::Unavailable && self.repairable_markers.len() < KEYS_KEPT {
                    self.repairable_markers.push(key.clone());
                }
                (&mut self.markers, &mut self.keys.markers)
            }
        };
        *count += 1;
        if self.kept < KEYS_KEPT {
            list.push(key);
            self.kept += 1;
        } else {
            self.keys_truncated = true;
        }
    }

    /// The table and the stream disagree on some key.
    pub fn differs(&self) -> bool {
        self.differing + self.missing + self.gone > 0
    }

    /// What a repair re-snapshots: the keys that differ and those with an unavailable
    /// marker; `None` when not all of them were kept (the table is re-snapshotted).
    pub fn repair_keys(&self) -> Option<Vec<String>> {
        if self.keys_truncated || self.repairable_markers.len() as u64 >= KEYS_KEPT as u64 {
            return None;
        }
        let k = &self.keys;
        let keys = k.differing.iter().chain(&k.missing).chain(&k.gone);
        Some(keys.chain(&self.repairable_markers).cloned().collect())
    }

    pub fn timed(&mut self, took: Duration) {
        self.seconds = (took.as_secs_f64() * 1000.0).round() / 1000.0;
        self.rows_per_s = (self.rows as f64 / took.as_secs_f64().max(0.001)).round();
    }

    /// One line of JSON.
    pub fn json(&self) -> String {
        serde_json::to_string(self).expect("a report serializes")
    }

    /// The text block: the counts, the first keys of each kind, the repair.
    pub fn text(&self) -> String {
        let mut out = format!(
            "{}: {} rows: {} equal, {} differing, {} missing on the bus, {} on the bus but gone from the table, {} markers",
            self.table, self.rows, self.equal, self.differing, self.missing, self.gone, self.markers
        );
        if self.changing > 0 {
            out.push_str(&format!(", {} changing while verified", self.changing));
        }
        out.push_str(&format!(
            " ({:.1} s, {:.0} rows/s)",
            self.seconds, self.rows_per_s
        ));
        if !self.streaming {
            out.push_str(" [walcast not streaming: compared with the stream as it is]");
        }
        let k = &self.keys;
        let kinds = [
            ("differing", &k.differing),
            ("missing", &k.missing),
            ("gone", &k.gone),
            ("marker", &k.markers),
            ("changing", &k.changing),
        ];
        for (kind, keys) in kinds {
            for key in keys.iter().take(KEYS_SHOWN) {
                out.push_str(&format!("\n  {kind:<10} {key}"));
            }
            if keys.len() > KEYS_SHOWN {
                out.push_str(&format!("\n  {kind:<10} … (--json lists them)"));
            }
        }
        if let Some(repair) = &self.repair {
            out.push_str(&format!("\n  repair     {repair}"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_keys_and_repair() {
        let mut r = TableReport::new("public.t");
        r.rows = 4;
        r.add("public.t:1".into(), Verdict::Equal);
        r.add("public.t:2".into(), Verdict::Differing);
        r.add("public.t:3".into(), Verdict::Missing);
        r.add("public.t:4".into(), Verdict::Marker(Marker::Unavailable));
        r.add("public.t:5".into(), Verdict::Marker(Marker::TooLarge));
        r.add("public.t:6".into(), Verdict::Gone);
        r.add("public.t:7".into(), Verdict::Absent);
        assert!(r.differs());
        assert_eq!(
            (r.equal, r.differing, r.missing, r.gone, r.markers),
            (1, 1, 1, 1, 2)
        );
        assert_eq!(
            r.repair_keys().unwrap(),
            vec!["public.t:2", "public.t:3", "public.t:6", "public.t:4"]
        );
        let json: serde_json::Value = serde_json::from_str(&r.json()).unwrap();
        assert_eq!(json["differing"], 1);
        assert_eq!(json["keys"]["gone"][0], "public.t:6");
        assert!(json.get("repair").is_none());
        assert!(
            r.text().contains("1 on the bus but gone from the table"),
            "{}",
            r.text()
        );
        let mut clean = TableReport::new("public.t");
        clean.add("public.t:1".into(), Verdict::Changing);
        assert!(!clean.differs());
    }

    #[test]
    fn too_many_keys_repair_the_table() {
        let mut r = TableReport::new("public.t");
        for i in 0..=KEYS_KEPT {
            r.add(format!("public.t:{i}"), Verdict::Missing);
        }
        assert_eq!(r.missing, KEYS_KEPT as u64 + 1);
        assert!(r.keys_truncated);
        assert!(r.repair_keys().is_none());
    }
}
