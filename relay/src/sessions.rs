//! Sessions as the relay sees them: created when the first technician joins, with the
//! user's consent asked for each technician who joins (one prompt at a time; a technician the
//! user already allowed reconnects without a new prompt), a bounded number of technicians at
//! once, a deadline the relay enforces
//! itself from the token (countdown from two minutes before the end, hard close at the end,
//! even with the operator down), and one way to end — whoever ends it, every channel closes
//! and both sides are told why.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use tether_proto::message::Control;
use tether_proto::token::Claims;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::info;

use tether_recording::events::What;

use crate::agents::AgentLink;
use crate::recording::SessionRecording;
use crate::server::{Relay, cluster_warn};

/// Seconds before the end at which countdown messages go out.
const COUNTDOWN: [i64; 9] = [120, 60, 30, 10, 5, 4, 3, 2, 1];

/// The user's consent for a session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Consent {
    /// Not asked yet.
    Unknown,
    /// The prompt is on the user's screen.
    Asking,
    /// The user agreed (or no consent is needed).
    Granted,
    /// The user refused or did not answer.
    Denied(String),
}

/// A live session on this relay.
pub struct SessionState {
    /// RemoteSession uid.
    pub uid: String,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Device.
    pub device: String,
    /// When the relay closes it (Unix seconds).
    pub ends_at: i64,
    /// Whether the user must consent to each technician.
    pub consent_required: bool,
    /// The user's consent, per technician (by verified name).
    pub consent: watch::Sender<BTreeMap<String, Consent>>,
    /// Held while a consent prompt is on the user's screen: one prompt at a time.
    asking: tokio::sync::Mutex<()>,
    /// Technicians connected or being admitted.
    seats: Arc<AtomicUsize>,
    /// Cancelled when the session ends; every channel and technician connection watches it.
    pub ended: CancellationToken,
    /// Control queues of the technicians joined.
    pub technicians: Mutex<Vec<mpsc::Sender<Control>>>,
    /// The relay's conditions on the RemoteSession (type → status, reason, message).
    pub conditions: Mutex<BTreeMap<String, (bool, String, String)>>,
    /// The session's recording.
    pub(crate) recording: SessionRecording,
    /// Tasks that live as long as the session (its deadline, its recording's watcher).
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

/// A technician's place in a session; given back when dropped.
pub struct Seat(Arc<AtomicUsize>);

impl Drop for Seat {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl SessionState {
    /// Takes one of the session's `max` technician places, if one is free.
    pub fn take_seat(&self, max: usize) -> Option<Seat> {
        self.seats
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Seat(self.seats.clone()))
    }

    /// Ties a task to the session: it is stopped when the session is dropped.
    pub(crate) fn own(&self, task: tokio::task::JoinHandle<()>) {
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        tasks.retain(|t| !t.is_finished());
        tasks.push(task);
    }
}

impl Drop for SessionState {
    fn drop(&mut self) {
        for task in self
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            task.abort();
        }
    }
}

impl Relay {
    /// The session for `claims`, created (with its deadline) on first use.
    pub(crate) fn session(self: &Arc<Self>, claims: &Claims) -> Arc<SessionState> {
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = sessions.get(&claims.session.uid) {
            return s.clone();
        }
        let state = Arc::new(SessionState {
            uid: claims.session.uid.clone(),
            namespace: claims.session.namespace.clone(),
            name: claims.session.name.clone(),
            device: claims.session.device.clone(),
            ends_at: claims.session.ends_at,
            consent_required: claims.session.consent,
            consent: watch::channel(BTreeMap::new()).0,
            asking: tokio::sync::Mutex::new(()),
            seats: Arc::new(AtomicUsize::new(0)),
            ended: CancellationToken::new(),
            technicians: Mutex::new(Vec::new()),
            conditions: Mutex::new(BTreeMap::new()),
            recording: SessionRecording::default(),
            tasks: Mutex::new(Vec::new()),
        });
        let relay = self.clone();
        let weak = Arc::downgrade(&state);
        state.own(tokio::spawn(async move { relay.deadline(weak).await }));
        sessions.insert(state.uid.clone(), state.clone());
        self.metrics.sessions.set(sessions.len() as i64);
        state
    }

    /// Countdown, then the hard close at the session's end.
    async fn deadline(self: Arc<Self>, session: std::sync::Weak<SessionState>) {
        let Some(ends_at) = session.upgrade().map(|s| s.ends_at) else {
            return;
        };
        let now = Timestamp::now().as_second();
        let mut marks: Vec<i64> = COUNTDOWN
            .iter()
            .copied()
            .filter(|c| ends_at - c >= now)
            .collect();
        // Already inside the last two minutes: say so at once.
        if ends_at - now <= 120 && ends_at > now {
            marks.insert(0, ends_at - now);
        }
        for seconds_left in marks {
            sleep_until_unix(ends_at - seconds_left).await;
            let Some(s) = session.upgrade() else { return };
            if s.ended.is_cancelled() {
                return;
            }
            let message = Control::Countdown {
                session_uid: s.uid.clone(),
                seconds_left,
            };
            self.tell_session(&s, message).await;
            s.record(What::Countdown { seconds_left }).await;
        }
        sleep_until_unix(ends_at).await;
        if let Some(s) = session.upgrade() {
            info!(session = %s.name, namespace = %s.namespace, "Closed an expired session");
            self.end_session(&s, "Expired", None).await;
        }
    }

