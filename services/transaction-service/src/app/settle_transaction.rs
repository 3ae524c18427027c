//! Settle a transaction: the effect of its `TransactionCreated` event.

use std::collections::BTreeMap;
use std::time::Duration;

use rust_decimal::Decimal;
use sqlx::PgPool;
use uuid::Uuid;

use crate::domain::events::{
    TransactionSettled, TRANSACTION_AGGREGATE, TRANSACTION_COMPLETED, TRANSACTION_CREATED,
    TRANSACTION_FAILED,
};
use crate::domain::{FailureReason, TransactionStatus};
use crate::store::{accounts, inbox, transactions, StoreError};

/// What consuming one `TransactionCreated` event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The money moved; the transaction is `COMPLETED`.
    Completed,
    /// No money moved; the transaction is `FAILED` for this reason.
    Failed(FailureReason),
    /// This event id was consumed before; nothing changed.
    Duplicate,
    /// The transaction was settled already (by another event id); nothing changed.
    AlreadySettled,
    /// No such transaction in this database (not even after [`VISIBILITY_GRACE`]); the
    /// event id is recorded, nothing else.
    UnknownTransaction,
}

/// How long a `TransactionCreated` waits for its transaction row to become visible.
///
/// The event can arrive before this service's snapshots see the row it announces:
/// relay-cdc publishes a commit once its WAL record is flushed, a moment before the
/// committing session lets other snapshots see it (on a busy machine, long enough for
/// Kafka to deliver the event here). Each statement of this read-committed
/// transaction takes a fresh snapshot, so looking again shortly after finds the row.
pub const VISIBILITY_GRACE: Duration = Duration::from_secs(5);

/// Settles the transaction `transaction_id` announced by event `event_id`.
///
/// One database transaction records the event id in the inbox, locks the transaction
/// row, then locks the accounts involved in ascending user id order (so concurrent
/// settlements cannot deadlock), checks the sender's funds, moves the money, sets the
/// final status and writes `TransactionCompleted` or `TransactionFailed` to the outbox.
/// The amount and parties come from the stored row, not from the event. The settlement
/// event carries `trace` (the consumer span's W3C context, a child of the request's).
pub async fn execute(
    pool: &PgPool,
    event_id: Uuid,
    transaction_id: Uuid,
    trace: Option<outbox::TraceContext>,
) -> Result<Outcome, StoreError> {
    let mut tx = pool.begin().await.map_err(StoreError::unavailable)?;
    if !inbox::record(&mut tx, event_id, TRANSACTION_CREATED).await? {
        return Ok(Outcome::Duplicate);
    }
    let mut waited = Duration::ZERO;
    let transaction = loop {
        if let Some(t) = transactions::lock(&mut tx, transaction_id).await? {
            break t;
        }
        if waited >= VISIBILITY_GRACE {
            tx.commit().await?;
            return Ok(Outcome::UnknownTransaction);
        }
        let pause = Duration::from_millis(20);
        tokio::time::sleep(pause).await;
        waited += pause;
    };
    if transaction.status != TransactionStatus::Pending {
        tx.commit().await?;
        return Ok(Outcome::AlreadySettled);
    }

    // BTreeMap: iteration in ascending user id order is the lock order.
    let mut balances: BTreeMap<Uuid, Decimal> = BTreeMap::new();
    balances.insert(transaction.to_user_id, Decimal::ZERO);
    if let Some(from) = transaction.from_user_id {
        balances.insert(from, Decimal::ZERO);
    }
    for (user_id, balance) in balances.iter_mut() {
        *balance = accounts::lock_balance(&mut tx, *user_id)
            .await?
            .ok_or(StoreError::Failed(sqlx::Error::RowNotFound))?;
    }

    let amount = transaction.amount.to_decimal();
    let outcome = match transaction.from_user_id {
        Some(from) if balances[&from] < amount => Outcome::Failed(FailureReason::InsufficientFunds),
        Some(from) => {
            accounts::add(&mut tx, from, -amount).await?;
            accounts::add(&mut tx, transaction.to_user_id, amount).await?;
            Outcome::Completed
        }
        None => {
            accounts::add(&mut tx, transaction.to_user_id, amount).await?;
            Outcome::Completed
        }
    };
    let (status, reason, event_type) = match outcome {
        Outcome::Failed(reason) => (TransactionStatus::Failed, Some(reason), TRANSACTION_FAILED),
        _ => (TransactionStatus::Completed, None, TRANSACTION_COMPLETED),
    };
    let settled_at = transactions::settle(&mut tx, transaction.id, status, reason).await?;

    let payload = TransactionSettled {
        transaction_id: transaction.id,
        status,
        amount: transaction.amount,
        from_user_id: transaction.from_user_id,
        to_user_id: transaction.to_user_id,
        failure_reason: reason.map(FailureReason::as_str),
        settled_at,
    };
    let event = outbox::NewEvent::new(TRANSACTION_AGGREGATE, transaction.id, event_type, &payload)
        .expect("the event payload serialises")
        .with_trace(trace);
    outbox::insert(&mut tx, &event).await?;
    tx.commit().await?;
    Ok(outcome)
}
