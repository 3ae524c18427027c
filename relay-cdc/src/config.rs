//! Configuration: a TOML file plus `RELAY_`-prefixed environment overrides, validated
//! once at start with errors that name the offending key.
//!
//! Environment keys use `__` for nesting: `RELAY_KAFKA__BROKERS`, `RELAY_ADMIN__LISTEN`,
//! `RELAY_PIPELINE__MAX_IN_FLIGHT_RECORDS`. Sources are addressed by name:
//! `RELAY_SOURCES__USERS_DB__PASSWORD` sets `password` of the source named `users_db`
//! (created if the file has none by that name).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use thiserror::Error;

use crate::tls::PgTls;
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
    #[serde(default)]
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

#[derive(Debug, Clone, Deserialize)]
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
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// A file holding `sasl.password` (Docker and Kubernetes secrets); read once at
    /// start, a trailing newline dropped. Not together with `properties."sasl.password"`.
    #[serde(default)]
    pub sasl_password_file: Option<PathBuf>,
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
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceSettings {
    /// The source's name in metrics, logs and the `source` header.
    pub name: String,
    #[serde(default = "default_host")]
    pub host: String,
    #[serde(default = "default_port")]
    pub port: u16,
    pub user: String,
    #[serde(default)]
    pub password: String,
    pub database: String,
    /// Replication slot; default `relay_<name>`.
    #[serde(default)]
    pub slot: Option<String>,
    #[serde(default = "default_publication")]
    pub publication: String,
    #[serde(default = "default_schema")]
    pub schema: String,
    #[serde(default = "default_table")]
    pub table: String,
    /// Create the publication when missing.
    #[serde(default = "yes")]
    pub create_publication: bool,
    /// Create the slot when missing (and then publish rows left PENDING before it).
    #[serde(default = "yes")]
    pub create_slot: bool,
    /// The servers of one cluster, `host:port` each (replaces `host`/`port`): the relay
    /// streams from whichever is the writable primary, like libpq's
    /// `target_session_attrs=read-write`, and follows it after a failover.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Make the slot a failover slot (PostgreSQL 17+), so that standbys with
    /// `sync_replication_slots` keep a copy that survives a promotion. Unset: on where the
    /// server supports it; `true` on an older server fails the prerequisite check.
    #[serde(default)]
    pub failover_slot: Option<bool>,
    /// TLS to the servers, in libpq's words (see [`crate::tls`]): `disable`, `prefer`
    /// (default), `require`, `verify-ca`, `verify-full`.
    #[serde(default)]
    pub sslmode: SslMode,
    /// CA certificates (PEM) the server's certificate must lead to (`verify-ca`,
    /// `verify-full`); unset: Mozilla's public roots.
    #[serde(default)]
    pub sslrootcert: Option<PathBuf>,
    /// A client certificate and its key (PEM), for servers that ask for one.
    #[serde(default)]
    pub sslcert: Option<PathBuf>,
    #[serde(default)]
    pub sslkey: Option<PathBuf>,
    /// A file holding the password (Docker and Kubernetes secrets); read once at start,
    /// a trailing newline dropped. Not together with `password`.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
}

impl std::fmt::Debug for SourceSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceSettings")
            .field("name", &self.name)
            .field("endpoints", &self.endpoints())
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .field("database", &self.database)
            .field("slot", &self.slot_name())
            .field("publication", &self.publication)
            .field("sslmode", &self.sslmode)
            .finish_non_exhaustive()
    }
}

fn default_host() -> String {
    "127.0.0.1".into()
}
fn default_port() -> u16 {
    5432
}
fn default_publication() -> String {
    "outbox_pub".into()
}
fn default_schema() -> String {
    "public".into()
}
fn default_table() -> String {
    "outbox".into()
}
fn yes() -> bool {
    true
}

/// One server of a source: where to connect.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
}

