//! The Kafka side of a run: topics of the run's own (created up front, with
//! `LogAppendTime` where latency is measured), a producer configured like the relay's
//! for the polling baseline, a `read_committed` reader that collects what arrived, and
//! a watcher of a topic's end offsets (how far Debezium got).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message, Timestamp};
use rdkafka::producer::FutureProducer;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::watch;

/// Creates `topic` (testkit's topic creator: the broker's default replication). With
/// `log_append_time` the broker stamps each record with the time it appended it, which
/// is what commit → Kafka latency is measured against.
pub async fn create_topic(
    brokers: &str,
    topic: &str,
    partitions: i32,
    log_append_time: bool,
) -> anyhow::Result<()> {
    let config: &[(&str, &str)] = if log_append_time {
        &[("message.timestamp.type", "LogAppendTime")]
    } else {
        &[]
    };
    testkit::create_topic_with_config(brokers, topic, partitions, config).await
}

/// The polling baseline's producer: the same delivery settings as relay-cdc's
/// (idempotent, acks=all, never time a record out, linger 5 ms, lz4).
pub fn producer(brokers: &str) -> anyhow::Result<FutureProducer> {
    Ok(testkit::kafka_config(brokers)
        .set("client.id", "relay-bench-poller")
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "5")
        .set("compression.type", "lz4")
        .set("queue.buffering.max.messages", "200000")
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("message.timeout.ms", "0")
        .create()?)
}

