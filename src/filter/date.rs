//! Timestamps in log lines, in the formats loggers write, found at the start of a line.
//!
//! Only the line's prefix is searched: the logger writes its timestamp before any
//! attacker-controlled text, so a date hidden in a user name or URL is never taken for the
//! line's time. Apache and nginx access logs are the exception the formats allow for: their
//! date follows the client address, the identity and the user, `[21/Nov/2026:10:00:00 +0100]`.
//!
//! A date without a zone is read in the log's time zone (the system's unless configured); a
//! date without a year (BSD syslog) takes the year that puts it at most a day after "now", so
//! `Dec 31 23:59:59` read on the 1st of January belongs to the year before.

use std::cell::Cell;
use std::fmt;
use std::path::Path;
use std::sync::{Mutex, PoisonError};
use std::time::SystemTime;

use jiff::Timestamp;
use jiff::civil::{Date, DateTime};
use jiff::tz::{Offset, TimeZone};

use super::DatePattern;

/// How far into a JSON line the logger's timestamp key is looked for.
const JSON_SCAN: usize = 256;
/// How far into an access log line its bracketed date is looked for.
const CLF_SCAN: usize = 512;

/// The date formats recognised automatically.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Format {
    /// `2026-11-21T10:00:00.123+01:00`, `2026-11-21 10:00:00`, RFC 3339, RFC 5424, journal.
    Iso8601,
    /// `2026/11/21 10:00:00` (nginx error log).
    Slashed,
    /// `2026.11.21 10:00:00` (stunnel).
    Dotted,
    /// `21-11-2026 10:00:00`, `21/11/26 10:00:00` (3proxy, Domino): day first.
    DayFirst,
    /// `21-Nov-2026 10:00:00.123` (BIND), also in brackets with a zone (Roundcube).
    DayMonthName,
    /// `261121  1:00:00` (MySQL before 5.7).
    Compact,
    /// `Nov 21 10:00:00`, year inferred; also with a weekday and a trailing year (ctime).
    Syslog,
    /// `[21/Nov/2026:10:00:00 +0100]` (Apache and nginx access logs).
    Clf,
    /// Unix seconds, optionally with a fraction: `1763719200.123`.
    Epoch,
    /// Unix milliseconds: `1763719200123`.
    EpochMillis,
    /// Where and how the filter's or jail's `datepattern` says.
    DatePattern,
    /// `Sat Nov 21 10:00:00 2026` inside the line, when none is at its start (fail2ban reads
    /// it there too). Text inside a line may be the attacker's: the daemon dates live and
    /// caught-up lines by when it reads them, never by such a date.
    CtimeInside,
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Iso8601 => "ISO 8601 (YYYY-MM-DD hh:mm:ss)",
            Format::Slashed => "YYYY/MM/DD hh:mm:ss",
            Format::Dotted => "YYYY.MM.DD hh:mm:ss",
            Format::DayFirst => "DD-MM-YYYY hh:mm:ss",
            Format::DayMonthName => "DD-Mon-YYYY hh:mm:ss",
            Format::Compact => "YYMMDD hh:mm:ss",
            Format::Syslog => "syslog (Mon DD hh:mm:ss)",
            Format::Clf => "access log ([DD/Mon/YYYY:hh:mm:ss zone])",
            Format::Epoch => "Unix seconds",
            Format::EpochMillis => "Unix milliseconds",
            Format::DatePattern => "datepattern",
            Format::CtimeInside => "inside the line (Www Mon DD hh:mm:ss YYYY)",
        })
    }
}

/// A timestamp found in a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found {
    pub at: SystemTime,
    pub format: Format,
    /// Where the timestamp is in the line (byte offsets).
    pub span: (usize, usize),
}

/// Where the logger's timestamp is in `line` (what fail2ban filters cut out before matching).
pub fn span(line: &str) -> Option<(usize, usize)> {
    static UTC: std::sync::OnceLock<Dates> = std::sync::OnceLock::new();
    let dates = UTC.get_or_init(|| Dates::new(TimeZone::UTC));
    dates.find(line, SystemTime::now()).map(|f| f.span)
}

/// Finds and reads the timestamps of lines.
#[derive(Debug, Clone)]
pub struct Dates {
    /// The zone of dates that carry none.
    tz: TimeZone,
    /// Where the date is and how it reads, when the automatic formats are not the answer.
    pattern: Option<DatePattern>,
}

impl Default for Dates {
    fn default() -> Self {
        Dates::new(system_zone())
    }
}

/// The system's time zone, the one `TimeZone::system` finds. Its common case, `TZ` unset and
/// `/etc/localtime` a link into a zoneinfo directory, is read here from the link: jiff would
/// first index every name in the zoneinfo directory (some 900 files on Debian, 3.7 ms of a
/// daemon's start, and 65 KB it keeps) to look up the name the link already gives. Anything
/// else is jiff's to find.
fn system_zone() -> TimeZone {
    std::env::var_os("TZ")
        .is_none()
        .then(|| linked_localtime(Path::new("/etc/localtime")))
        .flatten()
        .unwrap_or_else(TimeZone::system)
}

/// The zone of `path`, a link into a zoneinfo directory, named as jiff names it: the link's
/// target after its last `zoneinfo/`. Every jail without a `logtimezone` asks: they share one
/// zone for as long as the link's name and the file's bytes stay the same (a reload after
/// `timedatectl set-timezone` or a tzdata update reads the new one).
fn linked_localtime(path: &Path) -> Option<TimeZone> {
    static LAST: Mutex<Option<(String, Vec<u8>, TimeZone)>> = Mutex::new(None);
    let target = std::fs::read_link(path).ok()?;
    let (_, name) = target.to_str()?.rsplit_once("zoneinfo/")?;
    let data = std::fs::read(path).ok()?;
    let mut last = LAST.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some((n, d, tz)) = &*last
        && n == name
        && *d == data
    {
        return Some(tz.clone());
    }
    let tz = TimeZone::tzif(name, &data).ok()?;
    *last = Some((name.to_owned(), data, tz.clone()));
    Some(tz)
}

impl Dates {
    /// Reads zoneless dates in `tz`.
    pub fn new(tz: TimeZone) -> Dates {
        Dates { tz, pattern: None }
    }

