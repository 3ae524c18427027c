//! Kafka: client settings with the stack's security, topics (created, described,
//! deleted), a consumer that reads a topic back as [`Record`]s, and a broker of one
//! test's own ([`PrivateKafka`]).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};

use crate::net::{free_port, free_port_block};
use crate::{proc, repo_root, unique_suffix};

/// A Kafka topic name no other test uses.
pub fn unique_topic(prefix: &str) -> String {
    format!("t.{prefix}.{}", unique_suffix())
}

/// librdkafka's security properties a test client gets from the environment, under the
/// names `scripts/stack env` exports on the secured stack (`KAFKA_SECURITY_PROTOCOL`,
/// `KAFKA_SASL_MECHANISM`, `KAFKA_SASL_USERNAME`, `KAFKA_SASL_PASSWORD`,
/// `KAFKA_SSL_CA_LOCATION`): nothing on the plain stack.
pub const KAFKA_SECURITY_VARIABLES: [(&str, &str); 5] = [
    ("KAFKA_SECURITY_PROTOCOL", "security.protocol"),
    ("KAFKA_SASL_MECHANISM", "sasl.mechanism"),
    ("KAFKA_SASL_USERNAME", "sasl.username"),
    ("KAFKA_SASL_PASSWORD", "sasl.password"),
    ("KAFKA_SSL_CA_LOCATION", "ssl.ca.location"),
];

/// The security properties from the environment as (property, value) pairs.
pub fn kafka_security() -> Vec<(&'static str, String)> {
    KAFKA_SECURITY_VARIABLES
        .iter()
        .filter_map(|(var, prop)| {
            std::env::var(var)
                .ok()
                .filter(|v| !v.is_empty())
                .map(|v| (*prop, v))
        })
        .collect()
}

/// A client configuration for `brokers` with the stack's security (the admin principal
/// on the secured stack): what every test's Kafka client starts from.
pub fn kafka_config(brokers: &str) -> ClientConfig {
    client_config(brokers, &kafka_security())
}

/// A client configuration for `brokers` with `security` (librdkafka properties): for a
/// stack whose security is not in the environment (the drill's private one).
pub fn client_config(brokers: &str, security: &[(&str, String)]) -> ClientConfig {
    let mut c = ClientConfig::new();
    for (prop, value) in security {
        c.set(*prop, value);
    }
    c.set("bootstrap.servers", brokers);
    c
}

/// An admin client on the local broker.
pub fn kafka_admin(brokers: &str) -> anyhow::Result<AdminClient<DefaultClientContext>> {
    Ok(kafka_config(brokers).create()?)
}

/// Creates `topic` with `partitions` partitions.
pub async fn create_topic(brokers: &str, topic: &str, partitions: i32) -> anyhow::Result<()> {
    create_topic_with_config(brokers, topic, partitions, &[]).await
}

/// Creates `topic` with `partitions` partitions and topic-level settings such as
/// `("max.message.bytes", "60000")`.
pub async fn create_topic_with_config(
    brokers: &str,
    topic: &str,
    partitions: i32,
    config: &[(&str, &str)],
) -> anyhow::Result<()> {
    create_topics(&kafka_config(brokers), &[topic], partitions, config).await
}

/// Creates `topics` through a client made from `client` (its brokers and security), each
/// with `partitions` partitions, the broker's default replication (1 on one broker, 3 on
/// a three-broker cluster) and the topic-level settings `config`. Creating topics before
/// anything produces or subscribes lets consumers find them at once.
pub async fn create_topics(
    client: &ClientConfig,
    topics: &[&str],
    partitions: i32,
    config: &[(&str, &str)],
) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = client.create()?;
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|topic| {
            config.iter().fold(
                NewTopic::new(topic, partitions, TopicReplication::Fixed(-1)),
                |t, (k, v)| t.set(k, v),
            )
        })
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

/// The number of partitions of `topic`, or `None` when the broker does not know it.
pub fn topic_partitions(brokers: &str, topic: &str) -> anyhow::Result<Option<usize>> {
    let admin = kafka_admin(brokers)?;
    let metadata = admin
        .inner()
        .fetch_metadata(Some(topic), Duration::from_secs(10))?;
    Ok(metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
        .map(|t| t.partitions().len()))
}

/// A setting of the (first) broker as it runs, e.g. `auto.create.topics.enable`.
pub async fn broker_config(brokers: &str, name: &str) -> anyhow::Result<Option<String>> {
    let admin = kafka_admin(brokers)?;
    let broker_id = admin
        .inner()
        .fetch_metadata(None, Duration::from_secs(10))?
        .brokers()
        .first()
        .context("the cluster lists no broker")?
        .id();
    let results = admin
        .describe_configs(
            &[ResourceSpecifier::Broker(broker_id)],
            &AdminOptions::new().request_timeout(Some(Duration::from_secs(10))),
        )
        .await?;
    let resource = match results.into_iter().next() {
        Some(Ok(r)) => r,
        Some(Err(e)) => bail!("describing broker {broker_id}: {e}"),
        None => bail!("describing broker {broker_id}: no answer"),
    };
    Ok(resource.get(name).and_then(|e| e.value.clone()))
}

