//! user-service: registers users and records a `UserCreated` event in the transactional
//! outbox in the same PostgreSQL transaction.
//!
//! - [`domain`]: email, password, user, event payloads (pure).
//! - [`app`]: the use cases, each owning its database transaction.
//! - [`store`]: SQL as free functions.
//! - [`http`]: routes, handlers, DTOs, the mapping of errors to answers.
//! - [`config`]: settings from the environment.
//! - [`startup`]: wiring and graceful shutdown; `main` only calls it.

pub mod app;
pub mod config;
pub mod domain;
pub mod http;
pub mod metrics;
pub mod startup;
pub mod store;

pub use startup::Application;
