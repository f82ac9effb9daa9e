//! Virtual-time tests of every RemoteSession transition and its edges.

use super::*;
use crate::controllers::remote_session::gate::Verdict;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::ObjectMeta;
use tether_crds::device::{DeviceSpec, DeviceStatus};
use tether_crds::remote_session::{EffectiveMode, RemoteSessionSpec};

const START: &str = "2026-01-01T10:00:00Z";
const END: &str = "2026-01-01T10:30:00Z";

fn ts(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn at(s: &str, secs: i64) -> Timestamp {
    ts(s) + SignedDuration::from_secs(secs)
}

fn session_with(spec: serde_json::Value) -> RemoteSession {
    let spec: RemoteSessionSpec = serde_json::from_value(spec).unwrap();
    let mut s = RemoteSession::new("printer", spec);
    s.metadata = ObjectMeta {
        name: Some("printer".into()),
        namespace: Some("helpdesk".into()),
        generation: Some(3),
        creation_timestamp: Some(Time(ts("2026-01-01T09:00:00Z"))),
        ..Default::default()
    };
    s
}

fn scheduled() -> RemoteSession {
    session_with(serde_json::json!({"device": "laptop-1", "startTime": START, "duration": "30m"}))
}

fn device(users: &[&str]) -> Device {
    let mut d = Device::new("laptop-1", DeviceSpec::default());
    d.status = Some(DeviceStatus {
        logged_on_users: users.iter().map(|u| (*u).to_owned()).collect(),
        ..Default::default()
    });
    d
}

struct World {
    session: RemoteSession,
    device: Option<Device>,
    access: Option<AccessState>,
    store_unavailable: Option<String>,
    gate: Verdict,
    consent_timeout: Option<Duration>,
}

impl World {
    fn new(session: RemoteSession) -> Self {
        Self {
            session,
            device: Some(device(&["dana"])),
            access: None,
            store_unavailable: None,
            gate: Verdict::Admit,
            consent_timeout: None,
        }
    }

    fn plan(&self, now: Timestamp) -> Plan {
        plan(
            Observed {
                session: &self.session,
                device: self.device.as_ref(),
                access: self.access,
                now,
                store_unavailable: self.store_unavailable.as_deref(),
                policy_gate: self.gate.clone(),
                consent_timeout: self.consent_timeout,
            },
            &Settings::default(),
        )
    }

    /// Plans at `now` and applies the plan to the world, as the reconciler would.
    fn step(&mut self, now: Timestamp) -> Plan {
        let p = self.plan(now);
        self.session.status = Some(p.status.clone());
        match p.finalizer {
            FinalizerAction::Add => {
                self.session.metadata.finalizers = Some(vec![FINALIZER.into()]);
            }
            FinalizerAction::Remove => self.session.metadata.finalizers = None,
            FinalizerAction::Keep => {}
        }
        match p.access {
            AccessAction::Mint(grant) => {
                self.access = Some(AccessState {
                    expires_at: grant.expires_at,
                    generation: self.session.metadata.generation,
                });
            }
            AccessAction::Delete => self.access = None,
            AccessAction::Keep => {}
        }
        p
    }

    /// The relay reports the device's agent connected.
    fn connect(&mut self) {
        let d = self.device.as_mut().expect("a device");
        d.status.get_or_insert_with(Default::default).presence =
            Some(tether_crds::device::Presence::Online);
    }

    /// What the relay reports, as a condition it owns.
    fn relay_reports(&mut self, type_: &str, status: bool, reason: &str) {
        self.relay_says(type_, status, reason, "");
    }

    /// What the relay reports, with a message.
    fn relay_says(&mut self, type_: &str, status: bool, reason: &str, message: &str) {
        let st = self.session.status.get_or_insert_with(Default::default);
        st.conditions.retain(|c| c.type_ != type_);
        st.conditions.push(Condition {
            type_: type_.into(),
            status: if status { "True" } else { "False" }.into(),
            reason: reason.into(),
            message: message.into(),
            observed_generation: None,
            last_transition_time: Time(ts(START)),
        });
    }
}

fn reasons(p: &Plan) -> Vec<&'static str> {
    p.events.iter().map(|e| e.reason).collect()
}

