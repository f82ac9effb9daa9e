//! One session's rules as the relay enforces them, without I/O: who may take a seat, whose
//! consent is asked and when, the countdown before the end, the end itself and which
//! conditions the operator is told. Every input carries `now` explicitly and every decision
//! comes out as an [`Output`] for the caller to carry out, so the whole lifecycle is tested in
//! virtual time (`machine_tests.rs`).
//!
//! Time is the wall clock (the token's end is a wall-clock instant): a caller that sleeps
//! until [`Machine::next_timeout`] and wakes early or late (clock steps, a suspended host)
//! simply calls [`Machine::handle_timeout`] with the time it reads; nothing fires before its
//! time and nothing due is skipped.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use tether_proto::text::escape;

/// Seconds before the end at which countdown messages go out.
pub const COUNTDOWN: [i64; 9] = [120, 60, 30, 10, 5, 4, 3, 2, 1];

/// Extra time beyond the user's consent timeout for the answer to travel back.
pub const CONSENT_GRACE: Duration = Duration::from_secs(5);

/// The reason recorded when the user does not answer a consent prompt in time.
pub const CONSENT_TIMED_OUT: &str = reasons::CONSENT_TIMED_OUT;

/// Condition types the relay writes on a RemoteSession (the operator↔relay contract).
pub use tether_crds::contract::condition_types as condition;
use tether_crds::contract::reasons;

/// Why a session ended, as told to its parties.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndReason {
    /// Its time ran out.
    Expired,
    /// The operator revoked it (terminated or deleted).
    Terminated,
    /// The first technician was refused by the user.
    ConsentDenied,
    /// A technician ended it.
    EndedByTechnician,
    /// The user ended it on the device.
    EndedByUser,
    /// It had to be recorded and its recording failed.
    RecordingFailed,
}

impl EndReason {
    /// The reason as sent in `Control::Ended` and written in conditions.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Expired => "Expired",
            Self::Terminated => "Terminated",
            Self::ConsentDenied => reasons::CONSENT_DENIED,
            Self::EndedByTechnician => reasons::ENDED_BY_TECHNICIAN,
            Self::EndedByUser => reasons::ENDED_BY_USER,
            Self::RecordingFailed => reasons::RECORDING_FAILED,
        }
    }

    /// Whether the relay reports this end in the `Ended` condition: ends the operator cannot
    /// know of by itself (expiry and revocation are its own decisions; a consent refusal is
    /// reported in `Consented`).
    pub fn reported(self) -> bool {
        matches!(
            self,
            Self::EndedByTechnician | Self::EndedByUser | Self::RecordingFailed
        )
    }
}

/// A technician's consent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Consent {
    /// Waiting for another technician's prompt to be answered.
    Queued,
    /// The prompt is on the user's screen.
    Asking,
    /// The user agreed (or no consent is needed).
    Granted,
    /// The user refused or did not answer; the reason.
    Denied(String),
}

/// Why a technician cannot take a seat.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SeatRefusal {
    /// The session is over.
    Ended,
    /// Every seat is taken.
    Full {
        /// How many technicians a session takes.
        max: usize,
    },
}

/// One relay condition on the RemoteSession.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Condition {
    /// `True` or `False`.
    pub status: bool,
    /// CamelCase reason.
    pub reason: String,
    /// Sentence for people.
    pub message: String,
}

/// Something the caller must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Tell the agent and every technician how many seconds are left, and record it.
    Countdown {
        /// Seconds until the end.
        seconds_left: i64,
    },
    /// Put a consent prompt for `technician` on the user's screen (and record that it was).
    Ask {
        /// The technician's verified name.
        technician: String,
        /// How long the user has.
        timeout: Duration,
    },
    /// The user's answer about `technician` arrived (or timed out): record it.
    Answered {
        /// The technician's verified name.
        technician: String,
        /// Whether they may join.
        granted: bool,
        /// The answer's reason.
        reason: String,
    },
    /// Write the relay's conditions (all of them: they are applied as one set).
    Conditions(BTreeMap<String, Condition>),
    /// The session is over: tell everyone `reason`, close every channel, finish the
    /// recording. Emitted once.
    Ended {
        /// Why.
        reason: EndReason,
    },
}

/// What the timer table holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    /// The countdown mark with this many seconds left.
    Countdown(i64),
    /// The prompt being answered timed out.
    Consent,
    /// The session's end.
    End,
}

/// Pending timers: each fires once, at or after its time.
#[derive(Debug, Default)]
struct Timers(BTreeMap<Timer, Timestamp>);

impl Timers {
    fn set(&mut self, timer: Timer, at: Timestamp) {
        self.0.insert(timer, at);
    }

    fn stop(&mut self, timer: Timer) {
        self.0.remove(&timer);
    }

    fn next(&self) -> Option<Timestamp> {
        self.0.values().min().copied()
    }

