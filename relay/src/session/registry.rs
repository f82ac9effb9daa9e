//! The registry of live sessions: [`Sessions`] owns every session's state and the task that
//! drives its timers; connection handlers hold [`SessionHandle`]s. A handle feeds its
//! [`Machine`] with what happens (a technician sits down or leaves, the user answers, a
//! party ends the session, the clock reaches a timer) and carries out what the machine
//! decides: countdown and end messages to the agent and the technicians, consent prompts,
//! conditions for the operator, recording events, the recording's finish.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use jiff::Timestamp;
use tether_proto::message::{Control, Participant, SessionInfo};
use tether_proto::text::escape;
use tether_proto::token::Claims;
use tether_recording::events::What;
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::machine::{self, Consent, EndReason, Machine, Output, SeatRefusal};
use super::recording::SessionRecording;
use crate::devices::Devices;
use crate::env::Env;
use crate::link::{ControlTx, cluster_warn};

/// The longest a driver sleeps before reading the wall clock again, so that a clock step
/// delays no timer by more than this.
const RECHECK: Duration = Duration::from_secs(30);

/// Every live session on this relay, by uid.
#[derive(Clone)]
pub struct Sessions {
    shared: Arc<Shared>,
}

struct Shared {
    env: Arc<Env>,
    devices: Devices,
    live: Mutex<HashMap<String, Arc<SessionHandle>>>,
    drivers: Mutex<JoinSet<()>>,
}

impl Shared {
    fn live(&self) -> MutexGuard<'_, HashMap<String, Arc<SessionHandle>>> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn gauge(&self, live: &HashMap<String, Arc<SessionHandle>>) {
        self.env.metrics.sessions.set(live.len() as i64);
    }
}

impl Sessions {
    /// An empty registry.
    pub fn new(env: Arc<Env>, devices: Devices) -> Self {
        Self {
            shared: Arc::new(Shared {
                env,
                devices,
                live: Mutex::new(HashMap::new()),
                drivers: Mutex::new(JoinSet::new()),
            }),
        }
    }

    /// The session for `claims`, created (with its timers running) on first use.
    pub fn get_or_create(&self, claims: &Claims) -> Arc<SessionHandle> {
        let mut live = self.shared.live();
        if let Some(s) = live.get(&claims.session.uid) {
            return s.clone();
        }
        let env = &self.shared.env;
        let now = Timestamp::now();
        let ends_at = Timestamp::from_second(claims.session.ends_at).unwrap_or(now);
        let config = machine::Config {
            ends_at,
            consent_required: claims.session.consent,
            consent_timeout: consent_timeout(claims, env.settings.consent_timeout),
            max_technicians: env.settings.max_technicians,
        };
        let handle = Arc::new(SessionHandle {
            info: SessionInfo {
                uid: claims.session.uid.clone(),
                namespace: claims.session.namespace.clone(),
                name: claims.session.name.clone(),
                device: claims.session.device.clone(),
                ends_at: claims.session.ends_at,
                permissions: claims.session.permissions.clone(),
            },
            reason: claims.session.reason.clone(),
            ticket: claims.session.ticket.clone(),
            machine: Mutex::new(Machine::new(config, now)),
            timers: Arc::new(Notify::new()),
            changed: watch::channel(0).0,
            ended: CancellationToken::new(),
            technicians: Mutex::new(Vec::new()),
            recording: SessionRecording::default(),
            tasks: Mutex::new(JoinSet::new()),
            shared: Arc::downgrade(&self.shared),
        });
        {
            let mut drivers = self
                .shared
                .drivers
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            while drivers.try_join_next().is_some() {}
            drivers.spawn(drive(Arc::downgrade(&handle)));
        }
        live.insert(handle.info.uid.clone(), handle.clone());
        self.shared.gauge(&live);
        handle
    }

    /// The live session with this uid.
    pub fn get(&self, uid: &str) -> Option<Arc<SessionHandle>> {
        self.shared.live().get(uid).cloned()
    }

