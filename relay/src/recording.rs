//! Recording at the relay: every session whose token asks for it is recorded from the moment
//! the first technician joins until it ends, to the store the operator configured.
//!
//! The policy comes from the session token. `Enabled` sessions run whatever happens to the
//! recording and report a failure in the `Recording` condition; `Required` sessions are
//! fail-closed: nobody joins while the store is unreachable (the session stays `Pending`), and
//! a recording that fails mid-session ends the session with the reason `RecordingFailed`.
//! The relay also keeps `status.recording` up to date from the manifests in the store.

use std::sync::{Arc, Weak};
use std::time::Duration;

use jiff::Timestamp;
use tether_proto::token::RecordingPolicy;
use tether_recording::events::What;
use tether_recording::{Manifest, Recorder, RecorderSettings, SessionRef, State, Storage};
use tracing::{info, warn};

use crate::server::{Relay, cluster_warn};
use crate::sessions::SessionState;

/// The `Recording` condition the relay writes on RemoteSessions.
pub const CONDITION: &str = "Recording";

/// Where and how the relay records.
#[derive(Clone, Debug)]
pub struct RecordingSetup {
    /// The object store.
    pub storage: Storage,
    /// Part size, flush interval, queue.
    pub settings: RecorderSettings,
    /// How long starting a recording may take before the store counts as unavailable.
    pub start_timeout: Duration,
}

/// A session's recording as the relay tracks it.
#[derive(Default)]
pub(crate) struct SessionRecording {
    /// The live recorder, once started.
    recorder: std::sync::Mutex<Option<Recorder>>,
    /// Serialises starts, and says whether recording was given up (an `Enabled` session
    /// whose store failed continues unrecorded).
    start: tokio::sync::Mutex<Started>,
}

#[derive(Default, PartialEq, Eq)]
enum Started {
    #[default]
    No,
    Yes,
    GivenUp,
}

impl SessionRecording {
    /// The live recorder, if the session is being recorded.
    pub(crate) fn recorder(&self) -> Option<Recorder> {
        self.recorder
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn take(&self) -> Option<Recorder> {
        self.recorder
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }
}

impl SessionState {
    /// Appends an event to the session's recording, if it is recorded.
    pub(crate) async fn record(&self, what: What) {
        if let Some(recorder) = self.recording.recorder() {
            recorder.event(what).await;
        }
    }
}

impl Relay {
    /// Makes sure the session is recorded as its policy asks before anyone joins. `Err`
    /// carries the sentence a technician is refused with (`Required` and no working store).
    pub(crate) async fn ensure_recording(
        self: &Arc<Self>,
        session: &Arc<SessionState>,
        policy: RecordingPolicy,
    ) -> Result<(), String> {
        if policy == RecordingPolicy::Disabled {
            return Ok(());
        }
        let mut started = session.recording.start.lock().await;
        if *started == Started::Yes
            && policy == RecordingPolicy::Required
            && session.recording.recorder().is_none_or(|r| r.is_failed())
        {
            return Err("the session must be recorded and its recording failed".into());
        }
        if *started != Started::No {
            return Ok(());
        }
        let required = policy == RecordingPolicy::Required;
        let Some(setup) = &self.settings.recording else {
            let message = "no recording store is configured (tether-operator --recording-store)";
            self.set_condition(session, CONDITION, false, "NotConfigured", message)
                .await;
            if required {
                return Err(format!("the session must be recorded, but {message}"));
            }
            *started = Started::GivenUp;
            return Ok(());
        };
        let reference = SessionRef {
            namespace: session.namespace.clone(),
            name: session.name.clone(),
            uid: session.uid.clone(),
        };
        let attempt = tokio::time::timeout(
            setup.start_timeout,
            Recorder::start(
                setup.storage.clone(),
                setup.settings.clone(),
                reference,
                session.device.clone(),
            ),
        )
        .await;
        let error = match attempt {
            Ok(Ok(recorder)) => {
                *session
                    .recording
                    .recorder
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = Some(recorder.clone());
                *started = Started::Yes;
                drop(started);
                self.metrics.recordings.inc();
                self.set_condition(
                    session,
                    CONDITION,
                    true,
                    "Recording",
                    &format!("recording to {}", setup.storage.location),
                )
                .await;
                let watcher = {
                    let relay = self.clone();
                    let weak = Arc::downgrade(session);
                    tokio::spawn(async move { relay.watch_recording(weak, recorder, policy).await })
                };
                session.own(watcher);
                self.publish_recording(session).await;
                return Ok(());
            }
            Ok(Err(e)) => format!("{e}"),
            Err(_) => format!(
                "the recording store did not answer within {:?}",
                setup.start_timeout
            ),
        };
        self.metrics
            .recording_failures
            .with_label_values(&["start"])
            .inc();
        let message = format!("the recording store is unavailable: {error}");
        warn!(session = %session.name, namespace = %session.namespace, error = %error, required, "Failed to start a recording");
        self.set_condition(session, CONDITION, false, "StorageUnavailable", &message)
            .await;
        if required {
            // Nobody joins; the next technician tries again.
            return Err(format!(
                "the session must be recorded and {message}; try again when the store is back"
            ));
        }
        *started = Started::GivenUp;
        Ok(())
    }

