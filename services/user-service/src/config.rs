//! [`Settings`]: everything the service reads from its environment, parsed once at
//! start-up ([`FromEnv`]). A missing or malformed variable is a [`ConfigError`] naming
//! it.
//!
//! | variable | meaning |
//! |---|---|
//! | `SERVER_HOST`, `SERVER_PORT` | where to listen, see [`service_config`] (default `0.0.0.0:8080`) |
//! | `DATABASE_URL`, `DB_*` | the database and the pool, see [`service_postgres`] |

use service_config::{ConfigError, FromEnv, ServerSettings, Vars};
use service_postgres::DatabaseSettings;

/// The name the service's sessions carry in `pg_stat_activity`, and its logs.
pub const APPLICATION_NAME: &str = "user-service";

/// The service's configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    pub server: ServerSettings,
    pub database: DatabaseSettings,
}

impl FromEnv for Settings {
    fn from_vars<L: Fn(&str) -> Option<String>>(vars: &Vars<L>) -> Result<Self, ConfigError> {
        Ok(Self {
            server: ServerSettings::from_vars(vars)?,
            database: DatabaseSettings::from_vars(vars)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_url_is_enough() {
        let vars = Vars::from_pairs(&[("DATABASE_URL", "postgres://outbox:hunter22@db/users_db")]);
        let s = Settings::from_vars(&vars).unwrap();
        assert_eq!(s.server.addr().to_string(), "0.0.0.0:8080");
        let opts = s.database.connect_options(APPLICATION_NAME);
        assert_eq!((opts.get_host(), opts.get_port()), ("db", 5432));
        assert_eq!(opts.get_database(), Some("users_db"));
        assert!(!format!("{s:?}").contains("hunter22"));
    }

    #[test]
    fn the_database_is_required_and_a_bad_port_is_named() {
        let err = Settings::from_vars(&Vars::from_pairs(&[])).unwrap_err();
        assert_eq!(err, ConfigError::Missing("DB_HOST"));
        let vars = Vars::from_pairs(&[
            ("SERVER_PORT", "eighty"),
            ("DATABASE_URL", "postgres://u:p@db/users_db"),
        ]);
        assert_eq!(
            Settings::from_vars(&vars).unwrap_err().variable(),
            "SERVER_PORT"
        );
    }
}
