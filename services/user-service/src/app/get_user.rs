//! Reading one user by id.

use sqlx::PgPool;
use uuid::Uuid;

use crate::domain::User;
use crate::store;

/// Why a user could not be returned.
#[derive(Debug, thiserror::Error)]
pub enum GetUserError {
    #[error("user not found")]
    NotFound,
    #[error("database is unavailable")]
    Unavailable(#[source] sqlx::Error),
    #[error("database error")]
    Database(#[source] sqlx::Error),
}

impl From<sqlx::Error> for GetUserError {
    fn from(err: sqlx::Error) -> Self {
        if store::is_unavailable(&err) {
            Self::Unavailable(err)
        } else {
            Self::Database(err)
        }
    }
}

/// The user with `id`.
pub async fn get_user(pool: &PgPool, id: Uuid) -> Result<User, GetUserError> {
    store::users::find_by_id(pool, id)
        .await?
        .ok_or(GetUserError::NotFound)
}