impl Endpoint {
    /// `host:port` (`[v6]:port` for an IPv6 address).
    pub fn parse(s: &str) -> Result<Self, String> {
        let (host, port) = s
            .trim()
            .rsplit_once(':')
            .ok_or_else(|| format!("{s:?} is not host:port"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(format!("{s:?} has no host"));
        }
        let port = port
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("{s:?}: the port must be 1-65535"))?;
        Ok(Self {
            host: host.to_string(),
            port,
        })
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl SourceSettings {
    pub fn slot_name(&self) -> String {
        self.slot
            .clone()
            .unwrap_or_else(|| format!("relay_{}", self.name))
    }

    /// The servers to try, in order: `hosts`, or `host`:`port`.
    pub fn endpoints(&self) -> Vec<Endpoint> {
        if self.hosts.is_empty() {
            return vec![Endpoint {
                host: self.host.clone(),
                port: self.port,
            }];
        }
        self.hosts
            .iter()
            .filter_map(|h| Endpoint::parse(h).ok())
            .collect()
    }

    /// `host:port`, or the list of them.
    pub fn endpoints_text(&self) -> String {
        self.endpoints()
            .iter()
            .map(Endpoint::to_string)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// A tokio-postgres configuration for ordinary (non-replication) connections: to the
    /// writable primary among the endpoints.
    pub fn pg_config(&self) -> tokio_postgres::Config {
        let mut c = self.pg_config_for(&self.endpoints());
        c.target_session_attrs(tokio_postgres::config::TargetSessionAttrs::ReadWrite);
        c
    }

    /// An ordinary connection's configuration for exactly these endpoints, whatever
    /// their role (to ask a server what it is).
    pub fn pg_config_for(&self, endpoints: &[Endpoint]) -> tokio_postgres::Config {
        let mut c = tokio_postgres::Config::new();
        for e in endpoints {
            c.host(&e.host).port(e.port);
        }
        c.user(&self.user)
            .password(&self.password)
            .dbname(&self.database)
            .application_name(format!("relay-cdc/{}", self.name))
            .connect_timeout(Duration::from_secs(5))
            .ssl_mode(self.tls().tokio_mode());
        c
    }

    /// The TLS settings of this source's connections.
    pub fn tls(&self) -> PgTls {
        PgTls {
            mode: self.sslmode,
            root_cert: self.sslrootcert.clone(),
            cert: self.sslcert.clone(),
            key: self.sslkey.clone(),
        }
    }
}

impl Settings {
    /// Reads `path` (if given), applies `RELAY_*` variables from `env`, validates.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut root = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.display().to_string(),
                    source,
                })?;
                text.parse::<toml::Table>()
                    .map_err(|e| ConfigError::Parse {
                        path: p.display().to_string(),
                        message: e.message().to_string(),
                    })?
            }
            None => toml::Table::new(),
        };
        let mut vars: Vec<(String, String)> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with("RELAY_") && k != "RELAY_CONFIG")
            .collect();
        vars.sort();
        for (var, value) in vars {
            apply_env(&mut root, &var, &value)?;
        }
        for (key, allowed) in [
            ("delivery", ["at-least-once", "exactly-once"]),
            ("poison", ["stop", "dead-letter"]),
        ] {
            if let Some(v) = root.get("kafka").and_then(|k| k.get(key)) {
                if !v.as_str().is_some_and(|v| allowed.contains(&v)) {
                    return Err(key_err(
                        format!("kafka.{key}"),
                        format!("must be one of {allowed:?} (got {v})"),
                    ));
                }
            }
        }
        if let Some(sources) = root.get("sources").and_then(|s| s.as_array()) {
            for (i, source) in sources.iter().enumerate() {
                if let Some(v) = source.get("sslmode") {
                    if !v.as_str().is_some_and(|v| SslMode::NAMES.contains(&v)) {
                        return Err(key_err(
                            format!("sources[{i}].sslmode"),
                            format!("must be one of {:?} (got {v})", SslMode::NAMES),
                        ));
                    }
                }
            }
        }
        let mut settings: Settings = toml::Value::Table(root)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Invalid(e.message().trim().to_string()))?;
        settings.read_secret_files()?;
        settings.validate()?;
        Ok(settings)
    }

    /// Reads `password_file` and `kafka.sasl_password_file` into the settings they stand
    /// for. Errors name the key and the file, never the content.
    fn read_secret_files(&mut self) -> Result<(), ConfigError> {
        for (i, s) in self.sources.iter_mut().enumerate() {
            let Some(path) = &s.password_file else {
                continue;
            };
            let key = format!("sources[{i}].password_file");
            if !s.password.is_empty() {
                return Err(key_err(key, "set password or password_file, not both"));
            }
            s.password = read_secret(path).map_err(|m| key_err(key, m))?;
        }
        if let Some(path) = &self.kafka.sasl_password_file {
            let key = "kafka.sasl_password_file";
            if self.kafka.properties.contains_key("sasl.password") {
                return Err(key_err(
                    key,
                    "set kafka.properties.\"sasl.password\" or kafka.sasl_password_file, not both",
                ));
            }
            let password = read_secret(path).map_err(|m| key_err(key, m))?;
            self.kafka
                .properties
                .insert("sasl.password".into(), password);
        }
        Ok(())
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.kafka.brokers.trim().is_empty() {
            return Err(key_err(
                "kafka.brokers",
                "must list at least one broker (host:port)",
            ));
        }
        if !self.kafka.topic_template.contains("{aggregate_type}") {
            return Err(key_err(
                "kafka.topic_template",
                "must contain {aggregate_type}",
            ));
        }
        if let Err(e) = self.admin.listen.parse::<SocketAddr>() {
            return Err(key_err(
                "admin.listen",
                format!("not a socket address ({e})"),
            ));
        }
        for (key, value) in [
            ("kafka.topic_partitions", self.kafka.topic_partitions),
            (
                "kafka.topic_replication_factor",
                self.kafka.topic_replication_factor,
            ),
        ] {
            if value == 0 || value < -1 {
                return Err(key_err(key, "must be -1 (broker default) or at least 1"));
            }
        }
        let k = &self.kafka;
        for (key, value) in [
            ("kafka.transaction_max_ms", k.transaction_max_ms),
            (
                "kafka.transaction_max_records",
                k.transaction_max_records as u64,
            ),
            ("kafka.transaction_timeout_ms", k.transaction_timeout_ms),
        ] {
            if value == 0 {
                return Err(key_err(key, "must be greater than 0"));
            }
        }
        if k.transaction_max_ms.saturating_mul(2) > k.transaction_timeout_ms {
            return Err(key_err(
                "kafka.transaction_max_ms",
                format!(
                    "must be at most half of kafka.transaction_timeout_ms ({})",
                    k.transaction_timeout_ms
                ),
            ));
        }
        if k.checkpoint_topic.trim().is_empty() {
            return Err(key_err("kafka.checkpoint_topic", "must not be empty"));
        }
        if k.transactional_id_prefix.contains(char::is_whitespace) {
            return Err(key_err(
                "kafka.transactional_id_prefix",
                "must not contain whitespace",
            ));
        }
        for (k, v) in &self.kafka.properties {
            if FIXED_PRODUCER_PROPERTIES.contains(&k.as_str()) {
                return Err(key_err(
                    format!("kafka.properties.{k}"),
                    format!("is fixed by the relay for safety and cannot be set (got {v:?})"),
                ));
            }
        }
        let p = &self.pipeline;
        for (key, value) in [
            (
                "pipeline.max_in_flight_records",
                p.max_in_flight_records as u64,
            ),
            ("pipeline.max_in_flight_bytes", p.max_in_flight_bytes as u64),
            ("pipeline.mark_batch_size", p.mark_batch_size as u64),
            ("pipeline.status_interval_ms", p.status_interval_ms),
            ("pipeline.heartbeat_interval_ms", p.heartbeat_interval_ms),
            ("pipeline.mark_interval_ms", p.mark_interval_ms),
            ("pipeline.mark_connections", p.mark_connections as u64),
            ("pipeline.stall_timeout_ms", p.stall_timeout_ms),
            (
                "pipeline.mark_statement_timeout_ms",
                p.mark_statement_timeout_ms,
            ),
            ("pipeline.mark_lock_timeout_ms", p.mark_lock_timeout_ms),
        ] {
            if value == 0 {
                return Err(key_err(key, "must be greater than 0"));
            }
        }
        if self.sources.is_empty() {
            return Err(ConfigError::Invalid(
                "no sources: add a [[sources]] table or RELAY_SOURCES__<NAME>__* variables".into(),
            ));
        }
        let mut names = std::collections::HashSet::new();
        let mut slots = std::collections::HashSet::new();
        for (i, s) in self.sources.iter().enumerate() {
            let key = |f: &str| format!("sources[{i}].{f}");
            if !valid_ident(&s.name) {
                return Err(key_err(key("name"), "use letters, digits and _ only"));
            }
            if !names.insert(s.name.clone()) {
                return Err(key_err(
                    key("name"),
                    format!("duplicate source name {:?}", s.name),
                ));
            }
            let slot = s.slot_name();
            if !valid_slot_name(&slot) {
                return Err(key_err(
                    key("slot"),
                    "a slot name is lower-case letters, digits and _ (at most 63)",
                ));
            }
            for (j, h) in s.hosts.iter().enumerate() {
                if let Err(why) = Endpoint::parse(h) {
                    return Err(key_err(key(&format!("hosts[{j}]")), why));
                }
            }
            if !slots.insert((s.endpoints(), slot.clone())) {
                return Err(key_err(
                    key("slot"),
                    format!("slot {slot:?} is used by two sources"),
                ));
            }
            if let Err(why) = s.tls().client_config() {
                let field = ["sslrootcert", "sslcert", "sslkey"]
                    .into_iter()
                    .find(|f| why.starts_with(f))
                    .unwrap_or("sslmode");
                return Err(key_err(key(field), why));
            }
            for (field, v) in [
                ("user", &s.user),
                ("database", &s.database),
                ("host", &s.host),
            ] {
                if v.trim().is_empty() {
                    return Err(key_err(key(field), "must not be empty"));
                }
            }
            for (field, v) in [
                ("publication", &s.publication),
                ("schema", &s.schema),
                ("table", &s.table),
            ] {
                if !valid_ident(v) {
                    return Err(key_err(key(field), "use letters, digits and _ only"));
                }
            }
        }
        Ok(())
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
    /// The properties every Kafka client of the relay gets (see
    /// [`CONNECTION_PROPERTY_PREFIXES`]).
    pub fn connection_properties(&self) -> impl Iterator<Item = (&str, &str)> {
        self.properties
            .iter()
            .filter(|(k, _)| {
                CONNECTION_PROPERTY_PREFIXES
                    .iter()
                    .any(|p| k.starts_with(p))
            })
            .map(|(k, v)| (k.as_str(), v.as_str()))
    }

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
}

