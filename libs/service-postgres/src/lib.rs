//! What both HTTP services need from PostgreSQL besides their own queries: where the
//! database is (read from the environment), a pool built from that, whether it is
//! ready, and telling an unusable database apart from a statement the database
//! rejected ([`StoreError`]).
//!
//! | variable | meaning |
//! |---|---|
//! | `DATABASE_URL` | a `postgres://` URL; when set, the `DB_*` address variables are not read |
//! | `DB_HOST`, `DB_USER`, `DB_NAME` | the address in parts (required without `DATABASE_URL`) |
//! | `DB_PORT` | default 5432 |
//! | `DB_PASSWORD` | required without `DATABASE_URL` (or `DB_PASSWORD_FILE`); may be empty (trust authentication) |
//! | `DB_PASSWORD_FILE` | a file holding the password (Docker and Kubernetes secrets); not with `DB_PASSWORD` |
//! | `DB_SSLMODE` | libpq's `sslmode`: `disable`, `allow`, `prefer` (default), `require`, `verify-ca`, `verify-full`; over `DATABASE_URL`'s too |
//! | `DB_SSLROOTCERT` | CA certificates (PEM) the server's certificate must lead to (`verify-ca`, `verify-full`; default: Mozilla's public roots) |
//! | `DB_SSLCERT`, `DB_SSLKEY` | a client certificate and its key (PEM) |
//! | `DB_MAX_CONNECTIONS` | pool size, default 10 |
//! | `DB_ACQUIRE_TIMEOUT_MS` | how long a request waits for a connection before the service answers 503, default 3000 |
//!
//! A `DATABASE_URL` takes libpq's parameters as users paste them
//! (`?sslmode=verify-full&sslrootcert=/etc/ssl/rds.pem`), and libpq's variables
//! (`PGSSLMODE`, `PGSSLROOTCERT`, ...) are defaults under both forms. TLS is rustls with
//! the aws-lc-rs provider, as in relay-cdc.
//!
//! Passwords stay in [`SecretString`]s: `Debug` output of the settings is safe to log,
//! and errors name the variable without repeating its value.

mod migrations;

use std::str::FromStr;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgSslMode};
use sqlx::PgPool;

pub use migrations::{migrate, with_outbox, LEGACY_OUTBOX_0001, OUTBOX};

const PORT_REASON: &str = "expected a port number from 1 to 65535";

/// How long a request waits for a database connection by default
/// (`DB_ACQUIRE_TIMEOUT_MS`) before it is answered 503: short, so an outage shows
/// quickly.
pub const DEFAULT_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

pub use service_config::{ConfigError, Vars};

/// Where the database is and how the pool treats it.
#[derive(Debug, Clone)]
pub struct DatabaseSettings {
    pub target: DatabaseTarget,
    pub max_connections: u32,
    /// How long a request waits for a connection before it is answered 503. Short, so
    /// an outage shows quickly; the pool retries on every later request.
    pub acquire_timeout: Duration,
    /// `DB_SSL*`: TLS settings applied over the target's.
    pub tls: TlsSettings,
}

/// `DB_SSLMODE`, `DB_SSLROOTCERT`, `DB_SSLCERT`, `DB_SSLKEY`; unset ones leave the URL's
/// (or libpq's `PGSSL*` variables') alone.
#[derive(Debug, Clone, Default)]
pub struct TlsSettings {
    pub mode: Option<PgSslMode>,
    pub root_cert: Option<String>,
    pub cert: Option<String>,
    pub key: Option<String>,
}

