//! How often a display is looked at: the frame-rate cap, the idle poll, and when the capture
//! thread next looks at the screen given the hints it has had.

use std::time::{Duration, Instant};

/// How often the screen is captured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pacing {
    /// The shortest time between two captures (the frame-rate cap).
    pub frame: Duration,
    /// The longest time between two captures while nothing seems to change.
    pub idle: Duration,
}

impl Pacing {
    /// Pacing for a cap of `max_fps` frames per second (at least 1).
    pub fn with_max_fps(max_fps: u32) -> Self {
        let frame = Duration::from_secs(1) / max_fps.max(1);
        Self {
            frame,
            idle: Duration::from_millis(200).max(frame),
        }
    }
}

/// When the screen is next looked at. With damage reports: as soon as the frame-rate cap
/// allows after a hint, and a poll every [`Pacing::idle`] regardless (compositors and some
/// drivers draw without reporting damage). Without: at the frame-rate cap.
pub fn next_look(
    pacing: &Pacing,
    last_capture: Instant,
    last_poll: Instant,
    hinted: bool,
    reports_damage: bool,
) -> Instant {
    let poll = last_poll + pacing.idle;
    if !reports_damage {
        last_capture + pacing.frame
    } else if hinted {
        (last_capture + pacing.frame).min(poll)
    } else {
        poll
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // Tests fail loudly on any unexpected error.

    use super::*;

    #[test]
    fn looks_follow_hints_and_poll_when_idle() {
        let pacing = Pacing::with_max_fps(30);
        assert_eq!(pacing.frame, Duration::from_nanos(33_333_333));
        let t0 = Instant::now();
        let last = t0 + Duration::from_secs(10);
        // Idle with damage reports: poll every 200 ms after the last poll.
        assert_eq!(
            next_look(&pacing, last, t0 + Duration::from_secs(9), false, true),
            t0 + Duration::from_secs(9) + pacing.idle
        );
        // A hint: as soon as the cap allows, unless a poll is due sooner.
        assert_eq!(
            next_look(&pacing, last, last, true, true),
            last + pacing.frame
        );
        assert_eq!(
            next_look(&pacing, last, last - pacing.idle, true, true),
            last
        );
        // No damage reports at all: full rate always.
        assert_eq!(
            next_look(&pacing, last, t0, false, false),
            last + pacing.frame
        );
        // A low cap is never exceeded by the idle poll.
        let slow = Pacing::with_max_fps(2);
        assert_eq!(slow.idle, Duration::from_millis(500));
        assert_eq!(Pacing::with_max_fps(0).frame, Duration::from_secs(1));
    }
}
