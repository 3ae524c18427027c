//! Extractors whose rejections are [`ApiError`]s, so malformed requests get the envelope.

use axum::extract::FromRequest;

use super::ApiError;

/// `axum::Json` with rejections mapped: wrong content type 415, too large 413,
/// syntax errors and non-object bodies 400.
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct ApiJson<T>(pub T);
