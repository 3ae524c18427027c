//! `relay-cdc import-debezium`: a Debezium PostgreSQL connector's configuration (JSON as
//! POSTed to Kafka Connect, or a `.properties` file) turned into the relay configuration
//! that does the same: source, slot and publication, the user's table as it is (a column
//! mapping, `marking = "none"`), the `debezium` record format with the outbox event
//! router's options as written, and `snapshot.mode` as whether the relay may create its
//! slot.
//!
//! Invariant: the output is only printed when every option of the input was mapped or
//! is harmless to ignore; otherwise every option the relay cannot honour is refused by
//! name, together. What the output leaves to the user (the brokers, the password) is
//! said in comments where the key would be.
//!
//! - `connector.rs`: reading JSON and `.properties`;
//! - `debezium/`: the mapping, option by option (`source.rs`: the database side,
//!   `router.rs`: the router, `columns.rs`: the table's columns by role);
//! - `render.rs`: the TOML text with its comments.

mod connector;
mod debezium;
mod render;

use std::path::Path;

use thiserror::Error;

pub use self::connector::ConnectorConfig;
pub use self::debezium::{convert, Conversion, Entry, Refusal};
pub use self::render::render;

#[derive(Debug, Error)]
pub enum ImportError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("{}", refused(.path, .refusals))]
    Refused {
        path: String,
        refusals: Vec<Refusal>,
    },
}

fn refused(path: &str, refusals: &[Refusal]) -> String {
    let mut text = format!(
        "{path}: {} option(s) relay-cdc cannot honour, nothing converted:",
        refusals.len()
    );
    for r in refusals {
        text.push_str(&format!("\n  {}: {}", r.option, r.reason));
    }
    text
}

/// The relay configuration for the connector configuration in the file at `path`.
pub fn import_file(path: &Path) -> Result<String, ImportError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ImportError::Read {
        path: shown.clone(),
        source,
    })?;
    import_text(&text, &shown)
}

