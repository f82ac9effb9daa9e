//! The relay's Prometheus metrics, defined and documented here. Labels are low-cardinality:
//! channel kind, direction, transport and refusal reason.

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

/// The relay's metrics.
#[derive(Clone, Debug)]
pub struct Metrics {
    /// `tether_relay_agents`: agents connected now.
    pub agents: IntGauge,
    /// `tether_relay_sessions`: sessions with at least one technician joined.
    pub sessions: IntGauge,
    /// `tether_relay_bytes_total{kind,direction}`: channel bytes relayed
    /// (`direction` = `to_agent` or `to_technician`).
    pub bytes: IntCounterVec,
    /// `tether_relay_rejected_total{reason}`: refused handshakes, channels and enrollments.
    pub rejected: IntCounterVec,
    /// `tether_relay_connections_total{transport,role}`: accepted connections.
    pub connections: IntCounterVec,
    /// `tether_relay_recordings`: sessions being recorded now.
    pub recordings: IntGauge,
    /// `tether_relay_recording_failures_total{stage}`: recordings that could not start
    /// (`start`), stopped because the store failed (`write`), or stalled behind a channel
    /// (`overflow`).
    pub recording_failures: IntCounterVec,
    /// `tether_relay_agent_duplicates_total{outcome}`: agent connections made with the
    /// identity of a device that was already connected: `refused` (the connected agent
    /// answered, so the newcomer was turned away) or `replaced` (it did not, and the newcomer
    /// took its place).
    pub agent_duplicates: IntCounterVec,
    /// `tether_relay_desktop_dropped_total{what}`: viewer input the relay dropped on desktop
    /// channels by the session's policy: `keys`, `pointer`, `clipboard`, `resizes` (view-only,
    /// clipboard not allowed) and `encodings` (stripped from SetEncodings).
    pub desktop_dropped: IntCounterVec,
    /// `tether_relay_desktop_closed_total{reason}`: desktop channels the relay closed because
    /// the viewer sent something it does not allow (`refused`) or cannot parse (`malformed`).
    pub desktop_closed: IntCounterVec,
    /// `tether_relay_forwarded_total`: technician connections this relay carried to the
    /// replica their device's agent is attached to.
    pub forwarded: IntCounter,
}

impl Metrics {
    /// Creates the metrics and registers them.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let agents = IntGauge::new("tether_relay_agents", "Agents connected to this relay.")?;
        let sessions = IntGauge::new(
            "tether_relay_sessions",
            "Sessions with at least one technician joined on this relay.",
        )?;
        let bytes = IntCounterVec::new(
            Opts::new(
                "tether_relay_bytes_total",
                "Channel bytes relayed, by channel kind and direction.",
            ),
            &["kind", "direction"],
        )?;
        let rejected = IntCounterVec::new(
            Opts::new(
                "tether_relay_rejected_total",
                "Refused handshakes, channels and enrollments, by reason.",
            ),
            &["reason"],
        )?;
        let connections = IntCounterVec::new(
            Opts::new(
                "tether_relay_connections_total",
                "Accepted connections, by transport and role.",
            ),
            &["transport", "role"],
        )?;
        let recordings = IntGauge::new(
            "tether_relay_recordings",
            "Sessions being recorded by this relay now.",
        )?;
        let recording_failures = IntCounterVec::new(
            Opts::new(
                "tether_relay_recording_failures_total",
                "Recordings that could not start (stage=start), failed while recording (stage=write) or stalled behind a channel (stage=overflow).",
            ),
            &["stage"],
        )?;
        let agent_duplicates = IntCounterVec::new(
            Opts::new(
                "tether_relay_agent_duplicates_total",
                "Agent connections with the identity of an already connected device: refused (the connected agent answered) or replaced (it did not).",
            ),
            &["outcome"],
        )?;
        let desktop_dropped = IntCounterVec::new(
            Opts::new(
                "tether_relay_desktop_dropped_total",
                "Viewer input dropped on desktop channels by the session's policy, by kind (keys, pointer, clipboard, resizes, encodings).",
            ),
            &["what"],
        )?;
        let desktop_closed = IntCounterVec::new(
            Opts::new(
                "tether_relay_desktop_closed_total",
                "Desktop channels closed because the viewer sent a message the relay does not allow (refused) or cannot parse (malformed).",
            ),
            &["reason"],
        )?;
        let forwarded = IntCounter::new(
            "tether_relay_forwarded_total",
            "Technician connections carried to the relay replica their device's agent is attached to.",
        )?;
        registry.register(Box::new(forwarded.clone()))?;
        registry.register(Box::new(desktop_dropped.clone()))?;
        registry.register(Box::new(desktop_closed.clone()))?;
        registry.register(Box::new(agent_duplicates.clone()))?;
        registry.register(Box::new(recordings.clone()))?;
        registry.register(Box::new(recording_failures.clone()))?;
        registry.register(Box::new(agents.clone()))?;
        registry.register(Box::new(sessions.clone()))?;
        registry.register(Box::new(bytes.clone()))?;
        registry.register(Box::new(rejected.clone()))?;
        registry.register(Box::new(connections.clone()))?;
        Ok(Self {
            agents,
            sessions,
            bytes,
            rejected,
            connections,
            recordings,
            recording_failures,
            agent_duplicates,
            desktop_dropped,
            desktop_closed,
            forwarded,
        })
    }
}
