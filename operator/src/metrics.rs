//! The operator's Prometheus metrics. Every metric is defined and documented here; labels are
//! low-cardinality (controller, phase, error category), never object names.

use kube::runtime::reflector::Store;
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{
    HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};
use tether_crds::remote_session::{RemoteSession, SessionPhase};

/// Metrics updated by the controllers.
#[derive(Clone, Debug)]
pub struct Metrics {
    /// `tether_operator_reconcile_duration_seconds{controller}`: how long one reconcile took.
    pub reconcile_duration: HistogramVec,
    /// `tether_operator_reconcile_errors_total{controller,category}`: failed reconciles by
    /// error category.
    pub reconcile_errors: IntCounterVec,
    /// `tether_operator_transition_lateness_seconds{phase}`: how long after it was due a
    /// time-driven phase change was written (actual − scheduled), for the transitions this
    /// operator was running to make on time (see [`Lateness`]).
    pub transition_lateness: HistogramVec,
    /// `tether_operator_transitions_caught_up_total{phase}`: time-driven phase changes that
    /// were due before this operator started or before the session existed (a session created
    /// with a start in the past, or one whose boundary passed while no operator ran). They
    /// are not lateness the operator could have avoided, so they are counted apart.
    pub transitions_caught_up: IntCounterVec,
    /// `tether_operator_notifications_total{channel,result}`: request notifications by
    /// channel (`email`, `webhook`) and result (`delivered`, `failed`).
    pub notifications: IntCounterVec,
    /// `tether_operator_recordings_deleted_total`: sessions whose recordings retention
    /// deleted.
    pub recordings_deleted: IntCounter,
    /// `tether_operator_recording_sweeps_total`: retention sweeps run (successful or not).
    pub recording_sweeps: IntCounter,
    /// `tether_operator_recording_sweep_errors_total`: store or API operations of retention
    /// sweeps that failed (a sweep that could not start counts one).
    pub recording_sweep_errors: IntCounter,
    /// `tether_operator_recordings_held`: sessions whose recordings were on legal hold at the
    /// last sweep.
    pub recordings_held: IntGauge,
    /// `tether_operator_leader`: 1 while this process holds the leader Lease (or runs with
    /// leader election off), 0 while it stands by.
    pub leader: IntGauge,
}

impl Metrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let reconcile_duration = HistogramVec::new(
            HistogramOpts::new(
                "tether_operator_reconcile_duration_seconds",
                "Time taken by one reconcile, by controller.",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            &["controller"],
        )?;
        let reconcile_errors = IntCounterVec::new(
            Opts::new(
                "tether_operator_reconcile_errors_total",
                "Reconciles that failed, by controller and error category.",
            ),
            &["controller", "category"],
        )?;
        let transition_lateness = HistogramVec::new(
            HistogramOpts::new(
                "tether_operator_transition_lateness_seconds",
                "Delay between when a time-driven session transition was due and when the operator wrote it, by phase entered.",
            )
            .buckets(vec![0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0]),
            &["phase"],
        )?;
        let transitions_caught_up = IntCounterVec::new(
            Opts::new(
                "tether_operator_transitions_caught_up_total",
                "Time-driven session transitions that were due before the operator started or before the session was created, by phase entered.",
            ),
            &["phase"],
        )?;
        let notifications = IntCounterVec::new(
            Opts::new(
                "tether_operator_notifications_total",
                "AssistanceRequest notifications, by channel and result (after retries).",
            ),
            &["channel", "result"],
        )?;
        let recordings_deleted = IntCounter::new(
            "tether_operator_recordings_deleted_total",
            "Sessions whose recordings were deleted by retention.",
        )?;
        let recording_sweeps = IntCounter::new(
            "tether_operator_recording_sweeps_total",
            "Recording retention sweeps run, successful or not.",
        )?;
        let recording_sweep_errors = IntCounter::new(
            "tether_operator_recording_sweep_errors_total",
            "Store or API operations of recording retention sweeps that failed.",
        )?;
        let recordings_held = IntGauge::new(
            "tether_operator_recordings_held",
            "Sessions whose recordings were on legal hold at the last retention sweep.",
        )?;
        let leader = IntGauge::new(
            "tether_operator_leader",
            "1 while this operator process leads (holds the leader Lease) and runs the controllers, 0 while it stands by.",
        )?;
        registry.register(Box::new(leader.clone()))?;
        registry.register(Box::new(recordings_deleted.clone()))?;
        registry.register(Box::new(recording_sweeps.clone()))?;
        registry.register(Box::new(recording_sweep_errors.clone()))?;
        registry.register(Box::new(recordings_held.clone()))?;
        registry.register(Box::new(notifications.clone()))?;
        registry.register(Box::new(reconcile_duration.clone()))?;
        registry.register(Box::new(reconcile_errors.clone()))?;
        registry.register(Box::new(transition_lateness.clone()))?;
        registry.register(Box::new(transitions_caught_up.clone()))?;
        // Every channel and result is exposed from the start, at zero, so dashboards and
        // alerts see the metric before the first notification.
        for channel in ["email", "webhook"] {
            for result in ["delivered", "failed"] {
                notifications.with_label_values(&[channel, result]);
            }
        }
        Ok(Self {
            leader,
            reconcile_duration,
            reconcile_errors,
            transition_lateness,
            transitions_caught_up,
            notifications,
            recordings_deleted,
            recording_sweeps,
            recording_sweep_errors,
            recordings_held,
        })
    }
}

