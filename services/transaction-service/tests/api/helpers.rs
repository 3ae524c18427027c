//! `spawn_app()` and what tests do with a running service: call its API, announce
//! users on Kafka, relay its outbox rows to Kafka the way relay-cdc does, and read what
//! it logged.
//!
//! The service runs with `OUTBOX_CAPTURE=table` unless a test says otherwise: the
//! helpers that read the `outbox` table ([`TestApp::record_of`], [`TestApp::relay`],
//! [`TestApp::created_event`], [`TestApp::events_of`], ...) are table-only. In message
//! mode a test reads the events through a slot (`crate::slot`) and relays them with
//! [`TestApp::record_of_envelope`].

use std::ops::Deref;
use std::time::Duration;

use anyhow::{bail, Context};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{json, Value};
use service_config::{ServerSettings, Vars};
use service_postgres::{DatabaseSettings, DatabaseTarget};
use service_telemetry::LogBuffer;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use testkit::{unique_suffix, wait_for, Stack, TestDb};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use transaction_service::config::{KafkaSecurity, KafkaSettings, Settings};
use transaction_service::Application;
use uuid::Uuid;

/// How long tests wait for an event to take effect.
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(30);

/// The relay's name for the service's database in the records tests publish.
pub const SOURCE: &str = "transaction_db";

/// The log lines of every service this test binary runs, as the binary logs them
/// (JSON lines, `service_telemetry::init_in_memory`).
pub fn logs() -> &'static LogBuffer {
    service_telemetry::init_in_memory("transaction-service")
}

