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
    /// time-driven phase change was written (actual − scheduled).
    pub transition_lateness: HistogramVec,
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
        registry.register(Box::new(recordings_deleted.clone()))?;
        registry.register(Box::new(recording_sweeps.clone()))?;
        registry.register(Box::new(recording_sweep_errors.clone()))?;
        registry.register(Box::new(recordings_held.clone()))?;
        registry.register(Box::new(notifications.clone()))?;
        registry.register(Box::new(reconcile_duration.clone()))?;
        registry.register(Box::new(reconcile_errors.clone()))?;
        registry.register(Box::new(transition_lateness.clone()))?;
        Ok(Self {
            reconcile_duration,
            reconcile_errors,
            transition_lateness,
            notifications,
            recordings_deleted,
            recording_sweeps,
            recording_sweep_errors,
            recordings_held,
        })
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
        let families = registry.gather();
        // Four labelled families with a sample each, and the four recording metrics.
        assert_eq!(families.len(), 8);
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
}
