//! fail2ban's `datepattern`: where a line's date is and how to read it, for logs whose dates
//! the automatic formats ([`super::date`]) do not know.
//!
//! A date pattern is one alternative per line, tried in order; the first that matches gives
//! the date. Each is a regex with `strftime` directives (`%Y-%m-%d %H:%M:%S`, `%b`, `%z`, `%f`,
//! fail2ban's exact forms `%ExY`, `%Exd` …), optionally led by `{^LN-BEG}` (at the start of the
//! line, after at most two non-word characters); or one of the words `EPOCH`, `LEPOCH`
//! (milliseconds too), `TAI64N`, `ISO8601`; or `{^LN-BEG}` alone (the automatic formats, at
//! the line start). `{DATE}` inside a pattern stands for any automatic format. Where the
//! pattern has an unnamed group, that group is the date (what is cut out of the line);
//! otherwise the whole match.
//!
//! A date without a year takes the latest year that puts it at most a day ahead of now, as
//! syslog dates do; one without a day is today's. One without a zone is in the log's zone.

use std::sync::Arc;
use std::time::SystemTime;

use jiff::Timestamp;
use jiff::civil::DateTime;
use jiff::tz::Offset;

use super::date::{self, Dates, Format};
use super::{Engine, Groups};

/// Why a date pattern does not compile.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DatePatternError {
    #[error("unknown directive %{0} in datepattern {1:?}")]
    Directive(String, String),
    #[error("directive %{0} appears twice in datepattern {1:?}")]
    Twice(String, String),
    #[error("invalid datepattern {0:?}: {1}")]
    Regex(String, String),
    #[error("datepattern is empty")]
    Empty,
}

/// A compiled `datepattern`.
#[derive(Debug, Clone)]
pub struct DatePattern {
    alternatives: Arc<[Alternative]>,
}

#[derive(Debug)]
enum Alternative {
    /// The automatic formats at the start of the line (`{^LN-BEG}` alone).
    Auto,
    Regex(DateRegex),
}

#[derive(Debug)]
struct DateRegex {
    engine: Engine,
    /// The directives' letters: each is captured as the group `_dp_<letter>`.
    fields: Vec<char>,
    /// The group whose text is the date: the first unnamed one, else the whole match (0).
    group: usize,
    /// How the date reads when it is `{DATE}`, `EPOCH` … rather than directives.
    whole: Option<Whole>,
}

/// A date written as one token.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Whole {
    Auto,
    Epoch,
    Tai64n,
}

/// Month and weekday names, English whatever the locale (as loggers write them).
const MONTHS: [&str; 12] = [
    "Jan(?:uary)?",
    "Feb(?:ruary)?",
    "Mar(?:ch)?",
    "Apr(?:il)?",
    "May",
    "Jun(?:e)?",
    "Jul(?:y)?",
    "Aug(?:ust)?",
    "Sep(?:tember)?",
    "Oct(?:ober)?",
    "Nov(?:ember)?",
    "Dec(?:ember)?",
];
const WEEKDAY: &str = "(?i:Mon|Tue|Wed|Thu|Fri|Sat|Sun)[a-z]*";

/// What `{DATE}` and `ISO8601` stand for: the text of any automatic format.
const ANY_DATE: &str = r"[0-9]{4}[-/][0-9]{2}[-/][0-9]{2}[T ][0-9]{2}:[0-9]{2}:[0-9]{2}(?:[.,][0-9]+)?(?:\s*(?:Z|UTC|[+-][0-9]{2}(?::?[0-9]{2})?))?|(?:[A-Z][a-z]{2} )?[A-Z][a-z]{2} {1,2}[0-9]{1,2} [0-9]{2}:[0-9]{2}:[0-9]{2}(?:[.,][0-9]+)?(?: [0-9]{4})?|[0-9]{2}/[A-Z][a-z]{2}/[0-9]{4}:[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\s*[+-][0-9]{4})?|[0-9]{13}|[0-9]{10}(?:\.[0-9]+)?";