    /// Every live session.
    pub fn all(&self) -> Vec<Arc<SessionHandle>> {
        self.shared.live().values().cloned().collect()
    }

    /// Whether a technician sits in a live session with device `namespace/device` here.
    pub fn in_use(&self, namespace: &str, device: &str) -> bool {
        self.shared.live().values().any(|s| {
            s.info.namespace == namespace
                && s.info.device == device
                && !s.ended.is_cancelled()
                && s.machine().seats() > 0
        })
    }

    /// Ends every live session whose tokens were revoked (terminated or deleted).
    pub async fn end_revoked(&self) {
        let revoked: Vec<_> = self
            .all()
            .into_iter()
            .filter(|s| self.shared.env.trust.is_revoked(&s.info.uid))
            .collect();
        for session in revoked {
            info!(session = %session.info.name, namespace = %session.info.namespace, "Ended a revoked session");
            session.end(EndReason::Terminated).await;
        }
    }

    /// At the relay's shutdown: sessions outlive the relay (their parties reconnect to
    /// another one), so they are not ended; their recordings here end now, complete and
    /// readable, and their tasks stop.
    pub async fn shutdown(&self) {
        for session in self.all() {
            session.finish_recording("RelayShutdown").await;
            session.stop_tasks().await;
        }
        let mut drivers = std::mem::take(
            &mut *self
                .shared
                .drivers
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        drivers.shutdown().await;
    }
}

/// A live session on this relay.
pub struct SessionHandle {
    /// Who and what the session is, as its token says.
    pub info: SessionInfo,
    /// Why the session exists (shown in consent prompts).
    reason: Option<String>,
    /// The ticket the session is for (shown in consent prompts).
    ticket: Option<String>,
    machine: Mutex<Machine>,
    /// Woken when the machine's timers may have changed.
    timers: Arc<Notify>,
    /// Bumped whenever the machine's decisions changed (consent waiters watch it).
    changed: watch::Sender<u64>,
    /// Cancelled when the session ends; every channel and technician connection watches it.
    pub ended: CancellationToken,
    /// Control queues of the technicians joined, with who they are.
    technicians: Mutex<Vec<(ControlTx, Participant)>>,
    /// The session's recording.
    pub(crate) recording: SessionRecording,
    /// Tasks that live as long as the session (its recording's watcher).
    tasks: Mutex<JoinSet<()>>,
    shared: std::sync::Weak<Shared>,
}

/// A technician's place in a session; given back when dropped.
pub struct Seat {
    session: Arc<SessionHandle>,
    technician: String,
}

impl Drop for Seat {
    fn drop(&mut self) {
        self.session.machine().leave_seat(&self.technician);
    }
}

impl SessionHandle {
    fn machine(&self) -> MutexGuard<'_, Machine> {
        self.machine.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The relay's environment (absent only while the relay is being dropped).
    pub(crate) fn env(&self) -> Option<Arc<Env>> {
        self.shared.upgrade().map(|s| s.env.clone())
    }

    /// Ties a task to the session: it is stopped when the session's tasks stop.
    pub(crate) fn own(&self, task: impl Future<Output = ()> + Send + 'static) {
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        while tasks.try_join_next().is_some() {}
        tasks.spawn(task);
    }

    async fn stop_tasks(&self) {
        let mut tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        tasks.shutdown().await;
    }

    /// Takes one of the session's technician places, if one is free.
    pub fn take_seat(self: &Arc<Self>, technician: &str) -> Result<Seat, SeatRefusal> {
        self.machine().take_seat()?;
        Ok(Seat {
            session: self.clone(),
            technician: technician.to_owned(),
        })
    }

