//! Exactly-once checkpoints: a record per committed Kafka transaction on a compacted
//! topic (one partition), keyed by source, holding the end LSN of the last PostgreSQL
//! transaction in it. It commits atomically with the events, so the last committed
//! checkpoint of a source says exactly which PostgreSQL transactions are in Kafka.
//!
//! Invariant: a session that resumes from the slot skips every transaction that
//! committed before the checkpoint (its `final_lsn` < the checkpoint's end LSN): they
//! are in Kafka already, and only their PROCESSED marking and confirmation are redone.

use std::time::Duration;

use pgwire_replication::Lsn;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

use crate::config::KafkaSettings;

/// Records read back from the end of the topic before reading all of it.
const TAIL_WINDOW: i64 = 5000;

/// One source's position, as committed in Kafka.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub source: String,
    pub database: String,
    /// End LSN of the last PostgreSQL transaction whose events are committed.
    pub end_lsn: String,
    /// When the checkpoint was written (RFC 3339), for operators.
    pub written_at: String,
}

impl Checkpoint {
    pub fn new(source: &str, database: &str, end_lsn: Lsn) -> Self {
        Self {
            source: source.to_string(),
            database: database.to_string(),
            end_lsn: end_lsn.to_string(),
            written_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a checkpoint serializes")
    }

    pub fn lsn(&self) -> Option<Lsn> {
        Lsn::parse(&self.end_lsn).ok()
    }
}

/// Reads the last committed checkpoint of `source`, as a `read_committed` consumer sees
/// it once every transaction open when the read began has ended. Blocking: run it on a
/// blocking thread. `None` when the source never committed one.
pub fn read_last(
    kafka: &KafkaSettings,
    source: &str,
    timeout: Duration,
) -> Result<Option<Checkpoint>, String> {
    let deadline = std::time::Instant::now() + timeout;
    let topic = kafka.checkpoint_topic.as_str();
    let client = |isolation: &str| -> Result<BaseConsumer, KafkaError> {
        kafka
            .client_config(&format!("relay-cdc-{source}-checkpoint"))
            .set("group.id", format!("relay-cdc-checkpoint-{source}"))
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true")
            .set("isolation.level", isolation)
            .create()
    };
    let err = |what: &str, e: KafkaError| format!("reading checkpoint topic {topic}: {what}: {e}");
    let uncommitted = client("read_uncommitted").map_err(|e| err("client", e))?;
    let committed = client("read_committed").map_err(|e| err("client", e))?;
    let remaining = || deadline.saturating_duration_since(std::time::Instant::now());
    // The end of the log, open transactions included: everything committed before the
    // read began lies below it.
    let (low, high) = loop {
        match uncommitted.fetch_watermarks(topic, 0, remaining().min(Duration::from_secs(5))) {
            Ok(w) => break w,
            Err(e) if remaining().is_zero() => return Err(err("watermarks", e)),
            // A topic just created may not be known to every broker yet.
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    if high <= low {
        return Ok(None);
    }
    // Wait for the last stable offset to pass it: transactions open now (ours were
    // aborted by init_transactions; other sources' commit within their bounds) end.
    loop {
        let (_, stable) = committed
            .fetch_watermarks(topic, 0, remaining().min(Duration::from_secs(5)))
            .map_err(|e| err("last stable offset", e))?;
        if stable >= high {
            break;
        }
        if remaining().is_zero() {
            return Err(format!(
                "reading checkpoint topic {topic}: a transaction stayed open past offset {stable} (end {high})"
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut start = (high - TAIL_WINDOW).max(low);
    loop {
        let found =
            scan(&committed, topic, source, start, high, &deadline).map_err(|e| err("read", e))?;
        if found.is_some() || start == low {
            return Ok(found);
        }
        start = low;
    }
}

/// The last checkpoint of `source` from `start` up to `end`: until the consumer's
/// position passes it (it moves past commit markers, which are never delivered) or the
/// partition's end. Under steady writes by other sources the end moves on and an
/// end-of-partition event may never come, so the position decides.
fn scan(
    consumer: &BaseConsumer,
    topic: &str,
    source: &str,
    start: i64,
    end: i64,
    deadline: &std::time::Instant,
) -> Result<Option<Checkpoint>, KafkaError> {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Offset(start))?;
    consumer.assign(&tpl)?;
    let mut last = None;
    loop {
        if std::time::Instant::now() >= *deadline {
            return Err(KafkaError::Canceled);
        }
        let position = consumer
            .position()?
            .find_partition(topic, 0)
            .and_then(|p| p.offset().to_raw());
        if position.is_some_and(|p| p >= end) {
            return Ok(last);
        }
        match consumer.poll(Duration::from_millis(50)) {
            None => continue,
            Some(Err(KafkaError::PartitionEOF(_))) => return Ok(last),
            Some(Err(e)) => return Err(e),
            Some(Ok(m)) => {
                if m.offset() >= end {
                    return Ok(last);
                }
                if m.key() != Some(source.as_bytes()) {
                    continue;
                }
                match m.payload().map(serde_json::from_slice::<Checkpoint>) {
                    Some(Ok(c)) => last = Some(c),
                    Some(Err(e)) => {
                        tracing::warn!(source = %source, offset = m.offset(), error = %e, "ignoring an unreadable checkpoint record")
                    }
                    // A tombstone: the checkpoint was deleted on purpose.
                    None => last = None,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_round_trips_through_its_json() {
        let c = Checkpoint::new("users_db", "users_db", Lsn::from_u64(0x1_0000_00A0));
        let back: Checkpoint = serde_json::from_str(&c.to_json()).unwrap();
        assert_eq!(back, c);
        assert_eq!(back.lsn(), Some(Lsn::from_u64(0x1_0000_00A0)));
        assert_eq!(back.end_lsn, "1/A0");
    }
}
