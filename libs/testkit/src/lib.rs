//! Helpers shared by integration tests: the local stack's addresses, a fresh database
//! per test (created, migrated, and dropped with its replication slots), unique Kafka
//! topics, and a consumer that reads a topic back.
//!
//! Tests run against the real PostgreSQL and Apache Kafka that `scripts/stack up`
//! starts; `scripts/test` exports their addresses. Run outside it, the stack's default
//! ports are assumed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use sqlx::migrate::Migrator;
use sqlx::{Connection, PgConnection};
use uuid::Uuid;

/// Addresses of the local stack, from the environment `scripts/stack env` prints.
#[derive(Debug, Clone)]
pub struct Stack {
    /// Server URL without a database name, e.g. `postgres://u:p@127.0.0.1:55432`.
    pub pg_base_url: String,
    pub pg_host: String,
    pub pg_port: u16,
    pub pg_user: String,
    pub pg_password: String,
    pub kafka_brokers: String,
    /// The role relay-cdc logs in as: `relay_cdc` on the secured stack (`PG_RELAY_USER`),
    /// else the admin.
    pub relay_user: String,
    pub relay_password: String,
}

impl Stack {
    pub fn from_env() -> Self {
        let var = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.to_string());
        let pg_host = var("PG_HOST", "127.0.0.1");
        let pg_port: u16 = var("PG_PORT", "55432")
            .parse()
            .expect("PG_PORT is a port number");
        let pg_user = var("PG_USER", "outbox");
        let pg_password = var("PG_PASSWORD", "outbox");
        Self {
            pg_base_url: format!("postgres://{pg_user}:{pg_password}@{pg_host}:{pg_port}"),
            relay_user: var("PG_RELAY_USER", &pg_user),
            relay_password: var("PG_RELAY_PASSWORD", &pg_password),
            pg_host,
            pg_port,
            pg_user,
            pg_password,
            kafka_brokers: var("KAFKA_BROKERS", "127.0.0.1:59092"),
        }
    }

    pub fn database_url(&self, db: &str) -> String {
        format!("{}/{db}", self.pg_base_url)
    }

    /// The role that owns a database migrated with `sql/<migrations>`: its service's
    /// least-privilege role on the secured stack (`PG_USERS_SERVICE_USER`, ...), `None`
    /// on the plain stack (the admin owns everything there).
    pub fn owner_for(&self, migrations: &str) -> Option<(String, String)> {
        let role = match migrations {
            "users_db" => "USERS_SERVICE",
            "transaction_db" => "TRANSACTION_SERVICE",
            _ => return None,
        };
        let user = std::env::var(format!("PG_{role}_USER")).ok()?;
        let password = std::env::var(format!("PG_{role}_PASSWORD")).ok()?;
        Some((user, password))
    }

    /// The URL of database `db` for `user`.
    pub fn url_as(&self, user: &str, password: &str, db: &str) -> String {
        format!(
            "postgres://{user}:{password}@{}:{}/{db}",
            self.pg_host, self.pg_port
        )
    }
}

/// The repository root (for `sql/`, `scripts/`, `docker-compose.yml`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repo root")
}

/// A short unique suffix for names a test owns.
pub fn unique_suffix() -> String {
    Uuid::new_v4().simple().to_string()[..12].to_string()
}

/// A Kafka topic name no other test uses.
pub fn unique_topic(prefix: &str) -> String {
    format!("t.{prefix}.{}", unique_suffix())
}

/// A database that exists for one test. Dropping it drops every replication slot on
/// it (terminating the walsender that holds one) and then the database itself, also
/// when the test panics: a leaked slot would retain WAL forever.
#[derive(Debug)]
pub struct TestDb {
    pub name: String,
    pub url: String,
    stack: Stack,
}

impl TestDb {
    /// Creates `t_<prefix>_<unique>` and applies `sql/outbox` and `sql/<migrations>` to it
    /// (as the services do: `service_postgres::with_outbox`). On the secured
    /// stack the database belongs to the service's least-privilege role, which migrates
    /// it and is who [`TestDb::url`] logs in as, and relay-cdc's role gets its rights on
    /// the outbox (`sql/grants.sql`), as in production.
    pub async fn create(prefix: &str, migrations: &str) -> anyhow::Result<Self> {
        let stack = Stack::from_env();
        let owner = stack.owner_for(migrations);
        let mut db = Self::create_owned(prefix, owner.as_ref().map(|(u, _)| u.as_str())).await?;
        if let Some((user, password)) = &owner {
            db.url = stack.url_as(user, password, &db.name);
        }
        let dir = repo_root().join("sql").join(migrations);
        let own = Migrator::new(dir.as_path())
            .await
            .with_context(|| format!("reading migrations in {}", dir.display()))?;
        let migrator = service_postgres::with_outbox(&own).await?;
        let mut conn = db.connect().await?;
        migrator
            .run(&mut conn)
            .await
            .context("applying migrations")?;
        conn.close().await?;
        if owner.is_some() {
            db.grant_relay().await?;
        }
        Ok(db)
    }

