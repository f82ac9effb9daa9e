//! Durations in Go's `time.ParseDuration` syntax (`30m`, `1h30m`, `90s`), the syntax of
//! Kubernetes fields and CEL's `duration()`, shared by every Tether binary.

use std::time::Duration;

/// Why a duration string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// The text is not in Go duration syntax.
    #[error("invalid duration {0:?}: expected a number with a unit, like 30m, 1h30m or 90s")]
    Syntax(String),
    /// A number with no unit (only `0` may stand alone).
    #[error("invalid duration {0:?}: missing unit (one of ns, us, ms, s, m, h)")]
    MissingUnit(String),
    /// The unit is not one Go knows.
    #[error("invalid duration {text:?}: unknown unit {unit:?} (one of ns, us, ms, s, m, h)")]
    UnknownUnit {
        /// The whole input.
        text: String,
        /// The unit that was not recognised.
        unit: String,
    },
    /// The value does not fit in 64-bit nanoseconds, as in Go.
    #[error("invalid duration {0:?}: out of range")]
    Overflow(String),
    /// A negative duration where only non-negative ones make sense.
    #[error("invalid duration {0:?}: must not be negative")]
    Negative(String),
}

/// Parses Go duration syntax into signed nanoseconds, exactly as `time.ParseDuration` does
/// (same units, same fractions, same overflow limit).
pub fn parse_go_nanos(s: &str) -> Result<i64, DurationError> {
    let syntax = || DurationError::Syntax(s.to_owned());
    let overflow = || DurationError::Overflow(s.to_owned());

    let (negative, mut rest) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    if rest == "0" {
        return Ok(0);
    }
    if rest.is_empty() {
        return Err(syntax());
    }

    let mut total: u64 = 0;
    while !rest.is_empty() {
        // Integer part.
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let (int_digits, after_int) = rest.split_at(int_len);
        // Fraction.
        let (frac_digits, after_frac) = match after_int.strip_prefix('.') {
            Some(tail) => {
                let n = tail.bytes().take_while(u8::is_ascii_digit).count();
                tail.split_at(n)
            }
            None => ("", after_int),
        };
        if int_digits.is_empty() && frac_digits.is_empty() {
            return Err(syntax());
        }
        // Unit.
        let unit_len = after_frac
            .char_indices()
            .find(|(_, c)| *c == '.' || c.is_ascii_digit())
            .map_or(after_frac.len(), |(i, _)| i);
        if unit_len == 0 {
            return Err(DurationError::MissingUnit(s.to_owned()));
        }
        let (unit, tail) = after_frac.split_at(unit_len);
        let scale: u64 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60 * 1_000_000_000,
            "h" => 3_600 * 1_000_000_000,
            _ => {
                return Err(DurationError::UnknownUnit {
                    text: s.to_owned(),
                    unit: unit.to_owned(),
                });
            }
        };

        let int: u64 = if int_digits.is_empty() {
            0
        } else {
            int_digits.parse().map_err(|_| overflow())?
        };
        let mut value = int.checked_mul(scale).ok_or_else(overflow)?;
        // The fraction is scaled the way Go scales it (digits as an integer over a power of
        // ten, multiplied in floating point) so both sides round identically.
        let (mut frac, mut frac_scale) = (0u64, 1f64);
        for d in frac_digits.bytes() {
            match frac
                .checked_mul(10)
                .and_then(|f| f.checked_add(u64::from(d - b'0')))
            {
                Some(f) => {
                    frac = f;
                    frac_scale *= 10.0;
                }
                None => break,
            }
        }
        let frac_value = frac as f64 * (scale as f64 / frac_scale);
        value = value.checked_add(frac_value as u64).ok_or_else(overflow)?;
        total = total.checked_add(value).ok_or_else(overflow)?;
        if total > i64::MAX as u64 + u64::from(negative) {
            return Err(overflow());
        }
        rest = tail;
    }

    if negative {
        Ok((total as i128).wrapping_neg() as i64)
    } else {
        i64::try_from(total).map_err(|_| overflow())
    }
}

/// Formats a duration in Go's units, dropping zero components: `1h30m`, `45s`, `1m0.5s` becomes
/// `1m500ms`, zero is `0s`.
pub fn format_go(value: Duration) -> String {
    if value.is_zero() {
        return "0s".to_owned();
    }
    let mut out = String::new();
    let mut secs = value.as_secs();
    let hours = secs / 3_600;
    secs %= 3_600;
    let minutes = secs / 60;
    secs %= 60;
    let sub = value.subsec_nanos();
    if hours > 0 {
        out.push_str(&format!("{hours}h"));
    }
    if minutes > 0 {
        out.push_str(&format!("{minutes}m"));
    }
    if secs > 0 {
        out.push_str(&format!("{secs}s"));
    }
    if sub > 0 {
        if sub.is_multiple_of(1_000_000) {
            out.push_str(&format!("{}ms", sub / 1_000_000));
        } else if sub.is_multiple_of(1_000) {
            out.push_str(&format!("{}us", sub / 1_000));
        } else {
            out.push_str(&format!("{sub}ns"));
        }
    }
    out
}

/// Parses a non-negative Go duration.
pub fn parse(s: &str) -> Result<Duration, DurationError> {
    let nanos = parse_go_nanos(s)?;
    if nanos < 0 {
        return Err(DurationError::Negative(s.to_owned()));
    }
    Ok(Duration::from_nanos(nanos as u64))
}
