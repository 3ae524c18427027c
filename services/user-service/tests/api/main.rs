//! Integration tests: the service over HTTP against real PostgreSQL, each test on a
//! database of its own (see `helpers`).

mod availability;
mod binary;
mod create_user;
mod errors;
mod get_user;
mod health;
mod helpers;
mod message_capture;
mod migrations;
mod openapi;
mod trace;
