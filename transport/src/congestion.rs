//! Delay-bounded congestion control for Tether's QUIC connections.
//!
//! Every channel of a session is a stream on one QUIC connection per leg, so a keystroke's
//! datagrams wait in the same socket queues as a file transfer's. Stream priorities only order
//! what is not yet sent; what is in flight queues wherever the path is slowest (a busy relay's
//! socket, a home router), and a loss-based controller such as Cubic fills that queue until
//! something drops. On a clean path nothing drops, and the queue grows to the flow-control
//! window: megabytes, tens of milliseconds in front of every keystroke.
//!
//! [`DelayBoundedConfig`] keeps Cubic for everything it does (slow start, loss response,
//! growth) and caps its window by delay: when the smoothed round trip rises more than a target
//! above the path's base round trip (its minimum over the last few minutes), the cap is set to
//! what keeps only the target queued at the rate being delivered; below the target the cap
//! grows in proportion to the room left, up to Cubic's window. The target is a quarter of the
//! base round trip, and never under half a millisecond, so a transfer keeps the bottleneck busy
//! while anything queued behind it waits milliseconds.
//!
//! The trade-off is the one every delay-based controller makes: where a loss-based flow shares
//! the bottleneck and keeps its queue full, Tether's connection yields to it. For remote
//! assistance that is the right side to err on.
//!
//! [`DelayCap`] is the decision alone, without I/O or clocks of its own; the unit tests drive it
//! through a simulated bottleneck in virtual time.

use std::any::Any;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn::congestion::{Controller, ControllerFactory, ControllerMetrics, CubicConfig};
use quinn_proto::RttEstimator;

/// The least queueing delay the cap allows: much lower, and scheduling noise on a busy host
/// would read as congestion.
pub const MIN_TARGET: Duration = Duration::from_micros(500);

/// How long one bucket of the base round trip's history covers.
const BASE_BUCKET: Duration = Duration::from_secs(60);

/// How many buckets the base round trip is the minimum of: a path whose round trip grows for
/// good (a new route) is measured afresh within this many minutes.
const BASE_BUCKETS: usize = 5;

/// Below the target, the cap grows by at most 1/`GROWTH_DIVISOR` of itself per round trip
/// (when nothing is queued; less as the queue nears the target): fast enough to fill a long
/// path again within seconds, slow enough that the round trip shows a growing queue before
/// the cap has grown far past it.
const GROWTH_DIVISOR: u128 = 8;

/// The smallest cap, in datagrams: a cap never stalls a connection.
const FLOOR_DATAGRAMS: u64 = 4;

/// The queueing delay the cap aims for on a path with base round trip `base`.
pub fn target(base: Duration) -> Duration {
    (base / 4).max(MIN_TARGET)
}

/// The minimum of a stream of samples over the last [`BASE_BUCKETS`] × [`BASE_BUCKET`].
#[derive(Clone, Debug)]
struct WindowedMin {
    /// Start of the newest bucket.
    started: Option<Instant>,
    /// Minimum of each bucket, newest first.
    mins: [Option<Duration>; BASE_BUCKETS],
}

impl WindowedMin {
    fn new() -> Self {
        Self {
            started: None,
            mins: [None; BASE_BUCKETS],
        }
    }

    /// Adds a sample taken at `now` and returns the minimum of the window.
    fn update(&mut self, now: Instant, sample: Duration) -> Duration {
        let started = *self.started.get_or_insert(now);
        let elapsed = now.saturating_duration_since(started);
        if elapsed >= BASE_BUCKET {
            let shift = usize::try_from(elapsed.as_secs() / BASE_BUCKET.as_secs())
                .unwrap_or(BASE_BUCKETS)
                .min(BASE_BUCKETS);
            self.mins.rotate_right(shift);
            self.mins[..shift].fill(None);
            self.started = Some(now);
        }
        let newest = &mut self.mins[0];
        *newest = Some(newest.map_or(sample, |m| m.min(sample)));
        self.mins.iter().flatten().copied().min().unwrap_or(sample)
    }
}