impl TlsSettings {
    fn from_vars<L: Fn(&str) -> Option<String>>(vars: &Vars<L>) -> Result<Self, ConfigError> {
        let mode = match vars.get("DB_SSLMODE") {
            None => None,
            Some(m) => Some(m.parse::<PgSslMode>().map_err(|_| ConfigError::Invalid {
                variable: "DB_SSLMODE",
                reason: "expected disable, allow, prefer, require, verify-ca or verify-full",
            })?),
        };
        let tls = Self {
            mode,
            root_cert: vars.get("DB_SSLROOTCERT"),
            cert: vars.get("DB_SSLCERT"),
            key: vars.get("DB_SSLKEY"),
        };
        for (variable, path) in [
            ("DB_SSLROOTCERT", &tls.root_cert),
            ("DB_SSLCERT", &tls.cert),
            ("DB_SSLKEY", &tls.key),
        ] {
            if let Some(path) = path {
                std::fs::metadata(path).map_err(|e| ConfigError::Unreadable {
                    variable,
                    reason: format!("cannot read {path}: {e}"),
                })?;
            }
        }
        if tls.cert.is_some() != tls.key.is_some() {
            return Err(ConfigError::Invalid {
                variable: if tls.cert.is_some() {
                    "DB_SSLKEY"
                } else {
                    "DB_SSLCERT"
                },
                reason: "DB_SSLCERT and DB_SSLKEY go together",
            });
        }
        Ok(tls)
    }

    fn apply(&self, mut options: PgConnectOptions) -> PgConnectOptions {
        if let Some(mode) = self.mode {
            options = options.ssl_mode(mode);
        }
        if let Some(path) = &self.root_cert {
            options = options.ssl_root_cert(path.as_str());
        }
        if let Some(path) = &self.cert {
            options = options.ssl_client_cert(path.as_str());
        }
        if let Some(path) = &self.key {
            options = options.ssl_client_key(path.as_str());
        }
        options
    }
}

/// The database address: a whole URL or its parts.
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

impl DatabaseSettings {
    /// Reads the variables in the table above. Empty values count as unset, except
    /// `DB_PASSWORD`'s.
    pub fn from_vars<L: Fn(&str) -> Option<String>>(vars: &Vars<L>) -> Result<Self, ConfigError> {
        let target = match vars.get("DATABASE_URL") {
            Some(url) => {
                let scheme = url.starts_with("postgres://") || url.starts_with("postgresql://");
                if !scheme || PgConnectOptions::from_str(&url).is_err() {
                    return Err(ConfigError::Invalid {
                        variable: "DATABASE_URL",
                        reason: "expected a postgres:// URL",
                    });
                }
                DatabaseTarget::Url(SecretString::from(url))
            }
            None => DatabaseTarget::Parts {
                host: vars.required("DB_HOST")?,
                port: vars
                    .parse_or("DB_PORT", 5432, PORT_REASON)
                    .and_then(|port: u16| {
                        (port > 0).then_some(port).ok_or(ConfigError::Invalid {
                            variable: "DB_PORT",
                            reason: PORT_REASON,
                        })
                    })?,
                user: vars.required("DB_USER")?,
                password: SecretString::from(
                    match vars.secret("DB_PASSWORD", "DB_PASSWORD_FILE")? {
                        Some(p) => p,
                        // Set but empty: trust authentication.
                        None => vars.lookup()("DB_PASSWORD")
                            .ok_or(ConfigError::Missing("DB_PASSWORD"))?,
                    },
                ),
                name: vars.required("DB_NAME")?,
            },
        };
        let max_connections: u32 =
            vars.parse_or("DB_MAX_CONNECTIONS", 10, "expected a positive integer")?;
        if max_connections == 0 {
            return Err(ConfigError::Invalid {
                variable: "DB_MAX_CONNECTIONS",
                reason: "expected a positive integer",
            });
        }
        let acquire_timeout = match vars.get("DB_ACQUIRE_TIMEOUT_MS") {
            None => DEFAULT_ACQUIRE_TIMEOUT,
            Some(_) => Duration::from_millis(vars.parse_or(
                "DB_ACQUIRE_TIMEOUT_MS",
                0,
                "expected a number of milliseconds",
            )?),
        };
        Ok(Self {
            target,
            max_connections,
            acquire_timeout,
            tls: TlsSettings::from_vars(vars)?,
        })
    }

