//! The mapping from a Debezium PostgreSQL connector with the outbox event router to the
//! relay's settings, option by option. Every option of the input ends in exactly one of
//! three places, so none is dropped unseen:
//!
//! - **mapped**: it becomes a relay key (`database.hostname` → `sources[].host`,
//!   `transforms.outbox.route.by.field` → `kafka.debezium."route.by.field"`, ...);
//! - **ignored**: it changes nothing the relay does (`tasks.max`, data type handling of
//!   columns the outbox does not have, ...), listed with the reason in the output;
//! - **refused**: the relay cannot do what it asks (another transformation, a slot that
//!   is dropped on stop, `snapshot.mode = always`, an unknown option, ...). One refusal
//!   makes the whole conversion fail, and all of them are reported together.
//!
//! The user's table is kept as it is: `[sources.columns]` maps its columns to the
//! relay's roles (`columns.rs`), `marking = "none"` writes nothing back to it, and the
//! router's options keep the names the user wrote. They are checked by the relay's own
//! parser ([`EventRouter::from_options`] over that mapping), so what this module accepts
//! is exactly what the loader accepts.
//!
//! The database password is never copied: the output names the environment variable
//! (or `password_file`) that gives it, so the output can be printed, diffed and committed.

mod columns;
mod router;
mod source;

use std::collections::{BTreeMap, BTreeSet};

use super::connector::ConnectorConfig;
use crate::format::{EventRouter, TableColumns};

/// An option the relay cannot honour, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub option: String,
    pub reason: String,
}

/// One line of a section: `key = value`, or only a note where a key is left to the user
/// (with no key: a comment on the section).
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub key: String,
    pub value: Option<toml::Value>,
    /// Where the value came from, or what to do (a comment above the key).
    pub note: String,
}

/// The relay's configuration, by section, with the notes that go with it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Conversion {
    pub connector: Option<String>,
    /// Comments for the top of the file: what the relay does differently.
    pub notes: Vec<String>,
    pub kafka: Vec<Entry>,
    pub debezium: Vec<Entry>,
    pub properties: Vec<Entry>,
    pub pipeline: Vec<Entry>,
    pub source: Vec<Entry>,
    /// `[sources.columns]`: the table's columns by role.
    pub columns: Vec<Entry>,
    /// Options accepted that change nothing: option, value, why.
    pub ignored: Vec<(String, String, String)>,
}

const POSTGRES_CONNECTOR: &str = "io.debezium.connector.postgresql.PostgresConnector";
const EVENT_ROUTER: &str = "io.debezium.transforms.outbox.EventRouter";
const TOPIC_NAME_MATCHES: &str = "org.apache.kafka.connect.transforms.predicates.TopicNameMatches";
/// Debezium's defaults for `slot.name` and `publication.name`.
const DEFAULT_SLOT: &str = "debezium";
const DEFAULT_PUBLICATION: &str = "dbz_publication";

