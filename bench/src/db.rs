//! The database side of a run: a fresh, migrated database per system and workload
//! (`testkit::TestDb`, which drops its replication slots and itself when dropped), the
//! server-side load procedure, WAL positions, slots and the load counters.

use std::time::Duration;

use anyhow::{bail, Context};
use testkit::TestDb;
use tokio_postgres::{Client, NoTls};

use crate::capture::Capture;

/// Application name of the load generator's connections, so load accounting can
/// leave them out.
pub const LOAD_APP: &str = "relay-bench-load";

/// A fresh database with the outbox schema (`sql/outbox`, with `sql/users_db`) and the load procedure.
pub async fn fresh() -> anyhow::Result<TestDb> {
    let db = TestDb::create("bench", "users_db").await?;
    let c = connect(&db.url, "relay-bench").await?;
    c.batch_execute(LOAD_PROCEDURE)
        .await
        .context("creating the load procedure")?;
    c.batch_execute(MESSAGE_LOAD_PROCEDURE)
        .await
        .context("creating the message load procedure")?;
    Ok(db)
}

/// Creates a `pgoutput` slot named `<prefix>_<unique>` on `c`'s database; returns its name.
pub async fn create_slot(c: &Client, prefix: &str) -> anyhow::Result<String> {
    let slot = format!("{prefix}_{}", testkit::unique_suffix());
    c.execute(
        "select pg_create_logical_replication_slot($1, 'pgoutput')",
        &[&slot],
    )
    .await
    .with_context(|| format!("creating slot {slot}"))?;
    Ok(slot)
}

/// An ordinary connection; its task ends when the client is dropped. On the secured stack
/// (libpq's `PGSSLMODE` and `PGSSLROOTCERT` set) it is TLS, verified against that CA.
pub async fn connect(url: &str, application_name: &str) -> anyhow::Result<Client> {
    let mut cfg: tokio_postgres::Config = url.parse()?;
    cfg.application_name(application_name);
    let connected = match stack_tls()? {
        None => cfg.connect(NoTls).await.map(|(c, conn)| {
            tokio::spawn(async move {
                let _ = conn.await;
            });
            c
        }),
        Some(tls) => {
            cfg.ssl_mode(tokio_postgres::config::SslMode::Require);
            cfg.connect(tls).await.map(|(c, conn)| {
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                c
            })
        }
    };
    connected.with_context(|| format!("connecting to {}", redact(url)))
}

/// TLS for the bench's own connections when the stack asks for it: verified against
/// `PGSSLROOTCERT` (the relay's TLS is the relay's, set through its settings).
fn stack_tls() -> anyhow::Result<Option<tokio_postgres_rustls::MakeRustlsConnect>> {
    let (Ok(_), Ok(root)) = (std::env::var("PGSSLMODE"), std::env::var("PGSSLROOTCERT")) else {
        return Ok(None);
    };
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&root).with_context(|| root.clone())? {
        roots.add(cert.with_context(|| root.clone())?)?;
    }
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Some(tokio_postgres_rustls::MakeRustlsConnect::new(config)))
}

fn redact(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(s), Some(a)) if s < a => format!("{}***{}", &url[..s + 3], &url[a..]),
        _ => url.to_string(),
    }
}

/// Writes `txns` transactions of `rows_per_txn` outbox rows each, every payload a JSON
/// object of about `payload_bytes` bytes whose `pad` is random hex (pglz cannot shrink
/// it, and rows differ so Kafka's lz4 gets no free ride). Runs server-side, one COMMIT
/// per transaction. Returns an LSN read inside the last transaction before its insert:
/// every earlier commit ends at or before it, the last one after it.
const LOAD_PROCEDURE: &str = r#"
create procedure bench_load(txns int, rows_per_txn int, payload_bytes int, inout last_txn_floor pg_lsn default null)
language plpgsql as $$
declare
    pool_len constant int := 1048576;
    pad_len int := greatest(payload_bytes - 30, 1);
    pool bytea;
begin
    select convert_to(string_agg(md5(random()::text), ''), 'UTF8') into pool
    from generate_series(1, (pool_len + pad_len) / 32 + 1);
    for t in 1..txns loop
        if t = txns then
            last_txn_floor := pg_current_wal_insert_lsn();
        end if;
        insert into outbox (id, aggregate_type, aggregate_id, event_type, payload)
        select gen_random_uuid(), 'bench', 'agg-' || ((t * rows_per_txn + i) % 64), 'BenchEvent',
               jsonb_build_object('t', t, 'i', i,
                   'pad', convert_from(substring(pool from 1 + (random() * pool_len)::int for pad_len), 'UTF8'))
        from generate_series(1, rows_per_txn) i;
        commit;
    end loop;
end $$;
"#;

