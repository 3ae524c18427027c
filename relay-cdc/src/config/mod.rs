//! Configuration: typed [`Settings`] from a TOML file plus `RELAY_`-prefixed environment
//! overrides (layered in `load.rs`), validated once at start (`validate.rs`) with errors
//! that name the offending key.
//!
//! Environment keys use `__` for nesting: `RELAY_KAFKA__BROKERS`, `RELAY_ADMIN__LISTEN`,
//! `RELAY_PIPELINE__MAX_IN_FLIGHT_RECORDS`. Sources are addressed by name:
//! `RELAY_SOURCES__USERS_DB__PASSWORD` sets `password` of the source named `users_db`
//! (created if the file has none by that name). Kafka properties are addressed with
//! `_` for `.`: `RELAY_KAFKA__PROPERTIES__LINGER_MS` sets `linger.ms`.
//!
//! Secrets (a source's `password`, the SASL password) are [`Password`]s: never in Debug
//! output; they can come from files (`password_file`, `kafka.sasl_password_file`).

mod format;
mod load;
mod source;
mod validate;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use thiserror::Error;

pub use self::format::{CloudEventsSettings, DebeziumOptions, FormatName};
pub use self::source::{Capture, ColumnSettings, Endpoint, Marking, Password, SourceSettings};
pub use crate::tls::SslMode;

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {message}")]
    Parse { path: String, message: String },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
    #[error("`{key}`: {message}")]
    Key { key: String, message: String },
}

fn key_err(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Key {
        key: key.into(),
        message: message.into(),
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    #[serde(default)]
    pub admin: AdminSettings,
    pub kafka: KafkaSettings,
    #[serde(default)]
    pub pipeline: PipelineSettings,
    /// In the file a list (`[[sources]]`); see `load.rs` for how the environment adds to it.
    #[serde(default, deserialize_with = "load::sources_in_order")]
    pub sources: Vec<SourceSettings>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSettings {
    /// Where `/metrics`, `/healthz` and `/readyz` listen.
    #[serde(default = "default_admin_listen")]
    pub listen: String,
}

impl Default for AdminSettings {
    fn default() -> Self {
        Self {
            listen: default_admin_listen(),
        }
    }
}

fn default_admin_listen() -> String {
    "127.0.0.1:9100".into()
}

/// How records reach Kafka.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Delivery {
    /// An idempotent producer; after a crash or an outage the unconfirmed tail is sent
    /// again (same event ids): consumers deduplicate.
    AtLeastOnce,
    /// A transactional producer: each Kafka transaction holds whole PostgreSQL
    /// transactions and a checkpoint of the last one's end LSN; a restart skips what the
    /// checkpoint covers. A `read_committed` consumer sees every row once.
    ExactlyOnce,
}

impl Delivery {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AtLeastOnce => "at-least-once",
            Self::ExactlyOnce => "exactly-once",
        }
    }
}

