//! The `tether.dev/agent` signer: CertificateSigningRequests the relay files for enrolling
//! agents carry a digest of the bootstrap token the agent presented; the operator compares it
//! with the device group's `tether-enrollment` Secret (which only it and administrators can
//! read), checks the token's expiry and uses and that the device name is free to enroll
//! ([`plan`]), then counts the use, claims the Device, and approves and signs the request
//! with the enrolled identity, or denies it with the reason the agent is shown. Requests from
//! anyone but the relay are denied.
//!
//! Every write that consumes something (a token use, a re-enrollment allowance, a free name)
//! is conditional on the version observed, so two enrollments racing for the last use or for
//! one name cannot both win: the loser is decided again from what the winner wrote.

pub mod plan;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestCondition,
};
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use tether_crds::device::{
    CSR_DEVICE_ANNOTATION, CSR_NAMESPACE_ANNOTATION, CSR_TOKEN_DIGEST_ANNOTATION, Device,
    ENROLLMENT_REQUEST_ANNOTATION, ENROLLMENT_SECRET, ENROLLMENT_TOKEN_KEY,
    TOKEN_LAST_USE_ANNOTATION, TOKEN_USES_ANNOTATION, TOKEN_USES_OF_ANNOTATION,
};
use tracing::{info, warn};

use self::plan::{Decision, DeviceRecord, DeviceStep, Request, TokenSecret};
use super::Context;
use crate::credentials::ca::unix_now;

/// The signer name of agent client certificates.
pub const SIGNER: &str = tether_crds::contract::signers::AGENT;

/// Field manager for what this controller writes.
pub const FIELD_MANAGER: &str = "tether-operator/enrollment";

/// Lifetime of agent client certificates.
pub const AGENT_CERT_VALIDITY: Duration = Duration::from_secs(30 * 24 * 3600);

/// How soon a request whose conditional write lost a race is decided again.
const RACE_RETRY: Duration = Duration::from_millis(100);

pub use super::signers::Error;
use super::signers::{err, failed};

pub(crate) use tether_crds::contract::valid_name;

/// A CSR condition with status `True`.
pub(crate) fn condition(
    type_: &str,
    reason: &str,
    message: String,
) -> CertificateSigningRequestCondition {
    CertificateSigningRequestCondition {
        type_: type_.into(),
        status: "True".into(),
        reason: Some(reason.into()),
        message: Some(message),
        ..Default::default()
    }
}

/// Parameters of the operator's merge patches (owned by [`FIELD_MANAGER`]).
fn patch_params() -> PatchParams {
    PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PatchParams::default()
    }
}

/// Parameters of the operator's creations (owned by [`FIELD_MANAGER`]).
fn post_params() -> PostParams {
    PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PostParams::default()
    }
}

/// Whether a write failed because the object changed (or appeared) since it was read.
fn lost_race(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(r) if r.code == 409)
}

/// Reads the device group's enrollment Secret and the Device of the requested name.
async fn observe(
    ctx: &Context,
    namespace: &str,
    device: &str,
) -> Result<(Option<TokenSecret>, Option<DeviceRecord>), Error> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    let secret = secrets
        .get_opt(ENROLLMENT_SECRET)
        .await
        .map_err(err(format!("read Secret {namespace}/{ENROLLMENT_SECRET}")))?
        .map(|s| TokenSecret {
            resource_version: s.resource_version().unwrap_or_default(),
            annotations: s.metadata.annotations.clone().unwrap_or_default(),
            token: s
                .data
                .and_then(|d| d.get(ENROLLMENT_TOKEN_KEY).map(|t| t.0.clone())),
        });
    let devices: Api<Device> = Api::namespaced(ctx.client.clone(), namespace);
    let device = devices
        .get_opt(device)
        .await
        .map_err(err(format!("read Device {namespace}/{device}")))?
        .map(|d| {
            let enrollment_request = d.annotations().get(ENROLLMENT_REQUEST_ANNOTATION).cloned();
            DeviceRecord {
                enrolled: enrollment_request.is_some()
                    || d.status.as_ref().is_some_and(|s| s.enrolled_at.is_some()),
                allow_reenrollment: d.spec.allow_reenrollment,
                enrollment_request,
                resource_version: d.resource_version().unwrap_or_default(),
            }
        });
    Ok((secret, device))
}