    /// Takes the timers due at `now`, earliest first (a countdown mark before the end it
    /// announces when both are due).
    fn due(&mut self, now: Timestamp) -> Vec<Timer> {
        let mut due: Vec<(Timestamp, Timer)> = self
            .0
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(t, at)| (*at, *t))
            .collect();
        due.sort();
        for (_, timer) in &due {
            self.0.remove(timer);
        }
        due.into_iter().map(|(_, t)| t).collect()
    }
}

/// What a session needs to know at its start.
#[derive(Clone, Debug)]
pub struct Config {
    /// When the relay closes it.
    pub ends_at: Timestamp,
    /// Whether the user must consent to each technician.
    pub consent_required: bool,
    /// How long the user has to answer a prompt.
    pub consent_timeout: Duration,
    /// The most technicians at once.
    pub max_technicians: usize,
}

/// One session's state at the relay.
#[derive(Debug)]
pub struct Machine {
    config: Config,
    seats: usize,
    consent: BTreeMap<String, Consent>,
    queue: VecDeque<String>,
    asking: Option<String>,
    conditions: BTreeMap<String, Condition>,
    ended: Option<EndReason>,
    timers: Timers,
    outputs: VecDeque<Output>,
}

impl Machine {
    /// A session starting at `now`: the countdown is scheduled (at once if the end is less
    /// than two minutes away) and so is the end; a session whose end has passed ends at the
    /// first [`Machine::handle_timeout`].
    pub fn new(config: Config, now: Timestamp) -> Self {
        let mut timers = Timers::default();
        let ends_at = config.ends_at;
        let mut due_now = false;
        for seconds in COUNTDOWN {
            let Ok(at) = ends_at.checked_sub(SignedDuration::from_secs(seconds)) else {
                continue;
            };
            if at >= now {
                timers.set(Timer::Countdown(seconds), at);
                due_now |= at == now;
            }
        }
        // Already inside the last two minutes: say so at once.
        let left = seconds_until(now, ends_at);
        if left > 0 && left <= COUNTDOWN[0] && !due_now {
            timers.set(Timer::Countdown(left), now);
        }
        timers.set(Timer::End, ends_at);
        Self {
            config,
            seats: 0,
            consent: BTreeMap::new(),
            queue: VecDeque::new(),
            asking: None,
            conditions: BTreeMap::new(),
            ended: None,
            timers,
            outputs: VecDeque::new(),
        }
    }

    /// When [`Machine::handle_timeout`] must next be called.
    pub fn next_timeout(&self) -> Option<Timestamp> {
        if self.ended.is_some() {
            return None;
        }
        self.timers.next()
    }

    /// The next thing to do, if any.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// Whether (and why) the session is over.
    pub fn ended(&self) -> Option<EndReason> {
        self.ended
    }

    /// The session's end.
    pub fn ends_at(&self) -> Timestamp {
        self.config.ends_at
    }

    /// The relay's conditions as they stand.
    pub fn conditions(&self) -> &BTreeMap<String, Condition> {
        &self.conditions
    }

    /// Technicians seated.
    pub fn seats(&self) -> usize {
        self.seats
    }

