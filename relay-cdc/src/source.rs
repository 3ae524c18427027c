//! The ordinary (non-replication) side of a source database: prerequisite checks,
//! publication and slot bookkeeping, heartbeats, WAL positions, and the exact slot
//! advance that makes the final confirmed position reach the server on shutdown.

use pgwire_replication::Lsn;
use thiserror::Error;
use tokio_postgres::{Client, NoTls};

use crate::config::SourceSettings;

#[derive(Debug, Error)]
pub enum SourceError {
    #[error("cannot connect to {database} at {host}:{port}: {reason}")]
    Connect {
        host: String,
        port: u16,
        database: String,
        reason: String,
        /// SQLSTATE 57P03 (cannot_connect_now): the server is shutting down (or
        /// starting up, or recovering).
        going_away: bool,
    },
    #[error("{0}")]
    Prerequisite(String),
    #[error("query failed: {0}")]
    Query(#[from] tokio_postgres::Error),
}

impl SourceError {
    /// The server refuses new connections because it is going away (a shutdown is under
    /// way): see [`crate::pipeline`] for why the replication session must then end.
    pub fn server_going_away(&self) -> bool {
        matches!(
            self,
            SourceError::Connect {
                going_away: true,
                ..
            }
        )
    }
}

/// Prefix of the non-transactional logical messages the relay writes as heartbeats.
pub const HEARTBEAT_PREFIX: &str = "relay-cdc.heartbeat";

/// Opens an ordinary connection; the connection task ends when the client is dropped.
pub async fn connect(s: &SourceSettings) -> Result<Client, SourceError> {
    connect_with(s, s.pg_config()).await
}

/// A marking connection: statements and lock waits are bounded, so a session holding
/// locks on outbox rows fails an attempt (retried, counted) instead of hanging it.
pub async fn connect_marker(
    s: &SourceSettings,
    p: &crate::config::PipelineSettings,
) -> Result<Client, SourceError> {
    let mut config = s.pg_config();
    config.options(format!(
        "-c statement_timeout={} -c lock_timeout={}",
        p.mark_statement_timeout_ms, p.mark_lock_timeout_ms
    ));
    connect_with(s, config).await
}

async fn connect_with(
    s: &SourceSettings,
    config: tokio_postgres::Config,
) -> Result<Client, SourceError> {
    let (client, conn) = config
        .connect(NoTls)
        .await
        .map_err(|e| SourceError::Connect {
            host: s.host.clone(),
            port: s.port,
            database: s.database.clone(),
            reason: pg_reason(&e),
            going_away: e.code() == Some(&tokio_postgres::error::SqlState::CANNOT_CONNECT_NOW),
        })?;
    let name = s.name.clone();
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(source = %name, error = %e, "ordinary connection closed");
        }
    });
    Ok(client)
}

/// The server's message for an error (tokio-postgres' Display hides it behind "db error").
pub fn pg_reason(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => e.to_string(),
    }
}

/// One prerequisite and whether it holds.
#[derive(Debug, Clone)]
pub struct Check {
    pub what: String,
    pub ok: bool,
    pub detail: String,
}

