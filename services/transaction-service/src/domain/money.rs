//! [`Amount`]: an exact, positive sum of money with at most two fraction digits.
//!
//! Amounts are parsed from decimal text (a JSON number's literal text or a decimal
//! string), never from a float: `0.1` is ten cents, not `0.1000000000000000055...`.

use std::fmt;
use std::str::FromStr;

use rust_decimal::Decimal;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Fraction digits of every amount and balance (cents).
pub const SCALE: u32 = 2;

/// A positive amount of money below [`Amount::LIMIT_MAJOR`] whole units, held as an
/// integer number of minor units (cents). Serialised as a decimal string (`"100.00"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Amount {
    minor: i64,
}

/// Why a text is not an [`Amount`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AmountError {
    #[error("must be a decimal number")]
    NotANumber,
    #[error("must be written without an exponent")]
    Exponent,
    #[error("must be greater than 0")]
    NotPositive,
    #[error("must have at most 2 fraction digits")]
    TooPrecise,
    #[error("must be less than 1000000000")]
    TooLarge,
}

impl Amount {
    /// Amounts must be strictly below this many whole units.
    pub const LIMIT_MAJOR: i64 = 1_000_000_000;
    const LIMIT_MINOR: i64 = Self::LIMIT_MAJOR * 100;

    /// The grammar of an amount's text, as the OpenAPI document gives it for the string
    /// form: digits without a superfluous leading zero, then at most two fraction
    /// digits (`0.5`, `12.30`, `100`), greater than zero, less than 10^9. A JSON number
    /// is held to the same text.
    pub const PATTERN: &'static str = r"^(0\.(0[1-9]|[1-9][0-9]?)|[1-9][0-9]{0,8}(\.[0-9]{1,2})?)$";

    /// Parses decimal text: `-?(0|[1-9][0-9]*)(\.[0-9]+)?`, then requires at most two
    /// fraction digits *as written* and a value in (0, 10^9).
    ///
    /// The value is computed from the digits exactly. Trailing fraction zeros count
    /// (`1.500` is refused: the rule is about the text a client sends, so a schema's
    /// pattern can say it), and exponents are refused (`1e2`): JSON serialisers write
    /// amounts in this range without one, and a pattern cannot tell `1e2` from `1e-3`.
    pub fn parse(text: &str) -> Result<Self, AmountError> {
        let (negative, rest) = match text.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let (mantissa, exponent) = match rest.find(['e', 'E']) {
            Some(i) => (&rest[..i], Some(&rest[i + 1..])),
            None => (rest, None),
        };
        let (int, frac) = match mantissa.split_once('.') {
            Some((int, frac)) => (int, Some(frac)),
            None => (mantissa, None),
        };
        let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        let number = all_digits(int)
            && !(int.len() > 1 && int.starts_with('0'))
            && frac.is_none_or(all_digits);
        match exponent {
            _ if !number => return Err(AmountError::NotANumber),
            Some(e) if all_digits(e.strip_prefix(['+', '-']).unwrap_or(e)) => {
                return Err(AmountError::Exponent)
            }
            Some(_) => return Err(AmountError::NotANumber),
            None => {}
        }
        let frac = frac.unwrap_or("");
        if negative || int.bytes().chain(frac.bytes()).all(|b| b == b'0') {
            return Err(AmountError::NotPositive);
        }
        if frac.len() > SCALE as usize {
            return Err(AmountError::TooPrecise);
        }
        // 10^9 has ten integer digits; anything with more is too large, and fewer fit
        // an i64 in cents.
        if int.len() > 10 {
            return Err(AmountError::TooLarge);
        }
        let whole: i64 = int.parse().map_err(|_| AmountError::TooLarge)?;
        let cents: i64 = format!("{frac:0<2}").parse().unwrap_or(0);
        Self::from_minor(whole * 100 + cents)
    }

    /// An amount of `minor` units (cents).
    pub fn from_minor(minor: i64) -> Result<Self, AmountError> {
        if minor <= 0 {
            Err(AmountError::NotPositive)
        } else if minor >= Self::LIMIT_MINOR {
            Err(AmountError::TooLarge)
        } else {
            Ok(Self { minor })
        }
    }

    /// The amount of a stored `NUMERIC(20,2)` value.
    pub fn from_decimal(value: Decimal) -> Result<Self, AmountError> {
        if value.normalize().scale() > SCALE {
            return Err(AmountError::TooPrecise);
        }
        let mut value = value;
        value.rescale(SCALE);
        let minor = i64::try_from(value.mantissa()).map_err(|_| AmountError::TooLarge)?;
        Self::from_minor(minor)
    }