    /// The same, reading dates where and as `pattern` says.
    pub fn with_pattern(mut self, pattern: DatePattern) -> Dates {
        self.pattern = Some(pattern);
        self
    }

    /// The zone of dates that carry none, as `logtimezone` writes it (`Europe/Berlin`, or
    /// an offset such as `+01:00` for a fixed zone).
    pub fn zone_name(&self) -> String {
        match self.tz.iana_name() {
            Some(name) => name.to_owned(),
            None => self
                .tz
                .to_fixed_offset()
                .map_or_else(|_| "UTC".to_owned(), |o| o.to_string()),
        }
    }

    /// The time zone named `name` (IANA name such as `Europe/Berlin`, or `UTC`), or an offset
    /// such as `+01:00`.
    pub fn zone(name: &str) -> Option<TimeZone> {
        if let Some(offset) = offset(&mut Cursor::new(name.as_bytes()))
            .filter(|_| !name.is_empty() && !name.eq_ignore_ascii_case("z"))
        {
            return Some(TimeZone::fixed(offset));
        }
        TimeZone::get(name).ok()
    }

    /// The logger's timestamp of `line`, with `now` deciding the year of yearless dates.
    pub fn find(&self, line: &str, now: SystemTime) -> Option<Found> {
        self.find_with(line, &self.now(now))
    }

    fn find_with(&self, line: &str, now: &Now) -> Option<Found> {
        match &self.pattern {
            Some(pattern) => pattern.find(self, line, now),
            None => self.find_auto(line, now),
        }
    }

    /// The timestamp of `line` in one of the automatic formats.
    pub(super) fn find_auto(&self, line: &str, now: &Now) -> Option<Found> {
        let bytes = line.as_bytes();
        if bytes.first() == Some(&b'{') {
            return self.json(bytes, now);
        }
        self.parse_at(bytes, lead(bytes), now)
            .or_else(|| self.clf(bytes, now))
            .or_else(|| self.ctime_inside(bytes, now))
    }

    /// A whole ctime date (weekday, month, day, clock, year) after a space, a bracket or a
    /// parenthesis anywhere in the line; the first one. A partial one (no weekday or no
    /// year) is not taken: `Failed password for Jan 01 00:00:00` is a user name.
    fn ctime_inside(&self, bytes: &[u8], now: &Now) -> Option<Found> {
        const DAYS: [&[u8]; 7] = [
            b"Mon ", b"Tue ", b"Wed ", b"Thu ", b"Fri ", b"Sat ", b"Sun ",
        ];
        let mut from = 1;
        while let Some(at) = memchr::memchr3(b' ', b'[', b'(', bytes.get(from..)?).map(|i| from + i)
        {
            from = at + 1;
            let start = at + 1;
            if !DAYS.iter().any(|d| bytes[start..].starts_with(d)) {
                continue;
            }
            let mut c = Cursor { b: bytes, i: start };
            let Some(ts) = self.syslog(&mut c, now, None) else {
                continue;
            };
            let year_written = c.i >= start + 5
                && bytes[c.i - 4..c.i].iter().all(u8::is_ascii_digit)
                && bytes[c.i - 5] == b' ';
            if !year_written || c.peek().is_some_and(|b| b.is_ascii_alphanumeric()) {
                continue;
            }
            return Some(Found {
                at: SystemTime::from(ts),
                format: Format::CtimeInside,
                span: (start, c.i),
            });
        }
        None
    }

    /// A JSON log line: the value of its `ts`, `time`, `timestamp` or `@timestamp` key. Keys
    /// inside string values are escaped (`\"ts\":`), so only the logger's own keys match.
    fn json(&self, bytes: &[u8], now: &Now) -> Option<Found> {
        const KEYS: [&[u8]; 4] = [
            b"\"ts\":",
            b"\"time\":",
            b"\"timestamp\":",
            b"\"@timestamp\":",
        ];
        let head = &bytes[..bytes.len().min(JSON_SCAN)];
        KEYS.iter().find_map(|key| {
            let at = head.windows(key.len()).position(|w| w == *key)?;
            if at > 0 && head[at - 1] == b'\\' {
                return None;
            }
            let mut start = at + key.len();
            while matches!(bytes.get(start), Some(b' ' | b'"')) {
                start += 1;
            }
            self.parse_at(bytes, start, now)
        })
    }

    fn parse_at(&self, bytes: &[u8], start: usize, now: &Now) -> Option<Found> {
        let first = *bytes.get(start)?;
        let mut c = Cursor { b: bytes, i: start };
        let (at, format) = if first.is_ascii_digit() {
            if let Some(at) = self.numeric(&mut c, now) {
                at
            } else {
                c.i = start;
                epoch(&mut c)?
            }
        } else if first.is_ascii_uppercase() {
            match self.syslog(&mut c, now, None) {
                Some(at) => (at, Format::Syslog),
                // `[CET Nov 21 10:00:00]` (Monit): a zone's abbreviation, then the date.
                None => {
                    c.i = start;
                    let zone = abbreviation(&mut c)?;
                    c.expect(b' ')?;
                    (self.syslog(&mut c, now, Some(zone))?, Format::Syslog)
                }
            }
        } else {
            return None;
        };
        // A timestamp ends at a word boundary: `2026-11-21 10:00:00x` is not one.
        if c.peek().is_some_and(|b| b.is_ascii_alphanumeric()) {
            return None;
        }
        Some(Found {
            at: SystemTime::from(at),
            format,
            span: (start, c.i),
        })
    }

    /// A date that starts with a digit, in fail2ban's order of preference: year first
    /// (`YYYY-MM-DD`, `YYYY/MM/DD`, `YYYY.MM.DD`), day first (`DD-MM-YYYY`, `DD/MM/YY`,
    /// `DD-Mon-YYYY`), then `YYMMDD`.
    fn numeric(&self, c: &mut Cursor, now: &Now) -> Option<(Timestamp, Format)> {
        let start = c.i;
        if let Some(found) = self.year_first(c, now) {
            return Some(found);
        }
        c.i = start;
        if let Some(found) = self.day_first(c, now) {
            return Some(found);
        }
        c.i = start;
        self.compact(c, now)
    }

