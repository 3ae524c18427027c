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
//! The router's own options are checked by the relay's own parser
//! ([`EventRouter::from_options`] over the relay's outbox table), so what this module
//! accepts is exactly what the loader accepts.
//!
//! The database password is never copied: the output names the environment variable
//! (or `password_file`) that gives it, so the output can be printed, diffed and committed.

use std::collections::{BTreeMap, BTreeSet};

use super::connector::ConnectorConfig;
use crate::format::{EventRouter, TableColumns};

/// An option the relay cannot honour, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub option: String,
    pub reason: String,
}

/// One line of a section: `key = value`, or only a note where a key is left to the user.
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
    /// Options accepted that change nothing: option, value, why.
    pub ignored: Vec<(String, String, String)>,
}

const POSTGRES_CONNECTOR: &str = "io.debezium.connector.postgresql.PostgresConnector";
const EVENT_ROUTER: &str = "io.debezium.transforms.outbox.EventRouter";
const TOPIC_NAME_MATCHES: &str = "org.apache.kafka.connect.transforms.predicates.TopicNameMatches";
/// Debezium's defaults for `slot.name` and `publication.name`.
const DEFAULT_SLOT: &str = "debezium";
const DEFAULT_PUBLICATION: &str = "dbz_publication";

/// The router's options that name a column of the outbox table.
const COLUMN_OPTIONS: [&str; 4] = [
    "table.field.event.id",
    "table.field.event.key",
    "table.field.event.payload",
    "route.by.field",
];

