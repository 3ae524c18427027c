//! Configuration, read once from the environment at start-up.
//!
//! | variable | meaning |
//! |---|---|
//! | `SERVER_PORT` | TCP port to listen on (all interfaces); 0 picks a free one |
//! | `DATABASE_URL`, `DB_*` | the database and the pool, see [`service_postgres`] (acquire timeout default 3000 ms) |

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

pub use service_postgres::{DatabaseSettings, DatabaseTarget};

/// How long a request waits for a database connection by default before it is
/// answered 503: short, so an outage shows quickly.
pub const DEFAULT_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

/// The name the service's sessions carry in `pg_stat_activity`.
pub const APPLICATION_NAME: &str = "user-service";

/// Everything the service needs to start.
#[derive(Debug, Clone)]
pub struct Settings {
    pub server: ServerSettings,
    pub database: DatabaseSettings,
}

#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub host: IpAddr,
    /// `0` asks the OS for a free port (tests do).
    pub port: u16,
}

impl ServerSettings {
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.host, self.port)
    }
}

/// A variable is missing or unusable. The message names the variable and never
/// repeats its value (it may hold a password).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("{0} is not set")]
    Missing(&'static str),
    #[error("{var} is invalid: {reason}")]
    Invalid { var: &'static str, reason: String },
}

impl From<service_postgres::ConfigError> for ConfigError {
    fn from(error: service_postgres::ConfigError) -> Self {
        match error {
            service_postgres::ConfigError::Missing(var) => Self::Missing(var),
            service_postgres::ConfigError::Invalid { variable, reason } => Self::Invalid {
                var: variable,
                reason: reason.into(),
            },
        }
    }
}

impl Settings {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|key| std::env::var(key).ok())
    }

    /// Reads the variables through `lookup`, so tests need not touch the environment.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let port = match lookup("SERVER_PORT") {
            Some(v) if !v.trim().is_empty() => {
                v.trim().parse().map_err(|_| ConfigError::Invalid {
                    var: "SERVER_PORT",
                    reason: "expected a port number from 0 to 65535".into(),
                })?
            }
            _ => return Err(ConfigError::Missing("SERVER_PORT")),
        };
        Ok(Self {
            server: ServerSettings {
                host: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                port,
            },
            database: DatabaseSettings::from_lookup(&lookup, DEFAULT_ACQUIRE_TIMEOUT)?,
        })
    }
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

    /// The database part is service-postgres's to test; here it only has to pass.
    const PARTS: &[(&str, &str)] = &[
        ("SERVER_PORT", "8080"),
        ("DATABASE_URL", "postgres://outbox:hunter22@db/users_db"),
    ];

    fn with(var: &'static str, value: &'static str) -> Vec<(&'static str, &'static str)> {
        let mut vars: Vec<_> = PARTS.iter().copied().filter(|(k, _)| *k != var).collect();
        if !value.is_empty() {
            vars.push((var, value));
        }
        vars
    }

    #[test]
    fn the_variables_make_the_server_address_and_the_database_options() {
        let s = settings(PARTS).unwrap();
        assert_eq!(s.server.addr().port(), 8080);
        assert_eq!(s.database.acquire_timeout, DEFAULT_ACQUIRE_TIMEOUT);
        let opts = s.database.connect_options(APPLICATION_NAME);
        assert_eq!((opts.get_host(), opts.get_port()), ("db", 5432));
        assert_eq!(opts.get_database(), Some("users_db"));
    }

    #[test]
    fn the_server_port_is_required_and_must_be_a_port() {
        assert_eq!(
            settings(&with("SERVER_PORT", "")).unwrap_err(),
            ConfigError::Missing("SERVER_PORT")
        );
        let err = settings(&with("SERVER_PORT", "eighty")).unwrap_err();
        assert!(
            err.to_string().starts_with("SERVER_PORT is invalid"),
            "{err}"
        );
    }

    #[test]
    fn database_errors_name_their_variable_without_its_value() {
        assert_eq!(
            settings(&with("DATABASE_URL", "")).unwrap_err(),
            ConfigError::Missing("DB_HOST")
        );
        let err = settings(&with("DATABASE_URL", "mysql://u:s3cret@h/db")).unwrap_err();
        assert!(
            err.to_string().starts_with("DATABASE_URL is invalid"),
            "{err}"
        );
        assert!(!err.to_string().contains("s3cret"));
        assert!(!format!("{:?}", settings(PARTS).unwrap()).contains("hunter22"));
    }
}
