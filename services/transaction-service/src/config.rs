//! [`Settings`]: everything the service reads from its environment, parsed once at
//! start-up. A missing or malformed variable is an error that names the variable.

use std::net::IpAddr;
use std::str::FromStr;
use std::time::Duration;

pub use service_postgres::{DatabaseSettings, DatabaseTarget};

/// A configuration variable that is missing or malformed.
#[derive(Debug, thiserror::Error)]
#[error("{variable}: {reason}")]
pub struct ConfigError {
    pub variable: &'static str,
    pub reason: String,
}

impl ConfigError {
    fn new(variable: &'static str, reason: impl Into<String>) -> Self {
        Self {
            variable,
            reason: reason.into(),
        }
    }
}

impl From<service_postgres::ConfigError> for ConfigError {
    fn from(error: service_postgres::ConfigError) -> Self {
        let reason = match error {
            service_postgres::ConfigError::Missing(_) => "is required but not set",
            service_postgres::ConfigError::Invalid { reason, .. } => reason,
        };
        Self::new(error.variable(), reason)
    }
}

/// How long a request waits for a database connection by default
/// (`DB_ACQUIRE_TIMEOUT_MS`) before it is answered 503.
pub const DEFAULT_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// The name the service's sessions carry in `pg_stat_activity`.
pub const APPLICATION_NAME: &str = "transaction-service";

/// The service's configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    pub server: ServerSettings,
    pub database: DatabaseSettings,
    pub kafka: KafkaSettings,
}

/// Where the HTTP server listens.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// `SERVER_HOST`, default `0.0.0.0`.
    pub host: IpAddr,
    /// `SERVER_PORT`, default 8080; 0 picks a free port (tests).
    pub port: u16,
}

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
}

impl Settings {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads variables through `lookup` (the environment, or a map in tests). Empty
    /// values count as missing.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let required = |name: &'static str| {
            get(name).ok_or_else(|| ConfigError::new(name, "is required but not set"))
        };
        let or_default = |name: &str, default: &str| get(name).unwrap_or_else(|| default.into());

        let server = ServerSettings {
            host: parse(
                "SERVER_HOST",
                &or_default("SERVER_HOST", "0.0.0.0"),
                "must be an IP address",
            )?,
            port: parse(
                "SERVER_PORT",
                &or_default("SERVER_PORT", "8080"),
                "must be a port number (0-65535)",
            )?,
        };

        let database = DatabaseSettings::from_lookup(&lookup, DEFAULT_ACQUIRE_TIMEOUT)?;

        let kafka = KafkaSettings {
            brokers: required("KAFKA_BROKERS")?,
            group_id: or_default("KAFKA_GROUP_ID", "transaction-service"),
            user_events_topic: or_default("USER_EVENTS_TOPIC", "outbox.event.user"),
            transaction_events_topic: or_default(
                "TRANSACTION_EVENTS_TOPIC",
                "outbox.event.transaction",
            ),
        };
        for (variable, topic) in [
            ("USER_EVENTS_TOPIC", &kafka.user_events_topic),
            ("TRANSACTION_EVENTS_TOPIC", &kafka.transaction_events_topic),
        ] {
            if !valid_topic(topic) {
                return Err(ConfigError::new(
                    variable,
                    "must be a Kafka topic name ([A-Za-z0-9._-], at most 249 characters)",
                ));
            }
        }
        if kafka.user_events_topic == kafka.transaction_events_topic {
            return Err(ConfigError::new(
                "TRANSACTION_EVENTS_TOPIC",
                "must differ from USER_EVENTS_TOPIC",
            ));
        }

        Ok(Self {
            server,
            database,
            kafka,
        })
    }
}

fn parse<T: FromStr>(variable: &'static str, value: &str, reason: &str) -> Result<T, ConfigError> {
    value
        .trim()
        .parse()
        .map_err(|_| ConfigError::new(variable, reason))
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
    use std::collections::HashMap;

    use super::*;

    fn settings(vars: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::from_lookup(|k| map.get(k).cloned())
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
        let opts = s.database.connect_options(APPLICATION_NAME);
        assert_eq!(opts.get_host(), "db");
        assert_eq!(opts.get_port(), 5432);
        assert_eq!(opts.get_database(), Some("transaction_db"));
    }

    #[test]
    fn a_missing_variable_is_named() {
        let err = settings(&with(&[("DB_PASSWORD", "")])).unwrap_err();
        assert_eq!(err.variable, "DB_PASSWORD");
        let err = settings(&with(&[("KAFKA_BROKERS", "")])).unwrap_err();
        assert_eq!(err.variable, "KAFKA_BROKERS");
    }

    #[test]
    fn a_malformed_variable_is_named() {
        for (var, value) in [
            ("SERVER_PORT", "http"),
            ("SERVER_PORT", "70000"),
            ("DB_PORT", "-1"),
            ("DB_MAX_CONNECTIONS", "0"),
            ("USER_EVENTS_TOPIC", "bad topic"),
            ("DATABASE_URL", "mysql://nope"),
        ] {
            let err = settings(&with(&[(var, value)])).unwrap_err();
            assert_eq!(err.variable, var, "{var}={value}");
        }
    }
}