    /// Creates `t_<prefix>_<unique>` with no schema.
    pub async fn create_empty(prefix: &str) -> anyhow::Result<Self> {
        Self::create_owned(prefix, None).await
    }

    async fn create_owned(prefix: &str, owner: Option<&str>) -> anyhow::Result<Self> {
        let stack = Stack::from_env();
        let name = format!("t_{prefix}_{}", unique_suffix());
        let mut admin = PgConnection::connect(&stack.database_url("postgres"))
            .await
            .context(
                "connecting to the local stack's PostgreSQL (is `scripts/stack up` running?)",
            )?;
        let owner = owner.map(|o| format!(" owner \"{o}\"")).unwrap_or_default();
        sqlx::query(&format!("create database \"{name}\"{owner}"))
            .execute(&mut admin)
            .await?;
        admin.close().await?;
        Ok(Self {
            url: stack.database_url(&name),
            name,
            stack,
        })
    }

    /// relay-cdc's role's rights on this database's outbox: what `sql/grants.sql` gives
    /// (that file is a psql script; these are its statements).
    async fn grant_relay(&self) -> anyhow::Result<()> {
        let relay = &self.stack.relay_user;
        let mut admin = PgConnection::connect(&self.stack.database_url(&self.name)).await?;
        for statement in [
            format!("grant connect on database \"{}\" to \"{relay}\"", self.name),
            format!("grant usage on schema public to \"{relay}\""),
            format!("grant select, delete on table public.outbox to \"{relay}\""),
            format!("grant update (status, processed_at) on table public.outbox to \"{relay}\""),
        ] {
            sqlx::query(&statement)
                .execute(&mut admin)
                .await
                .with_context(|| statement.clone())?;
        }
        admin.close().await?;
        Ok(())
    }

    /// A connection as the admin (superuser): for what a test does behind the
    /// components' backs (moving a slot, terminating a backend).
    pub async fn connect_admin(&self) -> anyhow::Result<PgConnection> {
        Ok(PgConnection::connect(&self.stack.database_url(&self.name)).await?)
    }

    pub async fn connect(&self) -> anyhow::Result<PgConnection> {
        Ok(PgConnection::connect(&self.url).await?)
    }

    pub fn stack(&self) -> &Stack {
        &self.stack
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let url = self.stack.database_url("postgres");
        let name = self.name.clone();
        // Drop runs inside the test's runtime: do the async cleanup on a thread of its own.
        let result = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(drop_database(&url, &name))
        })
        .join();
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("testkit: could not drop database {}: {e:#}", self.name),
            Err(_) => eprintln!("testkit: cleanup of database {} panicked", self.name),
        }
    }
}