#[test]
fn future_start_is_scheduled_with_a_finalizer_and_no_credentials() {
    let mut w = World::new(scheduled());
    let p = w.step(at(START, -30));
    assert_eq!(p.status.phase, Some(SessionPhase::Scheduled));
    assert_eq!(p.status.observed_generation, Some(3));
    assert_eq!(p.status.scheduled_start, Some(Time(ts(START))));
    assert_eq!(p.status.expires_at, Some(Time(ts(END))));
    assert_eq!(p.status.effective_mode, Some(EffectiveMode::Interactive));
    assert_eq!(p.requeue_after, Some(Duration::from_secs(30)));
    assert_eq!(p.finalizer, FinalizerAction::Add);
    assert_eq!(p.access, AccessAction::Keep);
    assert_eq!(reasons(&p), vec!["Scheduled"]);
    assert_eq!(
        p.transition,
        Some(Transition {
            to: SessionPhase::Scheduled,
            due: None
        })
    );
}

#[test]
fn just_before_the_start_requeues_for_the_remainder() {
    // Clock skew: a wake-up a few milliseconds early just sleeps the rest.
    let w = World::new(scheduled());
    let p = w.plan(ts(START) - SignedDuration::from_millis(3));
    assert_eq!(p.status.phase, Some(SessionPhase::Scheduled));
    assert_eq!(p.requeue_after, Some(Duration::from_millis(3)));
}

#[test]
fn start_equal_to_now_opens_the_window_and_issues_credentials() {
    let mut w = World::new(scheduled());
    w.step(at(START, -60));
    let p = w.step(ts(START));
    assert_eq!(p.status.phase, Some(SessionPhase::Pending));
    assert_eq!(p.status.reason.as_deref(), Some("WaitingForAgent"));
    assert_eq!(
        p.access,
        AccessAction::Mint(Grant {
            not_before: ts(START),
            ends_at: ts(END),
            expires_at: at(START, 900),
            consent: true,
            consent_timeout: None,
        })
    );
    let access = p.status.access.clone().unwrap();
    assert_eq!(access.secret_name, "printer-access");
    assert_eq!(access.token_expires_at, Some(Time(at(START, 900))));
    assert_eq!(reasons(&p), vec!["AccessIssued", "WindowOpened"]);
    assert_eq!(p.transition.unwrap().due, Some(ts(START)));
    // Next wake-up: the token refresh, 5 minutes before it runs out.
    assert_eq!(p.requeue_after, Some(Duration::from_secs(600)));
}

#[test]
fn instant_session_counts_from_creation_with_default_duration() {
    let mut s = session_with(serde_json::json!({"device": "laptop-1"}));
    s.metadata.creation_timestamp = Some(Time(ts(START)));
    let w = World::new(s);
    let p = w.plan(at(START, 1));
    assert_eq!(p.status.phase, Some(SessionPhase::Pending));
    assert_eq!(p.status.scheduled_start, Some(Time(ts(START))));
    assert_eq!(p.status.expires_at, Some(Time(ts(END))));
}

#[test]
fn expiry_warning_two_minutes_before_the_end_once() {
    let mut w = World::new(scheduled());
    w.step(ts(START));
    let p = w.step(at(END, -120));
    assert!(reasons(&p).contains(&"ExpiringSoon"));
    assert!(conditions::is_true(&p.status.conditions, ct::EXPIRING_SOON));
    assert_eq!(p.requeue_after, Some(Duration::from_secs(120)));
    let again = w.step(at(END, -60));
    assert!(!reasons(&again).contains(&"ExpiringSoon"), "published once");
}

#[test]
fn expiry_ends_the_session_and_revokes_everything() {
    let mut w = World::new(scheduled());
    w.step(ts(START));
    let p = w.step(ts(END));
    assert_eq!(p.status.phase, Some(SessionPhase::Expired));
    assert_eq!(p.status.ended_at, Some(Time(ts(END))));
    assert_eq!(p.status.reason.as_deref(), Some("Expired"));
    assert_eq!(p.access, AccessAction::Delete);
    assert!(p.revoke);
    assert_eq!(
        p.status.access.clone().unwrap().revoked_at,
        Some(Time(ts(END)))
    );
    assert_eq!(p.finalizer, FinalizerAction::Remove);
    assert_eq!(p.requeue_after, None);
    assert_eq!(p.transition.clone().unwrap().due, Some(ts(END)));
    assert_eq!(reasons(&p), vec!["Expired", "AccessRevoked"]);
    assert!(!conditions::is_true(&p.status.conditions, ct::READY));
}

