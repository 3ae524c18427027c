//! [`JsonBody`]: a JSON request body with the services' error discipline, where axum's
//! `Json` would answer in plain text and let more through:
//!
//! - 415 unless the content type is `application/json` (parameters such as `charset`
//!   allowed, case-insensitive); other `+json` types are not this API's format;
//! - 413 over [`BODY_LIMIT_BYTES`];
//! - 400 for text that is not JSON, a top level that is not an object, or a key that
//!   appears twice in one object (RFC 8259 leaves such bodies' meaning open; serde
//!   would silently keep the last one or refuse in its own words) — the answer names
//!   the key.

use std::cell::RefCell;
use std::collections::HashSet;
use std::fmt;

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderMap, StatusCode};
use serde::de::{self, DeserializeOwned, DeserializeSeed, MapAccess, SeqAccess, Visitor};

use crate::ApiError;

/// Request bodies above this many bytes are refused with 413.
pub const BODY_LIMIT_BYTES: usize = 16 * 1024;

/// A body deserialised from a JSON object.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_json(req.headers()) {
            return Err(ApiError::UnsupportedMediaType);
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge
            } else {
                ApiError::BadRequest("request body could not be read".into())
            }
        })?;
        check(&bytes)?;
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|e| ApiError::BadRequest(format!("request body is invalid: {e}")))
    }
}

/// `application/json`, with any parameters.
fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or("").trim();
    essence.eq_ignore_ascii_case("application/json")
}

/// Reads `bytes` once as JSON: valid syntax, an object at the top, no key twice in
/// any object.
fn check(bytes: &[u8]) -> Result<(), ApiError> {
    let duplicate = RefCell::new(None);
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let top = Walk {
        duplicate: &duplicate,
    }
    .deserialize(&mut deserializer)
    .and_then(|top| deserializer.end().map(|()| top));
    match (top, duplicate.into_inner()) {
        (_, Some(key)) => Err(ApiError::DuplicateKey(key)),
        (Err(e), None) => Err(ApiError::BadRequest(format!(
            "request body is not valid JSON: {e}"
        ))),
        (Ok(Top::Object), None) => Ok(()),
        (Ok(Top::Other), None) => Err(ApiError::BadRequest(
            "request body must be a JSON object".into(),
        )),
    }
}

/// What the top level of a document is.
enum Top {
    Object,
    Other,
}

/// Walks a whole document, keeping nothing, and notes the first key an object repeats.
#[derive(Clone, Copy)]
struct Walk<'a> {
    duplicate: &'a RefCell<Option<String>>,
}

impl<'de> DeserializeSeed<'de> for Walk<'_> {
    type Value = Top;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Top, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Walk<'_> {
    type Value = Top;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Top, A::Error> {
        let mut seen = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if !seen.insert(key.clone()) {
                *self.duplicate.borrow_mut() = Some(key);
                return Err(de::Error::custom("duplicate key"));
            }
            map.next_value_seed(self)?;
        }
        Ok(Top::Object)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Top, A::Error> {
        while seq.next_element_seed(self)?.is_some() {}
        Ok(Top::Other)
    }

    fn visit_bool<E>(self, _: bool) -> Result<Top, E> {
        Ok(Top::Other)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Top, E> {
        Ok(Top::Other)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Top, E> {
        Ok(Top::Other)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Top, E> {
        Ok(Top::Other)
    }

    fn visit_str<E>(self, _: &str) -> Result<Top, E> {
        Ok(Top::Other)
    }

    fn visit_unit<E>(self) -> Result<Top, E> {
        Ok(Top::Other)
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;
    use crate::FieldErrors;

    fn with_type(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn application_json_is_recognised_with_parameters_in_any_case() {
        assert!(is_json(&with_type("application/json")));
        assert!(is_json(&with_type("Application/JSON; charset=utf-8")));
    }

    #[test]
    fn other_json_flavours_and_missing_content_types_are_not_json() {
        assert!(!is_json(&with_type("application/vnd.api+json")));
        assert!(!is_json(&with_type("application/merge-patch+json")));
        assert!(!is_json(&with_type("application/jsonx")));
        assert!(!is_json(&with_type("text/plain")));
        assert!(!is_json(&HeaderMap::new()));
    }

    fn message(body: &str) -> Option<(String, Option<FieldErrors>)> {
        check(body.as_bytes()).err().map(|e| {
            let body = e.body();
            (body.message, body.errors)
        })
    }

    #[test]
    fn a_key_repeated_at_any_depth_is_named() {
        let (msg, errors) = message(r#"{"a": 1, "b": {"c": [1, {"d": 1, "d": 2}]}}"#).unwrap();
        assert_eq!(msg, "request body has a duplicate key: d");
        assert_eq!(errors.unwrap()["d"], "is given more than once");
        let (msg, _) = message(r#"{"email": "a", "email": "b"}"#).unwrap();
        assert_eq!(msg, "request body has a duplicate key: email");
    }

    #[test]
    fn the_same_key_in_sibling_objects_is_fine() {
        assert!(message(r#"{"a": {"k": 1}, "b": {"k": 1}, "c": [{"k": 1}, {"k": 2}]}"#).is_none());
    }

    #[test]
    fn bodies_that_are_not_json_objects_are_refused_plainly() {
        for body in ["[1]", "\"a\"", "42", "null", "true"] {
            let (msg, errors) = message(body).unwrap();
            assert_eq!(msg, "request body must be a JSON object", "{body}");
            assert!(errors.is_none());
        }
        for body in ["{", "{\"a\": 1} x", "", "{\"a\" 1}"] {
            let (msg, _) = message(body).unwrap();
            assert!(
                msg.starts_with("request body is not valid JSON: "),
                "{body}: {msg}"
            );
        }
    }
}
