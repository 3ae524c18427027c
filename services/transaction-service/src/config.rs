//! [`Settings`]: everything the service reads from its environment, parsed once at
//! start-up ([`FromEnv`]). A missing or malformed variable is a [`ConfigError`] naming
//! it.
//!
//! | variable | meaning |
//! |---|---|
//! | `SERVER_HOST`, `SERVER_PORT` | where to listen, see [`service_config`] (default `0.0.0.0:8080`) |
//! | `DATABASE_URL`, `DB_*` | the database and the pool, see [`service_postgres`] |
//! | `KAFKA_*`, `*_EVENTS_TOPIC`, `CONSUMER_MAX_BATCH` | the broker, group, topics and batch bound, see [`KafkaSettings`] |
//! | `KAFKA_SECURITY_PROTOCOL`, `KAFKA_SASL_*`, `KAFKA_SSL_*` | TLS and SASL to Kafka, librdkafka's properties in upper snake case, see [`KafkaSecurity`] |
//! | `OUTBOX_CAPTURE` | how the service's events reach relay-cdc: `table` (default, outbox rows), `messages` or `messages:<prefix>` (transactional logical decoding messages, no rows), see [`outbox::Capture`] |

use std::time::Duration;

use outbox::Capture;
use service_config::{ConfigError, FromEnv, ServerSettings, Vars};
use service_postgres::DatabaseSettings;

/// The name the service's sessions carry in `pg_stat_activity`, and its logs.
pub const APPLICATION_NAME: &str = "transaction-service";
/// The name the event consumer's sessions carry in `pg_stat_activity`.
pub const CONSUMER_APPLICATION_NAME: &str = "transaction-service-consumer";
/// Connections of the event consumer's own pool: it applies one batch at a time, the
/// second one replaces a broken one without waiting for it to be returned.
pub const CONSUMER_CONNECTIONS: u32 = 2;

/// The Kafka broker and the topics and group this service consumes with.
#[derive(Debug, Clone)]
pub struct KafkaSettings {
    /// `KAFKA_BROKERS`, comma-separated `host:port` list.
    pub brokers: String,
    /// `KAFKA_GROUP_ID`, default `transaction-service`.
    pub group_id: String,
    /// `USER_EVENTS_TOPIC`, default `outbox.event.user`: where `UserCreated` arrives.
    pub user_events_topic: String,
    /// `TRANSACTION_EVENTS_TOPIC`, default `outbox.event.transaction`: where this
    /// service's own `TransactionCreated` events come back to be settled.
    pub transaction_events_topic: String,
    /// `CONSUMER_MAX_BATCH`, default [`DEFAULT_MAX_BATCH`]: at most this many records are
    /// applied in one database transaction.
    pub max_batch: usize,
    /// `CONSUMER_STALL_TIMEOUT_SECS`, default [`DEFAULT_STALL_TIMEOUT`]: how long the consumer may
    /// stay out of its group while a broker is reachable before its client is replaced
    /// (see [`crate::consumer::stall`]).
    pub stall_timeout: Duration,
    /// TLS and SASL: what every Kafka client of the service gets.
    pub security: KafkaSecurity,
}

