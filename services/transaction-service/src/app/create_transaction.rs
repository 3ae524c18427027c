//! Accept a transaction: the `PENDING` row, its `TransactionCreated` event (an outbox row
//! or a logical decoding message, as the [`Capture`] says) and (with an
//! `Idempotency-Key`) the stored response, all in one database transaction.

use std::time::Duration;

use outbox::Capture;
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use crate::domain::events::{TransactionCreated, TRANSACTION_AGGREGATE, TRANSACTION_CREATED};
use crate::domain::{IdempotencyKey, NewTransaction, TransactionStatus};
use crate::store::{self, accounts, idempotency, transactions, StoreError};

/// How long an idempotency key names its request. Older keys may be purged and reused.
pub const IDEMPOTENCY_RETENTION: Duration = Duration::from_secs(24 * 60 * 60);

/// The HTTP status stored with an accepted request's response.
pub const ACCEPTED_STATUS: u16 = 202;

/// How many expired idempotency keys one request purges at most.
const PURGE_BATCH: i64 = 100;

/// The response to an accepted transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Accepted {
    pub transaction_id: Uuid,
    pub status: TransactionStatus,
}

/// What happened to the request.
#[derive(Debug, Clone, PartialEq)]
pub enum Created {
    /// A new `PENDING` transaction.
    Accepted(Accepted),
    /// The idempotency key named an identical earlier request: its response, byte for
    /// byte.
    Replayed { status: u16, body: String },
}

/// A side of the transaction that names an account that does not exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Party {
    From,
    To,
}

#[derive(Debug, thiserror::Error)]
pub enum CreateTransactionError {
    #[error("unknown account")]
    UnknownAccounts(Vec<Party>),
    #[error("idempotency key already used for a different request")]
    IdempotencyKeyReused,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for CreateTransactionError {
    fn from(error: sqlx::Error) -> Self {
        Self::Store(error.into())
    }
}

/// Accepts `new` as a `PENDING` transaction and emits `TransactionCreated` the way
/// `capture` says, carrying `trace` (the request span's W3C context) so its settlement
/// continues that trace. The event commits or rolls back with the transaction row:
/// whatever fails after it was written (the idempotency key taken meanwhile, the commit)
/// takes it back, row or message.
///
/// With a `key`, the response is stored in the same transaction. A request whose key
/// is live gets the stored response (same request) or
/// [`CreateTransactionError::IdempotencyKeyReused`] (different request). Concurrent
/// requests with one key cannot both create a transaction: the second one's key insert
/// waits for the first to commit, then finds the key taken, rolls back its own
/// transaction row and event, and answers with the first one's response.
pub async fn execute(
    pool: &PgPool,
    capture: &Capture,
    new: &NewTransaction,
    key: Option<&IdempotencyKey>,
    trace: Option<outbox::TraceContext>,
) -> Result<Created, CreateTransactionError> {
    let fingerprint = new.fingerprint();
    let mut tx = pool.begin().await.map_err(StoreError::unavailable)?;

    if let Some(key) = key {
        idempotency::forget_expired(&mut tx, key.as_str(), IDEMPOTENCY_RETENTION).await?;
        if let Some(stored) =
            idempotency::find(&mut tx, key.as_str(), &fingerprint, IDEMPOTENCY_RETENTION).await?
        {
            return replay(stored);
        }
    }

    // The foreign keys check the accounts; only a refused insert pays for finding out
    // which ones are missing.
    let row = match transactions::insert(&mut tx, Uuid::now_v7(), new).await {
        Ok(row) => row,
        Err(error) => match unknown_party(&error) {
            Some(named) => {
                tx.rollback().await?;
                return Err(CreateTransactionError::UnknownAccounts(
                    missing_parties(pool, new, named).await?,
                ));
            }
            None => return Err(error.into()),
        },
    };
    let event = TransactionCreated {
        transaction_id: row.id,
        amount: row.amount,
        from_user_id: row.from_user_id,
        to_user_id: row.to_user_id,
        description: row.description.clone(),
        created_at: row.created_at,
    };
    let event = outbox::NewEvent::new(TRANSACTION_AGGREGATE, row.id, TRANSACTION_CREATED, &event)
        .expect("the event payload serialises")
        .with_trace(trace);
    outbox::write(&mut tx, capture, &event)
        .await
        .map_err(store::outbox_error)?;

    let accepted = Accepted {
        transaction_id: row.id,
        status: row.status,
    };
    if let Some(key) = key {
        let body = serde_json::to_string(&accepted).expect("the response serialises");
        if !idempotency::save(&mut tx, key.as_str(), &fingerprint, ACCEPTED_STATUS, &body).await? {
            // A concurrent request with this key committed first: ours never happened.
            tx.rollback().await?;
            let mut conn = pool.acquire().await.map_err(StoreError::unavailable)?;
            let stored =
                idempotency::find(&mut conn, key.as_str(), &fingerprint, IDEMPOTENCY_RETENTION)
                    .await?
                    .ok_or(CreateTransactionError::IdempotencyKeyReused)?;
            return replay(stored);
        }
    }
    tx.commit().await?;

    if key.is_some() {
        purge_expired_keys(pool).await;
    }
    Ok(Created::Accepted(accepted))
}

/// The party a foreign key violation of the `transactions` insert names.
fn unknown_party(error: &sqlx::Error) -> Option<Party> {
    let db = error.as_database_error()?;
    if db.code().as_deref() != Some("23503") {
        return None;
    }
    match db.constraint()? {
        "transactions_from_user_id_fkey" => Some(Party::From),
        "transactions_to_user_id_fkey" => Some(Party::To),
        _ => None,
    }
}

/// Every party of `new` without an account, on a connection of its own (the refused
/// transaction is gone). `named` (the party the refusal named) when an account opened
/// in between.
async fn missing_parties(
    pool: &PgPool,
    new: &NewTransaction,
    named: Party,
) -> Result<Vec<Party>, CreateTransactionError> {
    let parties: Vec<(Party, Uuid)> = new
        .from_user_id
        .map(|id| (Party::From, id))
        .into_iter()
        .chain([(Party::To, new.to_user_id)])
        .collect();
    let ids: Vec<Uuid> = parties.iter().map(|(_, id)| *id).collect();
    let mut conn = pool.acquire().await.map_err(StoreError::unavailable)?;
    let existing = accounts::existing(&mut conn, &ids).await?;
    let missing: Vec<Party> = parties
        .iter()
        .filter(|(_, id)| !existing.contains(id))
        .map(|(party, _)| *party)
        .collect();
    Ok(if missing.is_empty() {
        vec![named]
    } else {
        missing
    })
}

fn replay(stored: idempotency::Stored) -> Result<Created, CreateTransactionError> {
    if stored.same_request {
        Ok(Created::Replayed {
            status: stored.response_status,
            body: stored.response_body,
        })
    } else {
        Err(CreateTransactionError::IdempotencyKeyReused)
    }
}

/// Best effort: the request already succeeded, a failed purge only delays cleanup.
async fn purge_expired_keys(pool: &PgPool) {
    let result = async {
        let mut conn = pool.acquire().await?;
        idempotency::purge_expired(&mut conn, IDEMPOTENCY_RETENTION, PURGE_BATCH).await
    }
    .await;
    match result {
        Ok(0) => {}
        Ok(purged) => tracing::debug!(purged, "purged expired idempotency keys"),
        Err(error) => tracing::warn!(error = %error, "could not purge expired idempotency keys"),
    }
}
