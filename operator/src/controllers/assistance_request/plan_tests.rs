//! Virtual-time tests of the AssistanceRequest workflow.

use super::*;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::ObjectMeta;
use tether_crds::assistance_request::AssistanceRequestSpec;
use tether_crds::remote_session::{RemoteSessionStatus, SessionPhase};

const T0: &str = "2026-03-02T09:00:00Z";

fn ts(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn at(secs: i64) -> Timestamp {
    ts(T0) + SignedDuration::from_secs(secs)
}

fn request(extra: serde_json::Value) -> AssistanceRequest {
    let mut spec = serde_json::json!({
        "device": "laptop",
        "requester": {"name": "Dana", "account": "dana", "email": "dana@example.com"},
        "reason": "VPN fails",
        "assignee": {"groups": ["helpdesk"], "emails": ["helpdesk@example.com"]},
        "sessionTemplate": {"mode": "Interactive", "duration": "45m"},
    });
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            spec.insert(k.clone(), v.clone());
        }
    }
    let spec: AssistanceRequestSpec = serde_json::from_value(spec).unwrap();
    let mut r = AssistanceRequest::new("vpn", spec);
    r.metadata = ObjectMeta {
        name: Some("vpn".into()),
        namespace: Some("helpdesk".into()),
        generation: Some(1),
        creation_timestamp: Some(Time(ts(T0))),
        ..Default::default()
    };
    r
}

struct World {
    request: AssistanceRequest,
    session: Option<RemoteSession>,
    device_exists: bool,
    rule: Option<Result<ApprovalRule, String>>,
}

impl World {
    fn new(request: AssistanceRequest) -> Self {
        Self {
            request,
            session: None,
            device_exists: true,
            rule: Some(Ok(ApprovalRule {
                required: 1,
                ..Default::default()
            })),
        }
    }

    fn step(&mut self, now: Timestamp) -> Plan {
        // As the reconciler does, observe only the current round's session.
        let round = self
            .request
            .status
            .as_ref()
            .and_then(|s| s.round)
            .unwrap_or(1);
        let current = session_name("vpn", round);
        let session = self
            .session
            .as_ref()
            .filter(|s| s.metadata.name.as_deref() == Some(current.as_str()));
        let p = plan(
            Observed {
                request: &self.request,
                session,
                device_exists: self.device_exists,
                now,
                approval_rule: self.rule.as_ref(),
            },
            &Settings::default(),
        );
        let mut status = p.status.clone();
        // The notifier delivers whatever is due.
        if let Some(n) = &p.notice {
            status.notified = Some(n.key.clone());
        }
        self.request.status = Some(status);
        if let SessionAction::Create { name, spec } = &p.session {
            let mut s = RemoteSession::new(name, (**spec).clone());
            s.metadata.name = Some(name.clone());
            self.session = Some(s);
        }
        p
    }

    fn decide(&mut self, decision: Decision, approver: &str, reason: Option<&str>) {
        let st = self.request.status.get_or_insert_with(Default::default);
        st.approval = Some(Approval {
            round: st.round.unwrap_or(1),
            decision,
            approver: approver.into(),
            decided_at: Some(Time(at(60))),
            reason: reason.map(str::to_owned),
        });
    }

    /// An approver adds their approval to `status.approvals`.
    fn approve_too(&mut self, approver: &str) {
        let st = self.request.status.get_or_insert_with(Default::default);
        st.approvals.push(Approval {
            round: st.round.unwrap_or(1),
            decision: Decision::Approved,
            approver: approver.into(),
            decided_at: Some(Time(at(60))),
            reason: None,
        });
    }

    fn session_becomes(&mut self, phase: SessionPhase, message: &str) {
        let s = self.session.as_mut().expect("a session exists");
        s.status = Some(RemoteSessionStatus {
            phase: Some(phase),
            message: Some(message.into()),
            ..Default::default()
        });
    }