/// The delay cap on a connection's congestion window.
#[derive(Clone, Debug)]
pub struct DelayCap {
    /// The cap in bytes; `u64::MAX` until the first measurement.
    cap: u64,
    /// The smallest cap in bytes.
    floor: u64,
    base: WindowedMin,
    /// No second cut before this: a cut shows in the round trip one round trip later.
    hold_until: Option<Instant>,
}

/// One batch of acknowledgements, as the cap sees it.
#[derive(Clone, Copy, Debug)]
pub struct Round {
    /// When the batch arrived.
    pub now: Instant,
    /// The smoothed round trip after it.
    pub srtt: Duration,
    /// Bytes in flight before the batch was acknowledged.
    pub in_flight: u64,
    /// Bytes the batch acknowledged.
    pub acked: u64,
    /// Whether the sender had less to send than its window allowed.
    pub app_limited: bool,
    /// The window of the loss-based controller underneath.
    pub inner_window: u64,
}

impl DelayCap {
    /// A cap for a path with datagrams of `mtu` bytes.
    pub fn new(mtu: u16) -> Self {
        Self {
            cap: u64::MAX,
            floor: FLOOR_DATAGRAMS * u64::from(mtu),
            base: WindowedMin::new(),
            hold_until: None,
        }
    }

    /// Takes one batch of acknowledgements into account.
    pub fn on_round(&mut self, r: Round) {
        let base = self.base.update(r.now, r.srtt);
        let target = target(base);
        let queued = r.srtt.saturating_sub(base);
        let limit = self.cap.min(r.inner_window);
        if queued > target {
            if self.hold_until.is_none_or(|h| r.now >= h) {
                // At the rate now delivered (in flight / srtt), keep `target` queued.
                let want =
                    u128::from(r.in_flight) * (base + target).as_nanos() / r.srtt.as_nanos().max(1);
                let want = u64::try_from(want).unwrap_or(u64::MAX);
                self.cap = want.min(limit).max(self.floor);
                self.hold_until = Some(r.now + r.srtt);
            }
        } else if !r.app_limited {
            let room = target - queued;
            let grow =
                u128::from(r.acked) * room.as_nanos() / (GROWTH_DIVISOR * target.as_nanos().max(1));
            let grow = u64::try_from(grow).unwrap_or(u64::MAX);
            self.cap = limit
                .saturating_add(grow)
                .min(r.inner_window)
                .max(self.floor);
        }
    }

    /// The window allowed, given the window of the controller underneath.
    pub fn window(&self, inner_window: u64) -> u64 {
        self.cap.min(inner_window)
    }

    /// A new datagram size.
    pub fn on_mtu_update(&mut self, mtu: u16) {
        self.floor = FLOOR_DATAGRAMS * u64::from(mtu);
        self.cap = self.cap.max(self.floor);
    }
}

/// Builds [`DelayBounded`] controllers: Cubic capped by delay.
#[derive(Clone, Debug, Default)]
pub struct DelayBoundedConfig {
    cubic: Arc<CubicConfig>,
}

impl ControllerFactory for DelayBoundedConfig {
    fn build(self: Arc<Self>, now: Instant, current_mtu: u16) -> Box<dyn Controller> {
        Box::new(DelayBounded {
            inner: self.cubic.clone().build(now, current_mtu),
            cap: DelayCap::new(current_mtu),
            batch_acked: 0,
            srtt: None,
        })
    }
}

/// A congestion controller: Cubic, with its window capped by [`DelayCap`].
pub struct DelayBounded {
    inner: Box<dyn Controller>,
    cap: DelayCap,
    /// Bytes acknowledged in the batch being delivered.
    batch_acked: u64,
    /// The smoothed round trip as of the batch being delivered.
    srtt: Option<Duration>,
}

impl Controller for DelayBounded {
    fn on_sent(&mut self, now: Instant, bytes: u64, last_packet_number: u64) {
        self.inner.on_sent(now, bytes, last_packet_number);
    }

    fn on_ack(
        &mut self,
        now: Instant,
        sent: Instant,
        bytes: u64,
        app_limited: bool,
        rtt: &RttEstimator,
    ) {
        self.batch_acked = self.batch_acked.saturating_add(bytes);
        self.srtt = Some(rtt.get());
        self.inner.on_ack(now, sent, bytes, app_limited, rtt);
    }