/// A secret file's content without its trailing newline (what `echo` or an editor
/// leaves); the error names the file, never what is in it.
fn read_secret(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let secret = text.strip_suffix('\n').unwrap_or(&text);
    let secret = secret.strip_suffix('\r').unwrap_or(secret);
    if secret.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(secret.to_string())
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

fn valid_ident(s: &str) -> bool {
    !s.is_empty() && s.len() <= 63 && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn valid_slot_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

fn apply_env(root: &mut toml::Table, var: &str, raw: &str) -> Result<(), ConfigError> {
    let env_err = |message: &str| ConfigError::Env {
        var: var.to_string(),
        message: message.to_string(),
    };
    let path: Vec<String> = var["RELAY_".len()..]
        .split("__")
        .map(str::to_ascii_lowercase)
        .collect();
    if path.iter().any(String::is_empty) {
        return Err(env_err("empty key segment (use __ between keys)"));
    }
    let value = scalar(raw);
    match path.as_slice() {
        [section, name, field] if section == "sources" => {
            let sources = root
                .entry("sources")
                .or_insert_with(|| toml::Value::Array(Vec::new()))
                .as_array_mut()
                .ok_or_else(|| env_err("`sources` in the file is not an array of tables"))?;
            let pos = sources.iter().position(|s| {
                s.get("name")
                    .and_then(|n| n.as_str())
                    .is_some_and(|n| n.eq_ignore_ascii_case(name))
            });
            let table = match pos {
                Some(i) => &mut sources[i],
                None => {
                    let mut t = toml::Table::new();
                    t.insert("name".into(), toml::Value::String(name.clone()));
                    sources.push(toml::Value::Table(t));
                    sources.last_mut().expect("just pushed")
                }
            };
            let table = table
                .as_table_mut()
                .ok_or_else(|| env_err("source entry is not a table"))?;
            // Strings stay strings for fields that are strings (a numeric password is still a password).
            let value = if matches!(
                field.as_str(),
                "password"
                    | "user"
                    | "database"
                    | "host"
                    | "name"
                    | "slot"
                    | "sslmode"
                    | "sslrootcert"
                    | "sslcert"
                    | "sslkey"
                    | "password_file"
            ) {
                toml::Value::String(raw.to_string())
            } else if field == "hosts" {
                // `host1:5432,host2:5432`
                toml::Value::Array(
                    raw.split(',')
                        .map(|h| toml::Value::String(h.trim().to_string()))
                        .collect(),
                )
            } else {
                value
            };
            table.insert(field.clone(), value);
        }
        [section, field] => {
            let t = root
                .entry(section.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                .as_table_mut()
                .ok_or_else(|| env_err("that section in the file is not a table"))?;
            let value = if section == "kafka"
                && !matches!(
                    field.as_str(),
                    "max_record_bytes"
                        | "transaction_max_ms"
                        | "transaction_max_records"
                        | "transaction_timeout_ms"
                        | "create_topics"
                        | "topic_partitions"
                        | "topic_replication_factor"
                ) {
                toml::Value::String(raw.to_string())
            } else {
                value
            };
            t.insert(field.clone(), value);
        }
        [section, sub, field] if section == "kafka" && sub == "properties" => {
            let kafka = root
                .entry("kafka")
                .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                .as_table_mut()
                .ok_or_else(|| env_err("`kafka` in the file is not a table"))?;
            let props = kafka
                .entry("properties")
                .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                .as_table_mut()
                .ok_or_else(|| env_err("`kafka.properties` is not a table"))?;
            props.insert(
                field.replace('_', "."),
                toml::Value::String(raw.to_string()),
            );
        }
        _ => return Err(env_err(
            "not a known setting (expected RELAY_<SECTION>__<KEY> or RELAY_SOURCES__<NAME>__<KEY>)",
        )),
    }
    Ok(())
}

fn scalar(raw: &str) -> toml::Value {
    if let Ok(i) = raw.parse::<i64>() {
        return toml::Value::Integer(i);
    }
    match raw {
        "true" => toml::Value::Boolean(true),
        "false" => toml::Value::Boolean(false),
        _ => toml::Value::String(raw.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn a_minimal_file_gets_defaults() {
        let s = load_str(BASE, &[]).unwrap();
        assert_eq!(s.sources[0].slot_name(), "relay_users_db");
        assert_eq!(s.sources[0].port, 5432);
        assert_eq!(s.kafka.topic_template, "outbox.event.{aggregate_type}");
        assert_eq!(s.kafka.poison, PoisonPolicy::Stop);
        assert_eq!(s.pipeline.mark_batch_size, 1000);
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
        assert_eq!(s.sources[0].password, "12345");
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
    fn debug_output_never_shows_the_password() {
        let s = load_str(BASE, &[("RELAY_SOURCES__USERS_DB__PASSWORD", "hunter2")]).unwrap();
        assert!(!format!("{s:?}").contains("hunter2"));
    }
}
