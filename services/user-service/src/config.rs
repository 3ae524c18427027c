//! [`Settings`]: everything the service reads from its environment, parsed once at
//! start-up ([`FromEnv`]). A missing or malformed variable is a [`ConfigError`] naming
//! it.
//!
//! | variable | meaning |
//! |---|---|
//! | `SERVER_HOST`, `SERVER_PORT` | where to listen, see [`service_config`] (default `0.0.0.0:8080`) |
//! | `DATABASE_URL`, `DB_*` | the database and the pool, see [`service_postgres`] |
//! | `OUTBOX_CAPTURE` | how `UserCreated` reaches relay-cdc: `table` (default, an outbox row), `messages` or `messages:<prefix>` (a transactional logical decoding message, no row), see [`outbox::Capture`] |

use outbox::Capture;
use service_config::{ConfigError, FromEnv, ServerSettings, Vars};
use service_postgres::DatabaseSettings;

/// The name the service's sessions carry in `pg_stat_activity`, and its logs.
pub const APPLICATION_NAME: &str = "user-service";

/// What `OUTBOX_CAPTURE` accepts, as its [`ConfigError`] says.
const CAPTURE_FORMS: &str =
    "expected \"table\", \"messages\" or \"messages:<prefix>\" with a non-empty prefix";

/// The service's configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    pub server: ServerSettings,
    pub database: DatabaseSettings,
    /// `OUTBOX_CAPTURE`: how the sign-up's event is written, in the sign-up's transaction
    /// either way; relay-cdc's source must be configured to match.
    pub capture: Capture,
}

impl FromEnv for Settings {
    fn from_vars<L: Fn(&str) -> Option<String>>(vars: &Vars<L>) -> Result<Self, ConfigError> {
        Ok(Self {
            server: ServerSettings::from_vars(vars)?,
            database: DatabaseSettings::from_vars(vars)?,
            capture: vars.parse_or("OUTBOX_CAPTURE", Capture::Table, CAPTURE_FORMS)?,
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
        assert_eq!(s.capture, Capture::Table);
        assert!(!format!("{s:?}").contains("hunter22"));
    }

    #[test]
    fn outbox_capture_takes_table_messages_or_a_prefix() {
        let capture = |value: &str| {
            let vars = Vars::from_pairs(&[
                ("DATABASE_URL", "postgres://u:p@db/users_db"),
                ("OUTBOX_CAPTURE", value),
            ]);
            Settings::from_vars(&vars).map(|s| s.capture)
        };
        assert_eq!(capture("table"), Ok(Capture::Table));
        assert_eq!(capture(""), Ok(Capture::Table));
        assert_eq!(capture(" messages "), Ok(Capture::messages()));
        assert_eq!(
            capture("messages:users"),
            Ok(Capture::Messages {
                prefix: "users".into()
            })
        );
        for bad in ["rows", "Messages", "messages:", "table:x"] {
            let err = capture(bad).unwrap_err();
            assert_eq!(err.variable(), "OUTBOX_CAPTURE", "{bad:?}");
            assert!(
                err.to_string().contains("messages:<prefix>"),
                "{bad:?}: {err}"
            );
        }
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
