//! Open an account: the effect of a `UserCreated` event.

use sqlx::PgPool;
use uuid::Uuid;

use crate::domain::events::USER_CREATED;
use crate::store::{accounts, inbox, StoreError};

/// What consuming one `UserCreated` event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A zero-balance account was opened.
    Opened,
    /// The account existed already (e.g. the same user announced by another event id).
    AlreadyOpen,
    /// This event id was consumed before; nothing changed.
    Duplicate,
}

/// Opens a zero-balance account for `user_id`, recording `event_id` in the inbox in the
/// same transaction so a redelivery of the event changes nothing.
pub async fn execute(pool: &PgPool, event_id: Uuid, user_id: Uuid) -> Result<Outcome, StoreError> {
    let mut tx = pool.begin().await.map_err(StoreError::unavailable)?;
    if !inbox::record(&mut tx, event_id, USER_CREATED).await? {
        return Ok(Outcome::Duplicate);
    }
    let opened = accounts::open(&mut tx, user_id).await?;
    tx.commit().await?;
    Ok(if opened {
        Outcome::Opened
    } else {
        Outcome::AlreadyOpen
    })
}