/// librdkafka's security properties, each from the variable named like it in upper
/// snake case with `KAFKA_` in front (`KAFKA_SASL_USERNAME` → `sasl.username`), the
/// names `scripts/stack env` exports. `KAFKA_SASL_PASSWORD_FILE` reads the password from
/// a file (Docker and Kubernetes secrets). `Debug` hides the passwords.
#[derive(Clone, Default)]
pub struct KafkaSecurity {
    properties: Vec<(&'static str, String)>,
}

/// (variable, property) of the settings [`KafkaSecurity`] reads besides the password.
const SECURITY_VARIABLES: [(&str, &str); 7] = [
    ("KAFKA_SECURITY_PROTOCOL", "security.protocol"),
    ("KAFKA_SASL_MECHANISM", "sasl.mechanism"),
    ("KAFKA_SASL_USERNAME", "sasl.username"),
    ("KAFKA_SSL_CA_LOCATION", "ssl.ca.location"),
    ("KAFKA_SSL_CERTIFICATE_LOCATION", "ssl.certificate.location"),
    ("KAFKA_SSL_KEY_LOCATION", "ssl.key.location"),
    (
        "KAFKA_SSL_ENDPOINT_IDENTIFICATION_ALGORITHM",
        "ssl.endpoint.identification.algorithm",
    ),
];

impl KafkaSecurity {
    /// Reads the variables in [`KafkaSecurity`]'s table through `vars`.
    pub fn from_vars<L: Fn(&str) -> Option<String>>(vars: &Vars<L>) -> Result<Self, ConfigError> {
        let mut properties = Vec::new();
        for (variable, property) in SECURITY_VARIABLES {
            if let Some(value) = vars.get(variable) {
                properties.push((property, value));
            }
        }
        if let Some(password) = vars.secret("KAFKA_SASL_PASSWORD", "KAFKA_SASL_PASSWORD_FILE")? {
            properties.push(("sasl.password", password));
        }
        if let Some(key_password) = vars.get("KAFKA_SSL_KEY_PASSWORD") {
            properties.push(("ssl.key.password", key_password));
        }
        let security = Self { properties };
        if let Some(p) = security.get("security.protocol") {
            if !["plaintext", "ssl", "sasl_plaintext", "sasl_ssl"]
                .contains(&p.to_ascii_lowercase().as_str())
            {
                return Err(ConfigError::Invalid {
                    variable: "KAFKA_SECURITY_PROTOCOL",
                    reason: "expected PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL",
                });
            }
        }
        if let Some(m) = security.get("sasl.mechanism") {
            if !["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"].contains(&m) {
                return Err(ConfigError::Invalid {
                    variable: "KAFKA_SASL_MECHANISM",
                    reason: "expected PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512",
                });
            }
        }
        for (variable, property) in [
            ("KAFKA_SSL_CA_LOCATION", "ssl.ca.location"),
            ("KAFKA_SSL_CERTIFICATE_LOCATION", "ssl.certificate.location"),
            ("KAFKA_SSL_KEY_LOCATION", "ssl.key.location"),
        ] {
            if let Some(path) = security.get(property) {
                std::fs::metadata(path).map_err(|e| ConfigError::Unreadable {
                    variable,
                    reason: format!("cannot read {path}: {e}"),
                })?;
            }
        }
        Ok(security)
    }

    fn get(&self, property: &str) -> Option<&str> {
        self.properties
            .iter()
            .find(|(p, _)| *p == property)
            .map(|(_, v)| v.as_str())
    }

    /// Sets these properties on a client's configuration.
    pub fn apply(&self, config: &mut rdkafka::ClientConfig) {
        for (property, value) in &self.properties {
            config.set(*property, value);
        }
    }
}

impl std::fmt::Debug for KafkaSecurity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut m = f.debug_map();
        for (property, value) in &self.properties {
            if property.ends_with("password") {
                m.entry(property, &"<redacted>");
            } else {
                m.entry(property, value);
            }
        }
        m.finish()
    }
}

/// Records applied in one database transaction at most, unless `CONSUMER_MAX_BATCH`
/// says otherwise.
pub const DEFAULT_MAX_BATCH: usize = 500;
/// The largest `CONSUMER_MAX_BATCH` accepted.
pub const MAX_BATCH_LIMIT: usize = 10_000;
/// How long the consumer may stay out of its group while a broker is up, unless
/// `CONSUMER_STALL_TIMEOUT_SECS` says otherwise: three session timeouts, far above a
/// rebalance of a healthy group.
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(30);
/// The `CONSUMER_STALL_TIMEOUT_SECS` accepted: at least two statistics intervals, at
/// most an hour.
const STALL_TIMEOUT_SECS: std::ops::RangeInclusive<u64> = 10..=3600;

/// What `OUTBOX_CAPTURE` accepts, as its [`ConfigError`] says.
const CAPTURE_FORMS: &str =
    "expected \"table\", \"messages\" or \"messages:<prefix>\" with a non-empty prefix";