/// A running service and everything a test needs around it.
pub struct TestApp {
    /// `http://127.0.0.1:<port>`.
    pub address: String,
    pub client: reqwest::Client,
    /// A pool of the test's own on the service's database.
    pub pool: PgPool,
    /// The test's `kafka.topic_template`: `user_topic` and `transaction_topic` follow it.
    pub topic_template: String,
    pub user_topic: String,
    pub transaction_topic: String,
    pub group_id: String,
    pub brokers: String,
    /// What the service was started with (for [`TestApp::spawn_instance`]).
    pub settings: Settings,
    producer: FutureProducer,
    shutdown: Option<oneshot::Sender<()>>,
    pub server: Option<JoinHandle<std::io::Result<()>>>,
    /// Dropped last: drops the database.
    pub db: TestDb,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Spawns the service on 127.0.0.1:0 against a fresh database and fresh topics, after
/// `adjust` had its say on the settings.
pub async fn spawn_app_with(adjust: impl FnOnce(&mut Settings)) -> TestApp {
    spawn_app_on(Stack::from_env().kafka_brokers, adjust).await
}

/// [`spawn_app`] with topics of `partitions` partitions.
pub async fn spawn_app_partitioned(partitions: i32) -> TestApp {
    spawn(Stack::from_env().kafka_brokers, partitions, |_| {}).await
}

/// [`spawn_app_with`] against the broker(s) at `brokers` (e.g. a
/// [`testkit::PrivateKafka`] the test stops and starts).
pub async fn spawn_app_on(brokers: String, adjust: impl FnOnce(&mut Settings)) -> TestApp {
    spawn(brokers, 1, adjust).await
}

/// The stack's Kafka security as the service reads it, with the consumer's own
/// principal (`KAFKA_CONSUMER_USERNAME`/`_PASSWORD` on the secured stack) in place of the
/// admin.
pub fn consumer_security() -> KafkaSecurity {
    let lookup = |name: &str| {
        let own = match name {
            "KAFKA_SASL_USERNAME" => std::env::var("KAFKA_CONSUMER_USERNAME").ok(),
            "KAFKA_SASL_PASSWORD" => std::env::var("KAFKA_CONSUMER_PASSWORD").ok(),
            _ => None,
        };
        own.or_else(|| std::env::var(name).ok())
    };
    KafkaSecurity::from_vars(&Vars::new(lookup)).expect("the stack's Kafka security settings")
}

async fn spawn(brokers: String, partitions: i32, adjust: impl FnOnce(&mut Settings)) -> TestApp {
    logs();
    let db = TestDb::create("tx", "transaction_db")
        .await
        .expect("test database");
    let topic_template = format!("t.{{aggregate_type}}.{}", unique_suffix());
    let user_topic = outbox::record::topic(&topic_template, "user", SOURCE);
    let transaction_topic = outbox::record::topic(&topic_template, "transaction", SOURCE);
    for topic in [&user_topic, &transaction_topic] {
        testkit::create_topic(&brokers, topic, partitions)
            .await
            .expect("test topic");
    }
    let group_id = format!("transaction-service-test-{}", unique_suffix());
    let mut settings = Settings {
        server: ServerSettings::local_ephemeral(),
        database: DatabaseSettings {
            target: DatabaseTarget::Url(db.url.clone().into()),
            max_connections: 10,
            acquire_timeout: Duration::from_secs(10),
            tls: Default::default(),
        },
        kafka: KafkaSettings {
            brokers: brokers.clone(),
            group_id: group_id.clone(),
            user_events_topic: user_topic.clone(),
            transaction_events_topic: transaction_topic.clone(),
            max_batch: transaction_service::config::DEFAULT_MAX_BATCH,
            stall_timeout: transaction_service::config::DEFAULT_STALL_TIMEOUT,
            security: consumer_security(),
        },
        capture: outbox::Capture::Table,
    };
    adjust(&mut settings);
    let Instance {
        address,
        shutdown,
        server,
    } = Instance::start(&settings).await;

    let pool = PgPoolOptions::new()
        .max_connections(20)
        .acquire_timeout(Duration::from_secs(60))
        .connect(&db.url)
        .await
        .expect("test pool");
    let producer: FutureProducer = testkit::kafka_config(&brokers)
        .set("message.timeout.ms", "10000")
        .create()
        .expect("test producer");

    TestApp {
        address,
        client: reqwest::Client::new(),
        pool,
        topic_template,
        user_topic,
        transaction_topic,
        group_id,
        brokers,
        settings,
        producer,
        shutdown,
        server,
        db,
    }
}

/// A metric's value in the `/metrics` of the service at `address`, 0 when the series
/// does not exist yet. `series` is the name with its labels as rendered.
pub async fn metric_at(client: &reqwest::Client, address: &str, series: &str) -> f64 {
    let text = client
        .get(format!("{address}/metrics"))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text");
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// One more running service: its address, and how to stop it.
pub struct Instance {
    pub address: String,
    shutdown: Option<oneshot::Sender<()>>,
    pub server: Option<JoinHandle<std::io::Result<()>>>,
}

impl Instance {
    async fn start(settings: &Settings) -> Self {
        let app = Application::build(settings).await.expect("service starts");
        let address = format!("http://{}", app.local_addr());
        let (shutdown, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(app.run_until_stopped(async move {
            let _ = stopped.await;
        }));
        Self {
            address,
            shutdown: Some(shutdown),
            server: Some(server),
        }
    }

    /// Asks the service to shut down and waits until it did.
    pub async fn stop(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(server) = self.server.take() {
            server
                .await
                .expect("server task")
                .expect("server stops cleanly");
        }
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    /// Another instance of the service on this one's database and topics, consuming in
    /// group `group_id` (this one's group: the two share the partitions; another
    /// group: both get every event, as two members do around a rebalance).
    pub async fn spawn_instance(&self, group_id: &str) -> Instance {
        let mut settings = self.settings.clone();
        settings.kafka.group_id = group_id.to_string();
        Instance::start(&settings).await
    }

    /// Asks the service to shut down, as SIGTERM would.
    pub fn shut_down(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }

    // --- HTTP ---

    pub async fn post_transaction(&self, body: &Value) -> reqwest::Response {
        self.client
            .post(self.url("/api/v1/transactions"))
            .json(body)
            .send()
            .await
            .expect("POST /api/v1/transactions")
    }

    pub async fn post_transaction_with_key(&self, body: &Value, key: &str) -> reqwest::Response {
        self.client
            .post(self.url("/api/v1/transactions"))
            .header("Idempotency-Key", key)
            .json(body)
            .send()
            .await
            .expect("POST /api/v1/transactions")
    }

    /// POSTs `body` verbatim with `content_type` (none when `None`).
    pub async fn post_raw(
        &self,
        body: impl Into<reqwest::Body>,
        content_type: Option<&str>,
    ) -> reqwest::Response {
        let mut request = self
            .client
            .post(self.url("/api/v1/transactions"))
            .body(body);
        if let Some(content_type) = content_type {
            request = request.header("Content-Type", content_type);
        }
        request.send().await.expect("POST /api/v1/transactions")
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    /// POSTs a transaction that must be accepted; returns its id.
    pub async fn create(&self, body: &Value) -> Uuid {
        let response = self.post_transaction(body).await;
        let status = response.status();
        let body: Value = response.json().await.expect("JSON body");
        assert_eq!(status, 202, "{body}");
        assert_eq!(body["status"], "PENDING");
        body["transactionId"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .expect("transactionId")
    }

    pub async fn transaction(&self, id: Uuid) -> Value {
        let response = self.get(&format!("/api/v1/transactions/{id}")).await;
        assert_eq!(response.status(), 200);
        response.json().await.expect("JSON body")
    }

    /// The balance as the API shows it, `None` when the account does not exist.
    pub async fn balance(&self, user_id: Uuid) -> Option<String> {
        let response = self.get(&format!("/api/v1/balance/{user_id}")).await;
        match response.status().as_u16() {
            404 => None,
            200 => {
                let body: Value = response.json().await.expect("JSON body");
                Some(
                    body["balance"]
                        .as_str()
                        .expect("balance string")
                        .to_string(),
                )
            }
            other => panic!("GET balance answered {other}"),
        }
    }

    /// Waits until transaction `id` left `PENDING`; returns it.
    pub async fn settled(&self, id: Uuid) -> Value {
        wait_for("the transaction to settle", EVENT_TIMEOUT, || async {
            let t = self.transaction(id).await;
            Ok((t["status"] != "PENDING").then_some(t))
        })
        .await
        .unwrap()
    }

    /// A metric's value in `/metrics`, 0 when the series does not exist yet.
    /// `series` is the name with its labels as rendered, e.g. `x_total{reason="malformed"}`.
    pub async fn metric(&self, series: &str) -> f64 {
        metric_at(&self.client, &self.address, series).await
    }

    // --- Kafka, as user-service + relay-cdc would publish ---

    /// Produces a record to `topic` with `headers`.
    pub async fn produce(&self, topic: &str, key: &str, payload: &[u8], headers: &[(&str, &str)]) {
        let mut owned = OwnedHeaders::new();
        for (name, value) in headers {
            owned = owned.insert(Header {
                key: name,
                value: Some(value.as_bytes()),
            });
        }
        self.producer
            .send(
                FutureRecord::to(topic)
                    .key(key)
                    .payload(payload)
                    .headers(owned),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .expect("record delivered");
    }

    /// Publishes a `UserCreated` for `user_id` like relay-cdc publishes user-service's
    /// outbox row; returns the event id.
    pub async fn announce_user(&self, user_id: Uuid) -> Uuid {
        self.announce_user_with(user_id, &[]).await
    }

    /// [`TestApp::announce_user`] with `extra` headers (e.g. a `traceparent`).
    pub async fn announce_user_with(&self, user_id: Uuid, extra: &[(&str, &str)]) -> Uuid {
        let event_id = Uuid::now_v7();
        let payload = json!({
            "id": user_id,
            "email": format!("{}@example.com", user_id.simple()),
            "createdAt": chrono::Utc::now(),
        });
        self.produce(
            &self.user_topic,
            &user_id.to_string(),
            payload.to_string().as_bytes(),
            &[
                (outbox::headers::EVENT_ID, event_id.to_string().as_str()),
                (outbox::headers::EVENT_TYPE, "UserCreated"),
                (outbox::headers::AGGREGATE_TYPE, "user"),
                (outbox::headers::AGGREGATE_ID, user_id.to_string().as_str()),
            ]
            .into_iter()
            .chain(extra.iter().copied())
            .collect::<Vec<_>>(),
        )
        .await;
        event_id
    }

    /// Publishes a `TransactionCreated` for a deposit of `amount` into `to`'s account
    /// with id `transaction_id`, whether or not that transaction exists; returns the
    /// event id.
    pub async fn announce_deposit(&self, transaction_id: Uuid, to: Uuid, amount: &str) -> Uuid {
        let event_id = Uuid::now_v7();
        let payload = json!({
            "transactionId": transaction_id, "amount": amount, "fromUserId": null,
            "toUserId": to, "description": null, "createdAt": chrono::Utc::now(),
        });
        let headers = [
            (outbox::headers::EVENT_ID, event_id.to_string()),
            (outbox::headers::EVENT_TYPE, "TransactionCreated".into()),
        ];
        let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let key = transaction_id.to_string();
        self.produce(
            &self.transaction_topic,
            &key,
            payload.to_string().as_bytes(),
            &headers,
        )
        .await;
        event_id
    }

    /// Announces `n` new users and waits until all their accounts are open.
    pub async fn open_accounts(&self, n: usize) -> Vec<Uuid> {
        let users: Vec<Uuid> = (0..n).map(|_| Uuid::now_v7()).collect();
        for user in &users {
            self.announce_user(*user).await;
        }
        wait_for("accounts to open", EVENT_TIMEOUT, || async {
            let open: i64 =
                sqlx::query_scalar("select count(*) from accounts where user_id = any($1)")
                    .bind(&users)
                    .fetch_one(&self.pool)
                    .await?;
            Ok((open == n as i64).then_some(()))
        })
        .await
        .unwrap();
        users
    }

    /// Publishes outbox row `outbox_id` exactly as relay-cdc would ([`TestApp::record_of`]).
    pub async fn relay(&self, outbox_id: Uuid) {
        self.publish(&self.record_of(outbox_id).await).await;
    }

    /// The record relay-cdc makes of outbox row `outbox_id` ([`outbox::record`], the
    /// relay's own mapping), with the test's topic template and, standing in for the
    /// replication slot's, commit LSN `0/0` and the current time.
    pub async fn record_of(&self, outbox_id: Uuid) -> OutboxRecord {
        type Columns = (
            String,
            String,
            String,
            String,
            Option<String>,
            Option<String>,
            Option<String>,
        );
        let (aggregate_type, aggregate_id, event_type, payload, traceparent, tracestate, own): Columns =
            sqlx::query_as(
                "select aggregate_type, aggregate_id, event_type, payload::text, traceparent, \
                 tracestate, headers::text from outbox where id = $1",
            )
            .bind(outbox_id)
            .fetch_one(&self.pool)
            .await
            .expect("outbox row");
        let own =
            outbox::record::own_headers(traceparent, tracestate, own.as_deref().map(str::as_bytes))
                .expect("the row's own headers");
        let id = outbox_id.to_string();
        self.record_of_row(outbox::record::Row {
            id: &id,
            aggregate_type: &aggregate_type,
            aggregate_id: &aggregate_id,
            event_type: &event_type,
            payload: payload.as_bytes(),
            headers: &own,
        })
    }

    /// The record of `row` with the test's topic template, commit LSN `0/0` and the
    /// current time.
    fn record_of_row(&self, row: outbox::record::Row) -> OutboxRecord {
        let time = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        let commit = outbox::record::Commit {
            source: SOURCE,
            lsn: "0/0",
            time: &time,
        };
        OutboxRecord(row.record(&self.topic_template, &commit))
    }

    /// The record relay-cdc makes of a logical decoding message's `envelope` (message
    /// capture), as [`TestApp::record_of`] does of a row.
    pub fn record_of_envelope(&self, envelope: &[u8]) -> OutboxRecord {
        let event = outbox::message::decode(envelope).expect("an envelope");
        let own: Vec<(String, String)> = event
            .own_headers()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        let id = event.id.to_string();
        self.record_of_row(outbox::record::Row {
            id: &id,
            aggregate_type: event.aggregate_type,
            aggregate_id: event.aggregate_id,
            event_type: event.event_type,
            payload: event.payload,
            headers: &own,
        })
    }

    /// Produces `record`.
    pub async fn publish(&self, record: &OutboxRecord) {
        let headers: Vec<(&str, &str)> = record
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        self.produce(&record.topic, &record.key, &record.value, &headers)
            .await;
    }

    /// `(traceparent, tracestate)` of outbox row `outbox_id`.
    pub async fn trace_of(&self, outbox_id: Uuid) -> (Option<String>, Option<String>) {
        sqlx::query_as("select traceparent, tracestate from outbox where id = $1")
            .bind(outbox_id)
            .fetch_one(&self.pool)
            .await
            .expect("outbox row")
    }

    /// The id of transaction `id`'s `TransactionCreated` outbox row.
    pub async fn created_event(&self, id: Uuid) -> Uuid {
        sqlx::query_scalar(
            "select id from outbox where aggregate_id = $1 and event_type = 'TransactionCreated'",
        )
        .bind(id.to_string())
        .fetch_one(&self.pool)
        .await
        .expect("TransactionCreated outbox row")
    }

    /// Relays transaction `id`'s `TransactionCreated` and waits until it settled.
    pub async fn relay_and_settle(&self, id: Uuid) -> Value {
        self.relay(self.created_event(id).await).await;
        self.settled(id).await
    }

    /// Deposits `amount` into `user_id`'s account through the API and Kafka.
    pub async fn deposit(&self, user_id: Uuid, amount: Value) {
        let id = self
            .create(&json!({"amount": amount, "toUserId": user_id, "description": "deposit"}))
            .await;
        let t = self.relay_and_settle(id).await;
        assert_eq!(t["status"], "COMPLETED", "{t}");
    }

    /// `(event_type, payload)` of every outbox row of aggregate `id`, oldest first.
    pub async fn events_of(&self, id: Uuid) -> Vec<(Uuid, String, Value)> {
        sqlx::query_as(
            "select id, event_type, payload from outbox where aggregate_type = 'transaction' \
             and aggregate_id = $1 order by id",
        )
        .bind(id.to_string())
        .fetch_all(&self.pool)
        .await
        .expect("outbox rows")
    }

    /// The offset the service's consumer group committed on partition 0 of `topic`.
    pub async fn committed_offset(&self, topic: &str) -> anyhow::Result<Option<i64>> {
        let brokers = self.brokers.clone();
        let group = self.group_id.clone();
        let topic = topic.to_string();
        tokio::task::spawn_blocking(move || {
            let consumer: BaseConsumer = testkit::kafka_config(&brokers)
                .set("group.id", &group)
                .set("enable.auto.commit", "false")
                .create()?;
            let mut list = TopicPartitionList::new();
            list.add_partition(&topic, 0);
            let committed = consumer
                .committed_offsets(list, Duration::from_secs(5))
                .context("reading committed offsets")?;
            let offset = committed.find_partition(&topic, 0).map(|p| p.offset());
            Ok(match offset {
                Some(Offset::Offset(o)) => Some(o),
                Some(Offset::Invalid) | None => None,
                Some(other) => bail!("unexpected committed offset {other:?}"),
            })
        })
        .await?
    }
}

/// A record as [`TestApp::record_of`] makes it.
#[derive(Debug, Clone)]
pub struct OutboxRecord(pub outbox::record::Record);

impl Deref for OutboxRecord {
    type Target = outbox::record::Record;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl OutboxRecord {
    /// The record without its trace headers, and with `traceparent` instead when given.
    pub fn with_traceparent(mut self, traceparent: Option<&str>) -> Self {
        self.0.headers.retain(|(name, _)| {
            name != outbox::headers::TRACEPARENT && name != outbox::headers::TRACESTATE
        });
        if let Some(value) = traceparent {
            self.0
                .headers
                .push((outbox::headers::TRACEPARENT.to_string(), value.to_string()));
        }
        self
    }
}

/// A small deterministic pseudo-random sequence (xorshift64*), so concurrency tests
/// need no extra crate and are reproducible from their seed.
pub struct Sequence(u64);

impl Sequence {
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}