    /// Fires every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Timestamp) {
        let mut due = self.timers.due(now);
        // Woken at or after the end (late, or the clock jumped): no burst of stale countdown.
        if due.contains(&Timer::End) {
            due = vec![Timer::End];
        }
        for timer in due {
            if self.ended.is_some() {
                return;
            }
            match timer {
                Timer::Countdown(seconds_left) => {
                    self.outputs.push_back(Output::Countdown { seconds_left });
                }
                Timer::Consent => {
                    if let Some(technician) = self.asking.clone() {
                        self.answer(&technician, false, CONSENT_TIMED_OUT, now);
                    }
                }
                Timer::End => self.end(EndReason::Expired),
            }
        }
    }

    /// A technician takes one of the seats.
    pub fn take_seat(&mut self) -> Result<(), SeatRefusal> {
        if self.ended.is_some() {
            return Err(SeatRefusal::Ended);
        }
        if self.seats >= self.config.max_technicians {
            return Err(SeatRefusal::Full {
                max: self.config.max_technicians,
            });
        }
        self.seats += 1;
        Ok(())
    }

    /// A technician gives their seat back (connection over or refused); a prompt still
    /// queued for them is dropped, one on screen is left to be answered.
    pub fn leave_seat(&mut self, technician: &str) {
        self.seats = self.seats.saturating_sub(1);
        if let Some(at) = self.queue.iter().position(|t| t == technician) {
            self.queue.remove(at);
            if self.consent.get(technician) == Some(&Consent::Queued) {
                self.consent.remove(technician);
            }
        }
    }

    /// Where `technician`'s consent stands, asking the user if they were never asked (one
    /// prompt at a time: later technicians queue). Sessions without consent grant at once.
    pub fn request_consent(&mut self, technician: &str, now: Timestamp) -> Consent {
        if self.ended.is_some() {
            return Consent::Denied("the session ended".into());
        }
        if !self.config.consent_required {
            return Consent::Granted;
        }
        if let Some(known) = self.consent.get(technician) {
            return known.clone();
        }
        self.consent.insert(technician.to_owned(), Consent::Queued);
        self.queue.push_back(technician.to_owned());
        self.ask_next(now);
        self.consent(technician)
    }

    /// Where `technician`'s consent stands without asking.
    pub fn consent(&self, technician: &str) -> Consent {
        let ended = || Consent::Denied("the session ended".into());
        if !self.config.consent_required {
            return if self.ended.is_some() {
                ended()
            } else {
                Consent::Granted
            };
        }
        match self.consent.get(technician) {
            Some(decided @ (Consent::Granted | Consent::Denied(_))) => decided.clone(),
            _ if self.ended.is_some() => ended(),
            Some(waiting) => waiting.clone(),
            None => Consent::Queued,
        }
    }

    /// The user answered the prompt on screen. An answer when no prompt is showing (late,
    /// or from a stale connection) is ignored.
    pub fn handle_consent(&mut self, granted: bool, reason: &str, now: Timestamp) {
        if self.ended.is_some() {
            return;
        }
        if let Some(technician) = self.asking.clone() {
            self.answer(&technician, granted, reason, now);
        }
    }

    /// Records a condition of the relay's own (e.g. `Recording`).
    pub fn set_condition(&mut self, type_: &str, status: bool, reason: &str, message: &str) {
        let condition = Condition {
            status,
            reason: reason.to_owned(),
            message: message.to_owned(),
        };
        if self.conditions.get(type_) == Some(&condition) {
            return;
        }
        self.conditions.insert(type_.to_owned(), condition);
        self.outputs
            .push_back(Output::Conditions(self.conditions.clone()));
    }

    /// Ends the session (once: later ends change nothing). Ends the operator does not decide
    /// itself are reported in the `Ended` condition; a recording failure is quoted there.
    pub fn end(&mut self, reason: EndReason) {
        if self.ended.is_some() {
            return;
        }
        self.ended = Some(reason);
        self.asking = None;
        self.queue.clear();
        self.timers = Timers::default();
        // The parties first: the condition and the recording can take a moment.
        self.outputs.push_back(Output::Ended { reason });
        if reason.reported() {
            let report = reason.as_str();
            let recording_failure = self
                .conditions
                .get(condition::RECORDING)
                .filter(|c| !c.status && c.reason == report)
                .map(|c| c.message.clone());
            let message = recording_failure
                .map(|m| format!("the session was ended because it must be recorded and {m}"))
                .unwrap_or_else(|| format!("the session was ended: {report}"));
            self.set_condition(condition::ENDED, true, report, &message);
        }
    }

    fn ask_next(&mut self, now: Timestamp) {
        if self.asking.is_some() {
            return;
        }
        let Some(technician) = self.queue.pop_front() else {
            return;
        };
        self.consent.insert(technician.clone(), Consent::Asking);
        self.asking = Some(technician.clone());
        let timeout = self.config.consent_timeout;
        let answer_by = SignedDuration::try_from(timeout + CONSENT_GRACE)
            .ok()
            .and_then(|grace| now.checked_add(grace).ok())
            .unwrap_or(Timestamp::MAX);
        self.timers.set(Timer::Consent, answer_by);
        self.outputs.push_back(Output::Ask {
            technician,
            timeout,
        });
    }

    fn answer(&mut self, technician: &str, granted: bool, reason: &str, now: Timestamp) {
        self.timers.stop(Timer::Consent);
        self.asking = None;
        let first = !self.consent.values().any(|c| *c == Consent::Granted);
        self.consent.insert(
            technician.to_owned(),
            if granted {
                Consent::Granted
            } else {
                Consent::Denied(reason.to_owned())
            },
        );
        self.outputs.push_back(Output::Answered {
            technician: technician.to_owned(),
            granted,
            reason: reason.to_owned(),
        });
        let shown = escape(technician);
        if granted {
            self.set_condition(
                condition::CONSENTED,
                true,
                reason,
                &format!("the user allowed {shown} to join"),
            );
        } else if first {
            self.set_condition(
                condition::CONSENTED,
                false,
                reason,
                &format!("the user did not allow {shown} to join ({reason})"),
            );
            self.end(EndReason::ConsentDenied);
            return;
        }
        self.ask_next(now);
    }
}

/// Whole seconds from `now` until `at` (negative once past).
pub fn seconds_until(now: Timestamp, at: Timestamp) -> i64 {
    at.as_second() - now.as_second()
}

#[cfg(test)]
#[path = "machine_tests.rs"]
mod tests;