/// Deletes topics (best effort: a test's topics are unique, so a leftover harms nobody).
pub async fn delete_topics(brokers: &str, topics: &[&str]) {
    delete_topics_with(&kafka_config(brokers), topics).await;
}

/// Deletes topics through a client made from `client` (best effort).
pub async fn delete_topics_with(client: &ClientConfig, topics: &[&str]) {
    if let Ok(admin) = client.create::<AdminClient<DefaultClientContext>>() {
        let _ = admin.delete_topics(topics, &AdminOptions::new()).await;
    }
}

/// One record read back from Kafka.
#[derive(Debug, Clone)]
pub struct Record {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    pub payload: Option<Vec<u8>>,
    pub headers: Vec<(String, String)>,
}

impl Record {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn payload_json(&self) -> serde_json::Value {
        serde_json::from_slice(self.payload.as_deref().unwrap_or(b"null")).expect("payload is JSON")
    }
}

/// A consumer in a group of its own, reading `topics` from the beginning.
pub fn consumer(brokers: &str, topics: &[&str]) -> anyhow::Result<StreamConsumer> {
    let consumer: StreamConsumer = kafka_config(brokers)
        .set("group.id", format!("testkit-{}", unique_suffix()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("topic.metadata.refresh.interval.ms", "500")
        .create()?;
    consumer.subscribe(topics)?;
    Ok(consumer)
}

/// Reads from `consumer` until `want` records arrived, or fails after `timeout` of
/// silence saying how many came.
pub async fn read_records(
    consumer: &StreamConsumer,
    want: usize,
    timeout: Duration,
) -> anyhow::Result<Vec<Record>> {
    let mut out = Vec::with_capacity(want);
    while out.len() < want {
        let msg = match tokio::time::timeout(timeout, consumer.recv()).await {
            Ok(m) if transient(&m) => continue,
            Ok(m) => m?,
            Err(_) => bail!(
                "got {} of {want} records, then nothing for {timeout:?}",
                out.len()
            ),
        };
        out.push(to_record(&msg));
    }
    Ok(out)
}

/// Reads until every id in `ids` arrived in an `event_id` header (duplicates allowed),
/// or fails after `timeout` of silence naming how many are still missing.
pub async fn read_until_ids(
    consumer: &StreamConsumer,
    ids: &[String],
    timeout: Duration,
) -> anyhow::Result<Vec<Record>> {
    let mut missing: std::collections::HashSet<&str> = ids.iter().map(String::as_str).collect();
    let mut out = Vec::new();
    while !missing.is_empty() {
        let got = read_records(consumer, 1, timeout)
            .await
            .with_context(|| format!("{} of {} events never arrived", missing.len(), ids.len()))?;
        for r in got {
            if let Some(id) = r.header("event_id") {
                missing.remove(id);
            }
            out.push(r);
        }
    }
    Ok(out)
}

/// Reads every record that arrives until `quiet` passes with none.
pub async fn read_until_quiet(
    consumer: &StreamConsumer,
    quiet: Duration,
) -> anyhow::Result<Vec<Record>> {
    let mut out = Vec::new();
    while let Ok(m) = tokio::time::timeout(quiet, consumer.recv()).await {
        if !transient(&m) {
            out.push(to_record(&m?));
        }
    }
    Ok(out)
}

/// Errors a consumer reports and then recovers from by itself: subscribed before the
/// producer created the topic, or the broker was restarted under it.
fn transient<T>(m: &Result<T, rdkafka::error::KafkaError>) -> bool {
    use rdkafka::types::RDKafkaErrorCode as C;
    matches!(
        m,
        Err(rdkafka::error::KafkaError::MessageConsumption(
            C::UnknownTopicOrPartition | C::AllBrokersDown | C::BrokerTransportFailure
        ))
    )
}

fn to_record(msg: &rdkafka::message::BorrowedMessage<'_>) -> Record {
    let headers = msg
        .headers()
        .map(|hs| {
            hs.iter()
                .map(|h| {
                    let v = h
                        .value
                        .map(|v| String::from_utf8_lossy(v).into_owned())
                        .unwrap_or_default();
                    (h.key.to_string(), v)
                })
                .collect()
        })
        .unwrap_or_default();
    Record {
        topic: msg.topic().to_string(),
        partition: msg.partition(),
        offset: msg.offset(),
        key: msg.key().map(|k| String::from_utf8_lossy(k).into_owned()),
        payload: msg.payload().map(<[u8]>::to_vec),
        headers,
    }
}

/// A Kafka broker of one test's own (same jars, own ports and folder), for tests that
/// stop, start or freeze the broker without disturbing the shared one.
pub struct PrivateKafka {
    pub brokers: String,
    dir: PathBuf,
    port: u16,
    controller_port: u16,
    auto_create_topics: bool,
    /// 1, or 3 for a cluster (`scripts/stack` with `KAFKA_NODES=3`).
    nodes: u8,
}

impl PrivateKafka {
    /// A broker configured like the shared one.
    pub async fn start() -> anyhow::Result<Self> {
        Self::launch(true).await
    }

    /// A broker that creates no topic on first use (`auto.create.topics.enable=false`):
    /// a record to a topic nobody created is refused.
    pub async fn start_without_topic_auto_creation() -> anyhow::Result<Self> {
        Self::launch(false).await
    }

    /// A cluster of three brokers and two dedicated controllers, as `KAFKA_NODES=3
    /// scripts/stack up` starts it: replication factor 3 and `min.insync.replicas` 2 for
    /// new topics; `brokers` lists all three.
    pub async fn start_cluster() -> anyhow::Result<Self> {
        // Node i listens on port + 2(i-1) and controller port + 2(i-1), controllers 4
        // and 5 on controller port + 6 and + 8: ten ports in a row, interleaved.
        let port = free_port_block(10);
        let k = Self {
            brokers: (0..3)
                .map(|i| format!("127.0.0.1:{}", port + 2 * i))
                .collect::<Vec<_>>()
                .join(","),
            dir: std::env::temp_dir().join(format!("testkit-kafka-{}", unique_suffix())),
            port,
            controller_port: port + 1,
            auto_create_topics: true,
            nodes: 3,
        };
        k.run("kafka-start").await?;
        Ok(k)
    }

    async fn launch(auto_create_topics: bool) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("testkit-kafka-{}", unique_suffix()));
        let port = free_port();
        let controller_port = free_port();
        let k = Self {
            brokers: format!("127.0.0.1:{port}"),
            dir,
            port,
            controller_port,
            auto_create_topics,
            nodes: 1,
        };
        k.run("kafka-start").await?;
        Ok(k)
    }

    pub async fn stop(&self) -> anyhow::Result<()> {
        self.run("kafka-stop").await
    }

    pub async fn resume(&self) -> anyhow::Result<()> {
        self.run("kafka-start").await
    }

    /// SIGSTOP: the broker keeps its connections open and answers nothing, like a host
    /// that hangs, until [`PrivateKafka::thaw`].
    pub fn freeze(&self) -> anyhow::Result<()> {
        self.signal("STOP")
    }

    /// SIGCONT after [`PrivateKafka::freeze`].
    pub fn thaw(&self) -> anyhow::Result<()> {
        self.signal("CONT")
    }

    /// The broker's JVM, from the pid file `scripts/stack kafka-start` writes.
    fn pid(&self) -> anyhow::Result<u32> {
        let file = self.dir.join("kafka/kafka.pid");
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("reading {}", file.display()))?;
        let pid: u32 = text
            .trim()
            .parse()
            .with_context(|| format!("{} holds no pid", file.display()))?;
        let comm = proc::command_name(pid).unwrap_or_default();
        if comm != "java" {
            bail!(
                "pid {pid} from {} is {comm:?}, not the broker's java",
                file.display()
            );
        }
        Ok(pid)
    }

    fn signal(&self, signal: &str) -> anyhow::Result<()> {
        proc::signal(self.pid()?, signal)
    }

    fn command(&self, verb: &str) -> std::process::Command {
        let mut cmd = std::process::Command::new(repo_root().join("scripts/stack"));
        cmd.arg(verb)
            .env("STACK_DIR", &self.dir)
            .env("KAFKA_PORT", self.port.to_string())
            .env("KAFKA_CONTROLLER_PORT", self.controller_port.to_string())
            .env("KAFKA_HEAP", "384m")
            .env("KAFKA_NODES", self.nodes.to_string())
            .env(
                "KAFKA_AUTO_CREATE_TOPICS",
                self.auto_create_topics.to_string(),
            );
        cmd
    }

    async fn run(&self, verb: &str) -> anyhow::Result<()> {
        let out = tokio::process::Command::from(self.command(verb))
            .output()
            .await?;
        if !out.status.success() {
            bail!(
                "scripts/stack {verb} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }
}

impl Drop for PrivateKafka {
    fn drop(&mut self) {
        // A frozen broker would ignore SIGTERM until the stop script gives up on it.
        let _ = self.thaw();
        let _ = self.command("kafka-stop").output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
