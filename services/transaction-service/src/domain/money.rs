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

    /// Parses decimal text in JSON number syntax: `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`.
    ///
    /// The value is computed from the digits exactly; trailing fraction zeros do not
    /// count as fraction digits (`1.500` is `1.50`), and an exponent is honoured (`1e2`
    /// is `100.00`, `1e-3` has three fraction digits and is rejected).
    pub fn parse(text: &str) -> Result<Self, AmountError> {
        let number = DecimalText::parse(text).ok_or(AmountError::NotANumber)?;
        let digits = number.digits.trim_start_matches('0');
        if digits.is_empty() || number.negative {
            return Err(AmountError::NotPositive);
        }
        // value = digits × 10^-scale; trailing zeros of the digits lower the scale.
        let significant = digits.trim_end_matches('0');
        let scale = number.scale - (digits.len() - significant.len()) as i64;
        if scale > i64::from(SCALE) {
            return Err(AmountError::TooPrecise);
        }
        // The value in minor units is significant × 10^(2 - scale): it has
        // significant.len() + (2 - scale) digits, and the limit has 12.
        let shift = i64::from(SCALE) - scale;
        if significant.len() as i64 + shift > 12 {
            return Err(AmountError::TooLarge);
        }
        let mut minor: i64 = significant.parse().map_err(|_| AmountError::TooLarge)?;
        for _ in 0..shift {
            minor *= 10;
        }
        Self::from_minor(minor)
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

/// A number's text split into sign, digits and the position of the decimal point.
struct DecimalText<'a> {
    negative: bool,
    /// Integer and fraction digits concatenated (owned only when both are present).
    digits: std::borrow::Cow<'a, str>,
    /// value = digits × 10^-scale.
    scale: i64,
}

impl<'a> DecimalText<'a> {
    fn parse(text: &'a str) -> Option<Self> {
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
        if !all_digits(int) || (int.len() > 1 && int.starts_with('0')) {
            return None;
        }
        let frac = match frac {
            Some(frac) if !all_digits(frac) => return None,
            Some(frac) => frac,
            None => "",
        };
        let exponent = match exponent {
            None => 0,
            Some(e) => {
                let unsigned = e.strip_prefix(['+', '-']).unwrap_or(e);
                if !all_digits(unsigned) {
                    return None;
                }
                // Anything beyond a few digits is far outside every limit; clamp it.
                let magnitude: i64 = unsigned
                    .parse()
                    .unwrap_or(i64::from(u16::MAX))
                    .min(i64::from(u16::MAX));
                if e.starts_with('-') {
                    -magnitude
                } else {
                    magnitude
                }
            }
        };
        let digits = if frac.is_empty() {
            std::borrow::Cow::Borrowed(int)
        } else {
            std::borrow::Cow::Owned(format!("{int}{frac}"))
        };
        Some(Self {
            negative,
            digits,
            scale: frac.len() as i64 - exponent,
        })
    }
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
    fn trailing_fraction_zeros_do_not_count_as_precision() {
        assert_eq!(minor("1.500"), Ok(150));
        assert_eq!(minor("2.000000000000000000000"), Ok(200));
    }

    #[test]
    fn exponents_are_applied_exactly() {
        assert_eq!(minor("1e2"), Ok(10_000));
        assert_eq!(minor("1E+2"), Ok(10_000));
        assert_eq!(minor("12.5e-1"), Ok(125));
        assert_eq!(minor("5e-2"), Ok(5));
        assert_eq!(minor("1e-3"), Err(AmountError::TooPrecise));
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
        assert_eq!(minor("0e999999999999"), Err(AmountError::NotPositive));
    }

    #[test]
    fn amounts_from_one_billion_up_are_too_large() {
        assert_eq!(minor("1000000000"), Err(AmountError::TooLarge));
        assert_eq!(minor("1e9"), Err(AmountError::TooLarge));
        assert_eq!(minor("1e400"), Err(AmountError::TooLarge));
        assert_eq!(
            minor("123456789012345678901234567890"),
            Err(AmountError::TooLarge)
        );
    }

    #[test]
    fn text_that_is_not_json_number_syntax_is_rejected() {
        for bad in [
            "", "-", "+1", "01", "1.", ".5", "1e", "1e+", "abc", "1,5", " 1", "1 ", "0x10", "NaN",
            "1.2.3",
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
