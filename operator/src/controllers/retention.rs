//! Recording retention: at start and every sweep interval, recordings whose last change is
//! older than the retention are deleted from the store, unless they are on legal hold or
//! their session is still live.
//!
//! Legal hold follows the label `tether.dev/legal-hold: "true"` on the RemoteSession and is
//! mirrored into the store as a marker object next to the recordings, so that a hold
//! outlives the RemoteSession: a session that no longer exists keeps its recordings for as
//! long as the marker is there. Removing the label lifts the hold (and removes the marker).
//!
//! Guarantees: a recording is never deleted while its RemoteSession (same namespace, name and
//! uid) is not terminal, nor while it is held; nothing is deleted when the cluster could not
//! be listed. Errors are logged and counted and the next sweep tries again; they never stop
//! the operator.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use kube::api::ListParams;
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use tether_crds::remote_session::RemoteSession;
use tether_recording::catalog::{self, StoredSession};
use tether_recording::{SessionRef, Storage};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::Context;
use super::remote_session::Scope;

/// The label that puts a RemoteSession's recordings on legal hold (value `"true"`).
pub const LEGAL_HOLD_LABEL: &str = "tether.dev/legal-hold";

/// Page size when listing RemoteSessions.
const PAGE: u32 = 500;

/// What the cluster says about a stored session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Live {
    /// The RemoteSession carries the legal-hold label.
    pub labelled: bool,
    /// The RemoteSession is in a terminal phase.
    pub terminal: bool,
}

/// What to do with one stored session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Leave it.
    Keep(Keep),
    /// Write the legal-hold marker (the label is set) and keep it.
    Hold,
    /// Remove the legal-hold marker (the label was removed); keep the recording for now.
    Release,
    /// Delete the session's recordings (any marker goes with them).
    Delete,
}

/// Why a stored session is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Keep {
    /// Within the retention.
    Recent,
    /// On legal hold.
    Held,
    /// Its RemoteSession has not ended.
    Live,
}

/// Decides one stored session's fate. `live` is its RemoteSession, if one with the same
/// namespace, name and uid exists.
pub fn decide(
    stored: &StoredSession,
    live: Option<Live>,
    now: Timestamp,
    retention: Duration,
) -> Decision {
    let age = now.duration_since(stored.last_modified);
    let expired = age > SignedDuration::try_from(retention).unwrap_or(SignedDuration::MAX);
    match live {
        Some(Live { labelled: true, .. }) if stored.held => Decision::Keep(Keep::Held),
        Some(Live { labelled: true, .. }) => Decision::Hold,
        Some(Live {
            terminal: true,
            labelled: false,
        }) if expired => Decision::Delete,
        Some(Live {
            labelled: false, ..
        }) if stored.held => Decision::Release,
        Some(Live {
            terminal: false, ..
        }) => Decision::Keep(Keep::Live),
        Some(_) => Decision::Keep(Keep::Recent),
        // The session is gone: a marker is all that holds its recordings.
        None if stored.held => Decision::Keep(Keep::Held),
        None if expired => Decision::Delete,
        None => Decision::Keep(Keep::Recent),
    }
}

/// What one sweep did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sweep {
    /// Stored sessions looked at.
    pub seen: usize,
    /// Sessions whose recordings were deleted.
    pub deleted: usize,
    /// Sessions on legal hold after the sweep.
    pub held: usize,
    /// Store or API operations that failed.
    pub errors: usize,
}

/// A failed sweep step.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Opening the store failed (settings or credentials).
    #[error(transparent)]
    Open(#[from] crate::recordings::RecordingsError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] tether_recording::Error),
    /// Listing RemoteSessions failed.
    #[error("failed to list RemoteSessions")]
    List(#[source] kube::Error),
}

async fn live_sessions(
    ctx: &Context,
    scope: &Scope,
) -> Result<HashMap<(String, String), RemoteSession>, Error> {
    let api = scope.api::<RemoteSession>(ctx.client.clone());
    let mut sessions = HashMap::new();
    let mut params = ListParams::default().limit(PAGE);
    loop {
        let page = api.list(&params).await.map_err(Error::List)?;
        for session in page.items {
            let key = (session.namespace().unwrap_or_default(), session.name_any());
            sessions.insert(key, session);
        }
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(sessions),
        }
    }
}

fn live(session: &RemoteSession) -> Live {
    Live {
        labelled: session
            .labels()
            .get(LEGAL_HOLD_LABEL)
            .is_some_and(|v| v == "true"),
        terminal: session
            .status
            .as_ref()
            .and_then(|s| s.phase)
            .is_some_and(|p| p.is_terminal()),
    }
}

