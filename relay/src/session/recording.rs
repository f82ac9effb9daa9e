//! A session's recording at the relay: every session whose token asks for it is recorded
//! from the moment the first technician joins until it ends, to the store the operator
//! configured.
//!
//! The policy comes from the session token. `Enabled` sessions run whatever happens to the
//! recording and report a failure in the `Recording` condition; `Required` sessions are
//! fail-closed: nobody joins while the store is unreachable (the session stays `Pending`), and
//! a recording that fails mid-session ends the session with the reason `RecordingFailed`.

use std::sync::{Arc, Weak};
use std::time::Duration;

use tether_proto::token::RecordingPolicy;
use tether_recording::{Recorder, SessionRef};
use tokio_util::task::TaskTracker;
use tokio_util::task::task_tracker::TaskTrackerToken;
use tracing::{info, warn};

use tether_crds::contract::reasons;

use super::machine::{EndReason, condition::RECORDING};
use super::registry::SessionHandle;

/// How long a finishing recording waits for its channels' last frames.
const CHANNELS_DRAIN: Duration = Duration::from_secs(5);

/// A session's recording as the relay tracks it.
#[derive(Default)]
pub(crate) struct SessionRecording {
    /// The live recorder, once started.
    recorder: std::sync::Mutex<Option<Recorder>>,
    /// Serialises starts, and says whether recording was given up (an `Enabled` session
    /// whose store failed continues unrecorded).
    start: tokio::sync::Mutex<Started>,
    /// The channels being recorded: the recording finishes after their last events.
    channels: TaskTracker,
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

    /// Marks a channel as being recorded until the token is dropped.
    pub(crate) fn channel(&self) -> TaskTrackerToken {
        self.channels.token()
    }

    fn take(&self) -> Option<Recorder> {
        self.recorder
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }
}

impl SessionHandle {
    /// Makes sure the session is recorded as its policy asks before anyone joins. `Err`
    /// carries the sentence a technician is refused with (`Required` and no working store).
    pub async fn ensure_recording(self: &Arc<Self>, policy: RecordingPolicy) -> Result<(), String> {
        if policy == RecordingPolicy::Disabled {
            return Ok(());
        }
        let Some(env) = self.env() else {
            return Err("the relay is shutting down".into());
        };
        let mut started = self.recording.start.lock().await;
        if *started == Started::Yes
            && policy == RecordingPolicy::Required
            && self.recording.recorder().is_none_or(|r| r.is_failed())
        {
            return Err("the session must be recorded and its recording failed".into());
        }
        if *started != Started::No {
            return Ok(());
        }
        let required = policy == RecordingPolicy::Required;
        let Some(setup) = &env.settings.recording else {
            let message = "no recording store is configured (tether-operator --recording-store)";
            self.set_condition(RECORDING, false, reasons::NOT_CONFIGURED, message)
                .await;
            if required {
                return Err(format!("the session must be recorded, but {message}"));
            }
            *started = Started::GivenUp;
            return Ok(());
        };
        let reference = SessionRef {
            namespace: self.info.namespace.clone(),
            name: self.info.name.clone(),
            uid: self.info.uid.clone(),
        };
        let attempt = tokio::time::timeout(
            setup.start_timeout,
            Recorder::start(
                setup.storage.clone(),
                setup.settings.clone(),
                reference,
                self.info.device.clone(),
            ),
        )
        .await;
        let error = match attempt {
            Ok(Ok(recorder)) => {
                *self
                    .recording
                    .recorder
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = Some(recorder.clone());
                *started = Started::Yes;
                drop(started);
                env.metrics.recordings.inc();
                self.set_condition(
                    RECORDING,
                    true,
                    reasons::RECORDING,
                    &format!("recording to {}", setup.storage.location),
                )
                .await;
                self.own(watch_recording(Arc::downgrade(self), recorder, policy));
                self.publish_recording().await;
                return Ok(());
            }
            Ok(Err(e)) => format!("{e}"),
            Err(_) => format!(
                "the recording store did not answer within {:?}",
                setup.start_timeout
            ),
        };
        env.metrics
            .recording_failures
            .with_label_values(&["start"])
            .inc();
        let message = format!("the recording store is unavailable: {error}");
        warn!(session = %self.info.name, namespace = %self.info.namespace, error = %error, required, "Failed to start a recording");
        self.set_condition(RECORDING, false, reasons::STORAGE_UNAVAILABLE, &message)
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

    /// Finishes the session's recording (at its end or the relay's) and publishes the result.
    pub(crate) async fn finish_recording(&self, reason: &str) {
        let Some(recorder) = self.recording.take() else {
            return;
        };
        // The session's channels close at its end; their last frames are recorded first.
        self.recording.channels.close();
        if tokio::time::timeout(CHANNELS_DRAIN, self.recording.channels.wait())
            .await
            .is_err()
        {
            warn!(session = %self.info.name, namespace = %self.info.namespace, "Finished a recording before all of its channels had closed");
        }
        let manifest = recorder.finish(reason).await;
        if let Some(env) = self.env() {
            env.metrics.recordings.dec();
        }
        info!(session = %self.info.name, namespace = %self.info.namespace, recording = %manifest.id, state = manifest.state.as_str(), bytes = manifest.bytes(), "Finished a recording");
        self.publish_recording().await;
    }

    /// Writes `status.recording` from the session's manifests in the store.
    pub(crate) async fn publish_recording(&self) {
        let Some(env) = self.env() else { return };
        let (Some(setup), Some(cluster)) = (&env.settings.recording, &env.cluster) else {
            return;
        };
        crate::recording::publish(
            cluster,
            &setup.storage,
            &self.info.namespace,
            &self.info.name,
            &self.info.uid,
        )
        .await;
    }
}

/// Reacts to a recording that fails mid-session: a `Required` session ends, an `Enabled`
/// one goes on and says so.
async fn watch_recording(
    session: Weak<SessionHandle>,
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
    if let Some(env) = session.env() {
        env.metrics
            .recording_failures
            .with_label_values(&["write"])
            .inc();
    }
    let message = format!("recording failed: {error}");
    warn!(session = %session.info.name, namespace = %session.info.namespace, %error, "A session's recording failed");
    // The condition first (the Ended message quotes it), then at once the end of a session
    // that must be recorded: nothing more may pass unrecorded.
    session
        .set_condition(RECORDING, false, reasons::RECORDING_FAILED, &message)
        .await;
    if policy == RecordingPolicy::Required {
        info!(session = %session.info.name, namespace = %session.info.namespace, "Ending a session that must be recorded");
        session.end(EndReason::RecordingFailed).await;
    } else {
        session.publish_recording().await;
    }
}
