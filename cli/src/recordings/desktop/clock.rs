//! Where a desktop recording's playback is, without I/O: a clock over the recording's
//! timeline that the page's controls move (play, pause, speed, seek), read at an explicit
//! `now`, and how far apart the seek snapshots are kept.

use std::time::{Duration, Instant};

use serde::Deserialize;

/// Slowest and fastest playback.
pub(crate) const SPEEDS: std::ops::RangeInclusive<f64> = 0.1..=16.0;
/// Snapshots are kept at least this far apart (ms).
const MIN_SNAPSHOT_EVERY_MS: u32 = 5_000;
/// Memory the snapshots' framebuffers may take together.
const SNAPSHOT_BUDGET: u64 = 256 << 20;

/// A control the page posts to `/control`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(tag = "action", rename_all = "camelCase", deny_unknown_fields)]
pub(crate) enum Control {
    /// Play from where it is (from the start once at the end).
    Play,
    /// Stop where it is.
    Pause,
    /// Go to `ms` from the recording's start.
    Seek {
        /// The position.
        ms: u32,
    },
    /// Play `speed` times as fast as recorded.
    Speed {
        /// The factor, within [`SPEEDS`].
        speed: f64,
    },
}

impl Control {
    /// Reads a control the page posted.
    pub(crate) fn parse(body: &[u8]) -> Result<Self, String> {
        serde_json::from_slice(body).map_err(|e| format!("not a playback control: {e}"))
    }
}

/// The playback position: `at_ms` as of `since`, moving at `speed` while playing.
#[derive(Clone, Debug)]
pub(crate) struct Clock {
    duration_ms: u32,
    at_ms: f64,
    since: Instant,
    playing: bool,
    speed: f64,
    /// Counts seeks: a page's stream that saw fewer restores from a snapshot and sends the
    /// whole screen.
    pub seeks: u64,
}

impl Clock {
    /// A clock playing a recording of `duration_ms` from its start at `speed`.
    pub(crate) fn new(duration_ms: u32, speed: f64, now: Instant) -> Self {
        Self {
            duration_ms,
            at_ms: 0.0,
            since: now,
            playing: true,
            speed: speed.clamp(*SPEEDS.start(), *SPEEDS.end()),
            seeks: 0,
        }
    }

    fn exact(&self, now: Instant) -> f64 {
        let moved = if self.playing {
            now.saturating_duration_since(self.since).as_secs_f64() * 1000.0 * self.speed
        } else {
            0.0
        };
        (self.at_ms + moved).min(f64::from(self.duration_ms))
    }

    /// The position (ms from the recording's start).
    pub(crate) fn position(&self, now: Instant) -> u32 {
        self.exact(now) as u32
    }

    /// Whether it is moving: playing and not yet at the end.
    pub(crate) fn is_playing(&self, now: Instant) -> bool {
        self.playing && self.exact(now) < f64::from(self.duration_ms)
    }

    /// The speed.
    pub(crate) fn speed(&self) -> f64 {
        self.speed
    }

    /// Keeps the position as of `now`, so what changes next starts from there.
    fn rebase(&mut self, now: Instant) {
        self.at_ms = self.exact(now);
        self.since = now;
    }

    /// Applies a control at `now`.
    pub(crate) fn apply(&mut self, control: &Control, now: Instant) -> Result<(), String> {
        self.rebase(now);
        match *control {
            Control::Play => {
                if self.at_ms >= f64::from(self.duration_ms) {
                    self.at_ms = 0.0;
                    self.seeks += 1;
                }
                self.playing = true;
            }
            Control::Pause => self.playing = false,
            Control::Seek { ms } => {
                self.at_ms = f64::from(ms.min(self.duration_ms));
                self.seeks += 1;
            }
            Control::Speed { speed } => {
                if !SPEEDS.contains(&speed) {
                    return Err(format!(
                        "speed {speed} is outside {}–{}",
                        SPEEDS.start(),
                        SPEEDS.end()
                    ));
                }
                self.speed = speed;
            }
        }
        Ok(())
    }

    /// How long from `now` until the playback reaches `next_ms`; `None` while it stands
    /// still (paused, or at the end).
    pub(crate) fn wake_in(&self, next_ms: u32, now: Instant) -> Option<Duration> {
        if !self.is_playing(now) {
            return None;
        }
        let ahead = (f64::from(next_ms) - self.exact(now)).max(0.0);
        Some(Duration::from_secs_f64(ahead / 1000.0 / self.speed))
    }
}