    /// Settings for `target` with a pool of 10 and the given acquire timeout (tests).
    pub fn new(target: DatabaseTarget, acquire_timeout: Duration) -> Self {
        Self {
            target,
            max_connections: 10,
            acquire_timeout,
            tls: TlsSettings::default(),
        }
    }

    /// The connection options, sessions named `application_name` in
    /// `pg_stat_activity`.
    pub fn connect_options(&self, application_name: &str) -> PgConnectOptions {
        let options = match &self.target {
            DatabaseTarget::Url(url) => PgConnectOptions::from_str(url.expose_secret())
                .expect("DATABASE_URL is validated when it is read"),
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
        };
        self.tls.apply(options).application_name(application_name)
    }

    /// The pool's options (size, acquire timeout, a ping before each connection is
    /// handed out, so the pool replaces connections an outage broke).
    pub fn pool_options(&self) -> PgPoolOptions {
        PgPoolOptions::new()
            .max_connections(self.max_connections)
            .acquire_timeout(self.acquire_timeout)
            .test_before_acquire(true)
    }

    /// A pool that connects on first use: building it never fails, and after an
    /// outage it opens fresh connections by itself.
    pub fn lazy_pool(&self, application_name: &str) -> PgPool {
        self.pool_options()
            .connect_lazy_with(self.connect_options(application_name))
    }
}

/// A database failure, split by what the caller can do about it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached (no connection, pool exhausted, server going
    /// away): see [`is_unavailable`]. Worth retrying later; HTTP answers 503.
    #[error("database unavailable")]
    Unavailable(#[source] sqlx::Error),
    /// Anything else: a bug or a broken invariant. HTTP answers 500.
    #[error("database error")]
    Failed(#[source] sqlx::Error),
}

impl StoreError {
    /// For errors while acquiring a connection or opening a transaction: whatever the
    /// error says, the database was not usable.
    pub fn unavailable(error: sqlx::Error) -> Self {
        Self::Unavailable(error)
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        if is_unavailable(&error) {
            Self::Unavailable(error)
        } else {
            Self::Failed(error)
        }
    }
}

/// True when `error` says no usable connection to the database could be had (pool
/// timed out, network failure, server shutting down or refusing connections, too
/// many connections, database missing) as opposed to a statement the database
/// rejected. Such errors are transient for a client: the pool opens fresh
/// connections on later requests, so the service recovers without a restart.
pub fn is_unavailable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed => true,
        // TLS negotiation on a connection the network cut: no byte, or a wrong one,
        // where the server's answer to SSLRequest belongs.
        sqlx::Error::Protocol(m) if m.contains("SSLRequest") => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            // Class 08: connection exception; class 53: insufficient resources (53300
            // too many connections); 57P01-57P03: admin/crash shutdown, cannot connect
            // now; 3D000: no such database.
            code.starts_with("08")
                || code.starts_with("53")
                || matches!(&*code, "57P01" | "57P02" | "57P03" | "3D000")
        }),
        _ => false,
    }
}

/// A lazy pool (see [`DatabaseSettings::lazy_pool`]) over a schema brought up to date:
/// the outbox's migrations ([`OUTBOX`]) and the service's `own`, by version (see
/// [`with_outbox`]). Migrations are idempotent: applied ones are skipped, and sqlx
/// serialises concurrent runs with an advisory lock.
pub async fn migrated_pool(
    settings: &DatabaseSettings,
    application_name: &str,
    own: &sqlx::migrate::Migrator,
) -> Result<PgPool, sqlx::migrate::MigrateError> {
    let pool = settings.lazy_pool(application_name);
    let migrator = with_outbox(own).await?;
    migrate(&pool, &migrator).await?;
    tracing::info!("database migrations applied");
    Ok(pool)
}

