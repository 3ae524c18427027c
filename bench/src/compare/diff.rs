//! Record by record: what Debezium wrote beside what relay-cdc wrote for the same row,
//! field by field (topic without its system's prefix, partition, key bytes, value bytes,
//! header names in order, each header's bytes), whether a difference is one relay-cdc
//! documents, and the markdown that reports it. Pure: no Kafka here.

use std::collections::BTreeMap;

use super::rows::{Allowed, Class, Known, Row, Setting};
use crate::table::Table;

/// A record as read from Kafka, bytes untouched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rec {
    pub topic: String,
    pub partition: i32,
    pub key: Option<Vec<u8>>,
    /// `None`: a tombstone.
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

impl Rec {
    /// The first header named `name`, as text.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| v.as_deref())
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }
}

/// One field that differs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldDiff {
    pub field: String,
    pub debezium: String,
    pub relay: String,
}

/// How one row came out of both systems.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Same,
    Differs(Vec<FieldDiff>),
    /// Debezium's task stopped on the row and relay-cdc dead-lettered it (poison): the
    /// same refusal, no difference.
    BothRefused {
        trace: String,
    },
    /// relay-cdc dead-lettered the row (poison); Debezium wrote this.
    RelayRefused {
        debezium: Rec,
    },
    /// Debezium's task stopped on the row; relay-cdc wrote a record.
    DebeziumFailed {
        trace: String,
    },
    MissingDebezium,
    MissingRelay,
}

impl Outcome {
    pub fn is_same(&self) -> bool {
        matches!(self, Self::Same | Self::BothRefused { .. })
    }

    /// Whether `known` covers this outcome: a refusal it names, or value bytes alone.
    pub fn explained_by(&self, known: Option<Known>) -> bool {
        match (self, known.map(|k| k.allows)) {
            (Self::Same | Self::BothRefused { .. }, _) => true,
            (Self::RelayRefused { .. }, Some(Allowed::RelayRefuses)) => true,
            (Self::Differs(d), Some(Allowed::ValueDiffers)) => d.iter().all(|f| f.field == "value"),
            _ => false,
        }
    }
}

/// Compares two records of one row; topics without their prefixes.
pub fn compare(dbz: &Rec, dbz_prefix: &str, rly: &Rec, rly_prefix: &str) -> Outcome {
    let mut out = Vec::new();
    let topic = |r: &Rec, p: &str| r.topic.strip_prefix(p).unwrap_or(&r.topic).to_string();
    let (dt, rt) = (topic(dbz, dbz_prefix), topic(rly, rly_prefix));
    if dt != rt {
        out.push(FieldDiff {
            field: "topic".into(),
            debezium: format!("{dbz_prefix}{dt}"),
            relay: format!("{rly_prefix}{rt}"),
        });
    }
    if dbz.partition != rly.partition {
        out.push(FieldDiff {
            field: "partition".into(),
            debezium: dbz.partition.to_string(),
            relay: rly.partition.to_string(),
        });
    }
    if let Some(d) = bytes_diff("key", dbz.key.as_deref(), rly.key.as_deref()) {
        out.push(d);
    }
    if let Some(d) = bytes_diff("value", dbz.value.as_deref(), rly.value.as_deref()) {
        out.push(d);
    }
    let names = |r: &Rec| r.headers.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>();
    if names(dbz) != names(rly) {
        out.push(FieldDiff {
            field: "header names".into(),
            debezium: names(dbz).join(", "),
            relay: names(rly).join(", "),
        });
    } else {
        for ((name, d), (_, r)) in dbz.headers.iter().zip(&rly.headers) {
            if let Some(diff) = bytes_diff(&format!("header {name}"), d.as_deref(), r.as_deref()) {
                out.push(diff);
            }
        }
    }
    if out.is_empty() {
        Outcome::Same
    } else {
        Outcome::Differs(out)
    }
}

/// Shown context either side of the first differing byte.
const CONTEXT: usize = 48;

