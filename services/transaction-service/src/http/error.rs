//! How this service's use-case errors become [`ApiError`] answers.

use super::{ApiError, FieldErrors};
use crate::app::create_transaction::{CreateTransactionError, Party};

impl From<CreateTransactionError> for ApiError {
    fn from(error: CreateTransactionError) -> Self {
        match error {
            CreateTransactionError::UnknownAccounts(parties) => Self::Unprocessable {
                message: "unknown account".into(),
                errors: parties
                    .into_iter()
                    .map(|party| {
                        let field = match party {
                            Party::From => "fromUserId",
                            Party::To => "toUserId",
                        };
                        (field.into(), "no account exists for this user".into())
                    })
                    .collect(),
            },
            CreateTransactionError::IdempotencyKeyReused => Self::Unprocessable {
                message: "this Idempotency-Key was already used for a different request".into(),
                errors: FieldErrors::from([(
                    "Idempotency-Key".into(),
                    "already used for a different request".into(),
                )]),
            },
            CreateTransactionError::Store(e) => e.into(),
        }
    }
}
