//! relay-cdc: publishes every committed outbox insert of each source database to Kafka,
//! in commit order, and confirms the replication slot only after Kafka acked it.

pub mod admin;
pub mod commands;
pub mod config;
pub mod format;
pub mod import;
pub mod marker;
pub mod metrics;
pub mod pgoutput;
pub mod pipeline;
pub mod sink;
pub mod source;
pub mod status;
pub mod tls;