/// The service's configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    pub server: ServerSettings,
    pub database: DatabaseSettings,
    pub kafka: KafkaSettings,
    /// `OUTBOX_CAPTURE`: how `TransactionCreated` and the settlements' events are
    /// written, in the state change's transaction either way; relay-cdc's source must be
    /// configured to match.
    pub capture: Capture,
}

impl FromEnv for Settings {
    fn from_vars<L: Fn(&str) -> Option<String>>(vars: &Vars<L>) -> Result<Self, ConfigError> {
        let kafka = KafkaSettings::from_vars(vars)?;
        Ok(Self {
            server: ServerSettings::from_vars(vars)?,
            database: DatabaseSettings::from_vars(vars)?,
            kafka,
            capture: vars.parse_or("OUTBOX_CAPTURE", Capture::Table, CAPTURE_FORMS)?,
        })
    }
}

impl KafkaSettings {
    fn from_vars<L: Fn(&str) -> Option<String>>(vars: &Vars<L>) -> Result<Self, ConfigError> {
        let kafka = Self {
            brokers: vars.required("KAFKA_BROKERS")?,
            group_id: vars.or("KAFKA_GROUP_ID", "transaction-service"),
            user_events_topic: vars.or("USER_EVENTS_TOPIC", "outbox.event.user"),
            transaction_events_topic: vars
                .or("TRANSACTION_EVENTS_TOPIC", "outbox.event.transaction"),
            max_batch: vars.parse_or(
                "CONSUMER_MAX_BATCH",
                DEFAULT_MAX_BATCH,
                "expected a whole number from 1 to 10000",
            )?,
            stall_timeout: Duration::from_secs(vars.parse_or(
                "CONSUMER_STALL_TIMEOUT_SECS",
                DEFAULT_STALL_TIMEOUT.as_secs(),
                "expected a whole number of seconds from 10 to 3600",
            )?),
            security: KafkaSecurity::from_vars(vars)?,
        };
        if !STALL_TIMEOUT_SECS.contains(&kafka.stall_timeout.as_secs()) {
            return Err(ConfigError::Invalid {
                variable: "CONSUMER_STALL_TIMEOUT_SECS",
                reason: "expected a whole number of seconds from 10 to 3600",
            });
        }
        if !(1..=MAX_BATCH_LIMIT).contains(&kafka.max_batch) {
            return Err(ConfigError::Invalid {
                variable: "CONSUMER_MAX_BATCH",
                reason: "expected a whole number from 1 to 10000",
            });
        }
        for (variable, topic) in [
            ("USER_EVENTS_TOPIC", &kafka.user_events_topic),
            ("TRANSACTION_EVENTS_TOPIC", &kafka.transaction_events_topic),
        ] {
            if !valid_topic(topic) {
                return Err(ConfigError::Invalid {
                    variable,
                    reason: "expected a Kafka topic name ([A-Za-z0-9._-], at most 249 characters)",
                });
            }
        }
        if kafka.user_events_topic == kafka.transaction_events_topic {
            return Err(ConfigError::Invalid {
                variable: "TRANSACTION_EVENTS_TOPIC",
                reason: "must differ from USER_EVENTS_TOPIC",
            });
        }
        Ok(kafka)
    }
}