#[test]
fn a_late_operator_expires_at_the_scheduled_end_not_when_it_woke() {
    // The operator was down for the whole window: Scheduled straight to Expired.
    let mut w = World::new(scheduled());
    w.step(at(START, -60));
    let p = w.step(at(END, 3600));
    assert_eq!(p.status.phase, Some(SessionPhase::Expired));
    assert_eq!(p.status.ended_at, Some(Time(ts(END))));
    assert_eq!(
        p.transition.unwrap().due,
        Some(ts(END)),
        "lateness is measured from the end"
    );
    assert!(!p.revoke, "no credentials were ever issued");
    assert_eq!(p.access, AccessAction::Keep);
}

#[test]
fn terminal_phase_is_final_and_reapplying_the_manifest_changes_nothing() {
    let mut w = World::new(scheduled());
    w.step(ts(START));
    w.step(ts(END));
    let ended = w.session.status.clone().unwrap();
    // A GitOps tool re-applies the original manifest (same spec, new generation) while the
    // window would otherwise still be open.
    w.session.metadata.generation = Some(4);
    for now in [at(START, 60), ts(END), at(END, 3600)] {
        let p = w.step(now);
        assert_eq!(p.status, ended);
        assert!(p.events.is_empty());
        assert_eq!(p.requeue_after, None);
        assert_eq!(p.transition, None);
        assert_eq!(p.access, AccessAction::Keep);
        assert!(!p.revoke);
        assert_eq!(p.finalizer, FinalizerAction::Keep);
    }
}

#[test]
fn replanning_after_a_restart_repeats_nothing() {
    let mut w = World::new(scheduled());
    w.step(ts(START));
    let before = w.session.status.clone();
    // The operator restarts: same objects, a little later.
    let p = w.step(at(START, 90));
    assert_eq!(w.session.status, before);
    assert!(p.events.is_empty());
    assert_eq!(p.transition, None);
    assert_eq!(p.access, AccessAction::Keep);
    assert_eq!(p.finalizer, FinalizerAction::Keep);
}

#[test]
fn duration_exactly_at_maximum_is_allowed_and_above_fails() {
    let settings = Settings {
        max_duration: Duration::from_secs(3600),
        ..Settings::default()
    };
    let ok = session_with(
        serde_json::json!({"device": "laptop-1", "startTime": START, "duration": "1h"}),
    );
    let p = plan(
        Observed {
            session: &ok,
            device: Some(&device(&[])),
            access: None,
            now: ts(START),
            store_unavailable: None,
            policy_gate: Verdict::Admit,
            consent_timeout: None,
        },
        &settings,
    );
    assert_eq!(p.status.phase, Some(SessionPhase::Pending));

    let too_long = session_with(
        serde_json::json!({"device": "laptop-1", "startTime": START, "duration": "61m"}),
    );
    let p = plan(
        Observed {
            session: &too_long,
            device: Some(&device(&[])),
            access: None,
            now: at(START, -600),
            store_unavailable: None,
            policy_gate: Verdict::Admit,
            consent_timeout: None,
        },
        &settings,
    );
    assert_eq!(p.status.phase, Some(SessionPhase::Failed));
    assert_eq!(p.status.reason.as_deref(), Some("DurationExceedsMaximum"));
    assert_eq!(
        p.status.message.as_deref(),
        Some("duration 61m exceeds the cluster maximum of 1h")
    );
    assert!(p.events[0].warning);
    assert_eq!(p.requeue_after, None);
    assert_eq!(p.access, AccessAction::Keep);
}

#[test]
fn a_missing_or_disabled_device_fails_when_the_window_opens() {
    let mut w = World::new(scheduled());
    w.device = None;
    assert_eq!(
        w.plan(at(START, -1)).status.phase,
        Some(SessionPhase::Scheduled)
    );
    let p = w.plan(ts(START));
    assert_eq!(p.status.phase, Some(SessionPhase::Failed));
    assert_eq!(p.status.reason.as_deref(), Some("DeviceNotFound"));
    assert_eq!(
        p.status.message.as_deref(),
        Some("Device laptop-1 does not exist in namespace helpdesk")
    );

    let mut disabled = device(&[]);
    disabled.spec.disabled = true;
    w.device = Some(disabled);
    assert_eq!(
        w.plan(ts(START)).status.reason.as_deref(),
        Some("DeviceDisabled")
    );
}

