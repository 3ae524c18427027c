//! A registered user as the rest of the service sees it: no password material.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::Email;

/// A user account. The password hash is deliberately not part of it: it is written
/// once at sign-up and never read back into the service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: Uuid,
    pub email: Email,
    pub created_at: DateTime<Utc>,
}
