//! Virtual-time tests of a session the SessionPolicies' business hours and concurrency limits
//! hold back or refuse: no credentials while held, admitted once, never judged again.

use super::*;

#[test]
fn a_session_held_by_policy_waits_without_credentials_and_starts_once_admitted() {
    use crate::controllers::remote_session::gate::reasons as gate_reasons;
    let mut w = World::new(scheduled());
    let opens = at(START, 600);
    w.gate = Verdict::Hold {
        reason: gate_reasons::OUTSIDE_BUSINESS_HOURS,
        message: "SessionPolicy helpdesk/office, rule businessHours: outside business hours".into(),
        until: Some(opens),
    };
    let p = w.step(ts(START));
    assert_eq!(p.status.phase, Some(SessionPhase::Pending));
    assert_eq!(p.status.reason.as_deref(), Some("OutsideBusinessHours"));
    assert_eq!(p.access, AccessAction::Keep, "no credentials while held");
    assert_eq!(p.requeue_after, Some(Duration::from_secs(600)));
    let admitted = conditions::find(&p.status.conditions, ct::ADMITTED).unwrap();
    assert_eq!(
        (admitted.status.as_str(), admitted.reason.as_str()),
        ("False", "OutsideBusinessHours")
    );
    assert!(reasons(&p).contains(&"HeldByPolicy"));
    // Held again for the same rule: no second Event.
    let p = w.step(at(START, 60));
    assert!(!reasons(&p).contains(&"HeldByPolicy"));
    // The hours open: admitted, credentials issued, an Event says so.
    w.gate = Verdict::Admit;
    let p = w.step(opens);
    assert!(matches!(p.access, AccessAction::Mint(_)));
    assert!(conditions::is_true(&p.status.conditions, ct::ADMITTED));
    assert!(reasons(&p).contains(&"Admitted"));
    // Once admitted the gate is not asked again: a rule that would hold it now changes nothing.
    w.gate = Verdict::Refuse {
        reason: gate_reasons::NAMESPACE_LIMIT,
        message: "full".into(),
    };
    let p = w.step(at(START, 700));
    assert_eq!(p.status.phase, Some(SessionPhase::Pending));
    assert_eq!(p.status.reason.as_deref(), Some("WaitingForAgent"));
}

#[test]
fn a_session_a_policy_refuses_is_denied_and_holds_nothing() {
    let mut w = World::new(scheduled());
    w.gate = Verdict::Refuse {
        reason: crate::controllers::remote_session::gate::reasons::DEVICE_LIMIT,
        message: "SessionPolicy helpdesk/one, rule concurrency.perDevice: full".into(),
    };
    let p = w.step(ts(START));
    assert_eq!(p.status.phase, Some(SessionPhase::Denied));
    assert_eq!(p.status.reason.as_deref(), Some("DeviceSessionLimit"));
    assert_eq!(p.access, AccessAction::Keep);
    assert_eq!(
        p.finalizer,
        FinalizerAction::Keep,
        "no finalizer was added: nothing to revoke"
    );
    assert!(reasons(&p).contains(&"Denied"));
}