#[test]
fn dynamic_mode_follows_the_logged_on_users_and_then_sticks() {
    let dynamic = || {
        session_with(
            serde_json::json!({"device": "laptop-1", "startTime": START, "mode": "Dynamic"}),
        )
    };
    let mut w = World::new(dynamic());
    w.device = Some(device(&["dana"]));
    assert_eq!(
        w.plan(at(START, -1)).status.effective_mode,
        None,
        "decided at the start"
    );
    let p = w.step(ts(START));
    assert_eq!(p.status.effective_mode, Some(EffectiveMode::Interactive));
    assert!(reasons(&p).contains(&"ModeResolved"));
    // Dana logs off: the decision stands.
    w.device = Some(device(&[]));
    assert_eq!(
        w.step(at(START, 5)).status.effective_mode,
        Some(EffectiveMode::Interactive)
    );

    let mut w = World::new(dynamic());
    w.device = Some(device(&[]));
    let p = w.step(ts(START));
    assert_eq!(p.status.effective_mode, Some(EffectiveMode::Unattended));
    // Unattended: connected is enough.
    w.connect();
    assert_eq!(
        w.step(at(START, 5)).status.phase,
        Some(SessionPhase::Active)
    );
}

#[test]
fn a_dynamic_session_asks_when_nobody_can_tell_who_is_logged_on() {
    let dynamic = serde_json::json!({"device": "laptop-1", "startTime": START, "mode": "Dynamic"});
    // The agent cannot tell (`who` failed): interactive, the user is asked.
    let mut w = World::new(session_with(dynamic.clone()));
    let mut unknown = device(&[]);
    if let Some(s) = unknown.status.as_mut() {
        s.logged_on_users_unknown = true;
    }
    w.device = Some(unknown);
    let p = w.step(ts(START));
    assert_eq!(p.status.effective_mode, Some(EffectiveMode::Interactive));
    w.connect();
    let p = w.step(at(START, 5));
    assert_eq!(p.status.reason.as_deref(), Some("WaitingForConsent"));
    // A Device that never reported: the same.
    let mut w = World::new(session_with(dynamic.clone()));
    let mut silent = device(&[]);
    silent.status = None;
    w.device = Some(silent);
    assert_eq!(
        w.step(ts(START)).status.effective_mode,
        Some(EffectiveMode::Interactive)
    );
    // Positive control: a device that knows nobody is logged on runs unattended.
    let mut w = World::new(session_with(dynamic));
    w.device = Some(device(&[]));
    assert_eq!(
        w.step(ts(START)).status.effective_mode,
        Some(EffectiveMode::Unattended)
    );
}

#[test]
fn interactive_sessions_wait_for_consent() {
    let mut w = World::new(scheduled());
    w.step(ts(START));
    w.connect();
    let p = w.step(at(START, 5));
    assert_eq!(p.status.phase, Some(SessionPhase::Pending));
    assert_eq!(p.status.reason.as_deref(), Some("WaitingForConsent"));

    w.relay_reports(ct::CONSENTED, true, "UserConsented");
    let p = w.step(at(START, 10));
    assert_eq!(p.status.phase, Some(SessionPhase::Active));
    assert_eq!(p.status.started_at, Some(Time(at(START, 10))));
    assert!(conditions::is_true(&p.status.conditions, ct::READY));
    assert_eq!(reasons(&p), vec!["Active"]);
}

#[test]
fn refused_consent_denies_the_session() {
    let mut w = World::new(scheduled());
    w.step(ts(START));
    w.connect();
    w.relay_reports(ct::CONSENTED, false, "ConsentTimedOut");
    let p = w.step(at(START, 60));
    assert_eq!(p.status.phase, Some(SessionPhase::Denied));
    assert_eq!(p.status.reason.as_deref(), Some("ConsentTimedOut"));
    assert!(p.revoke);
    assert_eq!(p.finalizer, FinalizerAction::Remove);
}