    /// `DD-MM-YYYY hh:mm:ss`, `DD/MM/YYYY`, two-digit years; `DD-Mon-YYYY hh:mm:ss[.frac][ zone]`.
    fn day_first(&self, c: &mut Cursor, now: &Now) -> Option<(Timestamp, Format)> {
        let day = c.digits(2)?;
        let sep = c.next().filter(|b| matches!(b, b'-' | b'/'))?;
        let (month, format) = match c.peek()? {
            b'0'..=b'9' => (c.digits(2)?, Format::DayFirst),
            _ if sep == b'-' => (c.month().filter(|m| *m > 0)?, Format::DayMonthName),
            _ => return None,
        };
        c.expect(sep)?;
        let year = match c.digits(4) {
            Some(y) => y,
            None => 2000 + c.digits(2)?,
        };
        if !matches!(c.next()?, b' ' | b':') {
            return None;
        }
        let (hour, minute, second, nanos) = clock(c)?;
        let dt = civil(year, month, day, hour, minute, second, nanos)?;
        Some((self.resolve(dt, offset(c), now)?, format))
    }

    /// `YYMMDD  h:mm:ss` (one or two spaces).
    fn compact(&self, c: &mut Cursor, now: &Now) -> Option<(Timestamp, Format)> {
        let (year, month, day) = (c.digits(2)?, c.digits(2)?, c.digits(2)?);
        c.expect(b' ')?;
        if c.peek() == Some(b' ') {
            c.i += 1;
        }
        let (hour, minute, second, nanos) = clock(c)?;
        let dt = civil(2000 + year, month, day, hour, minute, second, nanos)?;
        Some((self.resolve(dt, None, now)?, Format::Compact))
    }

    /// `YYYY-MM-DD[T ]hh:mm:ss[.frac][zone]`, `YYYY/MM/DD hh:mm:ss` or `YYYY.MM.DD …`; two
    /// spaces and a one-digit hour too (MySQL).
    fn year_first(&self, c: &mut Cursor, now: &Now) -> Option<(Timestamp, Format)> {
        let year = c.digits(4)?;
        let sep = c.next()?;
        let format = match sep {
            b'-' => Format::Iso8601,
            b'/' => Format::Slashed,
            b'.' => Format::Dotted,
            _ => return None,
        };
        let month = c.digits(2)?;
        c.expect(sep)?;
        let day = c.digits(2)?;
        match c.next()? {
            b'T' => {}
            b' ' => {
                if c.peek() == Some(b' ') {
                    c.i += 1;
                }
            }
            _ => return None,
        }
        let (hour, minute, second, nanos) = clock(c)?;
        let dt = civil(year, month, day, hour, minute, second, nanos)?;
        let zone = if c.peek() == Some(b' ') && c.rest().starts_with(b" UTC") {
            c.i += 4;
            Some(Offset::UTC)
        } else {
            offset(c)
        };
        Some((self.resolve(dt, zone, now)?, format))
    }

    /// `[Www ]Mon [D]D hh:mm:ss[ YYYY]`.
    fn syslog(&self, c: &mut Cursor, now: &Now, zone: Option<Offset>) -> Option<Timestamp> {
        let mut month = c.month()?;
        if month == 0 {
            // A weekday came first (ctime): the month follows.
            c.expect(b' ')?;
            month = c.month().filter(|m| *m > 0)?;
        }
        if c.peek() == Some(b'-') {
            // `Mon-DD-YY hh:mm:ss` (ASSP).
            c.i += 1;
            let day = c.digits(2)?;
            c.expect(b'-')?;
            let year = 2000 + c.digits(2)?;
            c.expect(b' ')?;
            let (hour, minute, second, nanos) = clock(c)?;
            return self.resolve(
                civil(year, month, day, hour, minute, second, nanos)?,
                zone,
                now,
            );
        }
        c.expect(b' ')?;
        if c.peek() == Some(b' ') {
            c.i += 1;
        }
        let day = c.up_to_digits(2)?;
        c.expect(b' ')?;
        // `Mon DD YYYY hh:mm:ss` (macOS).
        let save = c.i;
        if let Some(year) = c.digits(4)
            && c.expect(b' ').is_some()
            && let Some((hour, minute, second, nanos)) = clock(c)
        {
            return self.resolve(
                civil(year, month, day, hour, minute, second, nanos)?,
                zone,
                now,
            );
        }
        c.i = save;
        let (hour, minute, second, nanos) = clock(c)?;
        let save = c.i;
        if c.next() == Some(b' ')
            && let Some(year) = c.digits(4)
        {
            return self.resolve(
                civil(year, month, day, hour, minute, second, nanos)?,
                zone,
                now,
            );
        }
        c.i = save;
        self.yearless(now, zone, |year| {
            civil(year, month, day, hour, minute, second, nanos)
        })
    }

    /// A date without a year (`date(year)`): the latest year that does not put it more than
    /// a day ahead of `now`, back far enough for a 29th of February.
    fn yearless(
        &self,
        now: &Now,
        zone: Option<Offset>,
        date: impl Fn(u32) -> Option<DateTime>,
    ) -> Option<Timestamp> {
        let (now_ts, today) = now.today?;
        let limit = now_ts.as_second() + 86_400;
        // Next year is that close only in this year's last days: a zone's day is never cut
        // short by more than one (Samoa skipped 30 December 2011), so next year is not tried
        // before the 28th of December. `yearless_dates_skip_next_year_only_where_it_cannot_be`
        // holds this to trying every year.
        let latest = match today.month() == 12 && today.day() >= 28 {
            true => today.year() + 1,
            false => today.year(),
        };
        (today.year() - 8..=latest)
            .rev()
            .filter_map(|y| self.resolve(date(u32::try_from(y).ok()?)?, zone, now))
            .find(|t| t.as_second() <= limit)
    }