/// What to do with a record Kafka can never accept (e.g. larger than the broker's limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PoisonPolicy {
    /// Stop the source: nothing after it is published until an operator acts.
    Stop,
    /// Publish a record to the dead-letter topic (the event's headers, an `error`
    /// header, and the payload when the dead-letter topic takes it) and go on; the
    /// outbox row gets status `DEAD_LETTERED`.
    DeadLetter,
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSettings {
    pub brokers: String,
    /// Topic per record; `{aggregate_type}` and `{source}` are replaced.
    #[serde(default = "default_topic_template")]
    pub topic_template: String,
    /// Records whose key + value exceed this are poison (the broker's default limit).
    #[serde(default = "default_max_record_bytes")]
    pub max_record_bytes: usize,
    #[serde(default = "default_poison")]
    pub poison: PoisonPolicy,
    #[serde(default = "default_dead_letter_topic")]
    pub dead_letter_topic: String,
    /// Create a missing topic (through the admin API) before the first record to it, so
    /// brokers with `auto.create.topics.enable=false` work.
    #[serde(default = "yes")]
    pub create_topics: bool,
    /// Partitions and replication factor of topics the relay creates (-1: broker default).
    #[serde(default = "broker_default")]
    pub topic_partitions: i32,
    #[serde(default = "broker_default")]
    pub topic_replication_factor: i32,
    #[serde(default = "default_delivery")]
    pub delivery: Delivery,
    /// Exactly-once: the producer's `transactional.id` is this prefix + the source name,
    /// shared by the active and the standby relay of a source (so one fences the other).
    #[serde(default = "default_transactional_id_prefix")]
    pub transactional_id_prefix: String,
    /// Exactly-once: the compacted topic holding each source's last committed end LSN.
    #[serde(default = "default_checkpoint_topic")]
    pub checkpoint_topic: String,
    /// Exactly-once: a Kafka transaction is committed at the first PostgreSQL commit
    /// after it is this old or holds this many records. A PostgreSQL transaction is never
    /// split, however large.
    #[serde(default = "default_transaction_max_ms")]
    pub transaction_max_ms: u64,
    #[serde(default = "default_transaction_max_records")]
    pub transaction_max_records: usize,
    /// Exactly-once: the producer's `transaction.timeout.ms`: the broker aborts a Kafka
    /// transaction open longer, so one PostgreSQL transaction must stream within it (at
    /// most the broker's `transaction.max.timeout.ms`, 15 min by default).
    #[serde(default = "default_transaction_timeout_ms")]
    pub transaction_timeout_ms: u64,
    /// Extra librdkafka properties, e.g. `"linger.ms" = "5"`, or the security ones
    /// (`security.protocol`, `sasl.mechanism`, `sasl.username`, `sasl.password`,
    /// `ssl.ca.location`, ...), which every Kafka client of the relay gets. The safety
    /// settings (idempotence, acks, message timeout) cannot be overridden here.
    /// `sasl.password` is taken out of them at load into [`KafkaSettings::sasl_password`].
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// A file holding `sasl.password` (Docker and Kubernetes secrets); read once at
    /// start, a trailing newline dropped. Not together with `properties."sasl.password"`.
    #[serde(default)]
    pub sasl_password_file: Option<PathBuf>,
    /// `sasl.password`, from `properties` or `sasl_password_file`: every client gets it
    /// with the connection properties.
    #[serde(skip)]
    pub sasl_password: Option<Password>,
    /// The records' format (see [`crate::format`]): `native` (default), `debezium` or
    /// `cloudevents`; a source may choose another (`sources[].format`).
    #[serde(default)]
    pub format: FormatName,
    /// The `debezium` format's options: Debezium's outbox event router options by their
    /// names (`route.by.field`, ...) and the converters (`key.converter`, ...).
    #[serde(default)]
    pub debezium: DebeziumOptions,
    /// The `cloudevents` format's options.
    #[serde(default)]
    pub cloudevents: CloudEventsSettings,
    /// Each source's own `format`, gathered at load (see [`KafkaSettings::record_format`]).
    #[serde(skip)]
    pub source_formats: BTreeMap<String, FormatName>,
}

impl std::fmt::Debug for KafkaSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSettings")
            .field("brokers", &self.brokers)
            .field("topic_template", &self.topic_template)
            .field("delivery", &self.delivery)
            .field("format", &self.format)
            .field("poison", &self.poison)
            .field("properties", &self.properties)
            .field("sasl_password", &self.sasl_password)
            .finish_non_exhaustive()
    }
}

