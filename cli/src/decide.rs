//! `kubectl tether approve|deny NAME`: decide a pending request. The decision is written to
//! the request's status as the caller; the API server checks the caller may (`approve` verb),
//! is not the requester, and that the request was not decided already.

use anyhow::{Result, bail};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use kube::api::{Api, Patch, PatchParams, PostParams};
use tether_crds::AssistanceRequest;
use tether_crds::assistance_request::{Decision, RequestPhase};

use crate::client::{GlobalArgs, connect, explain, whoami};

/// Field manager of decisions written by the CLI.
pub const FIELD_MANAGER: &str = "kubectl-tether";

/// Flags of `approve` and `deny`.
#[derive(Clone, Debug, clap::Args)]
pub struct Args {
    /// The AssistanceRequest to decide.
    pub name: String,
    /// Why; shown to the requester and recorded with the decision.
    #[arg(long)]
    pub reason: Option<String>,
}

/// Whether the caller holds `verb` on `resource` (a SelfSubjectAccessReview).
pub async fn can(
    client: &kube::Client,
    namespace: &str,
    verb: &str,
    resource: &str,
    name: &str,
) -> Result<bool> {
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                group: Some("tether.dev".into()),
                resource: Some(resource.into()),
                verb: Some(verb.into()),
                namespace: Some(namespace.into()),
                name: Some(name.into()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let answer = Api::<SelfSubjectAccessReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await
        .map_err(|e| explain(e, "check your permissions (SelfSubjectAccessReview)"))?;
    Ok(answer.status.is_some_and(|s| s.allowed))
}

/// Runs `approve` or `deny`.
pub async fn run(global: &GlobalArgs, args: Args, decision: Decision) -> Result<()> {
    let conn = connect(global).await?;
    let ns = &conn.namespace;
    let name = &args.name;
    let verb = match decision {
        Decision::Approved => "approve",
        Decision::Denied => "deny",
    };
    let api: Api<AssistanceRequest> = Api::namespaced(conn.client.clone(), ns);
    // Read on its own, so a request that cannot be decoded is named with the reason.
    let Some(request) = crate::show::get_one::<AssistanceRequest>(&conn.client, ns, name).await?
    else {
        bail!("AssistanceRequest {name} not found in namespace {ns}");
    };
    let user = whoami(&conn.client).await?;
    if !can(&conn.client, ns, "approve", "assistancerequests", name).await? {
        bail!(
            "{user} may not {verb} AssistanceRequest {name} in namespace {ns}: the RBAC verb \"approve\" on assistancerequests.tether.dev is missing (bind the tether-approver role)"
        );
    }
    let status = request.status.clone().unwrap_or_default();
    if let Some(a) = &status.approval
        && Some(a.round) == status.round
    {
        bail!(
            "AssistanceRequest {name} was already decided: {:?} by {}",
            a.decision,
            a.approver
        );
    }
    match status.phase {
        Some(RequestPhase::Pending) => {}
        None => {
            bail!("AssistanceRequest {name} is not reconciled yet; is tether-operator running?")
        }
        Some(phase) => {
            bail!("AssistanceRequest {name} is {phase}: only a Pending request can be decided")
        }
    }
    let mut approval = serde_json::json!({
        "round": status.round.unwrap_or(1),
        "decision": decision,
        "approver": user,
        "decidedAt": jiff::Timestamp::from_second(jiff::Timestamp::now().as_second()).unwrap_or_else(|_| jiff::Timestamp::now()).to_string(),
    });
    if let Some(reason) = &args.reason {
        approval["reason"] = reason.clone().into();
    }
    let required = status.approval_rule.as_ref().map_or(1, |r| r.required);
    if decision == Decision::Approved && required > 1 {
        return add_approval(&api, request, approval, &user, required).await;
    }
    let patch = serde_json::json!({
        "apiVersion": "tether.dev/v1alpha1",
        "kind": "AssistanceRequest",
        "status": {"approval": approval},
    });
    // The API server decides whether this write is allowed; force only settles field ownership.
    api.patch_status(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(|e| explain(e, &format!("{verb} AssistanceRequest {name}")))?;
    let past = match decision {
        Decision::Approved => "approved",
        Decision::Denied => "denied",
    };
    println!("assistancerequest.tether.dev/{name} {past}");
    Ok(())
}

/// Adds `approval` to `status.approvals` of a request that needs `required` approvers. The
/// list is written whole, conditional on the version read, so two approvers at once never
/// overwrite each other: a conflict reads the request again and retries.
async fn add_approval(
    api: &Api<AssistanceRequest>,
    mut request: AssistanceRequest,
    approval: serde_json::Value,
    user: &str,
    required: u32,
) -> Result<()> {
    let name = request.metadata.name.clone().unwrap_or_default();
    for _ in 0..5 {
        let status = request.status.clone().unwrap_or_default();
        let round = status.round.unwrap_or(1);
        let mine = |a: &&tether_crds::assistance_request::Approval| a.round == round;
        let current: Vec<_> = status.approvals.iter().filter(mine).collect();
        if current.iter().any(|a| a.approver == user) {
            bail!(
                "you ({user}) already approved round {round} of AssistanceRequest {name}; each approver counts once"
            );
        }
        let mut list = serde_json::to_value(&status.approvals)?;
        if let Some(items) = list.as_array_mut() {
            items.push(approval.clone());
        }
        let patch = serde_json::json!({
            "metadata": {"resourceVersion": request.metadata.resource_version},
            "status": {"approvals": list},
        });
        match api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                let have = current.len() + 1;
                if have >= required as usize {
                    println!(
                        "assistancerequest.tether.dev/{name} approved ({have} of {required} approvers)"
                    );
                } else {
                    println!(
                        "assistancerequest.tether.dev/{name} approval added ({have} of {required} approvers; waiting for {} more)",
                        required as usize - have
                    );
                }
                return Ok(());
            }
            Err(kube::Error::Api(e)) if e.code == 409 => {
                request = api
                    .get(&name)
                    .await
                    .map_err(|e| explain(e, &format!("read AssistanceRequest {name}")))?;
            }
            Err(e) => return Err(explain(e, &format!("approve AssistanceRequest {name}"))),
        }
    }
    bail!("AssistanceRequest {name} kept changing while approving it; try again")
}
