//! Apply a batch of consumed events in one database transaction: `UserCreated` opens
//! accounts, `TransactionCreated` settles transfers.
//!
//! The batch commits whole or not at all, so the consumer stores its offsets only
//! after everything in it took effect, and retries the whole batch after a failure.
//! Every event id goes into the inbox in the same transaction: an event seen before
//! (redelivered, or twice in one batch) changes nothing.

use std::collections::HashSet;
use std::time::Duration;

use outbox::Capture;
use sqlx::{Connection, PgConnection};
use uuid::Uuid;

use super::open_account::{self, Opened};
use super::settle_transaction::{self, Settle, Settled};
use crate::domain::events::{TRANSACTION_CREATED, USER_CREATED};
use crate::domain::FailureReason;
use crate::store::{inbox, StoreError};

/// A consumed event this service acts on.
#[derive(Debug, Clone, PartialEq)]
pub struct Consumed {
    /// The `event_id` header: the inbox key.
    pub event_id: Uuid,
    pub command: Command,
}

/// What an event asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// `UserCreated`: open this user's account.
    OpenAccount { user_id: Uuid },
    /// `TransactionCreated`: settle this transaction.
    Settle(Settle),
}

impl Command {
    /// The event type that asks for it (what the inbox records).
    pub fn event_type(&self) -> &'static str {
        match self {
            Self::OpenAccount { .. } => USER_CREATED,
            Self::Settle(_) => TRANSACTION_CREATED,
        }
    }
}

/// What consuming one event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A zero-balance account was opened.
    Opened,
    /// The account existed already (e.g. the same user announced by another event id).
    AlreadyOpen,
    /// The money moved; the transaction is `COMPLETED`.
    Completed,
    /// No money moved; the transaction is `FAILED` for this reason.
    Failed(FailureReason),
    /// The transaction was settled already (by another event id); nothing changed.
    AlreadySettled,
    /// No such transaction in this database (not even after
    /// [`settle_transaction::VISIBILITY_GRACE`]); the event id is recorded, nothing else.
    UnknownTransaction,
    /// This event id was consumed before (or earlier in the batch); nothing changed.
    Duplicate,
}

/// What [`execute`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    /// One per event, in order.
    pub outcomes: Vec<Outcome>,
    /// How long the batch waited for transaction rows to become visible (see
    /// [`settle_transaction::VISIBILITY_GRACE`]).
    pub visibility_wait: Duration,
}

/// Applies `events` in order in one database transaction on `conn` and returns each
/// one's outcome, in the same order. The events this emits are written the way
/// `capture` says, in that transaction.
///
/// Accounts are opened before any transfer settles: a transaction row can only exist
/// once its accounts do (foreign keys), so no settlement waits for an account opened
/// by the same batch. Settlements apply in event order (see
/// [`settle_transaction::settle_all`]). Locks are taken in one global order, inbox ids,
/// then transaction rows, then accounts, each ascending, so batches of concurrent
/// consumers do not deadlock (the one exception, a row that became visible late, is
/// described at [`settle_transaction::settle_all`]).
pub async fn execute(
    conn: &mut PgConnection,
    capture: &Capture,
    events: &[Consumed],
) -> Result<Applied, StoreError> {
    let mut outcomes = vec![Outcome::Duplicate; events.len()];
    if events.is_empty() {
        return Ok(Applied {
            outcomes,
            visibility_wait: Duration::ZERO,
        });
    }
    let mut tx = conn.begin().await.map_err(StoreError::unavailable)?;

    let mut first_seen = HashSet::new();
    let firsts: Vec<usize> = (0..events.len())
        .filter(|&i| first_seen.insert(events[i].event_id))
        .collect();
    let recording: Vec<(Uuid, &str)> = firsts
        .iter()
        .map(|&i| (events[i].event_id, events[i].command.event_type()))
        .collect();
    let recorded = inbox::record_all(&mut tx, &recording).await?;
    let fresh: Vec<usize> = firsts
        .into_iter()
        .filter(|&i| recorded.contains(&events[i].event_id))
        .collect();

    // Each kind's events in batch order, with their index in the batch.
    let (mut open_at, mut user_ids) = (Vec::new(), Vec::new());
    let (mut settle_at, mut settles) = (Vec::new(), Vec::new());
    for &i in &fresh {
        match &events[i].command {
            Command::OpenAccount { user_id } => {
                open_at.push(i);
                user_ids.push(*user_id);
            }
            Command::Settle(settle) => {
                settle_at.push(i);
                settles.push(settle.clone());
            }
        }
    }
    let opened = open_account::open_all(&mut tx, &user_ids).await?;
    for (i, opened) in open_at.into_iter().zip(opened) {
        outcomes[i] = match opened {
            Opened::Now => Outcome::Opened,
            Opened::Already => Outcome::AlreadyOpen,
        };
    }
    let settled = settle_transaction::settle_all(&mut tx, capture, &settles).await?;
    for (i, settled) in settle_at.into_iter().zip(settled.outcomes) {
        outcomes[i] = match settled {
            Settled::Completed => Outcome::Completed,
            Settled::Failed(reason) => Outcome::Failed(reason),
            Settled::Already => Outcome::AlreadySettled,
            Settled::Unknown => Outcome::UnknownTransaction,
        };
    }

    tx.commit().await?;
    Ok(Applied {
        outcomes,
        visibility_wait: settled.visibility_wait,
    })
}
