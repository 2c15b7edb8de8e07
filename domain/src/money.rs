//! Money: integer minor units plus an ISO 4217 currency, with checked arithmetic.
//!
//! There is no float anywhere near money. Amounts are `u64` minor units bounded by
//! [`Money::MAX_MINOR_UNITS`], so sums of many amounts fit in `i128` ledger balances
//! without any chance of overflow.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The currencies the marketplace settles in (one per region: RU, EU, US, CN).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Currency {
    #[serde(rename = "RUB")]
    Rub,
    #[serde(rename = "EUR")]
    Eur,
    #[serde(rename = "USD")]
    Usd,
    #[serde(rename = "CNY")]
    Cny,
}

impl Currency {
    pub const ALL: [Currency; 4] = [Currency::Rub, Currency::Eur, Currency::Usd, Currency::Cny];

    /// The ISO 4217 alphabetic code.
    pub fn code(self) -> &'static str {
        match self {
            Currency::Rub => "RUB",
            Currency::Eur => "EUR",
            Currency::Usd => "USD",
            Currency::Cny => "CNY",
        }
    }

    /// The ISO 4217 numeric code.
    pub fn numeric(self) -> u16 {
        match self {
            Currency::Rub => 643,
            Currency::Eur => 978,
            Currency::Usd => 840,
            Currency::Cny => 156,
        }
    }

    /// Digits after the decimal point (ISO 4217 minor unit). All four use 2.
    pub fn minor_unit_digits(self) -> u32 {
        2
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown currency {0:?}: expected one of RUB, EUR, USD, CNY")]
pub struct UnknownCurrency(pub String);

impl FromStr for Currency {
    type Err = UnknownCurrency;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "RUB" => Ok(Currency::Rub),
            "EUR" => Ok(Currency::Eur),
            "USD" => Ok(Currency::Usd),
            "CNY" => Ok(Currency::Cny),
            other => Err(UnknownCurrency(other.to_owned())),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("currency mismatch: {left} vs {right}")]
    CurrencyMismatch { left: Currency, right: Currency },
    #[error("amount overflow: result above {max} minor units", max = Money::MAX_MINOR_UNITS)]
    Overflow,
    #[error("amount underflow: {minuend} - {subtrahend} is negative")]
    Underflow { minuend: u64, subtrahend: u64 },
}

/// An amount of money. Never negative; never larger than [`Money::MAX_MINOR_UNITS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Money {
    pub minor_units: u64,
    pub currency: Currency,
}

impl Money {
    /// 10^15 minor units (10 trillion units of any currency): far above any real job, far
    /// below `u64::MAX`, so that a million such amounts still sum within `i128` and `u64`.
    pub const MAX_MINOR_UNITS: u64 = 1_000_000_000_000_000;

    /// A checked constructor: amounts above the maximum are refused.
    pub fn new(minor_units: u64, currency: Currency) -> Result<Money, MoneyError> {
        if minor_units > Self::MAX_MINOR_UNITS {
            return Err(MoneyError::Overflow);
        }
        Ok(Money { minor_units, currency })
    }

    pub fn zero(currency: Currency) -> Money {
        Money { minor_units: 0, currency }
    }

    pub fn is_zero(self) -> bool {
        self.minor_units == 0
    }

    fn same_currency(self, other: Money) -> Result<(), MoneyError> {
        if self.currency == other.currency {
            Ok(())
        } else {
            Err(MoneyError::CurrencyMismatch { left: self.currency, right: other.currency })
        }
    }

    pub fn checked_add(self, other: Money) -> Result<Money, MoneyError> {
        self.same_currency(other)?;
        let sum = self.minor_units.checked_add(other.minor_units).ok_or(MoneyError::Overflow)?;
        Money::new(sum, self.currency)
    }

    pub fn checked_sub(self, other: Money) -> Result<Money, MoneyError> {
        self.same_currency(other)?;
        let minor_units = self
            .minor_units
            .checked_sub(other.minor_units)
            .ok_or(MoneyError::Underflow { minuend: self.minor_units, subtrahend: other.minor_units })?;
        Ok(Money { minor_units, currency: self.currency })
    }

    pub fn checked_mul(self, factor: u64) -> Result<Money, MoneyError> {
        let product = self.minor_units.checked_mul(factor).ok_or(MoneyError::Overflow)?;
        Money::new(product, self.currency)
    }

    /// `⌊amount · pct / 100⌋`, exact in integers (`pct` is clamped to 0..=100).
    pub fn percent_floor(self, pct: u8) -> Money {
        let pct = u128::from(pct.min(100));
        let part = u128::from(self.minor_units) * pct / 100;
        // part <= minor_units, so the cast cannot truncate.
        Money { minor_units: part as u64, currency: self.currency }
    }

    /// The slash rule of the seed, kept: `⌊amount · pct / 100⌋`, at least 1 minor unit when
    /// both the amount and the percentage are positive, never more than the amount.
    pub fn slash_amount(self, pct: u8) -> Money {
        if self.minor_units == 0 || pct == 0 {
            return Money::zero(self.currency);
        }
        let part = self.percent_floor(pct);
        Money { minor_units: part.minor_units.max(1), currency: self.currency }
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scale = 10u64.pow(self.currency.minor_unit_digits());
        write!(f, "{}.{:02} {}", self.minor_units / scale, self.minor_units % scale, self.currency)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eur(minor: u64) -> Money {
        Money { minor_units: minor, currency: Currency::Eur }
    }

    #[test]
    fn adding_different_currencies_is_refused() {
        let usd = Money { minor_units: 1, currency: Currency::Usd };
        assert_eq!(
            eur(1).checked_add(usd),
            Err(MoneyError::CurrencyMismatch { left: Currency::Eur, right: Currency::Usd })
        );
    }

    #[test]
    fn subtraction_below_zero_is_refused() {
        assert_eq!(eur(1).checked_sub(eur(2)), Err(MoneyError::Underflow { minuend: 1, subtrahend: 2 }));
        assert_eq!(eur(5).checked_sub(eur(2)), Ok(eur(3)));
    }

    #[test]
    fn amounts_above_the_maximum_are_refused() {
        assert_eq!(Money::new(Money::MAX_MINOR_UNITS + 1, Currency::Rub), Err(MoneyError::Overflow));
        assert_eq!(eur(Money::MAX_MINOR_UNITS).checked_add(eur(1)), Err(MoneyError::Overflow));
        assert_eq!(eur(u64::MAX / 2).checked_mul(3), Err(MoneyError::Overflow));
    }

    #[test]
    fn slash_is_floor_of_percentage_with_a_minimum_of_one() {
        assert_eq!(eur(1000).slash_amount(30), eur(300));
        assert_eq!(eur(1001).slash_amount(30), eur(300));
        assert_eq!(eur(2).slash_amount(30), eur(1));
        assert_eq!(eur(2).slash_amount(0), eur(0));
        assert_eq!(eur(0).slash_amount(30), eur(0));
        assert_eq!(eur(7).slash_amount(100), eur(7));
    }

    #[test]
    fn currency_codes_round_trip() {
        for c in Currency::ALL {
            assert_eq!(c.code().parse::<Currency>(), Ok(c));
        }
        assert!("XBT".parse::<Currency>().is_err());
        assert_eq!(eur(250).to_string(), "2.50 EUR");
    }
}
