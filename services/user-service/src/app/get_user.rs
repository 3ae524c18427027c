//! Reading one user by id.

use sqlx::PgPool;
use uuid::Uuid;

use crate::domain::User;
use crate::store::{self, StoreError};

/// Why a user could not be returned.
#[derive(Debug, thiserror::Error)]
pub enum GetUserError {
    #[error("user not found")]
    NotFound,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The user with `id`.
pub async fn execute(pool: &PgPool, id: Uuid) -> Result<User, GetUserError> {
    store::users::find_by_id(pool, id)
        .await
        .map_err(StoreError::from)?
        .ok_or(GetUserError::NotFound)
}
