//! The events this service consumes and emits: their type names and payloads.
//!
//! Emitted events go to the outbox with aggregate type [`TRANSACTION_AGGREGATE`] and
//! the transaction id as aggregate id; relay-cdc publishes them to
//! `outbox.event.transaction` with the event id and type in the record headers.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{Amount, TransactionStatus};

/// The aggregate type of every event this service emits.
pub const TRANSACTION_AGGREGATE: &str = "transaction";

/// user-service: a user signed up. Opens the user's account here.
pub const USER_CREATED: &str = "UserCreated";
/// A transaction was accepted `PENDING`. Consumed by this service to settle it.
pub const TRANSACTION_CREATED: &str = "TransactionCreated";
/// A transaction was settled and the money moved.
pub const TRANSACTION_COMPLETED: &str = "TransactionCompleted";
/// A transaction was settled without moving money; the payload says why.
pub const TRANSACTION_FAILED: &str = "TransactionFailed";

/// The payload of `UserCreated`; only the id matters here, other fields are ignored.
#[derive(Debug, Clone, Deserialize)]
pub struct UserCreated {
    pub id: Uuid,
}

/// The payload of `TransactionCreated`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TransactionCreated {
    pub transaction_id: Uuid,
    /// Decimal string with two fraction digits, e.g. `"100.00"`.
    pub amount: Amount,
    /// `null` for a deposit from outside the system.
    pub from_user_id: Option<Uuid>,
    pub to_user_id: Uuid,
    pub description: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// The payload of `TransactionCompleted` and `TransactionFailed`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TransactionSettled {
    pub transaction_id: Uuid,
    pub status: TransactionStatus,
    pub amount: Amount,
    pub from_user_id: Option<Uuid>,
    pub to_user_id: Uuid,
    /// Only on `TransactionFailed`, e.g. `INSUFFICIENT_FUNDS`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_reason: Option<&'static str>,
    pub settled_at: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transaction_created_carries_the_amount_as_a_decimal_string() {
        let event = TransactionCreated {
            transaction_id: Uuid::nil(),
            amount: Amount::parse("100").unwrap(),
            from_user_id: None,
            to_user_id: Uuid::nil(),
            description: Some("rent".into()),
            created_at: DateTime::UNIX_EPOCH,
        };
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(json["amount"], "100.00");
        assert_eq!(json["fromUserId"], serde_json::Value::Null);
        assert_eq!(json["createdAt"], "1970-01-01T00:00:00Z");
        let back: TransactionCreated = serde_json::from_value(json).unwrap();
        assert_eq!(back, event);
    }

    #[test]
    fn only_failed_settlements_carry_a_failure_reason() {
        let mut event = TransactionSettled {
            transaction_id: Uuid::nil(),
            status: TransactionStatus::Completed,
            amount: Amount::parse("1").unwrap(),
            from_user_id: Some(Uuid::nil()),
            to_user_id: Uuid::max(),
            failure_reason: None,
            settled_at: DateTime::UNIX_EPOCH,
        };
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(json["status"], "COMPLETED");
        assert!(json.get("failureReason").is_none());
        event.status = TransactionStatus::Failed;
        event.failure_reason = Some("INSUFFICIENT_FUNDS");
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(json["failureReason"], "INSUFFICIENT_FUNDS");
    }

    #[test]
    fn user_created_ignores_fields_it_does_not_need() {
        let e: UserCreated = serde_json::from_str(
            r#"{"id":"0195f1c2-7a55-7bd0-9c1e-6a0b1e9c8f11","email":"a@b.c","createdAt":"x"}"#,
        )
        .unwrap();
        assert_eq!(e.id.to_string(), "0195f1c2-7a55-7bd0-9c1e-6a0b1e9c8f11");
    }
}
