//! The use cases. Each of `create_transaction` and `apply_events` owns one database
//! transaction from `begin` to `commit`, and every event it emits is written inside
//! that transaction (an outbox row or a transactional logical decoding message, as
//! `OUTBOX_CAPTURE` says); `open_account` and `settle_transaction` are the steps
//! `apply_events` runs on its transaction.

pub mod apply_events;
pub mod create_transaction;
pub mod open_account;
pub mod settle_transaction;