fn default_topic_template() -> String {
    "outbox.event.{aggregate_type}".into()
}
fn default_max_record_bytes() -> usize {
    1_000_000
}
fn broker_default() -> i32 {
    -1
}
fn default_delivery() -> Delivery {
    Delivery::AtLeastOnce
}
fn default_transactional_id_prefix() -> String {
    "relay-cdc-".into()
}
fn default_checkpoint_topic() -> String {
    "relay-cdc.checkpoints".into()
}
fn default_transaction_max_ms() -> u64 {
    100
}
fn default_transaction_max_records() -> usize {
    10_000
}
fn default_transaction_timeout_ms() -> u64 {
    60_000
}
fn default_poison() -> PoisonPolicy {
    PoisonPolicy::Stop
}
fn default_dead_letter_topic() -> String {
    "outbox.dead-letter".into()
}
fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineSettings {
    /// Records produced but not yet acked and marked; past this the relay stops
    /// reading the slot so WAL waits in PostgreSQL, not in memory.
    #[serde(default = "default_max_in_flight_records")]
    pub max_in_flight_records: usize,
    /// Memory those records hold: key + payload + a fixed overhead per record
    /// (`sink::RECORD_OVERHEAD_BYTES`), so small records are bounded by memory too.
    #[serde(default = "default_max_in_flight_bytes")]
    pub max_in_flight_bytes: usize,
    /// PROCESSED marking: a batch is written at this many rows or after this long.
    #[serde(default = "default_mark_batch_size")]
    pub mark_batch_size: usize,
    #[serde(default = "default_mark_interval_ms")]
    pub mark_interval_ms: u64,
    /// Batches marked at once, each on a connection of its own (confirmed in order).
    #[serde(default = "default_mark_connections")]
    pub mark_connections: usize,
    /// How often the confirmed position is reported to PostgreSQL.
    #[serde(default = "default_status_interval_ms")]
    pub status_interval_ms: u64,
    /// How often a heartbeat message is written to each source's WAL (lag in seconds
    /// stays truthful when idle, and quiet outboxes still advance the slot).
    #[serde(default = "default_heartbeat_interval_ms")]
    pub heartbeat_interval_ms: u64,
    /// Delete PROCESSED rows older than this many seconds (0 = keep forever).
    #[serde(default)]
    pub retention_seconds: u64,
    /// On SIGTERM, how long to wait for outstanding acks before giving up on them.
    #[serde(default = "default_shutdown_timeout_ms")]
    pub shutdown_timeout_ms: u64,
    /// Upper bound of the reconnect backoff.
    #[serde(default = "default_max_backoff_ms")]
    pub max_backoff_ms: u64,
    /// A source with work whose oldest wait (Kafka ack, marking, a heartbeat coming
    /// back, a restart) is older than this is stalled: `/healthz` 503, a WARN, a metric.
    #[serde(default = "default_stall_timeout_ms")]
    pub stall_timeout_ms: u64,
    /// Bounds of one PROCESSED update (an attempt past them fails and is retried).
    #[serde(default = "default_mark_statement_timeout_ms")]
    pub mark_statement_timeout_ms: u64,
    #[serde(default = "default_mark_lock_timeout_ms")]
    pub mark_lock_timeout_ms: u64,
    /// How often the audit checks the outbox table against the slot (see
    /// `pipeline::audit`): PENDING rows that committed before a position the session
    /// confirmed were skipped by the slot and are published. 0 turns it off.
    #[serde(default = "default_audit_interval_ms")]
    pub audit_interval_ms: u64,
    /// The audit notes only PENDING rows created longer ago than this (rows younger are
    /// most likely in flight and would only lengthen the round).
    #[serde(default = "default_audit_grace_ms")]
    pub audit_grace_ms: u64,
    /// PENDING rows one audit round notes at most (oldest first).
    #[serde(default = "default_audit_max_rows")]
    pub audit_max_rows: usize,
}

impl Default for PipelineSettings {
    fn default() -> Self {
        toml::Value::Table(Default::default())
            .try_into()
            .expect("defaults deserialize")
    }
}

fn default_max_in_flight_records() -> usize {
    // A sanity cap; memory is bounded by `max_in_flight_bytes`, which charges every
    // record its per-record overhead too (`sink::RECORD_OVERHEAD_BYTES`).
    100_000
}
fn default_max_in_flight_bytes() -> usize {
    // With ~12 MiB of base RSS this keeps the relay under 64 MiB through a broker
    // outage: ~19,000 records of 100 bytes, ~2,400 of 16 KiB, still more than a
    // second of this machine's end-to-end throughput.
    40 * 1024 * 1024
}
fn default_mark_batch_size() -> usize {
    1000
}
fn default_mark_interval_ms() -> u64 {
    100
}
fn default_mark_connections() -> usize {
    4
}
fn default_status_interval_ms() -> u64 {
    1000
}
fn default_heartbeat_interval_ms() -> u64 {
    2000
}
fn default_shutdown_timeout_ms() -> u64 {
    10_000
}
fn default_max_backoff_ms() -> u64 {
    5_000
}
fn default_stall_timeout_ms() -> u64 {
    60_000
}
fn default_mark_statement_timeout_ms() -> u64 {
    30_000
}
fn default_mark_lock_timeout_ms() -> u64 {
    5_000
}
fn default_audit_interval_ms() -> u64 {
    30_000
}
fn default_audit_grace_ms() -> u64 {
    5_000
}
fn default_audit_max_rows() -> usize {
    10_000
}

impl PipelineSettings {
    pub fn mark_interval(&self) -> Duration {
        Duration::from_millis(self.mark_interval_ms)
    }
    pub fn status_interval(&self) -> Duration {
        Duration::from_millis(self.status_interval_ms)
    }
    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.heartbeat_interval_ms)
    }
    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_millis(self.shutdown_timeout_ms)
    }
    pub fn max_backoff(&self) -> Duration {
        Duration::from_millis(self.max_backoff_ms)
    }
    pub fn stall_timeout(&self) -> Duration {
        Duration::from_millis(self.stall_timeout_ms)
    }
    /// The audit's interval; `None` when it is off (`audit_interval_ms = 0`).
    pub fn audit_interval(&self) -> Option<Duration> {
        (self.audit_interval_ms > 0).then(|| Duration::from_millis(self.audit_interval_ms))
    }
    pub fn audit_grace(&self) -> Duration {
        Duration::from_millis(self.audit_grace_ms)
    }
}

