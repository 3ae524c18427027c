//! A transaction's states and the rules a new one must satisfy.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;
use uuid::Uuid;

use super::Amount;

/// Where a transaction is in its life: created `PENDING` over HTTP, then settled once,
/// from its `TransactionCreated` event, to `COMPLETED` or `FAILED`. Never back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TransactionStatus {
    Pending,
    Completed,
    Failed,
}

impl TransactionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Completed => "COMPLETED",
            Self::Failed => "FAILED",
        }
    }
}

impl fmt::Display for TransactionStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A status text that is none of the three.
#[derive(Debug, thiserror::Error)]
#[error("unknown transaction status {0:?}")]
pub struct UnknownStatus(pub String);

impl FromStr for TransactionStatus {
    type Err = UnknownStatus;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "PENDING" => Ok(Self::Pending),
            "COMPLETED" => Ok(Self::Completed),
            "FAILED" => Ok(Self::Failed),
            other => Err(UnknownStatus(other.to_string())),
        }
    }
}

/// Why settlement failed a transaction; stored in `failure_reason` and sent in
/// `TransactionFailed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureReason {
    /// The sender's balance was below the amount when the transaction was settled.
    InsufficientFunds,
}

impl FailureReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InsufficientFunds => "INSUFFICIENT_FUNDS",
        }
    }
}

/// A free-text description of at most [`Description::MAX_CHARS`] characters, without
/// NUL (PostgreSQL's `text` cannot hold U+0000).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Description(String);

/// Why a text is not a [`Description`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DescriptionError {
    #[error("must be at most 255 characters")]
    TooLong,
    #[error("must not contain NUL characters")]
    Nul,
}

impl Description {
    pub const MAX_CHARS: usize = 255;

    /// Accepts any text of at most 255 characters (Unicode scalar values, not bytes)
    /// but NUL.
    pub fn parse(text: String) -> Result<Self, DescriptionError> {
        if text.chars().count() > Self::MAX_CHARS {
            Err(DescriptionError::TooLong)
        } else if text.contains('\0') {
            Err(DescriptionError::Nul)
        } else {
            Ok(Self(text))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A request to move money, validated: a positive exact amount, and a sender that is
/// not the receiver. No sender means a deposit from outside the system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTransaction {
    pub amount: Amount,
    pub from_user_id: Option<Uuid>,
    pub to_user_id: Uuid,
    pub description: Option<Description>,
}

/// A transfer whose sender is its receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("must differ from fromUserId")]
pub struct SameAccount;

impl NewTransaction {
    pub fn new(
        amount: Amount,
        from_user_id: Option<Uuid>,
        to_user_id: Uuid,
        description: Option<Description>,
    ) -> Result<Self, SameAccount> {
        if from_user_id == Some(to_user_id) {
            return Err(SameAccount);
        }
        Ok(Self {
            amount,
            from_user_id,
            to_user_id,
            description,
        })
    }

    /// Whether this is a deposit from outside the system (no sender).
    pub fn is_deposit(&self) -> bool {
        self.from_user_id.is_none()
    }

    /// A canonical text of the request: equal for requests that mean the same thing
    /// (`100` and `100.00`, any key order or whitespace), different otherwise. The
    /// idempotency check compares requests by it.
    pub fn fingerprint(&self) -> String {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Canonical<'a> {
            amount: Amount,
            from_user_id: Option<Uuid>,
            to_user_id: Uuid,
            description: Option<&'a str>,
        }
        let canonical = Canonical {
            amount: self.amount,
            from_user_id: self.from_user_id,
            to_user_id: self.to_user_id,
            description: self.description.as_ref().map(Description::as_str),
        };
        serde_json::to_string(&canonical).expect("a struct of strings serialises")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptions_are_limited_to_255_characters_not_bytes() {
        assert!(Description::parse("é".repeat(255)).is_ok());
        assert_eq!(
            Description::parse("x".repeat(256)),
            Err(DescriptionError::TooLong)
        );
    }

    #[test]
    fn descriptions_cannot_hold_nul_which_postgresql_text_cannot_store() {
        assert_eq!(
            Description::parse("a\0b".into()),
            Err(DescriptionError::Nul)
        );
        assert!(Description::parse("a\u{1}b\u{7f}\u{fffd}".into()).is_ok());
    }

    #[test]
    fn a_transfer_to_oneself_is_rejected() {
        let user = Uuid::now_v7();
        let amount = Amount::parse("1").unwrap();
        assert_eq!(
            NewTransaction::new(amount, Some(user), user, None),
            Err(SameAccount)
        );
        assert!(NewTransaction::new(amount, None, user, None)
            .unwrap()
            .is_deposit());
    }

    #[test]
    fn equivalent_requests_have_the_same_fingerprint() {
        let to = Uuid::now_v7();
        let a = NewTransaction::new(Amount::parse("100").unwrap(), None, to, None).unwrap();
        let b = NewTransaction::new(Amount::parse("100.00").unwrap(), None, to, None).unwrap();
        let c = NewTransaction::new(Amount::parse("100.01").unwrap(), None, to, None).unwrap();
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_ne!(a.fingerprint(), c.fingerprint());
    }

    #[test]
    fn statuses_round_trip_through_text() {
        for s in [
            TransactionStatus::Pending,
            TransactionStatus::Completed,
            TransactionStatus::Failed,
        ] {
            assert_eq!(s.as_str().parse::<TransactionStatus>().unwrap(), s);
        }
        assert!("DONE".parse::<TransactionStatus>().is_err());
    }
}