/// Debezium's default outbox columns and the relay's column of the same role.
const DEBEZIUM_COLUMNS: [(&str, &str); 5] = [
    ("id", "id"),
    ("aggregatetype", "aggregate_type"),
    ("aggregateid", "aggregate_id"),
    ("type", "event_type"),
    ("payload", "payload"),
];

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
    ("decimal.handling.mode", "how column types become Connect types: the outbox's columns are text, uuid and jsonb"),
    ("time.precision.mode", "how column types become Connect types: the outbox's columns are text, uuid and jsonb"),
    ("hstore.handling.mode", "how column types become Connect types: the outbox's columns are text, uuid and jsonb"),
    ("interval.handling.mode", "how column types become Connect types: the outbox's columns are text, uuid and jsonb"),
    ("binary.handling.mode", "how column types become Connect types: the outbox's columns are text, uuid and jsonb (a bytea payload is poison in the debezium format)"),
    ("include.unknown.datatypes", "how column types become Connect types: the outbox's columns are text, uuid and jsonb"),
    ("money.fraction.digits", "how column types become Connect types: the outbox's columns are text, uuid and jsonb"),
    ("schema.name.adjustment.mode", "names of Connect schemas, which the converters without schemas do not write"),
    ("field.name.adjustment.mode", "names of Connect fields; the outbox's column names are plain"),
    ("schema.refresh.mode", "the relay learns the table's columns from pgoutput's relation messages"),
    ("snapshot.isolation.mode", "the relay's reconciliation reads from an exported snapshot, REPEATABLE READ"),
    ("snapshot.locking.mode", "the relay's reconciliation takes no table lock"),
    ("snapshot.fetch.size", "the relay's reconciliation reads PENDING rows page by page"),
    ("snapshot.delay.ms", "the relay reconciles at once when it creates its slot"),
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

    fn refuse(&mut self, option: &str, reason: impl Into<String>) {
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

    /// The source's name: `topic.prefix` (or 1.x's `database.server.name`), else the
    /// connector's name, else the database's, as letters, digits and `_`.
    fn source_name(&mut self, connector: Option<&str>) -> String {
        let prefix = self.take("topic.prefix");
        let server = self.take("database.server.name");
        let own = self.take("name");
        let (raw, origin) = match (prefix, server, connector.or(own)) {
            (Some(p), _, _) => (p.to_string(), "topic.prefix"),
            (None, Some(s), _) => (s.to_string(), "database.server.name"),
            (None, None, Some(n)) => (n.to_string(), "the connector's name"),
            (None, None, None) => (
                self.opts
                    .get("database.dbname")
                    .cloned()
                    .unwrap_or_else(|| "debezium".into()),
                "database.dbname",
            ),
        };
        // `__` separates keys in RELAY_SOURCES__<NAME>__*: runs of `_` become one.
        let mut name = String::new();
        for c in raw.chars() {
            let c = if c.is_ascii_alphanumeric() { c } else { '_' };
            if !(c == '_' && (name.is_empty() || name.ends_with('_'))) {
                name.push(c);
            }
        }
        let mut name: String = name.trim_end_matches('_').chars().take(63).collect();
        if name.is_empty() {
            name = "debezium".into();
        }
        self.out.source.push(entry(
            "name",
            name.as_str(),
            format!("from {origin} ({raw:?}): the source's name in metrics, logs and RELAY_SOURCES__<NAME>__* variables"),
        ));
        name
    }

    fn database(&mut self, name: &str) {
        match self.take("database.hostname") {
            Some(h) if !h.is_empty() => {
                self.out
                    .source
                    .push(entry("host", h, from("database.hostname", h)))
            }
            _ => self.refuse("database.hostname", "missing: the server to read from"),
        }
        let port = self.take("database.port").unwrap_or("5432");
        match port.parse::<u16>() {
            Ok(p) if p > 0 => {
                self.out
                    .source
                    .push(entry("port", i64::from(p), from("database.port", port)))
            }
            _ => self.refuse("database.port", format!("{port:?} is not a port (1-65535)")),
        }
        match self.take("database.user") {
            Some(u) if !u.is_empty() => self.out.source.push(entry(
                "user",
                u,
                format!("{}; the role needs LOGIN REPLICATION and sql/grants.sql's rights (UPDATE of status, processed_at)", from("database.user", u)),
            )),
            _ => self.refuse("database.user", "missing: the role the relay logs in as"),
        }
        self.password(name);
        match self.take("database.dbname") {
            Some(d) if !d.is_empty() => {
                self.out
                    .source
                    .push(entry("database", d, from("database.dbname", d)))
            }
            _ => self.refuse(
                "database.dbname",
                "missing: the database holding the outbox table",
            ),
        }
        self.tls();
    }

    /// Never copies a literal password; a Connect config provider reference becomes
    /// what the relay has for it.
    fn password(&mut self, name: &str) {
        let var = format!("RELAY_SOURCES__{}__PASSWORD", name.to_ascii_uppercase());
        let Some(value) = self.take("database.password") else {
            self.out.source.push(note_only(
                "password",
                format!("none in the connector configuration (trust, or a client certificate); if one is needed: {var} or password_file"),
            ));
            return;
        };
        let reference = value
            .strip_prefix("${")
            .and_then(|r| r.strip_suffix('}'))
            .and_then(|r| r.split_once(':'));
        match reference {
            Some(("directory", path_key)) => match path_key.rsplit_once(':') {
                Some((dir, key)) => {
                    let file = format!("{}/{key}", dir.trim_end_matches('/'));
                    self.out.source.push(entry(
                        "password_file",
                        file.as_str(),
                        format!("database.password = {value} (DirectoryConfigProvider: the file holds the password; a trailing newline is dropped)"),
                    ));
                }
                None => self.out.source.push(note_only(
                    "password",
                    format!("database.password = {value}: set {var} or password_file"),
                )),
            },
            Some(("env", env)) => self.out.source.push(note_only(
                "password",
                format!("database.password = {value} (EnvVarConfigProvider): give the relay {var}=\"${env}\""),
            )),
            Some((provider, _)) => self.out.source.push(note_only(
                "password",
                format!("database.password = {value} ({provider} config provider): set {var}, or put the password alone in a file and set password_file"),
            )),
            None => self.out.source.push(note_only(
                "password",
                format!("database.password was given literally and is not copied (secrets stay out of this output): set {var} or password_file"),
            )),
        }
    }

    fn tls(&mut self) {
        if let Some(mode) = self.take("database.sslmode") {
            match mode.to_ascii_lowercase().as_str() {
                m @ ("disable" | "prefer" | "require" | "verify-ca" | "verify-full") => self
                    .out
                    .source
                    .push(entry("sslmode", m, from("database.sslmode", mode))),
                "allow" => self.refuse(
                    "database.sslmode",
                    "allow (plaintext first, TLS only if refused) has no equivalent: relay-cdc's modes are disable, prefer, require, verify-ca, verify-full",
                ),
                other => self.refuse(
                    "database.sslmode",
                    format!("{other:?} is not a mode relay-cdc knows (disable, prefer, require, verify-ca, verify-full)"),
                ),
            }
        }
        for (option, key, note) in [
            ("database.sslrootcert", "sslrootcert", "CA certificates, PEM"),
            ("database.sslcert", "sslcert", "a client certificate, PEM"),
            ("database.sslkey", "sslkey", "the relay reads a PEM key; pgJDBC reads PKCS-8 DER (.pk8): convert it with `openssl pkcs8 -topk8 -nocrypt -inform DER -outform PEM`"),
        ] {
            if let Some(path) = self.take(option) {
                self.out
                    .source
                    .push(entry(key, path, format!("{}: {note}", from(option, path))));
            }
        }
    }

    fn replication(&mut self) {
        match self.take("plugin.name") {
            Some(p) if p.eq_ignore_ascii_case("pgoutput") => {}
            Some(p) => self.refuse(
                "plugin.name",
                format!("{p}: relay-cdc decodes pgoutput only, so it cannot take this slot over; start it on a new slot with reconciliation (README, \"Migrating from Debezium\")"),
            ),
            None => self.refuse(
                "plugin.name",
                "unset, so Debezium's default decoderbufs: relay-cdc decodes pgoutput only, so it cannot take this slot over; start it on a new slot with reconciliation (README, \"Migrating from Debezium\")",
            ),
        }
        let slot = self.take("slot.name");
        let slot_value = slot.unwrap_or(DEFAULT_SLOT);
        if valid_slot(slot_value) {
            let origin = match slot {
                Some(s) => from("slot.name", s),
                None => format!("slot.name unset: Debezium's default, {DEFAULT_SLOT}"),
            };
            self.out.source.push(entry(
                "slot",
                slot_value,
                format!("{origin}; the connector's slot: the relay resumes where the connector last confirmed"),
            ));
        } else {
            self.refuse(
                "slot.name",
                format!(
                    "{slot_value:?}: a slot name is lower-case letters, digits and _ (at most 63)"
                ),
            );
        }
        match self.take("slot.drop.on.stop") {
            Some(v) if v.eq_ignore_ascii_case("true") => self.refuse(
                "slot.drop.on.stop",
                "true: the relay never drops its slot (dropping it loses the position, and rows committed meanwhile are found only by reconciliation)",
            ),
            Some(v) => self.ignore("slot.drop.on.stop", v, "the relay keeps its slot too"),
            None => {}
        }
        if let Some(v) = self.take("slot.failover") {
            match v.to_ascii_lowercase().as_str() {
                b @ ("true" | "false") => self.out.source.push(entry(
                    "failover_slot",
                    b == "true",
                    from("slot.failover", v),
                )),
                _ => self.refuse("slot.failover", format!("{v:?}: true or false")),
            }
        }
        if let Some(v) = self.take("lsn.flush.mode") {
            if v.eq_ignore_ascii_case("manual") {
                self.refuse(
                    "lsn.flush.mode",
                    "manual: the relay always confirms what Kafka acked to its slot",
                );
            } else {
                self.ignore(
                    "lsn.flush.mode",
                    v,
                    "the relay confirms what Kafka acked to its slot",
                );
            }
        }
        if let Some(v) = self.take("flush.lsn.source") {
            if v.eq_ignore_ascii_case("false") {
                self.refuse(
                    "flush.lsn.source",
                    "false: the relay always confirms what Kafka acked to its slot",
                );
            } else {
                self.ignore(
                    "flush.lsn.source",
                    v,
                    "the relay confirms what Kafka acked to its slot",
                );
            }
        }
        let publication = self.take("publication.name");
        let pub_value = publication.unwrap_or(DEFAULT_PUBLICATION);
        if valid_ident(pub_value) {
            let origin = match publication {
                Some(p) => from("publication.name", p),
                None => {
                    format!("publication.name unset: Debezium's default, {DEFAULT_PUBLICATION}")
                }
            };
            self.out
                .source
                .push(entry("publication", pub_value, origin));
        } else {
            self.refuse(
                "publication.name",
                format!(
                    "{pub_value:?}: relay-cdc takes publication names of letters, digits and _"
                ),
            );
        }
        let mode = self.take("publication.autocreate.mode");
        match mode.unwrap_or("all_tables").to_ascii_lowercase().as_str() {
            "disabled" => self.out.source.push(entry(
                "create_publication",
                false,
                "publication.autocreate.mode = disabled: the publication must exist, with the outbox table only",
            )),
            "filtered" => self.out.source.push(entry(
                "create_publication",
                true,
                "publication.autocreate.mode = filtered: when missing, the relay creates it for the outbox table (WITH publish = 'insert')",
            )),
            "all_tables" => {
                let origin = if mode.is_some() {
                    "publication.autocreate.mode = all_tables"
                } else {
                    "publication.autocreate.mode unset: Debezium's default, all_tables"
                };
                self.out.source.push(entry(
                    "create_publication",
                    true,
                    format!("{origin}: when missing, the relay creates it for the outbox table only. WARNING: if the connector created {pub_value} FOR ALL TABLES, the relay would read every table's inserts as outbox rows and stop at the first other one: check `select puballtables from pg_publication where pubname = '{pub_value}'` (README, \"Migrating from Debezium\")"),
                ));
            }
            "no_tables" => self.out.source.push(entry(
                "create_publication",
                false,
                "publication.autocreate.mode = no_tables: the publication is managed by hand; it must exist and hold the outbox table only",
            )),
            other => self.refuse(
                "publication.autocreate.mode",
                format!("{other:?} is not one of disabled, all_tables, filtered, no_tables"),
            ),
        }
        self.snapshot_mode();
    }

    /// `snapshot.mode` → whether the relay may create its slot, which it does with an
    /// exported snapshot publishing the PENDING rows (reconciliation).
    fn snapshot_mode(&mut self) {
        let mode = self.take("snapshot.mode");
        let value = mode.unwrap_or("initial").to_ascii_lowercase();
        let origin = match mode {
            Some(m) => from("snapshot.mode", m),
            None => "snapshot.mode unset: Debezium's default, initial".into(),
        };
        match value.as_str() {
            "initial" | "when_needed" | "exported" => self.out.source.push(entry(
                "create_slot",
                true,
                format!("{origin}: an existing slot is resumed with no snapshot; when the relay creates the slot (or recreates a lost one) it first publishes the rows still PENDING in an exported snapshot (reconciliation), where Debezium would snapshot every row of the table"),
            )),
            "no_data" | "never" => self.out.source.push(entry(
                "create_slot",
                false,
                format!("{origin}: no snapshot, ever: the relay streams from the existing slot only (creating a slot always reconciles PENDING rows; set create_slot = true to allow that)"),
            )),
            "always" => self.refuse("snapshot.mode", "always: the relay never re-publishes the table at each start; it resumes from its slot"),
            "initial_only" => self.refuse("snapshot.mode", "initial_only: the relay always streams after reconciling"),
            "configuration_based" | "custom" => self.refuse(
                "snapshot.mode",
                format!("{value}: the relay's only snapshot is the reconciliation of PENDING rows when it creates its slot (snapshot.mode = initial)"),
            ),
            other => self.refuse("snapshot.mode", format!("{other:?} is not a snapshot mode of Debezium's PostgreSQL connector")),
        }
        let opts = self.opts;
        let keys: Vec<&String> = opts
            .keys()
            .filter(|k| {
                k.starts_with("snapshot.mode.")
                    || k.starts_with("snapshot.select.")
                    || k.starts_with("snapshot.include.")
            })
            .collect();
        for k in keys {
            self.take(k);
            self.refuse(k, "shapes Debezium's snapshot; the relay's reconciliation publishes exactly the PENDING rows");
        }
    }

    /// `table.include.list` → the source's `schema` and `table`: one table, named.
    fn table(&mut self) {
        let include = self.take("table.include.list");
        let whitelist = self.take("table.whitelist");
        let (option, list) = match (include, whitelist) {
            (Some(l), _) => ("table.include.list", l),
            (None, Some(l)) => ("table.whitelist", l),
            (None, None) => {
                self.refuse(
                    "table.include.list",
                    "unset: the connector captures every table; relay-cdc reads one outbox table, named as schema.table",
                );
                return;
            }
        };
        let entries: Vec<&str> = list
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .collect();
        let [one] = entries.as_slice() else {
            self.refuse(
                option,
                format!("{list:?}: relay-cdc reads one outbox table per source (convert one connector per table)"),
            );
            return;
        };
        let plain = one.replace("\\.", ".");
        let Some((schema, table)) = plain
            .split_once('.')
            .filter(|(s, t)| valid_ident(s) && valid_ident(t))
        else {
            self.refuse(
                option,
                format!(
                    "{one:?}: a table is named schema.table, letters, digits and _ (no pattern)"
                ),
            );
            return;
        };
        for key in ["schema.include.list", "schema.whitelist"] {
            match self.take(key) {
                Some(s) if s == schema => self.ignore(key, s, "the table's schema"),
                Some(s) => {
                    self.refuse(key, format!("{s:?}: the relay reads {schema}.{table} only"))
                }
                None => {}
            }
        }
        self.out
            .source
            .push(entry("schema", schema, from(option, one)));
        self.out
            .source
            .push(entry("table", table, from(option, one)));
        self.out.notes.push(format!(
            "The relay reads an outbox table of its own shape ({schema}.{table} with id, aggregate_type, aggregate_id, event_type, payload, status, created_at, processed_at: sql/outbox/0001_outbox.sql) and marks each published row PROCESSED. A table mapping for other shapes and `marking = none` (for a table without status, as Debezium's usually is) are a later part of issue 29, not in this configuration."
        ));
    }

    /// `transforms`: exactly one transformation, Debezium's outbox event router; its
    /// options and the converters go to `[kafka.debezium]`, checked by the relay's parser.
    fn router(&mut self) {
        let names: Vec<String> = self
            .take("transforms")
            .map(|t| {
                t.split(',')
                    .map(str::trim)
                    .filter(|n| !n.is_empty())
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default();
        if names.is_empty() {
            self.refuse(
                "transforms",
                format!("no outbox event router: without {EVENT_ROUTER} the connector emits change events, which relay-cdc does not make"),
            );
        }
        let mut router: Option<String> = None;
        for n in &names {
            let key = format!("transforms.{n}.type");
            match self.take(&key) {
                Some(EVENT_ROUTER) if router.is_none() => router = Some(n.clone()),
                Some(EVENT_ROUTER) => self.refuse(&key, "a second outbox event router: relay-cdc applies one"),
                Some(other) => self.refuse(
                    &key,
                    format!("{other}: relay-cdc applies Debezium's outbox event router and no other transformation"),
                ),
                None => self.refuse(&key, "missing: the transformation's class"),
            }
        }
        self.out.kafka.push(entry(
            "format",
            "debezium",
            "what Debezium's outbox event router emits, through the converters below",
        ));
        let mut options: BTreeMap<String, String> = BTreeMap::new();
        let mut origins: BTreeMap<String, String> = BTreeMap::new();
        if let Some(n) = &router {
            self.predicate(n);
            let prefix = format!("transforms.{n}.");
            let keys: Vec<String> = self
                .opts
                .keys()
                .filter(|k| k.starts_with(&prefix) && !self.taken.contains(*k))
                .cloned()
                .collect();
            for key in keys {
                let value = self.take(&key).unwrap_or_default();
                let option = key[prefix.len()..].to_string();
                let value = self.relay_columns(&key, &option, value);
                origins.insert(option.clone(), key);
                options.insert(option, value);
            }
        }
        for conv in ["key.converter", "value.converter", "header.converter"] {
            if let Some(v) = self.take(conv) {
                origins.insert(conv.into(), conv.into());
                options.insert(conv.into(), v.to_string());
            }
        }
        self.schemas_enable(&options);
        if !options.contains_key("route.by.field") || !options.contains_key("table.field.event.key")
        {
            self.out.notes.push("Column options left unset: Debezium reads its default columns (id, aggregatetype, aggregateid, payload), the relay the columns of the same roles in its own table (id, aggregate_type, aggregate_id, payload).".into());
        }
        if !options.contains_key("key.converter") || !options.contains_key("value.converter") {
            self.out.notes.push("The connector configuration does not set key.converter and value.converter, so the Connect worker's apply (not in this file). The relay's default is StringConverter for both; if the worker uses JsonConverter with schemas.enable=false, set \"key.converter\" / \"value.converter\" = \"json\" below.".into());
        }
        self.check_router(&options, &origins);
        for (option, value) in options {
            let origin = &origins[&option];
            self.out.debezium.push(entry(
                &option,
                value.as_str(),
                from(origin, &self.opts[origin]),
            ));
        }
    }

    /// A predicate on the router: accepted when it selects records by topic (the outbox
    /// table's, as Debezium's docs advise); the relay reads that table only.
    fn predicate(&mut self, router: &str) {
        let used = self.take(&format!("transforms.{router}.predicate"));
        if let Some(v) = self.take(&format!("transforms.{router}.negate")) {
            if !v.eq_ignore_ascii_case("false") {
                self.refuse(&format!("transforms.{router}.negate"), "a negated predicate routes what is not the outbox table; the relay reads the outbox table only");
            }
        }
        let declared: Vec<String> = self
            .take("predicates")
            .map(|p| {
                p.split(',')
                    .map(str::trim)
                    .filter(|n| !n.is_empty())
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default();
        for p in declared {
            let type_key = format!("predicates.{p}.type");
            if Some(p.as_str()) != used {
                self.refuse(&format!("predicates.{p}"), "a predicate the outbox router does not use: relay-cdc has no other transformation");
                continue;
            }
            match self.take(&type_key) {
                Some(TOPIC_NAME_MATCHES) => {
                    let pattern_key = format!("predicates.{p}.pattern");
                    let pattern = self.take(&pattern_key).unwrap_or_default();
                    self.ignore(&pattern_key, pattern, "selects the outbox table's records for the router; the relay reads that table only");
                }
                Some(other) => self.refuse(&type_key, format!("{other}: only TopicNameMatches (selecting the outbox table's records) is accepted")),
                None => self.refuse(&type_key, "missing: the predicate's class"),
            }
        }
    }

    /// A column option's value, or a placement list's columns, as the relay's table
    /// names them: Debezium's default column names become the relay's column of the
    /// same role (`aggregateid` → `aggregate_id`); other names stay (and are refused by
    /// the relay's parser if the table lacks them).
    fn relay_columns(&mut self, key: &str, option: &str, value: &str) -> String {
        if COLUMN_OPTIONS.contains(&option) {
            return self.relay_column(key, value);
        }
        if option == "table.fields.additional.placement" {
            return value
                .split(',')
                .map(|e| {
                    let e = e.trim();
                    match e.split_once(':') {
                        Some((column, rest)) => {
                            format!("{}:{rest}", self.relay_column(key, column.trim()))
                        }
                        None => e.to_string(),
                    }
                })
                .collect::<Vec<_>>()
                .join(",");
        }
        value.to_string()
    }

    fn relay_column(&mut self, key: &str, column: &str) -> String {
        let relay = TableColumns::relay_outbox();
        if relay.field(column).is_some() {
            return column.to_string();
        }
        match DEBEZIUM_COLUMNS.iter().find(|(d, _)| *d == column) {
            Some((_, r)) => {
                self.out.notes.push(format!(
                    "{key}: Debezium's column {column} is the relay's {r} (same role); the relay reads its own table's column names until the table mapping exists"
                ));
                r.to_string()
            }
            None => column.to_string(),
        }
    }

    /// `*.converter.schemas.enable`: JsonConverter writes schemas unless told not to;
    /// the relay writes JSON without them.
    fn schemas_enable(&mut self, options: &BTreeMap<String, String>) {
        for conv in ["key.converter", "value.converter"] {
            let json = options
                .get(conv)
                .is_some_and(|c| c == "json" || c == "org.apache.kafka.connect.json.JsonConverter");
            let key = format!("{conv}.schemas.enable");
            match (self.take(&key), json) {
                (Some(v), true) if v.eq_ignore_ascii_case("false") => self.ignore(&key, v, "the relay's JSON has no schemas"),
                (Some(v), true) => self.refuse(&key, format!("{v}: relay-cdc writes JSON without schemas (schemas.enable=false) only")),
                (None, true) => self.refuse(&key, "unset, so JsonConverter's default, true (a schema in every record): relay-cdc writes JSON without schemas; say schemas.enable=false if that is what consumers get"),
                (Some(v), false) => self.ignore(&key, v, "read by JsonConverter only"),
                (None, false) => {}
            }
        }
    }

    /// The relay's parser over the router's options: each alone (so every bad option is
    /// named), then all together (for rules between options).
    fn check_router(
        &mut self,
        options: &BTreeMap<String, String>,
        origins: &BTreeMap<String, String>,
    ) {
        let table = TableColumns::relay_outbox();
        let mut refused = BTreeSet::new();
        for (option, value) in options {
            let mut alone = BTreeMap::from([(option.clone(), value.clone())]);
            if option != "value.converter" {
                alone.insert("value.converter".into(), "json".into());
            }
            if let Err(e) = EventRouter::from_options(&alone, &table) {
                refused.insert(e.option.clone());
                let origin = origins.get(&e.option).unwrap_or(&e.option);
                self.refuse(origin, explain(&e.message));
            }
        }
        if refused.is_empty() {
            if let Err(e) = EventRouter::from_options(options, &table) {
                let origin = origins
                    .get(&e.option)
                    .cloned()
                    .unwrap_or_else(|| e.option.clone());
                self.refuse(&origin, explain(&e.message));
            }
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

/// The relay parser's message, with the table mapping's state where a column is missing.
fn explain(message: &str) -> String {
    if message.contains("has no column") {
        format!("{message}; a mapping to other columns is a later part of issue 29")
    } else {
        message.to_string()
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
