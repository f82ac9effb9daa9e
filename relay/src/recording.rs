//! Where the relay records, and `status.recording` from what is in the store. A session's
//! own recording (start, failure, finish) is in [`crate::session::recording`].

use std::time::Duration;

use jiff::Timestamp;
use tether_recording::{Manifest, RecorderSettings, State, Storage};
use tracing::warn;

use crate::link::cluster_warn;

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

    use tether_recording::{ObjectEntry, ObjectKind, SessionRef};

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