    /// `[DD/Mon/YYYY:hh:mm:ss ±zzzz] "`: the access log date, followed by the quoted request.
    /// The fields before it (the user name among them) cannot hold a `"` (Apache and nginx
    /// escape it), so a date planted in them is never followed by one.
    fn clf(&self, bytes: &[u8], now: &Now) -> Option<Found> {
        let head = &bytes[..bytes.len().min(CLF_SCAN)];
        head.iter()
            .enumerate()
            .filter(|(_, b)| **b == b'[')
            .find_map(|(i, _)| self.clf_at(&mut Cursor { b: bytes, i: i + 1 }, i + 1, true, now))
    }

    /// `text`, all of it, as a date in one of the automatic formats (`{DATE}`).
    pub(super) fn read_token(&self, text: &str, now: &Now) -> Option<SystemTime> {
        let bytes = text.as_bytes();
        let whole = |f: Found| (f.span.1 == bytes.len()).then_some(f.at);
        self.parse_at(bytes, 0, now).and_then(whole).or_else(|| {
            self.clf_at(&mut Cursor::new(bytes), 0, false, now)
                .and_then(whole)
        })
    }

    /// The access log date at `c`; `quoted`: followed by `] "`, as in a whole line.
    fn clf_at(&self, c: &mut Cursor, start: usize, quoted: bool, now: &Now) -> Option<Found> {
        let day = c.digits(2)?;
        c.expect(b'/')?;
        let month = c.month().filter(|m| *m > 0)?;
        c.expect(b'/')?;
        let year = c.digits(4)?;
        c.expect(b':')?;
        let (hour, minute, second, nanos) = clock(c)?;
        // Without a zone (some proxies write none, or a blank): the log's zone, as fail2ban.
        let zone = offset(c);
        if zone.is_none() && c.peek() == Some(b' ') {
            c.i += 1;
        }
        if quoted && !c.rest().starts_with(b"] \"") {
            return None;
        }
        let at = self.resolve(
            civil(year, month, day, hour, minute, second, nanos)?,
            zone,
            now,
        )?;
        Some(Found {
            at: SystemTime::from(at),
            format: Format::Clf,
            span: (start, c.i),
        })
    }

    /// The instant of `dt`, a local time in `zone`, or in the log's zone when it names none.
    /// A date in the stretch of the log's zone that the one before it fell in is read with
    /// that stretch's offset alone ([`Steady`]); another one asks the zone, and keeps the
    /// stretch around its answer for the dates after it.
    pub(super) fn resolve(
        &self,
        dt: DateTime,
        zone: Option<Offset>,
        now: &Now,
    ) -> Option<Timestamp> {
        if let Some(offset) = zone {
            return offset.to_timestamp(dt).ok();
        }
        if let Some(steady) = now.steady.get()
            && let Ok(at) = steady.offset.to_timestamp(dt)
            && (steady.from..steady.until).contains(&at.as_second())
        {
            return Some(at);
        }
        let at = self.tz.to_timestamp(dt).ok()?;
        now.steady.set(Steady::around(&self.tz, at));
        Some(at)
    }

    /// What reading dates against `now` needs, worked out once for every line read so.
    pub(super) fn now(&self, now: SystemTime) -> Now {
        let today = Timestamp::try_from(now)
            .ok()
            .map(|ts| (ts, self.tz.to_datetime(ts).date()));
        Now {
            today,
            steady: Cell::new(None),
        }
    }

    /// Reads the dates of lines against one `now` ([`DateReader::find`] is [`Dates::find`]),
    /// each for less: what `now` decides is worked out once, and the zone's offset is kept
    /// from one date to the next.
    pub fn reader(&self, now: SystemTime) -> DateReader<'_> {
        DateReader {
            dates: self,
            now: self.now(now),
        }
    }
}

/// Reads the dates of many lines against one "now" ([`Dates::reader`]).
#[derive(Debug)]
pub struct DateReader<'d> {
    dates: &'d Dates,
    now: Now,
}

impl DateReader<'_> {
    /// The logger's timestamp of `line`: what [`Dates::find`] gives with this reader's now.
    pub fn find(&self, line: &str) -> Option<Found> {
        self.dates.find_with(line, &self.now)
    }
}

/// "Now", as reading dates needs it ([`Dates::now`]): the instant and its date in the log's
/// zone (`None` outside the range of dates), and the zone's steady stretch around the last
/// date read.
#[derive(Debug)]
pub(super) struct Now {
    pub(super) today: Option<(Timestamp, Date)>,
    steady: Cell<Option<Steady>>,
}

/// Offsets differ by less than this (jiff bounds them to ±25:59:59, so by under 52 hours).
const CLEAR: i64 = 3 * 86_400;

/// A stretch of time in which a zone has one offset and which lies more than [`CLEAR`] away
/// from the zone's transitions: a local time that `offset` puts inside it is put there by the
/// zone, and by nothing else. (Were the zone to give it another offset `o'` at an instant
/// `t'`, `t'` would lie within 52 hours of the stretch, so between the same transitions,
/// where the offset is `offset`.) So no time read there is ambiguous or skipped, and
/// [`Dates::resolve`] reads it with `offset` alone: what the zone's lookup gives, as
/// `a_steady_stretch_reads_dates_as_the_zone_does` checks across zones and transitions.
#[derive(Debug, Clone, Copy)]
struct Steady {
    offset: Offset,
    /// Unix seconds, `from` included.
    from: i64,
    until: i64,
}

impl Steady {
    /// The stretch around instant `at` of `tz`; `None` when its bounds cannot be told.
    fn around(tz: &TimeZone, at: Timestamp) -> Option<Steady> {
        let offset = tz.to_offset(at);
        // The transitions around `at`: the last at or before it, the first after it.
        let last = tz
            .preceding(at.checked_add(jiff::SignedDuration::from_nanos(1)).ok()?)
            .next();
        let next = tz.following(at).next();
        if last.as_ref().is_some_and(|t| t.offset() != offset) {
            return None;
        }
        let from = last.map_or(i64::MIN, |t| {
            t.timestamp().as_second().saturating_add(CLEAR)
        });
        let until = next.map_or(i64::MAX, |t| {
            t.timestamp().as_second().saturating_sub(CLEAR)
        });
        Some(Steady {
            offset,
            from,
            until,
        })
    }
}