/// Checks what the relay needs of a source, without changing anything.
pub async fn check(client: &Client, s: &SourceSettings) -> Result<Vec<Check>, SourceError> {
    let mut out = Vec::new();
    let wal_level: String = client.query_one("show wal_level", &[]).await?.get(0);
    out.push(Check {
        what: "wal_level = logical".into(),
        ok: wal_level == "logical",
        detail: format!("wal_level is {wal_level}"),
    });

    let role = client
        .query_one(
            "select rolsuper or rolreplication from pg_roles where rolname = current_user",
            &[],
        )
        .await?;
    let can_replicate: bool = role.get(0);
    out.push(Check {
        what: "role may replicate".into(),
        ok: can_replicate,
        detail: if can_replicate {
            "ok".into()
        } else {
            format!("grant REPLICATION to {}", s.user)
        },
    });

    let shape = table_shape(client, s).await?;
    out.push(Check {
        what: format!("table {}.{} has the outbox columns", s.schema, s.table),
        ok: shape.is_ok(),
        detail: shape.err().unwrap_or_else(|| "ok".into()),
    });

    let publication = publication_state(client, s).await?;
    out.push(Check {
        what: format!("publication {} (insert) on the table", s.publication),
        ok: publication.is_ok() || s.create_publication,
        detail: match publication {
            Ok(()) => "ok".into(),
            Err(why) if s.create_publication => format!("{why}; will be created"),
            Err(why) => why,
        },
    });

    let slot = slot_state(client, &s.slot_name()).await?;
    let free_slots: i64 = client
        .query_one(
            "select current_setting('max_replication_slots')::int - (select count(*) from pg_replication_slots)",
            &[],
        )
        .await?
        .get(0);
    out.push(match slot {
        Some(st) if st.plugin != "pgoutput" => Check {
            what: format!("slot {}", s.slot_name()),
            ok: false,
            detail: format!("exists with plugin {}, needs pgoutput", st.plugin),
        },
        Some(st) => Check {
            what: format!("slot {}", s.slot_name()),
            ok: true,
            detail: format!(
                "exists, confirmed {}, {}",
                st.confirmed_flush
                    .map(|l| l.to_string())
                    .unwrap_or_else(|| "-".into()),
                if st.active {
                    "held by another session"
                } else {
                    "not in use"
                }
            ),
        },
        None => Check {
            what: format!("slot {}", s.slot_name()),
            ok: s.create_slot && free_slots > 0,
            detail: if !s.create_slot {
                "missing and create_slot = false".into()
            } else if free_slots <= 0 {
                "missing and max_replication_slots is used up".into()
            } else {
                "missing; will be created".into()
            },
        },
    });
    Ok(out)
}

/// Fails with a clear message unless every check holds.
pub async fn require(client: &Client, s: &SourceSettings) -> Result<(), SourceError> {
    let failed: Vec<String> = check(client, s)
        .await?
        .into_iter()
        .filter(|c| !c.ok)
        .map(|c| format!("{}: {}", c.what, c.detail))
        .collect();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(SourceError::Prerequisite(failed.join("; ")))
    }
}

async fn table_shape(
    client: &Client,
    s: &SourceSettings,
) -> Result<Result<(), String>, SourceError> {
    let rows = client
        .query(
            "select column_name::text, data_type::text from information_schema.columns \
             where table_schema = $1 and table_name = $2",
            &[&s.schema, &s.table],
        )
        .await?;
    if rows.is_empty() {
        return Ok(Err(format!(
            "table {}.{} does not exist",
            s.schema, s.table
        )));
    }
    let cols: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let need: [(&str, &[&str]); 6] = [
        ("id", &["uuid"]),
        ("aggregate_type", &["text", "character varying"]),
        ("aggregate_id", &["text", "character varying"]),
        ("event_type", &["text", "character varying"]),
        ("payload", &["jsonb", "json"]),
        ("status", &["text", "character varying"]),
    ];
    let mut problems = Vec::new();
    for (name, types) in need {
        match cols.iter().find(|(c, _)| c == name) {
            None => problems.push(format!("missing column {name}")),
            Some((_, t)) if !types.contains(&t.as_str()) => problems.push(format!(
                "column {name} is {t}, expected {}",
                types.join(" or ")
            )),
            Some(_) => {}
        }
    }
    Ok(if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join(", "))
    })
}

async fn publication_state(
    client: &Client,
    s: &SourceSettings,
) -> Result<Result<(), String>, SourceError> {
    let row = client
        .query_opt(
            "select pubinsert from pg_publication where pubname = $1",
            &[&s.publication],
        )
        .await?;
    let Some(row) = row else {
        return Ok(Err("missing".into()));
    };
    if !row.get::<_, bool>(0) {
        return Ok(Err("exists but does not publish inserts".into()));
    }
    let covers = client
        .query_opt(
            "select 1 from pg_publication_tables where pubname = $1 and schemaname = $2 and tablename = $3",
            &[&s.publication, &s.schema, &s.table],
        )
        .await?;
    Ok(if covers.is_some() {
        Ok(())
    } else {
        Err(format!("does not include {}.{}", s.schema, s.table))
    })
}

