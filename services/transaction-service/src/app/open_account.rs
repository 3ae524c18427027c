//! Open accounts: the effect of `UserCreated` events, a step of
//! [`apply_events`](super::apply_events) on its transaction.

use std::collections::HashSet;

use sqlx::PgConnection;
use uuid::Uuid;

use crate::store::{accounts, StoreError};

/// What one `UserCreated` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opened {
    /// A zero-balance account was opened.
    Now,
    /// The account existed already (e.g. the same user announced by another event id,
    /// or earlier in the same batch).
    Already,
}

/// Opens a zero-balance account for each of `user_ids`, in order: the first event
/// naming a new user opens it, any later one finds it open.
pub async fn open_all(
    conn: &mut PgConnection,
    user_ids: &[Uuid],
) -> Result<Vec<Opened>, StoreError> {
    if user_ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut new: HashSet<Uuid> = accounts::open_all(conn, user_ids)
        .await?
        .into_iter()
        .collect();
    Ok(user_ids
        .iter()
        .map(|id| {
            if new.remove(id) {
                Opened::Now
            } else {
                Opened::Already
            }
        })
        .collect())
}