    /// Sends a control message to the session's agent and technicians.
    pub(crate) async fn tell_session(&self, session: &SessionState, message: Control) {
        if let Some(agent) = self.agent(&session.namespace, &session.device) {
            let _ = agent.control.send(message.clone()).await;
        }
        let technicians = session
            .technicians
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for t in technicians {
            let _ = t.send(message.clone()).await;
        }
    }

    /// Ends a session: everyone is told `reason`, every channel closes, and when a party ended
    /// it (`report` = condition reason), the `Ended` condition is written for the operator.
    pub(crate) async fn end_session(
        &self,
        session: &SessionState,
        reason: &str,
        report: Option<&str>,
    ) {
        let removed = {
            let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
            let removed = sessions.remove(&session.uid).is_some();
            self.metrics.sessions.set(sessions.len() as i64);
            removed
        };
        if !removed && session.ended.is_cancelled() {
            return;
        }
        self.tell_session(
            session,
            Control::Ended {
                session_uid: session.uid.clone(),
                reason: reason.to_owned(),
            },
        )
        .await;
        session.ended.cancel();
        if let Some(report) = report {
            // A failed recording explains itself in the Recording condition.
            let recording_failure = session
                .conditions
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(crate::recording::CONDITION)
                .filter(|(ok, reason, _)| !ok && reason == report)
                .map(|(_, _, message)| message.clone());
            let message = recording_failure
                .map(|m| format!("the session was ended because it must be recorded and {m}"))
                .unwrap_or_else(|| format!("the session was ended: {report}"));
            self.set_condition(session, "Ended", true, report, &message)
                .await;
        }
        // After everything the parties and the operator must know at once: completing the
        // uploads can take a moment.
        self.finish_recording(session, reason).await;
    }

    /// Records one of the relay's conditions on the RemoteSession.
    pub(crate) async fn set_condition(
        &self,
        session: &SessionState,
        type_: &str,
        status: bool,
        reason: &str,
        message: &str,
    ) {
        let conditions = {
            let mut c = session.conditions.lock().unwrap_or_else(|e| e.into_inner());
            c.insert(
                type_.to_owned(),
                (status, reason.to_owned(), message.to_owned()),
            );
            c.clone()
        };
        if let Some(cluster) = &self.cluster {
            cluster_warn(
                cluster
                    .session_conditions(&session.namespace, &session.name, &conditions)
                    .await,
                "record a session condition",
            );
        }
    }

    /// Makes sure the user has allowed `technician` to join, asking if they have not been
    /// asked yet (one prompt at a time). `Err` carries the refusal reason. When the first
    /// technician is refused, the session ends `Denied`; a later one is refused alone.
    pub(crate) async fn ensure_consent(
        &self,
        session: &Arc<SessionState>,
        agent: &AgentLink,
        technician: &str,
        claims: &Claims,
    ) -> Result<(), String> {
        if !session.consent_required {
            return Ok(());
        }
        let _prompt = tokio::select! {
            guard = session.asking.lock() => guard,
            () = session.ended.cancelled() => return Err("the session ended".into()),
        };
        let earlier = session.consent.borrow().get(technician).cloned();
        match earlier {
            Some(Consent::Granted) => return Ok(()),
            Some(Consent::Denied(reason)) => return Err(reason),
            Some(Consent::Unknown | Consent::Asking) | None => {}
        }
        let first = !session
            .consent
            .borrow()
            .values()
            .any(|c| *c == Consent::Granted);
        session.consent.send_modify(|c| {
            c.insert(technician.to_owned(), Consent::Asking);
        });
        session
            .record(What::ConsentAsked {
                technician: technician.to_owned(),
            })
            .await;
        let timeout = self.settings.consent_timeout;
        let (granted, reason) = tokio::select! {
            answer = agent.ask_consent(claims, technician, timeout) => {
                answer.unwrap_or_else(|| (false, "ConsentTimedOut".to_owned()))
            }
            () = session.ended.cancelled() => return Err("the session ended".into()),
        };
        session
            .record(What::ConsentAnswered {
                granted,
                reason: reason.clone(),
            })
            .await;
        session.consent.send_modify(|c| {
            c.insert(
                technician.to_owned(),
                if granted {
                    Consent::Granted
                } else {
                    Consent::Denied(reason.clone())
                },
            );
        });
        let shown = tether_proto::text::escape(technician);
        if granted {
            self.set_condition(
                session,
                "Consented",
                true,
                &reason,
                &format!("the user allowed {shown} to join"),
            )
            .await;
            Ok(())
        } else {
            info!(session = %session.name, namespace = %session.namespace, technician = %shown, %reason, "The user did not allow a technician to join");
            if first {
                self.set_condition(
                    session,
                    "Consented",
                    false,
                    &reason,
                    &format!("the user did not allow {shown} to join ({reason})"),
                )
                .await;
                self.end_session(session, "ConsentDenied", None).await;
            }
            Err(reason)
        }
    }
}

async fn sleep_until_unix(at: i64) {
    let now = Timestamp::now();
    let target = Timestamp::from_second(at).unwrap_or(now);
    if let Ok(left) = Duration::try_from(target.duration_since(now)) {
        tokio::time::sleep(left).await;
    }
}