fn valid_topic(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 249
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(vars: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        Settings::from_vars(&Vars::from_pairs(vars))
    }

    const MINIMAL: &[(&str, &str)] = &[
        ("DB_HOST", "db"),
        ("DB_USER", "outbox"),
        ("DB_PASSWORD", "s3cret"),
        ("DB_NAME", "transaction_db"),
        ("KAFKA_BROKERS", "kafka:9092"),
    ];

    fn with(extra: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
        let mut vars: Vec<_> = MINIMAL
            .iter()
            .copied()
            .filter(|(k, _)| !extra.iter().any(|(e, _)| e == k))
            .collect();
        vars.extend(extra.iter().copied().filter(|(_, v)| !v.is_empty()));
        vars
    }

    #[test]
    fn the_original_design_variables_are_enough() {
        let s = settings(MINIMAL).unwrap();
        assert_eq!(s.server.port, 8080);
        assert_eq!(s.kafka.user_events_topic, "outbox.event.user");
        assert_eq!(s.kafka.transaction_events_topic, "outbox.event.transaction");
        assert_eq!(s.kafka.group_id, "transaction-service");
        assert_eq!(s.kafka.max_batch, DEFAULT_MAX_BATCH);
        assert_eq!(s.kafka.stall_timeout, DEFAULT_STALL_TIMEOUT);
        assert_eq!(s.capture, Capture::Table);
        let opts = s.database.connect_options(APPLICATION_NAME);
        assert_eq!(opts.get_host(), "db");
        assert_eq!(opts.get_port(), 5432);
        assert_eq!(opts.get_database(), Some("transaction_db"));
    }

    #[test]
    fn kafka_security_comes_from_librdkafkas_names_and_never_shows_the_password() {
        let s = settings(&with(&[
            ("KAFKA_SECURITY_PROTOCOL", "SASL_SSL"),
            ("KAFKA_SASL_MECHANISM", "SCRAM-SHA-512"),
            ("KAFKA_SASL_USERNAME", "transaction_service"),
            ("KAFKA_SASL_PASSWORD", "hunter22"),
        ]))
        .unwrap();
        let sec = &s.kafka.security;
        assert_eq!(sec.get("security.protocol"), Some("SASL_SSL"));
        assert_eq!(sec.get("sasl.username"), Some("transaction_service"));
        assert_eq!(sec.get("sasl.password"), Some("hunter22"));
        assert!(!format!("{s:?}").contains("hunter22"));
        for (var, value) in [
            ("KAFKA_SECURITY_PROTOCOL", "tls"),
            ("KAFKA_SASL_MECHANISM", "GSSAPI"),
            ("KAFKA_SSL_CA_LOCATION", "/nonexistent/ca.pem"),
            ("KAFKA_SASL_PASSWORD_FILE", "/nonexistent/pw"),
        ] {
            let err = settings(&with(&[(var, value)])).unwrap_err();
            assert_eq!(err.variable(), var, "{err}");
        }
    }

    #[test]
    fn outbox_capture_takes_table_messages_or_a_prefix() {
        let capture = |value: &'static str| settings(&with(&[("OUTBOX_CAPTURE", value)]));
        assert_eq!(capture("table").unwrap().capture, Capture::Table);
        assert_eq!(capture(" messages ").unwrap().capture, Capture::messages());
        assert_eq!(
            capture("messages:ledger").unwrap().capture,
            Capture::Messages {
                prefix: "ledger".into()
            }
        );
        for bad in ["rows", "TABLE", "messages:", "table:x", "message"] {
            let err = capture(bad).unwrap_err();
            assert_eq!(err.variable(), "OUTBOX_CAPTURE", "{bad:?}");
            assert!(
                err.to_string().contains("messages:<prefix>"),
                "{bad:?}: {err}"
            );
        }
    }

    #[test]
    fn a_missing_variable_is_named() {
        let err = settings(&with(&[("DB_PASSWORD", "")])).unwrap_err();
        assert_eq!(err, ConfigError::Missing("DB_PASSWORD"));
        let err = settings(&with(&[("KAFKA_BROKERS", "")])).unwrap_err();
        assert_eq!(err, ConfigError::Missing("KAFKA_BROKERS"));
    }

    #[test]
    fn a_malformed_variable_is_named() {
        for (var, value) in [
            ("SERVER_PORT", "http"),
            ("SERVER_PORT", "70000"),
            ("DB_PORT", "-1"),
            ("DB_MAX_CONNECTIONS", "0"),
            ("USER_EVENTS_TOPIC", "bad topic"),
            ("CONSUMER_MAX_BATCH", "0"),
            ("CONSUMER_MAX_BATCH", "10001"),
            ("CONSUMER_MAX_BATCH", "lots"),
            ("CONSUMER_STALL_TIMEOUT_SECS", "9"),
            ("CONSUMER_STALL_TIMEOUT_SECS", "3601"),
            ("CONSUMER_STALL_TIMEOUT_SECS", "1m"),
            ("DATABASE_URL", "mysql://nope"),
        ] {
            let err = settings(&with(&[(var, value)])).unwrap_err();
            assert_eq!(err.variable(), var, "{var}={value}");
        }
    }
}