/// Where the logger's timestamp starts: after an RFC 5424 or RFC 3164 priority (`<34>1 `,
/// `<34>`) and any opening brackets or blanks.
fn lead(bytes: &[u8]) -> usize {
    let mut i = 0;
    if bytes.first() == Some(&b'<')
        && let Some(close) = bytes.iter().take(5).position(|b| *b == b'>')
    {
        i = close + 1;
        if bytes.get(i).is_some_and(u8::is_ascii_digit) && bytes.get(i + 1) == Some(&b' ') {
            i += 2;
        }
    }
    while matches!(bytes.get(i), Some(b'[' | b'(' | b' ')) {
        i += 1;
    }
    i
}

/// A time zone's abbreviation as loggers write it before a date (`CET`, `UTC`), as an offset;
/// `None` for one that is unknown or means several offsets.
fn abbreviation(c: &mut Cursor) -> Option<Offset> {
    let len = c
        .rest()
        .iter()
        .take(5)
        .take_while(|b| b.is_ascii_uppercase())
        .count();
    let word = c.rest().get(..len)?;
    let hours: i8 = match word {
        b"UTC" | b"GMT" | b"UT" | b"WET" => 0,
        b"CET" | b"WEST" | b"BST" | b"MET" => 1,
        b"CEST" | b"EET" | b"MEST" | b"SAST" => 2,
        b"EEST" | b"MSK" => 3,
        b"EST" => -5,
        b"EDT" => -4,
        b"CDT" => -5,
        b"MST" => -7,
        b"MDT" => -6,
        b"PST" => -8,
        b"PDT" => -7,
        b"JST" | b"KST" => 9,
        _ => return None,
    };
    c.i += len;
    Offset::from_hours(hours).ok()
}

/// Unix seconds (10 digits, optional fraction) or milliseconds (13 digits) from 2001 to 2286.
fn epoch(c: &mut Cursor) -> Option<(Timestamp, Format)> {
    let start = c.i;
    while c.peek().is_some_and(|b| b.is_ascii_digit()) {
        c.i += 1;
    }
    let digits = std::str::from_utf8(&c.b[start..c.i]).ok()?;
    match digits.len() {
        10 => {
            let secs: i64 = digits.parse().ok()?;
            let mut nanos = 0;
            if c.peek() == Some(b'.') {
                c.i += 1;
                nanos = c.fraction()?;
            }
            Some((
                Timestamp::new(secs, i32::try_from(nanos).ok()?).ok()?,
                Format::Epoch,
            ))
        }
        13 => Some((
            Timestamp::from_millisecond(digits.parse().ok()?).ok()?,
            Format::EpochMillis,
        )),
        _ => None,
    }
}

/// `hh:mm:ss[.frac|,frac]`.
fn clock(c: &mut Cursor) -> Option<(u32, u32, u32, u32)> {
    let hour = c.up_to_digits(2)?;
    c.expect(b':')?;
    let minute = c.digits(2)?;
    c.expect(b':')?;
    let second = c.digits(2)?;
    let nanos = if matches!(c.peek(), Some(b'.' | b',')) {
        c.i += 1;
        c.fraction()?
    } else {
        0
    };
    Some((hour, minute, second, nanos))
}

/// `Z`, `±hh:mm`, `±hhmm` or `±hh`, optionally after one space.
fn offset(c: &mut Cursor) -> Option<Offset> {
    let save = c.i;
    if c.peek() == Some(b' ') {
        c.i += 1;
    }
    let found = (|| match c.next()? {
        b'Z' => Some(Offset::UTC),
        sign @ (b'+' | b'-') => {
            let hours = c.digits(2)?;
            if c.peek() == Some(b':') {
                c.i += 1;
            }
            let minutes = c.digits(2).unwrap_or(0);
            let secs = i32::try_from(hours * 3600 + minutes * 60).ok()?;
            Offset::from_seconds(if sign == b'-' { -secs } else { secs }).ok()
        }
        _ => None,
    })();
    if found.is_none() {
        c.i = save;
    }
    found
}

fn civil(
    year: u32,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
    nanos: u32,
) -> Option<DateTime> {
    // A leap second (`:60`) is read as the last second of its minute.
    let second = second.min(59);
    DateTime::new(
        i16::try_from(year).ok()?,
        i8::try_from(month).ok()?,
        i8::try_from(day).ok()?,
        i8::try_from(hour).ok()?,
        i8::try_from(minute).ok()?,
        i8::try_from(second).ok()?,
        i32::try_from(nanos).ok()?,
    )
    .ok()
}

