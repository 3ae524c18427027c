//! The events this service emits: their type names and payloads.
//!
//! They go to the outbox with aggregate type [`USER_AGGREGATE`] and the user id as
//! aggregate id; relay-cdc publishes them to `outbox.event.user` with the event id and
//! type in the record headers.

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

/// The aggregate type of every event this service emits.
pub const USER_AGGREGATE: &str = "user";

/// A user signed up. transaction-service opens the user's account from it.
pub const USER_CREATED: &str = "UserCreated";

/// The payload of `UserCreated`. It carries no password material (tests/api/create_user.rs
/// reads it back from the outbox).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UserCreated<'a> {
    pub id: Uuid,
    pub email: &'a str,
    pub created_at: DateTime<Utc>,
}