    /// Reacts to a recording that fails mid-session: a `Required` session ends, an
    /// `Enabled` one goes on and says so.
    async fn watch_recording(
        self: Arc<Self>,
        session: Weak<SessionState>,
        recorder: Recorder,
        policy: RecordingPolicy,
    ) {
        let mut failure = recorder.failure();
        let error = loop {
            if let Some(error) = failure.borrow_and_update().clone() {
                break error;
            }
            if failure.changed().await.is_err() {
                return;
            }
        };
        let Some(session) = session.upgrade() else {
            return;
        };
        if session.ended.is_cancelled() {
            return;
        }
        self.metrics
            .recording_failures
            .with_label_values(&["write"])
            .inc();
        let message = format!("recording failed: {error}");
        warn!(session = %session.name, namespace = %session.namespace, %error, "A session's recording failed");
        // The condition first (the Ended message quotes it), then at once the end of a
        // session that must be recorded: nothing more may pass unrecorded.
        self.set_condition(&session, CONDITION, false, "RecordingFailed", &message)
            .await;
        if policy == RecordingPolicy::Required {
            info!(session = %session.name, namespace = %session.namespace, "Ending a session that must be recorded");
            self.end_session(&session, "RecordingFailed", Some("RecordingFailed"))
                .await;
        } else {
            self.publish_recording(&session).await;
        }
    }

    /// Finishes the session's recording (at its end or the relay's) and publishes the result.
    pub(crate) async fn finish_recording(&self, session: &SessionState, reason: &str) {
        let Some(recorder) = session.recording.take() else {
            return;
        };
        let manifest = recorder.finish(reason).await;
        self.metrics.recordings.dec();
        info!(session = %session.name, namespace = %session.namespace, recording = %manifest.id, state = manifest.state.as_str(), bytes = manifest.bytes(), "Finished a recording");
        self.publish_recording(session).await;
    }

