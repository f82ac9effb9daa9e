//! Five-field cron schedules (`minute hour day-of-month month day-of-week`) and their runs in
//! an IANA time zone, computed with jiff so daylight-saving changes follow one documented rule:
//!
//! - a run at a local time the clock skips (spring forward) starts as long after the change
//!   as it was due after the last time before it: 02:30 on a night that jumps from 02:00 to
//!   03:00 starts at 03:30 (jiff's "compatible" reading);
//! - a run at a local time the clock repeats (fall back) starts once, the first time, unless
//!   the hour field is `*` (the schedule runs every hour), in which case it starts both times,
//!   so "every 15 minutes" stays every 15 minutes of real time.
//!
//! Day of month and day of week combine as in Vixie cron (and Kubernetes CronJobs): when
//! either field starts with `*` both must match, otherwise either may.

use jiff::civil::{self, DateTime};
use jiff::tz::{AmbiguousOffset, TimeZone};
use jiff::{SignedDuration, Timestamp};

/// A schedule that cannot be read, with what is wrong in a sentence.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CronError(String);

/// The days of the week, Sunday first (cron's 0).
const WEEKDAYS: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

/// The months, January first (cron's 1).
const MONTHS: [&str; 12] = [
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];

/// How many years ahead a run is looked for before the schedule is said never to run: one
/// more than the longest gap between two 29 Februaries (2096 to 2104).
const HORIZON_YEARS: i16 = 9;

/// A parsed schedule: one bit per allowed value of each field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cron {
    minutes: u64,
    hours: u32,
    days: u32,
    months: u16,
    weekdays: u8,
    /// The day-of-month field starts with `*` (or `?`).
    days_star: bool,
    /// The day-of-week field starts with `*` (or `?`).
    weekdays_star: bool,
}

const ALL_HOURS: u32 = (1 << 24) - 1;

/// One field's allowed values, and whether it was written as `*`.
struct Field {
    bits: u64,
    star: bool,
}

/// Parses one field: a list of `*`, `n`, `a-b`, each optionally `/step`.
fn field(
    text: &str,
    what: &str,
    min: u32,
    max: u32,
    names: &[&str],
    first_name: u32,
) -> Result<Field, CronError> {
    let value = |v: &str| -> Result<u32, CronError> {
        if let Ok(n) = v.parse::<u32>() {
            if n < min || n > max {
                return Err(CronError(format!("{what} {n} is out of range {min}-{max}")));
            }
            return Ok(n);
        }
        names
            .iter()
            .position(|name| name.eq_ignore_ascii_case(v))
            .map(|i| i as u32 + first_name)
            .ok_or_else(|| CronError(format!("{what} {v:?} is not a number or a name")))
    };
    let mut bits = 0u64;
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((range, step)) => {
                let step = step.parse::<u32>().ok().filter(|s| *s > 0).ok_or_else(|| {
                    CronError(format!("{what} step {step:?} is not a positive number"))
                })?;
                (range, Some(step))
            }
            None => (part, None),
        };
        let (low, high) = if range == "*" || range == "?" {
            (min, max)
        } else if let Some((a, b)) = range.split_once('-') {
            let (a, b) = (value(a)?, value(b)?);
            if a > b {
                return Err(CronError(format!("{what} range {range} runs backwards")));
            }
            (a, b)
        } else {
            let a = value(range)?;
            // `a/n` is `a-max/n`, as in Vixie cron.
            (a, if step.is_some() { max } else { a })
        };
        let step = step.unwrap_or(1);
        let mut v = low;
        while v <= high {
            bits |= 1 << v;
            v += step;
        }
    }
    Ok(Field {
        bits,
        star: text.starts_with('*') || text.starts_with('?'),
    })
}

