//! What the relay needs of a source (`wal_level`, the outbox table's shape, the
//! publication, its rights) and whether a failover would keep its slot: `relay-cdc
//! check` prints these, a session requires them before it streams.

use tokio_postgres::Client;

use super::wal::{slot_state, version_num, wants_failover, SlotState, FAILOVER_SLOTS_SINCE};
use super::{connect_with, server_roles, SourceError};
use crate::config::{Capture, Endpoint, SourceSettings};

/// The first major whose pgoutput decodes logical messages (option `messages`).
const MESSAGES_SINCE: i32 = 140000;

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

    match s.capture {
        Capture::Table => {
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
        }
        Capture::Messages => {
            let version = version_num(client).await?;
            out.push(Check {
                what: "server decodes logical messages (PostgreSQL 14+)".into(),
                warn: false,
                ok: version >= MESSAGES_SINCE,
                detail: format!("server_version_num {version}"),
            });
        }
    }

    let publication = publication_state(client, s).await?;
    out.push(Check {
        what: match s.capture {
            Capture::Table => format!("publication {} (insert) on the table", s.publication),
            Capture::Messages => format!(
                "publication {} (pgoutput needs one; messages pass any)",
                s.publication
            ),
        },
        warn: false,
        ok: publication.is_ok() || s.create_publication,
        detail: match publication {
            Ok(()) => "ok".into(),
            Err(why) if s.create_publication => format!("{why}; will be created"),
            Err(why) => why,
        },
    });
    // Inserts into other tables are skipped, but the walsender decodes and sends each
    // (pgoutput filters by publication, not by what the relay wants).
    let wide = client
        .query_opt(
            "select p.puballtables, (select count(*) from pg_publication_tables t where t.pubname = p.pubname) \
             from pg_publication p where p.pubname = $1",
            &[&s.publication],
        )
        .await?;
    if let Some(row) = wide {
        let (all, tables): (bool, i64) = (row.get(0), row.get(1));
        let own = i64::from(s.capture == Capture::Table);
        if all || tables > own {
            out.push(Check {
                what: format!("publication {} carries only what the relay reads", s.publication),
                warn: true,
                ok: true,
                detail: if all {
                    "it is FOR ALL TABLES: every table's inserts are decoded and sent to the relay, which skips them".into()
                } else {
                    format!("it covers {tables} table(s): the inserts of those the relay does not read are decoded and sent for nothing")
                },
            });
        }
    }

    if !s.marks_rows() {
        out.extend(unmarked_checks(client, s).await?);
    }

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
            // The status columns exist only under `marking = "status"` ($3); CASE does
            // not evaluate the branch it does not take.
            "select has_schema_privilege($1, 'USAGE'), has_table_privilege($2, 'SELECT'), \
                    case when $3 then has_column_privilege($2, 'status', 'UPDATE') else true end, \
                    case when $3 then has_column_privilege($2, 'processed_at', 'UPDATE') else true end, \
                    has_table_privilege($2, 'DELETE')",
            &[&s.schema, &table, &s.marks_rows()],
        )
        .await?;
    let mut missing = Vec::new();
    let marks = s.marks_rows();
    for (i, what, needed) in [
        (0, format!("USAGE on schema {}", s.schema), true),
        (1, "SELECT".to_string(), marks),
        (2, "UPDATE (status)".to_string(), marks),
        (3, "UPDATE (processed_at)".to_string(), marks),
    ] {
        if needed && !row.get::<_, bool>(i) {
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
    if marks && !row.get::<_, bool>(4) {
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

/// Under `marking = "none"`: the publication must not carry the deletes of rows
/// removed in the writer's transaction (the relay skips them, but the walsender decodes
/// and sends each), and what the relay cannot guarantee without a status column.
async fn unmarked_checks(client: &Client, s: &SourceSettings) -> Result<Vec<Check>, SourceError> {
    let deletes = client
        .query_opt(
            "select pubdelete or pubupdate or pubtruncate from pg_publication where pubname = $1",
            &[&s.publication],
        )
        .await?
        .is_some_and(|r| r.get::<_, bool>(0));
    let lost = "the slot's confirmed position is the only record of progress: a lost or invalidated slot halts the relay instead of being recreated (nothing can say which events it had not delivered)";
    if s.capture == Capture::Messages {
        return Ok(vec![Check {
            what: format!("capture = \"messages\" (prefix {:?}): what the relay cannot guarantee", s.message_prefix),
            warn: true,
            ok: true,
            detail: format!("no table: events written before the slot was created are not published (no PENDING rows to reconcile); {lost}; no audit; no PROCESSED history"),
        }]);
    }
    Ok(vec![
        Check {
            what: format!("publication {} publishes inserts only", s.publication),
            warn: deletes,
            ok: true,
            detail: if deletes {
                format!("it also publishes deletes, updates or truncates: every row deleted in the writer's transaction is decoded and sent for nothing; alter publication {} set (publish = 'insert')", s.publication)
            } else {
                "ok".into()
            },
        },
        Check {
            what: "marking = \"none\": what the relay cannot guarantee".into(),
            warn: true,
            ok: true,
            detail: format!("rows written before the slot was created are not published (no reconciliation of PENDING rows); {lost}; no audit of the table against the slot; no retention (delete rows yourself, e.g. in the writer's transaction)"),
        },
    ])
}

async fn table_shape(
    client: &Client,
    s: &SourceSettings,
) -> Result<Result<(), String>, SourceError> {
    // pg_attribute, not information_schema.columns: the latter shows only the columns
    // the role holds a privilege on, and under `marking = "none"` the relay needs none.
    let rows = client
        .query(
            "select a.attname::text, format_type(a.atttypid, null) from pg_attribute a \
             join pg_class c on c.oid = a.attrelid join pg_namespace n on n.oid = c.relnamespace \
             where n.nspname = $1 and c.relname = $2 and a.attnum > 0 and not a.attisdropped",
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
    const TEXT: &[&str] = &["text", "character varying"];
    const TIME: &[&str] = &["timestamp with time zone", "timestamp without time zone"];
    let c = &s.columns;
    let mut need: Vec<(&str, &[&str])> = vec![
        (&c.id, &["uuid"]),
        (&c.aggregate_type, TEXT),
        (&c.aggregate_id, TEXT),
        (&c.event_type, TEXT),
        (
            &c.payload,
            &[
                "jsonb",
                "json",
                "text",
                "character varying",
                "character",
                "bytea",
            ],
        ),
    ];
    if let Some(t) = &c.timestamp {
        need.push((t, TIME));
    }
    // Extra columns may be of any type (integers and timestamps are typed, others text).
    need.extend(c.extra.iter().map(|e| (e.as_str(), &[][..])));
    if s.marks_rows() {
        need.extend([
            ("status", TEXT),
            ("created_at", TIME),
            ("processed_at", TIME),
        ]);
    }
    let mut problems = Vec::new();
    for (name, types) in need {
        match cols.iter().find(|(c, _)| c == name) {
            None => problems.push(format!("missing column {name}")),
            Some(_) if types.is_empty() => {}
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
    if s.capture == Capture::Messages {
        return Ok(Ok(()));
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
            let sql = match s.capture {
                Capture::Table => format!(
                    "create publication \"{}\" for table \"{}\".\"{}\" with (publish = 'insert')",
                    s.publication, s.schema, s.table
                ),
                // pgoutput needs a publication; messages do not depend on its tables.
                Capture::Messages => format!(
                    "create publication \"{}\" with (publish = 'insert')",
                    s.publication
                ),
            };
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