struct Cursor<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Cursor<'a> {
    fn new(b: &'a [u8]) -> Cursor<'a> {
        Cursor { b, i: 0 }
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.i += 1;
        Some(b)
    }

    fn rest(&self) -> &'a [u8] {
        self.b.get(self.i..).unwrap_or_default()
    }

    fn expect(&mut self, want: u8) -> Option<()> {
        (self.next()? == want).then_some(())
    }

    /// Exactly `n` ASCII digits.
    fn digits(&mut self, n: usize) -> Option<u32> {
        let field = self.b.get(self.i..self.i + n)?;
        let mut value = 0;
        for b in field {
            if !b.is_ascii_digit() {
                return None;
            }
            value = value * 10 + u32::from(b - b'0');
        }
        self.i += n;
        Some(value)
    }

    /// One to `n` ASCII digits.
    fn up_to_digits(&mut self, n: usize) -> Option<u32> {
        let len = self
            .rest()
            .iter()
            .take(n)
            .take_while(|b| b.is_ascii_digit())
            .count();
        if len == 0 {
            return None;
        }
        self.digits(len)
    }

    /// Digits after a decimal point, as nanoseconds (extra precision is dropped).
    fn fraction(&mut self) -> Option<u32> {
        let len = self
            .rest()
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        if len == 0 {
            return None;
        }
        let kept = len.min(9);
        let value = self.digits(kept)? * 10u32.pow(u32::try_from(9 - kept).ok()?);
        self.i += len - kept;
        Some(value)
    }

    /// An English month (1–12) or weekday (0) abbreviation.
    fn month(&mut self) -> Option<u32> {
        const MONTHS: [&[u8; 3]; 12] = [
            b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov",
            b"Dec",
        ];
        const DAYS: [&[u8; 3]; 7] = [b"Mon", b"Tue", b"Wed", b"Thu", b"Fri", b"Sat", b"Sun"];
        let word = self.b.get(self.i..self.i + 3)?;
        let value = if let Some(m) = MONTHS.iter().position(|m| m.as_slice() == word) {
            u32::try_from(m + 1).ok()?
        } else if DAYS.iter().any(|d| d.as_slice() == word) {
            0
        } else {
            return None;
        };
        self.i += 3;
        Some(value)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn at(rfc3339: &str) -> SystemTime {
        SystemTime::from(rfc3339.parse::<Timestamp>().unwrap())
    }

    fn find(tz: &str, line: &str, now: &str) -> Option<(String, Format)> {
        let dates = Dates::new(Dates::zone(tz).unwrap());
        dates.find(line, at(now)).map(|f| {
            let ts = Timestamp::try_from(f.at).unwrap();
            (ts.to_string(), f.format)
        })
    }

    const NOW: &str = "2026-11-21T12:00:00Z";

    #[test]
    fn a_linked_localtime_is_the_zone_it_links_to_by_that_name() {
        let Ok(berlin) = TimeZone::get("Europe/Berlin") else {
            return; // no zoneinfo on this machine
        };
        let dir = std::env::temp_dir().join(format!("banctl-localtime-{}", std::process::id()));
        let zone = dir.join("share/zoneinfo/Europe");
        std::fs::create_dir_all(&zone).unwrap();
        let data = std::fs::read("/usr/share/zoneinfo/Europe/Berlin").unwrap();
        std::fs::write(zone.join("Berlin"), data).unwrap();
        let link = dir.join("localtime");
        std::os::unix::fs::symlink("share/zoneinfo/Europe/Berlin", &link).unwrap();
        let linked = linked_localtime(&link).unwrap();
        assert_eq!(linked.iana_name(), Some("Europe/Berlin"));
        assert_same_offsets(&linked, &berlin);
        // Linked to another zone, it is that zone: what an earlier call read is not kept.
        let zone = dir.join("share/zoneinfo/America");
        std::fs::create_dir_all(&zone).unwrap();
        let data = std::fs::read("/usr/share/zoneinfo/America/New_York").unwrap();
        std::fs::write(zone.join("New_York"), data).unwrap();
        std::fs::remove_file(&link).unwrap();
        std::os::unix::fs::symlink("share/zoneinfo/America/New_York", &link).unwrap();
        let relinked = linked_localtime(&link).unwrap();
        assert_eq!(relinked.iana_name(), Some("America/New_York"));
        assert_same_offsets(&relinked, &TimeZone::get("America/New_York").unwrap());
        // A plain file, or a link elsewhere, is left to jiff.
        std::fs::write(dir.join("plain"), b"TZif").unwrap();
        assert!(linked_localtime(&dir.join("plain")).is_none());
        std::os::unix::fs::symlink("plain", dir.join("other")).unwrap();
        assert!(linked_localtime(&dir.join("other")).is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_system_zone_is_the_one_jiff_finds() {
        let (ours, jiffs) = (system_zone(), TimeZone::system());
        assert_eq!(ours.iana_name(), jiffs.iana_name());
        assert_same_offsets(&ours, &jiffs);
    }

    /// `a` and `b` give the same offset at instants around DST changes and far from them.
    fn assert_same_offsets(a: &TimeZone, b: &TimeZone) {
        for secs in [
            0,
            1_700_000_000,
            1_711_846_800,
            1_729_990_800,
            2_000_000_000,
        ] {
            let at = Timestamp::from_second(secs).unwrap();
            assert_eq!(a.to_offset(at), b.to_offset(at), "at {at}");
        }
    }

    #[test]
    fn common_formats() {
        let cases = [
            (
                "2026-11-21T10:00:00.250+01:00 host sshd[1]: x",
                "2026-11-21T09:00:00.25Z",
                Format::Iso8601,
            ),
            (
                "2026-11-21 10:00:00,5 WARN x",
                "2026-11-21T10:00:00.5Z",
                Format::Iso8601,
            ),
            (
                "<34>1 2026-11-21T10:00:00Z host app - - - x",
                "2026-11-21T10:00:00Z",
                Format::Iso8601,
            ),
            (
                "2026/11/21 10:00:00 [error] 12#12: x",
                "2026-11-21T10:00:00Z",
                Format::Slashed,
            ),
            (
                "Nov 21 10:00:00 host sshd[1]: x",
                "2026-11-21T10:00:00Z",
                Format::Syslog,
            ),
            (
                "Nov  1 10:00:00 host sshd[1]: x",
                "2026-11-01T10:00:00Z",
                Format::Syslog,
            ),
            (
                "Sat Nov 21 10:00:00 2026 us=1 x",
                "2026-11-21T10:00:00Z",
                Format::Syslog,
            ),
            (
                "198.51.100.7 - bob [21/Nov/2026:10:00:00 +0100] \"GET / HTTP/1.1\" 401",
                "2026-11-21T09:00:00Z",
                Format::Clf,
            ),
            ("1763719200.5 x", "2025-11-21T10:00:00.5Z", Format::Epoch),
            (
                "[1763719200123] x",
                "2025-11-21T10:00:00.123Z",
                Format::EpochMillis,
            ),
            (
                r#"{"level":"error","ts":"2026-11-21T10:00:00Z","msg":"x"}"#,
                "2026-11-21T10:00:00Z",
                Format::Iso8601,
            ),
            (
                "[Sat Nov 21 10:00:00.123456 2026] [auth_basic:error] [client 1.2.3.4:5] x",
                "2026-11-21T10:00:00.123456Z",
                Format::Syslog,
            ),
            (
                "<38>Nov 21 10:00:00 host sshd[1]: x",
                "2026-11-21T10:00:00Z",
                Format::Syslog,
            ),
            (
                "2026-11-21 10:00:00.123 UTC [7] FATAL: x",
                "2026-11-21T10:00:00.123Z",
                Format::Iso8601,
            ),
        ];
        for (line, want, format) in cases {
            assert_eq!(
                find("UTC", line, NOW),
                Some((want.to_string(), format)),
                "{line}"
            );
        }
    }

    #[test]
    fn fail2ban_default_templates_services_write() {
        for (line, want, format) in [
            (
                "30-11-2026 10:00:01 x",
                "2026-11-30T10:00:01Z",
                Format::DayFirst,
            ),
            (
                "05/11/2026 10:00:10 x",
                "2026-11-05T10:00:10Z",
                Format::DayFirst,
            ),
            (
                "30/11/26 9:00:00 x",
                "2026-11-30T09:00:00Z",
                Format::DayFirst,
            ),
            (
                "2026.11.30 10:00:03 x",
                "2026-11-30T10:00:03Z",
                Format::Dotted,
            ),
            (
                "30-Nov-2026 10:00:04.123 x",
                "2026-11-30T10:00:04.123Z",
                Format::DayMonthName,
            ),
            (
                "[30-Nov-2026 10:00:11 +0100] x",
                "2026-11-30T09:00:11Z",
                Format::DayMonthName,
            ),
            ("261130  1:00:05 x", "2026-11-30T01:00:05Z", Format::Compact),
            (
                "2026-11-30  1:00:06 x",
                "2026-11-30T01:00:06Z",
                Format::Iso8601,
            ),
            (
                "Nov-30-26 10:00:07 x",
                "2026-11-30T10:00:07Z",
                Format::Syslog,
            ),
            (
                "Nov 30 2026 10:00:08 x",
                "2026-11-30T10:00:08Z",
                Format::Syslog,
            ),
            (
                "[Nov 30 10:00:09] x",
                "2026-11-30T10:00:09Z",
                Format::Syslog,
            ),
            (
                "[CET Nov 30 10:00:01] x",
                "2026-11-30T09:00:01Z",
                Format::Syslog,
            ),
            (
                "[CEST Nov 30 10:00:06] x",
                "2026-11-30T08:00:06Z",
                Format::Syslog,
            ),
            (
                "192.0.2.9 - - [30/Nov/2026:10:00:02] \"GET / HTTP/1.1\" 401",
                "2026-11-30T10:00:02Z",
                Format::Clf,
            ),
            (
                "192.0.2.9 - - [30/Nov/2026:10:00:03 ] \"GET / HTTP/1.1\" 401",
                "2026-11-30T10:00:03Z",
                Format::Clf,
            ),
        ] {
            let got = find("UTC", line, "2026-12-01T00:00:00Z");
            assert_eq!(got, Some((want.to_owned(), format)), "{line}");
        }
        // Month first with slashes is no default template (SquirrelMail says so with its
        // datepattern); neither is a seventh digit nor a 32nd day.
        for line in [
            "11/30/2026 10:00:02 x",
            "2611301 1:00:05 x",
            "32-11-2026 10:00:00 x",
            "[XYZ Nov 30 10:00:01] x",
        ] {
            assert_eq!(find("UTC", line, "2026-12-01T00:00:00Z"), None, "{line}");
        }
    }

    #[test]
    fn zoneless_dates_are_read_in_the_log_zone() {
        let got = find("Europe/Berlin", "Nov 21 10:00:00 host x", NOW).unwrap();
        assert_eq!(got.0, "2026-11-21T09:00:00Z");
        let got = find("+05:30", "2026-11-21 10:00:00 x", NOW).unwrap();
        assert_eq!(got.0, "2026-11-21T04:30:00Z");
        // A date with its own zone ignores the log zone.
        let got = find("Europe/Berlin", "2026-11-21T10:00:00Z x", NOW).unwrap();
        assert_eq!(got.0, "2026-11-21T10:00:00Z");
    }

    #[test]
    fn syslog_year_across_new_year() {
        let got = find("UTC", "Dec 31 23:59:59 host x", "2027-01-01T00:00:30Z").unwrap();
        assert_eq!(got.0, "2026-12-31T23:59:59Z");
        let got = find("UTC", "Jan  1 00:00:10 host x", "2026-12-31T23:59:50Z").unwrap();
        assert_eq!(got.0, "2027-01-01T00:00:10Z", "a clock slightly ahead");
        let got = find("UTC", "Feb 29 10:00:00 host x", "2026-03-01T00:00:00Z");
        assert_eq!(got.unwrap().0, "2024-02-29T10:00:00Z", "the last leap year");
    }

    /// The year of a yearless date, found without trying next year before the 28th of
    /// December, is the one trying every year finds: across new year and leap days, in zones
    /// far from UTC, one that skipped a day (Samoa, December 2011) and one that moves by half
    /// an hour (Lord Howe), for dates around `now` and around new year.
    #[test]
    fn yearless_dates_skip_next_year_only_where_it_cannot_be() {
        let zones = [
            "UTC",
            "Europe/Berlin",
            "America/New_York",
            "Pacific/Apia",
            "Australia/Lord_Howe",
            "Pacific/Kiritimati",
            "Etc/GMT+12",
        ];
        let starts = [
            "2011-12-20T00:00:00Z",
            "2023-12-20T00:00:00Z",
            "2026-02-20T00:00:00Z",
        ];
        let mut compared = 0;
        for zone in zones {
            let dates = Dates::new(Dates::zone(zone).unwrap());
            // Every year tried, as the reference.
            let every_year = |now: SystemTime, date: &dyn Fn(u32) -> Option<DateTime>| {
                let ts = Timestamp::try_from(now).unwrap();
                let this_year = dates.tz.to_datetime(ts).year();
                (this_year - 8..=this_year + 1)
                    .rev()
                    .filter_map(|y| dates.tz.to_timestamp(date(u32::try_from(y).ok()?)?).ok())
                    .find(|t| t.as_second() <= ts.as_second() + 86_400)
            };
            for start in starts {
                let start: Timestamp = start.parse().unwrap();
                // Every 5 h 7 min for 16 days: through the year's end, or through February.
                for step in 0..75 {
                    let now = SystemTime::from(start) + Duration::from_secs(step * 18_420);
                    // One reader's now for all of them, its steady stretch kept throughout.
                    let reader = dates.now(now);
                    let today = dates.tz.to_datetime(Timestamp::try_from(now).unwrap());
                    let mut days = vec![
                        (1, 1),
                        (12, 31),
                        (12, 30),
                        (12, 29),
                        (2, 29),
                        (2, 28),
                        (3, 1),
                    ];
                    days.push((
                        u32::try_from(today.month()).unwrap(),
                        u32::try_from(today.day()).unwrap(),
                    ));
                    for (month, day) in days {
                        for (hour, minute) in [(0, 0), (0, 30), (12, 0), (23, 59)] {
                            let date = |y| civil(y, month, day, hour, minute, 30, 0);
                            assert_eq!(
                                dates.yearless(&reader, None, date),
                                every_year(now, &date),
                                "{zone}, now {now:?}, {month}-{day} {hour}:{minute}"
                            );
                            compared += 1;
                        }
                    }
                }
            }
        }
        assert!(compared > 10_000);
    }

    #[test]
    fn a_steady_stretch_reads_dates_as_the_zone_does() {
        let mut zones: Vec<TimeZone> = [
            "UTC",
            "Europe/Berlin",
            "America/New_York",
            "Pacific/Apia",
            "Australia/Lord_Howe",
            "Asia/Kolkata",
            "America/St_Johns",
            "Europe/Dublin",
        ]
        .iter()
        .filter_map(|name| TimeZone::get(name).ok())
        .collect();
        zones.push(TimeZone::posix("EST5EDT,M3.2.0,M11.1.0").unwrap());
        zones.push(TimeZone::fixed(jiff::tz::offset(-7)));
        assert!(zones.len() >= 3, "no zoneinfo on this machine");
        let start: DateTime = "2010-06-01T00:00:00".parse().unwrap();
        let mut compared = 0;
        for tz in zones {
            let dates = Dates::new(tz.clone());
            let now = dates.now(SystemTime::now());
            // Local times around each of the zone's transitions, 26 hours either side every
            // 13 minutes (and the odd second), then one every 3 h 7 min over four years in a
            // shuffled order, so that the kept stretch is used across jumps.
            let mut local: Vec<DateTime> = Vec::new();
            for t in tz
                .following("2010-01-01T00:00:00Z".parse().unwrap())
                .take_while(|t| t.timestamp().as_second() < 1_420_070_400)
            {
                let around = t.timestamp().to_zoned(tz.clone()).datetime();
                for k in -120i64..=120 {
                    let step = jiff::SignedDuration::from_secs(k * 780 + k.rem_euclid(7));
                    local.push(around.checked_add(step).unwrap());
                }
            }
            for k in 0..11_700 {
                let step = jiff::SignedDuration::from_secs(k * 11_220);
                local.push(start.checked_add(step).unwrap());
            }
            let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
            for i in (1..local.len()).rev() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                local.swap(i, (x % (i as u64 + 1)) as usize);
            }
            for dt in local {
                assert_eq!(
                    dates.resolve(dt, None, &now),
                    tz.to_timestamp(dt).ok(),
                    "{tz:?} {dt}"
                );
                compared += 1;
            }
        }
        assert!(compared > 30_000);
    }

    #[test]
    fn a_whole_ctime_date_inside_the_line_is_read_as_fail2ban_reads_it() {
        let got = find(
            "UTC",
            "app: login failed at Sat Nov 21 10:00:00 2026 from 192.0.2.5",
            "2026-11-30T00:00:00Z",
        )
        .unwrap();
        assert_eq!(got.0, "2026-11-21T10:00:00Z");
        let dates = Dates::new(TimeZone::UTC);
        let line = "[pid 7] (Sat Nov 21 10:00:01 2026) failure";
        let found = dates.find(line, SystemTime::now()).unwrap();
        assert_eq!(found.format, Format::CtimeInside);
        assert_eq!(
            &line[found.span.0..found.span.1],
            "Sat Nov 21 10:00:01 2026"
        );
        // Not whole: no weekday, or no year.
        for line in [
            "app: failed for Nov 21 10:00:00 2026 from 192.0.2.5",
            "app: failed for Sat Nov 21 10:00:00 from 192.0.2.5",
            "app: failed for Sat Nov 21 10:00:00 20261 from 192.0.2.5",
        ] {
            assert!(dates.find(line, SystemTime::now()).is_none(), "{line}");
        }
    }

    #[test]
    fn attacker_text_is_never_the_date() {
        // No timestamp at the start: a partial date inside the message is not the line's date
        // (a whole ctime one is, as fail2ban reads it; the daemon never dates by it).
        for line in [
            "sshd[1]: Invalid user 2001-01-01T00:00:00Z from 198.51.100.9",
            "Failed password for Jan 01 00:00:00 from 198.51.100.9 port 22",
            "x 946684800 y",
            "sshd[1]: Invalid user 1000000000 from 198.51.100.9",
        ] {
            assert_eq!(find("UTC", line, NOW), None, "{line}");
        }
        // An access log user carrying a date: the real one is the one before the request.
        let line =
            "198.51.100.7 - a [01/Jan/2001:00:00:00 +0000] [21/Nov/2026:10:00:00 +0000] \"GET /\"";
        assert_eq!(find("UTC", line, NOW).unwrap().0, "2026-11-21T10:00:00Z");
        // JSON: a key inside a value is escaped.
        let line = r#"{"level":"info","msg":"user \"ts\":946684800","ts":1763719200.5}"#;
        assert_eq!(find("UTC", line, NOW).unwrap().0, "2025-11-21T10:00:00.5Z");
    }

    #[test]
    fn malformed_dates_are_not_dates() {
        for line in [
            "2026-13-01 10:00:00 x",
            "2026-11-21 25:00:00 x",
            "2026-11-21 10:00:00x",
            "Foo 21 10:00:00 x",
            "12345678901 x",
            "",
            "Nov",
            "2026-11-",
            "[21/Nov/2026:10:00:00",
        ] {
            assert_eq!(find("UTC", line, NOW), None, "{line:?}");
        }
        // Any bytes at all: no panic.
        let dates = Dates::default();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1);
        for line in [
            "<",
            "<1>1",
            "[",
            "{\"ts\":",
            "Sat",
            "Sat Nov",
            "9999-12-31T23:59:59-23:59",
        ] {
            std::hint::black_box(dates.find(line, now));
        }
    }
}
