//! Ids in paths and bodies.

use axum::extract::rejection::PathRejection;
use axum::extract::Path;
use uuid::Uuid;

use crate::ApiError;

/// The UUID `text` spells.
pub fn parse_uuid(text: &str) -> Option<Uuid> {
    Uuid::parse_str(text).ok()
}

/// A path segment that must be a UUID; a 400 naming the parameter `name` otherwise
/// (also when the segment is not even UTF-8).
pub fn path_uuid(
    segment: Result<Path<String>, PathRejection>,
    name: &str,
) -> Result<Uuid, ApiError> {
    segment
        .ok()
        .and_then(|Path(text)| parse_uuid(&text))
        .ok_or_else(|| ApiError::invalid_field(name, "must be a UUID"))
}