/// The sum of a topic's end offsets (high watermarks), sampled on a thread of its own
/// every few milliseconds: with a non-transactional producer, how many records the
/// broker has acked on that topic. A failed sample is skipped; the caller bounds the wait.
pub struct EndOffsets {
    total: Arc<AtomicI64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EndOffsets {
    pub fn watch(
        brokers: &str,
        topic: &str,
        partitions: i32,
        every: Duration,
    ) -> anyhow::Result<Self> {
        let consumer: BaseConsumer = testkit::kafka_config(brokers)
            .set(
                "group.id",
                format!("relay-bench-offsets-{}", testkit::unique_suffix()),
            )
            .set("enable.auto.commit", "false")
            .create()?;
        let total = Arc::new(AtomicI64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let topic = topic.to_string();
        let thread = std::thread::spawn({
            let (total, stop) = (total.clone(), stop.clone());
            move || {
                while !stop.load(Ordering::Relaxed) {
                    let sum: Result<i64, KafkaError> = (0..partitions)
                        .map(|p| {
                            consumer
                                .fetch_watermarks(&topic, p, Duration::from_secs(2))
                                .map(|(_, high)| high)
                        })
                        .sum();
                    if let Ok(sum) = sum {
                        total.store(sum, Ordering::Relaxed);
                    }
                    std::thread::sleep(every);
                }
            }
        });
        Ok(Self {
            total,
            stop,
            thread: Some(thread),
        })
    }

    /// Records on the topic at the latest sample.
    pub fn total(&self) -> i64 {
        self.total.load(Ordering::Relaxed)
    }

    /// Stops sampling and waits for the thread to end.
    pub async fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

impl Drop for EndOffsets {
    /// A watcher dropped on an error path stops after its current sample.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// One record as the reader saw it.
#[derive(Debug, Clone)]
pub struct Received {
    /// `LogAppendTime` in Unix microseconds (the broker stamps milliseconds).
    pub append_micros: Option<i64>,
    /// The `commit_time` header in Unix microseconds.
    pub commit_micros: Option<i64>,
    /// When the reader got the record (this host's clock), in Unix microseconds: for a
    /// transactional producer after its Kafka transaction committed.
    pub read_micros: i64,
    /// The payload's `seq` field, when it has one (the ordering workload writes it).
    pub seq: Option<u64>,
}

impl Received {
    /// Commit → broker append, in microseconds.
    pub fn latency_micros(&self) -> Option<i64> {
        Some(self.append_micros? - self.commit_micros?)
    }

    /// Commit → read by a `read_committed` consumer, in microseconds.
    pub fn read_latency_micros(&self) -> Option<i64> {
        Some(self.read_micros - self.commit_micros?)
    }
}

/// A reader of one topic on a thread of its own.
pub struct Reader {
    thread: std::thread::JoinHandle<anyhow::Result<Vec<Received>>>,
    caught_up: watch::Receiver<bool>,
}

impl Reader {
    /// Reads `topic` (all `partitions`, from the beginning, no consumer group,
    /// `read_committed`) until `want` says how many event ids to expect and that many
    /// distinct ones arrived, or nothing arrived for `idle`.
    pub fn spawn(
        brokers: &str,
        topic: &str,
        partitions: i32,
        mut want: watch::Receiver<Option<usize>>,
        idle: Duration,
    ) -> anyhow::Result<Self> {
        let consumer: BaseConsumer = testkit::kafka_config(brokers)
            .set(
                "group.id",
                format!("relay-bench-{}", testkit::unique_suffix()),
            )
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", "10")
            // librdkafka's default, stated: records of a Kafka transaction are read
            // once it committed, never if it aborted.
            .set("isolation.level", "read_committed")
            // The end of each partition is reported once, so the run knows the reader
            // fetches before it offers load.
            .set("enable.partition.eof", "true")
            .create()?;
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition_offset(topic, p, Offset::Beginning)?;
        }
        consumer.assign(&tpl)?;
        let (caught_up_tx, caught_up) = watch::channel(false);
        let thread = std::thread::spawn(move || {
            let mut out = Vec::new();
            let mut seen = HashSet::new();
            let mut at_end = HashSet::new();
            let mut last = std::time::Instant::now();
            loop {
                let target = *want.borrow_and_update();
                if target.is_some_and(|t| seen.len() >= t) {
                    return Ok(out);
                }
                let polled = consumer.poll(Duration::from_millis(100));
                let read_micros = chrono::Utc::now().timestamp_micros();
                match polled {
                    Some(Ok(m)) => {
                        last = std::time::Instant::now();
                        let id = header(&m, "event_id").unwrap_or_default();
                        if !seen.insert(id) {
                            continue; // a duplicate (same event id): count it once
                        }
                        out.push(Received {
                            append_micros: match m.timestamp() {
                                Timestamp::LogAppendTime(ms) => Some(ms * 1000),
                                _ => None,
                            },
                            commit_micros: header(&m, "commit_time").and_then(|t| {
                                chrono::DateTime::parse_from_rfc3339(&t)
                                    .ok()
                                    .map(|t| t.timestamp_micros())
                            }),
                            seq: m.payload().and_then(|p| {
                                serde_json::from_slice::<serde_json::Value>(p)
                                    .ok()?
                                    .get("seq")?
                                    .as_u64()
                            }),
                            read_micros,
                        });
                    }
                    Some(Err(KafkaError::PartitionEOF(p))) => {
                        at_end.insert(p);
                        if at_end.len() == partitions as usize {
                            caught_up_tx.send_replace(true);
                        }
                    }
                    Some(Err(e)) => {
                        report_consumer_error(&e);
                    }
                    None => {}
                }
                if last.elapsed() > idle {
                    bail!(
                        "read {} of {} records, then nothing for {idle:?}",
                        seen.len(),
                        target.map_or("?".into(), |t| t.to_string())
                    );
                }
            }
        });
        Ok(Self { thread, caught_up })
    }

    /// Waits until the reader reached the end of every partition once (it fetches, so
    /// what arrives from now on is read as it becomes visible).
    pub async fn caught_up(&mut self, timeout: Duration) -> anyhow::Result<()> {
        tokio::time::timeout(timeout, self.caught_up.wait_for(|c| *c))
            .await
            .context("the Kafka reader did not reach the end of the topic")?
            .map_err(|_| anyhow::anyhow!("the Kafka reader stopped before it caught up"))?;
        Ok(())
    }

    /// Joins the reader thread without blocking the runtime.
    pub async fn join(self) -> anyhow::Result<Vec<Received>> {
        let thread = self.thread;
        tokio::task::spawn_blocking(move || thread.join())
            .await?
            .map_err(|_| anyhow::anyhow!("the Kafka reader panicked"))?
            .context("reading records back from Kafka")
    }
}

/// Consumer errors the broker recovers from by itself (topic metadata not yet
/// propagated, a broker restart) only delay the read; anything else is reported once.
fn report_consumer_error(e: &KafkaError) {
    use rdkafka::types::RDKafkaErrorCode as C;
    if !matches!(
        e,
        KafkaError::MessageConsumption(
            C::UnknownTopicOrPartition | C::AllBrokersDown | C::BrokerTransportFailure
        ) | KafkaError::PartitionEOF(_)
    ) {
        eprintln!("relay-bench: consumer: {e}");
    }
}

fn header<M: Message>(m: &M, name: &str) -> Option<String> {
    m.headers()?
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}
