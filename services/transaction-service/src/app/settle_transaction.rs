//! Settle transactions: the effect of `TransactionCreated` events, a step of
//! [`apply_events`](super::apply_events) on its transaction.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use sqlx::PgConnection;
use uuid::Uuid;

use crate::domain::events::{
    TransactionSettled, TRANSACTION_AGGREGATE, TRANSACTION_COMPLETED, TRANSACTION_FAILED,
};
use crate::domain::{FailureReason, Ledger, Settlement, TransactionStatus};
use crate::store::{accounts, transactions, StoreError};

/// One `TransactionCreated` to settle.
#[derive(Debug, Clone, PartialEq)]
pub struct Settle {
    pub transaction_id: Uuid,
    /// The consumer span's W3C context (a child of the request's), carried by the
    /// settlement's own event.
    pub trace: Option<outbox::TraceContext>,
}

/// What one `TransactionCreated` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// The money moved; the transaction is `COMPLETED`.
    Completed,
    /// No money moved; the transaction is `FAILED` for this reason.
    Failed(FailureReason),
    /// The transaction was settled already (by another event id, or earlier in the same
    /// batch); nothing changed.
    Already,
    /// No such transaction in this database (not even after [`VISIBILITY_GRACE`]).
    Unknown,
}

/// How long a `TransactionCreated` waits for its transaction row to become visible.
///
/// The event can arrive before this service's snapshots see the row it announces:
/// relay-cdc publishes a commit once its WAL record is flushed, a moment before the
/// committing session lets other snapshots see it (on a busy machine, long enough for
/// Kafka to deliver the event here). Each statement of this read-committed
/// transaction takes a fresh snapshot, so looking again shortly after finds the row.
pub const VISIBILITY_GRACE: Duration = Duration::from_secs(5);

/// Pause between two looks for rows not yet visible.
const VISIBILITY_POLL: Duration = Duration::from_millis(20);

/// Settles the transactions `settles` announce, in order.
///
/// Waits (up to [`VISIBILITY_GRACE`]) until every announced row is visible, then locks
/// the transaction rows in ascending id order and the accounts of the pending ones in
/// ascending user id order (every batch takes its locks in that order, so concurrent
/// batches cannot deadlock), applies each transfer to the locked balances in event
/// order ([`Ledger`]: a transfer the balance cannot cover fails and moves nothing),
/// writes the balances and final statuses, and writes one `TransactionCompleted` or
/// `TransactionFailed` per settlement to the outbox, in event order. Amounts and
/// parties come from the stored rows, not from the events.
pub async fn settle_all(
    conn: &mut PgConnection,
    settles: &[Settle],
) -> Result<Vec<Settled>, StoreError> {
    if settles.is_empty() {
        return Ok(Vec::new());
    }
    let ids: BTreeSet<Uuid> = settles.iter().map(|s| s.transaction_id).collect();
    let visible = wait_visible(conn, &ids).await?;
    let mut rows: HashMap<Uuid, transactions::Transaction> = transactions::lock_all(conn, &visible)
        .await?
        .into_iter()
        .map(|t| (t.id, t))
        .collect();

    let parties: BTreeSet<Uuid> = rows
        .values()
        .filter(|t| t.status == TransactionStatus::Pending)
        .flat_map(|t| t.from_user_id.into_iter().chain([t.to_user_id]))
        .collect();
    let parties: Vec<Uuid> = parties.into_iter().collect();
    let mut ledger = Ledger::new(accounts::lock_balances(conn, &parties).await?);

    let mut outcomes = Vec::with_capacity(settles.len());
    let mut finals = Vec::new();
    for settle in settles {
        let Some(row) = rows.get_mut(&settle.transaction_id) else {
            outcomes.push(Settled::Unknown);
            continue;
        };
        if row.status != TransactionStatus::Pending {
            outcomes.push(Settled::Already);
            continue;
        }
        let settlement = ledger
            .settle(row.from_user_id, row.to_user_id, row.amount.to_decimal())
            // The foreign keys make every party an account: a missing one is a broken
            // invariant, and the batch is retried rather than settled without it.
            .map_err(|_| StoreError::Failed(sqlx::Error::RowNotFound))?;
        let (status, reason, outcome) = match settlement {
            Settlement::Completed => (TransactionStatus::Completed, None, Settled::Completed),
            Settlement::Failed(r) => (TransactionStatus::Failed, Some(r), Settled::Failed(r)),
        };
        row.status = status;
        outcomes.push(outcome);
        finals.push((row.id, status, reason, settle.trace.clone()));
    }
    if finals.is_empty() {
        return Ok(outcomes);
    }

    accounts::set_balances(conn, &ledger.changed()).await?;
    let statuses: Vec<_> = finals.iter().map(|(id, s, r, _)| (*id, *s, *r)).collect();
    let settled_at = transactions::settle_all(conn, &statuses).await?;
    let events = finals
        .into_iter()
        .map(|(id, status, reason, trace)| {
            let row = &rows[&id];
            let payload = TransactionSettled {
                transaction_id: id,
                status,
                amount: row.amount,
                from_user_id: row.from_user_id,
                to_user_id: row.to_user_id,
                failure_reason: reason.map(FailureReason::as_str),
                settled_at: settled_at[&id],
            };
            let event_type = match status {
                TransactionStatus::Failed => TRANSACTION_FAILED,
                _ => TRANSACTION_COMPLETED,
            };
            outbox::NewEvent::new(TRANSACTION_AGGREGATE, id, event_type, &payload)
                .expect("the event payload serialises")
                .with_trace(trace)
        })
        .collect::<Vec<_>>();
    outbox::insert_all(conn, &events).await?;
    Ok(outcomes)
}

/// The ids among `ids` whose rows are visible, in ascending order, once all are or
/// [`VISIBILITY_GRACE`] has passed.
async fn wait_visible(
    conn: &mut PgConnection,
    ids: &BTreeSet<Uuid>,
) -> Result<Vec<Uuid>, StoreError> {
    let mut missing = ids.clone();
    let mut waited = Duration::ZERO;
    loop {
        let looked: Vec<Uuid> = missing.iter().copied().collect();
        for id in transactions::visible(conn, &looked).await? {
            missing.remove(&id);
        }
        if missing.is_empty() || waited >= VISIBILITY_GRACE {
            break;
        }
        tokio::time::sleep(VISIBILITY_POLL).await;
        waited += VISIBILITY_POLL;
    }
    Ok(ids.difference(&missing).copied().collect())
}
