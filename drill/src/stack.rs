//! The drill's private stack: `scripts/stack` with a folder and ports of its own, so
//! restarting PostgreSQL or stopping the broker never touches the shared stack; plus
//! the per-scenario databases and replication slots on it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};

/// The shared stack's defaults: the drill refuses to run on them.
pub const SHARED_PG_PORT: u16 = 55432;
pub const SHARED_KAFKA_PORT: u16 = 59092;
pub const SHARED_KAFKA_CONTROLLER_PORT: u16 = 59093;

pub const PG_USER: &str = "outbox";
pub const PG_PASSWORD: &str = "outbox";

/// Where the private stack lives and listens.
#[derive(Debug, Clone)]
pub struct StackConfig {
    pub repo: PathBuf,
    pub dir: PathBuf,
    pub pg_port: u16,
    pub kafka_port: u16,
    pub kafka_controller_port: u16,
    /// `tls`: the secured stack (`STACK_SECURITY=tls`): TLS-only PostgreSQL with the
    /// least-privilege roles, SASL_SSL-only Kafka with ACLs; every component runs as its
    /// own principal.
    pub secured: bool,
}

/// The host name clients use on the secured stack (its certificate names it).
const TLS_HOST: &str = "localhost";

impl StackConfig {
    /// Refuses the shared stack's folder and ports: the drill restarts and stops what it uses.
    pub fn validate(&self) -> anyhow::Result<()> {
        let shared_dir = self.repo.join(".stack");
        if same_path(&self.dir, &shared_dir) {
            bail!(
                "--stack-dir {} is the shared stack's folder; the drill restarts PostgreSQL and stops Kafka, so it needs a stack of its own",
                self.dir.display()
            );
        }
        for (flag, port, shared) in [
            ("--pg-port", self.pg_port, SHARED_PG_PORT),
            ("--kafka-port", self.kafka_port, SHARED_KAFKA_PORT),
            (
                "--kafka-controller-port",
                self.kafka_controller_port,
                SHARED_KAFKA_CONTROLLER_PORT,
            ),
        ] {
            if port == shared {
                bail!("{flag} {port} is the shared stack's port; pick another");
            }
        }
        let ports = [
            self.pg_port,
            self.kafka_port,
            self.kafka_controller_port,
            self.standby_port(),
        ];
        let distinct: std::collections::HashSet<u16> = ports.iter().copied().collect();
        if distinct.len() != ports.len() {
            bail!("--pg-port, --pg-port + 1 (the standby of scenario 7), --kafka-port and --kafka-controller-port must differ");
        }
        Ok(())
    }

    /// Brokers of the private stack: 1, or 3 with `KAFKA_NODES=3` in the environment.
    pub fn kafka_nodes(&self) -> u16 {
        match std::env::var("KAFKA_NODES").as_deref() {
            Ok("3") => 3,
            _ => 1,
        }
    }

    /// Bootstrap list: node i listens on `kafka_port` + 2(i-1), as scripts/stack places it.
    pub fn brokers(&self) -> String {
        (0..self.kafka_nodes())
            .map(|i| format!("{}:{}", self.host(), self.kafka_port + 2 * i))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Where clients connect: the name the secured stack's certificate carries.
    pub fn host(&self) -> &'static str {
        if self.secured {
            TLS_HOST
        } else {
            "127.0.0.1"
        }
    }

    /// A secret of the secured stack (`scripts/stack` makes them under `secrets/`).
    pub fn secret(&self, name: &str) -> anyhow::Result<String> {
        let path = self.dir.join("secrets").join(name);
        Ok(std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?
            .trim()
            .to_string())
    }

    /// The secured stack's CA certificate.
    pub fn ca(&self) -> PathBuf {
        self.dir.join("tls/ca.pem")
    }

    /// The role that owns a database a service migrates, and its password: the service's
    /// own on the secured stack, the admin on the plain one.
    pub fn service_role(&self, service: Service) -> anyhow::Result<(String, String)> {
        if !self.secured {
            return Ok((PG_USER.into(), PG_PASSWORD.into()));
        }
        let role = match service {
            Service::Users => "users_service",
            Service::Transactions => "transaction_service",
        };
        Ok((role.into(), self.secret(&format!("pg-{role}"))?))
    }

    /// relay-cdc's role and password (the admin on the plain stack).
    pub fn relay_role(&self) -> anyhow::Result<(String, String)> {
        if !self.secured {
            return Ok((PG_USER.into(), PG_PASSWORD.into()));
        }
        Ok(("relay_cdc".into(), self.secret("pg-relay_cdc")?))
    }

    /// A component's PostgreSQL TLS as libpq-style (`sslmode`, `sslrootcert`) pairs;
    /// none on the plain stack.
    pub fn pg_tls(&self) -> Vec<(&'static str, String)> {
        if !self.secured {
            return Vec::new();
        }
        vec![
            ("sslmode", "verify-full".into()),
            ("sslrootcert", self.ca().display().to_string()),
        ]
    }