/// Options that change nothing the relay does, with the reason.
const IGNORED: &[(&str, &str)] = &[
    ("tasks.max", "the PostgreSQL connector runs one task; the relay one pipeline per source"),
    ("tombstones.on.delete", "the outbox router drops deletes; the relay reads inserts only"),
    ("heartbeat.interval.ms", "the relay writes its own heartbeats into the WAL (pipeline.heartbeat_interval_ms); it sends none to Kafka"),
    ("heartbeat.action.query", "the relay writes its own heartbeats into the WAL (pipeline.heartbeat_interval_ms), which advance the slot on a quiet database"),
    ("heartbeat.topics.prefix", "the relay sends no heartbeat records"),
    ("topic.heartbeat.prefix", "the relay sends no heartbeat records"),
    ("topic.naming.strategy", "names change-event topics; outbox records go to route.topic.replacement"),
    ("topic.delimiter", "names change-event topics; outbox records go to route.topic.replacement"),
    ("topic.transaction", "names the transaction metadata topic, which the relay does not write"),
    ("poll.interval.ms", "batching inside Connect; the relay's bounds are pipeline.max_in_flight_*"),
    ("max.batch.size", "batching inside Connect; the relay's bounds are pipeline.max_in_flight_*"),
    ("max.queue.size", "batching inside Connect; the relay's bounds are pipeline.max_in_flight_*"),
    ("max.queue.size.in.bytes", "batching inside Connect; the relay's bounds are pipeline.max_in_flight_*"),
    ("slot.max.retries", "the relay retries a missing or held slot with backoff (pipeline.max_backoff_ms), without limit"),
    ("slot.retry.delay.ms", "the relay retries a missing or held slot with backoff (pipeline.max_backoff_ms), without limit"),
    ("decimal.handling.mode", "how column types become Connect types: the relay's debezium format places integer and timestamp columns as Debezium's defaults do and others as their text"),
    ("hstore.handling.mode", "how column types become Connect types: the relay's debezium format places integer and timestamp columns as Debezium's defaults do and others as their text"),
    ("interval.handling.mode", "how column types become Connect types: the relay's debezium format places integer and timestamp columns as Debezium's defaults do and others as their text"),
    ("include.unknown.datatypes", "how column types become Connect types: the relay's debezium format places integer and timestamp columns as Debezium's defaults do and others as their text"),
    ("money.fraction.digits", "how column types become Connect types: the relay's debezium format places integer and timestamp columns as Debezium's defaults do and others as their text"),
    ("schema.name.adjustment.mode", "names of Connect schemas, which the converters without schemas do not write"),
    ("field.name.adjustment.mode", "names of Connect fields; the outbox's column names are plain"),
    ("schema.refresh.mode", "the relay learns the table's columns from pgoutput's relation messages"),
    ("snapshot.isolation.mode", "shapes Debezium's snapshot, which the relay does not take"),
    ("snapshot.locking.mode", "shapes Debezium's snapshot, which the relay does not take"),
    ("snapshot.fetch.size", "shapes Debezium's snapshot, which the relay does not take"),
    ("snapshot.delay.ms", "shapes Debezium's snapshot, which the relay does not take"),
    ("database.tcpKeepAlive", "connection details the relay sets itself"),
    ("database.query.timeout.ms", "connection details the relay sets itself"),
    ("offset.mismatch.strategy", "the relay has no offsets of its own: the slot's confirmed position is where it resumes"),
    ("xmin.fetch.interval.ms", "the relay does not track the slot's xmin"),
    ("lsn.flush.timeout.ms", "the relay confirms positions in its status updates (pipeline.status_interval_ms)"),
    ("lsn.flush.timeout.action", "the relay confirms positions in its status updates (pipeline.status_interval_ms)"),
    ("extended.headers.enabled", "the relay does not add Debezium's __debezium.context.* headers"),
    ("transaction.boundary", "the relay commits a Kafka transaction at the first PostgreSQL commit after kafka.transaction_max_ms"),
];

/// Connect's error options the relay has no use for (`errors.tolerance` is checked).
const IGNORED_PREFIXES: &[(&str, &str)] = &[
    (
        "errors.",
        "Connect's error reporting; the relay's poison policy is kafka.poison",
    ),
    (
        "replica.identity.autoset.values",
        "the relay reads inserts only, which carry every column whatever the replica identity",
    ),
];

/// Converts `config`; every refusal is reported, in option order.
pub fn convert(config: &ConnectorConfig) -> Result<Conversion, Vec<Refusal>> {
    let mut run = Run {
        opts: &config.options,
        taken: BTreeSet::new(),
        refusals: Vec::new(),
        out: Conversion {
            connector: config.name.clone(),
            ..Conversion::default()
        },
    };
    run.connector_class();
    let name = run.source_name(config.name.as_deref());
    run.database(&name);
    run.replication();
    run.table();
    run.marking();
    run.router();
    run.kafka_and_pipeline();
    run.the_rest();
    if run.refusals.is_empty() {
        Ok(run.out)
    } else {
        run.refusals.sort_by(|a, b| a.option.cmp(&b.option));
        Err(run.refusals)
    }
}

struct Run<'a> {
    opts: &'a BTreeMap<String, String>,
    taken: BTreeSet<String>,
    refusals: Vec<Refusal>,
    out: Conversion,
}

