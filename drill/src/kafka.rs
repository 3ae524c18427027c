//! The Kafka side of the drill: a scenario's topics, and the collector that reads them
//! from the beginning for the whole scenario (through broker outages) so the verdict
//! sees every record and recovery times can be measured while the load runs.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio::task::JoinHandle;

use crate::verify::Delivered;
use outbox::headers;

/// Partitions per scenario topic (the broker's default, made explicit).
pub const PARTITIONS: i32 = 3;

/// Creates `topics` before anything produces or subscribes, so consumers find them at
/// once instead of after a metadata refresh.
pub async fn create_topics(brokers: &str, topics: &[String]) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| NewTopic::new(t, PARTITIONS, TopicReplication::Fixed(1)))
        .collect();
    let results = admin
        .create_topics(
            &new,
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(20))),
        )
        .await
        .context("creating topics")?;
    for r in results {
        if let Err((t, e)) = r {
            bail!("creating topic {t}: {e}");
        }
    }
    Ok(())
}

/// Deletes topics (best effort).
pub async fn delete_topics(brokers: &str, topics: &[String]) {
    if let Ok(admin) = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create::<AdminClient<DefaultClientContext>>()
    {
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        let _ = admin.delete_topics(&names, &AdminOptions::new()).await;
    }
}

/// Which event ids the collector has read so far.
#[derive(Clone)]
pub struct Seen(Arc<Mutex<Collected>>);

impl Seen {
    /// Whether every id in `ids` has been read.
    pub fn has_all(&self, ids: &[String]) -> bool {
        let s = self.0.lock().expect("collector lock");
        ids.iter().all(|id| s.seen.contains(id))
    }

    /// Those of `ids` that have been read.
    pub fn read_of(&self, ids: &[String]) -> Vec<String> {
        let s = self.0.lock().expect("collector lock");
        ids.iter()
            .filter(|id| s.seen.contains(*id))
            .cloned()
            .collect()
    }
}

#[derive(Default)]
struct Collected {
    records: Vec<Delivered>,
    seen: HashSet<String>,
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
    state: Arc<Mutex<Collected>>,
    task: JoinHandle<()>,
}

impl Collector {
    pub fn start(brokers: &str, topics: &[String]) -> anyhow::Result<Collector> {
        let state = Arc::new(Mutex::new(Collected::default()));
        let consumer = consumer_at(brokers, topics, &state)?;
        let task = tokio::spawn(collect(
            consumer,
            brokers.to_string(),
            topics.to_vec(),
            state.clone(),
        ));
        Ok(Collector {
            brokers: brokers.to_string(),
            topics: topics.to_vec(),
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

    /// Waits until the collector has read up to every partition's high watermark, as
    /// the broker reports it now (call once nothing produces any more).
    pub async fn catch_up(&self, timeout: Duration) -> anyhow::Result<()> {
        let brokers = self.brokers.clone();
        let topics = self.topics.clone();
        let highs = tokio::task::spawn_blocking(move || high_watermarks(&brokers, &topics))
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
                    "the collector did not reach the end of the topics in {timeout:?}: {}",
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
    state: &Mutex<Collected>,
) -> anyhow::Result<StreamConsumer> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set(
            "group.id",
            format!("drill-collector-{}", uuid::Uuid::new_v4()),
        )
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
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
    state: Arc<Mutex<Collected>>,
) {
    let mut last_read = Instant::now();
    loop {
        if last_read.elapsed() > STALL {
            if let Ok(c) = consumer_at(&brokers, &topics, &state) {
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
                tokio::task::yield_now().await;
                continue;
            }
            Err(_) => continue,
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
            s.seen.insert(id.clone());
        }
        s.next.insert((d.topic.clone(), d.partition), d.offset + 1);
        s.records.push(d);
    }
}

fn high_watermarks(
    brokers: &str,
    topics: &[String],
) -> anyhow::Result<HashMap<(String, i32), i64>> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set(
            "group.id",
            format!("drill-watermarks-{}", uuid::Uuid::new_v4()),
        )
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