/// The regex of directive `letter`; `exact`: fail2ban's `%Ex…` form (fixed width).
fn directive(letter: char, exact: bool) -> Option<String> {
    let month_names = format!("(?i:{})", MONTHS.join("|"));
    Some(match (letter, exact) {
        ('Y', false) => "[0-9]{4}".into(),
        ('Y', true) => "(?:19|20|21)[0-9]{2}".into(),
        ('y', _) => "[0-9]{2}".into(),
        ('m', false) => "1[0-2]|0?[1-9]".into(),
        ('m', true) => "1[0-2]|0[1-9]".into(),
        ('d' | 'e', false) => "3[01]|[12][0-9]|0?[1-9]| [1-9]".into(),
        ('d' | 'e', true) => "3[01]|[12][0-9]|0[1-9]".into(),
        ('H' | 'k', false) => "2[0-3]|[01][0-9]|[0-9]| [0-9]".into(),
        ('H' | 'k', true) => "2[0-3]|[01][0-9]".into(),
        ('I' | 'l', _) => "1[0-2]|0?[1-9]| [1-9]".into(),
        ('M', false) => "[0-5][0-9]|[0-9]".into(),
        ('M', true) => "[0-5][0-9]".into(),
        ('S', false) => "6[01]|[0-5][0-9]|[0-9]".into(),
        ('S', true) => "6[01]|[0-5][0-9]".into(),
        ('f', _) => "[0-9]{1,9}".into(),
        ('p', _) => "(?i:AM|PM)".into(),
        ('b' | 'B' | 'h', _) => month_names,
        ('a' | 'A', _) => WEEKDAY.into(),
        ('j', _) => "36[0-6]|3[0-5][0-9]|[12][0-9]{2}|0?[1-9][0-9]|0{0,2}[1-9]".into(),
        ('z', _) => "Z|UTC|GMT|[+-][0-9]{2}(?::?[0-9]{2})?".into(),
        ('Z', _) => "[A-Z]{1,5}".into(),
        ('s', _) => "[0-9]{1,13}".into(),
        ('U' | 'W', _) => "[0-5]?[0-9]".into(),
        ('w', _) => "[0-6]".into(),
        _ => return None,
    })
}

impl DatePattern {
    /// Compiles a `datepattern` value (one alternative per line).
    pub fn new(source: &str) -> Result<DatePattern, DatePatternError> {
        let alternatives: Vec<Alternative> = source
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(alternative)
            .collect::<Result<_, _>>()?;
        if alternatives.is_empty() {
            return Err(DatePatternError::Empty);
        }
        Ok(DatePattern {
            alternatives: alternatives.into(),
        })
    }

    /// Where the date is in `line`.
    pub fn span(&self, line: &str) -> Option<(usize, usize)> {
        self.alternatives.iter().find_map(|alt| match alt {
            Alternative::Auto => date::span(line),
            Alternative::Regex(re) => re.span(line),
        })
    }

    /// The date of `line`, read by `dates` (its zone, its year inference) where the pattern
    /// leaves something open. The first alternative that matches decides: one without
    /// directives (guacamole's `^WARNING:()`) marks a line that has no date.
    pub(super) fn find(&self, dates: &Dates, line: &str, now: &date::Now) -> Option<date::Found> {
        for alt in self.alternatives.iter() {
            match alt {
                Alternative::Auto => {
                    if let Some(found) = dates.find_auto(line, now) {
                        return Some(found);
                    }
                }
                Alternative::Regex(re) => {
                    if let Some(groups) = re.engine.captures(line) {
                        return re.read(dates, &groups, now);
                    }
                }
            }
        }
        None
    }
}

