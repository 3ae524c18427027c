//! Use cases, one file each. A use case owns its database transaction: it decides
//! what commits together.

pub mod create_user;
pub mod get_user;
pub mod hashing;

pub use create_user::{CreateUserError, NewUser};
pub use get_user::GetUserError;
pub use hashing::{HashError, PasswordHasher};