    fn phase(&self) -> Option<RequestPhase> {
        self.request.status.as_ref().and_then(|s| s.phase)
    }
}

fn reasons(p: &Plan) -> Vec<&'static str> {
    p.events.iter().map(|e| e.reason).collect()
}

#[test]
fn a_new_request_waits_for_approval_until_its_deadline() {
    let mut w = World::new(request(serde_json::json!({})));
    let p = w.step(at(5));
    assert_eq!(p.status.phase, Some(RequestPhase::Pending));
    assert_eq!(p.status.round, Some(1));
    assert_eq!(p.status.requested_at, Some(Time(ts(T0))));
    assert_eq!(p.status.approval_deadline, Some(Time(at(3600))));
    assert_eq!(p.requeue_after, Some(Duration::from_secs(3595)));
    assert_eq!(reasons(&p), vec!["Requested"]);
    let notice = p.notice.unwrap();
    assert_eq!(
        notice.recipients,
        vec!["dana@example.com", "helpdesk@example.com"]
    );
    assert_eq!(notice.subject, "[Tether] Assistance request vpn: Pending");
    assert!(
        notice.body.contains("Reason:    VPN fails"),
        "{}",
        notice.body
    );
    assert_eq!(notice.payload["phase"], "Pending");
    // Nothing new: nothing sent again.
    assert!(w.step(at(10)).notice.is_none());
}

#[test]
fn approval_creates_the_session_from_the_template() {
    let mut w = World::new(request(serde_json::json!({"ticket": "INC-9"})));
    w.step(at(5));
    w.decide(Decision::Approved, "bob", Some("known issue"));
    let p = w.step(at(61));
    assert_eq!(p.status.phase, Some(RequestPhase::Approved));
    assert_eq!(
        p.status.message.as_deref(),
        Some("approved by bob: known issue")
    );
    let approved = p
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == ct::APPROVED)
        .unwrap();
    assert_eq!(approved.status, "True");
    assert_eq!(reasons(&p), vec!["Approved", "SessionCreated"]);
    let SessionAction::Create { name, spec } = &p.session else {
        panic!("no session created: {:?}", p.session);
    };
    assert_eq!(name, "vpn-1");
    assert_eq!(spec.device, "laptop");
    assert_eq!(spec.duration.as_str(), "45m");
    assert_eq!(spec.technicians.groups, vec!["helpdesk"]);
    assert_eq!(spec.assistance_request.as_deref(), Some("vpn"));
    assert_eq!(spec.ticket.as_deref(), Some("INC-9"));
    assert_eq!(spec.start_time, None, "as soon as possible");
    assert_eq!(p.status.session.as_deref(), Some("vpn-1"));
    assert!(
        p.notice
            .unwrap()
            .body
            .contains("Decision:  Approved by bob (known issue)")
    );
}

#[test]
fn the_request_follows_its_session_to_the_end() {
    let mut w = World::new(request(serde_json::json!({})));
    w.step(at(5));
    w.decide(Decision::Approved, "bob", None);
    w.step(at(61));
    w.session_becomes(SessionPhase::Pending, "waiting");
    assert_eq!(
        w.step(at(62)).status.phase,
        Some(RequestPhase::WaitingForConnection)
    );
    w.session_becomes(SessionPhase::Active, "connected");
    assert_eq!(w.step(at(70)).status.phase, Some(RequestPhase::InProgress));
    w.session_becomes(
        SessionPhase::Expired,
        "the session reached the end of its window",
    );
    let p = w.step(at(3000));
    assert_eq!(p.status.phase, Some(RequestPhase::Expired));
    assert!(p.notice.is_some());
    // One-time: that is the end, even if asked again.
    let mut again = w.request.metadata.annotations.clone().unwrap_or_default();
    again.insert(annotations::REQUEST_AGAIN.into(), "1".into());
    w.request.metadata.annotations = Some(again);
    let p = w.step(at(3100));
    assert_eq!(p.status.phase, Some(RequestPhase::Expired));
    assert_eq!(reasons(&p), vec!["RequestAgainIgnored"]);
}

