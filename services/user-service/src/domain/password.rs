//! The password a user signs up with, and the hash that is stored instead of it.

use std::fmt;

use secrecy::{ExposeSecret, SecretString};

/// Fewest characters a password may have (OWASP ASVS 2.1.1).
pub const MIN_CHARS: usize = 8;
/// Most characters a password may have: long passphrases are welcome, unbounded
/// hashing input is not.
pub const MAX_CHARS: usize = 128;

/// A plain-text password within bounds. Its `Debug` output is redacted; it is never
/// trimmed or otherwise altered, and it leaves this process only as a hash.
#[derive(Debug)]
pub struct Password(SecretString);

/// Why a password is not acceptable; the `Display` text is shown to clients.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PasswordError {
    #[error("must be at least 8 characters")]
    TooShort,
    #[error("must be at most 128 characters")]
    TooLong,
}

impl Password {
    /// Accepts passwords of 8 to 128 characters (Unicode scalar values, not bytes).
    pub fn parse(input: SecretString) -> Result<Self, PasswordError> {
        let chars = input.expose_secret().chars().count();
        if chars < MIN_CHARS {
            Err(PasswordError::TooShort)
        } else if chars > MAX_CHARS {
            Err(PasswordError::TooLong)
        } else {
            Ok(Self(input))
        }
    }

    /// The plain text, for the hasher only.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

/// An argon2id hash in PHC string format. Its `Debug` output is redacted so it cannot
/// reach a log by accident.
pub struct PasswordHash(String);

impl PasswordHash {
    /// Wraps a PHC string produced by the hasher.
    pub fn from_phc(phc: String) -> Self {
        Self(phc)
    }

    /// The PHC string, for storage only.
    pub fn as_phc(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PasswordHash([REDACTED])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Password, PasswordError> {
        Password::parse(SecretString::from(s))
    }

    #[test]
    fn eight_to_128_characters_are_accepted() {
        assert!(parse("12345678").is_ok());
        assert!(parse(&"x".repeat(128)).is_ok());
    }

    #[test]
    fn a_seven_character_password_is_too_short() {
        assert_eq!(parse("1234567").unwrap_err(), PasswordError::TooShort);
        assert_eq!(parse("").unwrap_err(), PasswordError::TooShort);
    }

    #[test]
    fn a_129_character_password_is_too_long() {
        assert_eq!(parse(&"x".repeat(129)).unwrap_err(), PasswordError::TooLong);
    }

    #[test]
    fn length_counts_characters_not_bytes() {
        // Eight characters, 16 bytes.
        assert!(parse("éééééééé").is_ok());
        // 128 characters, 384 bytes.
        assert!(parse(&"€".repeat(128)).is_ok());
    }

    #[test]
    fn whitespace_is_part_of_the_password() {
        assert!(parse("   a    ").is_ok());
        assert_eq!(parse("  abc  ").unwrap_err(), PasswordError::TooShort);
    }

    #[test]
    fn debug_output_never_shows_the_password_or_hash() {
        let p = parse("correct horse battery").unwrap();
        assert!(!format!("{p:?}").contains("horse"));
        let h = PasswordHash::from_phc("$argon2id$v=19$secret".into());
        assert!(!format!("{h:?}").contains("argon2id"));
    }
}
