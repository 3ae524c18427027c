//! transaction-service: transfers and deposits between user accounts.
//!
//! `POST /api/v1/transactions` accepts a transaction `PENDING` and writes its
//! `TransactionCreated` event to the outbox in the same database transaction;
//! relay-cdc publishes it; this service consumes it back and settles the transaction
//! (`COMPLETED` or `FAILED`), again with its event in the same database transaction.
//! Accounts open when user-service's `UserCreated` events arrive.
//!
//! - [`domain`]: money, states, validation, event payloads (pure).
//! - [`app`]: the use cases, each owning its database transaction.
//! - [`store`]: SQL as free functions.
//! - [`http`]: routes, handlers, DTOs, the mapping of errors to answers.
//! - [`consumer`]: the Kafka consumer driving `app` from events.
//! - [`config`]: settings from the environment.
//! - [`startup`]: wiring and graceful shutdown; `main` only calls it.

pub mod app;
pub mod config;
pub mod consumer;
pub mod domain;
pub mod http;
pub mod metrics;
pub mod startup;
pub mod store;

pub use startup::Application;
