//! Status: writes this controller's part of an AssistanceRequest's status by server-side
//! apply. The approvers' decisions (`status.approval`, `status.approvals`) and the notifier's
//! record (`status.notified`, `Notified`) belong to their own field managers and are never
//! sent.

use kube::Resource;
use kube::api::{Api, Patch, PatchParams};
use tether_crds::AssistanceRequest;
use tether_crds::assistance_request::{AssistanceRequestStatus, condition_types as ct};

use super::plan::Plan;
use super::{Error, FIELD_MANAGER};

/// Conditions this controller owns (the notifier owns `Notified`).
const OWNED_CONDITIONS: [&str; 3] = [ct::APPROVED, ct::DENIED, super::plan::APPROVABLE];

/// The part of the status this controller writes: everything but the approver's decision and
/// the notifier's record.
fn owned(status: &AssistanceRequestStatus) -> AssistanceRequestStatus {
    let mut s = status.clone();
    s.approval = None;
    s.approvals = Vec::new();
    s.notified = None;
    s.conditions
        .retain(|c| OWNED_CONDITIONS.contains(&c.type_.as_str()));
    s
}

/// Writes the plan's status when it differs from what is stored, and clears an earlier
/// round's decision.
pub async fn write(
    requests: &Api<AssistanceRequest>,
    request: &AssistanceRequest,
    plan: &Plan,
    namespace: &str,
    name: &str,
) -> Result<(), Error> {
    let desired = owned(&plan.status);
    let mut version = request.metadata.resource_version.clone();
    if request.status.as_ref().map(owned).as_ref() != Some(&desired) {
        let patch = serde_json::json!({
            "apiVersion": AssistanceRequest::api_version(&()),
            "kind": AssistanceRequest::kind(&()),
            "status": desired,
        });
        version = requests
            .patch_status(
                name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await
            .map_err(|source| Error::Kube {
                what: format!("write the status of AssistanceRequest {namespace}/{name}"),
                source,
            })?
            .metadata
            .resource_version;
    }
    if super::plan::stale_approval(&plan.status) {
        // The decision of an earlier round (kept in status.history) belongs to the approver's
        // field manager: a merge patch removes it, so the new round shows no approver.
        version = requests
            .patch_status(
                name,
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({"status": {"approval": null}})),
            )
            .await
            .map(|r| r.metadata.resource_version)
            .map_err(|source| Error::Kube {
                what: format!(
                    "clear the previous round's decision of AssistanceRequest {namespace}/{name}"
                ),
                source,
            })?;
    }
    if super::plan::stale_approvals(&plan.status) {
        // Approvals of earlier rounds (kept in status.history) go; the current round's stay.
        // The write is conditional on the version read, so an approval added meanwhile is
        // never lost: a conflict is retried with what is stored then.
        let round = plan.status.round;
        let current: Vec<_> = plan
            .status
            .approvals
            .iter()
            .filter(|a| Some(a.round) == round)
            .collect();
        requests
            .patch_status(
                name,
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({
                    "metadata": {"resourceVersion": version},
                    "status": {"approvals": current},
                })),
            )
            .await
            .map_err(|source| Error::Kube {
                what: format!(
                    "clear the previous rounds' approvals of AssistanceRequest {namespace}/{name}"
                ),
                source,
            })?;
    }
    Ok(())
}