#[test]
fn a_party_ending_the_session_completes_it() {
    let mut w = World::new(scheduled());
    w.step(ts(START));
    w.connect();
    w.relay_reports(ct::CONSENTED, true, "UserConsented");
    w.step(at(START, 10));
    w.relay_reports(ct::ENDED, true, "EndedByUser");
    let p = w.step(at(START, 600));
    assert_eq!(p.status.phase, Some(SessionPhase::Completed));
    assert_eq!(p.status.reason.as_deref(), Some("EndedByUser"));
    assert_eq!(p.status.ended_at, Some(Time(at(START, 600))));
    assert!(p.revoke);
}

#[test]
fn terminate_annotation_ends_the_session_with_who_and_why() {
    let mut w = World::new(scheduled());
    w.step(ts(START));
    w.session.metadata.annotations = Some(
        [
            (annotations::TERMINATED_BY.to_owned(), "admin".to_owned()),
            (
                annotations::TERMINATION_REASON.to_owned(),
                "wrong device".to_owned(),
            ),
        ]
        .into(),
    );
    let p = w.step(at(START, 30));
    assert_eq!(p.status.phase, Some(SessionPhase::Terminated));
    assert_eq!(p.status.reason.as_deref(), Some("TerminatedByUser"));
    assert_eq!(
        p.status.message.as_deref(),
        Some("terminated by admin: wrong device")
    );
    assert_eq!(p.access, AccessAction::Delete);
    assert!(p.revoke);
    assert_eq!(reasons(&p), vec!["Terminated", "AccessRevoked"]);
}

#[test]
fn an_empty_terminated_by_names_nobody_and_ends_nothing() {
    // The admission policy refuses an empty value; one that got in anyway (written while the
    // policy was off) must not let someone without the terminate verb end the session.
    let mut w = World::new(scheduled());
    w.step(ts(START));
    w.session.metadata.annotations =
        Some([(annotations::TERMINATED_BY.to_owned(), String::new())].into());
    let p = w.step(at(START, 30));
    assert_eq!(p.status.phase, Some(SessionPhase::Pending));
    assert_ne!(p.access, AccessAction::Delete);
    // The same annotation naming someone ends it.
    w.session.metadata.annotations =
        Some([(annotations::TERMINATED_BY.to_owned(), "admin".to_owned())].into());
    assert_eq!(
        w.step(at(START, 31)).status.phase,
        Some(SessionPhase::Terminated)
    );
}

#[test]
fn a_scheduled_session_is_terminated_at_once_and_names_are_escaped() {
    let mut w = World::new(scheduled());
    w.step(at(START, -600));
    w.session.metadata.annotations = Some(
        [
            (annotations::TERMINATED_BY.to_owned(), "admin".to_owned()),
            (
                annotations::TERMINATION_REASON.to_owned(),
                "line\nforged\u{1b}[2J".to_owned(),
            ),
        ]
        .into(),
    );
    let p = w.step(at(START, -590));
    assert_eq!(p.status.phase, Some(SessionPhase::Terminated));
    let message = p.status.message.unwrap();
    assert!(
        !message.contains('\n') && !message.contains('\u{1b}'),
        "{message:?}"
    );
    assert!(message.contains("line\\nforged"), "{message:?}");
}

#[test]
fn deletion_revokes_and_releases_the_finalizer() {
    let mut w = World::new(scheduled());
    w.step(ts(START));
    w.session.metadata.deletion_timestamp = Some(Time(at(START, 40)));
    let p = w.step(at(START, 40));
    assert_eq!(p.status.phase, Some(SessionPhase::Terminated));
    assert_eq!(p.status.reason.as_deref(), Some("Deleted"));
    assert_eq!(p.access, AccessAction::Delete);
    assert!(p.revoke);
    assert_eq!(p.finalizer, FinalizerAction::Remove);
    assert!(!reasons(&p).contains(&"AccessIssued"));
}

#[test]
fn a_crash_after_ending_finishes_the_cleanup_once() {
    // The status says Expired and revoked, but the Secret and finalizer are still there.
    let mut w = World::new(scheduled());
    w.step(ts(START));
    let mut p = w.plan(ts(END));
    w.session.status = Some(p.status.clone());
    p = w.plan(at(END, 5));
    assert_eq!(p.access, AccessAction::Delete);
    assert!(!p.revoke, "already revoked once");
    assert_eq!(p.finalizer, FinalizerAction::Remove);
    assert!(p.events.is_empty());
}

#[path = "plan_recording_tests.rs"]
mod recording;

#[path = "plan_grant_tests.rs"]
mod grant;

#[path = "plan_gate_tests.rs"]
mod gate;
