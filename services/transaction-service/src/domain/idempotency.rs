//! [`IdempotencyKey`]: the client's name for one logical request.

/// The value of an `Idempotency-Key` header: 1 to 255 visible ASCII characters.
///
/// Within the retention period (at least 24 hours) a key names exactly one request:
/// replaying it returns the first response; reusing it for another request is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey(String);

/// A header value that is not a valid key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("must be 1 to 255 visible ASCII characters")]
pub struct InvalidIdempotencyKey;

impl IdempotencyKey {
    pub const MAX_LEN: usize = 255;

    pub fn parse(value: &str) -> Result<Self, InvalidIdempotencyKey> {
        let valid = !value.is_empty()
            && value.len() <= Self::MAX_LEN
            && value.bytes().all(|b| b.is_ascii_graphic());
        if valid {
            Ok(Self(value.to_string()))
        } else {
            Err(InvalidIdempotencyKey)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_and_tokens_are_valid_keys() {
        assert!(IdempotencyKey::parse("0195f1c2-7a55-7bd0-9c1e-6a0b1e9c8f11").is_ok());
        assert!(IdempotencyKey::parse("order-42/attempt:1").is_ok());
    }

    #[test]
    fn empty_long_or_spaced_keys_are_invalid() {
        assert!(IdempotencyKey::parse("").is_err());
        assert!(IdempotencyKey::parse(&"k".repeat(256)).is_err());
        assert!(IdempotencyKey::parse("a b").is_err());
        assert!(IdempotencyKey::parse("ключ").is_err());
    }
}
