//! Pure types and rules of the ledger: money, transaction states, request validation,
//! idempotency keys, the event payloads and the settlement rule. No database or HTTP
//! types live here.

pub mod events;
pub mod idempotency;
pub mod money;
pub mod settlement;
pub mod transaction;

pub use idempotency::IdempotencyKey;
pub use money::{Amount, AmountError};
pub use settlement::{Ledger, Settlement, UnknownAccount};
pub use transaction::{Description, FailureReason, NewTransaction, TransactionStatus};