/// How far apart (ms) to keep seek snapshots of a recording of `duration_ms` whose largest
/// screen is `largest`: every few seconds, further apart when that would hold more
/// framebuffers than the memory budget.
pub(crate) fn snapshot_every(duration_ms: u32, largest: (u16, u16)) -> u32 {
    let frame = 4 * u64::from(largest.0) * u64::from(largest.1);
    let count = (SNAPSHOT_BUDGET / frame.max(1)).max(1);
    let spread = u64::from(duration_ms).div_ceil(count);
    u32::try_from(spread)
        .unwrap_or(u32::MAX)
        .max(MIN_SNAPSHOT_EVERY_MS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_clock_moves_at_its_speed_and_stops_at_the_end() {
        let t0 = Instant::now();
        let mut clock = Clock::new(10_000, 1.0, t0);
        assert_eq!(clock.position(t0), 0);
        assert_eq!(clock.position(t0 + ms(1500)), 1500);
        clock
            .apply(&Control::Speed { speed: 4.0 }, t0 + ms(2000))
            .unwrap();
        assert_eq!(clock.position(t0 + ms(2500)), 4000);
        assert!(clock.is_playing(t0 + ms(2500)));
        // 8 s left at 4× is 2 s.
        assert_eq!(clock.position(t0 + ms(4000)), 10_000);
        assert_eq!(clock.position(t0 + ms(60_000)), 10_000);
        assert!(!clock.is_playing(t0 + ms(4000)));
        assert_eq!(clock.wake_in(10_000, t0 + ms(4000)), None);
    }

    #[test]
    fn pausing_keeps_the_position_and_playing_resumes_from_it() {
        let t0 = Instant::now();
        let mut clock = Clock::new(10_000, 1.0, t0);
        clock.apply(&Control::Pause, t0 + ms(3000)).unwrap();
        assert_eq!(clock.position(t0 + ms(9000)), 3000);
        assert_eq!(clock.wake_in(3500, t0 + ms(9000)), None);
        clock.apply(&Control::Play, t0 + ms(9000)).unwrap();
        assert_eq!(clock.position(t0 + ms(9500)), 3500);
        assert_eq!(clock.seeks, 0, "pause and play are not seeks");
    }

    #[test]
    fn seeking_moves_the_position_counts_and_clamps() {
        let t0 = Instant::now();
        let mut clock = Clock::new(10_000, 2.0, t0);
        clock
            .apply(&Control::Seek { ms: 7000 }, t0 + ms(100))
            .unwrap();
        assert_eq!(clock.position(t0 + ms(100)), 7000);
        assert_eq!(clock.position(t0 + ms(600)), 8000);
        assert_eq!(clock.seeks, 1);
        clock.apply(&Control::Pause, t0 + ms(600)).unwrap();
        clock
            .apply(&Control::Seek { ms: u32::MAX }, t0 + ms(700))
            .unwrap();
        assert_eq!(clock.position(t0 + ms(5000)), 10_000);
        assert_eq!(clock.seeks, 2);
        // Play at the end starts again from the start, as a seek.
        clock.apply(&Control::Play, t0 + ms(5000)).unwrap();
        assert_eq!(clock.position(t0 + ms(5000)), 0);
        assert_eq!(clock.seeks, 3);
        assert!(clock.is_playing(t0 + ms(5001)));
    }

    #[test]
    fn the_next_record_is_waited_for_in_wall_time_at_the_speed() {
        let t0 = Instant::now();
        let mut clock = Clock::new(10_000, 2.0, t0);
        assert_eq!(clock.wake_in(1000, t0), Some(ms(500)));
        assert_eq!(clock.wake_in(1000, t0 + ms(400)), Some(ms(100)));
        // A record already due wakes at once.
        assert_eq!(clock.wake_in(1000, t0 + ms(900)), Some(Duration::ZERO));
        clock.apply(&Control::Speed { speed: 0.5 }, t0).unwrap();
        assert_eq!(clock.wake_in(1000, t0), Some(ms(2000)));
    }

    #[test]
    fn bad_controls_are_refused_and_change_nothing() {
        let t0 = Instant::now();
        let mut clock = Clock::new(10_000, 1.0, t0);
        for bad in [0.0, -1.0, 100.0, f64::NAN, f64::INFINITY] {
            assert!(
                clock.apply(&Control::Speed { speed: bad }, t0).is_err(),
                "{bad}"
            );
        }
        assert_eq!(clock.speed(), 1.0);
        for bad in [
            &b"{}"[..],
            b"{\"action\":\"rewind\"}",
            b"{\"action\":\"seek\"}",
            b"{\"action\":\"seek\",\"ms\":-5}",
            b"{\"action\":\"speed\",\"speed\":\"fast\"}",
            b"not json",
        ] {
            assert!(
                Control::parse(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        // Positive controls.
        assert_eq!(
            Control::parse(br#"{"action":"seek","ms":1500}"#),
            Ok(Control::Seek { ms: 1500 })
        );
        assert_eq!(
            Control::parse(br#"{"action":"speed","speed":0.5}"#),
            Ok(Control::Speed { speed: 0.5 })
        );
        assert_eq!(Control::parse(br#"{"action":"pause"}"#), Ok(Control::Pause));
    }

    #[test]
    fn snapshots_are_a_few_seconds_apart_within_the_memory_budget() {
        // Short recordings: every 5 s.
        assert_eq!(snapshot_every(60_000, (800, 600)), 5_000);
        // An hour of 800×600 (1.9 MB a frame): about 139 snapshots fit in 256 MiB.
        let every = snapshot_every(3_600_000, (800, 600));
        assert!((25_000..=27_000).contains(&every), "{every}");
        assert!(3_600_000 / every <= 140);
        // An hour of 4K: fewer, further apart.
        let every = snapshot_every(3_600_000, (3840, 2160));
        assert!(3_600_000 / every <= 8 + 1, "{every}");
        // No screen at all (a recording that never showed one).
        assert_eq!(snapshot_every(1_000, (0, 0)), 5_000);
    }
}
