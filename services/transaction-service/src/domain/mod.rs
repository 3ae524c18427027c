//! Pure types and rules of the ledger: money, transaction states, request validation,
//! idempotency keys and the event payloads. No database or HTTP types live here.

pub mod events;
pub mod idempotency;
pub mod money;
pub mod transaction;

pub use idempotency::IdempotencyKey;
pub use money::{Amount, AmountError};
pub use transaction::{Description, FailureReason, NewTransaction, TransactionStatus};
