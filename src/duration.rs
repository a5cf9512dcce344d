//! Human durations (`90s`, `10m`, `1h30m`, `1d`, `1w`) and ban times (a duration or `permanent`).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The longest finite duration accepted; beyond it, say `permanent`.
pub const MAX_DURATION: Duration = Duration::from_secs(10 * 365 * 86_400);

/// How long a ban lasts. Permanent bans are elements without a kernel timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BanTime {
    Finite(Duration),
    Permanent,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DurationError {
    #[error(
        "{0:?} is not a duration: write a number with a unit, like 600 (seconds), 90s, 10min, 1h30m, 1d, 1w, 1mo or 1y"
    )]
    Syntax(String),
    #[error("{0:?} must be longer than zero")]
    Zero(String),
    #[error("{0:?} is longer than 10 years: use \"permanent\" instead")]
    TooLong(String),
    #[error("\"permanent\" is only allowed for bantime")]
    PermanentNotAllowed,
}

/// Parses `90s`, `10m`, `1h30m`, `2d`, `1w`, or bare seconds (`600`).
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let syntax = || DurationError::Syntax(text.to_owned());
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(syntax());
    }
    if let Ok(secs) = trimmed.parse::<u64>() {
        return checked(Duration::from_secs(secs), text);
    }
    let mut total: u64 = 0;
    let mut rest = trimmed;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .ok_or_else(syntax)?;
        if digits == 0 {
            return Err(syntax());
        }
        let value: u64 = rest[..digits].parse().map_err(|_| syntax())?;
        rest = rest[digits..].trim_start();
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c.is_whitespace())
            .unwrap_or(rest.len());
        // The units fail2ban's bantime takes, in any case (`1H`, `10min`, `1mo`, `1y`).
        let unit = match rest[..unit_len].to_ascii_lowercase().as_str() {
            "s" | "ss" | "sec" | "secs" | "second" | "seconds" => 1,
            "m" | "mm" | "min" | "mins" | "minute" | "minutes" => 60,
            "h" | "hh" | "hr" | "hrs" | "hour" | "hours" => 3_600,
            "d" | "dd" | "day" | "days" => 86_400,
            "w" | "wk" | "wks" | "week" | "weeks" => 604_800,
            // A twelfth of a year of 365.25 days, as fail2ban counts.
            "mo" | "mon" | "month" | "months" => 2_629_800,
            "y" | "yr" | "yrs" | "year" | "years" => 31_557_600,
            _ => return Err(syntax()),
        };
        rest = rest[unit_len..].trim_start();
        total = value
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| DurationError::TooLong(text.to_owned()))?;
    }
    checked(Duration::from_secs(total), text)
}

fn checked(d: Duration, text: &str) -> Result<Duration, DurationError> {
    if d.is_zero() {
        Err(DurationError::Zero(text.to_owned()))
    } else if d > MAX_DURATION {
        Err(DurationError::TooLong(text.to_owned()))
    } else {
        Ok(d)
    }
}

/// Formats a duration the way it is written in the config (`1d2h`, `90s`).
pub fn format_duration(d: Duration) -> String {
    let mut secs = d.as_secs();
    if secs == 0 {
        return "0s".to_owned();
    }
    let mut out = String::new();
    for (unit, name) in [
        (604_800, "w"),
        (86_400, "d"),
        (3_600, "h"),
        (60, "m"),
        (1, "s"),
    ] {
        if secs >= unit {
            out.push_str(&format!("{}{name}", secs / unit));
            secs %= unit;
        }
    }
    out
}

impl FromStr for BanTime {
    type Err = DurationError;

    /// `permanent` (or fail2ban's `-1`), else a duration.
    fn from_str(text: &str) -> Result<BanTime, DurationError> {
        match text.trim() {
            "permanent" | "-1" => Ok(BanTime::Permanent),
            _ => parse_duration(text).map(BanTime::Finite),
        }
    }
}

impl fmt::Display for BanTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BanTime::Finite(d) => f.write_str(&format_duration(*d)),
            BanTime::Permanent => f.write_str("permanent"),
        }
    }
}

impl Serialize for BanTime {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for BanTime {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<BanTime, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        let s = |n| Duration::from_secs(n);
        assert_eq!(parse_duration("90s"), Ok(s(90)));
        assert_eq!(parse_duration("10m"), Ok(s(600)));
        assert_eq!(parse_duration("1h"), Ok(s(3600)));
        assert_eq!(parse_duration("1h30m"), Ok(s(5400)));
        assert_eq!(parse_duration("1d"), Ok(s(86_400)));
        assert_eq!(parse_duration("1w"), Ok(s(604_800)));
        assert_eq!(parse_duration("600"), Ok(s(600)));
        assert_eq!(parse_duration("12h"), Ok(s(43_200)));
        // As people write them, and as fail2ban reads them.
        assert_eq!(parse_duration("10min"), Ok(s(600)));
        assert_eq!(parse_duration("1H"), Ok(s(3600)));
        assert_eq!(parse_duration("1h 30m"), Ok(s(5400)));
        assert_eq!(parse_duration("2 days"), Ok(s(172_800)));
        assert_eq!(parse_duration("1mo"), Ok(s(2_629_800)));
        assert_eq!(parse_duration("1y"), Ok(s(31_557_600)));
        assert_eq!(parse_duration("1Y2mo"), Ok(s(31_557_600 + 2 * 2_629_800)));
    }

    #[test]
    fn rejects() {
        for bad in [
            "",
            "s",
            "10x",
            "1.5h",
            "-5m",
            "h1",
            "m10",
            "99999999999999999999w",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} parsed");
        }
        assert!(matches!(parse_duration("0s"), Err(DurationError::Zero(_))));
        assert!(matches!(
            parse_duration("11w520w"),
            Err(DurationError::TooLong(_))
        ));
    }

    #[test]
    fn bantime() {
        assert_eq!("permanent".parse(), Ok(BanTime::Permanent));
        assert_eq!("-1".parse(), Ok(BanTime::Permanent));
        assert_eq!(
            "1d".parse(),
            Ok(BanTime::Finite(Duration::from_secs(86_400)))
        );
        assert_eq!(
            BanTime::Finite(Duration::from_secs(93_784)).to_string(),
            "1d2h3m4s"
        );
    }
}