    /// Writes `status.recording` from the session's manifests in the store.
    pub(crate) async fn publish_recording(&self, session: &SessionState) {
        let (Some(setup), Some(cluster)) = (&self.settings.recording, &self.cluster) else {
            return;
        };
        publish(
            cluster,
            &setup.storage,
            &session.namespace,
            &session.name,
            &session.uid,
        )
        .await;
    }
}

/// Writes a session's `status.recording` from its manifests in the store.
pub async fn publish(
    cluster: &crate::cluster::Cluster,
    storage: &Storage,
    namespace: &str,
    name: &str,
    uid: &str,
) {
    match tether_recording::catalog::list(storage, namespace, Some(name)).await {
        Ok(manifests) => {
            let ours: Vec<Manifest> = manifests
                .into_iter()
                .filter(|m| m.session.uid == uid)
                .collect();
            if ours.is_empty() {
                return;
            }
            let status = recording_status(&ours, &storage.location, Timestamp::now());
            cluster_warn(
                cluster.session_recording(namespace, name, &status).await,
                "record a session's recording status",
            );
        }
        Err(e) => {
            warn!(error = %e, session = %name, %namespace, "Failed to read a session's recordings")
        }
    }
}

/// `status.recording` for a session's manifests (oldest first).
pub fn recording_status(
    manifests: &[Manifest],
    location: &str,
    now: Timestamp,
) -> tether_crds::remote_session::RecordingStatus {
    use tether_crds::remote_session::{RecordingObject, RecordingStatus};
    let has = |state: State| manifests.iter().any(|m| m.state == state);
    let state = if has(State::Recording) {
        State::Recording
    } else if has(State::Failed) {
        State::Failed
    } else if has(State::Recovered) {
        State::Recovered
    } else {
        State::Complete
    };
    let started = manifests.iter().map(|m| m.started_at).min();
    let ended = if state == State::Recording {
        None
    } else {
        manifests.iter().filter_map(|m| m.ended_at).max()
    };
    let duration = match started {
        Some(s) => ended.unwrap_or(now).duration_since(s).as_secs().max(0),
        None => 0,
    };
    let time = |t: Timestamp| k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(t);
    let objects: Vec<RecordingObject> = manifests
        .iter()
        .flat_map(|m| &m.objects)
        .map(|o| RecordingObject {
            name: o.name.clone(),
            kind: o.kind.as_str().to_owned(),
            bytes: i64::try_from(o.bytes).unwrap_or(i64::MAX),
            sha256: o.sha256.clone(),
        })
        .collect();
    RecordingStatus {
        state: state.as_str().to_owned(),
        location: Some(location.to_owned()),
        bytes: objects.iter().map(|o| o.bytes).sum(),
        duration_seconds: duration,
        started_at: started.map(time),
        ended_at: ended.map(time),
        message: manifests.iter().rev().find_map(|m| m.error.clone()),
        objects,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // Tests fail loudly on any unexpected error.

    use tether_recording::{ObjectEntry, ObjectKind};

    use super::*;

    fn manifest(id: &str, state: State, start: &str, end: Option<&str>) -> Manifest {
        Manifest {
            id: id.into(),
            session: SessionRef {
                namespace: "ns".into(),
                name: "s".into(),
                uid: "u".into(),
            },
            device: "d".into(),
            relay: "r".into(),
            technicians: vec![],
            started_at: start.parse().unwrap(),
            ended_at: end.map(|e| e.parse().unwrap()),
            state,
            error: None,
            objects: vec![ObjectEntry {
                name: format!("{id}.events.jsonl"),
                kind: ObjectKind::Events,
                channel: None,
                technician: None,
                bytes: 10,
                sha256: Some("ab".into()),
                started_at: start.parse().unwrap(),
                ended_at: None,
            }],
        }
    }

    #[test]
    fn status_sums_every_recording_of_the_session() {
        let now: Timestamp = "2026-11-22T10:10:00Z".parse().unwrap();
        let status = recording_status(
            &[
                manifest(
                    "a",
                    State::Recovered,
                    "2026-11-22T10:00:00Z",
                    Some("2026-11-22T10:01:00Z"),
                ),
                manifest(
                    "b",
                    State::Complete,
                    "2026-11-22T10:02:00Z",
                    Some("2026-11-22T10:05:00Z"),
                ),
            ],
            "s3://bucket/rec",
            now,
        );
        assert_eq!(status.state, "Recovered");
        assert_eq!(status.bytes, 20);
        assert_eq!(status.duration_seconds, 300);
        assert_eq!(status.objects.len(), 2);
        assert_eq!(status.location.as_deref(), Some("s3://bucket/rec"));

        let live = recording_status(
            &[manifest(
                "c",
                State::Recording,
                "2026-11-22T10:09:00Z",
                None,
            )],
            "file:///r",
            now,
        );
        assert_eq!(live.state, "Recording");
        assert_eq!(live.duration_seconds, 60);
        assert!(live.ended_at.is_none());
    }
}