/// One line of a `datepattern`.
fn alternative(line: &str) -> Result<Alternative, DatePatternError> {
    let (line_start, rest) = match line.strip_prefix("{^LN-BEG}") {
        Some(rest) => (true, rest),
        None => (false, line),
    };
    let word = match rest.to_ascii_uppercase().as_str() {
        "" if line_start => return Ok(Alternative::Auto),
        "EPOCH" => Some((r"[0-9]{10}(?:\.[0-9]{1,9})?", Whole::Epoch)),
        "LEPOCH" => Some((r"[0-9]{13}|[0-9]{10}(?:\.[0-9]{1,9})?", Whole::Epoch)),
        "TAI64N" => Some((r"@[0-9a-fA-F]{24}", Whole::Tai64n)),
        "ISO8601" => Some((ANY_DATE, Whole::Auto)),
        _ => None,
    };
    let lead = if line_start { r"^\W{0,2}?" } else { "" };
    let (regex, fields, whole) = match word {
        Some((regex, whole)) => (
            format!(r"{lead}(?:^|\b)(?:{regex})(?:\b|$)"),
            Vec::new(),
            Some(whole),
        ),
        None => {
            let (regex, fields, auto) = translate(rest, line)?;
            (
                format!("{lead}{regex}"),
                fields,
                auto.then_some(Whole::Auto),
            )
        }
    };
    let regex = super::python::python_to_rust(&regex);
    let (engine, _) =
        Engine::new(&regex).map_err(|e| DatePatternError::Regex(line.to_owned(), e.to_string()))?;
    let group = engine.first_unnamed_group().unwrap_or(0);
    Ok(Alternative::Regex(DateRegex {
        engine,
        fields,
        group,
        whole,
    }))
}

/// A pattern with directives as a regex with one named group per directive (`_dp_Y` …) and
/// `{DATE}` as `(?P<_dp_date>…)`; whether `{DATE}` was in it.
fn translate(pattern: &str, line: &str) -> Result<(String, Vec<char>, bool), DatePatternError> {
    let mut out = String::new();
    let mut fields: Vec<char> = Vec::new();
    let mut auto = false;
    let mut rest = pattern;
    while let Some(at) = rest.find(['%', '{']) {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        if let Some(after) = tail.strip_prefix("{DATE}") {
            if auto {
                return Err(DatePatternError::Twice("{DATE}".into(), line.to_owned()));
            }
            auto = true;
            out.push_str(&format!("(?P<_dp_date>{ANY_DATE})"));
            rest = after;
            continue;
        }
        if let Some(after) = tail.strip_prefix('{') {
            out.push('{');
            rest = after;
            continue;
        }
        let spec = &tail[1..];
        if let Some(after) = spec.strip_prefix('%') {
            out.push('%');
            rest = after;
            continue;
        }
        let (exact, spec) = match spec.strip_prefix("Ex") {
            Some(s) => (true, s),
            None => (false, spec.strip_prefix(['E', 'O', '-']).unwrap_or(spec)),
        };
        let letter = spec.chars().next().unwrap_or('%');
        let regex = directive(letter, exact)
            .ok_or_else(|| DatePatternError::Directive(letter.into(), line.to_owned()))?;
        if fields.contains(&letter) {
            return Err(DatePatternError::Twice(letter.into(), line.to_owned()));
        }
        fields.push(letter);
        out.push_str(&format!("(?P<_dp_{letter}>{regex})"));
        rest = &spec[letter.len_utf8()..];
    }
    out.push_str(rest);
    Ok((out, fields, auto))
}

impl DateRegex {
    fn span(&self, line: &str) -> Option<(usize, usize)> {
        let groups = self.engine.captures(line)?;
        groups.span(self.group)
    }

    /// The date a match of this alternative says; `None` for one without directives.
    fn read(&self, dates: &Dates, groups: &Groups, now: &date::Now) -> Option<date::Found> {
        if self.whole.is_none() && self.fields.is_empty() {
            return None;
        }
        let span = groups.span(self.group)?;
        let at = match self.whole {
            Some(Whole::Auto) => {
                let text = groups.name("_dp_date").or_else(|| groups.text(0))?;
                return dates.read_token(text, now).map(|at| date::Found {
                    at,
                    format: Format::DatePattern,
                    span,
                });
            }
            Some(Whole::Epoch) => epoch(
                groups
                    .text(0)?
                    .trim_start_matches(|c: char| !c.is_ascii_digit()),
            )?,
            Some(Whole::Tai64n) => tai64n(groups.text(0)?)?,
            None => self.fields(dates, groups, now)?,
        };
        Some(date::Found {
            at,
            format: Format::DatePattern,
            span,
        })
    }

