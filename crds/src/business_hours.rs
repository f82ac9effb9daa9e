//! Business hours: weekly windows in a named IANA time zone, and when they are open.
//!
//! A window is a local start and end time on some days of the week. Each is turned into the
//! instants it covers through the time zone's rules for that very date, so a window keeps its
//! local hours across daylight-saving changes (08:00–18:00 stays 08:00–18:00 on the clock).
//! A local time that does not exist (in a spring-forward gap) moves forward by the gap's
//! length (02:30 becomes 03:30, as in RFC 5545); one that happens twice (in a fall-back fold)
//! is the first of the two.

use jiff::civil::{Date, DateTime, Time};
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// When sessions may start: weekly windows in one time zone.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BusinessHours {
    /// IANA time zone the windows are written in, e.g. `Europe/Madrid` or `America/New_York`.
    /// The windows follow the zone's daylight-saving changes.
    #[schemars(
        length(min = 1, max = 64),
        regex(pattern = r"^[A-Za-z][A-Za-z0-9_+\-]*(/[A-Za-z0-9_+\-]+)*$")
    )]
    pub time_zone: String,
    /// The weekly windows; a session may start inside any of them (at most 14).
    #[schemars(length(min = 1, max = 14))]
    pub windows: Vec<WeeklyWindow>,
    /// What happens to a session whose window opens outside business hours: `Hold` (the
    /// default) keeps it `Pending` until the hours open (it expires if its own window closes
    /// first), `Refuse` denies it.
    #[serde(default)]
    pub outside: Enforcement,
}

/// One weekly window: from `start` to `end`, local time, on each of `days`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.start != self.end", "message": "a window's start and end must differ"},
    {"rule": "self.start != '24:00'", "message": "a window cannot start at 24:00; use 00:00"},
]))]
pub struct WeeklyWindow {
    /// The days the window opens on.
    #[schemars(length(min = 1, max = 7))]
    pub days: Vec<Weekday>,
    /// When it opens, `HH:MM` local time.
    #[schemars(regex(pattern = r"^(([01][0-9]|2[0-3]):[0-5][0-9]|24:00)$"))]
    pub start: String,
    /// When it closes, `HH:MM` local time (`24:00` for midnight). An end earlier than the
    /// start closes on the next day (`22:00`–`06:00` is a night shift).
    #[schemars(regex(pattern = r"^(([01][0-9]|2[0-3]):[0-5][0-9]|24:00)$"))]
    pub end: String,
}

/// A day of the week.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[allow(missing_docs)]
pub enum Weekday {
    Mon,
    Tue,
    Wed,
    Thu,
    Fri,
    Sat,
    Sun,
}

/// What the operator does with a session a rule holds back.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum Enforcement {
    /// Keep the session `Pending` until the rule lets it start.
    #[default]
    Hold,
    /// Deny the session.
    Refuse,
}

/// Why business hours cannot be evaluated.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HoursError {
    /// The time zone is not in the time zone database.
    #[error("unknown time zone {0:?}")]
    UnknownZone(String),
    /// A time of day is not `HH:MM`.
    #[error("invalid time of day {0:?} (expected HH:MM)")]
    BadClock(String),
}

impl From<Weekday> for jiff::civil::Weekday {
    fn from(day: Weekday) -> Self {
        match day {
            Weekday::Mon => Self::Monday,
            Weekday::Tue => Self::Tuesday,
            Weekday::Wed => Self::Wednesday,
            Weekday::Thu => Self::Thursday,
            Weekday::Fri => Self::Friday,
            Weekday::Sat => Self::Saturday,
            Weekday::Sun => Self::Sunday,
        }
    }
}

/// `HH:MM` as minutes after midnight (`24:00` is 1440).
fn minutes(clock: &str) -> Result<i32, HoursError> {
    let bad = || HoursError::BadClock(clock.to_owned());
    let digits = |s: &str| -> Option<i32> {
        (s.len() == 2 && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse().ok())?
    };
    let (h, m) = clock.split_once(':').ok_or_else(bad)?;
    match (digits(h).ok_or_else(bad)?, digits(m).ok_or_else(bad)?) {
        (24, 0) => Ok(1440),
        (h @ 0..=23, m @ 0..=59) => Ok(h * 60 + m),
        _ => Err(bad()),
    }
}