/// Whether the database answers `select 1` within `timeout`: what `/readyz` asks. The
/// reason (for the probe's `errors`) never carries database text; the cause is logged.
pub async fn check_ready(pool: &PgPool, timeout: Duration) -> Result<(), &'static str> {
    let ping = async {
        let mut conn = pool.acquire().await?;
        sqlx::query("select 1").execute(&mut *conn).await
    };
    match tokio::time::timeout(timeout, ping).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(error)) => {
            tracing::warn!(error = %error, "readiness: database unreachable");
            Err("unreachable")
        }
        Err(_) => Err("timed out"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(vars: &[(&str, &str)]) -> Result<DatabaseSettings, ConfigError> {
        DatabaseSettings::from_vars(&Vars::from_pairs(vars))
    }

    const PARTS: &[(&str, &str)] = &[
        ("DB_HOST", "db"),
        ("DB_USER", "outbox"),
        ("DB_PASSWORD", "hunter22"),
        ("DB_NAME", "users_db"),
    ];

    fn with(var: &'static str, value: &'static str) -> Vec<(&'static str, &'static str)> {
        let mut vars: Vec<_> = PARTS.iter().copied().filter(|(k, _)| *k != var).collect();
        vars.push((var, value));
        vars
    }

    #[test]
    fn the_parts_make_connect_options_with_defaults() {
        let s = read(PARTS).unwrap();
        assert_eq!(
            (s.max_connections, s.acquire_timeout),
            (10, DEFAULT_ACQUIRE_TIMEOUT)
        );
        let opts = s.connect_options("user-service");
        assert_eq!((opts.get_host(), opts.get_port()), ("db", 5432));
        assert_eq!(opts.get_username(), "outbox");
        assert_eq!(opts.get_database(), Some("users_db"));
        assert_eq!(opts.get_application_name(), Some("user-service"));
    }

    #[test]
    fn each_missing_part_is_named() {
        for var in ["DB_HOST", "DB_USER", "DB_PASSWORD", "DB_NAME"] {
            let vars: Vec<_> = PARTS.iter().copied().filter(|(k, _)| *k != var).collect();
            let err = read(&vars).unwrap_err();
            assert_eq!(err, ConfigError::Missing(var));
            assert!(err.to_string().contains(var));
        }
    }

    #[test]
    fn tls_variables_apply_over_the_url_and_name_themselves_when_wrong() {
        let ca = std::env::temp_dir().join(format!("ca-{}.pem", std::process::id()));
        std::fs::write(&ca, "-----BEGIN CERTIFICATE-----\n").unwrap();
        let ca_path: &'static str = Box::leak(ca.to_str().unwrap().to_owned().into_boxed_str());
        let url = [
            (
                "DATABASE_URL",
                "postgres://u:p@db.example.com/app?sslmode=require",
            ),
            ("DB_SSLMODE", "verify-full"),
            ("DB_SSLROOTCERT", ca_path),
        ];
        let opts = read(&url).unwrap().connect_options("svc");
        assert!(matches!(opts.get_ssl_mode(), PgSslMode::VerifyFull));
        // As users paste it: the URL alone carries the mode.
        let pasted = read(&[(
            "DATABASE_URL",
            "postgres://u:p@db.example.com/app?sslmode=verify-ca&sslrootcert=/etc/ssl/rds.pem",
        )])
        .unwrap();
        assert!(matches!(
            pasted.connect_options("svc").get_ssl_mode(),
            PgSslMode::VerifyCa
        ));
        let err = read(&with("DB_SSLMODE", "verify_full")).unwrap_err();
        assert_eq!(err.variable(), "DB_SSLMODE");
        let err = read(&with("DB_SSLROOTCERT", "/nonexistent/ca.pem")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
        let err = read(&with("DB_SSLCERT", ca_path)).unwrap_err();
        assert_eq!(err.variable(), "DB_SSLKEY");
        std::fs::remove_file(ca).unwrap();
    }

    #[test]
    fn the_password_may_come_from_a_file_but_not_from_both() {
        let file = std::env::temp_dir().join(format!("pw-{}", std::process::id()));
        std::fs::write(&file, "s3cret with space \n").unwrap();
        let file_path: &'static str = Box::leak(file.to_str().unwrap().to_owned().into_boxed_str());
        let mut vars: Vec<_> = PARTS
            .iter()
            .copied()
            .filter(|(k, _)| *k != "DB_PASSWORD")
            .collect();
        vars.push(("DB_PASSWORD_FILE", file_path));
        let s = read(&vars).unwrap();
        let DatabaseTarget::Parts { password, .. } = &s.target else {
            panic!("parts")
        };
        assert_eq!(password.expose_secret(), "s3cret with space ");
        assert!(!format!("{s:?}").contains("s3cret"));
        let err = read(&with("DB_PASSWORD_FILE", file_path)).unwrap_err();
        assert_eq!(err.variable(), "DB_PASSWORD_FILE");
        std::fs::remove_file(&file).unwrap();
        vars.retain(|(k, _)| *k != "DB_PASSWORD_FILE");
        vars.push(("DB_PASSWORD_FILE", "/nonexistent/pw"));
        let err = read(&vars).unwrap_err();
        assert!(
            err.to_string().contains("DB_PASSWORD_FILE")
                && err.to_string().contains("/nonexistent/pw"),
            "{err}"
        );
    }

    #[test]
    fn an_empty_password_is_allowed_but_an_empty_host_is_not() {
        assert!(read(&with("DB_PASSWORD", "")).is_ok());
        assert_eq!(
            read(&with("DB_HOST", " ")).unwrap_err(),
            ConfigError::Missing("DB_HOST")
        );
    }

    #[test]
    fn a_malformed_variable_is_named() {
        for (var, value) in [
            ("DB_PORT", "-1"),
            ("DB_PORT", "0"),
            ("DB_PORT", "70000"),
            ("DB_MAX_CONNECTIONS", "0"),
            ("DB_MAX_CONNECTIONS", "many"),
            ("DB_ACQUIRE_TIMEOUT_MS", "5s"),
            ("DATABASE_URL", "mysql://nope"),
        ] {
            let err = read(&with(var, value)).unwrap_err();
            assert_eq!(err.variable(), var, "{var}={value}");
            assert!(err.to_string().starts_with(&format!("{var} is invalid")));
        }
    }

    #[test]
    fn pool_variables_override_the_defaults() {
        let mut vars = with("DB_MAX_CONNECTIONS", "4");
        vars.push(("DB_ACQUIRE_TIMEOUT_MS", "250"));
        let s = read(&vars).unwrap();
        assert_eq!(s.max_connections, 4);
        assert_eq!(s.acquire_timeout, Duration::from_millis(250));
    }

    #[test]
    fn database_url_overrides_the_parts_and_is_never_echoed() {
        let s = read(&[("DATABASE_URL", "postgres://u:s3cret@10.0.0.1:6543/other")]).unwrap();
        let opts = s.connect_options("x");
        assert_eq!((opts.get_host(), opts.get_port()), ("10.0.0.1", 6543));
        assert_eq!(opts.get_database(), Some("other"));
        assert!(!format!("{s:?}").contains("s3cret"));
        let err = read(&[("DATABASE_URL", "postgres://u:s3cret@h:notaport/d")]).unwrap_err();
        assert!(!err.to_string().contains("s3cret"));
        assert!(!format!("{:?}", read(PARTS).unwrap()).contains("hunter22"));
    }

    #[test]
    fn connection_failures_are_unavailable_and_rejections_are_not() {
        assert!(is_unavailable(&sqlx::Error::PoolTimedOut));
        assert!(is_unavailable(&sqlx::Error::Io(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused
        ))));
        assert!(!is_unavailable(&sqlx::Error::RowNotFound));
        assert!(!is_unavailable(&sqlx::Error::ColumnNotFound("x".into())));
    }
}