    /// The date the directives' groups say.
    fn fields(&self, dates: &Dates, groups: &Groups, now: &date::Now) -> Option<SystemTime> {
        let get = |letter: char| -> Option<&str> {
            self.fields
                .contains(&letter)
                .then(|| groups.name(&format!("_dp_{letter}")))
                .flatten()
        };
        let number = |letter: char| -> Option<u32> { get(letter)?.trim().parse().ok() };
        if let Some(secs) = get('s') {
            return epoch(secs);
        }
        let month = match get('m') {
            Some(m) => Some(m.trim().parse().ok()?),
            None => get('b').and_then(month_of),
        };
        let mut hour = number('H').unwrap_or(0);
        if let Some(h12) = number('I') {
            let pm = get('p').is_some_and(|p| p.eq_ignore_ascii_case("pm"));
            hour = h12 % 12 + if pm { 12 } else { 0 };
        }
        let minute = number('M').unwrap_or(0);
        let second = number('S').unwrap_or(0).min(59);
        let nanos = get('f').map_or(Some(0), fraction)?;
        let zone = match (get('z'), get('Z')) {
            (Some(z), _) => Some(offset(z)?),
            (None, Some("UTC" | "GMT" | "Z")) => Some(Offset::UTC),
            _ => None,
        };
        let year = match (number('Y'), number('y')) {
            (Some(y), _) => Some(y),
            (None, Some(y)) => Some(if y >= 69 { 1900 + y } else { 2000 + y }),
            _ => None,
        };
        let day_of_year = number('j');
        let day = number('d');
        let resolve = |dt: DateTime| dates.resolve(dt, zone, now);
        let civil = |year: i16, month: i8, day: i8| -> Option<Timestamp> {
            let dt = DateTime::new(
                year,
                month,
                day,
                i8::try_from(hour).ok()?,
                i8::try_from(minute).ok()?,
                i8::try_from(second).ok()?,
                i32::try_from(nanos).ok()?,
            )
            .ok()?;
            resolve(dt)
        };
        let (now_ts, today) = now.today?;
        let at = match (year, month, day, day_of_year) {
            (Some(y), _, _, Some(j)) => {
                let first = jiff::civil::Date::new(i16::try_from(y).ok()?, 1, 1).ok()?;
                let date = first
                    .checked_add(jiff::Span::new().days(i64::from(j) - 1))
                    .ok()?;
                civil(date.year(), date.month(), date.day())?
            }
            (Some(y), Some(m), Some(d), _) => civil(
                i16::try_from(y).ok()?,
                i8::try_from(m).ok()?,
                i8::try_from(d).ok()?,
            )?,
            (None, Some(m), Some(d), _) => {
                // No year: the latest that does not put the date more than a day ahead.
                let limit = now_ts.as_second() + 86_400;
                (today.year() - 8..=today.year() + 1)
                    .rev()
                    .filter_map(|y| civil(y, i8::try_from(m).ok()?, i8::try_from(d).ok()?))
                    .find(|t| t.as_second() <= limit)?
            }
            (None, None, None, None) => {
                // A time alone: today's, or yesterday's if that would be ahead of now.
                let at = civil(today.year(), today.month(), today.day())?;
                if at.as_second() > now_ts.as_second() + 60 {
                    at.checked_sub(jiff::Span::new().hours(24)).ok()?
                } else {
                    at
                }
            }
            _ => return None,
        };
        Some(SystemTime::from(at))
    }
}

fn month_of(name: &str) -> Option<u32> {
    let lower = name.to_ascii_lowercase();
    let three = lower.get(..3)?;
    let at = [
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ]
    .iter()
    .position(|m| *m == three)?;
    u32::try_from(at + 1).ok()
}