fn in_scope(scope: &Scope, session: &SessionRef) -> bool {
    match scope {
        Scope::Cluster => true,
        Scope::Namespace(ns) => &session.namespace == ns,
    }
}

async fn publish(ctx: &Context, session: &RemoteSession, reason: &str, note: String) {
    let event = Event {
        type_: EventType::Normal,
        reason: reason.to_owned(),
        note: Some(note),
        action: "Retention".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &session.object_ref(&())).await {
        warn!(session = %session.name_any(), error = %e, "Failed to publish an Event for RemoteSession");
    }
}

/// Runs one sweep over `storage` at `now`.
pub async fn sweep(
    ctx: &Context,
    scope: &Scope,
    storage: &Storage,
    retention: Duration,
    now: Timestamp,
) -> Result<Sweep, Error> {
    // The store first: a session ending between the two listings is then seen as live.
    let stored = catalog::sessions(storage).await?;
    let sessions = live_sessions(ctx, scope).await?;
    let retention_text = tether_crds::duration::format_go(retention);
    let mut report = Sweep::default();
    for stored in stored.iter().filter(|s| in_scope(scope, &s.session)) {
        report.seen += 1;
        let s = &stored.session;
        let session = sessions
            .get(&(s.namespace.clone(), s.name.clone()))
            .filter(|rs| rs.metadata.uid.as_deref() == Some(s.uid.as_str()));
        let decision = decide(stored, session.map(live), now, retention);
        debug!(namespace = %s.namespace, session = %s.name, uid = %s.uid, ?decision, "Looked at a stored recording");
        match decision {
            Decision::Keep(keep) => {
                if keep == Keep::Held {
                    report.held += 1;
                }
            }
            Decision::Hold => {
                let note = format!(
                    "held by the label {LEGAL_HOLD_LABEL}=true on RemoteSession {}/{} (uid {}) since {now}",
                    s.namespace, s.name, s.uid
                );
                match catalog::set_legal_hold(storage, s, true, &note).await {
                    Ok(()) => {
                        report.held += 1;
                        info!(namespace = %s.namespace, session = %s.name, uid = %s.uid, "Put the recording of RemoteSession on legal hold");
                        if let Some(rs) = session {
                            publish(ctx, rs, "LegalHoldSet", format!("The session's recordings are on legal hold ({LEGAL_HOLD_LABEL}=true); retention keeps them, also after the RemoteSession is deleted")).await;
                        }
                    }
                    Err(e) => {
                        report.errors += 1;
                        warn!(namespace = %s.namespace, session = %s.name, error = %crate::error_chain(&e), "Failed to put the recording of RemoteSession on legal hold");
                    }
                }
            }
            Decision::Release => match catalog::set_legal_hold(storage, s, false, "").await {
                Ok(()) => {
                    info!(namespace = %s.namespace, session = %s.name, uid = %s.uid, "Lifted the legal hold on the recording of RemoteSession");
                    if let Some(rs) = session {
                        publish(ctx, rs, "LegalHoldLifted", format!("The label {LEGAL_HOLD_LABEL} was removed: the session's recordings follow the retention of {retention_text} again")).await;
                    }
                }
                Err(e) => {
                    report.errors += 1;
                    warn!(namespace = %s.namespace, session = %s.name, error = %crate::error_chain(&e), "Failed to lift the legal hold on the recording of RemoteSession");
                }
            },
            Decision::Delete => match catalog::delete(storage, s).await {
                Ok(objects) => {
                    report.deleted += 1;
                    ctx.metrics.recordings_deleted.inc();
                    info!(
                        namespace = %s.namespace, session = %s.name, uid = %s.uid, objects,
                        last_modified = %stored.last_modified, retention = %retention_text,
                        "Deleted the recording of RemoteSession past its retention"
                    );
                    if let Some(rs) = session {
                        let lifted = if stored.held {
                            format!(
                                "the label {LEGAL_HOLD_LABEL} was removed, lifting the legal hold, and "
                            )
                        } else {
                            String::new()
                        };
                        publish(ctx, rs, "RecordingDeleted", format!("Deleted the session's recordings ({objects} objects, last changed {}): {lifted}they were past the retention of {retention_text}", stored.last_modified)).await;
                    }
                }
                Err(e) => {
                    report.errors += 1;
                    warn!(namespace = %s.namespace, session = %s.name, error = %crate::error_chain(&e), "Failed to delete the recording of RemoteSession");
                }
            },
        }
    }
    Ok(report)
}

