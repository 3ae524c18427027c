//! One source database's settings: where its servers are, who the relay is there, its
//! slot and publication, TLS; and [`Password`], how a password is held.

use std::path::PathBuf;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::de::{self, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};

use crate::format::TableColumns;
use crate::tls::{PgTls, SslMode};

/// A password: a [`SecretString`], shown as `<redacted>` in Debug output. Reading it
/// is explicit: [`Password::expose_secret`], where a connection is made.
#[derive(Clone, Default, Deserialize)]
#[serde(transparent)]
pub struct Password(SecretString);

impl Password {
    pub fn expose_secret(&self) -> &str {
        self.0.expose_secret()
    }

    /// No password was given (an empty one is none).
    pub fn is_empty(&self) -> bool {
        self.0.expose_secret().is_empty()
    }
}

impl From<String> for Password {
    fn from(secret: String) -> Self {
        Self(secret.into())
    }
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
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
    /// Empty: none (trust, or a client certificate).
    #[serde(default)]
    pub password: Password,
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
    #[serde(default = "super::yes")]
    pub create_publication: bool,
    /// Create the slot when missing (and then publish rows left PENDING before it).
    #[serde(default = "super::yes")]
    pub create_slot: bool,
    /// The servers of one cluster, `host:port` each (replaces `host`/`port`): the relay
    /// streams from whichever is the writable primary, like libpq's
    /// `target_session_attrs=read-write`, and follows it after a failover. A list, or
    /// one string of them separated by commas (as an environment variable gives it).
    #[serde(default, deserialize_with = "list_or_commas")]
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
    /// This source's record format, when not `kafka.format` (its options stay those of
    /// `[kafka.debezium]` and `[kafka.cloudevents]`).
    #[serde(default)]
    pub format: Option<super::FormatName>,
    /// Which column of `table` plays which role (`[sources.columns]`); default: the
    /// relay's own outbox table.
    #[serde(default)]
    pub columns: ColumnSettings,
    /// How published rows are marked: `status` (PROCESSED / DEAD_LETTERED, with
    /// reconciliation, the audit and retention) or `none` (a table without a status
    /// column, e.g. rows deleted in the writer's transaction).
    #[serde(default)]
    pub marking: Option<Marking>,
    /// Where events come from: `table` (inserted rows of `table`) or `messages`
    /// (transactional logical decoding messages with `message_prefix`, written by
    /// `pg_logical_emit_message` in the writer's transaction: no table at all).
    #[serde(default)]
    pub capture: Capture,
    /// The prefix of the messages that are events (`capture = "messages"`).
    #[serde(default = "default_message_prefix")]
    pub message_prefix: String,
}

/// Where a source's events come from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Capture {
    /// Rows inserted into the outbox table.
    #[default]
    Table,
    /// Transactional logical decoding messages (libs/outbox's envelope): nothing is
    /// written to a table, so nothing is marked; as `marking = "none"` otherwise.
    Messages,
}

impl Capture {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Table => "table",
            Self::Messages => "messages",
        }
    }
}

fn default_message_prefix() -> String {
    outbox::message::DEFAULT_PREFIX.into()
}

/// How the relay records, in the table, that a row was published.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Marking {
    /// `status` goes from PENDING to PROCESSED (or DEAD_LETTERED), `processed_at` is
    /// set; what is PENDING is what the relay still owes, so a new slot reconciles,
    /// the audit compares the table with the slot, retention deletes old rows.
    #[default]
    Status,
    /// Nothing is written back: the slot's confirmed position is the only record of
    /// progress. No reconciliation when a slot is created or lost, no audit, no
    /// retention (see `relay-cdc check`).
    None,
}

impl Marking {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Status => "status",
            Self::None => "none",
        }
    }
}

