//! The verdict: every committed outbox row against every record Kafka holds.
//!
//! Pure functions over two lists, so the rules are unit-tested on fixtures:
//! - **lost**: a committed row whose event id never reached Kafka;
//! - **duplicates**: records beyond the first for one event id;
//! - **invented**: a record with no committed row behind it (no `event_id` header, an
//!   id no database committed, or a record whose topic, key or source disagree with
//!   the row it names);
//! - **order violations per aggregate**: within each partition, by offset, after
//!   de-duplication by event id (first copy wins), an aggregate's events must follow
//!   commit order; a `TransactionCreated` must precede that transaction's
//!   `TransactionCompleted`/`TransactionFailed` (a rule that does not trust the relay's
//!   own headers); and one aggregate must stay on one partition;
//! - **order violations per source**: within each partition, after de-duplication, the
//!   `commit_lsn` header never goes backwards, every record carries one, and every copy
//!   of one event carries the same one.

use std::collections::{HashMap, HashSet};

/// An outbox row as committed in a source database.
#[derive(Debug, Clone)]
pub struct Committed {
    pub id: String,
    /// The relay's name for the database (the `source` header).
    pub source: String,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub event_type: String,
}

/// A record read back from Kafka.
#[derive(Debug, Clone, Default)]
pub struct Delivered {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    pub event_id: Option<String>,
    pub event_type: Option<String>,
    pub source: Option<String>,
    pub commit_lsn: Option<String>,
}

/// The counts of one scenario, with a few examples of each problem.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    pub committed: usize,
    pub delivered: usize,
    pub lost: usize,
    pub duplicates: usize,
    pub invented: usize,
    pub order_aggregate: usize,
    pub order_source: usize,
    /// Human-readable examples (at most a few per kind) for the report.
    pub examples: Vec<String>,
}

impl Tally {
    pub fn order_violations(&self) -> usize {
        self.order_aggregate + self.order_source
    }

    fn example(&mut self, text: String) {
        if self.examples.len() < 12 {
            self.examples.push(text);
        }
    }
}

/// Parses an LSN written as `X/Y` (hex).
pub fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

const CREATED: &str = "TransactionCreated";
const SETTLED: [&str; 2] = ["TransactionCompleted", "TransactionFailed"];

