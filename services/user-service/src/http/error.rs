//! How this service's use-case errors become [`ApiError`] answers.

use super::ApiError;
use crate::app::{CreateUserError, GetUserError};

impl From<CreateUserError> for ApiError {
    fn from(err: CreateUserError) -> Self {
        match err {
            CreateUserError::EmailTaken => Self::Conflict {
                message: "email is already registered".into(),
                errors: [("email".into(), "is already registered".into())].into(),
            },
            CreateUserError::Store(store) => store.into(),
            CreateUserError::Hashing(_)
            | CreateUserError::Payload(_)
            | CreateUserError::Event(_) => Self::Internal(err.into()),
        }
    }
}

impl From<GetUserError> for ApiError {
    fn from(err: GetUserError) -> Self {
        match err {
            GetUserError::NotFound => Self::NotFound("user not found".into()),
            GetUserError::Store(store) => store.into(),
        }
    }
}
