//! `%START_TIME%` and `%START_TIME(format)%`: UTC, in Envoy's default
//! (`2024-05-01T12:30:45.123Z`) or a strftime format with Envoy's `%E<n>S`
//! (seconds with n fractional digits) and `%<n>f` (n fractional digits).

use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Year,
    ShortYear,
    Month,
    Day,
    DaySpaced,
    DayOfYear,
    Hour,
    Minute,
    Second,
    /// Seconds then a point and this many fractional digits.
    SecondsWithFraction(u8),
    Fraction(u8),
    Epoch,
    Offset,
    Zone,
    /// Abbreviated, or in full.
    Weekday(bool),
    MonthName(bool),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimeFormat(Vec<Part>);

impl TimeFormat {
    /// Envoy's default without a format.
    pub fn parse(format: Option<&str>) -> Result<Self, String> {
        parse(format.unwrap_or("%Y-%m-%dT%H:%M:%E3SZ"))
    }

    pub fn render(&self, at: SystemTime) -> String {
        let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
        let civil = Civil::from_epoch(since.as_secs());
        let nanos = since.subsec_nanos();
        let mut out = String::with_capacity(32);
        for part in &self.0 {
            civil.push(part, nanos, since.as_secs(), &mut out);
        }
        out
    }
}

fn parse(format: &str) -> Result<TimeFormat, String> {
    let mut parts = Vec::new();
    let mut text = String::new();
    let mut chars = format.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            text.push(c);
            continue;
        }
        let spec = chars.next().ok_or("a format ending in %")?;
        let part = match spec {
            '%' => {
                text.push('%');
                continue;
            }
            'Y' => Part::Year,
            'a' => Part::Weekday(false),
            'A' => Part::Weekday(true),
            'b' | 'h' => Part::MonthName(false),
            'B' => Part::MonthName(true),
            'y' => Part::ShortYear,
            'm' => Part::Month,
            'd' => Part::Day,
            'e' => Part::DaySpaced,
            'j' => Part::DayOfYear,
            'H' => Part::Hour,
            'M' => Part::Minute,
            'S' => Part::Second,
            's' => Part::Epoch,
            'z' => Part::Offset,
            'Z' => Part::Zone,
            'f' => Part::Fraction(9),
            'T' => {
                parts.extend(flush(&mut text));
                parts.extend([
                    Part::Hour,
                    Part::Text(":".into()),
                    Part::Minute,
                    Part::Text(":".into()),
                    Part::Second,
                ]);
                continue;
            }
            'F' => {
                parts.extend(flush(&mut text));
                parts.extend([
                    Part::Year,
                    Part::Text("-".into()),
                    Part::Month,
                    Part::Text("-".into()),
                    Part::Day,
                ]);
                continue;
            }
            'E' => {
                let digits = fraction_digits(&mut chars)?;
                if chars.next() != Some('S') {
                    return Err("%E<n> must be followed by S".to_owned());
                }
                Part::SecondsWithFraction(digits)
            }
            d @ '1'..='9' => {
                if chars.next() != Some('f') {
                    return Err(format!("%{d} must be followed by f"));
                }
                Part::Fraction(d as u8 - b'0')
            }
            other => return Err(format!("%{other} is not a time specifier oxmesh knows")),
        };
        parts.extend(flush(&mut text));
        parts.push(part);
    }
    parts.extend(flush(&mut text));
    Ok(TimeFormat(parts))
}