/// Drops every replication slot of database `name`, then the database.
pub async fn drop_database(admin_url: &str, name: &str) -> anyhow::Result<()> {
    let mut admin = PgConnection::connect(admin_url).await?;
    for _ in 0..50 {
        let slots: Vec<(String, Option<i32>)> = sqlx::query_as(
            "select slot_name::text, active_pid from pg_replication_slots where database = $1",
        )
        .bind(name)
        .fetch_all(&mut admin)
        .await?;
        if slots.is_empty() {
            break;
        }
        for (slot, pid) in slots {
            if let Some(pid) = pid {
                sqlx::query("select pg_terminate_backend($1)")
                    .bind(pid)
                    .execute(&mut admin)
                    .await?;
            }
            // Fails while the terminated walsender still holds the slot; the loop retries.
            let _ = sqlx::query("select pg_drop_replication_slot($1)")
                .bind(&slot)
                .execute(&mut admin)
                .await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sqlx::query(&format!("drop database if exists \"{name}\" with (force)"))
        .execute(&mut admin)
        .await?;
    Ok(())
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
    let mut c = ClientConfig::new();
    for (prop, value) in kafka_security() {
        c.set(prop, value);
    }
    c.set("bootstrap.servers", brokers);
    c
}

/// The stack's Kafka security as relay-cdc settings (`RELAY_KAFKA__PROPERTIES__*`), with
/// the relay's own principal (`KAFKA_RELAY_USERNAME`/`_PASSWORD` on the secured stack) in
/// place of the admin; nothing on the plain stack.
pub fn relay_kafka_env() -> Vec<(String, String)> {
    kafka_security()
        .into_iter()
        .map(|(prop, value)| {
            let value = match prop {
                "sasl.username" => std::env::var("KAFKA_RELAY_USERNAME").unwrap_or(value),
                "sasl.password" => std::env::var("KAFKA_RELAY_PASSWORD").unwrap_or(value),
                _ => value,
            };
            let key = prop.replace('.', "_").to_uppercase();
            (format!("RELAY_KAFKA__PROPERTIES__{key}"), value)
        })
        .collect()
}

/// The stack's PostgreSQL TLS (libpq's `PGSSLMODE`, `PGSSLROOTCERT`) as settings of the
/// relay's source `name`; nothing on the plain stack.
pub fn relay_source_tls_env(name: &str) -> Vec<(String, String)> {
    let p = format!("RELAY_SOURCES__{}__", name.to_uppercase());
    [("PGSSLMODE", "SSLMODE"), ("PGSSLROOTCERT", "SSLROOTCERT")]
        .into_iter()
        .filter_map(|(var, key)| std::env::var(var).ok().map(|v| (format!("{p}{key}"), v)))
        .collect()
}

/// Whether the tests run against the secured stack (`STACK_SECURITY=tls`).
pub fn secured() -> bool {
    std::env::var("STACK_SECURITY").is_ok_and(|v| v == "tls")
}

/// An admin client on the local broker.
pub fn kafka_admin(brokers: &str) -> anyhow::Result<AdminClient<DefaultClientContext>> {
    Ok(kafka_config(brokers).create()?)
}

/// Creates `topic` with `partitions` partitions (replication factor 1).
pub async fn create_topic(brokers: &str, topic: &str, partitions: i32) -> anyhow::Result<()> {
    create_topic_with_config(brokers, topic, partitions, &[]).await
}

/// Creates `topic` with `partitions` partitions (replication factor 1) and topic-level
/// settings such as `("max.message.bytes", "60000")`.
pub async fn create_topic_with_config(
    brokers: &str,
    topic: &str,
    partitions: i32,
    config: &[(&str, &str)],
) -> anyhow::Result<()> {
    let admin = kafka_admin(brokers)?;
    let new_topic = config.iter().fold(
        NewTopic::new(topic, partitions, TopicReplication::Fixed(1)),
        |t, (k, v)| t.set(k, v),
    );
    let results = admin
        .create_topics(
            &[new_topic],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await?;
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
    if let Ok(admin) = kafka_admin(brokers) {
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

/// Polls `check` every 50 ms until it returns `Some`, or fails after `timeout` with `what`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await? {
            return Ok(v);
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
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
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim() != "java" {
            bail!(
                "pid {pid} from {} is {comm:?}, not the broker's java",
                file.display()
            );
        }
        Ok(pid)
    }

    fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let pid = self.pid()?;
        let status = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()?;
        if !status.success() {
            bail!("kill -{signal} {pid} failed with {status}");
        }
        Ok(())
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

/// The first of `n` consecutive TCP ports, all free at the time of asking, below
/// Linux's ephemeral range (32768 and up): a server started on them later cannot find
/// one taken by a client's outgoing connection, as ports from [`free_port`] can (seen:
/// a Kafka controller of a test cluster failed to bind its port).
pub fn free_port_block(n: u16) -> u16 {
    // Spread by process and time so parallel tests rarely try the same block first.
    let seed = std::process::id() as u64
        ^ u64::from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos()),
        );
    (0..10_000u64)
        .map(|i| {
            20_000
                + ((seed.wrapping_mul(2_654_435_761) + i * 7_919) % (12_000 - u64::from(n))) as u16
        })
        .find(|p| (0..n).all(|i| std::net::TcpListener::bind(("127.0.0.1", p + i)).is_ok()))
        .expect("a block of free ports below 32768")
}

/// A TCP port free at the time of asking.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free local port")
}

/// Prometheus text: the sum of the series of `name` whose labels contain `label` (e.g. `outcome="committed"`).
pub fn sum_series(text: &str, name: &str, label: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        if !(rest.starts_with('{') || rest.starts_with(' ')) {
            continue;
        }
        let labels = rest
            .strip_prefix('{')
            .and_then(|r| r.split_once('}'))
            .map_or("", |(l, _)| l);
        if !labels.contains(label) {
            continue;
        }
        if let Some(v) = line
            .rsplit_once(' ')
            .and_then(|(_, v)| v.parse::<f64>().ok())
        {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}
