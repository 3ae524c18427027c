//! Pure types and rules of the user domain: what a valid email and password are, what
//! a user is, and the events. Nothing here touches the database, HTTP or the clock.

pub mod email;
pub mod events;
pub mod password;
mod user;

pub use email::{Email, EmailError};
pub use password::{Password, PasswordError, PasswordHash};
pub use user::User;