/// Creates the publication when it is missing and allowed to.
pub async fn ensure_publication(client: &Client, s: &SourceSettings) -> Result<(), SourceError> {
    match publication_state(client, s).await? {
        Ok(()) => Ok(()),
        Err(why) if why == "missing" && s.create_publication => {
            // Identifiers are validated by config (letters, digits, _): safe to quote.
            let sql = format!(
                "create publication \"{}\" for table \"{}\".\"{}\" with (publish = 'insert')",
                s.publication, s.schema, s.table
            );
            match client.batch_execute(&sql).await {
                Ok(()) => {
                    tracing::info!(source = %s.name, publication = %s.publication, "created publication");
                    Ok(())
                }
                // Another relay instance created it first.
                Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_OBJECT) => {
                    Ok(())
                }
                Err(e) => Err(e.into()),
            }
        }
        Err(why) => Err(SourceError::Prerequisite(format!(
            "publication {}: {why}",
            s.publication
        ))),
    }
}

/// A replication slot as `pg_replication_slots` shows it.
#[derive(Debug, Clone)]
pub struct SlotState {
    pub plugin: String,
    pub active: bool,
    pub confirmed_flush: Option<Lsn>,
    /// `lost` when the server invalidated the slot (WAL it needed was removed).
    pub wal_status: Option<String>,
}

pub async fn slot_state(client: &Client, slot: &str) -> Result<Option<SlotState>, SourceError> {
    let row = client
        .query_opt(
            "select coalesce(plugin::text, ''), active, confirmed_flush_lsn::text, wal_status \
             from pg_replication_slots where slot_name = $1 and database = current_database()",
            &[&slot],
        )
        .await?;
    Ok(row.map(|r| SlotState {
        plugin: r.get(0),
        active: r.get(1),
        confirmed_flush: r
            .get::<_, Option<String>>(2)
            .and_then(|s| Lsn::parse(&s).ok()),
        wal_status: r.get(3),
    }))
}

pub async fn drop_slot(client: &Client, slot: &str) -> Result<(), SourceError> {
    client
        .execute("select pg_drop_replication_slot($1)", &[&slot])
        .await?;
    Ok(())
}

/// The server's current WAL insert position.
pub async fn current_wal_lsn(client: &Client) -> Result<Lsn, SourceError> {
    let s: String = client
        .query_one("select pg_current_wal_lsn()::text", &[])
        .await?
        .get(0);
    Lsn::parse(&s).map_err(|e| {
        SourceError::Prerequisite(format!("server returned an unreadable LSN {s:?}: {e}"))
    })
}

/// Writes a non-transactional logical message carrying the current time in
/// microseconds since the Unix epoch. It reaches the relay at once (not tied to a
/// transaction), which keeps lag in seconds truthful and the slot moving when idle.
pub async fn emit_heartbeat(client: &Client) -> Result<(), SourceError> {
    client
        .execute(
            "select pg_logical_emit_message(false, $1, (extract(epoch from clock_timestamp()) * 1000000)::bigint::text)",
            &[&HEARTBEAT_PREFIX],
        )
        .await?;
    Ok(())
}

/// Moves the slot's confirmed position to `lsn` if it is behind. Used on shutdown,
/// once the replication session has ended: pgwire-replication 0.5 sends CopyDone
/// without a last status update, so without this the final acks would be replayed.
pub async fn advance_slot(client: &Client, slot: &str, lsn: Lsn) -> Result<bool, SourceError> {
    let Some(state) = slot_state(client, slot).await? else {
        return Ok(false);
    };
    if state.confirmed_flush.is_some_and(|c| c >= lsn) {
        return Ok(false);
    }
    client
        .execute(
            "select pg_replication_slot_advance($1, $2::text::pg_lsn)",
            &[&slot, &lsn.to_string()],
        )
        .await?;
    Ok(true)
}