    /// Makes sure the user has allowed `technician` to join, asking if they were not asked
    /// yet (one prompt at a time). `Err` carries the refusal reason. When the first
    /// technician is refused, the session ends `ConsentDenied`; a later one is refused alone.
    pub async fn consent(&self, technician: &str) -> Result<(), String> {
        let mut changes = self.changed.subscribe();
        let mut asked = false;
        loop {
            let consent = {
                let mut machine = self.machine();
                if asked {
                    machine.consent(technician)
                } else {
                    machine.request_consent(technician, Timestamp::now())
                }
            };
            asked = true;
            self.carry_out().await;
            match consent {
                Consent::Granted => return Ok(()),
                Consent::Denied(reason) => return Err(reason),
                Consent::Queued | Consent::Asking => {}
            }
            tokio::select! {
                changed = changes.changed() => if changed.is_err() {
                    return Err("the session ended".into());
                },
                () = self.ended.cancelled() => {}
            }
        }
    }

    /// The user answered the consent prompt on the device.
    pub async fn handle_consent(&self, granted: bool, reason: &str) {
        self.machine()
            .handle_consent(granted, reason, Timestamp::now());
        self.carry_out().await;
    }

    /// Records one of the relay's conditions on the RemoteSession.
    pub async fn set_condition(&self, type_: &str, status: bool, reason: &str, message: &str) {
        self.machine().set_condition(type_, status, reason, message);
        self.carry_out().await;
    }

    /// Ends the session (once): everyone is told why, every channel closes, the operator is
    /// told when a party ended it, and its recording finishes.
    pub async fn end(&self, reason: EndReason) {
        self.machine().end(reason);
        self.carry_out().await;
    }

    /// Adds a technician's control queue: it hears countdowns and the end. Every technician
    /// of the session, this one included, is told who is in it now.
    pub fn add_technician(&self, control: ControlTx, who: Participant) {
        self.technicians
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((control, who));
        self.announce_participants();
    }

    /// Removes a technician's control queue; the others are told who is left.
    pub fn remove_technician(&self, control: &ControlTx) {
        self.technicians
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(t, _)| !t.same_channel(control));
        self.announce_participants();
    }

    /// Tells every technician who is in the session now. Never waits on a technician: a queue
    /// that is full misses this list and gets the next.
    fn announce_participants(&self) {
        let (queues, technicians): (Vec<ControlTx>, Vec<Participant>) = self
            .technicians
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .unzip();
        let message = Control::Participants {
            session_uid: self.info.uid.clone(),
            technicians,
        };
        for q in queues {
            let _ = q.try_send(message.clone());
        }
    }

    /// Appends an event to the session's recording, if it is recorded.
    pub async fn record(&self, what: What) {
        if let Some(recorder) = self.recording.recorder() {
            recorder.event(what).await;
        }
    }