/// `123` after a decimal point, as nanoseconds.
fn fraction(digits: &str) -> Option<u32> {
    let digits = digits.get(..digits.len().min(9))?;
    let value: u32 = digits.parse().ok()?;
    Some(value * 10u32.pow(u32::try_from(9 - digits.len()).ok()?))
}

/// `Z`, `UTC`, `GMT`, `±hh`, `±hhmm`, `±hh:mm`.
fn offset(text: &str) -> Option<Offset> {
    if matches!(text, "Z" | "UTC" | "GMT") {
        return Some(Offset::UTC);
    }
    let (sign, digits) = text.split_at(1);
    let digits = digits.replace(':', "");
    let hours: i32 = digits.get(..2)?.parse().ok()?;
    let minutes: i32 = digits
        .get(2..)
        .filter(|m| !m.is_empty())
        .map_or(Some(0), |m| m.parse().ok())?;
    let secs = hours * 3600 + minutes * 60;
    Offset::from_seconds(if sign == "-" { -secs } else { secs }).ok()
}

/// Unix seconds (with a fraction) or milliseconds (13 digits).
fn epoch(text: &str) -> Option<SystemTime> {
    let at = match text.split_once('.') {
        Some((secs, frac)) => {
            Timestamp::new(secs.parse().ok()?, i32::try_from(fraction(frac)?).ok()?).ok()?
        }
        None if text.len() == 13 => Timestamp::from_millisecond(text.parse().ok()?).ok()?,
        None => Timestamp::from_second(text.parse().ok()?).ok()?,
    };
    Some(SystemTime::from(at))
}