fn entry(key: &str, value: impl Into<toml::Value>, note: impl Into<String>) -> Entry {
    Entry {
        key: key.to_string(),
        value: Some(value.into()),
        note: note.into(),
    }
}

fn note_only(key: &str, note: impl Into<String>) -> Entry {
    Entry {
        key: key.to_string(),
        value: None,
        note: note.into(),
    }
}

/// Where a value came from, for the comment above its key.
fn from(option: &str, value: &str) -> String {
    format!("from {option} = {value}")
}

impl<'a> Run<'a> {
    /// The option's value (trimmed), marking it as handled.
    fn take(&mut self, key: &str) -> Option<&'a str> {
        let value = self.opts.get(key)?;
        self.taken.insert(key.to_string());
        Some(value.trim())
    }

    /// Refuses `option`; its first reason stands (the relay's parser would name a column
    /// this module refused already).
    fn refuse(&mut self, option: &str, reason: impl Into<String>) {
        if self.refusals.iter().any(|r| r.option == option) {
            return;
        }
        self.refusals.push(Refusal {
            option: option.to_string(),
            reason: reason.into(),
        });
    }

    fn ignore(&mut self, option: &str, value: &str, why: impl Into<String>) {
        self.out
            .ignored
            .push((option.to_string(), value.to_string(), why.into()));
    }

    /// Takes `key` and ignores it when present.
    fn take_ignored(&mut self, key: &str, why: &str) {
        if let Some(v) = self.take(key) {
            self.ignore(key, v, why);
        }
    }

    fn connector_class(&mut self) {
        match self.take("connector.class") {
            Some(c) if c == POSTGRES_CONNECTOR || c == "PostgresConnector" => {}
            Some(c) => self.refuse(
                "connector.class",
                format!("{c}: only Debezium's PostgreSQL connector ({POSTGRES_CONNECTOR}) reads what relay-cdc reads"),
            ),
            None => self.refuse(
                "connector.class",
                "missing: a Debezium PostgreSQL connector configuration is expected",
            ),
        }
    }

    fn kafka_and_pipeline(&mut self) {
        self.out.kafka.insert(
            0,
            note_only("brokers", "a connector configuration has no Kafka address (that is the Connect worker's bootstrap.servers): set brokers here or RELAY_KAFKA__BROKERS"),
        );
        if let Some(v) = self.take("exactly.once.support") {
            match v.to_ascii_lowercase().as_str() {
                "required" => self.out.kafka.push(entry(
                    "delivery",
                    "exactly-once",
                    format!("{}: a transactional producer; consumers read read_committed", from("exactly.once.support", v)),
                )),
                "requested" => self.ignore("exactly.once.support", v, "Connect uses transactions only when the worker has them on; the relay's default delivery is at-least-once (set kafka.delivery = \"exactly-once\" if the worker did)"),
                other => self.refuse("exactly.once.support", format!("{other:?}: required or requested")),
            }
        }
        for (option, key) in [
            ("topic.creation.default.partitions", "topic_partitions"),
            (
                "topic.creation.default.replication.factor",
                "topic_replication_factor",
            ),
        ] {
            if let Some(v) = self.take(option) {
                match v.parse::<i32>() {
                    Ok(n) if n == -1 || n > 0 => {
                        self.out
                            .kafka
                            .push(entry(key, i64::from(n), from(option, v)))
                    }
                    _ => self.refuse(option, format!("{v:?}: -1 or at least 1")),
                }
            }
        }
        for property in ["linger.ms", "compression.type"] {
            let option = format!("producer.override.{property}");
            if let Some(v) = self.take(&option) {
                self.out.properties.push(entry(
                    property,
                    v,
                    format!(
                        "{}: librdkafka's property of the same name",
                        from(&option, v)
                    ),
                ));
            }
        }
        if let Some(v) = self.take("status.update.interval.ms") {
            match v.parse::<u64>() {
                Ok(ms) if ms > 0 => self.out.pipeline.push(entry(
                    "status_interval_ms",
                    ms as i64,
                    format!(
                        "{}: how often the confirmed position is reported",
                        from("status.update.interval.ms", v)
                    ),
                )),
                _ => self.refuse(
                    "status.update.interval.ms",
                    format!("{v:?}: milliseconds, more than 0"),
                ),
            }
        }
    }

    /// Options handled by value, the ignored ones, and the refusal of everything else.
    fn the_rest(&mut self) {
        let by_value: [(&str, &str, &str, &str); 4] = [
            ("errors.tolerance", "all", "none", "all skips records a converter or the router cannot handle; the relay never skips one (kafka.poison = \"stop\" or \"dead-letter\")"),
            ("provide.transaction.metadata", "true", "false", "true writes transaction boundaries to a topic; relay-cdc writes none"),
            ("publish.via.partition.root", "true", "false", "true: relay-cdc reads an unpartitioned outbox table"),
            ("skipped.operations", "c", "", "skipping inserts leaves the outbox router nothing to route"),
        ];
        for (option, bad, _ok, why) in by_value {
            if let Some(v) = self.take(option) {
                let refused = if option == "skipped.operations" {
                    v.split(',').any(|o| o.trim() == bad)
                } else {
                    v.eq_ignore_ascii_case(bad)
                };
                if refused {
                    self.refuse(option, format!("{v}: {why}"));
                } else {
                    self.ignore(option, v, "the relay behaves so too");
                }
            }
        }
        self.time_precision();
        self.binary_handling();
        for (option, why) in IGNORED {
            self.take_ignored(option, why);
        }
        let rest: Vec<String> = self
            .opts
            .keys()
            .filter(|k| !self.taken.contains(*k))
            .cloned()
            .collect();
        for key in rest {
            let value = self.take(&key).unwrap_or_default();
            match IGNORED_PREFIXES.iter().find(|(p, _)| key.starts_with(*p)) {
                Some((_, why)) => self.ignore(&key, value, *why),
                None => self.refuse(
                    &key,
                    "not an option relay-cdc can honour (or knows to be harmless)",
                ),
            }
        }
        let password_shown = self
            .opts
            .get("database.password")
            .filter(|p| !p.trim().is_empty() && !p.trim().starts_with("${"));
        if let Some(p) = password_shown {
            // An ignored option's value could only be the password by accident; never print it.
            for (_, v, _) in &mut self.out.ignored {
                if v.contains(p.trim()) {
                    *v = "<redacted>".into();
                }
            }
        }
    }
}