/// How a time-driven transition counts in the metrics.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Lateness {
    /// The operator was running and the session existed when the transition was due: the
    /// delay, in seconds, is the operator's own lateness.
    Late(f64),
    /// The transition was due before the operator started or before the session was
    /// created: the operator caught up with it; no lateness is attributed.
    CaughtUp,
}

impl Lateness {
    /// Classifies a transition due at `due` and written at `now`, for a session created at
    /// `created` (if known) by an operator that started at `started`.
    pub fn of(
        due: jiff::Timestamp,
        now: jiff::Timestamp,
        created: Option<jiff::Timestamp>,
        started: jiff::Timestamp,
    ) -> Self {
        // Kubernetes times have second precision: a transition due in the creation second,
        // or in the second the operator started, was not due before either.
        let created = created.map(|c| c.as_second());
        if due.as_second() < started.as_second() || created.is_some_and(|c| due.as_second() < c) {
            return Self::CaughtUp;
        }
        Self::Late(now.duration_since(due).as_secs_f64().max(0.0))
    }
}

impl Metrics {
    /// Records a transition that was due at `due`: its lateness, or that it was caught up.
    pub fn observe_transition(&self, phase: &str, lateness: Lateness) {
        match lateness {
            Lateness::Late(secs) => self
                .transition_lateness
                .with_label_values(&[phase])
                .observe(secs),
            Lateness::CaughtUp => self.transitions_caught_up.with_label_values(&[phase]).inc(),
        }
    }
}

/// `tether_operator_sessions{phase}`: RemoteSessions by phase, counted from the controller's
/// cache at scrape time, so it is always consistent with what the operator sees.
pub struct SessionPhases {
    store: Store<RemoteSession>,
    gauge: IntGaugeVec,
}

impl SessionPhases {
    /// A collector over the controller's RemoteSession cache.
    pub fn new(store: Store<RemoteSession>) -> Result<Self, prometheus::Error> {
        let gauge = IntGaugeVec::new(
            Opts::new(
                "tether_operator_sessions",
                "RemoteSessions known to the operator, by phase (\"Unknown\" before the first reconcile).",
            ),
            &["phase"],
        )?;
        Ok(Self { store, gauge })
    }
}

