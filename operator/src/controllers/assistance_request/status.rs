//! Status: writes this controller's part of an AssistanceRequest's status by server-side
//! apply. The approver's decision (`status.approval`) and the notifier's record
//! (`status.notified`, `Notified`) belong to their own field managers and are never sent.

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
    if request.status.as_ref().map(owned).as_ref() != Some(&desired) {
        let patch = serde_json::json!({
            "apiVersion": AssistanceRequest::api_version(&()),
            "kind": AssistanceRequest::kind(&()),
            "status": desired,
        });
        requests
            .patch_status(
                name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await
            .map_err(|source| Error::Kube {
                what: format!("write the status of AssistanceRequest {namespace}/{name}"),
                source,
            })?;
    }
    if super::plan::stale_approval(&plan.status) {
        // The decision of an earlier round (kept in status.history) belongs to the approver's
        // field manager: a merge patch removes it, so the new round shows no approver.
        requests
            .patch_status(
                name,
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({"status": {"approval": null}})),
            )
            .await
            .map_err(|source| Error::Kube {
                what: format!(
                    "clear the previous round's decision of AssistanceRequest {namespace}/{name}"
                ),
                source,
            })?;
    }
    Ok(())
}