/// librdkafka properties about reaching and authenticating to the cluster, as opposed
/// to producing: every client the relay makes (producer, admin, metadata probes,
/// checkpoint readers) gets these from `kafka.properties`, so a secured cluster is
/// configured once.
const CONNECTION_PROPERTY_PREFIXES: [&str; 12] = [
    "security.",
    "sasl.",
    "ssl.",
    "ssl_",
    "enable.ssl.",
    "https.",
    "socket.",
    "broker.address.",
    "client.dns.lookup",
    "client.rack",
    "connections.max.idle.ms",
    "enable.sasl.",
];

impl KafkaSettings {
    /// A client configuration with the brokers, a client id and the connection
    /// properties: what the admin and checkpoint clients start from.
    pub fn client_config(&self, client_id: &str) -> rdkafka::ClientConfig {
        let mut c = rdkafka::ClientConfig::new();
        c.set("client.id", client_id);
        for (k, v) in self.connection_properties() {
            c.set(k, v);
        }
        c.set("bootstrap.servers", &self.brokers);
        c
    }

    /// The properties every Kafka client of the relay gets (see
    /// `CONNECTION_PROPERTY_PREFIXES`), the SASL password last when there is one.
    pub fn connection_properties(&self) -> impl Iterator<Item = (&str, &str)> {
        self.properties
            .iter()
            .filter(|(k, _)| {
                CONNECTION_PROPERTY_PREFIXES
                    .iter()
                    .any(|p| k.starts_with(p))
            })
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .chain(self.sasl_password_property())
    }

    /// `sasl.password` as a property, when there is one.
    pub fn sasl_password_property(&self) -> Option<(&str, &str)> {
        let password = self.sasl_password.as_ref()?;
        Some(("sasl.password", password.expose_secret()))
    }
}

/// Producer properties the relay sets itself: changing them could skip or reorder records.
pub const FIXED_PRODUCER_PROPERTIES: [&str; 8] = [
    "enable.idempotence",
    "transactional.id",
    "transaction.timeout.ms",
    "acks",
    "message.timeout.ms",
    "delivery.timeout.ms",
    "max.in.flight.requests.per.connection",
    "bootstrap.servers",
];

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn source<'a>(s: &'a Settings, name: &str) -> &'a SourceSettings {
        s.sources
            .iter()
            .find(|x| x.name == name)
            .expect("a source of that name")
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn load_str(toml: &str, vars: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let dir = std::env::temp_dir().join(format!("relay-cfg-{}", uuid::Uuid::new_v4()));
        std::fs::write(&dir, toml).unwrap();
        let r = Settings::load(Some(&dir), env(vars));
        std::fs::remove_file(&dir).unwrap();
        r
    }

    const BASE: &str = r#"
[kafka]
brokers = "127.0.0.1:9092"