#[test]
fn a_preferred_window_in_the_future_schedules_the_session() {
    let mut w = World::new(request(serde_json::json!({
        "preferredWindow": {"start": "2026-03-03T09:00:00Z", "end": "2026-03-03T11:00:00Z"}
    })));
    w.step(at(5));
    w.decide(Decision::Approved, "bob", None);
    let p = w.step(at(61));
    let SessionAction::Create { spec, .. } = p.session else {
        panic!()
    };
    assert_eq!(spec.start_time, Some(Time(ts("2026-03-03T09:00:00Z"))));
    w.session_becomes(SessionPhase::Scheduled, "waiting");
    assert_eq!(w.step(at(62)).status.phase, Some(RequestPhase::Scheduled));
}

#[test]
fn approval_after_the_window_closed_fails_clearly() {
    let mut w = World::new(request(serde_json::json!({
        "preferredWindow": {"start": "2026-03-02T09:00:00Z", "end": "2026-03-02T09:30:00Z"}
    })));
    w.step(at(5));
    w.decide(Decision::Approved, "bob", None);
    let p = w.step(at(3000));
    assert_eq!(p.status.phase, Some(RequestPhase::Failed));
    assert!(
        p.status
            .message
            .unwrap()
            .contains("the preferred window closed at")
    );
    assert_eq!(p.session, SessionAction::Keep);
}

#[test]
fn a_session_failing_for_a_missing_device_fails_the_request_with_its_reason() {
    let mut w = World::new(request(serde_json::json!({})));
    w.step(at(5));
    w.decide(Decision::Approved, "bob", None);
    w.step(at(61));
    w.session_becomes(
        SessionPhase::Failed,
        "Device laptop does not exist in namespace helpdesk",
    );
    let p = w.step(at(62));
    assert_eq!(p.status.phase, Some(RequestPhase::Failed));
    assert_eq!(
        p.status.message.as_deref(),
        Some("the session failed: Device laptop does not exist in namespace helpdesk")
    );
    assert!(p.events[0].warning);
}

#[test]
fn denial_is_final_for_a_one_time_request() {
    let mut w = World::new(request(serde_json::json!({})));
    w.step(at(5));
    w.decide(Decision::Denied, "bob", Some("use the self-service portal"));
    let p = w.step(at(61));
    assert_eq!(p.status.phase, Some(RequestPhase::Denied));
    assert_eq!(reasons(&p), vec!["Denied"]);
    assert!(p.events[0].warning);
    let denied = p
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == ct::DENIED)
        .unwrap();
    assert_eq!(denied.message, "denied by bob: use the self-service portal");
    assert_eq!(p.session, SessionAction::Keep);
    assert_eq!(p.requeue_after, None);
}

#[test]
fn nobody_deciding_in_time_expires_the_approval() {
    let mut w = World::new(request(serde_json::json!({})));
    w.step(at(5));
    let p = w.step(at(3600));
    assert_eq!(p.status.phase, Some(RequestPhase::ApprovalExpired));
    assert_eq!(
        p.status.message.as_deref(),
        Some("nobody decided within 1h")
    );
    assert_eq!(p.requeue_after, None);
    // A late decision changes nothing.
    w.decide(Decision::Approved, "bob", None);
    assert_eq!(
        w.step(at(3700)).status.phase,
        Some(RequestPhase::ApprovalExpired)
    );
}

