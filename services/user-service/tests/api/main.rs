//! Integration tests: the service over HTTP against real PostgreSQL, each test on a
//! database of its own (see `helpers`).

mod availability;
mod create_user;
mod errors;
mod get_user;
mod helpers;
mod observability;
mod openapi;
mod process;