    /// Sends a control message to the session's agent and technicians.
    async fn tell(&self, devices: &Devices, message: Control) {
        if let Some(agent) = devices.get(&self.info.namespace, &self.info.device) {
            let _ = agent.control.send(message.clone()).await;
        }
        let technicians: Vec<ControlTx> = self
            .technicians
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(t, _)| t.clone())
            .collect();
        for t in technicians {
            let _ = t.send(message.clone()).await;
        }
    }

    /// Carries out everything the machine decided, in order, until it has nothing more to
    /// say (an answer can lead to the next prompt, a refusal to the end).
    async fn carry_out(&self) {
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        let mut finished = None;
        let mut any = false;
        loop {
            let Some(output) = self.machine().poll_output() else {
                break;
            };
            any = true;
            match output {
                Output::Countdown { seconds_left } => {
                    let message = Control::Countdown {
                        session_uid: self.info.uid.clone(),
                        seconds_left,
                    };
                    self.tell(&shared.devices, message).await;
                    self.record(What::Countdown { seconds_left }).await;
                }
                Output::Ask {
                    technician,
                    timeout,
                } => {
                    self.record(What::ConsentAsked {
                        technician: technician.clone(),
                    })
                    .await;
                    if !self.offer(&shared.devices, &technician, timeout).await {
                        // Nobody can answer: as if the prompt timed out.
                        self.machine().handle_consent(
                            false,
                            machine::CONSENT_TIMED_OUT,
                            Timestamp::now(),
                        );
                    }
                }
                Output::Answered {
                    technician,
                    granted,
                    reason,
                } => {
                    if !granted {
                        info!(session = %self.info.name, namespace = %self.info.namespace, technician = %escape(&technician), reason = %escape(&reason), "The user did not allow a technician to join");
                    }
                    self.record(What::ConsentAnswered { granted, reason }).await;
                }
                Output::Conditions(_) => {
                    // The latest set: a concurrent writer may have changed it since.
                    let conditions = self.machine().conditions().clone();
                    if let Some(cluster) = &shared.env.cluster {
                        let conditions = conditions
                            .into_iter()
                            .map(|(t, c)| (t, (c.status, c.reason, c.message)))
                            .collect();
                        cluster_warn(
                            cluster
                                .session_conditions(
                                    &self.info.namespace,
                                    &self.info.name,
                                    &conditions,
                                )
                                .await,
                            "record a session condition",
                        );
                    }
                }
                Output::Ended { reason } => {
                    {
                        let mut live = shared.live();
                        live.remove(&self.info.uid);
                        shared.gauge(&live);
                    }
                    if reason == EndReason::Expired {
                        info!(session = %self.info.name, namespace = %self.info.namespace, "Closed an expired session");
                    }
                    let message = Control::Ended {
                        session_uid: self.info.uid.clone(),
                        reason: reason.as_str().to_owned(),
                    };
                    self.tell(&shared.devices, message).await;
                    self.ended.cancel();
                    finished = Some(reason);
                }
            }
        }
        if any {
            // Only when something happened: waiters re-check, the driver re-reads its timers.
            self.changed.send_modify(|n| *n += 1);
            self.timers.notify_one();
        }
        // After everything the parties and the operator must know at once: completing the
        // uploads can take a moment.
        if let Some(reason) = finished {
            self.finish_recording(reason.as_str()).await;
        }
    }

    /// Puts a consent prompt on the user's screen; `false` if the agent is not there to.
    async fn offer(&self, devices: &Devices, technician: &str, timeout: Duration) -> bool {
        let Some(agent) = devices.get(&self.info.namespace, &self.info.device) else {
            return false;
        };
        let offer = Control::Offer {
            session: self.info.clone(),
            technician: technician.to_owned(),
            consent: true,
            reason: self.reason.clone(),
            ticket: self.ticket.clone(),
            timeout_secs: u32::try_from(timeout.as_secs()).unwrap_or(u32::MAX),
        };
        agent.control.send(offer).await.is_ok()
    }
}

/// Runs a session's timers until it ends: sleeps until the machine's next timeout (reading
/// the wall clock again at least every [`RECHECK`]) or until its timers change.
async fn drive(session: std::sync::Weak<SessionHandle>) {
    loop {
        let Some(s) = session.upgrade() else { return };
        if s.ended.is_cancelled() {
            return;
        }
        let next = s.machine().next_timeout();
        let nap = match next {
            Some(at) => Duration::try_from(at.duration_since(Timestamp::now()))
                .unwrap_or(Duration::ZERO)
                .min(RECHECK),
            None => RECHECK,
        };
        let timers = s.timers.clone();
        let changed = timers.notified();
        let ended = s.ended.clone();
        // Not holding the session while asleep: it ends when its last holder lets go.
        drop(s);
        tokio::select! {
            () = tokio::time::sleep(nap) => {}
            () = changed => {}
            () = ended.cancelled() => return,
        }
        let Some(s) = session.upgrade() else { return };
        s.machine().handle_timeout(Timestamp::now());
        s.carry_out().await;
    }
}

/// How long the user has to answer a consent prompt: the relay's timeout, or the session's
/// (from its SessionPolicies) when that is shorter.
fn consent_timeout(claims: &Claims, relay: std::time::Duration) -> std::time::Duration {
    claims.session.consent_timeout.map_or(relay, |secs| {
        relay.min(std::time::Duration::from_secs(secs.into()))
    })
}