/// `@4000000069...`: a TAI64N label as daemontools and s6 write it, 2^62 + 10 + Unix
/// seconds, then nanoseconds.
fn tai64n(text: &str) -> Option<SystemTime> {
    let hex = text.strip_prefix('@')?;
    let label = u64::from_str_radix(hex.get(..16)?, 16).ok()?;
    let nanos = u32::from_str_radix(hex.get(16..24)?, 16).ok()?;
    let secs = label.checked_sub((1 << 62) + 10)?;
    let at = Timestamp::new(i64::try_from(secs).ok()?, i32::try_from(nanos).ok()?).ok()?;
    Some(SystemTime::from(at))
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::tz::TimeZone;

    const NOV21_10H: u64 = 1_795_255_200;

    fn utc() -> Dates {
        Dates::new(TimeZone::UTC)
    }

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs)
    }

    /// (Unix seconds, date span) that `pattern` reads in `line`.
    fn read(pattern: &str, line: &str, now: u64) -> Option<(f64, (usize, usize))> {
        let p = DatePattern::new(pattern).unwrap();
        let found = utc().with_pattern(p.clone()).find(line, at(now))?;
        assert_eq!(p.span(line), Some(found.span), "{pattern}: span");
        let secs = found.at.duration_since(SystemTime::UNIX_EPOCH).ok()?;
        Some((secs.as_secs_f64(), found.span))
    }

    #[test]
    fn strftime_directives() {
        let now = NOV21_10H + 3600;
        assert_eq!(
            read(
                "^%Y-%m-%d %H:%M:%S",
                "2026-11-21 10:00:00 login failed",
                now
            ),
            Some((NOV21_10H as f64, (0, 19)))
        );
        // fail2ban's own ISO pattern: a back-reference (fancy-regex), a fraction and a zone.
        let iso = r"{^LN-BEG}%ExY(?P<_sep>[-/.])%m(?P=_sep)%d[T ]%H:%M:%S(?:[.,]%f)?(?:\s*%z)?";
        assert_eq!(
            read(iso, "2026/11/21 11:00:00.250 +0100 x", now),
            Some((NOV21_10H as f64 + 0.25, (0, 29)))
        );
        assert_eq!(read(iso, "2026/11-21 11:00:00 x", now), None);
        assert_eq!(
            read("^%b %d, %ExY %I:%M:%S %p", "Nov 21, 2026 1:05:09 PM x", now),
            Some((1_795_266_309.0, (0, 23)))
        );
        assert_eq!(
            read("^L %d/%m/%Y - %H:%M:%S", "L 21/11/2026 - 10:00:00: x", now),
            Some((NOV21_10H as f64, (0, 23)))
        );
        // %% is a percent sign.
        assert_eq!(
            read("^100%% %Y-%m-%d %H:%M:%S", "100% 2026-11-21 10:00:00", now),
            Some((NOV21_10H as f64, (0, 24)))
        );
    }

    #[test]
    fn missing_year_day_or_zone() {
        // Read on the 1st of January, the 31st of December is last year's.
        let new_year = 1_798_762_200;
        assert_eq!(
            read("^%b-%d %H:%M:%S", "Dec-31 23:59:59 x", new_year),
            Some((1_798_761_599.0, (0, 15)))
        );
        // A time alone is today's.
        assert_eq!(
            read("^%H:%M:%S", "09:00:00 x", NOV21_10H),
            Some((NOV21_10H as f64 - 3600.0, (0, 8)))
        );
        // A zone name other than UTC is the log's zone.
        let berlin = Dates::new(TimeZone::get("Europe/Berlin").unwrap())
            .with_pattern(DatePattern::new("^%Y-%m-%d %H:%M:%S").unwrap());
        let found = berlin.find("2026-11-21 11:00:00 x", at(NOV21_10H)).unwrap();
        assert_eq!(found.at, at(NOV21_10H));
    }

    #[test]
    fn words_groups_and_the_automatic_formats() {
        let now = NOV21_10H + 60;
        assert_eq!(
            read("{^LN-BEG}EPOCH", "1795255200.5 x", now),
            Some((NOV21_10H as f64 + 0.5, (0, 12)))
        );
        assert_eq!(read("{^LN-BEG}Epoch", "x 1795255200", now), None);
        assert_eq!(
            read("LEPOCH", "t=1795255200000 x", now),
            Some((NOV21_10H as f64, (2, 15)))
        );
        assert_eq!(
            read("{^LN-BEG}TAI64N", "@40000000 6920382a00000000 x", now),
            None
        );
        let tai = format!("@{:016x}{:08x} x", (1u64 << 62) + 10 + NOV21_10H, 0);
        assert_eq!(
            read("{^LN-BEG}TAI64N", &tai, now),
            Some((NOV21_10H as f64, (0, 25)))
        );
        // An unnamed group is the date; {DATE} is any automatic format.
        let line = r#"192.0.2.1 - - [21/Nov/2026:11:00:00 +0100] "GET / HTTP/1.1" 401"#;
        assert_eq!(
            read(r"^[^\[]*\[({DATE})", line, now),
            Some((NOV21_10H as f64, (15, 41)))
        );
        assert_eq!(
            read("{^LN-BEG}", "2026-11-21T10:00:00Z x", now),
            Some((NOV21_10H as f64, (0, 20)))
        );
        assert_eq!(
            read("ISO8601", "[2026-11-21 10:00:00] x", now),
            Some((NOV21_10H as f64, (1, 20)))
        );
        // Alternatives are tried in turn.
        let two = "^%Y-%m-%d %H:%M:%S\n^%d/%m/%Y %H:%M:%S";
        assert_eq!(
            read(two, "21/11/2026 10:00:00 x", now),
            Some((NOV21_10H as f64, (0, 19)))
        );
    }

    #[test]
    fn errors_name_the_problem() {
        let err = |p: &str| DatePattern::new(p).unwrap_err().to_string();
        assert!(
            err("^%Y-%Q").contains("unknown directive %Q"),
            "{}",
            err("^%Y-%Q")
        );
        assert!(err("%Y %Y").contains("%Y appears twice"));
        assert!(err("^(%Y").starts_with("invalid datepattern"));
        assert_eq!(err(" \n "), "datepattern is empty");
    }
}