#[test]
fn a_reusable_request_goes_inactive_and_runs_again_after_a_new_approval() {
    let mut w = World::new(request(serde_json::json!({"reusable": true})));
    w.step(at(5));
    w.decide(Decision::Approved, "bob", None);
    w.step(at(61));
    w.session_becomes(SessionPhase::Completed, "ended by the user");
    let p = w.step(at(600));
    assert_eq!(p.status.phase, Some(RequestPhase::Inactive));
    assert_eq!(p.status.history.len(), 1);
    assert_eq!(p.status.history[0].outcome, RequestPhase::Completed);
    assert_eq!(p.status.history[0].session.as_deref(), Some("vpn-1"));
    assert_eq!(reasons(&p), vec!["Completed", "Inactive"]);

    // Requested again: round 2, waiting for a fresh decision; round 1's approval is history.
    w.request.metadata.annotations = Some(
        [(
            annotations::REQUEST_AGAIN.to_owned(),
            "2026-03-02T10:00:00Z".to_owned(),
        )]
        .into(),
    );
    let p = w.step(at(3600));
    assert_eq!(p.status.phase, Some(RequestPhase::Pending));
    assert_eq!(p.status.round, Some(2));
    assert_eq!(p.status.approval_deadline, Some(Time(at(7200))));
    assert!(p.status.conditions.iter().all(|c| c.type_ != ct::APPROVED));
    assert_eq!(reasons(&p), vec!["RequestedAgain"]);
    assert_eq!(
        w.phase(),
        Some(RequestPhase::Pending),
        "the old approval does not carry over"
    );
    let p = w.step(at(3700));
    assert_eq!(p.status.phase, Some(RequestPhase::Pending));

    w.decide(Decision::Approved, "erin", None);
    let p = w.step(at(3800));
    let SessionAction::Create { name, .. } = p.session else {
        panic!()
    };
    assert_eq!(name, "vpn-2");
    // The same marker again does nothing.
    assert!(reasons(&w.step(at(3801))).is_empty());
}

#[test]
fn a_deleted_session_fails_the_round() {
    let mut w = World::new(request(serde_json::json!({})));
    w.step(at(5));
    w.decide(Decision::Approved, "bob", None);
    w.step(at(61));
    w.session = None;
    let p = w.step(at(62));
    assert_eq!(p.status.phase, Some(RequestPhase::Failed));
    assert_eq!(
        p.session,
        SessionAction::Keep,
        "a deleted session is not silently re-created"
    );
}

#[test]
fn an_edit_is_an_event_and_a_notification() {
    let mut w = World::new(request(serde_json::json!({})));
    w.step(at(5));
    w.request.spec.reason = "VPN fails, also Wi-Fi".into();
    w.request.metadata.generation = Some(2);
    let p = w.step(at(10));
    assert_eq!(reasons(&p), vec!["Updated"]);
    let notice = p.notice.expect("edits are notified");
    assert!(notice.body.contains("VPN fails, also Wi-Fi"));
}

#[test]
fn a_request_whose_session_name_would_not_fit_fails_instead_of_retrying() {
    // Stored before the schema bounded request names: its session could never be created.
    let mut r = request(serde_json::json!({}));
    r.metadata.name = Some("r".repeat(62));
    let mut w = World::new(r);
    w.step(at(5));
    w.decide(Decision::Approved, "bob", None);
    let p = w.step(at(61));
    assert_eq!(p.status.phase, Some(RequestPhase::Failed));
    assert!(matches!(p.session, SessionAction::Keep), "{:?}", p.session);
    let message = p.status.message.unwrap_or_default();
    assert!(message.contains("longer than 63 characters"), "{message}");
}

fn approvable_condition(p: &Plan) -> (String, String, String) {
    let c = p
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == APPROVABLE)
        .expect("the Approvable condition");
    (c.status.clone(), c.reason.clone(), c.message.clone())
}