/// [`LOAD_PROCEDURE`]'s events as transactional logical decoding messages (`--capture
/// messages`): the same count, transactions, aggregate ids and JSON payloads, each event a
/// `pg_logical_emit_message(true, 'outbox', <envelope>)` instead of a row. The envelope
/// (version 1 of `libs/outbox/src/message.rs`) is built in SQL, so the loader stays one
/// server-side call as in table mode: `01` version, `00` flags, `uuid_send` (the id's 16
/// bytes), then the strings aggregate type `bench`, aggregate id, event type `BenchEvent`
/// (each a big-endian `u32` length from `int4send`, then UTF-8), `00000000` (no headers)
/// and the payload last. The payload is the text of the `jsonb` a row would hold, so a
/// record carries the same bytes in both modes.
const MESSAGE_LOAD_PROCEDURE: &str = r#"
create procedure bench_load_messages(txns int, rows_per_txn int, payload_bytes int, inout last_txn_floor pg_lsn default null)
language plpgsql as $$
declare
    pool_len constant int := 1048576;
    pad_len int := greatest(payload_bytes - 30, 1);
    pool bytea;
begin
    select convert_to(string_agg(md5(random()::text), ''), 'UTF8') into pool
    from generate_series(1, (pool_len + pad_len) / 32 + 1);
    for t in 1..txns loop
        if t = txns then
            last_txn_floor := pg_current_wal_insert_lsn();
        end if;
        perform pg_logical_emit_message(true, 'outbox',
                   '\x0100'::bytea || uuid_send(gen_random_uuid())
                   || '\x0000000562656e6368'::bytea
                   || int4send(octet_length(e.agg)) || convert_to(e.agg, 'UTF8')
                   || '\x0000000a42656e63684576656e74'::bytea
                   || '\x00000000'::bytea
                   || int4send(octet_length(e.payload)) || convert_to(e.payload, 'UTF8'))
        from (
            select 'agg-' || ((t * rows_per_txn + i) % 64) as agg,
                   jsonb_build_object('t', t, 'i', i,
                       'pad', convert_from(substring(pool from 1 + (random() * pool_len)::int for pad_len), 'UTF8'))::text as payload
            from generate_series(1, rows_per_txn) i
            order by i
        ) e;
        commit;
    end loop;
end $$;
"#;

/// What a preload wrote.
#[derive(Debug, Clone, Copy)]
pub struct Loaded {
    pub rows: u64,
    /// The WAL insert position after the load (pg_recvlogical's `--endpos`).
    pub end_lsn: u64,
    /// The last transaction's commit ends after this LSN, every other one at or before it.
    pub last_txn_floor: u64,
    /// CPU seconds of the loader's backend (the writer) over the load: PostgreSQL's
    /// share of producing the events, the events' generation included.
    pub writer_cpu: f64,
}

/// Loads `txns × rows_per_txn` rows and waits until the WAL is flushed (walsenders
/// only send flushed WAL), so the timed consumer starts with all of it available.
pub async fn preload(
    url: &str,
    txns: u64,
    rows_per_txn: u32,
    payload_bytes: usize,
) -> anyhow::Result<Loaded> {
    preload_as(url, Capture::Table, txns, rows_per_txn, payload_bytes).await
}

/// [`preload`] in `capture` mode: rows, or the same events as messages.
pub async fn preload_as(
    url: &str,
    capture: Capture,
    txns: u64,
    rows_per_txn: u32,
    payload_bytes: usize,
) -> anyhow::Result<Loaded> {
    let c = connect(url, LOAD_APP).await?;
    // Asynchronous commit only makes loading fast; the WAL written is the same.
    c.batch_execute("set synchronous_commit = off").await?;
    let pid: i32 = c.query_one("select pg_backend_pid()", &[]).await?.get(0);
    let cpu0 = testkit::proc::cpu_seconds(pid as u32).unwrap_or(0.0);
    let rows = c
        .simple_query(&format!(
            "call {}({txns}, {rows_per_txn}, {payload_bytes})",
            capture.load_procedure()
        ))
        .await
        .context("loading rows")?;
    let writer_cpu = (testkit::proc::cpu_seconds(pid as u32).unwrap_or(cpu0) - cpu0).max(0.0);
    let floor = rows
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .context("bench_load returned no LSN")?;
    let end_lsn = lsn(&c, "pg_current_wal_insert_lsn()").await?;
    testkit::wait_for("the loaded WAL to be flushed", Duration::from_secs(30), || {
        let c = &c;
        async move {
            Ok((lsn(c, "pg_current_wal_flush_lsn()").await? >= end_lsn).then_some(()))
        }
    })
    .await?;
    Ok(Loaded {
        rows: txns * u64::from(rows_per_txn),
        end_lsn,
        last_txn_floor: parse_lsn(&floor)?,
        writer_cpu,
    })
}

/// An `pg_lsn` expression as a number.
pub async fn lsn(c: &Client, expr: &str) -> anyhow::Result<u64> {
    let s: String = c
        .query_one(&format!("select ({expr})::text"), &[])
        .await?
        .get(0);
    parse_lsn(&s)
}

pub fn parse_lsn(s: &str) -> anyhow::Result<u64> {
    let Some((hi, lo)) = s.split_once('/') else {
        bail!("not an LSN: {s:?}")
    };
    Ok((u64::from_str_radix(hi, 16)? << 32) | u64::from_str_radix(lo, 16)?)
}

pub fn format_lsn(v: u64) -> String {
    format!("{:X}/{:X}", v >> 32, v & 0xffff_ffff)
}

