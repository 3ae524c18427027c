//! The use cases. Each file owns one database transaction from `begin` to `commit`,
//! and every event it emits is an outbox row inside that transaction.

pub mod create_transaction;
pub mod open_account;
pub mod settle_transaction;
