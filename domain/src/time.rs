//! Time as the domain sees it: absolute instants in unix milliseconds, handed in by the caller.
//!
//! The domain never reads a clock. Every command carries `now` in its context, so tests move
//! time by changing a number and deadlines are stored as absolute instants.

use std::fmt;

use serde::{Deserialize, Serialize};

/// An instant, in milliseconds since the unix epoch (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Timestamp(pub i64);

impl Timestamp {
    pub fn from_unix_secs(secs: i64) -> Timestamp {
        Timestamp(secs.saturating_mul(1000))
    }

    pub fn unix_ms(self) -> i64 {
        self.0
    }

    /// `self + secs`, saturating (deadlines far in the future stay far in the future).
    pub fn plus_secs(self, secs: u64) -> Timestamp {
        let ms = i64::try_from(secs).unwrap_or(i64::MAX).saturating_mul(1000);
        Timestamp(self.0.saturating_add(ms))
    }

    /// The calendar month (UTC) this instant falls in, as `year * 12 + (month - 1)`.
    /// Commission tiers are per client per calendar month.
    pub fn month_index(self) -> i64 {
        let days = self.0.div_euclid(86_400_000);
        let (year, month, _) = civil_from_days(days);
        year * 12 + i64::from(month) - 1
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let days = self.0.div_euclid(86_400_000);
        let ms_of_day = self.0.rem_euclid(86_400_000);
        let (y, m, d) = civil_from_days(days);
        let (h, mi, s, ms) = (ms_of_day / 3_600_000, ms_of_day / 60_000 % 60, ms_of_day / 1000 % 60, ms_of_day % 1000);
        write!(f, "{y:04}-{m:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{ms:03}Z")
    }
}

/// Howard Hinnant's `civil_from_days`: days since 1970-01-01 to (year, month 1..=12, day).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_print_as_rfc3339() {
        assert_eq!(Timestamp(0).to_string(), "1970-01-01T00:00:00.000Z");
        assert_eq!(Timestamp(1_795_651_200_000).to_string(), "2026-11-26T00:00:00.000Z");
    }

    #[test]
    fn month_index_changes_at_midnight_utc_on_the_first() {
        let nov_30_late = Timestamp(1_796_083_199_999); // 2026-11-30T23:59:59.999Z
        let dec_1 = Timestamp(1_796_083_200_000);
        assert_eq!(nov_30_late.to_string(), "2026-11-30T23:59:59.999Z");
        assert_eq!(dec_1.month_index(), nov_30_late.month_index() + 1);
        assert_eq!(dec_1.month_index(), 2026 * 12 + 11);
    }
}
