//! Durations as Istio writes them: Go's syntax (`1.5s`, `100ms`, `1h30m`), which is
//! what the CRDs' `duration()` checks accept.

use serde::de::{Deserialize, Deserializer, Error as _};
use std::fmt;
use std::str::FromStr;
use std::time::Duration as StdDuration;

/// A non-negative duration read from Go syntax.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(StdDuration);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DurationError {
    #[error("must be a valid duration greater than 1ms, such as 1.5s or 100ms; got {0:?}")]
    Syntax(String),
    #[error(
        "must be a valid duration greater than 1ms; {0:?} has unknown unit {1:?} (use ns, us, ms, s, m or h)"
    )]
    Unit(String, String),
    #[error("invalid duration {0:?}: must not be negative")]
    Negative(String),
    #[error("invalid duration {0:?}: too large")]
    Overflow(String),
}

impl Duration {
    pub const ZERO: Duration = Duration(StdDuration::ZERO);

    pub const fn from_std(d: StdDuration) -> Self {
        Self(d)
    }

    pub const fn as_std(self) -> StdDuration {
        self.0
    }

    pub const fn from_millis(ms: u64) -> Self {
        Self(StdDuration::from_millis(ms))
    }

    pub const fn from_secs(s: u64) -> Self {
        Self(StdDuration::from_secs(s))
    }
}

fn unit_nanos(unit: &str) -> Option<u128> {
    Some(match unit {
        "ns" => 1,
        "us" | "µs" | "μs" => 1_000,
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        _ => return None,
    })
}

impl FromStr for Duration {
    type Err = DurationError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let syntax = || DurationError::Syntax(text.to_owned());
        let (negative, mut rest) = match text.strip_prefix('-') {
            Some(r) => (true, r),
            None => (false, text.strip_prefix('+').unwrap_or(text)),
        };
        if rest == "0" {
            return Ok(Self::ZERO);
        }
        if rest.is_empty() {
            return Err(syntax());
        }
        let mut total: u128 = 0;
        while !rest.is_empty() {
            let number_len = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .ok_or_else(syntax)?;
            let (number, after) = rest.split_at(number_len);
            let unit_len = after
                .find(|c: char| c.is_ascii_digit() || c == '.')
                .unwrap_or(after.len());
            let (unit, next) = after.split_at(unit_len);
            let scale = unit_nanos(unit)
                .ok_or_else(|| DurationError::Unit(text.to_owned(), unit.to_owned()))?;
            total = total
                .checked_add(scaled(number, scale).ok_or_else(syntax)?)
                .ok_or_else(|| DurationError::Overflow(text.to_owned()))?;
            rest = next;
        }
        if negative && total > 0 {
            return Err(DurationError::Negative(text.to_owned()));
        }
        let nanos = u64::try_from(total).map_err(|_| DurationError::Overflow(text.to_owned()))?;
        Ok(Self(StdDuration::from_nanos(nanos)))
    }
}

/// `number` (`1`, `1.5`, `.5`) times `scale` nanoseconds, truncated as Go does.
fn scaled(number: &str, scale: u128) -> Option<u128> {
    let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
    if (whole.is_empty() && frac.is_empty()) || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let whole: u128 = if whole.is_empty() {
        0
    } else {
        whole.parse().ok()?
    };
    let mut nanos = whole.checked_mul(scale)?;
    let mut unit = scale;
    for digit in frac.bytes() {
        unit /= 10;
        if unit == 0 {
            break;
        }
        nanos = nanos.checked_add(u128::from(digit - b'0') * unit)?;
    }
    Some(nanos)
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nanos = self.0.as_nanos();
        if nanos == 0 {
            f.write_str("0s")
        } else if nanos.is_multiple_of(1_000_000_000) {
            write!(f, "{}s", nanos / 1_000_000_000)
        } else if nanos.is_multiple_of(1_000_000) {
            write!(f, "{}ms", nanos / 1_000_000)
        } else if nanos.is_multiple_of(1_000) {
            write!(f, "{}us", nanos / 1_000)
        } else {
            write!(f, "{nanos}ns")
        }
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(D::Error::custom)
    }
}

impl serde::Serialize for Duration {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<StdDuration, DurationError> {
        s.parse::<Duration>().map(Duration::as_std)
    }

    #[test]
    fn reads_go_syntax() {
        assert_eq!(parse("1.5s"), Ok(StdDuration::from_millis(1500)));
        assert_eq!(parse("100ms"), Ok(StdDuration::from_millis(100)));
        assert_eq!(parse("1h30m"), Ok(StdDuration::from_secs(5400)));
        assert_eq!(parse(".5s"), Ok(StdDuration::from_millis(500)));
        assert_eq!(parse("0"), Ok(StdDuration::ZERO));
        assert_eq!(parse("-0s"), Ok(StdDuration::ZERO));
        assert_eq!(parse("10us"), Ok(StdDuration::from_micros(10)));
    }

    #[test]
    fn rejects_bad_input() {
        for bad in [
            "", "s", "1", "1x", "1.s.", "abc", "1s2", "-1s", ".", "1.5.5s",
        ] {
            assert!(parse(bad).is_err(), "{bad} should be rejected");
        }
        assert!(matches!(parse("1d"), Err(DurationError::Unit(_, u)) if u == "d"));
    }

    #[test]
    fn prints_compactly() {
        for text in ["0s", "2s", "150ms", "7us", "3ns"] {
            assert_eq!(
                text.parse::<Duration>().map(|d| d.to_string()),
                Ok(text.to_owned())
            );
        }
    }
}
