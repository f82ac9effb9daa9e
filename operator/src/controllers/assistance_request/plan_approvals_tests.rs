//! Requests that need several approvers: distinct people counted once, the requester never,
//! a denial by anyone ending the round, and nothing approved without the policies.

use super::*;

#[test]
fn a_two_approver_request_waits_for_the_second_distinct_approver() {
    let mut w = World::new(request(serde_json::json!({})));
    let policies = vec![(
        "helpdesk/two-eyes".to_owned(),
        serde_yaml::from_str::<tether_crds::SessionPolicySpec>(
            "approvals: {required: 2, groups: [leads]}",
        )
        .unwrap(),
    )];
    w.rule = Some(approval_rule(&policies));
    let p = w.step(at(5));
    let rule = p.status.approval_rule.clone().unwrap();
    assert_eq!(
        (rule.required, rule.groups, rule.policies),
        (
            2,
            vec!["leads".to_owned()],
            vec!["helpdesk/two-eyes".to_owned()]
        )
    );
    w.approve_too("bob");
    let p = w.step(at(61));
    assert_eq!(p.status.phase, Some(RequestPhase::Pending));
    assert_eq!(
        p.status.message.as_deref(),
        Some("approved by 1 of 2 required approvers (bob); waiting for 1 more")
    );
    assert_eq!(reasons(&p), vec!["ApprovalAdded"]);
    // The same person twice counts once, and so does the requester, whatever got in.
    w.approve_too("bob");
    w.approve_too("dana");
    let p = w.step(at(62));
    assert_eq!(p.status.phase, Some(RequestPhase::Pending));
    assert!(reasons(&p).is_empty(), "nothing new: {:?}", reasons(&p));
    // A single decision in status.approval is one approver among the others.
    w.decide(Decision::Approved, "erin", None);
    let p = w.step(at(63));
    assert_eq!(p.status.phase, Some(RequestPhase::Approved));
    assert_eq!(p.status.message.as_deref(), Some("approved by bob, erin"));
    assert!(matches!(p.session, SessionAction::Create { .. }));
}

#[test]
fn a_denial_by_any_approver_ends_a_request_that_needs_several() {
    let mut w = World::new(request(serde_json::json!({})));
    w.rule = Some(Ok(ApprovalRule {
        required: 3,
        ..Default::default()
    }));
    w.step(at(5));
    w.approve_too("bob");
    w.approve_too("erin");
    w.step(at(30));
    w.decide(Decision::Denied, "frank", Some("not during the freeze"));
    let p = w.step(at(61));
    assert_eq!(p.status.phase, Some(RequestPhase::Denied));
    assert_eq!(
        p.status.message.as_deref(),
        Some("denied by frank: not during the freeze")
    );
}

#[test]
fn without_the_policies_or_with_no_group_in_common_nothing_can_be_approved() {
    let mut w = World::new(request(serde_json::json!({})));
    w.rule = None;
    let p = w.step(at(5));
    let (status, reason, _) = approvable_condition(&p);
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "PoliciesNotLoaded")
    );
    // An approval that got in anyway does not approve it.
    w.decide(Decision::Approved, "bob", None);
    assert_eq!(w.step(at(61)).status.phase, Some(RequestPhase::Pending));

    let spec = |yaml: &str| serde_yaml::from_str::<tether_crds::SessionPolicySpec>(yaml).unwrap();
    let policies = vec![
        (
            "tether-system/default".to_owned(),
            spec("approvals: {required: 1, groups: [security]}"),
        ),
        (
            "helpdesk/leads".to_owned(),
            spec("approvals: {required: 2, groups: [leads]}"),
        ),
    ];
    let rule = approval_rule(&policies);
    assert_eq!(
        rule,
        Err("the SessionPolicies tether-system/default, helpdesk/leads name approver groups with none in common, so nobody can approve".to_owned())
    );
    w.rule = Some(rule);
    let p = w.step(at(62));
    let (status, reason, message) = approvable_condition(&p);
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "InvalidPolicy")
    );
    assert!(message.contains("nobody can approve"), "{message}");
    assert_eq!(p.status.phase, Some(RequestPhase::Pending));
}
