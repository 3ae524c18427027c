//! [`Settings`]: everything the service reads from its environment, parsed once at
//! start-up ([`FromEnv`]). A missing or malformed variable is a [`ConfigError`] naming
//! it.
//!
//! | variable | meaning |
//! |---|---|
//! | `SERVER_HOST`, `SERVER_PORT` | where to listen, see [`service_config`] (default `0.0.0.0:8080`) |
//! | `DATABASE_URL`, `DB_*` | the database and the pool, see [`service_postgres`] |
//! | `KAFKA_*`, `*_EVENTS_TOPIC`, `CONSUMER_MAX_BATCH` | the broker, group, topics and batch bound, see [`KafkaSettings`] |

use std::time::Duration;

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

/// The service's configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    pub server: ServerSettings,
    pub database: DatabaseSettings,
    pub kafka: KafkaSettings,
}

impl FromEnv for Settings {
    fn from_vars<L: Fn(&str) -> Option<String>>(vars: &Vars<L>) -> Result<Self, ConfigError> {
        let kafka = KafkaSettings::from_vars(vars)?;
        Ok(Self {
            server: ServerSettings::from_vars(vars)?,
            database: DatabaseSettings::from_vars(vars)?,
            kafka,
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
        let opts = s.database.connect_options(APPLICATION_NAME);
        assert_eq!(opts.get_host(), "db");
        assert_eq!(opts.get_port(), 5432);
        assert_eq!(opts.get_database(), Some("transaction_db"));
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