fn bytes_diff(field: &str, d: Option<&[u8]>, r: Option<&[u8]>) -> Option<FieldDiff> {
    if d == r {
        return None;
    }
    let (debezium, relay) = match (d, r) {
        (Some(d), Some(r)) => {
            let at = d.iter().zip(r).take_while(|(a, b)| a == b).count();
            let start = at.saturating_sub(CONTEXT);
            let show = |b: &[u8]| {
                let end = (at + CONTEXT).min(b.len());
                format!(
                    "{}{}{} ({} bytes, first difference at byte {at})",
                    if start > 0 { "…" } else { "" },
                    show_bytes(&b[start.min(b.len())..end]),
                    if end < b.len() { "…" } else { "" },
                    b.len()
                )
            };
            (show(d), show(r))
        }
        (d, r) => (
            d.map_or("null".into(), |b| {
                show_bytes(&b[..b.len().min(2 * CONTEXT)])
            }),
            r.map_or("null".into(), |b| {
                show_bytes(&b[..b.len().min(2 * CONTEXT)])
            }),
        ),
    };
    Some(FieldDiff {
        field: field.to_string(),
        debezium,
        relay,
    })
}

/// Bytes as a quoted string: UTF-8 with Rust's escapes, other bytes as `\xNN`.
pub fn show_bytes(b: &[u8]) -> String {
    let mut out = String::from("`");
    for chunk in b.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '`' => out.push_str("\\`"),
                c if c.is_control() => out.extend(c.escape_default()),
                c => out.push(c),
            }
        }
        for x in chunk.invalid() {
            out.push_str(&format!("\\x{x:02x}"));
        }
    }
    out.push('`');
    out
}

/// The outcome of one row under one setting.
#[derive(Debug, Clone)]
pub struct Compared {
    pub setting: Setting,
    pub row: Row,
    pub outcome: Outcome,
}

impl Compared {
    pub fn explained(&self) -> bool {
        self.outcome.explained_by(self.row.known_for(self.setting))
    }
}

/// Differences nobody documented: the run fails on any.
pub fn unexplained(results: &[Compared]) -> usize {
    results.iter().filter(|c| !c.explained()).count()
}

