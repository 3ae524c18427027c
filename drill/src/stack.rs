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
}

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
            .map(|i| format!("127.0.0.1:{}", self.kafka_port + 2 * i))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The standby scenario 7 promotes: the next port after PostgreSQL's.
    pub fn standby_port(&self) -> u16 {
        self.pg_port.wrapping_add(1)
    }

    pub fn database_url(&self, db: &str) -> String {
        self.database_url_at(db, self.pg_port)
    }

    /// `db` through another port (the failover proxy, the standby).
    pub fn database_url_at(&self, db: &str, port: u16) -> String {
        format!("postgres://{PG_USER}:{PG_PASSWORD}@127.0.0.1:{port}/{db}")
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

    /// Drops `dbs` (and every replication slot on them), then creates them empty.
    pub async fn fresh_databases(&self, dbs: &[&str]) -> anyhow::Result<()> {
        let mut admin = self.admin().await?;
        for db in dbs {
            drop_slots_of(&mut admin, db).await?;
            sqlx::query(&format!("drop database if exists \"{db}\" with (force)"))
                .execute(&mut admin)
                .await?;
            sqlx::query(&format!("create database \"{db}\""))
                .execute(&mut admin)
                .await?;
        }
        Ok(())
    }

    /// Drops every replication slot on `dbs`, terminating the sessions that hold them.
    pub async fn drop_slots(&self, dbs: &[&str]) -> anyhow::Result<()> {
        let mut admin = self.admin().await?;
        for db in dbs {
            drop_slots_of(&mut admin, db).await?;
        }
        Ok(())
    }
}

async fn drop_slots_of(admin: &mut PgConnection, db: &str) -> anyhow::Result<()> {
    for _ in 0..100 {
        let slots: Vec<(String, Option<i32>)> = sqlx::query_as(
            "select slot_name::text, active_pid from pg_replication_slots where database = $1",
        )
        .bind(db)
        .fetch_all(&mut *admin)
        .await?;
        if slots.is_empty() {
            return Ok(());
        }
        for (slot, pid) in slots {
            if let Some(pid) = pid {
                sqlx::query("select pg_terminate_backend($1)")
                    .bind(pid)
                    .execute(&mut *admin)
                    .await?;
            }
            // Fails while a terminated walsender still holds the slot; the loop retries.
            let _ = sqlx::query("select pg_drop_replication_slot($1)")
                .bind(&slot)
                .execute(&mut *admin)
                .await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("could not drop the replication slots of {db}")
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
        }
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