#[test]
fn a_request_for_a_missing_device_is_held_before_approval() {
    let mut w = World::new(request(serde_json::json!({})));
    w.device_exists = false;
    let p = w.step(at(5));
    assert_eq!(p.status.phase, Some(RequestPhase::Pending));
    let (status, reason, message) = approvable_condition(&p);
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "DeviceNotFound")
    );
    assert_eq!(
        message,
        "Device laptop does not exist in namespace helpdesk"
    );
    assert!(
        p.status.message.as_deref().unwrap().starts_with("held: "),
        "{:?}",
        p.status.message
    );
    assert!(reasons(&p).contains(&"Held"));
    // An approval that got in anyway (no admission policy, or a Device deleted since) does
    // not create a session that could only fail.
    w.decide(Decision::Approved, "bob", None);
    let p = w.step(at(61));
    assert_eq!(p.status.phase, Some(RequestPhase::Pending));
    assert_eq!(p.session, SessionAction::Keep);
    // Held, not repeated: no second Held Event.
    assert!(!reasons(&p).contains(&"Held"));
    // The Device appears: the approval takes effect.
    w.device_exists = true;
    let p = w.step(at(70));
    assert_eq!(p.status.phase, Some(RequestPhase::Approved));
    assert!(matches!(p.session, SessionAction::Create { .. }));
    // Only a waiting round says whether it can be approved.
    let p = w.step(at(71));
    assert_eq!(approvable_condition(&p).0, "True");

    // A denial is never held.
    let mut w = World::new(request(serde_json::json!({})));
    w.device_exists = false;
    w.step(at(5));
    w.decide(Decision::Denied, "bob", None);
    assert_eq!(w.step(at(61)).status.phase, Some(RequestPhase::Denied));

    // A held request still expires at its deadline.
    let mut w = World::new(request(serde_json::json!({})));
    w.device_exists = false;
    w.step(at(5));
    assert_eq!(
        w.step(at(3600)).status.phase,
        Some(RequestPhase::ApprovalExpired)
    );
}

#[test]
fn a_request_longer_than_the_cluster_allows_is_held() {
    let mut w = World::new(request(serde_json::json!({
        "sessionTemplate": {"mode": "Interactive", "duration": "9h"},
    })));
    let p = w.step(at(5));
    let (status, reason, message) = approvable_condition(&p);
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "DurationExceedsMaximum")
    );
    assert!(
        message.contains("9h") && message.contains("8h"),
        "{message}"
    );
    w.decide(Decision::Approved, "bob", None);
    assert_eq!(w.step(at(61)).status.phase, Some(RequestPhase::Pending));

    // Positive control: the maximum itself is allowed.
    let mut w = World::new(request(serde_json::json!({
        "sessionTemplate": {"mode": "Interactive", "duration": "8h"},
    })));
    let p = w.step(at(5));
    assert_eq!(approvable_condition(&p).0, "True");
    assert_eq!(p.status.message.as_deref(), Some("waiting for an approver"));
    w.decide(Decision::Approved, "bob", None);
    assert_eq!(w.step(at(61)).status.phase, Some(RequestPhase::Approved));
}

#[test]
fn a_new_round_drops_the_previous_rounds_approver() {
    let mut w = World::new(request(serde_json::json!({"reusable": true})));
    w.step(at(5));
    w.decide(Decision::Approved, "bob", None);
    w.step(at(61));
    assert!(!stale_approval(w.request.status.as_ref().unwrap()));
    w.session_becomes(SessionPhase::Completed, "done");
    assert_eq!(w.step(at(100)).status.phase, Some(RequestPhase::Inactive));
    assert!(!stale_approval(w.request.status.as_ref().unwrap()));
    w.request.metadata.annotations =
        Some([(annotations::REQUEST_AGAIN.to_owned(), "1".to_owned())].into());
    let p = w.step(at(200));
    assert_eq!(p.status.round, Some(2));
    assert!(
        stale_approval(&p.status),
        "round 1's decision is still in status.approval"
    );
    // The history keeps who approved round 1.
    assert_eq!(
        p.status.history[0]
            .approval
            .as_ref()
            .map(|a| a.approver.as_str()),
        Some("bob")
    );
}

#[path = "plan_approvals_tests.rs"]
mod approvals;
