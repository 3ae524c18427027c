//! Message mode against the real PostgreSQL: what `outbox::write_all` emits is what a
//! `pgoutput` slot with `messages 'true'` decodes, in order, at commit, and never for a
//! rolled-back transaction.
//!
//! Each test owns a database (`testkit::TestDb`) and a logical slot on it; dropping the
//! `TestDb`, also when the test panics, drops every slot of its database and then the
//! database. The slot is read with `pg_logical_slot_get_binary_changes` (proto_version 1)
//! and the Message records are parsed here, so nothing of the relay is involved.

use std::collections::BTreeMap;

use anyhow::{bail, ensure, Context};
use outbox::message::{self, DEFAULT_PREFIX};
use outbox::{Capture, NewEvent, TraceContext};
use sqlx::Connection;
use testkit::TestDb;
use uuid::Uuid;

/// A database with a `pgoutput` slot and a publication `p` (pgoutput needs one; messages
/// are not filtered by it).
struct Fixture {
    db: TestDb,
    slot: String,
}

impl Fixture {
    async fn new(prefix: &str) -> anyhow::Result<Self> {
        let db = TestDb::create_empty(prefix).await?;
        let slot = format!("{}_slot", db.name);
        let mut conn = db.connect_admin().await?;
        sqlx::query("create table t (id int primary key)")
            .execute(&mut conn)
            .await?;
        sqlx::query("create publication p for table t")
            .execute(&mut conn)
            .await?;
        sqlx::query("select pg_create_logical_replication_slot($1, 'pgoutput')")
            .bind(&slot)
            .execute(&mut conn)
            .await?;
        Ok(Self { db, slot })
    }

    /// What the slot decoded since the last call, consumed.
    async fn changes(&self) -> anyhow::Result<Vec<Change>> {
        let mut conn = self.db.connect_admin().await?;
        let rows: Vec<(Vec<u8>,)> = sqlx::query_as(
            "select data from pg_logical_slot_get_binary_changes($1, null, null, \
             'proto_version', '1', 'publication_names', 'p', 'messages', 'true')",
        )
        .bind(&self.slot)
        .fetch_all(&mut conn)
        .await?;
        rows.iter().map(|(data,)| Change::parse(data)).collect()
    }
}

/// The pgoutput records these tests look at; the rest are `Other`.
#[derive(Debug, PartialEq)]
enum Change {
    Begin,
    Commit,
    Message {
        transactional: bool,
        prefix: String,
        content: Vec<u8>,
    },
    Other(u8),
}

impl Change {
    /// pgoutput v1: `B` and `C` by tag; `M` is flags (u8, 1 = transactional), the LSN
    /// (u64), the prefix (NUL-terminated), the content's length (u32) and the content.
    fn parse(data: &[u8]) -> anyhow::Result<Self> {
        let Some((&tag, rest)) = data.split_first() else {
            bail!("empty pgoutput record")
        };
        Ok(match tag {
            b'B' => Self::Begin,
            b'C' => Self::Commit,
            b'M' => {
                ensure!(rest.len() >= 9, "message record too short");
                let flags = rest[0];
                let rest = &rest[9..];
                let nul = rest
                    .iter()
                    .position(|&b| b == 0)
                    .context("message prefix without NUL")?;
                let prefix = std::str::from_utf8(&rest[..nul])?.to_string();
                let rest = &rest[nul + 1..];
                ensure!(rest.len() >= 4, "message length missing");
                let len = u32::from_be_bytes(rest[..4].try_into()?) as usize;
                let content = rest[4..].to_vec();
                ensure!(content.len() == len, "message content is not {len} bytes");
                Self::Message {
                    transactional: flags & 1 == 1,
                    prefix,
                    content,
                }
            }
            other => Self::Other(other),
        })
    }
}

