//! The Kafka side of the drill: a scenario's topics, and the collectors that read them
//! from the beginning for the whole scenario (through broker outages) so the verdict
//! sees every record and recovery times can be measured while the load runs.
//!
//! A collector reads at one isolation level. The verdict's reads `read_committed`, as
//! consumers do; a second one reads `read_uncommitted`, which also shows what aborted
//! Kafka transactions wrote (informational). With a transactional producer each
//! transaction ends in a control record (commit or abort marker) that takes an offset
//! but is never handed to the application, so how far a collector got is the
//! consumer's position, not the last record's offset + 1.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio::task::JoinHandle;

use crate::verify::Delivered;
use outbox::headers;

/// Partitions per scenario topic (the broker's default, made explicit).
pub const PARTITIONS: i32 = 3;

/// The drill's own Kafka clients' security (the admin principal on the secured stack),
/// set once when the private stack is up, before any client is made.
static SECURITY: std::sync::OnceLock<Vec<(&'static str, String)>> = std::sync::OnceLock::new();

/// Sets the security every client of the drill gets; the first call wins.
pub fn set_security(properties: Vec<(&'static str, String)>) {
    let _ = SECURITY.set(properties);
}

/// A client configuration for `brokers` with the drill's security.
fn client_config(brokers: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    for (k, v) in SECURITY.get().into_iter().flatten() {
        c.set(*k, v);
    }
    c.set("bootstrap.servers", brokers);
    c
}

/// Creates `topics` before anything produces or subscribes, so consumers find them at
/// once instead of after a metadata refresh; the broker's default replication (1 on one
/// broker, 3 on a KAFKA_NODES=3 cluster), through testkit's topic creator.
pub async fn create_topics(brokers: &str, topics: &[String]) -> anyhow::Result<()> {
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    testkit::kafka::create_topics(&client_config(brokers), &names, PARTITIONS, &[]).await
}

/// The broker (node id) leading the most partitions of `topics`.
pub fn busiest_leader(brokers: &str, topics: &[String]) -> anyhow::Result<u32> {
    let consumer: BaseConsumer = client_config(brokers).create()?;
    let mut led: HashMap<i32, usize> = HashMap::new();
    for t in topics {
        let md = consumer
            .fetch_metadata(Some(t), Duration::from_secs(10))
            .with_context(|| format!("metadata of {t}"))?;
        for topic in md.topics() {
            for p in topic.partitions() {
                *led.entry(p.leader()).or_default() += 1;
            }
        }
    }
    led.into_iter()
        .filter(|(id, _)| *id >= 0)
        .max_by_key(|(id, n)| (*n, -*id))
        .map(|(id, _)| id as u32)
        .context("no partition has a leader")
}

/// Partitions of every topic of the cluster (internal ones included) whose in-sync
/// replicas are fewer than their replicas, as a broker's metadata says.
pub fn under_replicated(brokers: &str) -> anyhow::Result<usize> {
    let consumer: BaseConsumer = client_config(brokers).create()?;
    let md = consumer
        .fetch_metadata(None, Duration::from_secs(10))
        .context("cluster metadata")?;
    Ok(md
        .topics()
        .iter()
        .flat_map(|t| t.partitions())
        .filter(|p| p.isr().len() < p.replicas().len())
        .count())
}

/// Waits until no partition is under-replicated, as an operator's rolling restart waits
/// before it stops the next broker; at most `bound`. `Ok(waited)` once fully
/// replicated, `Err(partitions)` still under-replicated at the bound.
pub async fn wait_fully_replicated(brokers: &str, bound: Duration) -> Result<Duration, usize> {
    let start = Instant::now();
    let mut last = usize::MAX;
    while start.elapsed() < bound {
        let b = brokers.to_string();
        match tokio::task::spawn_blocking(move || under_replicated(&b)).await {
            Ok(Ok(0)) => return Ok(start.elapsed()),
            Ok(Ok(n)) => last = n,
            // A broker that is still starting may not answer: ask again.
            Ok(Err(_)) | Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Err(last)
}

/// What one write with `acks=all` and no retries got from the cluster: accepted (`None`)
/// or the error code the partition leader answered. Shows what a fault does to writes,
/// without the relay's retries in between.
pub async fn probe_write(brokers: &str, topic: &str) -> anyhow::Result<Option<RDKafkaErrorCode>> {
    let producer: FutureProducer = client_config(brokers)
        .set("acks", "all")
        .set("enable.idempotence", "false")
        .set("retries", "0")
        .set("request.timeout.ms", "5000")
        .set("message.timeout.ms", "10000")
        .create()?;
    let sent = producer
        .send(
            FutureRecord::to(topic)
                .key("probe")
                .payload("probe")
                .partition(0),
            Duration::from_secs(10),
        )
        .await;
    Ok(match sent {
        Ok(_) => None,
        Err((KafkaError::MessageProduction(code), _)) => Some(code),
        Err((e, _)) => Some(e.rdkafka_error_code().unwrap_or(RDKafkaErrorCode::Unknown)),
    })
}

/// Deletes topics (best effort).
pub async fn delete_topics(brokers: &str, topics: &[String]) {
    if let Ok(admin) = client_config(brokers).create::<AdminClient<DefaultClientContext>>() {
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        let _ = admin.delete_topics(&names, &AdminOptions::new()).await;
    }
}

/// Which records a collector is shown: the Kafka consumer's `isolation.level`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isolation {
    /// Committed transactions and non-transactional records only, up to the last
    /// stable offset: what a consumer of the outbox topics reads.
    ReadCommitted,
    /// Everything, records of aborted and still open transactions included.
    ReadUncommitted,
}

impl Isolation {
    pub fn as_str(self) -> &'static str {
        match self {
            Isolation::ReadCommitted => "read_committed",
            Isolation::ReadUncommitted => "read_uncommitted",
        }
    }
}

/// Which event ids the collector has read so far.
#[derive(Clone)]
pub struct Seen(Arc<Mutex<Collected>>);

impl Seen {
    /// Whether every id in `ids` has been read.
    pub fn has_all(&self, ids: &[String]) -> bool {
        let s = self.0.lock().expect("collector lock");
        ids.iter().all(|id| s.seen.contains_key(id))
    }

    /// Those of `ids` that have been read.
    pub fn read_of(&self, ids: &[String]) -> Vec<String> {
        let s = self.0.lock().expect("collector lock");
        ids.iter()
            .filter(|id| s.seen.contains_key(*id))
            .cloned()
            .collect()
    }

    /// When each of `ids` was first read (`None` for one never read).
    pub fn first_read<'a>(&self, ids: impl IntoIterator<Item = &'a str>) -> Vec<Option<Instant>> {
        let s = self.0.lock().expect("collector lock");
        ids.into_iter().map(|id| s.seen.get(id).copied()).collect()
    }
}

#[derive(Default)]
struct Collected {
    records: Vec<Delivered>,
    /// Every event id read, with when it was read first.
    seen: HashMap<String, Instant>,
    /// Next offset to read, per (topic, partition).
    next: HashMap<(String, i32), i64>,
    /// How often the consumer was rebuilt after a stall.
    rebuilt: usize,
}

/// With nothing read for this long, the consumer is rebuilt at the offsets it reached.
/// A safety net, reported in the scenario's notes: the stalls seen in scenario 2 came
/// from pausing after each client error (a backlog of stale errors outlived the
/// outage), fixed since; rebuilding an idle consumer costs nothing.
const STALL: Duration = Duration::from_secs(10);

/// Reads the scenario's topics from the beginning until stopped.
pub struct Collector {
    brokers: String,
    topics: Vec<String>,
    isolation: Isolation,
    state: Arc<Mutex<Collected>>,
    task: JoinHandle<()>,
}

impl Collector {
    pub fn start(
        brokers: &str,
        topics: &[String],
        isolation: Isolation,
    ) -> anyhow::Result<Collector> {
        let state = Arc::new(Mutex::new(Collected::default()));
        let consumer = consumer_at(brokers, topics, isolation, &state)?;
        let task = tokio::spawn(collect(
            consumer,
            brokers.to_string(),
            topics.to_vec(),
            isolation,
            state.clone(),
        ));
        Ok(Collector {
            brokers: brokers.to_string(),
            topics: topics.to_vec(),
            isolation,
            state,
            task,
        })
    }

    /// How often the consumer was rebuilt after a stall.
    pub fn rebuilt(&self) -> usize {
        self.state.lock().expect("collector lock").rebuilt
    }

    /// A handle that answers "has this event been read yet?" from other tasks.
    pub fn seen(&self) -> Seen {
        Seen(self.state.clone())
    }

    /// Waits until the collector has read up to every partition's end, as the broker
    /// reports it now for this isolation level (call once nothing produces any more):
    /// the high watermark for `read_uncommitted`, the last stable offset for
    /// `read_committed` (the same once no transaction is open).
    pub async fn catch_up(&self, timeout: Duration) -> anyhow::Result<()> {
        let brokers = self.brokers.clone();
        let topics = self.topics.clone();
        let isolation = self.isolation;
        let highs =
            tokio::task::spawn_blocking(move || high_watermarks(&brokers, &topics, isolation))
                .await
                .context("watermark task")??;
        let start = Instant::now();
        loop {
            let behind: Vec<String> = {
                let s = self.state.lock().expect("collector lock");
                highs
                    .iter()
                    .filter(|(tp, high)| s.next.get(*tp).copied().unwrap_or(0) < **high)
                    .map(|((t, p), high)| {
                        format!(
                            "{t}/{p} at {} of {high}",
                            s.next.get(&(t.clone(), *p)).copied().unwrap_or(0)
                        )
                    })
                    .collect()
            };
            if behind.is_empty() {
                return Ok(());
            }
            if start.elapsed() > timeout {
                bail!(
                    "the {} collector did not reach the end of the topics in {timeout:?}: {}",
                    self.isolation.as_str(),
                    behind.join(", ")
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops reading and returns every record read.
    pub fn finish(&mut self) -> Vec<Delivered> {
        self.task.abort();
        let mut s = self.state.lock().expect("collector lock");
        std::mem::take(&mut s.records)
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A consumer assigned to every partition of `topics`, at the next offset the
/// collector has not read yet (from the beginning at first).
fn consumer_at(
    brokers: &str,
    topics: &[String],
    isolation: Isolation,
    state: &Mutex<Collected>,
) -> anyhow::Result<StreamConsumer> {
    let consumer: StreamConsumer = client_config(brokers)
        .set(
            "group.id",
            format!("drill-collector-{}", uuid::Uuid::new_v4()),
        )
        .set("enable.auto.commit", "false")
        .set("isolation.level", isolation.as_str())
        .create()?;
    let next = state.lock().expect("collector lock").next.clone();
    let mut tpl = TopicPartitionList::new();
    for t in topics {
        for p in 0..PARTITIONS {
            let offset = match next.get(&(t.clone(), p)) {
                Some(o) => Offset::Offset(*o),
                None => Offset::Beginning,
            };
            tpl.add_partition_offset(t, p, offset)?;
        }
    }
    consumer.assign(&tpl)?;
    Ok(consumer)
}

async fn collect(
    mut consumer: StreamConsumer,
    brokers: String,
    topics: Vec<String>,
    isolation: Isolation,
    state: Arc<Mutex<Collected>>,
) {
    let mut last_read = Instant::now();
    loop {
        if last_read.elapsed() > STALL {
            if let Ok(c) = consumer_at(&brokers, &topics, isolation, &state) {
                consumer = c;
                state.lock().expect("collector lock").rebuilt += 1;
            }
            last_read = Instant::now();
        }
        let msg = match tokio::time::timeout(Duration::from_secs(1), consumer.recv()).await {
            Ok(Ok(m)) => m,
            // Broker restarts, topics not yet known: librdkafka recovers by itself.
            // Poll again at once: during an outage the client queues errors faster
            // than any pause per error would drain them, and the collector would read
            // stale errors long after the broker is back.
            Ok(Err(_)) => {
                advance_to_position(&consumer, &state);
                tokio::task::yield_now().await;
                continue;
            }
            // Nothing to read: a commit marker may still have moved the position.
            Err(_) => {
                advance_to_position(&consumer, &state);
                continue;
            }
        };
        last_read = Instant::now();
        let mut h: HashMap<&str, String> = HashMap::new();
        if let Some(hs) = msg.headers() {
            for header in hs.iter() {
                if let Some(v) = header.value {
                    h.insert(header.key, String::from_utf8_lossy(v).into_owned());
                }
            }
        }
        let d = Delivered {
            topic: msg.topic().to_string(),
            partition: msg.partition(),
            offset: msg.offset(),
            key: msg.key().map(|k| String::from_utf8_lossy(k).into_owned()),
            event_id: h.remove(headers::EVENT_ID),
            event_type: h.remove(headers::EVENT_TYPE),
            source: h.remove(headers::SOURCE),
            commit_lsn: h.remove(headers::COMMIT_LSN),
        };
        let mut s = state.lock().expect("collector lock");
        // After a rebuild, never count a record twice.
        if s.next
            .get(&(d.topic.clone(), d.partition))
            .is_some_and(|n| d.offset < *n)
        {
            continue;
        }
        if let Some(id) = &d.event_id {
            s.seen.entry(id.clone()).or_insert_with(Instant::now);
        }
        s.next.insert((d.topic.clone(), d.partition), d.offset + 1);
        s.records.push(d);
        drop(s);
        advance_to_position(&consumer, &state);
    }
}

/// Moves each partition's next offset up to the consumer's position, which counts the
/// control records (transaction markers) the consumer stepped over and never returned.
fn advance_to_position(consumer: &StreamConsumer, state: &Mutex<Collected>) {
    let Ok(positions) = consumer.position() else {
        return;
    };
    let mut s = state.lock().expect("collector lock");
    for e in positions.elements() {
        if let Offset::Offset(o) = e.offset() {
            advance(&mut s.next, e.topic(), e.partition(), o);
        }
    }
}

/// Raises the next offset of `topic`/`partition` to `to`; never lowers it.
fn advance(next: &mut HashMap<(String, i32), i64>, topic: &str, partition: i32, to: i64) {
    let n = next.entry((topic.to_string(), partition)).or_insert(to);
    *n = (*n).max(to);
}

/// Each partition's end for a consumer at `isolation`: librdkafka asks for the offsets
/// with the client's isolation level, so `read_committed` gets the last stable offset.
fn high_watermarks(
    brokers: &str,
    topics: &[String],
    isolation: Isolation,
) -> anyhow::Result<HashMap<(String, i32), i64>> {
    let c: BaseConsumer = client_config(brokers)
        .set(
            "group.id",
            format!("drill-watermarks-{}", uuid::Uuid::new_v4()),
        )
        .set("isolation.level", isolation.as_str())
        .create()?;
    let mut out = HashMap::new();
    for t in topics {
        for p in 0..PARTITIONS {
            let (_, high) = c
                .fetch_watermarks(t, p, Duration::from_secs(20))
                .with_context(|| format!("watermarks of {t}/{p}"))?;
            out.insert((t.clone(), p), high);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_position_past_a_commit_marker_moves_the_next_offset_up_and_never_down() {
        let mut next = HashMap::new();
        advance(&mut next, "t", 0, 5);
        // Offset 5 held the marker after records 0..=4: the position says 6.
        advance(&mut next, "t", 0, 6);
        assert_eq!(next[&("t".to_string(), 0)], 6);
        advance(&mut next, "t", 0, 3);
        assert_eq!(next[&("t".to_string(), 0)], 6);
        advance(&mut next, "t", 1, 2);
        assert_eq!(next[&("t".to_string(), 1)], 2);
    }
}
