//! PostgreSQL: a database of one test's own ([`TestDb`]: created, migrated, dropped with
//! its replication slots), and the statements the drill's private stack shares with it
//! (dropping a database's slots, relay-cdc's grants).

use std::time::Duration;

use anyhow::{bail, Context};
use sqlx::migrate::Migrator;
use sqlx::{Connection, PgConnection};

use crate::{repo_root, unique_suffix, Stack};

/// A database that exists for one test. Dropping it drops every replication slot on
/// it (terminating the walsender that holds one) and then the database itself, also
/// when the test panics: a leaked slot would retain WAL forever.
#[derive(Debug)]
pub struct TestDb {
    pub name: String,
    pub url: String,
    stack: Stack,
}

impl TestDb {
    /// Creates `t_<prefix>_<unique>` and applies `sql/outbox` and `sql/<migrations>` to it
    /// (as the services do: `service_postgres::with_outbox`). On the secured
    /// stack the database belongs to the service's least-privilege role, which migrates
    /// it and is who [`TestDb::url`] logs in as, and relay-cdc's role gets its rights on
    /// the outbox (`sql/grants.sql`), as in production.
    pub async fn create(prefix: &str, migrations: &str) -> anyhow::Result<Self> {
        let stack = Stack::from_env();
        let owner = stack.owner_for(migrations);
        let mut db = Self::create_owned(prefix, owner.as_ref().map(|(u, _)| u.as_str())).await?;
        if let Some((user, password)) = &owner {
            db.url = stack.url_as(user, password, &db.name);
        }
        let dir = repo_root().join("sql").join(migrations);
        let own = Migrator::new(dir.as_path())
            .await
            .with_context(|| format!("reading migrations in {}", dir.display()))?;
        let migrator = service_postgres::with_outbox(&own).await?;
        let mut conn = db.connect().await?;
        migrator
            .run(&mut conn)
            .await
            .context("applying migrations")?;
        conn.close().await?;
        if owner.is_some() {
            let mut admin = db.connect_admin().await?;
            grant_relay(&mut admin, &db.name, &db.stack.relay_user).await?;
            admin.close().await?;
        }
        Ok(db)
    }

    /// Creates `t_<prefix>_<unique>` with no schema.
    pub async fn create_empty(prefix: &str) -> anyhow::Result<Self> {
        Self::create_owned(prefix, None).await
    }

    async fn create_owned(prefix: &str, owner: Option<&str>) -> anyhow::Result<Self> {
        let stack = Stack::from_env();
        let name = format!("t_{prefix}_{}", unique_suffix());
        let mut admin = PgConnection::connect(&stack.database_url("postgres"))
            .await
            .context(
                "connecting to the local stack's PostgreSQL (is `scripts/stack up` running?)",
            )?;
        let owner = owner.map(|o| format!(" owner \"{o}\"")).unwrap_or_default();
        sqlx::query(&format!("create database \"{name}\"{owner}"))
            .execute(&mut admin)
            .await?;
        admin.close().await?;
        Ok(Self {
            url: stack.database_url(&name),
            name,
            stack,
        })
    }

    /// A connection as the admin (superuser): for what a test does behind the
    /// components' backs (moving a slot, terminating a backend).
    pub async fn connect_admin(&self) -> anyhow::Result<PgConnection> {
        Ok(PgConnection::connect(&self.stack.database_url(&self.name)).await?)
    }

    pub async fn connect(&self) -> anyhow::Result<PgConnection> {
        Ok(PgConnection::connect(&self.url).await?)
    }

    pub fn stack(&self) -> &Stack {
        &self.stack
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let url = self.stack.database_url("postgres");
        let name = self.name.clone();
        // Drop runs inside the test's runtime: do the async cleanup on a thread of its own.
        let result = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(drop_database(&url, &name))
        })
        .join();
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("testkit: could not drop database {}: {e:#}", self.name),
            Err(_) => eprintln!("testkit: cleanup of database {} panicked", self.name),
        }
    }
}

/// Drops every replication slot of database `name`, then the database.
pub async fn drop_database(admin_url: &str, name: &str) -> anyhow::Result<()> {
    let mut admin = PgConnection::connect(admin_url).await?;
    drop_slots(&mut admin, name).await?;
    sqlx::query(&format!("drop database if exists \"{name}\" with (force)"))
        .execute(&mut admin)
        .await?;
    Ok(())
}

/// Drops every replication slot on database `db`, terminating the walsenders that hold
/// them; fails when some are still there after ten seconds.
pub async fn drop_slots(admin: &mut PgConnection, db: &str) -> anyhow::Result<()> {
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
            // Fails while the terminated walsender still holds the slot; the loop retries.
            let _ = sqlx::query("select pg_drop_replication_slot($1)")
                .bind(&slot)
                .execute(&mut *admin)
                .await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("could not drop the replication slots of {db}")
}

/// relay-cdc's role `relay`'s rights on the outbox of database `db` (`conn` is an admin's
/// connection to it): what `sql/grants.sql` gives (that file is a psql script; these are
/// its statements).
pub async fn grant_relay(conn: &mut PgConnection, db: &str, relay: &str) -> anyhow::Result<()> {
    for statement in [
        format!("grant connect on database \"{db}\" to \"{relay}\""),
        format!("grant usage on schema public to \"{relay}\""),
        format!("grant select, delete on table public.outbox to \"{relay}\""),
        format!("grant update (status, processed_at) on table public.outbox to \"{relay}\""),
    ] {
        sqlx::query(&statement)
            .execute(&mut *conn)
            .await
            .with_context(|| statement.clone())?;
    }
    Ok(())
}