/// Decides (approve or deny) and signs one request.
pub async fn reconcile(
    csr: Arc<CertificateSigningRequest>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let name = csr.name_any();
    let status = csr.status.clone().unwrap_or_default();
    let decided = status
        .conditions
        .iter()
        .flatten()
        .any(|c| matches!(c.type_.as_str(), "Denied" | "Failed"));
    if decided || status.certificate.as_ref().is_some_and(|c| !c.0.is_empty()) {
        return Ok(Action::await_change());
    }
    let api: Api<CertificateSigningRequest> = Api::all(ctx.client.clone());
    let annotations = csr.annotations();
    let get = |key: &str| annotations.get(key).map(String::as_str);
    let namespace = get(CSR_NAMESPACE_ANNOTATION).unwrap_or_default();
    let device = get(CSR_DEVICE_ANNOTATION).unwrap_or_default();
    let requester = csr.spec.username.clone().unwrap_or_default();
    let request = Request {
        name: &name,
        requester: &requester,
        namespace,
        device,
        token_digest: get(CSR_TOKEN_DIGEST_ANNOTATION),
    };

    // Nothing is read for requests that are not the relay's or name no valid device.
    let (secret, record) = if requester == ctx.settings.relay_identity
        && valid_name(namespace)
        && valid_name(device)
    {
        observe(&ctx, namespace, device).await?
    } else {
        (None, None)
    };
    let decision = plan::decide(
        &ctx.settings.relay_identity,
        &request,
        secret.as_ref(),
        record.as_ref(),
        jiff::Timestamp::now(),
    );
    let admission = match decision {
        Decision::Deny(denial) => {
            warn!(csr = %name, namespace = %namespace.escape_debug(), device = %device.escape_debug(), reason = denial.reason, message = %denial.message, "Denied an agent certificate request");
            let patch = serde_json::json!({"status": {"conditions": [condition("Denied", denial.reason, denial.message)]}});
            api.patch_approval(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map_err(err(format!("deny CertificateSigningRequest {name}")))?;
            return Ok(Action::await_change());
        }
        Decision::Admit(admission) => admission,
    };

    // Sign before anything is written: a request that cannot be signed consumes nothing and
    // is not left approved without a certificate.
    let pem = String::from_utf8_lossy(&csr.spec.request.0).into_owned();
    let issued = match ctx.credentials.authority().sign_client_csr(
        &pem,
        namespace,
        device,
        AGENT_CERT_VALIDITY,
        unix_now(),
    ) {
        Ok(issued) => issued,
        Err(e) => {
            let patch = serde_json::json!({"status": {"conditions": [condition("Failed", "InvalidRequest", e.to_string())]}});
            api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map_err(err(format!("fail CertificateSigningRequest {name}")))?;
            return Ok(Action::await_change());
        }
    };
    // Count the use first: should the claim below lose a race, the use is spent (refusing
    // too much), never the other way round.
    if let Some(count) = &admission.count {
        let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
        let patch = serde_json::json!({"metadata": {
            "resourceVersion": count.resource_version,
            "annotations": BTreeMap::from([
                (TOKEN_USES_ANNOTATION, count.uses.to_string()),
                (TOKEN_USES_OF_ANNOTATION, count.token.clone()),
                (TOKEN_LAST_USE_ANNOTATION, name.clone()),
            ]),
        }});
        match secrets
            .patch(ENROLLMENT_SECRET, &patch_params(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {}
            Err(e) if lost_race(&e) => return Ok(Action::requeue(RACE_RETRY)),
            Err(e) => {
                return Err(err(format!(
                    "count a use of Secret {namespace}/{ENROLLMENT_SECRET}"
                ))(e));
            }
        }
    }
    let devices: Api<Device> = Api::namespaced(ctx.client.clone(), namespace);
    let claimed = match &admission.device {
        DeviceStep::Create => {
            // Untyped, so that the spec is sent empty: the operator owns no spec field an
            // administrator may later apply (the API server fills in the defaults).
            let resource = ApiResource::erase::<Device>(&());
            let untyped: Api<DynamicObject> =
                Api::namespaced_with(ctx.client.clone(), namespace, &resource);
            let obj: DynamicObject = serde_json::from_value(serde_json::json!({
                "apiVersion": "tether.dev/v1alpha1", "kind": "Device",
                "metadata": {"name": device, "annotations": {ENROLLMENT_REQUEST_ANNOTATION: name}},
                "spec": {},
            }))
            .map_err(|e| failed(format!("build Device {namespace}/{device}"), e))?;
            untyped.create(&post_params(), &obj).await.map(|_| ())
        }
        DeviceStep::Claim {
            resource_version,
            reset_allowance,
        } => {
            let mut patch = serde_json::json!({"metadata": {
                "resourceVersion": resource_version,
                "annotations": {ENROLLMENT_REQUEST_ANNOTATION: name},
            }});
            if *reset_allowance {
                patch["spec"] = serde_json::json!({"allowReenrollment": false});
            }
            devices
                .patch(device, &patch_params(), &Patch::Merge(&patch))
                .await
                .map(|_| ())
        }
        DeviceStep::Claimed => Ok(()),
    };
    match claimed {
        Ok(()) => {}
        Err(e) if lost_race(&e) => return Ok(Action::requeue(RACE_RETRY)),
        Err(e) => return Err(err(format!("claim Device {namespace}/{device}"))(e)),
    }
    let enrolled = serde_json::json!({
        "apiVersion": "tether.dev/v1alpha1", "kind": "Device",
        "status": {"enrolledAt": crate::controllers::remote_session::plan::second_time(jiff::Timestamp::now())},
    });
    devices
        .patch_status(
            device,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&enrolled),
        )
        .await
        .map_err(err(format!(
            "record the enrollment of Device {namespace}/{device}"
        )))?;

    let approve = serde_json::json!({"status": {"conditions": [condition(
        "Approved",
        "BootstrapTokenChecked",
        format!("the bootstrap token of device group {namespace} matched and device {device} was free to enroll"),
    )]}});
    api.patch_approval(&name, &PatchParams::default(), &Patch::Merge(&approve))
        .await
        .map_err(err(format!("approve CertificateSigningRequest {name}")))?;
    let sign = serde_json::json!({"status": {"certificate": k8s_openapi::ByteString(issued.cert.into_bytes())}});
    api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&sign))
        .await
        .map_err(err(format!("sign CertificateSigningRequest {name}")))?;
    let again = matches!(
        admission.device,
        DeviceStep::Claim {
            reset_allowance: true,
            ..
        }
    );
    info!(namespace = %namespace, device = %device, csr = %name, reenrolled = again, "Enrolled Device");
    Ok(Action::await_change())
}

/// Retries after an error.
pub fn error_policy(
    csr: Arc<CertificateSigningRequest>,
    error: &Error,
    ctx: Arc<Context>,
) -> Action {
    super::signers::retry(&ctx, "enrollment", &csr, error)
}

/// Runs the signer until `shutdown`.
pub async fn run(
    ctx: Arc<Context>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let api: Api<CertificateSigningRequest> = Api::all(ctx.client.clone());
    Controller::new(
        api,
        watcher::Config::default().fields(&format!("spec.signerName={SIGNER}")),
    )
    .graceful_shutdown_on(shutdown)
    .run(reconcile, error_policy, ctx)
    .for_each(|_| async {})
    .await;
}
