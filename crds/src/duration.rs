//! Durations written the way Kubernetes writes them (`30m`, `1h30m`, `90s`): Go's
//! `time.ParseDuration` syntax, which is also what CEL's `duration()` accepts, so the API
//! server's validation rules and Tether agree on every value.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Regular expression for the Go duration syntax, used as the schema `pattern` so a malformed
/// value is refused by the API server before any CEL rule sees it.
pub const GO_DURATION_PATTERN: &str =
    r"^[-+]?(0|(([0-9]+(\.[0-9]*)?|\.[0-9]+)(ns|us|µs|μs|ms|s|m|h))+)$";

/// A non-negative duration in Go syntax that remembers how it was written.
///
/// Serialising gives back the original text, so reading and re-applying an object never
/// rewrites a user's `90m` into `1h30m`.
#[derive(Clone, Debug)]
pub struct GoDuration {
    text: String,
    value: Duration,
}

pub use tether_proto::duration::{DurationError, format_go, parse_go_nanos};

impl GoDuration {
    /// Builds a duration from a value, written in Go's compact form (`1h30m`).
    pub fn from_std(value: Duration) -> Self {
        Self {
            text: format_go(value),
            value,
        }
    }

    /// The duration's value.
    pub fn as_std(&self) -> Duration {
        self.value
    }

    /// The text the duration was written as.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl PartialEq for GoDuration {
    fn eq(&self, other: &Self) -> bool {
        self.value == other.value
    }
}

impl Eq for GoDuration {}

impl fmt::Display for GoDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FromStr for GoDuration {
    type Err = DurationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let nanos = parse_go_nanos(s)?;
        if nanos < 0 {
            return Err(DurationError::Negative(s.to_owned()));
        }
        let nanos = u64::try_from(nanos).map_err(|_| DurationError::Overflow(s.to_owned()))?;
        Ok(Self {
            text: s.to_owned(),
            value: Duration::from_nanos(nanos),
        })
    }
}

impl Serialize for GoDuration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for GoDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for GoDuration {
    fn schema_name() -> Cow<'static, str> {
        "GoDuration".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": GO_DURATION_PATTERN,
            "maxLength": 64,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nanos(s: &str) -> i64 {
        parse_go_nanos(s).unwrap()
    }

    #[test]
    fn parses_what_go_parses() {
        // Cases from Go's time package tests.
        assert_eq!(nanos("0"), 0);
        assert_eq!(nanos("5s"), 5_000_000_000);
        assert_eq!(nanos("30m"), 1_800_000_000_000);
        assert_eq!(nanos("1h30m"), 5_400_000_000_000);
        assert_eq!(nanos("1.5h"), 5_400_000_000_000);
        assert_eq!(nanos("-5s"), -5_000_000_000);
        assert_eq!(nanos("+5s"), 5_000_000_000);
        assert_eq!(nanos("5.s"), 5_000_000_000);
        assert_eq!(nanos(".5s"), 500_000_000);
        assert_eq!(nanos("1.004s"), 1_004_000_000);
        assert_eq!(nanos("100.00100s"), 100_001_000_000);
        assert_eq!(nanos("10ns"), 10);
        assert_eq!(nanos("11us"), 11_000);
        assert_eq!(nanos("12µs"), 12_000);
        assert_eq!(nanos("12μs"), 12_000);
        assert_eq!(nanos("13ms"), 13_000_000);
        assert_eq!(nanos("3h30m"), 12_600_000_000_000);
        assert_eq!(nanos("10.5s4m"), 250_500_000_000);
        assert_eq!(nanos("-2m3.4s"), -123_400_000_000);
        assert_eq!(nanos("1h2m3s4ms5us6ns"), 3_723_004_005_006);
        assert_eq!(nanos("39h9m14.425s"), 140_954_425_000_000);
        assert_eq!(nanos("9223372036854775807ns"), i64::MAX);
        assert_eq!(nanos("-9223372036854775808ns"), i64::MIN);
    }

    #[test]
    fn refuses_what_go_refuses() {
        for bad in [
            "", "3", "-", "s", ".", "-.", ".s", "+.s", "1d", "3000000h", "1.5x", "h1",
        ] {
            assert!(parse_go_nanos(bad).is_err(), "{bad:?} should be refused");
        }
        assert!(matches!(
            parse_go_nanos("3"),
            Err(DurationError::MissingUnit(_))
        ));
        assert!(matches!(
            parse_go_nanos("1d"),
            Err(DurationError::UnknownUnit { .. })
        ));
        assert!(matches!(
            parse_go_nanos("9223372036854775808ns"),
            Err(DurationError::Overflow(_))
        ));
    }

    #[test]
    fn negative_is_refused_for_go_duration() {
        let err = "-5m".parse::<GoDuration>().unwrap_err();
        assert_eq!(err, DurationError::Negative("-5m".into()));
        assert!(err.to_string().contains("must not be negative"));
    }

    #[test]
    fn keeps_original_text_and_compares_by_value() {
        let a: GoDuration = "90m".parse().unwrap();
        let b: GoDuration = "1h30m".parse().unwrap();
        assert_eq!(a, b);
        assert_eq!(serde_json::to_string(&a).unwrap(), "\"90m\"");
        let back: GoDuration = serde_json::from_str("\"90m\"").unwrap();
        assert_eq!(back.as_str(), "90m");
        assert!(serde_json::from_str::<GoDuration>("\"ninety\"").is_err());
    }

    #[test]
    fn formats_compactly() {
        assert_eq!(format_go(Duration::from_secs(0)), "0s");
        assert_eq!(format_go(Duration::from_secs(1_800)), "30m");
        assert_eq!(format_go(Duration::from_secs(5_400)), "1h30m");
        assert_eq!(format_go(Duration::from_secs(3_605)), "1h5s");
        assert_eq!(format_go(Duration::from_millis(1_500)), "1s500ms");
        for secs in [1, 59, 60, 61, 3_599, 3_600, 86_400, 90_061] {
            let d = Duration::from_secs(secs);
            assert_eq!(format_go(d).parse::<GoDuration>().unwrap().as_std(), d);
        }
    }

    #[test]
    fn pattern_agrees_with_parser() {
        // The pattern is what the API server enforces before CEL runs; it must accept what the
        // parser accepts and refuse what the parser refuses (range aside).
        let re = regex::Regex::new(GO_DURATION_PATTERN).unwrap();
        for good in [
            "0",
            "5s",
            "1h30m",
            "1.5h",
            ".5s",
            "5.s",
            "-5m",
            "12µs",
            "1h2m3s4ms5us6ns",
        ] {
            assert!(re.is_match(good), "{good:?} should match the pattern");
            assert!(parse_go_nanos(good).is_ok(), "{good:?} should parse");
        }
        for bad in [
            "", "3", "s", ".", ".s", "1d", "h1", "1.5x", "5 m", "1h 30m", "0s0",
        ] {
            assert!(!re.is_match(bad), "{bad:?} should not match the pattern");
            assert!(parse_go_nanos(bad).is_err(), "{bad:?} should not parse");
        }
    }
}
