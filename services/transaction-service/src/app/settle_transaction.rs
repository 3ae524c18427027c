//! Settle transactions: the effect of `TransactionCreated` events, a step of
//! [`apply_events`](super::apply_events) on its transaction.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use outbox::Capture;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::domain::events::{
    TransactionSettled, TRANSACTION_AGGREGATE, TRANSACTION_COMPLETED, TRANSACTION_FAILED,
};
use crate::domain::{FailureReason, Ledger, Settlement, TransactionStatus};
use crate::store::{self, accounts, settlements, transactions, StoreError};

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

/// First and longest pause between two looks for rows not yet visible. The gap between
/// a commit's WAL flush and its visibility is usually well under a millisecond, so the
/// first look again comes soon; a batch waiting is a batch every record of it waits for.
const VISIBILITY_POLL: (Duration, Duration) = (Duration::from_millis(1), Duration::from_millis(20));

/// What [`settle_all`] did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SettledAll {
    /// One per settle, in order.
    pub outcomes: Vec<Settled>,
    /// How long the batch waited for announced rows to become visible.
    pub visibility_wait: Duration,
}

/// Settles the transactions `settles` announce, in order.
///
/// Locks the announced transaction rows in ascending id order (waiting, up to
/// [`VISIBILITY_GRACE`], for rows not yet visible, then locking those too), then the
/// accounts of the pending ones in ascending user id order; applies each transfer to the
/// locked balances in event order ([`Ledger`]: a transfer the balance cannot cover fails
/// and moves nothing); writes the balances and final statuses in one statement and one
/// `TransactionCompleted` or `TransactionFailed` per settlement to the outbox the way
/// `capture` says (rows or transactional messages, in `conn`'s transaction), in event
/// order. Amounts and parties come from the stored rows, not from the events.
///
/// Every batch takes its locks in that order, so concurrent batches cannot deadlock,
/// with one exception: a row that became visible only after the first look is locked
/// after the others. Two consumers hold the same rows only while a rebalance hands the
/// same events to both; if that ever closes a cycle, PostgreSQL aborts one batch after
/// `deadlock_timeout` and it is retried.
pub async fn settle_all(
    conn: &mut PgConnection,
    capture: &Capture,
    settles: &[Settle],
) -> Result<SettledAll, StoreError> {
    if settles.is_empty() {
        return Ok(SettledAll::default());
    }
    let ids: BTreeSet<Uuid> = settles.iter().map(|s| s.transaction_id).collect();
    let all: Vec<Uuid> = ids.iter().copied().collect();
    let mut rows: HashMap<Uuid, transactions::Transaction> = transactions::lock_all(conn, &all)
        .await?
        .into_iter()
        .map(|t| (t.id, t))
        .collect();
    let mut visibility_wait = Duration::ZERO;
    if rows.len() < ids.len() {
        let missing: BTreeSet<Uuid> = ids
            .into_iter()
            .filter(|id| !rows.contains_key(id))
            .collect();
        let (late, waited) = wait_visible(conn, &missing).await?;
        visibility_wait = waited;
        if !late.is_empty() {
            rows.extend(
                transactions::lock_all(conn, &late)
                    .await?
                    .into_iter()
                    .map(|t| (t.id, t)),
            );
        }
    }

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
    let done = SettledAll {
        outcomes,
        visibility_wait,
    };
    if finals.is_empty() {
        return Ok(done);
    }

    let statuses: Vec<_> = finals.iter().map(|(id, s, r, _)| (*id, *s, *r)).collect();
    let settled_at = settlements::record(conn, &statuses, &ledger.changed()).await?;
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
    outbox::write_all(conn, capture, &events)
        .await
        .map_err(store::outbox_error)?;
    Ok(done)
}

/// The pauses between two looks: [`VISIBILITY_POLL`]'s first, doubled each time up to
/// its longest, without end ([`wait_visible`] bounds the total).
fn visibility_pauses() -> ExponentialBackoff {
    ExponentialBuilder::default()
        .with_factor(2.0)
        .with_min_delay(VISIBILITY_POLL.0)
        .with_max_delay(VISIBILITY_POLL.1)
        .without_max_times()
        .build()
}

/// The ids among `ids` (rows the lock just did not find) whose rows become visible, in
/// ascending order, once all are or [`VISIBILITY_GRACE`] has passed; and how long that
/// took. Pauses before each look: the lock was the first one.
async fn wait_visible(
    conn: &mut PgConnection,
    ids: &BTreeSet<Uuid>,
) -> Result<(Vec<Uuid>, Duration), StoreError> {
    let mut missing = ids.clone();
    let mut waited = Duration::ZERO;
    let mut pauses = visibility_pauses();
    while !missing.is_empty() && waited < VISIBILITY_GRACE {
        let pause = pauses.next().expect("pauses without a limit");
        tokio::time::sleep(pause).await;
        waited += pause;
        let looked: Vec<Uuid> = missing.iter().copied().collect();
        for id in transactions::visible(conn, &looked).await? {
            missing.remove(&id);
        }
    }
    Ok((ids.difference(&missing).copied().collect(), waited))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn looks_for_invisible_rows_pause_doubling_from_1_ms_to_20_ms() {
        let ms: Vec<u128> = visibility_pauses().take(7).map(|d| d.as_millis()).collect();
        assert_eq!(ms, [1, 2, 4, 8, 16, 20, 20]);
    }
}
