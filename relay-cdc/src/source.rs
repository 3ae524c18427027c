//! The ordinary (non-replication) side of a source database: prerequisite checks,
//! publication and slot bookkeeping, heartbeats, WAL positions, and the exact slot
//! advance that makes the final confirmed position reach the server on shutdown.

use pgwire_replication::Lsn;
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

async fn connect_with(
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

/// One prerequisite and whether it holds; a warning does not stop the relay but says
/// what is not protected (e.g. a failover that could lose the slot).
#[derive(Debug, Clone)]
pub struct Check {
    pub what: String,
    pub ok: bool,
    pub warn: bool,
    pub detail: String,
}

/// Checks what the relay needs of a source, and whether a failover would keep its slot,
/// without changing anything.
pub async fn check(client: &Client, s: &SourceSettings) -> Result<Vec<Check>, SourceError> {
    let mut out = prerequisites(client, s).await?;
    let slot = slot_state(client, &s.slot_name()).await?;
    out.extend(failover_checks(client, s, slot.as_ref()).await?);
    Ok(out)
}

/// What the relay cannot run without.
async fn prerequisites(client: &Client, s: &SourceSettings) -> Result<Vec<Check>, SourceError> {
    let mut out = Vec::new();
    let wal_level: String = client.query_one("show wal_level", &[]).await?.get(0);
    out.push(Check {
        what: "wal_level = logical".into(),
        warn: false,
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
        warn: false,
        ok: can_replicate,
        detail: if can_replicate {
            "ok".into()
        } else {
            format!("grant REPLICATION to {}", s.user)
        },
    });

    let shape = table_shape(client, s).await?;
    let table_exists = shape.is_ok();
    out.push(Check {
        what: format!("table {}.{} has the outbox columns", s.schema, s.table),
        warn: false,
        ok: shape.is_ok(),
        detail: shape.err().unwrap_or_else(|| "ok".into()),
    });
    if table_exists {
        out.extend(privileges(client, s).await?);
    }

    let publication = publication_state(client, s).await?;
    out.push(Check {
        what: format!("publication {} (insert) on the table", s.publication),
        warn: false,
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
            warn: false,
            ok: false,
            detail: format!("exists with plugin {}, needs pgoutput", st.plugin),
        },
        Some(st) if st.invalidated().is_some() => Check {
            what: format!("slot {}", s.slot_name()),
            warn: true,
            ok: true,
            detail: format!(
                "invalidated by the server ({}): the relay drops it, creates it again and publishes the rows still PENDING",
                st.invalidated().unwrap_or_default()
            ),
        },
        Some(st) => Check {
            what: format!("slot {}", s.slot_name()),
            warn: false,
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
            warn: false,
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
    // PostgreSQL 18 invalidates slots left idle this long (0 = never).
    let idle: Option<String> = client
        .query_one(
            "select current_setting('idle_replication_slot_timeout', true)",
            &[],
        )
        .await?
        .get(0);
    if let Some(idle) = idle.filter(|v| !v.is_empty() && v != "0") {
        out.push(Check {
            what: "idle_replication_slot_timeout".into(),
            warn: true,
            ok: true,
            detail: format!(
                "{idle}: a relay stopped longer than this finds its slot invalidated and falls back to publishing the PENDING rows (nothing lost, order across the gap not guaranteed)"
            ),
        });
    }
    Ok(out)
}

/// Whether a primary failover keeps the slot (PostgreSQL 17 failover slots): the
/// slot's flag and the primary's settings, then each standby among `hosts`. Gaps are
/// warnings: the relay runs, but a failover would fall back to reconciliation.
async fn failover_checks(
    client: &Client,
    s: &SourceSettings,
    slot: Option<&SlotState>,
) -> Result<Vec<Check>, SourceError> {
    let version = version_num(client).await?;
    let what = "failover slot".to_string();
    let wants = match wants_failover(s.failover_slot, version) {
        Err(why) => {
            return Ok(vec![Check {
                what,
                ok: false,
                warn: false,
                detail: why,
            }])
        }
        Ok(w) => w,
    };
    let note = |warn: bool, what: &str, detail: String| Check {
        what: what.to_string(),
        ok: true,
        warn,
        detail,
    };
    if version < FAILOVER_SLOTS_SINCE {
        return Ok(vec![note(
            false,
            &what,
            "not before PostgreSQL 17: after a primary failover the relay recreates the slot and publishes the rows still PENDING (nothing lost; duplicates and order across the gap not guaranteed)".into(),
        )]);
    }
    if !wants {
        return Ok(vec![note(
            true,
            &what,
            "failover_slot = false: a promoted standby has no slot; the relay falls back to reconciliation".into(),
        )]);
    }
    let mut out = vec![note(
        false,
        &what,
        match slot.and_then(|st| st.failover) {
            Some(true) => "the slot is a failover slot".into(),
            Some(false) => {
                "the slot is not a failover slot yet; the relay makes it one when it starts".into()
            }
            None => "the slot will be created as a failover slot".into(),
        },
    )];
    let synchronized: String = client
        .query_one(
            "select coalesce(current_setting('synchronized_standby_slots', true), '')",
            &[],
        )
        .await?
        .get(0);
    out.push(note(
        synchronized.trim().is_empty(),
        "synchronized_standby_slots",
        if synchronized.trim().is_empty() {
            "empty: the relay may publish a transaction no standby has received yet; promoted, that standby has no row for the event. Set it to the standbys' physical slots".into()
        } else {
            format!("{synchronized}: the relay receives nothing a listed standby has not")
        },
    ));
    let standbys: i64 = client
        .query_one(
            "select count(*) from pg_replication_slots where slot_type = 'physical' and active",
            &[],
        )
        .await?
        .get(0);
    out.push(note(
        standbys == 0,
        "standbys streaming from a physical slot",
        if standbys == 0 {
            "none: there is no standby to sync the slot to".into()
        } else {
            standbys.to_string()
        },
    ));
    if s.endpoints().len() > 1 {
        for (e, role) in server_roles(s).await {
            match role {
                Ok(r) if r.standby => out.extend(standby_checks(s, &e).await),
                Ok(_) => {}
                Err(err) => out.push(note(true, &format!("standby {e}"), err.to_string())),
            }
        }
    }
    Ok(out)
}

/// What a standby needs for the slot to be synced and usable after its promotion.
async fn standby_checks(s: &SourceSettings, e: &Endpoint) -> Vec<Check> {
    let what = format!("standby {e}");
    let found = async {
        let c = connect_with(s, s.pg_config_for(std::slice::from_ref(e))).await?;
        let settings = c
            .query_one(
                "select current_setting('sync_replication_slots', true), \
                        current_setting('hot_standby_feedback'), \
                        current_setting('primary_conninfo'), \
                        current_setting('primary_slot_name')",
                &[],
            )
            .await?;
        let slot = slot_state(&c, &s.slot_name()).await?;
        Ok::<_, SourceError>((settings, slot))
    }
    .await;
    let (settings, slot) = match found {
        Ok(f) => f,
        Err(err) => {
            return vec![Check {
                what,
                ok: true,
                warn: true,
                detail: format!("cannot inspect it: {err}"),
            }]
        }
    };
    let sync: Option<String> = settings.get(0);
    let feedback: String = settings.get(1);
    let conninfo: String = settings.get(2);
    let primary_slot: String = settings.get(3);
    let mut gaps = Vec::new();
    if sync.as_deref() != Some("on") {
        gaps.push("sync_replication_slots is not on");
    }
    if feedback != "on" {
        gaps.push("hot_standby_feedback is not on");
    }
    if !conninfo
        .split_whitespace()
        .any(|kv| kv.starts_with("dbname="))
    {
        gaps.push("primary_conninfo names no dbname");
    }
    if primary_slot.is_empty() {
        gaps.push("primary_slot_name is empty");
    }
    match &slot {
        Some(st) if st.synced == Some(true) && !st.temporary => {}
        Some(st) if st.synced == Some(true) => {
            gaps.push("the slot is synced but not sync-ready yet (a promotion now would drop it)")
        }
        Some(_) => gaps.push("the slot exists but is not a synced copy"),
        None => gaps.push("the slot is not synced here yet"),
    }
    vec![Check {
        what,
        ok: true,
        warn: !gaps.is_empty(),
        detail: if gaps.is_empty() {
            format!(
                "the slot is synced (confirmed {}); promoted, it continues from there",
                slot.and_then(|st| st.confirmed_flush)
                    .map_or("-".into(), |l| l.to_string())
            )
        } else {
            format!("not protected: {}", gaps.join("; "))
        },
    }]
}

/// Fails with a clear message unless every check holds.
pub async fn require(client: &Client, s: &SourceSettings) -> Result<(), SourceError> {
    let failed: Vec<String> = prerequisites(client, s)
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

/// The relay's rights on the outbox table (sql/grants.sql gives them): reading it
/// (reconciliation), marking rows (`UPDATE` of `status` and `processed_at`), and deleting
/// them (retention only, so a warning). Each missing one is named.
async fn privileges(client: &Client, s: &SourceSettings) -> Result<Vec<Check>, SourceError> {
    let table = format!("\"{}\".\"{}\"", s.schema, s.table);
    let row = client
        .query_one(
            "select has_schema_privilege($1, 'USAGE'), has_table_privilege($2, 'SELECT'), \
                    has_column_privilege($2, 'status', 'UPDATE'), \
                    has_column_privilege($2, 'processed_at', 'UPDATE'), \
                    has_table_privilege($2, 'DELETE')",
            &[&s.schema, &table],
        )
        .await?;
    let mut missing = Vec::new();
    for (i, what) in [
        (0, format!("USAGE on schema {}", s.schema)),
        (1, "SELECT".to_string()),
        (2, "UPDATE (status)".to_string()),
        (3, "UPDATE (processed_at)".to_string()),
    ] {
        if !row.get::<_, bool>(i) {
            missing.push(what);
        }
    }
    let what = format!("privileges of {} on {}.{}", s.user, s.schema, s.table);
    let mut out = vec![Check {
        what: what.clone(),
        warn: false,
        ok: missing.is_empty(),
        detail: if missing.is_empty() {
            "ok".into()
        } else {
            format!(
                "missing {}: grant them as in sql/grants.sql",
                missing.join(", ")
            )
        },
    }];
    if !row.get::<_, bool>(4) {
        out.push(Check {
            what: format!("DELETE on {}.{}", s.schema, s.table),
            warn: true,
            ok: true,
            detail: format!(
                "{} may not delete rows: needed only for retention (pipeline.retention_seconds)",
                s.user
            ),
        });
    }
    Ok(out)
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
    /// PostgreSQL 17+: a failover slot (standbys may sync it); `None` before 17.
    pub failover: Option<bool>,
    /// PostgreSQL 17+, on a standby: a copy synced from the primary.
    pub synced: Option<bool>,
    /// A temporary slot; a synced one stays temporary (and is dropped at promotion)
    /// until the standby has caught up with it ("sync-ready").
    pub temporary: bool,
    /// PostgreSQL 17+: why the server invalidated the slot (`wal_removed`,
    /// `idle_timeout` on 18, `rows_removed`, ...); `None` while it is valid.
    pub invalidation_reason: Option<String>,
}

impl SlotState {
    /// The server invalidated the slot: it can never stream again and must be recreated.
    pub fn invalidated(&self) -> Option<String> {
        if let Some(r) = &self.invalidation_reason {
            return Some(r.clone());
        }
        (self.wal_status.as_deref() == Some("lost")).then(|| "wal_status = lost".to_string())
    }
}

/// The first PostgreSQL version (`server_version_num`) with failover slots.
pub const FAILOVER_SLOTS_SINCE: i32 = 170_000;

/// Whether the slot should be a failover slot on a server of `version_num`, given the
/// `failover_slot` setting (unset: wherever supported).
pub fn wants_failover(setting: Option<bool>, version_num: i32) -> Result<bool, String> {
    match setting {
        None => Ok(version_num >= FAILOVER_SLOTS_SINCE),
        Some(false) => Ok(false),
        Some(true) if version_num >= FAILOVER_SLOTS_SINCE => Ok(true),
        Some(true) => Err(format!(
            "failover_slot = true needs PostgreSQL 17 or newer (server_version_num {version_num})"
        )),
    }
}

pub async fn slot_state(client: &Client, slot: &str) -> Result<Option<SlotState>, SourceError> {
    // Through to_jsonb so that columns newer servers add (failover, synced: 17) read as
    // null on older ones, with one statement for all versions.
    let row = client
        .query_opt(
            "select coalesce(plugin::text, ''), active, confirmed_flush_lsn::text, wal_status, \
                    (to_jsonb(s) ->> 'failover')::bool, (to_jsonb(s) ->> 'synced')::bool, temporary, \
                    to_jsonb(s) ->> 'invalidation_reason' \
             from pg_replication_slots s where slot_name = $1 and database = current_database()",
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
        failover: r.get(4),
        synced: r.get(5),
        temporary: r.get(6),
        invalidation_reason: r.get(7),
    }))
}

/// The server's `server_version_num`.
pub async fn version_num(client: &Client) -> Result<i32, SourceError> {
    Ok(client
        .query_one("select current_setting('server_version_num')::int", &[])
        .await?
        .get(0))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(wal_status: Option<&str>, reason: Option<&str>) -> SlotState {
        SlotState {
            plugin: "pgoutput".into(),
            active: false,
            confirmed_flush: None,
            wal_status: wal_status.map(str::to_string),
            failover: None,
            synced: None,
            temporary: false,
            invalidation_reason: reason.map(str::to_string),
        }
    }

    #[test]
    fn a_slot_is_invalidated_by_lost_wal_or_any_reason_the_server_gives() {
        assert_eq!(slot(Some("reserved"), None).invalidated(), None);
        assert_eq!(
            slot(Some("lost"), None).invalidated().as_deref(),
            Some("wal_status = lost")
        );
        // PostgreSQL 18's idle timeout leaves wal_status alone and names the reason.
        assert_eq!(
            slot(Some("reserved"), Some("idle_timeout"))
                .invalidated()
                .as_deref(),
            Some("idle_timeout")
        );
    }

    #[test]
    fn failover_slots_are_on_where_supported_and_refused_where_not() {
        assert_eq!(wants_failover(None, 170_011), Ok(true));
        assert_eq!(wants_failover(None, 150_019), Ok(false));
        assert_eq!(wants_failover(Some(false), 180_006), Ok(false));
        assert_eq!(wants_failover(Some(true), 170_000), Ok(true));
        let err = wants_failover(Some(true), 160_015).unwrap_err();
        assert!(err.contains("PostgreSQL 17"), "{err}");
    }
}