impl Run<'_> {
    /// `time.precision.mode`: how Debezium writes a timestamp column a placement puts in
    /// a header or the envelope; the relay writes Debezium's default.
    fn time_precision(&mut self) {
        let Some(v) = self.take("time.precision.mode") else {
            return;
        };
        let placed = self.out.columns.iter().any(|e| e.key == "extra");
        match v.to_ascii_lowercase().as_str() {
            "adaptive" | "adaptive_time_microseconds" => self.ignore(
                "time.precision.mode",
                v,
                "the relay places timestamp columns as this mode does (timestamp: epoch microseconds; timestamptz: ISO 8601 text in UTC)",
            ),
            _ if !placed => self.ignore(
                "time.precision.mode",
                v,
                "no placement puts a column other than the router's own in a record",
            ),
            other => self.refuse(
                "time.precision.mode",
                format!("{other}: the relay places timestamp columns as Debezium's default, adaptive, does (timestamp: epoch microseconds; timestamptz: ISO 8601 text in UTC)"),
            ),
        }
    }
}

impl Run<'_> {
    /// `binary.handling.mode`: how Debezium writes a bytea payload. The relay writes what
    /// the default, `bytes`, gives (base64 through the JSON converter; refused through
    /// the String converter, where Debezium writes a Java object's name).
    fn binary_handling(&mut self) {
        let Some(v) = self.take("binary.handling.mode") else {
            return;
        };
        match v.to_ascii_lowercase().as_str() {
            "bytes" => self.ignore(
                "binary.handling.mode",
                v,
                "the relay writes a bytea payload as this mode does (base64 through the JSON converter)",
            ),
            other => self.refuse(
                "binary.handling.mode",
                format!("{other}: the relay writes a bytea payload as Debezium's default, bytes, does"),
            ),
        }
    }
}

fn valid_ident(s: &str) -> bool {
    !s.is_empty() && s.len() <= 63 && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn valid_slot(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}