/// The instant of local `date` plus `minutes` in `tz` (gaps move forward by their length,
/// folds take the earlier instant: jiff's "compatible" rule).
fn local(tz: &TimeZone, date: Date, minutes: i32) -> Option<Timestamp> {
    let day = i64::from(minutes / 1440);
    let rest = minutes % 1440;
    let date = date.checked_add(day.days()).ok()?;
    let time = Time::new(
        i8::try_from(rest / 60).ok()?,
        i8::try_from(rest % 60).ok()?,
        0,
        0,
    )
    .ok()?;
    tz.to_ambiguous_timestamp(DateTime::from_parts(date, time))
        .compatible()
        .ok()
}

impl BusinessHours {
    /// The zone, looked up in the time zone database.
    pub fn zone(&self) -> Result<TimeZone, HoursError> {
        TimeZone::get(&self.time_zone).map_err(|_| HoursError::UnknownZone(self.time_zone.clone()))
    }

    /// Checks that the zone exists and every time of day parses.
    pub fn validate(&self) -> Result<(), HoursError> {
        self.zone()?;
        for w in &self.windows {
            minutes(&w.start)?;
            minutes(&w.end)?;
        }
        Ok(())
    }

    /// The windows that open on local dates from `from` to `to` (inclusive), as instants.
    fn spans(&self, from: Date, to: Date) -> Result<Vec<(Timestamp, Timestamp)>, HoursError> {
        let tz = self.zone()?;
        let mut spans = Vec::new();
        let mut date = from;
        while date <= to {
            for w in &self.windows {
                if !w
                    .days
                    .iter()
                    .any(|d| jiff::civil::Weekday::from(*d) == date.weekday())
                {
                    continue;
                }
                let (start, mut end) = (minutes(&w.start)?, minutes(&w.end)?);
                if end <= start {
                    end += 1440;
                }
                if let (Some(a), Some(b)) = (local(&tz, date, start), local(&tz, date, end))
                    && a < b
                {
                    spans.push((a, b));
                }
            }
            match date.tomorrow() {
                Ok(next) => date = next,
                Err(_) => break,
            }
        }
        Ok(spans)
    }

    /// Whether `now` is inside a window, and if not, when the next one opens (`None`: never,
    /// e.g. every window falls in a daylight-saving gap).
    pub fn check(&self, now: Timestamp) -> Result<Openness, HoursError> {
        let today = now.to_zoned(self.zone()?).date();
        // Yesterday's windows may run past midnight; a week and a day covers every next opening.
        let from = today.yesterday().unwrap_or(today);
        let to = today.checked_add(8.days()).unwrap_or(today);
        let spans = self.spans(from, to)?;
        if let Some(&(_, until)) = spans.iter().find(|(a, b)| *a <= now && now < *b) {
            return Ok(Openness::Open { until });
        }
        Ok(Openness::Closed {
            opens: spans.iter().map(|(a, _)| *a).filter(|a| *a > now).min(),
        })
    }

    /// The windows as people read them: `Mon–Fri 08:00–18:00 Europe/Madrid`.
    pub fn describe(&self) -> String {
        let windows: Vec<String> = self
            .windows
            .iter()
            .map(|w| {
                let days: Vec<&str> = w.days.iter().map(|d| day_name(*d)).collect();
                format!("{} {}–{}", days.join(","), w.start, w.end)
            })
            .collect();
        format!("{} {}", windows.join("; "), self.time_zone)
    }
}

fn day_name(day: Weekday) -> &'static str {
    match day {
        Weekday::Mon => "Mon",
        Weekday::Tue => "Tue",
        Weekday::Wed => "Wed",
        Weekday::Thu => "Thu",
        Weekday::Fri => "Fri",
        Weekday::Sat => "Sat",
        Weekday::Sun => "Sun",
    }
}