/// The slot's `confirmed_flush_lsn` (0 when unset or missing).
pub async fn confirmed_flush(c: &Client, slot: &str) -> anyhow::Result<u64> {
    let row = c
        .query_opt(
            "select confirmed_flush_lsn::text from pg_replication_slots where slot_name = $1",
            &[&slot],
        )
        .await?;
    match row.and_then(|r| r.get::<_, Option<String>>(0)) {
        Some(s) => parse_lsn(&s),
        None => Ok(0),
    }
}

pub async fn count_status(c: &Client, status: &str) -> anyhow::Result<i64> {
    Ok(
        c.query_one("select count(*) from outbox where status = $1", &[&status])
            .await?
            .get(0),
    )
}

/// `pg_stat_database` counters of one database.
#[derive(Debug, Clone, Copy, Default)]
pub struct DbCounters {
    pub xact_commit: i64,
    pub tup_returned: i64,
    pub tup_fetched: i64,
    pub blks_hit: i64,
}

impl DbCounters {
    pub fn delta(&self, before: &DbCounters) -> DbCounters {
        DbCounters {
            xact_commit: self.xact_commit - before.xact_commit,
            tup_returned: self.tup_returned - before.tup_returned,
            tup_fetched: self.tup_fetched - before.tup_fetched,
            blks_hit: self.blks_hit - before.blks_hit,
        }
    }
}

/// Counters of `db`, read on an admin connection (PostgreSQL publishes a backend's
/// counts at the latest when it exits, so read them after the systems disconnected).
pub async fn counters(admin: &Client, db: &str) -> anyhow::Result<DbCounters> {
    admin
        .execute("select pg_stat_clear_snapshot()", &[])
        .await?;
    let r = admin
        .query_one(
            "select xact_commit, tup_returned, tup_fetched, blks_hit from pg_stat_database where datname = $1",
            &[&db],
        )
        .await?;
    Ok(DbCounters {
        xact_commit: r.get(0),
        tup_returned: r.get(1),
        tup_fetched: r.get(2),
        blks_hit: r.get(3),
    })
}

/// Backends connected to `db` other than the load generator's and the caller's
/// (walsenders included): the database work a system under test causes.
pub async fn system_backends(admin: &Client, db: &str) -> anyhow::Result<Vec<u32>> {
    let rows = admin
        .query(
            "select pid from pg_stat_activity where datname = $1 and pid <> pg_backend_pid() \
             and coalesce(application_name, '') <> $2",
            &[&db, &LOAD_APP],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get::<_, i32>(0) as u32).collect())
}

/// What a PostgreSQL backend does for a system under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    /// The walsender of a replication connection (`backend_type = 'walsender'`):
    /// decodes WAL with pgoutput and sends it.
    Walsender,
    /// An ordinary session (`client backend`): for relay-cdc its marking connections
    /// (and the seldom-busy housekeeping one).
    Session,
}

/// Backends connected to `db` with `application_name` = `app`, walsenders apart from
/// ordinary sessions. relay-cdc names every connection of a source `relay-cdc/<source>`,
/// its replication connection included.
pub async fn backends_of(
    admin: &Client,
    db: &str,
    app: &str,
) -> anyhow::Result<Vec<(u32, Backend)>> {
    let rows = admin
        .query(
            "select pid, backend_type = 'walsender' from pg_stat_activity \
             where datname = $1 and application_name = $2 and pid <> pg_backend_pid()",
            &[&db, &app],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            let kind = if r.get::<_, bool>(1) {
                Backend::Walsender
            } else {
                Backend::Session
            };
            (r.get::<_, i32>(0) as u32, kind)
        })
        .collect())
}

/// The walsenders streaming from `db` (whatever client holds them).
pub async fn walsenders(admin: &Client, db: &str) -> anyhow::Result<Vec<(u32, Backend)>> {
    let rows = admin
        .query(
            "select pid from pg_stat_activity where datname = $1 and backend_type = 'walsender'",
            &[&db],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| (r.get::<_, i32>(0) as u32, Backend::Walsender))
        .collect())
}

/// Waits until no session but the caller's is connected to `db` (their counters are
/// then published).
pub async fn wait_disconnected(admin: &Client, db: &str) -> anyhow::Result<()> {
    testkit::wait_for(
        "the database's sessions to end",
        Duration::from_secs(30),
        || async move {
            let n: i64 = admin
                .query_one(
                    "select count(*) from pg_stat_activity where datname = $1 and pid <> pg_backend_pid()",
                    &[&db],
                )
                .await?
                .get(0);
            Ok((n == 0).then_some(()))
        },
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsns_round_trip() {
        let v = parse_lsn("16/B374D848").unwrap();
        assert_eq!(v, (0x16 << 32) | 0xB374D848);
        assert_eq!(format_lsn(v), "16/B374D848");
        assert!(parse_lsn("nope").is_err());
    }

    #[test]
    fn urls_lose_their_password_in_messages() {
        assert_eq!(
            redact("postgres://u:secret@h:1/db"),
            "postgres://***@h:1/db"
        );
    }
}