/// The transactions the slot decoded: per `B`..`C`, the contents of its messages with
/// `prefix`, each checked to be transactional.
fn transactions(changes: &[Change], prefix: &str) -> anyhow::Result<Vec<Vec<Vec<u8>>>> {
    let mut out = Vec::new();
    let mut open: Option<Vec<Vec<u8>>> = None;
    for change in changes {
        match change {
            Change::Begin => {
                ensure!(open.is_none(), "BEGIN inside a transaction");
                open = Some(Vec::new());
            }
            Change::Commit => out.push(open.take().context("COMMIT without BEGIN")?),
            Change::Message {
                transactional,
                prefix: p,
                content,
            } if p == prefix => {
                ensure!(*transactional, "a message outside a transaction");
                open.as_mut()
                    .context("message outside BEGIN..COMMIT")?
                    .push(content.clone());
            }
            _ => {}
        }
    }
    ensure!(open.is_none(), "unterminated transaction");
    Ok(out)
}

fn events(tag: &str, n: usize) -> Vec<NewEvent> {
    (0..n)
        .map(|i| {
            NewEvent::new(
                "order",
                format!("{tag}-{}", i % 7),
                "OrderPlaced",
                &serde_json::json!({"tag": tag, "seq": i}),
            )
            .unwrap()
        })
        .collect()
}

/// The envelope decodes to `event` with `id`.
fn assert_is(envelope: &[u8], id: Uuid, event: &NewEvent) {
    let m = message::decode(envelope).unwrap();
    assert_eq!(m.id, id);
    assert_eq!(
        (m.aggregate_type, m.aggregate_id, m.event_type),
        (
            event.aggregate_type.as_str(),
            event.aggregate_id.as_str(),
            event.event_type.as_str()
        )
    );
    let trace = event.trace.as_ref();
    assert_eq!(m.traceparent, trace.map(|t| t.traceparent.as_str()));
    assert_eq!(m.tracestate, trace.and_then(|t| t.tracestate.as_deref()));
    let headers: Vec<(&str, &str)> = event
        .headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    assert_eq!(m.headers, headers);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(m.payload).unwrap(),
        event.payload
    );
}

#[tokio::test]
async fn events_of_one_write_all_arrive_in_order_and_round_trip() -> anyhow::Result<()> {
    let f = Fixture::new("msg_order").await?;
    let mut batch = events("a", 200);
    batch[3] = NewEvent::new(
        "user",
        "Zoë/東京",
        "UserCreated",
        &serde_json::json!({"name": "Zoë 😀", "big": "z".repeat(300_000)}),
    )?
    .with_trace(Some(
        TraceContext::parse(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            Some("k=v"),
        )
        .map_err(anyhow::Error::msg)?,
    ))
    .with_header("x-tenant", "t1")
    .map_err(anyhow::Error::msg)?;

    let mut conn = f.db.connect().await?;
    let mut tx = conn.begin().await?;
    let ids = outbox::write_all(&mut tx, &Capture::messages(), &batch).await?;
    tx.commit().await?;

    let txns = transactions(&f.changes().await?, DEFAULT_PREFIX)?;
    assert_eq!(txns.len(), 1, "one transaction");
    assert_eq!(txns[0].len(), batch.len());
    for ((envelope, id), event) in txns[0].iter().zip(&ids).zip(&batch) {
        assert_is(envelope, *id, event);
    }
    Ok(())
}

#[tokio::test]
async fn a_rolled_back_transactions_messages_never_appear() -> anyhow::Result<()> {
    let f = Fixture::new("msg_rollback").await?;
    let capture = Capture::parse("messages:billing")?;
    let mut conn = f.db.connect().await?;

    let mut tx = conn.begin().await?;
    outbox::write_all(&mut tx, &capture, &events("gone", 5)).await?;
    tx.rollback().await?;
    let mut tx = conn.begin().await?;
    let kept = events("kept", 1);
    let id = outbox::write(&mut tx, &capture, &kept[0]).await?;
    tx.commit().await?;

    let changes = f.changes().await?;
    assert!(
        transactions(&changes, DEFAULT_PREFIX)?
            .iter()
            .all(Vec::is_empty),
        "nothing under the default prefix"
    );
    let txns = transactions(&changes, "billing")?;
    assert_eq!(txns.len(), 1, "only the committed transaction: {changes:?}");
    assert_eq!(txns[0].len(), 1);
    assert_is(&txns[0][0], id, &kept[0]);
    Ok(())
}