    /// The amount in minor units (cents).
    pub fn minor_units(self) -> i64 {
        self.minor
    }

    /// The amount as an exact decimal with two fraction digits, for `NUMERIC` columns.
    pub fn to_decimal(self) -> Decimal {
        Decimal::new(self.minor, SCALE)
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:02}", self.minor / 100, self.minor % 100)
    }
}

impl FromStr for Amount {
    type Err = AmountError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl Serialize for Amount {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Amount {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// Formats a stored `NUMERIC(20,2)` value (a balance) with exactly two fraction digits.
pub fn format_decimal(value: Decimal) -> String {
    let mut value = value;
    value.rescale(SCALE);
    value.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minor(text: &str) -> Result<i64, AmountError> {
        Amount::parse(text).map(Amount::minor_units)
    }

    #[test]
    fn integers_and_up_to_two_fraction_digits_are_exact() {
        assert_eq!(minor("100"), Ok(10_000));
        assert_eq!(minor("0.1"), Ok(10));
        assert_eq!(minor("0.01"), Ok(1));
        assert_eq!(minor("19.99"), Ok(1_999));
        assert_eq!(minor("999999999.99"), Ok(99_999_999_999));
    }

    #[test]
    fn trailing_fraction_zeros_count_as_written() {
        assert_eq!(minor("1.50"), Ok(150));
        assert_eq!(minor("1.500"), Err(AmountError::TooPrecise));
        assert_eq!(
            minor("2.000000000000000000000"),
            Err(AmountError::TooPrecise)
        );
    }

    #[test]
    fn exponents_are_refused_whatever_their_value() {
        for text in [
            "1e2", "1E+2", "12.5e-1", "5e-2", "1e-3", "0e5", "1e400", "-1e2",
        ] {
            assert_eq!(minor(text), Err(AmountError::Exponent), "{text}");
        }
    }

    #[test]
    fn three_fraction_digits_are_rejected() {
        assert_eq!(minor("1.001"), Err(AmountError::TooPrecise));
        assert_eq!(minor("0.005"), Err(AmountError::TooPrecise));
        // A float would round this to 0.1; the text says otherwise.
        assert_eq!(minor("0.1000000000000000001"), Err(AmountError::TooPrecise));
    }

    #[test]
    fn zero_and_negative_amounts_are_rejected() {
        assert_eq!(minor("0"), Err(AmountError::NotPositive));
        assert_eq!(minor("0.00"), Err(AmountError::NotPositive));
        assert_eq!(minor("-0"), Err(AmountError::NotPositive));
        assert_eq!(minor("-5"), Err(AmountError::NotPositive));
        assert_eq!(minor("-0.001"), Err(AmountError::NotPositive));
    }

    #[test]
    fn amounts_from_one_billion_up_are_too_large() {
        assert_eq!(minor("1000000000"), Err(AmountError::TooLarge));
        assert_eq!(minor("1000000000.00"), Err(AmountError::TooLarge));
        assert_eq!(minor("9999999999.99"), Err(AmountError::TooLarge));
        assert_eq!(
            minor("123456789012345678901234567890"),
            Err(AmountError::TooLarge)
        );
    }

    #[test]
    fn text_that_is_not_json_number_syntax_is_rejected() {
        for bad in [
            "", "-", "+1", "01", "1.", ".5", "1e", "1e+", "abc", "1,5", " 1", "1 ", "0x10", "NaN",
            "1.2.3", "--1", "1e2.5",
        ] {
            assert_eq!(minor(bad), Err(AmountError::NotANumber), "{bad:?}");
        }
    }

    #[test]
    fn amounts_display_with_two_fraction_digits() {
        assert_eq!(Amount::parse("100").unwrap().to_string(), "100.00");
        assert_eq!(Amount::parse("0.5").unwrap().to_string(), "0.50");
        assert_eq!(Amount::parse("12.34").unwrap().to_string(), "12.34");
    }

    #[test]
    fn amounts_round_trip_through_decimal() {
        let a = Amount::parse("1234.5").unwrap();
        assert_eq!(a.to_decimal().to_string(), "1234.50");
        assert_eq!(Amount::from_decimal(a.to_decimal()), Ok(a));
        assert_eq!(
            Amount::from_decimal(Decimal::new(12345, 3)),
            Err(AmountError::TooPrecise)
        );
        assert_eq!(
            Amount::from_decimal(Decimal::new(12340, 3)).map(Amount::minor_units),
            Ok(1234)
        );
    }

    #[test]
    fn balances_format_with_two_fraction_digits() {
        assert_eq!(format_decimal(Decimal::new(0, 0)), "0.00");
        assert_eq!(format_decimal(Decimal::new(15, 1)), "1.50");
    }
}