/// The result table (row class × setting → records compared / differences) and the
/// details of every difference.
pub fn render(results: &[Compared]) -> String {
    let mut cells: BTreeMap<(Class, usize), (usize, usize, usize)> = BTreeMap::new();
    for c in results {
        let s = Setting::ALL
            .iter()
            .position(|s| *s == c.setting)
            .unwrap_or(0);
        let cell = cells.entry((c.row.class, s)).or_default();
        cell.0 += 1;
        if !c.outcome.is_same() {
            cell.1 += 1;
            if c.explained() {
                cell.2 += 1;
            }
        }
    }
    let mut headers = vec!["row class".to_string()];
    headers.extend(Setting::ALL.iter().map(|s| s.label().to_string()));
    let header_refs: Vec<&str> = headers.iter().map(String::as_str).collect();
    let mut t = Table::new(&header_refs);
    for class in Class::ALL {
        let mut row = vec![class.label().to_string()];
        for s in 0..Setting::ALL.len() {
            row.push(match cells.get(&(class, s)) {
                None => "–".into(),
                Some((n, 0, _)) => format!("{n} / 0"),
                Some((n, d, e)) if d == e => format!("{n} / {d} (documented)"),
                Some((n, d, e)) => format!("{n} / {d} (**{} unexplained**)", d - e),
            });
        }
        t.row(row);
    }
    let mut out = String::from(
        "Records compared / differences (topic without its system's prefix, partition, key, value, header names and bytes):\n\n",
    );
    out.push_str(&t.render());
    let refused: Vec<String> = results
        .iter()
        .filter_map(|c| match &c.outcome {
            Outcome::BothRefused { trace } => Some(format!(
                "- {} / {}: Debezium's task stopped (`{trace}`); relay-cdc refused the row (poison)\n",
                c.setting.label(),
                c.row.label
            )),
            _ => None,
        })
        .collect();
    if !refused.is_empty() {
        out.push_str("\nRefused by both (counted as no difference):\n\n");
        out.extend(refused);
    }
    let differing: Vec<&Compared> = results.iter().filter(|c| !c.outcome.is_same()).collect();
    if differing.is_empty() {
        out.push_str("\nNo differences.\n");
        return out;
    }
    out.push_str("\nDifferences:\n\n");
    for c in differing {
        let verdict = match (c.explained(), c.row.known_for(c.setting)) {
            (true, Some(k)) => format!("documented: {}", k.what),
            _ => "**unexplained**".to_string(),
        };
        out.push_str(&format!(
            "- {} / {} / {}: {verdict}\n",
            c.row.class.label(),
            c.setting.label(),
            c.row.label
        ));
        match &c.outcome {
            Outcome::Same | Outcome::BothRefused { .. } => {}
            Outcome::DebeziumFailed { trace } => out.push_str(&format!(
                "  - Debezium's task stopped ({trace}); relay-cdc wrote a record\n"
            )),
            Outcome::Differs(fields) => {
                for f in fields {
                    out.push_str(&format!(
                        "  - {}: Debezium {} — relay-cdc {}\n",
                        f.field, f.debezium, f.relay
                    ));
                }
            }
            Outcome::RelayRefused { debezium } => out.push_str(&format!(
                "  - relay-cdc refused the row (dead-lettered); Debezium's value: {}\n",
                debezium
                    .value
                    .as_deref()
                    .map_or("null".into(), |v| show_bytes(
                        &v[..v.len().min(2 * CONTEXT)]
                    ))
            )),
            Outcome::MissingDebezium => out.push_str("  - Debezium wrote no record\n"),
            Outcome::MissingRelay => {
                out.push_str("  - relay-cdc wrote no record (and dead-lettered none)\n")
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::rows::{BYTES_THROUGH_STRING, MERGE_ORDER};
    use super::*;

    fn rec(topic: &str, value: &[u8]) -> Rec {
        Rec {
            topic: topic.into(),
            partition: 1,
            key: Some(b"k".to_vec()),
            value: Some(value.to_vec()),
            headers: vec![("id".into(), Some(b"1".to_vec()))],
        }
    }

    #[test]
    fn records_equal_but_for_their_prefix_are_the_same() {
        assert_eq!(
            compare(&rec("d.x", b"v"), "d.", &rec("r.x", b"v"), "r."),
            Outcome::Same
        );
    }

    #[test]
    fn each_field_that_differs_is_named_with_both_sides() {
        let mut r = rec("r.y", b"w");
        r.partition = 2;
        r.headers = vec![("id".into(), None)];
        let Outcome::Differs(d) = compare(&rec("d.x", b"v"), "d.", &r, "r.") else {
            panic!()
        };
        let fields: Vec<&str> = d.iter().map(|f| f.field.as_str()).collect();
        assert_eq!(fields, ["topic", "partition", "value", "header id"]);
        assert_eq!(d[2].debezium, "`v` (1 bytes, first difference at byte 0)");
        assert_eq!(d[3].relay, "null");
    }

    #[test]
    fn header_names_in_another_order_differ() {
        let mut r = rec("r.x", b"v");
        r.headers.insert(0, ("tenant".into(), None));
        let mut d = rec("d.x", b"v");
        d.headers.push(("tenant".into(), None));
        let Outcome::Differs(diffs) = compare(&d, "d.", &r, "r.") else {
            panic!()
        };
        assert_eq!(diffs[0].field, "header names");
    }

    #[test]
    fn only_what_a_known_difference_allows_is_explained() {
        let value = Outcome::Differs(vec![FieldDiff {
            field: "value".into(),
            debezium: String::new(),
            relay: String::new(),
        }]);
        assert!(value.explained_by(Some(MERGE_ORDER)));
        assert!(!value.explained_by(Some(BYTES_THROUGH_STRING)));
        assert!(!value.explained_by(None));
        let refused = Outcome::RelayRefused {
            debezium: rec("d.x", b"v"),
        };
        assert!(refused.explained_by(Some(BYTES_THROUGH_STRING)));
        assert!(!refused.explained_by(Some(MERGE_ORDER)));
        assert!(!Outcome::MissingRelay.explained_by(Some(BYTES_THROUGH_STRING)));
    }

    #[test]
    fn bytes_show_as_text_with_escapes() {
        assert_eq!(show_bytes(b"a\"\n\xff\x00\xc3\xa9"), "`a\"\\n\\xff\\u{0}é`");
    }
}
