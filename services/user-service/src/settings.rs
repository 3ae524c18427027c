//! Configuration, read once from the environment at start-up.
//!
//! | variable       | meaning                                               |
//! |----------------|-------------------------------------------------------|
//! | `SERVER_PORT`  | TCP port to listen on (all interfaces)                |
//! | `DB_HOST`      | PostgreSQL host                                       |
//! | `DB_PORT`      | PostgreSQL port                                       |
//! | `DB_USER`      | PostgreSQL user                                       |
//! | `DB_PASSWORD`  | PostgreSQL password (may be empty, never logged)      |
//! | `DB_NAME`      | database name                                         |
//! | `DATABASE_URL` | optional `postgres://` URL; when set, the `DB_*` ones are not read |

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

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

/// Where the database is and how the pool treats it.
#[derive(Debug, Clone)]
pub struct DatabaseSettings {
    pub target: DatabaseTarget,
    pub max_connections: u32,
    /// How long a request waits for a connection before it is answered 503. Short, so
    /// an outage shows quickly; the pool retries on every later request.
    pub acquire_timeout: Duration,
}

/// Either a URL or its parts. Both keep the password in a `SecretString`, so `Debug`
/// output of the settings is safe to log.
#[derive(Debug, Clone)]
pub enum DatabaseTarget {
    Url(SecretString),
    Parts {
        host: String,
        port: u16,
        user: String,
        password: SecretString,
        name: String,
    },
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

impl Settings {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|key| std::env::var(key).ok())
    }

    /// Reads the variables through `lookup`, so tests need not touch the environment.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let port = parse_port(&lookup, "SERVER_PORT")?;
        let target = match lookup("DATABASE_URL").filter(|url| !url.trim().is_empty()) {
            Some(url) => {
                let postgres_scheme =
                    url.starts_with("postgres://") || url.starts_with("postgresql://");
                if !postgres_scheme || PgConnectOptions::from_str(&url).is_err() {
                    return Err(ConfigError::Invalid {
                        var: "DATABASE_URL",
                        reason: "expected a postgres:// URL".into(),
                    });
                }
                DatabaseTarget::Url(SecretString::from(url))
            }
            None => DatabaseTarget::Parts {
                host: required(&lookup, "DB_HOST")?,
                port: parse_port(&lookup, "DB_PORT")?,
                user: required(&lookup, "DB_USER")?,
                password: SecretString::from(
                    lookup("DB_PASSWORD").ok_or(ConfigError::Missing("DB_PASSWORD"))?,
                ),
                name: required(&lookup, "DB_NAME")?,
            },
        };
        Ok(Self {
            server: ServerSettings {
                host: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                port,
            },
            database: DatabaseSettings::new(target),
        })
    }
}

impl DatabaseSettings {
    /// Pool defaults: 10 connections, 3 s acquire timeout.
    pub fn new(target: DatabaseTarget) -> Self {
        Self {
            target,
            max_connections: 10,
            acquire_timeout: Duration::from_secs(3),
        }
    }

    pub fn connect_options(&self) -> PgConnectOptions {
        match &self.target {
            DatabaseTarget::Url(url) => PgConnectOptions::from_str(url.expose_secret())
                .expect("DATABASE_URL was validated when settings were read"),
            DatabaseTarget::Parts {
                host,
                port,
                user,
                password,
                name,
            } => PgConnectOptions::new()
                .host(host)
                .port(*port)
                .username(user)
                .password(password.expose_secret())
                .database(name),
        }
    }

    /// A pool that connects on first use: building it never fails, and after an outage
    /// it opens fresh connections by itself (each one is pinged before it is handed out).
    pub fn lazy_pool(&self) -> PgPool {
        PgPoolOptions::new()
            .max_connections(self.max_connections)
            .acquire_timeout(self.acquire_timeout)
            .test_before_acquire(true)
            .connect_lazy_with(self.connect_options())
    }
}