#[tokio::test]
async fn two_transactions_appear_in_commit_order_not_begin_order() -> anyhow::Result<()> {
    let f = Fixture::new("msg_commit_order").await?;
    let capture = Capture::messages();
    let (first, second) = (events("first", 3), events("second", 3));
    let mut a = f.db.connect().await?;
    let mut b = f.db.connect().await?;

    let mut tx_first = a.begin().await?;
    let first_ids = outbox::write_all(&mut tx_first, &capture, &first).await?;
    let mut tx_second = b.begin().await?;
    let second_ids = outbox::write_all(&mut tx_second, &capture, &second).await?;
    // The transaction that began (and wrote) second commits first.
    tx_second.commit().await?;
    tx_first.commit().await?;

    let txns = transactions(&f.changes().await?, DEFAULT_PREFIX)?;
    assert_eq!(txns.len(), 2);
    for (txn, (ids, events)) in txns
        .iter()
        .zip([(&second_ids, &second), (&first_ids, &first)])
    {
        assert_eq!(txn.len(), events.len());
        for ((envelope, id), event) in txn.iter().zip(ids.iter()).zip(events.iter()) {
            assert_is(envelope, *id, event);
        }
    }
    Ok(())
}

#[tokio::test]
async fn an_event_a_row_could_not_hold_fails_the_write_before_anything_is_emitted(
) -> anyhow::Result<()> {
    let f = Fixture::new("msg_invalid").await?;
    let mut batch = events("x", 2);
    batch[1].headers = BTreeMap::from([("event_id".to_string(), "forged".to_string())]);
    let mut conn = f.db.connect().await?;
    let err = outbox::write_all(&mut conn, &Capture::messages(), &batch)
        .await
        .unwrap_err();
    assert!(
        matches!(err, outbox::WriteError::Event { index: 1, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("reserved"), "{err}");
    assert!(transactions(&f.changes().await?, DEFAULT_PREFIX)?.is_empty());
    Ok(())
}

#[tokio::test]
async fn table_mode_writes_rows_and_emits_no_message() -> anyhow::Result<()> {
    let db = TestDb::create("msg_table", "users_db").await?;
    let slot = format!("{}_slot", db.name);
    let mut admin = db.connect_admin().await?;
    sqlx::query("select pg_create_logical_replication_slot($1, 'pgoutput')")
        .bind(&slot)
        .execute(&mut admin)
        .await?;
    let batch = events("row", 3);
    let mut conn = db.connect().await?;
    let mut tx = conn.begin().await?;
    let ids = outbox::write_all(&mut tx, &Capture::Table, &batch).await?;
    tx.commit().await?;

    let rows: Vec<(Uuid, String)> =
        sqlx::query_as("select id, aggregate_id from outbox order by id")
            .fetch_all(&mut admin)
            .await?;
    let expected: Vec<(Uuid, String)> = ids
        .iter()
        .zip(&batch)
        .map(|(id, e)| (*id, e.aggregate_id.clone()))
        .collect();
    assert_eq!(rows, expected);

    let changes: Vec<(Vec<u8>,)> = sqlx::query_as(
        "select data from pg_logical_slot_get_binary_changes($1, null, null, \
         'proto_version', '1', 'publication_names', $2, 'messages', 'true')",
    )
    .bind(&slot)
    .bind(outbox::PUBLICATION)
    .fetch_all(&mut admin)
    .await?;
    let tags: Vec<u8> = changes.iter().map(|(d,)| d[0]).collect();
    assert_eq!(tags.iter().filter(|&&t| t == b'I').count(), 3, "{tags:?}");
    assert!(!tags.contains(&b'M'), "{tags:?}");
    Ok(())
}