/// The relay configuration for the connector configuration `text`, read from `input`.
pub fn import_text(text: &str, input: &str) -> Result<String, ImportError> {
    let config = ConnectorConfig::parse(text).map_err(|message| ImportError::Parse {
        path: input.to_string(),
        message,
    })?;
    let conversion = convert(&config).map_err(|refusals| ImportError::Refused {
        path: input.to_string(),
        refusals,
    })?;
    Ok(render(&conversion, input))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;

    const BENCH: &str = include_str!("../../tests/fixtures/debezium/bench-connector.properties");
    const DOCS: &str = include_str!("../../tests/fixtures/debezium/debezium-docs-outbox.json");
    const DEMO: &str =
        include_str!("../../tests/fixtures/debezium/debezium-examples-register-postgres.json");

    fn toml_of(text: &str) -> toml::Table {
        let out = import_text(text, "connector").unwrap_or_else(|e| panic!("{e}"));
        out.parse::<toml::Table>()
            .unwrap_or_else(|e| panic!("{e}\n{out}"))
    }

    fn at<'t>(t: &'t toml::Table, path: &[&str]) -> &'t toml::Value {
        let mut v = t.get(path[0]).unwrap_or_else(|| panic!("no {}", path[0]));
        for p in &path[1..] {
            v = match v {
                toml::Value::Array(a) => &a[p.parse::<usize>().unwrap()],
                other => other.get(*p).unwrap_or_else(|| panic!("no {p} in {other}")),
            };
        }
        v
    }

    fn assert_keys(t: &toml::Table, path: &[&str], expected: &[(&str, toml::Value)]) {
        let table = at(t, path).as_table().unwrap();
        for (k, v) in expected {
            assert_eq!(table.get(*k), Some(v), "{path:?}.{k} in {table:#?}");
        }
        let values = table.values().filter(|v| !v.is_table()).count();
        assert_eq!(values, expected.len(), "{path:?}: {table:#?}");
    }

    fn s(v: &str) -> toml::Value {
        toml::Value::String(v.into())
    }

    fn list(v: &[&str]) -> toml::Value {
        toml::Value::Array(v.iter().map(|c| s(c)).collect())
    }

    /// `[sources.columns]` as (role, column) pairs, in the relay's order, `extra` last.
    fn mapping(columns: &crate::config::ColumnSettings) -> Vec<(&'static str, String)> {
        let mut out: Vec<(&'static str, String)> = vec![
            ("id", columns.id.clone()),
            ("aggregate_type", columns.aggregate_type.clone()),
            ("aggregate_id", columns.aggregate_id.clone()),
            ("event_type", columns.event_type.clone()),
            ("payload", columns.payload.clone()),
        ];
        out.extend(columns.extra.iter().map(|c| ("extra", c.clone())));
        out
    }

    fn pairs(v: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
        v.iter().map(|(k, c)| (*k, c.to_string())).collect()
    }

    /// Debezium's docs connector with `options` (JSON members) added.
    fn docs_with(options: &str) -> String {
        DOCS.replace(
            "\"tasks.max\": \"1\",",
            &format!("\"tasks.max\": \"1\", {options}"),
        )
    }

    /// A connector of Debezium's docs whose table names every column its own way.
    fn custom_columns() -> String {
        docs_with(
            "\"transforms.outbox.table.field.event.id\": \"event_id\",
             \"transforms.outbox.table.field.event.key\": \"aggregate_key\",
             \"transforms.outbox.table.field.event.type\": \"event_name\",
             \"transforms.outbox.table.field.event.payload\": \"body\",
             \"transforms.outbox.route.by.field\": \"topic_suffix\",",
        )
        .replace(
            "\"type:header:eventType\"",
            "\"event_name:header:eventType,tenant:header,shard:partition\"",
        )
    }

    /// Loads `out` with the relay's own loader, the brokers from the environment.
    fn load(out: &str) -> Result<Settings, crate::config::ConfigError> {
        let dir = std::env::temp_dir().join(format!("relay-import-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir(&dir).unwrap();
        let path = dir.join("relay.toml");
        std::fs::write(&path, out).unwrap();
        let settings = Settings::load(
            Some(path.as_path()),
            [(
                "RELAY_KAFKA__BROKERS".to_string(),
                "127.0.0.1:9092".to_string(),
            )],
        );
        std::fs::remove_dir_all(&dir).unwrap();
        settings
    }

    fn refused_options(text: &str) -> Vec<String> {
        match import_text(text, "connector") {
            Ok(out) => panic!("converted:\n{out}"),
            Err(ImportError::Refused { refusals, .. }) => {
                refusals.into_iter().map(|r| r.option).collect()
            }
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn the_benchs_connector_becomes_the_same_source_slot_routing_and_placements() {
        let t = toml_of(BENCH);
        assert_keys(&t, &["kafka"], &[("format", s("debezium"))]);
        // The router's options as the connector wrote them; created_at is an extra column.
        assert_keys(
            &t,
            &["kafka", "debezium"],
            &[
                ("route.by.field", s("aggregate_type")),
                ("route.topic.replacement", s("bench.r1.4.${routedByValue}")),
                ("table.field.event.id", s("id")),
                ("table.field.event.key", s("aggregate_id")),
                ("table.field.event.payload", s("payload")),
                (
                    "table.fields.additional.placement",
                    s("id:header:event_id,created_at:header:commit_time"),
                ),
            ],
        );
        let sources = at(&t, &["sources"]).as_array().unwrap();
        assert_eq!(sources.len(), 1);
        assert_keys(
            &t,
            &["sources", "0"],
            &[
                ("name", s("bench_dbz_abc")),
                ("host", s("127.0.0.1")),
                ("port", toml::Value::Integer(55432)),
                ("user", s("relay_cdc")),
                ("database", s("bench")),
                ("slot", s("bench_dbz_abc")),
                ("publication", s("outbox_pub")),
                ("create_publication", toml::Value::Boolean(false)),
                ("create_slot", toml::Value::Boolean(false)),
                ("schema", s("public")),
                ("table", s("outbox")),
                ("marking", s("none")),
            ],
        );
        // The bench reads the relay's own table: the role the router does not name
        // (event type) gets the relay's name, not Debezium's `type`.
        assert_keys(
            &t,
            &["sources", "0", "columns"],
            &[
                ("id", s("id")),
                ("aggregate_type", s("aggregate_type")),
                ("aggregate_id", s("aggregate_id")),
                ("event_type", s("event_type")),
                ("payload", s("payload")),
                ("extra", list(&["created_at"])),
            ],
        );
        assert!(t.get("pipeline").is_none());
    }

    #[test]
    fn the_docs_outbox_connector_becomes_the_same_source_and_format() {
        let t = toml_of(DOCS);
        assert_keys(
            &t,
            &["kafka", "debezium"],
            &[
                ("route.topic.replacement", s("${routedByValue}.events")),
                (
                    "table.fields.additional.placement",
                    s("type:header:eventType"),
                ),
                ("table.expand.json.payload", s("true")),
                (
                    "value.converter",
                    s("org.apache.kafka.connect.json.JsonConverter"),
                ),
                (
                    "key.converter",
                    s("org.apache.kafka.connect.storage.StringConverter"),
                ),
            ],
        );
        assert_keys(
            &t,
            &["sources", "0"],
            &[
                ("name", s("dbserver1")),
                ("host", s("order-db")),
                ("port", toml::Value::Integer(5432)),
                ("user", s("postgresuser")),
                ("database", s("orderdb")),
                ("slot", s("outbox_slot")),
                ("publication", s("outbox_publication")),
                ("create_publication", toml::Value::Boolean(true)),
                ("create_slot", toml::Value::Boolean(false)),
                ("schema", s("inventory")),
                ("table", s("outboxevent")),
                ("marking", s("none")),
            ],
        );
        // Debezium's default columns, as its router reads them: the table stays as it is.
        assert_keys(
            &t,
            &["sources", "0", "columns"],
            &[
                ("id", s("id")),
                ("aggregate_type", s("aggregatetype")),
                ("aggregate_id", s("aggregateid")),
                ("event_type", s("type")),
                ("payload", s("payload")),
            ],
        );
    }

    #[test]
    fn the_output_loads_with_the_relays_own_loader_once_brokers_are_given() {
        use crate::config::Marking;
        let bench = pairs(&[
            ("id", "id"),
            ("aggregate_type", "aggregate_type"),
            ("aggregate_id", "aggregate_id"),
            ("event_type", "event_type"),
            ("payload", "payload"),
            ("extra", "created_at"),
        ]);
        let docs = pairs(&[
            ("id", "id"),
            ("aggregate_type", "aggregatetype"),
            ("aggregate_id", "aggregateid"),
            ("event_type", "type"),
            ("payload", "payload"),
        ]);
        for (what, input, table, columns) in [
            ("bench", BENCH, ("public", "outbox"), bench),
            ("docs", DOCS, ("inventory", "outboxevent"), docs),
        ] {
            let out = import_text(input, what).unwrap();
            let settings = load(&out).unwrap_or_else(|e| panic!("{what}: {e}\n{out}"));
            assert_eq!(settings.kafka.brokers, "127.0.0.1:9092");
            let source = &settings.sources[0];
            assert!(matches!(
                settings.kafka.record_format(source).unwrap(),
                crate::format::RecordFormat::Debezium(_)
            ));
            assert_eq!((source.schema.as_str(), source.table.as_str()), table);
            assert_eq!(mapping(&source.columns), columns, "{what}");
            assert_eq!(source.columns.timestamp, None, "{what}");
            assert_eq!(source.marking(), Marking::None, "{what}");
            assert!(!source.create_slot, "{what}");
            let missing = out.parse::<toml::Table>().unwrap();
            assert!(at(&missing, &["kafka"]).get("brokers").is_none());
            assert!(out.contains("RELAY_KAFKA__BROKERS"), "{out}");
        }
    }

    #[test]
    fn a_table_with_its_own_column_names_is_mapped_and_routed_by_them() {
        use crate::format::fixtures::{event, headers, ID};
        use crate::format::{Cell, RecordFormat};
        let out = import_text(&custom_columns(), "custom").unwrap();
        let t = out.parse::<toml::Table>().unwrap();
        assert_keys(
            &t,
            &["sources", "0", "columns"],
            &[
                ("id", s("event_id")),
                ("aggregate_type", s("topic_suffix")),
                ("aggregate_id", s("aggregate_key")),
                ("event_type", s("event_name")),
                ("payload", s("body")),
                ("extra", list(&["tenant", "shard"])),
            ],
        );
        // Kept as written; table.field.event.type became the mapping's event_type only.
        let debezium = at(&t, &["kafka", "debezium"]);
        assert_eq!(debezium.get("route.by.field"), Some(&s("topic_suffix")));
        assert_eq!(
            debezium.get("table.field.event.key"),
            Some(&s("aggregate_key"))
        );
        assert!(debezium.get("table.field.event.type").is_none(), "{out}");
        assert!(out.contains("from transforms.outbox.table.field.event.type = event_name"));

        let settings = load(&out).unwrap_or_else(|e| panic!("{e}\n{out}"));
        let RecordFormat::Debezium(router) =
            settings.kafka.record_format(&settings.sources[0]).unwrap()
        else {
            panic!("debezium")
        };
        // The event's values by role: the router reads them through the mapping.
        let columns = [
            ("tenant".to_string(), Cell::Text("acme".into())),
            ("shard".to_string(), Cell::Int(2)),
        ];
        let e = crate::format::OutboxEvent {
            columns: &columns,
            ..event(b"{\"a\":1}", &[])
        };
        let record = router.record(&e).unwrap();
        assert_eq!(record.topic, "order.events");
        assert_eq!(record.key.as_deref(), Some(&b"o-1"[..]));
        assert_eq!(record.partition, Some(2));
        assert_eq!(
            headers(&record),
            [
                ("id".to_string(), ID.to_string()),
                ("eventType".to_string(), "OrderCreated".to_string()),
                ("tenant".to_string(), "acme".to_string()),
            ]
        );
    }

    #[test]
    fn routing_by_the_event_type_column_leaves_the_aggregate_type_its_own() {
        let out = import_text(
            &docs_with("\"transforms.outbox.route.by.field\": \"type\","),
            "docs",
        )
        .unwrap();
        let settings = load(&out).unwrap_or_else(|e| panic!("{e}\n{out}"));
        let c = &settings.sources[0].columns;
        assert_eq!(
            (c.event_type.as_str(), c.aggregate_type.as_str()),
            ("type", "aggregatetype")
        );
        assert!(
            out.contains("route.by.field = type names the event_type column"),
            "{out}"
        );
        assert_eq!(settings.kafka.debezium.0["route.by.field"], "type");
    }

    #[test]
    fn a_column_name_the_relay_cannot_map_is_refused_by_its_option() {
        let text = docs_with("\"transforms.outbox.table.field.event.key\": \"aggregate-id\",");
        assert_eq!(
            refused_options(&text),
            ["transforms.outbox.table.field.event.key"]
        );
    }

    #[test]
    fn a_timestamp_precision_other_than_debeziums_default_is_refused_once_a_column_is_placed() {
        let placed = |mode: &str| {
            docs_with(&format!("\"time.precision.mode\": \"{mode}\",")).replace(
                "\"type:header:eventType\"",
                "\"type:header:eventType,created_at:header\"",
            )
        };
        assert_eq!(refused_options(&placed("connect")), ["time.precision.mode"]);
        import_text(&placed("adaptive"), "docs").unwrap();
        import_text(&docs_with("\"time.precision.mode\": \"connect\","), "docs").unwrap();
    }

    #[test]
    fn a_binary_handling_other_than_debeziums_default_is_refused() {
        assert_eq!(
            refused_options(&docs_with("\"binary.handling.mode\": \"base64\",")),
            ["binary.handling.mode"]
        );
        import_text(&docs_with("\"binary.handling.mode\": \"bytes\","), "docs").unwrap();
    }

    #[test]
    fn a_literal_password_is_never_written_and_its_variable_is_named() {
        let out = import_text(DOCS, "docs").unwrap();
        assert!(!out.contains("postgrespw"), "{out}");
        assert!(out.contains("RELAY_SOURCES__DBSERVER1__PASSWORD"), "{out}");
        let out = import_text(BENCH, "bench").unwrap();
        assert!(!out.contains("bench-secret"), "{out}");
        let t = out.parse::<toml::Table>().unwrap();
        assert!(at(&t, &["sources", "0"]).get("password").is_none());
    }

    #[test]
    fn a_directory_provider_reference_becomes_the_password_file() {
        let text = DOCS.replace(
            "\"postgrespw\"",
            "\"${directory:/run/secrets:pg-password}\"",
        );
        let t = toml_of(&text);
        assert_eq!(
            at(&t, &["sources", "0", "password_file"]),
            &s("/run/secrets/pg-password")
        );
        let out = import_text(
            &DOCS.replace("\"postgrespw\"", "\"${env:PG_PASSWORD}\""),
            "x",
        )
        .unwrap();
        assert!(
            out.contains("RELAY_SOURCES__DBSERVER1__PASSWORD=\"$PG_PASSWORD\""),
            "{out}"
        );
    }

    #[test]
    fn properties_and_json_of_one_connector_convert_alike() {
        let json = ConnectorConfig::parse(DOCS).unwrap();
        let mut properties = format!("name={}\n", json.name.as_deref().unwrap());
        for (k, v) in &json.options {
            properties.push_str(&format!("{k}={v}\n"));
        }
        let props = ConnectorConfig::parse(&properties).unwrap();
        assert_eq!(convert(&json).unwrap(), convert(&props).unwrap());
    }

    #[test]
    fn the_published_demo_is_refused_naming_its_decoder_and_timestamp() {
        assert_eq!(
            refused_options(DEMO),
            [
                "plugin.name",
                "transforms.outbox.table.field.event.timestamp"
            ]
        );
    }

    #[test]
    fn every_option_the_relay_cannot_honour_is_refused_by_name_at_once() {
        let json = ConnectorConfig::parse(DOCS).unwrap();
        let mut bad = json.options.clone();
        for (k, v) in [
            ("slot.drop.on.stop", "true"),
            ("snapshot.mode", "always"),
            ("database.sslmode", "allow"),
            ("transforms", "unwrap,outbox"),
            (
                "transforms.unwrap.type",
                "io.debezium.transforms.ExtractNewRecordState",
            ),
            (
                "transforms.outbox.route.topic.regex",
                "(?<routedByValue>.*)-x",
            ),
            ("transforms.outbox.table.field.event.schema.version", "v"),
            ("errors.tolerance", "all"),
            (
                "column.exclude.list",
                "inventory.outboxevent.tracingspancontext",
            ),
        ] {
            bad.insert(k.into(), v.into());
        }
        bad.remove("value.converter.schemas.enable");
        let refused = match convert(&ConnectorConfig {
            name: None,
            options: bad,
        }) {
            Ok(c) => panic!("converted: {c:?}"),
            Err(r) => r,
        };
        let names: Vec<&str> = refused.iter().map(|r| r.option.as_str()).collect();
        assert_eq!(
            names,
            [
                "column.exclude.list",
                "database.sslmode",
                "errors.tolerance",
                "slot.drop.on.stop",
                "snapshot.mode",
                "transforms.outbox.route.topic.regex",
                "transforms.outbox.table.field.event.schema.version",
                "transforms.unwrap.type",
                "value.converter.schemas.enable",
            ]
        );
        let text = ImportError::Refused {
            path: "c.json".into(),
            refusals: refused,
        }
        .to_string();
        assert!(text.starts_with("c.json: 9 option(s)"), "{text}");
        assert!(!text.contains("postgrespw"), "{text}");
    }

    #[test]
    fn no_snapshot_mode_lets_the_relay_create_a_slot_it_could_not_reconcile() {
        let json = ConnectorConfig::parse(DOCS).unwrap();
        for (mode, create) in [
            (Some("initial"), Some(false)),
            (None, Some(false)),
            (Some("when_needed"), Some(false)),
            (Some("no_data"), Some(false)),
            (Some("never"), Some(false)),
            (Some("always"), None),
            (Some("initial_only"), None),
            (Some("configuration_based"), None),
            (Some("custom"), None),
        ] {
            let mut c = json.clone();
            match mode {
                Some(m) => c.options.insert("snapshot.mode".into(), m.into()),
                None => c.options.remove("snapshot.mode"),
            };
            match (convert(&c), create) {
                (Ok(conv), Some(want)) => {
                    let e = conv.source.iter().find(|e| e.key == "create_slot").unwrap();
                    assert_eq!(e.value, Some(toml::Value::Boolean(want)), "{mode:?}");
                }
                (Err(r), None) => assert_eq!(r[0].option, "snapshot.mode", "{mode:?}"),
                (other, _) => panic!("{mode:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_column_option_is_kept_as_written_and_harmless_options_are_listed() {
        let text = DOCS.replace(
            "\"tasks.max\": \"1\",",
            "\"tasks.max\": \"1\", \"transforms.outbox.route.by.field\": \"aggregatetype\", \"heartbeat.interval.ms\": \"5000\",",
        );
        let out = import_text(&text, "docs").unwrap();
        let t = out.parse::<toml::Table>().unwrap();
        assert_eq!(
            at(&t, &["kafka", "debezium", "route.by.field"]),
            &s("aggregatetype")
        );
        assert_eq!(
            at(&t, &["sources", "0", "columns", "aggregate_type"]),
            &s("aggregatetype")
        );
        for line in [
            "#     tasks.max = 1: ",
            "#     heartbeat.interval.ms = 5000: ",
            "#     tombstones.on.delete = false: ",
        ] {
            assert!(out.contains(line), "{line} missing:\n{out}");
        }
    }

    #[test]
    fn the_source_name_is_addressable_from_the_environment() {
        for (prefix, name) in [
            ("dbserver1", "dbserver1"),
            ("orders.db-1", "orders_db_1"),
            ("..a..b__c..", "a_b_c"),
            ("...", "debezium"),
        ] {
            let text = DOCS.replace("\"dbserver1\"", &format!("{prefix:?}"));
            let t = toml_of(&text);
            assert_eq!(at(&t, &["sources", "0", "name"]), &s(name), "{prefix}");
        }
    }

    #[test]
    fn a_connector_that_is_not_the_outbox_router_on_postgres_is_refused() {
        let text = r#"{"connector.class": "io.debezium.connector.mysql.MySqlConnector",
            "database.hostname": "h", "database.user": "u", "database.dbname": "d",
            "plugin.name": "pgoutput", "table.include.list": "a.b,a.c"}"#;
        assert_eq!(
            refused_options(text),
            ["connector.class", "table.include.list", "transforms"]
        );
    }
}
