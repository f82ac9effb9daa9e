//! Who approved a request's current round, and what approving it takes: the approval rule
//! from the namespace's SessionPolicies, the distinct approvers of `status.approval` and
//! `status.approvals`, and the decisions of earlier rounds that are cleared.

use tether_crds::assistance_request::{
    Approval, ApprovalRule, AssistanceRequest, AssistanceRequestStatus, Decision, annotations,
};

/// Whether `status.approval` is the decision of an earlier round (it is kept in
/// `status.history`): it is removed, so nothing shows the previous round's approver.
pub fn stale_approval(status: &AssistanceRequestStatus) -> bool {
    status
        .approval
        .as_ref()
        .is_some_and(|a| status.round.is_some_and(|round| a.round < round))
}

/// What approving takes under `policies` (`namespace/name`, spec): the most approvers any of
/// them asks for, from the groups all of those that name groups list. Policies that name
/// groups with none in common leave nobody to approve: an error naming them.
pub fn approval_rule(
    policies: &[(String, tether_crds::SessionPolicySpec)],
) -> Result<ApprovalRule, String> {
    let mut rule = ApprovalRule {
        required: 1,
        ..Default::default()
    };
    let mut groups: Option<Vec<String>> = None;
    for (name, spec) in policies {
        let Some(approvals) = &spec.approvals else {
            continue;
        };
        rule.required = rule.required.max(approvals.required);
        rule.policies.push(name.clone());
        if !approvals.groups.is_empty() {
            groups = Some(match groups {
                None => approvals.groups.clone(),
                Some(g) => g
                    .into_iter()
                    .filter(|x| approvals.groups.contains(x))
                    .collect(),
            });
        }
    }
    match groups {
        Some(g) if g.is_empty() => Err(format!(
            "the SessionPolicies {} name approver groups with none in common, so nobody can approve",
            rule.policies.join(", ")
        )),
        g => {
            rule.groups = g.unwrap_or_default();
            Ok(rule)
        }
    }
}

/// The approvals in `status.approvals` for the current round.
pub fn current_approvals(status: &AssistanceRequestStatus) -> Vec<Approval> {
    status
        .approvals
        .iter()
        .filter(|a| Some(a.round) == status.round && a.decision == Decision::Approved)
        .cloned()
        .collect()
}

/// Whether `status.approvals` holds approvals of earlier rounds (they are kept in
/// `status.history`): they are removed.
pub fn stale_approvals(status: &AssistanceRequestStatus) -> bool {
    status
        .approvals
        .iter()
        .any(|a| status.round.is_some_and(|round| a.round < round))
}

/// The distinct people who approved the current round, in the order they did: those in
/// `status.approvals` and the approver of `status.approval`. The requester never counts (the
/// API server refuses their approval; this is the second line).
pub fn approvers(request: &AssistanceRequest, status: &AssistanceRequestStatus) -> Vec<String> {
    let requester = request
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(annotations::REQUESTED_BY));
    let account = request.spec.requester.account.as_ref();
    let mut found: Vec<String> = Vec::new();
    let single = current_approval(status).filter(|a| a.decision == Decision::Approved);
    for a in current_approvals(status).into_iter().chain(single) {
        if Some(&a.approver) != requester
            && Some(&a.approver) != account
            && !a.approver.is_empty()
            && !found.contains(&a.approver)
        {
            found.push(a.approver);
        }
    }
    found
}

/// The approval of the current round, ignoring a leftover decision of an earlier round.
pub fn current_approval(status: &AssistanceRequestStatus) -> Option<Approval> {
    status
        .approval
        .clone()
        .filter(|a| Some(a.round) == status.round)
}