impl Cron {
    /// Parses a schedule: five fields, or one of `@yearly`, `@annually`, `@monthly`,
    /// `@weekly`, `@daily`, `@midnight`, `@hourly`.
    pub fn parse(text: &str) -> Result<Self, CronError> {
        let expanded = match text.trim() {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            other if other.starts_with('@') => {
                return Err(CronError(format!("unknown macro {other}")));
            }
            other => other,
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        if fields.len() != 5 {
            return Err(CronError(format!(
                "expected 5 fields (minute hour day-of-month month day-of-week), found {}",
                fields.len()
            )));
        }
        let minute = field(fields[0], "minute", 0, 59, &[], 0)?;
        let hour = field(fields[1], "hour", 0, 23, &[], 0)?;
        let day = field(fields[2], "day of month", 1, 31, &[], 0)?;
        let month = field(fields[3], "month", 1, 12, &MONTHS, 1)?;
        let weekday = field(fields[4], "day of week", 0, 7, &WEEKDAYS, 0)?;
        // Sunday is 0 or 7.
        let weekdays = ((weekday.bits | (weekday.bits >> 7)) & 0x7f) as u8;
        Ok(Self {
            minutes: minute.bits,
            hours: hour.bits as u32,
            days: day.bits as u32,
            months: month.bits as u16,
            weekdays,
            days_star: day.star,
            weekdays_star: weekday.star,
        })
    }

    fn day_matches(&self, date: civil::Date) -> bool {
        let dom = self.days & (1 << date.day()) != 0;
        let dow = self.weekdays & (1 << date.weekday().to_sunday_zero_offset()) != 0;
        if self.days_star || self.weekdays_star {
            dom && dow
        } else {
            dom || dow
        }
    }

    /// The first local time at or after `from` (whole minutes) that the fields match,
    /// looking at most [`HORIZON_YEARS`] ahead.
    fn next_civil(&self, from: DateTime) -> Option<DateTime> {
        let limit = from.year().saturating_add(HORIZON_YEARS);
        let (mut y, mut mo, mut d, mut h, mut mi) = (
            from.year(),
            from.month(),
            from.day(),
            from.hour(),
            from.minute(),
        );
        loop {
            if y > limit || y > 9998 {
                return None;
            }
            let first = civil::Date::new(y, mo, 1).ok()?;
            if self.months & (1 << mo) == 0 || d > first.days_in_month() {
                (d, h, mi) = (1, 0, 0);
                mo += 1;
                if mo > 12 {
                    (mo, y) = (1, y + 1);
                }
                continue;
            }
            let date = civil::Date::new(y, mo, d).ok()?;
            if !self.day_matches(date) {
                (d, h, mi) = (d + 1, 0, 0);
                continue;
            }
            if h > 23 || self.hours & (1 << h) == 0 {
                (h, mi) = (h + 1, 0);
                if h > 23 {
                    (d, h) = (d + 1, 0);
                }
                continue;
            }
            if mi > 59 || self.minutes & (1 << mi) == 0 {
                mi += 1;
                if mi > 59 {
                    (h, mi) = (h + 1, 0);
                    if h > 23 {
                        (d, h) = (d + 1, 0);
                    }
                }
                continue;
            }
            return Some(date.at(h, mi, 0, 0));
        }
    }

    /// The instants a matching local time runs at, by the rule in the module docs.
    fn instants(&self, local: DateTime, tz: &TimeZone) -> [Option<Timestamp>; 2] {
        let ambiguous = tz.to_ambiguous_timestamp(local);
        let first = ambiguous.compatible().ok();
        let second = match ambiguous.offset() {
            AmbiguousOffset::Fold { .. } if self.hours == ALL_HOURS => ambiguous.later().ok(),
            _ => None,
        };
        [first, second]
    }

    /// The first run strictly after `after`, or `None` when the schedule never runs again
    /// (30 February) within the horizon.
    pub fn next_after(&self, after: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        // Near a clock change, a local time before `after`'s can run after it (a skipped
        // 02:30 runs at 03:30; a repeated hour runs again): look back by the change.
        let lookback = clock_change_near(tz, after);
        let local = tz.to_datetime(after);
        let minute = local.date().at(local.hour(), local.minute(), 0, 0);
        let mut from = minute
            .checked_add(SignedDuration::from_mins(1))
            .ok()?
            .checked_sub(lookback)
            .ok()?;
        let mut best: Option<(Timestamp, DateTime)> = None;
        loop {
            let Some(candidate) = self.next_civil(from) else {
                return best.map(|(t, _)| t);
            };
            if let Some((t, at)) = best
                && candidate > at.checked_add(lookback).ok()?
            {
                return Some(t);
            }
            for t in self.instants(candidate, tz).into_iter().flatten() {
                if t > after && best.is_none_or(|(b, _)| t < b) {
                    best = Some((t, candidate));
                }
            }
            if lookback.is_zero()
                && let Some((t, _)) = best
            {
                return Some(t);
            }
            from = candidate.checked_add(SignedDuration::from_mins(1)).ok()?;
        }
    }

    /// The latest run in `(earliest, now]`, if any.
    pub fn latest_between(
        &self,
        earliest: Timestamp,
        now: Timestamp,
        tz: &TimeZone,
    ) -> Option<Timestamp> {
        // Look back in growing spans so a dense schedule after a long outage costs a few
        // runs, not every one missed.
        const HOUR: i64 = 3600;
        for span in [HOUR, 24 * HOUR, 32 * 24 * HOUR, 367 * 24 * HOUR, i64::MAX] {
            let start = now
                .checked_sub(SignedDuration::from_secs(span))
                .map_or(earliest, |s| s.max(earliest));
            let mut latest = None;
            let mut t = start;
            while let Some(next) = self.next_after(t, tz).filter(|n| *n <= now) {
                latest = Some(next);
                t = next;
            }
            if latest.is_some() || start == earliest {
                return latest;
            }
        }
        None
    }

    /// How many runs fall in `(earliest, before)`, counting at most `cap`.
    pub fn count_between(
        &self,
        earliest: Timestamp,
        before: Timestamp,
        tz: &TimeZone,
        cap: usize,
    ) -> usize {
        let mut n = 0;
        let mut t = earliest;
        while n < cap
            && let Some(next) = self.next_after(t, tz).filter(|n| *n < before)
        {
            n += 1;
            t = next;
        }
        n
    }
}

/// The largest change of the zone's UTC offset within a day of `at` (zero almost always).
fn clock_change_near(tz: &TimeZone, at: Timestamp) -> SignedDuration {
    let day = SignedDuration::from_hours(24);
    let (Ok(from), Ok(until)) = (at.checked_sub(day), at.checked_add(day)) else {
        return SignedDuration::ZERO;
    };
    tz.following(from)
        .take_while(|t| t.timestamp() <= until)
        .map(|t| {
            let before = t
                .timestamp()
                .checked_sub(SignedDuration::from_secs(1))
                .map_or(t.offset(), |b| tz.to_offset(b));
            SignedDuration::from_secs(i64::from((t.offset().seconds() - before.seconds()).abs()))
        })
        .max()
        .unwrap_or(SignedDuration::ZERO)
}

/// Looks up an IANA time zone by name (`UTC` included).
pub fn time_zone(name: &str) -> Result<TimeZone, CronError> {
    TimeZone::get(name).map_err(|_| {
        CronError(format!(
            "time zone {name:?} is not in the time zone database (an IANA name such as Europe/Madrid)"
        ))
    })
}