fn fraction_digits(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> Result<u8, String> {
    match chars.next() {
        Some(d @ '1'..='9') => Ok(d as u8 - b'0'),
        _ => Err("%E must be followed by a digit 1-9 and S".to_owned()),
    }
}

fn flush(text: &mut String) -> Option<Part> {
    (!text.is_empty()).then(|| Part::Text(std::mem::take(text)))
}

/// A UTC calendar date and time of day.
const WEEKDAYS: [&str; 7] = [
    "Sunday",
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
];
const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

struct Civil {
    /// 0 for Sunday.
    weekday: u32,
    year: i64,
    month: u32,
    day: u32,
    day_of_year: u32,
    hour: u64,
    minute: u64,
    second: u64,
}

impl Civil {
    /// Howard Hinnant's days-to-civil, for days since 1970-01-01.
    fn from_epoch(secs: u64) -> Self {
        let days = (secs / 86_400) as i64;
        let of_day = secs % 86_400;
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        let year = yoe + era * 400 + i64::from(month <= 2);
        Self {
            // 1970-01-01 was a Thursday.
            weekday: ((days + 4).rem_euclid(7)) as u32,
            year,
            month,
            day,
            day_of_year: day_of_year(year, month, day),
            hour: of_day / 3_600,
            minute: of_day % 3_600 / 60,
            second: of_day % 60,
        }
    }

    fn push(&self, part: &Part, nanos: u32, epoch: u64, out: &mut String) {
        use std::fmt::Write as _;
        let _ = match part {
            Part::Text(t) => {
                out.push_str(t);
                Ok(())
            }
            Part::Year => write!(out, "{:04}", self.year),
            Part::ShortYear => write!(out, "{:02}", self.year.rem_euclid(100)),
            Part::Month => write!(out, "{:02}", self.month),
            Part::Day => write!(out, "{:02}", self.day),
            Part::DaySpaced => write!(out, "{:2}", self.day),
            Part::DayOfYear => write!(out, "{:03}", self.day_of_year),
            Part::Hour => write!(out, "{:02}", self.hour),
            Part::Minute => write!(out, "{:02}", self.minute),
            Part::Second => write!(out, "{:02}", self.second),
            Part::SecondsWithFraction(n) => {
                write!(out, "{:02}.{}", self.second, fraction(nanos, *n))
            }
            Part::Fraction(n) => write!(out, "{}", fraction(nanos, *n)),
            Part::Epoch => write!(out, "{epoch}"),
            Part::Weekday(full) => {
                let name = WEEKDAYS[self.weekday as usize];
                out.push_str(if *full { name } else { &name[..3] });
                Ok(())
            }
            Part::MonthName(full) => {
                let name = MONTHS[(self.month as usize).saturating_sub(1).min(11)];
                out.push_str(if *full { name } else { &name[..3] });
                Ok(())
            }
            Part::Offset => write!(out, "+0000"),
            Part::Zone => write!(out, "UTC"),
        };
    }
}

/// The first `digits` digits of the nanoseconds, truncated as Envoy does.
fn fraction(nanos: u32, digits: u8) -> String {
    let all = format!("{nanos:09}");
    all[..usize::from(digits.min(9))].to_owned()
}

fn day_of_year(year: i64, month: u32, day: u32) -> u32 {
    const BEFORE: [u32; 12] = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let index = (month as usize).saturating_sub(1).min(11);
    BEFORE[index] + day + u32::from(leap && month > 2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(secs: u64, nanos: u32) -> SystemTime {
        UNIX_EPOCH + Duration::new(secs, nanos)
    }

    #[test]
    fn envoys_default_is_utc_with_milliseconds() {
        let format = TimeFormat::parse(None).expect("default");
        // 2024-02-29T23:59:58.123456789Z: a leap day.
        assert_eq!(
            format.render(at(1_709_251_198, 123_456_789)),
            "2024-02-29T23:59:58.123Z"
        );
        assert_eq!(format.render(at(0, 0)), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            format.render(at(4_102_444_800, 5_000_000)),
            "2100-01-01T00:00:00.005Z"
        );
    }

    #[test]
    fn strftime_specifiers_and_envoys_fractions() {
        let format = TimeFormat::parse(Some("%F %T.%6f|%E9S|%s|%j|%y %z %Z %%|%a %d %b|%A %B"))
            .expect("parse");
        assert_eq!(
            format.render(at(1_709_251_198, 123_456_789)),
            "2024-02-29 23:59:58.123456|58.123456789|1709251198|060|24 +0000 UTC %|Thu 29 Feb|Thursday February"
        );
    }

    #[test]
    fn unknown_specifiers_are_refused() {
        assert!(TimeFormat::parse(Some("%Q")).is_err());
        assert!(TimeFormat::parse(Some("%E3Q")).is_err());
        assert!(TimeFormat::parse(Some("trailing %")).is_err());
    }
}