/// The outbox table's columns by role (`[sources.columns]`). Each defaults to the
/// relay's own table (`sql/outbox/0001_outbox.sql`); a Debezium-shaped table says
/// `aggregate_type = "aggregatetype"`, `aggregate_id = "aggregateid"`, `event_type = "type"`.
/// The payload column's type (jsonb, json, text, varchar or bytea) is read from the table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ColumnSettings {
    /// The event id: a uuid column.
    pub id: String,
    pub aggregate_type: String,
    /// The Kafka key (native format).
    pub aggregate_id: String,
    pub event_type: String,
    pub payload: String,
    /// When the event happened (a timestamp column): the time formats put in their
    /// records (CloudEvents `time`); unset: the transaction's commit time.
    pub timestamp: Option<String>,
    /// Further columns formats may place (Debezium's `table.fields.additional.placement`).
    #[serde(deserialize_with = "list_or_commas")]
    pub extra: Vec<String>,
}

impl Default for ColumnSettings {
    fn default() -> Self {
        let t = TableColumns::relay_outbox();
        Self {
            id: t.id,
            aggregate_type: t.aggregate_type,
            aggregate_id: t.aggregate_id,
            event_type: t.event_type,
            payload: t.payload,
            timestamp: None,
            extra: Vec::new(),
        }
    }
}

impl ColumnSettings {
    /// The mapping as the decoder and the formats read it.
    pub fn table_columns(&self) -> TableColumns {
        TableColumns {
            id: self.id.clone(),
            aggregate_type: self.aggregate_type.clone(),
            aggregate_id: self.aggregate_id.clone(),
            event_type: self.event_type.clone(),
            payload: self.payload.clone(),
            timestamp: self.timestamp.clone(),
            others: self.extra.clone(),
        }
    }

    /// Whether this is the relay's own table shape.
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }

    /// Each role's key and column, the optional ones when set, then the extras.
    pub fn named(&self) -> Vec<(&'static str, &str)> {
        let mut out = vec![
            ("id", self.id.as_str()),
            ("aggregate_type", self.aggregate_type.as_str()),
            ("aggregate_id", self.aggregate_id.as_str()),
            ("event_type", self.event_type.as_str()),
            ("payload", self.payload.as_str()),
        ];
        if let Some(t) = &self.timestamp {
            out.push(("timestamp", t.as_str()));
        }
        out.extend(self.extra.iter().map(|c| ("extra", c.as_str())));
        out
    }
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
            .field("format", &self.format)
            .field("marking", &self.marking())
            .field("capture", &self.capture)
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
            .password(self.password.expose_secret())
            .dbname(&self.database)
            .application_name(format!("relay-cdc/{}", self.name))
            .connect_timeout(Duration::from_secs(5))
            .ssl_mode(self.tls().tokio_mode());
        c
    }

    /// How published events are recorded in the table: `marking`, `status` by default;
    /// always `none` under `capture = "messages"` (there is no row).
    pub fn marking(&self) -> Marking {
        match self.capture {
            Capture::Messages => Marking::None,
            Capture::Table => self.marking.unwrap_or_default(),
        }
    }

    /// Whether the relay marks rows (and so reconciles, audits and deletes them).
    pub fn marks_rows(&self) -> bool {
        self.marking() == Marking::Status
    }

    /// The outbox table this source streams, with its columns by role.
    pub fn outbox_table(&self) -> crate::pgoutput::OutboxTable {
        crate::pgoutput::OutboxTable {
            schema: self.schema.clone(),
            name: self.table.clone(),
            columns: self.columns.table_columns(),
        }
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

/// A list of strings, or one string of them separated by commas.
fn list_or_commas<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    struct ListOrCommas;
    impl<'de> Visitor<'de> for ListOrCommas {
        type Value = Vec<String>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a list of host:port, or one string of them separated by commas")
        }

        fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
            Ok(text.split(',').map(|h| h.trim().to_string()).collect())
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut list = Vec::new();
            while let Some(item) = seq.next_element()? {
                list.push(item);
            }
            Ok(list)
        }
    }
    d.deserialize_any(ListOrCommas)
}