    fn on_end_acks(
        &mut self,
        now: Instant,
        in_flight: u64,
        app_limited: bool,
        largest_packet_num_acked: Option<u64>,
    ) {
        self.inner
            .on_end_acks(now, in_flight, app_limited, largest_packet_num_acked);
        let acked = std::mem::take(&mut self.batch_acked);
        if let Some(srtt) = self.srtt.take() {
            self.cap.on_round(Round {
                now,
                srtt,
                in_flight: in_flight.saturating_add(acked),
                acked,
                app_limited,
                inner_window: self.inner.window(),
            });
        }
    }

    fn on_congestion_event(
        &mut self,
        now: Instant,
        sent: Instant,
        is_persistent_congestion: bool,
        lost_bytes: u64,
    ) {
        self.inner
            .on_congestion_event(now, sent, is_persistent_congestion, lost_bytes);
    }

    fn on_mtu_update(&mut self, new_mtu: u16) {
        self.inner.on_mtu_update(new_mtu);
        self.cap.on_mtu_update(new_mtu);
    }

    fn window(&self) -> u64 {
        self.cap.window(self.inner.window())
    }

    fn metrics(&self) -> ControllerMetrics {
        let mut metrics = self.inner.metrics();
        metrics.congestion_window = self.window();
        metrics
    }

    fn clone_box(&self) -> Box<dyn Controller> {
        Box::new(DelayBounded {
            inner: self.inner.clone_box(),
            cap: self.cap.clone(),
            batch_acked: self.batch_acked,
            srtt: self.srtt,
        })
    }

