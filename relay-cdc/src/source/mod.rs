//! The ordinary (non-replication) side of a source database: connections, which
//! server is the primary, and why PostgreSQL refused (this file); what the relay needs
//! of a source and whether a failover would keep its slot ([`checks`]); slots,
//! heartbeats, WAL positions and the exact slot advance that makes the final confirmed
//! position reach the server on shutdown ([`wal`]).

mod checks;
mod wal;

pub use checks::{check, ensure_publication, require, Check};
pub use wal::{
    advance_slot, current_wal_lsn, drop_slot, emit_heartbeat, slot_state, version_num,
    wants_failover, SlotState, FAILOVER_SLOTS_SINCE,
};

use thiserror::Error;
use tokio_postgres::Client;

use crate::config::{Endpoint, SourceSettings};

#[derive(Debug, Error)]
pub enum SourceError {
    #[error("cannot connect to {database} at {servers}: {reason}")]
    Connect {
        /// `host:port`, or the list of them.
        servers: String,
        database: String,
        reason: String,
        /// SQLSTATE 57P03 (cannot_connect_now): the server is shutting down (or
        /// starting up, or recovering).
        going_away: bool,
        /// The server refused the relay itself (password, `pg_hba.conf`, the right to
        /// connect) or TLS failed: see [`SourceError::access_refused`].
        refused: bool,
    },
    #[error("{0}")]
    Prerequisite(String),
    #[error("query failed: {0}")]
    Query(#[from] tokio_postgres::Error),
}

impl SourceError {
    /// The server refuses new connections because it is going away (a shutdown is under
    /// way): see [`crate::pipeline`] for why the replication session must then end.
    /// Every server refused the relay itself or the TLS handshake failed: retrying with
    /// the same settings cannot help.
    pub fn access_refused(&self) -> bool {
        matches!(self, SourceError::Connect { refused: true, .. })
    }

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

pub(super) async fn connect_with(
    s: &SourceSettings,
    config: tokio_postgres::Config,
) -> Result<Client, SourceError> {
    let tls = s.tls().connector().map_err(SourceError::Prerequisite)?;
    let (client, conn) = config
        .clone()
        .connect(tls)
        .await
        .map_err(|e| SourceError::Connect {
            servers: config
                .get_hosts()
                .iter()
                .zip(config.get_ports())
                .map(|(h, p)| match h {
                    tokio_postgres::config::Host::Tcp(h) => format!("{h}:{p}"),
                    #[cfg(unix)]
                    tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
                })
                .collect::<Vec<_>>()
                .join(","),
            database: s.database.clone(),
            reason: pg_reason(&e),
            going_away: e.code() == Some(&tokio_postgres::error::SqlState::CANNOT_CONNECT_NOW),
            refused: connect_refused(&e),
        })?;
    let name = s.name.clone();
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(source = %name, error = %e, "ordinary connection closed");
        }
    });
    Ok(client)
}

/// What one server of a source is.
#[derive(Debug, Clone)]
pub struct ServerRole {
    pub endpoint: Endpoint,
    /// `pg_is_in_recovery()`: a standby (or a server still recovering).
    pub standby: bool,
    /// `server_version_num`, e.g. 170011.
    pub version_num: i32,
}

/// Asks each endpoint what it is, in order; `Err` for those that cannot be reached.
pub async fn server_roles(s: &SourceSettings) -> Vec<(Endpoint, Result<ServerRole, SourceError>)> {
    let mut out = Vec::new();
    for e in s.endpoints() {
        let role = async {
            let client = connect_with(s, s.pg_config_for(std::slice::from_ref(&e))).await?;
            let row = client
                .query_one(
                    "select pg_is_in_recovery(), current_setting('server_version_num')::int",
                    &[],
                )
                .await?;
            Ok(ServerRole {
                endpoint: e.clone(),
                standby: row.get(0),
                version_num: row.get(1),
            })
        }
        .await;
        out.push((e, role));
    }
    out
}

/// The writable primary among the source's endpoints: where the session streams from,
/// writes heartbeats and marks rows. A lone endpoint that is a standby is an error too
/// (a failover in progress, or a misconfiguration), so the session retries.
pub async fn find_primary(s: &SourceSettings) -> Result<Endpoint, SourceError> {
    let roles = server_roles(s).await;
    let mut why = Vec::new();
    let mut going_away = false;
    let mut refused = true;
    for (e, r) in roles {
        match r {
            Ok(role) if !role.standby => return Ok(e),
            Ok(_) => {
                refused = false;
                why.push(format!("{e} is a standby (in recovery)"))
            }
            Err(err) => {
                going_away |= err.server_going_away();
                refused &= err.access_refused();
                why.push(match err {
                    SourceError::Connect { reason, .. } => format!("{e}: {reason}"),
                    other => format!("{e}: {other}"),
                });
            }
        }
    }
    Err(SourceError::Connect {
        servers: s.endpoints_text(),
        database: s.database.clone(),
        reason: format!("no writable primary ({})", why.join("; ")),
        going_away,
        refused,
    })
}

/// The server's message for an error (tokio-postgres' Display hides it behind "db error"),
/// or the error with its causes (a TLS failure says why only in its source).
pub fn pg_reason(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => {
            let mut out = e.to_string();
            let mut cause = std::error::Error::source(e);
            while let Some(c) = cause {
                out.push_str(&format!(": {c}"));
                cause = c.source();
            }
            out
        }
    }
}

/// SQLSTATEs of a server refusing who connects: 28P01 invalid_password, 28000
/// invalid_authorization_specification (`pg_hba.conf` rejects, e.g. "no encryption"),
/// 42501 insufficient_privilege (no CONNECT on the database, no REPLICATION).
pub const REFUSED_SQLSTATES: [&str; 3] = ["28P01", "28000", "42501"];

/// Whether a failed connection attempt was refused for who connected, or failed in TLS.
fn connect_refused(e: &tokio_postgres::Error) -> bool {
    match e.code() {
        Some(code) => REFUSED_SQLSTATES.contains(&code.code()),
        // tokio-postgres says so only in its text: "error performing TLS handshake",
        // "server does not support TLS".
        None => e.to_string().contains("TLS"),
    }
}