/// Whether business hours are open at an instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Openness {
    /// Open until this instant.
    Open {
        /// When the window it is in closes.
        until: Timestamp,
    },
    /// Closed.
    Closed {
        /// When the next window opens, if one does within a week.
        opens: Option<Timestamp>,
    },
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // Tests fail loudly on any unexpected error.

    use super::*;

    fn hours(zone: &str, days: &[Weekday], start: &str, end: &str) -> BusinessHours {
        BusinessHours {
            time_zone: zone.into(),
            windows: vec![WeeklyWindow {
                days: days.to_vec(),
                start: start.into(),
                end: end.into(),
            }],
            outside: Enforcement::Hold,
        }
    }

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    const WEEKDAYS: &[Weekday] = &[
        Weekday::Mon,
        Weekday::Tue,
        Weekday::Wed,
        Weekday::Thu,
        Weekday::Fri,
    ];

    #[test]
    fn office_hours_keep_their_local_time_across_the_daylight_saving_change() {
        let madrid = hours("Europe/Madrid", WEEKDAYS, "08:00", "18:00");
        // Friday 2026-03-27, CET (UTC+1): 08:00 local is 07:00Z.
        assert_eq!(
            madrid.check(at("2026-03-27T06:59:59Z")).unwrap(),
            Openness::Closed {
                opens: Some(at("2026-03-27T07:00:00Z"))
            }
        );
        assert_eq!(
            madrid.check(at("2026-03-27T07:00:00Z")).unwrap(),
            Openness::Open {
                until: at("2026-03-27T17:00:00Z")
            }
        );
        // Friday evening: the next opening is Monday, after the switch to CEST (UTC+2) on
        // Sunday 2026-03-29, so 08:00 local is 06:00Z.
        assert_eq!(
            madrid.check(at("2026-03-27T17:00:00Z")).unwrap(),
            Openness::Closed {
                opens: Some(at("2026-03-30T06:00:00Z"))
            }
        );
        assert!(matches!(
            madrid.check(at("2026-03-30T06:30:00Z")).unwrap(),
            Openness::Open { .. }
        ));
        // And back in October (CEST → CET on Sunday 2026-10-25).
        assert_eq!(
            madrid.check(at("2026-10-23T16:30:00Z")).unwrap(),
            Openness::Closed {
                opens: Some(at("2026-10-26T07:00:00Z"))
            }
        );
    }

    #[test]
    fn the_same_instant_is_open_in_one_zone_and_closed_in_another() {
        let madrid = hours("Europe/Madrid", WEEKDAYS, "08:00", "18:00");
        let new_york = hours("America/New_York", WEEKDAYS, "08:00", "18:00");
        // Tuesday 2026-12-08 10:00 in Madrid is 04:00 in New York.
        let t = at("2026-12-08T09:00:00Z");
        assert!(matches!(madrid.check(t).unwrap(), Openness::Open { .. }));
        assert_eq!(
            new_york.check(t).unwrap(),
            Openness::Closed {
                opens: Some(at("2026-12-08T13:00:00Z"))
            }
        );
        // The US changes on 2026-03-08, Europe on 2026-03-29: in between, 08:00 New York is
        // 12:00Z (EDT), three weeks before Madrid's offset changes.
        assert_eq!(
            new_york.check(at("2026-03-10T11:00:00Z")).unwrap(),
            Openness::Closed {
                opens: Some(at("2026-03-10T12:00:00Z"))
            }
        );
    }

    #[test]
    fn a_night_window_runs_past_midnight_and_a_gap_opens_after_it() {
        let night = hours("Europe/Madrid", &[Weekday::Sat], "22:00", "06:00");
        // Saturday 2026-03-28 22:00 CET = 21:00Z; it closes Sunday 06:00 CEST = 04:00Z (the
        // night is an hour shorter).
        assert_eq!(
            night.check(at("2026-03-29T01:30:00Z")).unwrap(),
            Openness::Open {
                until: at("2026-03-29T04:00:00Z")
            }
        );
        // A window starting inside the spring-forward gap (02:30 does not exist on
        // 2026-03-29 in Madrid) opens an hour later on the clock, 03:30 CEST = 01:30Z.
        let gap = hours("Europe/Madrid", &[Weekday::Sun], "02:30", "05:00");
        assert_eq!(
            gap.check(at("2026-03-29T00:00:00Z")).unwrap(),
            Openness::Closed {
                opens: Some(at("2026-03-29T01:30:00Z"))
            }
        );
    }

    #[test]
    fn bad_zones_and_clocks_are_errors_and_descriptions_read_plainly() {
        let bad = hours("Mars/Olympus_Mons", WEEKDAYS, "08:00", "18:00");
        assert_eq!(
            bad.check(at("2026-12-08T09:00:00Z")),
            Err(HoursError::UnknownZone("Mars/Olympus_Mons".into()))
        );
        assert!(hours("UTC", WEEKDAYS, "8:00", "18:00").validate().is_err());
        assert!(hours("UTC", WEEKDAYS, "00:00", "23:59").validate().is_ok());
        assert!(hours("UTC", WEEKDAYS, "25:00", "18:00").validate().is_err());
        assert!(hours("UTC", WEEKDAYS, "08:60", "18:00").validate().is_err());
        assert_eq!(
            hours("UTC", WEEKDAYS, "08:00", "24:00").describe(),
            "Mon,Tue,Wed,Thu,Fri 08:00–24:00 UTC"
        );
        let all_day = hours("UTC", &[Weekday::Sun], "00:00", "24:00");
        assert_eq!(
            all_day.check(at("2026-12-06T23:59:59Z")).unwrap(),
            Openness::Open {
                until: at("2026-12-07T00:00:00Z")
            }
        );
    }
}
