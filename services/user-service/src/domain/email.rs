//! The email address a user signs up with, normalised so that one mailbox has one spelling.

use std::fmt;

/// The longest address accepted, in characters (RFC 5321's path limit minus the brackets).
pub const MAX_LEN: usize = 254;
/// The longest local part (before the `@`) RFC 5321 allows.
const MAX_LOCAL_LEN: usize = 64;
/// The longest DNS label.
const MAX_LABEL_LEN: usize = 63;

/// A syntactically valid email address, trimmed and lower-cased.
///
/// Invariant: two inputs that differ only in surrounding whitespace or letter case parse
/// to equal values, so the stored value is the uniqueness key. Only ASCII addresses are
/// accepted, which keeps Rust's lower-casing and PostgreSQL's `lower()` in agreement.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Email(String);

/// Why an input is not an acceptable email address; the `Display` text is shown to clients.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EmailError {
    #[error("must not be empty")]
    Empty,
    #[error("must be at most 254 characters")]
    TooLong,
    #[error("must be a valid email address")]
    Invalid,
}

impl Email {
    /// Trims and lower-cases `input`, then checks it is a plain `local@domain` address:
    /// one `@`, a dot-atom local part of at most 64 characters, and a domain of at
    /// least two DNS labels whose last one is not numeric.
    pub fn parse(input: &str) -> Result<Self, EmailError> {
        let trimmed = input.trim();
        if trimmed.is_empty() {
            return Err(EmailError::Empty);
        }
        if trimmed.chars().count() > MAX_LEN {
            return Err(EmailError::TooLong);
        }
        if !trimmed.is_ascii() {
            return Err(EmailError::Invalid);
        }
        let normalised = trimmed.to_ascii_lowercase();
        let (local, domain) = normalised.split_once('@').ok_or(EmailError::Invalid)?;
        if !is_valid_local_part(local) || !is_valid_domain(domain) {
            return Err(EmailError::Invalid);
        }
        Ok(Self(normalised))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Rebuilds an email read back from storage, where it was stored after [`Email::parse`].
    pub fn from_trusted(stored: String) -> Self {
        Self(stored)
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for Email {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// RFC 5322 dot-atom: atext runs separated by single dots.
fn is_valid_local_part(local: &str) -> bool {
    const SPECIALS: &[u8] = b"!#$%&'*+/=?^_`{|}~-";
    !local.is_empty()
        && local.len() <= MAX_LOCAL_LEN
        && local.split('.').all(|atom| {
            !atom.is_empty()
                && atom
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || SPECIALS.contains(&b))
        })
}

/// A host name of two or more LDH labels; no IP literals.
fn is_valid_domain(domain: &str) -> bool {
    let labels: Vec<&str> = domain.split('.').collect();
    labels.len() >= 2
        && labels.iter().all(|label| {
            !label.is_empty()
                && label.len() <= MAX_LABEL_LEN
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
        && labels
            .last()
            .is_some_and(|tld| !tld.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_address_is_accepted_as_is() {
        assert_eq!(
            Email::parse("ada@example.com").unwrap().as_str(),
            "ada@example.com"
        );
    }

    #[test]
    fn surrounding_whitespace_and_case_are_normalised_away() {
        let a = Email::parse("  Ada.Lovelace@Example.COM\t").unwrap();
        let b = Email::parse("ada.lovelace@example.com").unwrap();
        assert_eq!(a, b);
        assert_eq!(a.as_str(), "ada.lovelace@example.com");
    }

    #[test]
    fn common_local_part_characters_are_accepted() {
        for ok in [
            "first.last+tag@example.co.uk",
            "o'brien@example.ie",
            "x_y-z@sub-domain.example.org",
            "1234@example.com",
        ] {
            assert!(Email::parse(ok).is_ok(), "{ok} should be valid");
        }
    }

    #[test]
    fn empty_and_blank_inputs_are_empty() {
        assert_eq!(Email::parse(""), Err(EmailError::Empty));
        assert_eq!(Email::parse("   "), Err(EmailError::Empty));
    }

    #[test]
    fn malformed_addresses_are_invalid() {
        for bad in [
            "plainaddress",
            "@example.com",
            "ada@",
            "ada@@example.com",
            "ada@example@com",
            "ada@localhost",
            "ada@example..com",
            "ada@.example.com",
            "ada@example.com.",
            "ada@-example.com",
            "ada@example-.com",
            ".ada@example.com",
            "ada.@example.com",
            "ad..a@example.com",
            "ad a@example.com",
            "ada@exa mple.com",
            "ada@example.123",
            "ada@[127.0.0.1]",
            "\"ada\"@example.com",
            "adé@example.com",
        ] {
            assert_eq!(Email::parse(bad), Err(EmailError::Invalid), "{bad:?}");
        }
    }

    #[test]
    fn a_local_part_longer_than_64_characters_is_invalid() {
        let local = "a".repeat(65);
        assert_eq!(
            Email::parse(&format!("{local}@example.com")),
            Err(EmailError::Invalid)
        );
        assert!(Email::parse(&format!("{}@example.com", "a".repeat(64))).is_ok());
    }

    #[test]
    fn an_address_of_254_characters_is_accepted_and_255_is_too_long() {
        let domain = format!(
            "{}.{}.{}.com",
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(57)
        );
        let at_limit = format!("{}@{domain}", "a".repeat(MAX_LEN - 1 - domain.len()));
        assert_eq!(at_limit.len(), MAX_LEN);
        assert!(Email::parse(&at_limit).is_ok());

        let over = format!("a{at_limit}");
        assert_eq!(Email::parse(&over), Err(EmailError::TooLong));
    }

    #[test]
    fn length_is_checked_after_trimming() {
        let domain = format!(
            "{}.{}.{}.com",
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(57)
        );
        let at_limit = format!("{}@{domain}", "a".repeat(MAX_LEN - 1 - domain.len()));
        assert!(Email::parse(&format!("   {at_limit}   ")).is_ok());
    }
}