    fn initial_window(&self) -> u64 {
        self.inner.initial_window()
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sender behind one bottleneck, in virtual time: a fixed rate, a fixed base round trip,
    /// a queue in front of the bottleneck holding whatever is in flight beyond what the path
    /// itself holds.
    struct Path {
        rate: f64,
        base: Duration,
    }

    /// What a run showed over its last half.
    struct Seen {
        /// Mean queueing delay.
        queued: Duration,
        /// Largest queueing delay.
        worst: Duration,
        /// Fraction of the time the bottleneck was busy.
        busy: f64,
    }

    /// Runs a sender whose window is `cap`'s (over a loss-based window in slow start) for
    /// `rounds` base round trips; the path changes to `then` halfway through when given, and
    /// then only the last tenth is measured.
    fn run(path: &Path, then: Option<&Path>, rounds: u32) -> Seen {
        let mut cap = DelayCap::new(1200);
        let steps_per_round = 20;
        let mut now = Instant::now();
        let mut srtt = path.base;
        // The loss-based window underneath: slow start that never sees a loss.
        let mut inner = 10.0 * 1200.0_f64;
        let (mut queued_sum, mut worst, mut busy, mut counted) = (0.0, Duration::ZERO, 0.0, 0.0);
        let total = rounds * steps_per_round;
        for step in 0..total {
            let p = match then {
                Some(t) if step >= total / 2 => t,
                _ => path,
            };
            let dt = p.base / steps_per_round;
            now += dt;
            // The sender fills its window: what the path holds, then the queue.
            let window = cap.window(inner as u64) as f64;
            let pipe = p.rate * p.base.as_secs_f64();
            let queue = (window - pipe).max(0.0);
            let delay = Duration::from_secs_f64(queue / p.rate);
            // Delivered this step: the bottleneck's rate when it has data, else the window.
            let acked = (p.rate * dt.as_secs_f64()).min(window);
            // quinn smooths each sample by 1/8.
            srtt = (srtt * 7 + p.base + delay) / 8;
            cap.on_round(Round {
                now,
                srtt,
                in_flight: window as u64,
                acked: acked as u64,
                app_limited: false,
                inner_window: inner as u64,
            });
            inner += acked;
            if step >= total * 9 / 10 || (then.is_none() && step >= total / 2) {
                queued_sum += delay.as_secs_f64();
                worst = worst.max(delay);
                busy += if window >= pipe { 1.0 } else { window / pipe };
                counted += 1.0;
            }
        }
        Seen {
            queued: Duration::from_secs_f64(queued_sum / counted),
            worst,
            busy: busy / counted,
        }
    }

    #[test]
    fn a_fast_short_path_keeps_the_bottleneck_busy_with_half_a_millisecond_queued() {
        // A relay on a LAN: 400 MB/s, 200 µs.
        let seen = run(
            &Path {
                rate: 400e6,
                base: Duration::from_micros(200),
            },
            None,
            20_000,
        );
        assert!(seen.busy > 0.98, "bottleneck busy {:.3}", seen.busy);
        assert!(
            seen.queued <= MIN_TARGET * 3 / 2,
            "mean queue {:?}",
            seen.queued
        );
        assert!(seen.worst <= MIN_TARGET * 3, "worst queue {:?}", seen.worst);
    }

    #[test]
    fn a_long_path_keeps_its_queue_near_a_quarter_of_the_round_trip() {
        // A technician at home: 100 Mbit/s, 50 ms.
        let base = Duration::from_millis(50);
        let seen = run(&Path { rate: 12.5e6, base }, None, 2_000);
        assert!(seen.busy > 0.98, "bottleneck busy {:.3}", seen.busy);
        assert!(
            seen.queued <= target(base) * 3 / 2,
            "mean queue {:?}",
            seen.queued
        );
        assert!(
            seen.worst <= target(base) * 3,
            "worst queue {:?}",
            seen.worst
        );
    }

    #[test]
    fn a_path_whose_round_trip_grows_for_good_is_used_fully_again() {
        // A new route triples the round trip; within the base window the cap follows.
        let before = Path {
            rate: 12.5e6,
            base: Duration::from_millis(20),
        };
        let after = Path {
            rate: 12.5e6,
            base: Duration::from_millis(60),
        };
        // 20 minutes of virtual time at 60 ms per round, the last 2 of them measured.
        let rounds = 20 * 60 * 1000 / 60;
        let seen = run(&before, Some(&after), rounds);
        assert!(seen.busy > 0.95, "bottleneck busy {:.3}", seen.busy);
    }

    #[test]
    fn the_cap_never_starves_a_connection_or_exceeds_the_loss_based_window() {
        let mut cap = DelayCap::new(1200);
        let start = Instant::now();
        // A huge round trip over a tiny base: cut to the floor, not to nothing.
        cap.on_round(Round {
            now: start,
            srtt: Duration::from_millis(1),
            in_flight: 100_000,
            acked: 1200,
            app_limited: false,
            inner_window: 1_000_000,
        });
        cap.on_round(Round {
            now: start + Duration::from_secs(1),
            srtt: Duration::from_secs(10),
            in_flight: 100_000,
            acked: 1200,
            app_limited: false,
            inner_window: 1_000_000,
        });
        assert_eq!(cap.window(1_000_000), 4 * 1200);
        // Growth stops at the window underneath.
        for i in 0..10_000 {
            cap.on_round(Round {
                now: start + Duration::from_secs(2) + Duration::from_millis(i),
                srtt: Duration::from_millis(1),
                in_flight: 50_000,
                acked: 50_000,
                app_limited: false,
                inner_window: 80_000,
            });
        }
        assert_eq!(cap.window(80_000), 80_000);
        assert_eq!(
            cap.window(30_000),
            30_000,
            "a loss-based cut applies at once"
        );
    }

    #[test]
    fn an_idle_connection_does_not_grow_its_cap() {
        let mut cap = DelayCap::new(1200);
        let start = Instant::now();
        cap.on_round(Round {
            now: start,
            srtt: Duration::from_millis(1),
            in_flight: 10_000,
            acked: 1200,
            app_limited: false,
            inner_window: 10_000,
        });
        let before = cap.window(u64::MAX);
        for i in 1..1000 {
            cap.on_round(Round {
                now: start + Duration::from_millis(i),
                srtt: Duration::from_millis(1),
                in_flight: 200,
                acked: 100,
                app_limited: true,
                inner_window: 10_000_000,
            });
        }
        assert_eq!(cap.window(u64::MAX), before);
    }
}