    /// librdkafka's security properties for `principal` (`admin`, `relay_cdc`,
    /// `transaction_service`); none on the plain stack.
    pub fn kafka_security(&self, principal: &str) -> anyhow::Result<Vec<(&'static str, String)>> {
        if !self.secured {
            return Ok(Vec::new());
        }
        Ok(vec![
            ("security.protocol", "SASL_SSL".into()),
            ("sasl.mechanism", "SCRAM-SHA-512".into()),
            ("sasl.username", principal.into()),
            ("sasl.password", self.secret(&format!("kafka-{principal}"))?),
            ("ssl.ca.location", self.ca().display().to_string()),
        ])
    }

    /// The standby scenario 7 promotes: the next port after PostgreSQL's.
    pub fn standby_port(&self) -> u16 {
        self.pg_port.wrapping_add(1)
    }

    pub fn database_url(&self, db: &str) -> String {
        self.database_url_at(db, self.pg_port)
    }

    /// `db` through another port (the failover proxy, the standby), as the admin.
    pub fn database_url_at(&self, db: &str, port: u16) -> String {
        let host = self.host();
        let tls: Vec<String> = self
            .pg_tls()
            .into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let query = if tls.is_empty() {
            String::new()
        } else {
            format!("?{}", tls.join("&"))
        };
        format!("postgres://{PG_USER}:{PG_PASSWORD}@{host}:{port}/{db}{query}")
    }