/// Sweeps at start and every `settings.sweep_interval` until `shutdown`. Opens the store
/// (with the credentials Secret from `namespace`) for every sweep, so rotated credentials are
/// picked up.
pub async fn run(ctx: Arc<Context>, scope: Scope, namespace: String, shutdown: CancellationToken) {
    let settings = ctx.settings.recording.clone();
    let retention = settings.retention;
    let interval = settings.sweep_interval.max(Duration::from_secs(1));
    info!(
        store = settings.location().unwrap_or_default(),
        retention = %tether_crds::duration::format_go(retention),
        interval = %tether_crds::duration::format_go(interval),
        "Started recording retention"
    );
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = shutdown.cancelled() => return,
        }
        let result = async {
            let storage = settings
                .open(&ctx.client, &namespace)
                .await?
                .ok_or_else(|| {
                    crate::recordings::RecordingsError::Settings("no recording store".into())
                })?;
            sweep(&ctx, &scope, &storage, retention, Timestamp::now()).await
        };
        let result = tokio::select! {
            r = result => r,
            () = shutdown.cancelled() => return,
        };
        ctx.metrics.recording_sweeps.inc();
        match result {
            Ok(report) => {
                ctx.metrics.recordings_held.set(report.held as i64);
                ctx.metrics
                    .recording_sweep_errors
                    .inc_by(report.errors as u64);
                if report.deleted > 0 || report.errors > 0 {
                    info!(
                        seen = report.seen,
                        deleted = report.deleted,
                        held = report.held,
                        errors = report.errors,
                        "Swept recordings"
                    );
                }
            }
            Err(e) => {
                ctx.metrics.recording_sweep_errors.inc();
                warn!(error = %crate::error_chain(&e), "Failed to sweep recordings; retrying at the next interval");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: &str = "2026-06-01T12:00:00Z";
    const DAY: u64 = 24 * 3600;

    fn stored(days_old: i64, held: bool) -> StoredSession {
        StoredSession {
            session: SessionRef {
                namespace: "helpdesk".into(),
                name: "printer".into(),
                uid: "u-1".into(),
            },
            last_modified: now() - SignedDuration::from_hours(24 * days_old),
            held,
            keys: Vec::new(),
        }
    }

    fn now() -> Timestamp {
        NOW.parse().unwrap()
    }

    fn live(labelled: bool, terminal: bool) -> Option<Live> {
        Some(Live { labelled, terminal })
    }

    const RETENTION: Duration = Duration::from_secs(90 * DAY);

    #[test]
    fn old_recordings_of_ended_or_vanished_sessions_are_deleted() {
        let d = |s: StoredSession, l: Option<Live>| decide(&s, l, now(), RETENTION);
        assert_eq!(d(stored(91, false), live(false, true)), Decision::Delete);
        assert_eq!(d(stored(91, false), None), Decision::Delete);
        assert_eq!(
            d(stored(89, false), live(false, true)),
            Decision::Keep(Keep::Recent)
        );
        assert_eq!(d(stored(89, false), None), Decision::Keep(Keep::Recent));
        // Exactly at the retention is not yet older than it.
        assert_eq!(d(stored(90, false), None), Decision::Keep(Keep::Recent));
    }

    #[test]
    fn live_sessions_are_never_deleted() {
        assert_eq!(
            decide(&stored(400, false), live(false, false), now(), RETENTION),
            Decision::Keep(Keep::Live)
        );
    }

    #[test]
    fn the_label_holds_and_the_marker_outlives_the_session() {
        let d = |s: StoredSession, l: Option<Live>| decide(&s, l, now(), RETENTION);
        // Labelled: the marker is written, whatever the age or phase, then kept.
        assert_eq!(d(stored(400, false), live(true, true)), Decision::Hold);
        assert_eq!(d(stored(1, false), live(true, false)), Decision::Hold);
        assert_eq!(
            d(stored(400, true), live(true, true)),
            Decision::Keep(Keep::Held)
        );
        // The session is gone: the marker alone keeps the recording.
        assert_eq!(d(stored(400, true), None), Decision::Keep(Keep::Held));
        // The label was removed: the hold is lifted, and an old recording goes at once.
        assert_eq!(d(stored(10, true), live(false, true)), Decision::Release);
        assert_eq!(d(stored(400, true), live(false, false)), Decision::Release);
        assert_eq!(d(stored(400, true), live(false, true)), Decision::Delete);
    }

    #[test]
    fn a_zero_retention_still_respects_holds_and_live_sessions() {
        let d = |s: StoredSession, l: Option<Live>| decide(&s, l, now(), Duration::ZERO);
        assert_eq!(d(stored(0, true), None), Decision::Keep(Keep::Held));
        assert_eq!(
            d(stored(0, false), live(false, false)),
            Decision::Keep(Keep::Live)
        );
    }
}