fn required(
    lookup: &impl Fn(&str) -> Option<String>,
    var: &'static str,
) -> Result<String, ConfigError> {
    match lookup(var) {
        Some(v) if !v.trim().is_empty() => Ok(v),
        _ => Err(ConfigError::Missing(var)),
    }
}

fn parse_port(
    lookup: &impl Fn(&str) -> Option<String>,
    var: &'static str,
) -> Result<u16, ConfigError> {
    required(lookup, var)?
        .trim()
        .parse()
        .map_err(|_| ConfigError::Invalid {
            var,
            reason: "expected a port number from 0 to 65535".into(),
        })
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

    const PARTS: &[(&str, &str)] = &[
        ("SERVER_PORT", "8080"),
        ("DB_HOST", "db"),
        ("DB_PORT", "5432"),
        ("DB_USER", "outbox"),
        ("DB_PASSWORD", "hunter22"),
        ("DB_NAME", "users_db"),
    ];

    fn without(var: &str) -> Vec<(&'static str, &'static str)> {
        PARTS.iter().copied().filter(|(k, _)| *k != var).collect()
    }

    fn with(var: &'static str, value: &'static str) -> Vec<(&'static str, &'static str)> {
        let mut vars = without(var);
        vars.push((var, value));
        vars
    }

    #[test]
    fn the_db_variables_make_connect_options() {
        let s = settings(PARTS).unwrap();
        assert_eq!(s.server.port, 8080);
        let opts = s.database.connect_options();
        assert_eq!(opts.get_host(), "db");
        assert_eq!(opts.get_port(), 5432);
        assert_eq!(opts.get_username(), "outbox");
        assert_eq!(opts.get_database(), Some("users_db"));
    }

    #[test]
    fn each_missing_variable_is_named() {
        for var in [
            "SERVER_PORT",
            "DB_HOST",
            "DB_PORT",
            "DB_USER",
            "DB_PASSWORD",
            "DB_NAME",
        ] {
            let err = settings(&without(var)).unwrap_err();
            assert_eq!(err, ConfigError::Missing(var));
            assert!(err.to_string().contains(var));
        }
    }

    #[test]
    fn a_port_that_is_not_a_number_is_named() {
        let err = settings(&with("SERVER_PORT", "eighty")).unwrap_err();
        assert!(
            err.to_string().starts_with("SERVER_PORT is invalid"),
            "{err}"
        );
        let err = settings(&with("DB_PORT", "70000")).unwrap_err();
        assert!(err.to_string().starts_with("DB_PORT is invalid"), "{err}");
    }

    #[test]
    fn an_empty_password_is_allowed_but_a_missing_one_is_not() {
        assert!(settings(&with("DB_PASSWORD", "")).is_ok());
        assert_eq!(
            settings(&without("DB_PASSWORD")).unwrap_err(),
            ConfigError::Missing("DB_PASSWORD")
        );
    }

    #[test]
    fn database_url_overrides_the_db_variables() {
        let s = settings(&[
            ("SERVER_PORT", "0"),
            ("DATABASE_URL", "postgres://u:p@10.0.0.1:6543/other"),
        ])
        .unwrap();
        let opts = s.database.connect_options();
        assert_eq!(opts.get_host(), "10.0.0.1");
        assert_eq!(opts.get_port(), 6543);
        assert_eq!(opts.get_database(), Some("other"));
    }

    #[test]
    fn a_bad_database_url_is_named_without_echoing_it() {
        let err = settings(&[
            ("SERVER_PORT", "0"),
            ("DATABASE_URL", "mysql://u:s3cret@h/db"),
        ])
        .unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("DATABASE_URL is invalid"), "{msg}");
        assert!(!msg.contains("s3cret"));
    }

    #[test]
    fn debug_output_of_settings_hides_the_password() {
        let s = settings(PARTS).unwrap();
        assert!(!format!("{s:?}").contains("hunter22"));
        let s = settings(&[
            ("SERVER_PORT", "0"),
            ("DATABASE_URL", "postgres://u:s3cret@h/db"),
        ])
        .unwrap();
        assert!(!format!("{s:?}").contains("s3cret"));
    }
}
