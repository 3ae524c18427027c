//! Answers several operations share, for their `#[utoipa::path(responses(...))]`: the
//! document then says the same thing wherever the code does the same thing.

#![allow(dead_code)] // The variants are never built: they describe answers.

use utoipa::IntoResponses;

use crate::{ErrorBody, Message};

/// The answers to a JSON body [`crate::JsonBody`] refuses, or whose fields fail
/// validation.
#[derive(IntoResponses)]
pub enum JsonBodyErrors {
    /// Malformed JSON, a body that is not an object, a key given twice, or fields that
    /// fail validation; `errors` names the keys and fields at fault.
    #[response(status = 400)]
    Invalid(ErrorBody),
    /// The body is larger than 16384 bytes.
    #[response(status = 413)]
    TooLarge(ErrorBody),
    /// The content type is not `application/json`.
    #[response(status = 415)]
    NotJson(ErrorBody),
}

/// The answers to a read by id ([`crate::path_uuid`]).
#[derive(IntoResponses)]
pub enum ByIdErrors {
    /// The id is not a hyphenated UUID; `errors` names the parameter.
    #[response(status = 400)]
    Malformed(ErrorBody),
    /// Nothing has this id.
    #[response(status = 404)]
    Unknown(ErrorBody),
}

/// The answers of every operation that uses the database when it fails.
#[derive(IntoResponses)]
pub enum ServerErrors {
    /// Unexpected failure; nothing was written.
    #[response(status = 500)]
    Internal(ErrorBody),
    /// The database cannot be reached; retry later.
    #[response(
        status = 503,
        headers(("Retry-After" = u64, description = "Seconds to wait."))
    )]
    Unavailable(ErrorBody),
}

/// The answers of `/readyz` ([`crate::readiness`]).
#[derive(IntoResponses)]
pub enum Readiness {
    /// Ready.
    #[response(status = 200)]
    Ready(Message),
    /// Not ready; `errors` names each dependency that is not (`database`, `kafka`).
    #[response(status = 503)]
    NotReady(ErrorBody),
}
