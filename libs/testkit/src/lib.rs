//! The one harness of relay-cdc's tests, the services' tests, the bench and the drill:
//! the local stack's addresses, a fresh database per test, Kafka topics and readers, the
//! relay binary as a child process, its metrics, what `/proc` says about a process, and
//! TCP ports and a proxy.
//!
//! | module      | owns |
//! |-------------|------|
//! | [`pg`]      | [`TestDb`]: a database per test, migrated, dropped with its replication slots |
//! | [`kafka`]   | client settings (the stack's security), topics, readers, [`PrivateKafka`] |
//! | [`relay`]   | [`RelayConfig`] → [`RelayProcess`]: the only place that starts relay-cdc; [`Delivery`] |
//! | [`metrics`] | [`Metrics`]: Prometheus text, read with `prometheus-parse` |
//! | [`proc`]    | [`Process`] (a child with a log), `/proc` through `procfs`, [`shutdown_signal`] |
//! | [`net`]     | free ports, [`Proxy`] (a TCP proxy that can move or cut its connections) |
//!
//! Tests run against the real PostgreSQL and Apache Kafka that `scripts/stack up`
//! starts; `scripts/test` exports their addresses. Run outside it, the stack's default
//! ports are assumed. What most callers need is re-exported at the crate root.

pub mod kafka;
pub mod metrics;
pub mod net;
pub mod pg;
pub mod proc;
pub mod relay;
pub mod slot;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::bail;
use uuid::Uuid;

pub use kafka::{
    broker_config, consumer, create_topic, create_topic_with_config, create_topics, delete_topics,
    kafka_admin, kafka_config, kafka_security, read_records, read_until_ids, read_until_quiet,
    topic_partitions, unique_topic, PrivateKafka, Record, KAFKA_SECURITY_VARIABLES,
};
pub use metrics::Metrics;
pub use net::{free_port, free_port_block, Proxy};
pub use pg::{drop_database, TestDb};
pub use proc::{shutdown_signal, Process};
pub use relay::{
    relay_kafka_env, relay_source_tls_env, Delivery, Health, RelayConfig, RelayProcess, RelaySource,
};

/// Addresses of the local stack, from the environment `scripts/stack env` prints.
#[derive(Debug, Clone)]
pub struct Stack {
    /// Server URL without a database name, e.g. `postgres://u:p@127.0.0.1:55432`.
    pub pg_base_url: String,
    pub pg_host: String,
    pub pg_port: u16,
    pub pg_user: String,
    pub pg_password: String,
    pub kafka_brokers: String,
    /// The role relay-cdc logs in as: `relay_cdc` on the secured stack (`PG_RELAY_USER`),
    /// else the admin.
    pub relay_user: String,
    pub relay_password: String,
}

impl Stack {
    pub fn from_env() -> Self {
        let var = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.to_string());
        let pg_host = var("PG_HOST", "127.0.0.1");
        let pg_port: u16 = var("PG_PORT", "55432")
            .parse()
            .expect("PG_PORT is a port number");
        let pg_user = var("PG_USER", "outbox");
        let pg_password = var("PG_PASSWORD", "outbox");
        Self {
            pg_base_url: format!("postgres://{pg_user}:{pg_password}@{pg_host}:{pg_port}"),
            relay_user: var("PG_RELAY_USER", &pg_user),
            relay_password: var("PG_RELAY_PASSWORD", &pg_password),
            pg_host,
            pg_port,
            pg_user,
            pg_password,
            kafka_brokers: var("KAFKA_BROKERS", "127.0.0.1:59092"),
        }
    }

    pub fn database_url(&self, db: &str) -> String {
        format!("{}/{db}", self.pg_base_url)
    }

    /// The role that owns a database migrated with `sql/<migrations>`: its service's
    /// least-privilege role on the secured stack (`PG_USERS_SERVICE_USER`, ...), `None`
    /// on the plain stack (the admin owns everything there).
    pub fn owner_for(&self, migrations: &str) -> Option<(String, String)> {
        let role = match migrations {
            "users_db" => "USERS_SERVICE",
            "transaction_db" => "TRANSACTION_SERVICE",
            _ => return None,
        };
        let user = std::env::var(format!("PG_{role}_USER")).ok()?;
        let password = std::env::var(format!("PG_{role}_PASSWORD")).ok()?;
        Some((user, password))
    }

    /// The URL of database `db` for `user`.
    pub fn url_as(&self, user: &str, password: &str, db: &str) -> String {
        format!(
            "postgres://{user}:{password}@{}:{}/{db}",
            self.pg_host, self.pg_port
        )
    }
}

/// Whether the tests run against the secured stack (`STACK_SECURITY=tls`).
pub fn secured() -> bool {
    std::env::var("STACK_SECURITY").is_ok_and(|v| v == "tls")
}

/// The repository root (for `sql/`, `scripts/`, `docker-compose.yml`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repo root")
}

/// A short unique suffix for names a test owns.
pub fn unique_suffix() -> String {
    Uuid::new_v4().simple().to_string()[..12].to_string()
}

/// Polls `check` every 50 ms until it returns `Some`, or fails after `timeout` with `what`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await? {
            return Ok(v);
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