impl Collector for SessionPhases {
    fn desc(&self) -> Vec<&Desc> {
        self.gauge.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mut counts = [0i64; SessionPhase::ALL.len()];
        let mut unknown = 0i64;
        for session in self.store.state() {
            match session.status.as_ref().and_then(|s| s.phase) {
                Some(phase) => {
                    if let Some(i) = SessionPhase::ALL.iter().position(|p| *p == phase) {
                        counts[i] += 1;
                    }
                }
                None => unknown += 1,
            }
        }
        for (phase, count) in SessionPhase::ALL.iter().zip(counts) {
            self.gauge.with_label_values(&[phase.as_str()]).set(count);
        }
        self.gauge.with_label_values(&["Unknown"]).set(unknown);
        self.gauge.collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_register_with_help_text() {
        let registry = Registry::new();
        let metrics = Metrics::register(&registry).unwrap();
        metrics
            .reconcile_errors
            .with_label_values(&["remotesession", "status"])
            .inc();
        metrics
            .reconcile_duration
            .with_label_values(&["remotesession"])
            .observe(0.01);
        metrics
            .transition_lateness
            .with_label_values(&["Expired"])
            .observe(0.2);
        metrics
            .notifications
            .with_label_values(&["email", "failed"])
            .inc();
        metrics.observe_transition("Pending", Lateness::CaughtUp);
        let families = registry.gather();
        // Five labelled families with a sample each, the four recording metrics and the
        // leader gauge.
        assert_eq!(families.len(), 10);
        assert!(
            families
                .iter()
                .any(|f| f.name() == "tether_operator_leader")
        );
        for family in families {
            assert!(
                !family.help().is_empty(),
                "{} has no help text",
                family.name()
            );
        }
        // Registering twice is refused rather than silently duplicated.
        assert!(Metrics::register(&registry).is_err());
    }

    #[test]
    fn notifications_are_exposed_before_the_first_one() {
        let registry = Registry::new();
        Metrics::register(&registry).unwrap();
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&registry.gather())
            .unwrap();
        for channel in ["email", "webhook"] {
            for result in ["delivered", "failed"] {
                let line = format!(
                    "tether_operator_notifications_total{{channel=\"{channel}\",result=\"{result}\"}} 0"
                );
                assert!(text.contains(&line), "{line} missing from:\n{text}");
            }
        }
    }

    fn t(s: &str) -> jiff::Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn a_start_in_the_past_is_caught_up_not_late() {
        let started = t("2026-01-01T10:00:00Z");
        let now = t("2026-01-01T12:00:00Z");
        // Created now with a start in 2020: not 6 years of lateness.
        assert_eq!(
            Lateness::of(t("2020-01-01T00:00:00Z"), now, Some(now), started),
            Lateness::CaughtUp
        );
        // Due while no operator ran (before this one started): caught up.
        assert_eq!(
            Lateness::of(
                t("2026-01-01T09:00:00Z"),
                now,
                Some(t("2025-12-31T00:00:00Z")),
                started
            ),
            Lateness::CaughtUp
        );
        // Due while the operator ran, for a session that existed: that is lateness.
        assert_eq!(
            Lateness::of(
                t("2026-01-01T11:59:58Z"),
                now,
                Some(t("2026-01-01T11:00:00Z")),
                started
            ),
            Lateness::Late(2.0)
        );
        // Due in the very second the session was created (an instant session): on time.
        let created = t("2026-01-01T11:59:59Z");
        assert_eq!(
            Lateness::of(t("2026-01-01T11:59:59.500Z"), now, Some(created), started),
            Lateness::Late(0.5)
        );
        // Due in the second the operator started (its clock is finer than the API server's).
        let started = t("2026-01-01T11:59:59.700Z");
        assert_eq!(
            Lateness::of(t("2026-01-01T11:59:59Z"), now, Some(created), started),
            Lateness::Late(1.0)
        );
    }

    #[test]
    fn caught_up_transitions_are_counted_apart() {
        let registry = Registry::new();
        let metrics = Metrics::register(&registry).unwrap();
        metrics.observe_transition("Expired", Lateness::CaughtUp);
        metrics.observe_transition("Expired", Lateness::Late(0.2));
        assert_eq!(
            metrics
                .transitions_caught_up
                .with_label_values(&["Expired"])
                .get(),
            1
        );
        assert_eq!(
            metrics
                .transition_lateness
                .with_label_values(&["Expired"])
                .get_sample_count(),
            1
        );
    }
}