/// Compares `committed` rows with `records`; `topic_for` maps an aggregate type to the
/// topic its events must land on.
pub fn tally(
    committed: &[Committed],
    records: &[Delivered],
    topic_for: impl Fn(&str) -> String,
) -> Tally {
    let mut t = Tally {
        committed: committed.len(),
        ..Tally::default()
    };
    let rows: HashMap<&str, &Committed> = committed.iter().map(|c| (c.id.as_str(), c)).collect();

    let mut sorted: Vec<&Delivered> = records.iter().collect();
    sorted
        .sort_by(|a, b| (&a.topic, a.partition, a.offset).cmp(&(&b.topic, b.partition, b.offset)));

    // Authenticity and de-duplication, in partition order.
    let mut first_lsn: HashMap<&str, Option<&str>> = HashMap::new();
    let mut unique: Vec<&Delivered> = Vec::new();
    for r in &sorted {
        let Some(id) = r.event_id.as_deref() else {
            t.invented += 1;
            t.example(format!(
                "invented: {}/{}@{} has no event_id header",
                r.topic, r.partition, r.offset
            ));
            continue;
        };
        let Some(row) = rows.get(id) else {
            t.invented += 1;
            t.example(format!(
                "invented: {}/{}@{} carries event {id}, which no database committed",
                r.topic, r.partition, r.offset
            ));
            continue;
        };
        let want_topic = topic_for(&row.aggregate_type);
        if r.topic != want_topic
            || r.key.as_deref() != Some(row.aggregate_id.as_str())
            || r.source.as_deref() != Some(row.source.as_str())
        {
            t.invented += 1;
            t.example(format!(
                "invented: {}/{}@{} names event {id} but its topic, key or source differ from the row",
                r.topic, r.partition, r.offset
            ));
            continue;
        }
        match first_lsn.get(id) {
            Some(lsn) => {
                t.duplicates += 1;
                if *lsn != r.commit_lsn.as_deref() {
                    t.order_source += 1;
                    t.example(format!(
                        "source order: event {id} was sent with commit_lsn {:?} and later {:?}",
                        lsn, r.commit_lsn
                    ));
                }
            }
            None => {
                first_lsn.insert(id, r.commit_lsn.as_deref());
                unique.push(r);
            }
        }
    }
    t.delivered = first_lsn.len();
    for c in committed {
        if !first_lsn.contains_key(c.id.as_str()) {
            t.lost += 1;
            t.example(format!(
                "lost: {} {} of {} {} ({})",
                c.event_type, c.id, c.aggregate_type, c.aggregate_id, c.source
            ));
        }
    }

    // Order, per partition over the de-duplicated records.
    let mut partition_of_key: HashMap<(&str, &str), i32> = HashMap::new();
    let mut last_in_partition: HashMap<(&str, i32), u64> = HashMap::new();
    let mut last_of_key: HashMap<(&str, &str), u64> = HashMap::new();
    let mut settled_keys: HashSet<(&str, &str)> = HashSet::new();
    for r in unique {
        let key = (r.topic.as_str(), r.key.as_deref().unwrap_or(""));
        let here = (r.topic.as_str(), r.partition);
        let at = format!("{}/{}@{}", r.topic, r.partition, r.offset);
        match partition_of_key.get(&key) {
            Some(p) if *p != r.partition => {
                t.order_aggregate += 1;
                t.example(format!(
                    "aggregate order: key {} is on partitions {p} and {} ({at})",
                    key.1, r.partition
                ));
            }
            Some(_) => {}
            None => {
                partition_of_key.insert(key, r.partition);
            }
        }
        let Some(lsn) = r.commit_lsn.as_deref().and_then(parse_lsn) else {
            t.order_source += 1;
            t.example(format!("source order: {at} has no readable commit_lsn"));
            continue;
        };
        if let Some(prev) = last_in_partition.insert(here, lsn) {
            if lsn < prev {
                t.order_source += 1;
                t.example(format!(
                    "source order: {at} commit_lsn {:?} after a later commit",
                    r.commit_lsn
                ));
            }
        }
        if let Some(prev) = last_of_key.insert(key, lsn) {
            if lsn < prev {
                t.order_aggregate += 1;
                t.example(format!(
                    "aggregate order: key {} goes back in commit order at {at}",
                    key.1
                ));
            }
        }
        match r.event_type.as_deref() {
            Some(e) if SETTLED.contains(&e) => {
                settled_keys.insert(key);
            }
            Some(CREATED) if settled_keys.contains(&key) => {
                t.order_aggregate += 1;
                t.example(format!(
                    "aggregate order: transaction {} settled before it was created ({at})",
                    key.1
                ));
            }
            _ => {}
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, agg: &str, event_type: &str) -> Committed {
        Committed {
            id: id.into(),
            source: "transaction_db".into(),
            aggregate_type: "transaction".into(),
            aggregate_id: agg.into(),
            event_type: event_type.into(),
        }
    }

    fn rec(
        offset: i64,
        partition: i32,
        id: &str,
        agg: &str,
        event_type: &str,
        lsn: &str,
    ) -> Delivered {
        Delivered {
            topic: "t.transaction".into(),
            partition,
            offset,
            key: Some(agg.into()),
            event_id: Some(id.into()),
            event_type: Some(event_type.into()),
            source: Some("transaction_db".into()),
            commit_lsn: Some(lsn.into()),
        }
    }

    fn topic(a: &str) -> String {
        format!("t.{a}")
    }

    #[test]
    fn lsns_parse_from_their_text_form() {
        assert_eq!(parse_lsn("0/16B3748"), Some(0x16B3748));
        assert_eq!(parse_lsn("1/0"), Some(1 << 32));
        assert_eq!(parse_lsn("nope"), None);
    }

    #[test]
    fn a_clean_run_counts_everything_delivered_and_nothing_else() {
        let rows = [
            row("e1", "a", CREATED),
            row("e2", "a", "TransactionCompleted"),
        ];
        let recs = [
            rec(0, 0, "e1", "a", CREATED, "0/10"),
            rec(1, 0, "e2", "a", "TransactionCompleted", "0/20"),
        ];
        let t = tally(&rows, &recs, topic);
        assert_eq!(
            (t.committed, t.delivered, t.lost, t.duplicates, t.invented),
            (2, 2, 0, 0, 0)
        );
        assert_eq!(t.order_violations(), 0, "{:?}", t.examples);
    }

    #[test]
    fn a_committed_row_missing_from_kafka_is_lost() {
        let rows = [row("e1", "a", CREATED), row("e2", "b", CREATED)];
        let recs = [rec(0, 0, "e1", "a", CREATED, "0/10")];
        let t = tally(&rows, &recs, topic);
        assert_eq!((t.delivered, t.lost), (1, 1));
        assert!(t.examples[0].contains("e2"));
    }

    #[test]
    fn a_replayed_window_counts_as_duplicates_without_disorder() {
        let rows = [
            row("e1", "a", CREATED),
            row("e2", "b", CREATED),
            row("e3", "a", "TransactionFailed"),
        ];
        let recs = [
            rec(0, 0, "e1", "a", CREATED, "0/10"),
            rec(1, 0, "e2", "b", CREATED, "0/20"),
            rec(2, 0, "e1", "a", CREATED, "0/10"),
            rec(3, 0, "e2", "b", CREATED, "0/20"),
            rec(4, 0, "e3", "a", "TransactionFailed", "0/30"),
        ];
        let t = tally(&rows, &recs, topic);
        assert_eq!(
            (t.delivered, t.lost, t.duplicates, t.invented),
            (3, 0, 2, 0)
        );
        assert_eq!(t.order_violations(), 0, "{:?}", t.examples);
    }

    #[test]
    fn a_record_no_database_committed_is_invented() {
        let rows = [row("e1", "a", CREATED)];
        let mut wrong_key = rec(2, 0, "e1", "zzz", CREATED, "0/10");
        wrong_key.offset = 2;
        let recs = [
            rec(0, 0, "e1", "a", CREATED, "0/10"),
            rec(1, 0, "rolled-back", "a", CREATED, "0/20"),
            Delivered {
                event_id: None,
                ..rec(3, 0, "x", "a", CREATED, "0/30")
            },
            wrong_key,
        ];
        let t = tally(&rows, &recs, topic);
        assert_eq!((t.delivered, t.invented, t.duplicates), (1, 3, 0));
    }

    #[test]
    fn going_back_in_commit_order_is_a_violation_per_source_and_per_aggregate() {
        let rows = [
            row("e1", "a", CREATED),
            row("e2", "a", "TransactionCompleted"),
        ];
        let recs = [
            rec(0, 0, "e2", "a", "TransactionCompleted", "0/20"),
            rec(1, 0, "e1", "a", CREATED, "0/10"),
        ];
        let t = tally(&rows, &recs, topic);
        assert_eq!(t.order_source, 1);
        // Back in LSN, and settled before created.
        assert_eq!(t.order_aggregate, 2, "{:?}", t.examples);
    }

    #[test]
    fn settled_before_created_is_caught_even_when_the_lsn_headers_agree() {
        let rows = [
            row("e1", "a", CREATED),
            row("e2", "a", "TransactionCompleted"),
        ];
        let recs = [
            rec(0, 0, "e2", "a", "TransactionCompleted", "0/10"),
            rec(1, 0, "e1", "a", CREATED, "0/10"),
        ];
        let t = tally(&rows, &recs, topic);
        assert_eq!((t.order_aggregate, t.order_source), (1, 0));
    }

    #[test]
    fn one_aggregate_on_two_partitions_is_a_violation() {
        let rows = [
            row("e1", "a", CREATED),
            row("e2", "a", "TransactionCompleted"),
        ];
        let recs = [
            rec(0, 0, "e1", "a", CREATED, "0/10"),
            rec(0, 1, "e2", "a", "TransactionCompleted", "0/20"),
        ];
        let t = tally(&rows, &recs, topic);
        assert_eq!(t.order_aggregate, 1);
    }

    #[test]
    fn a_duplicate_with_another_commit_lsn_or_none_is_a_source_violation() {
        let rows = [row("e1", "a", CREATED)];
        let mut no_lsn = rec(2, 1, "e1", "a", CREATED, "");
        no_lsn.commit_lsn = None;
        let recs = [
            rec(0, 0, "e1", "a", CREATED, "0/10"),
            rec(1, 0, "e1", "a", CREATED, "0/99"),
        ];
        let t = tally(&rows, &recs, topic);
        assert_eq!((t.duplicates, t.order_source), (1, 1));
        let t = tally(&rows, &[no_lsn], topic);
        assert_eq!(t.order_source, 1);
    }

    #[test]
    fn interleaved_keys_in_one_partition_only_need_the_partition_in_commit_order() {
        let rows = [
            row("e1", "a", CREATED),
            row("e2", "b", CREATED),
            row("e3", "a", "TransactionFailed"),
        ];
        let recs = [
            rec(0, 2, "e1", "a", CREATED, "0/10"),
            rec(1, 2, "e2", "b", CREATED, "0/10"),
            rec(2, 2, "e3", "a", "TransactionFailed", "0/30"),
        ];
        let t = tally(&rows, &recs, topic);
        assert_eq!(t.order_violations(), 0, "{:?}", t.examples);
    }
}