[[sources]]
name = "users_db"
user = "outbox"
database = "users_db"
"#;

    #[test]
    fn a_table_mapping_and_its_marking_load_from_the_file_and_the_environment() {
        let file = format!(
            "{BASE}table = \"outboxevent\"\nmarking = \"none\"\n\n[sources.columns]\n\
             aggregate_type = \"aggregatetype\"\naggregate_id = \"aggregateid\"\n\
             extra = [\"tenant\"]\n"
        );
        let s = load_str(
            &file,
            &[
                ("RELAY_SOURCES__USERS_DB__COLUMNS__EVENT_TYPE", "type"),
                ("RELAY_SOURCES__USERS_DB__COLUMNS__EXTRA", "tenant,shard"),
            ],
        )
        .unwrap();
        let src = &s.sources[0];
        assert_eq!(src.marking(), Marking::None);
        let t = src.outbox_table();
        assert_eq!(
            (t.schema.as_str(), t.name.as_str()),
            ("public", "outboxevent")
        );
        assert_eq!(
            (
                t.columns.aggregate_type.as_str(),
                t.columns.event_type.as_str(),
                t.columns.payload.as_str()
            ),
            ("aggregatetype", "type", "payload")
        );
        assert_eq!(t.columns.others, ["tenant", "shard"]);
        // The default is the relay's own table, marked by status.
        let d = load_str(BASE, &[]).unwrap();
        assert!(d.sources[0].columns.is_default());
        assert_eq!(d.sources[0].marking(), Marking::Status);
    }

    #[test]
    fn a_column_mapping_that_cannot_work_is_refused_by_key() {
        for (vars, key, says) in [
            (
                [("RELAY_SOURCES__USERS_DB__COLUMNS__AGGREGATE_ID", "id")],
                "sources[0].columns.aggregate_id",
                "already mapped as id",
            ),
            (
                [("RELAY_SOURCES__USERS_DB__COLUMNS__PAYLOAD", "pay load")],
                "sources[0].columns.payload",
                "letters, digits",
            ),
            (
                [("RELAY_SOURCES__USERS_DB__COLUMNS__EXTRA", "event_type")],
                "sources[0].columns.extra",
                "already mapped as event_type",
            ),
            (
                [("RELAY_SOURCES__USERS_DB__MARKING", "sometimes")],
                "marking",
                "status",
            ),
        ] {
            let e = load_str(BASE, &vars).unwrap_err().to_string();
            assert!(e.contains(key) && e.contains(says), "{e}");
        }
        let e = load_str(BASE, &[("RELAY_SOURCES__USERS_DB__COLUMNS__NOPE", "x")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("nope"), "{e}");
    }

    #[test]
    fn a_minimal_file_gets_defaults() {
        let s = load_str(BASE, &[]).unwrap();
        assert_eq!(s.sources[0].slot_name(), "relay_users_db");
        assert_eq!(s.sources[0].port, 5432);
        assert_eq!(s.kafka.topic_template, "outbox.event.{aggregate_type}");
        assert_eq!(s.kafka.poison, PoisonPolicy::Stop);
        assert_eq!(s.pipeline.mark_batch_size, 1000);
        assert_eq!(
            s.pipeline.audit_interval(),
            Some(Duration::from_secs(30)),
            "the audit is on by default"
        );
        assert_eq!(s.pipeline.audit_grace(), Duration::from_secs(5));
        assert_eq!(s.pipeline.audit_max_rows, 10_000);
    }

    #[test]
    fn an_audit_interval_of_zero_turns_the_audit_off() {
        let s = load_str(BASE, &[("RELAY_PIPELINE__AUDIT_INTERVAL_MS", "0")]).unwrap();
        assert_eq!(s.pipeline.audit_interval(), None);
        let e = load_str(BASE, &[("RELAY_PIPELINE__AUDIT_MAX_ROWS", "0")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("pipeline.audit_max_rows"), "{e}");
    }

    #[test]
    fn environment_overrides_file_values_and_adds_sources() {
        let s = load_str(
            BASE,
            &[
                ("RELAY_SOURCES__USERS_DB__PASSWORD", "12345"),
                ("RELAY_SOURCES__USERS_DB__PORT", "6543"),
                ("RELAY_SOURCES__LEDGER__USER", "u"),
                ("RELAY_SOURCES__LEDGER__DATABASE", "ledger"),
                ("RELAY_KAFKA__BROKERS", "k1:9092,k2:9092"),
                ("RELAY_PIPELINE__MARK_BATCH_SIZE", "50"),
                ("RELAY_KAFKA__PROPERTIES__LINGER_MS", "7"),
                ("UNRELATED", "x"),
            ],
        )
        .unwrap();
        assert_eq!(s.sources[0].password.expose_secret(), "12345");
        assert_eq!(s.sources[0].port, 6543);
        assert_eq!(s.sources[1].name, "ledger");
        assert_eq!(s.kafka.brokers, "k1:9092,k2:9092");
        assert_eq!(s.pipeline.mark_batch_size, 50);
        assert_eq!(
            s.kafka.properties.get("linger.ms").map(String::as_str),
            Some("7")
        );
    }

    #[test]
    fn a_source_may_name_several_servers() {
        let s = load_str(
            BASE,
            &[(
                "RELAY_SOURCES__USERS_DB__HOSTS",
                "pg-a:5432, pg-b:6432,[::1]:7432",
            )],
        )
        .unwrap();
        let e = s.sources[0].endpoints();
        assert_eq!(
            e.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["pg-a:5432", "pg-b:6432", "[::1]:7432"]
        );
        assert_eq!(e[2].host, "::1");
        assert_eq!(
            s.sources[0].failover_slot, None,
            "unset: on where supported"
        );
        let single = load_str(BASE, &[]).unwrap();
        assert_eq!(single.sources[0].endpoints_text(), "127.0.0.1:5432");
        for bad in ["pg-a", "pg-a:0", ":5432", "pg-a:http"] {
            let err = load_str(BASE, &[("RELAY_SOURCES__USERS_DB__HOSTS", bad)])
                .unwrap_err()
                .to_string();
            assert!(err.contains("sources[0].hosts[0]"), "{bad}: {err}");
        }
    }

    #[test]
    fn errors_name_the_bad_key() {
        let e = load_str(BASE, &[("RELAY_PIPELINE__MARK_BATCH_SIZE", "0")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("pipeline.mark_batch_size"), "{e}");
        let e = load_str(BASE, &[("RELAY_ADMIN__LISTEN", "nowhere")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("admin.listen"), "{e}");
        let e = load_str(&BASE.replace("users_db\"\nuser", "users db\"\nuser"), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("sources[0].name"), "{e}");
        let e = load_str(
            BASE,
            &[("RELAY_KAFKA__PROPERTIES__ENABLE_IDEMPOTENCE", "false")],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("kafka.properties.enable.idempotence"), "{e}");
        let e = load_str(&format!("{BASE}\nbogus = 1\n"), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("bogus"), "{e}");
        let e = load_str(BASE, &[("RELAY_SOURCES__USERS_DB__PORT", "seventy")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("port") || e.contains("u16"), "{e}");
        let e = load_str(BASE, &[("RELAY_NOPE", "1")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("RELAY_NOPE"), "{e}");
    }

    #[test]
    fn a_bad_value_names_its_key_and_where_it_was_set() {
        let e = load_str(&format!("{BASE}port = \"seventy\"\n"), &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`sources[0].port`") && e.contains("seventy") && e.contains("(in /"),
            "{e}"
        );
        let e = load_str(BASE, &[("RELAY_SOURCES__USERS_DB__PORT", "seventy")])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`sources[0].port`") && e.contains("set by RELAY_SOURCES__USERS_DB__PORT"),
            "{e}"
        );
        let e = load_str(
            BASE,
            &[
                ("RELAY_SOURCES__LEDGER__USER", "u"),
                ("RELAY_SOURCES__LEDGER__DATABASE", "ledger"),
                ("RELAY_SOURCES__LEDGER__SSLMODE", "sometimes"),
            ],
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("`sources[1].sslmode`")
                && e.contains("verify-full")
                && e.contains("set by RELAY_SOURCES__LEDGER__SSLMODE"),
            "{e}"
        );
        let e = load_str(&BASE.replace("[kafka]", "[kafka]\npoison = \"skip\""), &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`kafka.poison`") && e.contains("dead-letter"),
            "{e}"
        );
        let e = load_str(BASE, &[("RELAY_KAFKA__CREATE_TOPICS", "maybe")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("`kafka.create_topics`"), "{e}");
    }

    #[test]
    fn unknown_keys_are_refused_in_the_file_and_the_environment() {
        for vars in [
            &[("RELAY_KAFKA__BOGUS", "1")][..],
            &[("RELAY_SOURCES__USERS_DB__BOGUS", "1")],
            &[("RELAY_BOGUS__X", "1")],
            &[("RELAY_BOGUS", "1")],
        ] {
            let e = load_str(BASE, vars).unwrap_err().to_string();
            assert!(e.contains(vars[0].0), "{e}");
        }
        let e = load_str(&BASE.replace("[kafka]", "[kafka]\nbogus = 1"), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("`kafka.bogus`"), "{e}");
    }

    #[test]
    fn a_password_is_never_repeated_in_an_error() {
        let e = load_str(&format!("{BASE}password = 424242\n"), &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`sources[0].password`") && !e.contains("424242"),
            "{e}"
        );
    }

    #[test]
    fn the_sasl_password_is_held_apart_from_the_other_properties() {
        let s = load_str(
            BASE,
            &[
                ("RELAY_KAFKA__PROPERTIES__SASL_PASSWORD", "hunter2"),
                ("RELAY_KAFKA__PROPERTIES__SASL_USERNAME", "relay"),
            ],
        )
        .unwrap();
        assert!(!s.kafka.properties.contains_key("sasl.password"));
        assert!(!format!("{s:?}").contains("hunter2"));
        let props: Vec<_> = s.kafka.connection_properties().collect();
        assert_eq!(
            props,
            [("sasl.username", "relay"), ("sasl.password", "hunter2")]
        );
    }

    #[test]
    fn passwords_come_from_files_without_their_trailing_newline() {
        let dir = std::env::temp_dir().join(format!("relay-secrets-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir(&dir).unwrap();
        let pg = dir.join("pg");
        let sasl = dir.join("sasl");
        let empty = dir.join("empty");
        std::fs::write(&pg, "s3cret\n").unwrap();
        std::fs::write(&sasl, "k4fka\r\n").unwrap();
        std::fs::write(&empty, "\n").unwrap();
        let pg_var = (
            "RELAY_SOURCES__USERS_DB__PASSWORD_FILE",
            pg.to_str().unwrap(),
        );
        let sasl_var = ("RELAY_KAFKA__SASL_PASSWORD_FILE", sasl.to_str().unwrap());

        let s = load_str(BASE, &[pg_var, sasl_var]).unwrap();
        assert_eq!(s.sources[0].password.expose_secret(), "s3cret");
        let sasl_password = s.kafka.sasl_password.as_ref().unwrap();
        assert_eq!(sasl_password.expose_secret(), "k4fka");
        let debug = format!("{s:?}");
        assert!(
            !debug.contains("s3cret") && !debug.contains("k4fka"),
            "{debug}"
        );

        let e = load_str(BASE, &[pg_var, ("RELAY_SOURCES__USERS_DB__PASSWORD", "x")])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`sources[0].password_file`") && e.contains("not both"),
            "{e}"
        );
        let both = ("RELAY_KAFKA__PROPERTIES__SASL_PASSWORD", "x");
        let e = load_str(BASE, &[sasl_var, both]).unwrap_err().to_string();
        assert!(e.contains("`kafka.sasl_password_file`"), "{e}");
        let empty_var = ("RELAY_KAFKA__SASL_PASSWORD_FILE", empty.to_str().unwrap());
        let e = load_str(BASE, &[empty_var]).unwrap_err().to_string();
        assert!(
            e.contains("is empty") && e.contains(empty.to_str().unwrap()),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn exactly_once_is_chosen_by_name_and_its_bounds_are_checked() {
        let s = load_str(BASE, &[]).unwrap();
        assert_eq!(s.kafka.delivery, Delivery::AtLeastOnce);
        let s = load_str(
            BASE,
            &[
                ("RELAY_KAFKA__DELIVERY", "exactly-once"),
                ("RELAY_KAFKA__TRANSACTION_MAX_RECORDS", "500"),
            ],
        )
        .unwrap();
        assert_eq!(s.kafka.delivery, Delivery::ExactlyOnce);
        assert_eq!(s.kafka.transaction_max_records, 500);
        assert_eq!(s.kafka.checkpoint_topic, "relay-cdc.checkpoints");
        let e = load_str(BASE, &[("RELAY_KAFKA__DELIVERY", "exactly_once")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("exactly-once") && e.contains("delivery"), "{e}");
        let e = load_str(
            BASE,
            &[
                ("RELAY_KAFKA__TRANSACTION_MAX_MS", "40000"),
                ("RELAY_KAFKA__TRANSACTION_TIMEOUT_MS", "60000"),
            ],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("kafka.transaction_max_ms"), "{e}");
        let e = load_str(
            BASE,
            &[("RELAY_KAFKA__PROPERTIES__TRANSACTIONAL_ID", "mine")],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("transactional.id"), "{e}");
    }

    #[test]
    fn unreadable_or_invalid_files_are_clear_errors() {
        let e = Settings::load(Some(Path::new("/nonexistent/relay.toml")), env(&[]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/relay.toml"), "{e}");
        let e = load_str("[kafka\n", &[]).unwrap_err().to_string();
        assert!(e.contains("not valid TOML"), "{e}");
        let e = load_str("[kafka]\nbrokers = \"x:1\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("no sources"), "{e}");
    }

    #[test]
    fn the_native_format_is_the_default_and_a_source_may_choose_another() {
        let s = load_str(BASE, &[]).unwrap();
        assert_eq!(s.kafka.format, FormatName::Native);
        assert_eq!(
            s.kafka.record_format(source(&s, "users_db")).unwrap(),
            crate::format::RecordFormat::Native
        );
        let s = load_str(
            BASE,
            &[
                ("RELAY_KAFKA__FORMAT", "debezium"),
                ("RELAY_KAFKA__DEBEZIUM__ROUTE_BY_FIELD", "event_type"),
                ("RELAY_KAFKA__DEBEZIUM__TABLE_EXPAND_JSON_PAYLOAD", "true"),
                ("RELAY_KAFKA__DEBEZIUM__VALUE_CONVERTER", "json"),
                ("RELAY_SOURCES__LEDGER__USER", "u"),
                ("RELAY_SOURCES__LEDGER__DATABASE", "ledger"),
                ("RELAY_SOURCES__LEDGER__FORMAT", "cloudevents"),
                ("RELAY_KAFKA__CLOUDEVENTS__MODE", "structured"),
            ],
        )
        .unwrap();
        assert_eq!(
            s.kafka.debezium.0.get("route.by.field").map(String::as_str),
            Some("event_type")
        );
        assert!(matches!(
            s.kafka.record_format(source(&s, "users_db")).unwrap(),
            crate::format::RecordFormat::Debezium(_)
        ));
        let crate::format::RecordFormat::CloudEvents(ce) =
            s.kafka.record_format(source(&s, "ledger")).unwrap()
        else {
            panic!("ledger chose cloudevents")
        };
        assert_eq!(ce.mode, crate::format::CloudEventsMode::Structured);
        assert_eq!(ce.source, "/relay-cdc/{source}");
    }

    #[test]
    fn debezium_options_may_be_written_bare_or_quoted_in_the_file() {
        let file = format!(
            "{BASE}{}",
            r#"
[kafka.debezium]
route.by.field = "event_type"
route.topic.replacement = "events.${routedByValue}"
table.expand.json.payload = true
"value.converter" = "org.apache.kafka.connect.json.JsonConverter"
table.fields.additional.placement = ["event_type:header:eventType", "aggregate_type:envelope"]
"#
        );
        let s = load_str(&file, &[("RELAY_KAFKA__FORMAT", "debezium")]).unwrap();
        let o = &s.kafka.debezium.0;
        assert_eq!(o["route.topic.replacement"], "events.${routedByValue}");
        assert_eq!(o["table.expand.json.payload"], "true");
        assert_eq!(
            o["table.fields.additional.placement"],
            "event_type:header:eventType,aggregate_type:envelope"
        );
        assert!(s.kafka.record_format(source(&s, "users_db")).is_ok());
    }

    #[test]
    fn format_options_relay_cdc_does_not_implement_are_refused_by_name() {
        for (var, value, key) in [
            (
                "RELAY_KAFKA__DEBEZIUM__TABLE_FIELD_EVENT_TIMESTAMP",
                "created_at",
                "kafka.debezium.table.field.event.timestamp",
            ),
            (
                "RELAY_KAFKA__DEBEZIUM__ROUTE_TOPIC_REGEX",
                "(.*)",
                "kafka.debezium.route.topic.regex",
            ),
            (
                "RELAY_KAFKA__DEBEZIUM__ROUTE_BY_FIELD",
                "aggregatetype",
                "kafka.debezium.route.by.field",
            ),
            (
                "RELAY_KAFKA__CLOUDEVENTS__SOURCE",
                "not a uri",
                "kafka.cloudevents.source",
            ),
            (
                "RELAY_KAFKA__CLOUDEVENTS__MODE",
                "batch",
                "kafka.cloudevents.mode",
            ),
            ("RELAY_KAFKA__FORMAT", "avro", "kafka.format"),
            (
                "RELAY_SOURCES__USERS_DB__FORMAT",
                "json",
                "sources[0].format",
            ),
        ] {
            let mut vars = vec![(var, value)];
            if var != "RELAY_KAFKA__FORMAT" {
                vars.push(("RELAY_KAFKA__FORMAT", "cloudevents"));
            }
            let e = load_str(BASE, &vars);
            let e = match e {
                Ok(s) => panic!("{var}: accepted: {:?}", s.kafka.debezium),
                Err(e) => e.to_string(),
            };
            assert!(e.contains(&format!("`{key}`")), "{var}: {e}");
        }
        // A typo in the Debezium table is named even while no source uses it.
        let e = load_str(BASE, &[("RELAY_KAFKA__DEBEZIUM__ROUTE_BY_FEILD", "x")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("`kafka.debezium.route.by.feild`"), "{e}");
    }

    #[test]
    fn debug_output_never_shows_the_password() {
        let s = load_str(BASE, &[("RELAY_SOURCES__USERS_DB__PASSWORD", "hunter2")]).unwrap();
        assert!(!format!("{s:?}").contains("hunter2"));
    }
}
