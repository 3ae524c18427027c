//! Integration tests against the real PostgreSQL and Apache Kafka of the local stack
//! (`scripts/stack up`). Each test runs its own service on its own database, topics
//! and consumer group.

mod binary;
mod consumer;
mod errors;
mod health;
mod helpers;
mod idempotency;
mod message_capture;
mod openapi;
mod outage;
mod outbox_schema;
mod settlement;
mod stall;
mod trace;