    /// Runs `scripts/stack <verb>` (words, e.g. `kafka-node kill 2`) against this stack only.
    pub async fn run(&self, verb: &str) -> anyhow::Result<()> {
        let out = tokio::process::Command::new(self.repo.join("scripts/stack"))
            .args(verb.split_whitespace())
            .envs(self.env())
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .with_context(|| format!("running scripts/stack {verb}"))?;
        if !out.status.success() {
            bail!(
                "scripts/stack {verb} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// The variables `scripts/stack` reads, all set explicitly: whatever the caller's
    /// shell exported for the shared stack must not leak in.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("STACK_DIR", self.dir.display().to_string()),
            ("PG_PORT", self.pg_port.to_string()),
            ("PG_USER", PG_USER.to_string()),
            ("PG_PASSWORD", PG_PASSWORD.to_string()),
            ("KAFKA_PORT", self.kafka_port.to_string()),
            (
                "KAFKA_CONTROLLER_PORT",
                self.kafka_controller_port.to_string(),
            ),
            ("KAFKA_HEAP", "512m".to_string()),
            ("STANDBY_PORT", self.standby_port().to_string()),
            // The PostgreSQL major (scripts/stack: Debian's when empty) and the number
            // of Kafka brokers are the drill's own choice, from its environment:
            // `PG_VERSION=17 scripts/drill …`, `KAFKA_NODES=3 scripts/drill …`.
            (
                "PG_VERSION",
                std::env::var("PG_VERSION").unwrap_or_default(),
            ),
            ("KAFKA_NODES", self.kafka_nodes().to_string()),
            (
                "STACK_SECURITY",
                if self.secured { "tls" } else { "plain" }.to_string(),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// The primary's `server_version_num`.
    pub async fn server_version_num(&self) -> anyhow::Result<i32> {
        let mut admin = self.admin().await?;
        let (v,): (i32,) = sqlx::query_as("select current_setting('server_version_num')::int")
            .fetch_one(&mut admin)
            .await?;
        Ok(v)
    }

    /// How many of `slots` the server on `port` holds as synced copies that survive a
    /// promotion (PostgreSQL 17+).
    pub async fn synced_slots(&self, port: u16, slots: &[&str]) -> anyhow::Result<usize> {
        let mut c = PgConnection::connect(&self.database_url_at("postgres", port))
            .await
            .context("connecting to the standby")?;
        let names: Vec<String> = slots.iter().map(|s| s.to_string()).collect();
        let (n,): (i64,) = sqlx::query_as(
            // Not temporary: a synced slot is dropped at promotion until it is sync-ready.
            "select count(*) from pg_replication_slots where synced and not temporary and slot_name = any($1)",
        )
        .bind(&names)
        .fetch_one(&mut c)
        .await?;
        Ok(n as usize)
    }

    pub async fn admin(&self) -> anyhow::Result<PgConnection> {
        PgConnection::connect(&self.database_url("postgres"))
            .await
            .context("connecting to the private stack's PostgreSQL")
    }

    /// A small lazy pool on `db` through `port` (PostgreSQL's, or scenario 7's proxy)
    /// that reconnects by itself after a restart.
    pub fn pool_at(&self, db: &str, port: u16) -> anyhow::Result<PgPool> {
        let opts: PgConnectOptions = self.database_url_at(db, port).parse()?;
        let opts = opts.disable_statement_logging();
        Ok(PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(5))
            .test_before_acquire(true)
            .connect_lazy_with(opts))
    }

    /// Drops each database (and every replication slot on it), then creates it empty,
    /// owned by the role of the service that migrates it.
    pub async fn fresh_databases(&self, dbs: &[(&str, Service)]) -> anyhow::Result<()> {
        let mut admin = self.admin().await?;
        for (db, service) in dbs {
            testkit::pg::drop_slots(&mut admin, db).await?;
            sqlx::query(&format!("drop database if exists \"{db}\" with (force)"))
                .execute(&mut admin)
                .await?;
            let (owner, _) = self.service_role(*service)?;
            sqlx::query(&format!("create database \"{db}\" owner \"{owner}\""))
                .execute(&mut admin)
                .await?;
        }
        Ok(())
    }

    /// relay-cdc's rights on the outbox of `dbs` once their services created it: what
    /// `sql/grants.sql` gives. Nothing to do on the plain stack (the admin streams).
    pub async fn grant_relay(&self, dbs: &[&str]) -> anyhow::Result<()> {
        if !self.secured {
            return Ok(());
        }
        let (relay, _) = self.relay_role()?;
        for db in dbs {
            let mut c = PgConnection::connect(&self.database_url(db)).await?;
            for statement in [
                format!("grant connect on database \"{db}\" to \"{relay}\""),
                format!("grant usage on schema public to \"{relay}\""),
                format!("grant select, delete on table public.outbox to \"{relay}\""),
                format!(
                    "grant update (status, processed_at) on table public.outbox to \"{relay}\""
                ),
            ] {
                sqlx::query(&statement)
                    .execute(&mut c)
                    .await
                    .with_context(|| statement.clone())?;
            }
        }
        Ok(())
    }

    /// Drops every replication slot on `dbs`, terminating the sessions that hold them.
    pub async fn drop_slots(&self, dbs: &[&str]) -> anyhow::Result<()> {
        let mut admin = self.admin().await?;
        for db in dbs {
            testkit::pg::drop_slots(&mut admin, db).await?;
        }
        Ok(())
    }
}

/// The services whose databases the drill makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Users,
    Transactions,
}

fn same_path(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// Stops the private stack when dropped, unless asked to keep it.
pub struct StackGuard {
    pub config: StackConfig,
    pub keep: bool,
}

impl Drop for StackGuard {
    fn drop(&mut self) {
        if self.keep {
            eprintln!(
                "drill: the private stack keeps running (STACK_DIR={} PG_PORT={} KAFKA_PORT={} KAFKA_CONTROLLER_PORT={} scripts/stack down)",
                self.config.dir.display(),
                self.config.pg_port,
                self.config.kafka_port,
                self.config.kafka_controller_port
            );
            return;
        }
        let status = std::process::Command::new(self.config.repo.join("scripts/stack"))
            .arg("down")
            .envs(self.config.env())
            .stdin(std::process::Stdio::null())
            .status();
        if !matches!(status, Ok(s) if s.success()) {
            eprintln!("drill: could not stop the private stack: {status:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> StackConfig {
        StackConfig {
            repo: PathBuf::from("/repo"),
            dir: PathBuf::from("/repo/.stack/drill"),
            pg_port: 55532,
            kafka_port: 59192,
            kafka_controller_port: 59193,
            secured: false,
        }
    }

    #[test]
    fn the_secured_stack_is_reached_by_name_with_tls_and_each_principal_its_own() {
        let mut c = config();
        assert_eq!(c.brokers(), "127.0.0.1:59192");
        assert!(!c.database_url("db").contains("sslmode"));
        assert!(c.kafka_security("admin").unwrap().is_empty());
        c.secured = true;
        assert_eq!(c.brokers(), "localhost:59192");
        let url = c.database_url("db");
        assert!(
            url.contains(
                "@localhost:55532/db?sslmode=verify-full&sslrootcert=/repo/.stack/drill/tls/ca.pem"
            ),
            "{url}"
        );
        assert!(c
            .env()
            .iter()
            .any(|(k, v)| k == "STACK_SECURITY" && v == "tls"));
    }

    #[test]
    fn the_default_private_stack_is_accepted() {
        config().validate().unwrap();
    }

    #[test]
    fn the_shared_stack_is_refused() {
        let mut c = config();
        c.pg_port = SHARED_PG_PORT;
        assert!(c.validate().unwrap_err().to_string().contains("--pg-port"));
        let mut c = config();
        c.kafka_port = SHARED_KAFKA_PORT;
        assert!(c.validate().is_err());
        let mut c = config();
        c.dir = PathBuf::from("/repo/.stack");
        assert!(c.validate().unwrap_err().to_string().contains("shared"));
    }

    #[test]
    fn the_environment_names_every_variable_scripts_stack_reads() {
        let env = config().env();
        for k in [
            "STACK_DIR",
            "PG_PORT",
            "KAFKA_PORT",
            "KAFKA_CONTROLLER_PORT",
            "PG_USER",
        ] {
            assert!(env.iter().any(|(n, _)| n == k), "{k}");
        }
    }
}
