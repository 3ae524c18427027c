//! Ids in paths and bodies.

use axum::extract::rejection::PathRejection;
use axum::extract::Path;
use utoipa::openapi::schema::{ObjectBuilder, SchemaFormat, Type};
use utoipa::openapi::KnownFormat;
use uuid::Uuid;

use crate::ApiError;

/// What [`parse_uuid`] accepts, as a schema pattern: OpenAPI 3.1's `format: uuid` is
/// an annotation that validators and fuzzers need not check.
pub const UUID_PATTERN: &str =
    "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$";

/// The schema of an id the APIs accept: a string, `format: uuid`, [`UUID_PATTERN`].
pub fn uuid_schema() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Uuid)))
        .pattern(Some(UUID_PATTERN))
}

/// The UUID `text` spells in the hyphenated form (`8-4-4-4-12` hex digits, either
/// case), the one the APIs document (`format: uuid`) and answer with. The braced,
/// `urn:uuid:` and hyphen-less spellings `Uuid::parse_str` also takes are refused, so
/// one id has one spelling in paths, bodies, logs and idempotency fingerprints.
pub fn parse_uuid(text: &str) -> Option<Uuid> {
    // Of the spellings the parser knows, only the hyphenated one has 36 characters.
    if text.len() == 36 {
        Uuid::try_parse(text).ok()
    } else {
        None
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0195f1c2-7a55-7bd0-9c1e-6a0b1e9c8f11";

    #[test]
    fn the_hyphenated_form_parses_in_either_case() {
        let id = parse_uuid(ID).unwrap();
        assert_eq!(id.to_string(), ID);
        assert_eq!(parse_uuid(&ID.to_uppercase()), Some(id));
    }

    #[test]
    fn other_spellings_of_the_same_id_are_refused() {
        let id = Uuid::parse_str(ID).unwrap();
        for other in [
            format!("{{{ID}}}"),
            id.urn().to_string(),
            id.simple().to_string(),
            format!(" {ID}"),
            "0195f1c27-a55-7bd0-9c1e-6a0b1e9c8f11".to_owned(),
            "0195f1c2-7a55-7bd0-9c1e-6a0b1e9c8f1g".to_owned(),
        ] {
            assert_eq!(parse_uuid(&other), None, "{other}");
        }
    }
}
