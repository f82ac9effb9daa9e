//! The `tether.dev/agent` signer: CertificateSigningRequests the relay files for enrolling
//! agents (after checking their bootstrap token) are approved and signed by the operator's CA
//! with the enrolled identity, and the Device is created if it does not exist yet. Requests
//! from anyone but the relay are denied.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestCondition,
};
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use tracing::{info, warn};

use super::Context;
use crate::credentials::ca::unix_now;

/// The signer name of agent client certificates.
pub const SIGNER: &str = "tether.dev/agent";

/// Field manager for what this controller writes.
pub const FIELD_MANAGER: &str = "tether-operator/enrollment";

/// Lifetime of agent client certificates.
pub const AGENT_CERT_VALIDITY: Duration = Duration::from_secs(30 * 24 * 3600);

/// A failed enrollment step.
#[derive(Debug, thiserror::Error)]
#[error("failed to {what}")]
pub struct Error {
    what: String,
    #[source]
    source: Box<dyn std::error::Error + Send + Sync>,
}

/// Maps a `kube::Error` to an [`Error`] saying what was being done.
pub(crate) fn err(what: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let what = what.into();
    move |e| Error {
        what,
        source: Box::new(e),
    }
}

/// Whether `name` is a valid namespace or Device name (a DNS label, dots allowed).
pub(crate) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.as_bytes()[name.len() - 1].is_ascii_alphanumeric()
}

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
    let namespace = annotations
        .get("tether.dev/namespace")
        .cloned()
        .unwrap_or_default();
    let device = annotations
        .get("tether.dev/device")
        .cloned()
        .unwrap_or_default();
    let requester = csr.spec.username.clone().unwrap_or_default();

    let refusal = if requester != ctx.settings.relay_identity {
        Some(format!(
            "only the relay ({}) may request agent certificates, not {requester}",
            ctx.settings.relay_identity
        ))
    } else if !valid_name(&namespace) || !valid_name(&device) {
        Some(format!("invalid device identity {namespace:?}/{device:?}"))
    } else {
        None
    };
    if let Some(message) = refusal {
        warn!(csr = %name, %message, "Denied an agent certificate request");
        let patch = serde_json::json!({"status": {"conditions": [condition("Denied", "NotFromRelay", message)]}});
        api.patch_approval(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(err(format!("deny CertificateSigningRequest {name}")))?;
        return Ok(Action::await_change());
    }

    // Sign first: if signing fails the request is not left approved without a certificate.
    let pem = String::from_utf8_lossy(&csr.spec.request.0).into_owned();
    let issued = match ctx.credentials.authority().sign_client_csr(
        &pem,
        &namespace,
        &device,
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

    let approve = serde_json::json!({"status": {"conditions": [condition(
        "Approved",
        "BootstrapTokenChecked",
        format!("the relay checked the bootstrap token of device group {namespace}"),
    )]}});
    api.patch_approval(&name, &PatchParams::default(), &Patch::Merge(&approve))
        .await
        .map_err(err(format!("approve CertificateSigningRequest {name}")))?;
    let sign = serde_json::json!({"status": {"certificate": k8s_openapi::ByteString(issued.cert.into_bytes())}});
    api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&sign))
        .await
        .map_err(err(format!("sign CertificateSigningRequest {name}")))?;

    // The Device exists from enrollment on.
    let devices: Api<tether_crds::Device> = Api::namespaced(ctx.client.clone(), &namespace);
    let device_obj = serde_json::json!({
        "apiVersion": "tether.dev/v1alpha1", "kind": "Device",
        "metadata": {"name": device}, "spec": {},
    });
    devices
        .patch(
            &device,
            &PatchParams::apply(FIELD_MANAGER),
            &Patch::Apply(&device_obj),
        )
        .await
        .map_err(err(format!("create Device {namespace}/{device}")))?;
    let enrolled = serde_json::json!({
        "apiVersion": "tether.dev/v1alpha1", "kind": "Device",
        "status": {"enrolledAt": crate::controllers::remote_session::plan::second_time(jiff::Timestamp::now())},
    });
    devices
        .patch_status(
            &device,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&enrolled),
        )
        .await
        .map_err(err(format!(
            "record the enrollment of Device {namespace}/{device}"
        )))?;
    info!(namespace = %namespace, device = %device, "Enrolled Device");
    Ok(Action::await_change())
}

/// Retries after an error.
pub fn error_policy(
    csr: Arc<CertificateSigningRequest>,
    error: &Error,
    ctx: Arc<Context>,
) -> Action {
    ctx.metrics
        .reconcile_errors
        .with_label_values(&["enrollment", "kube"])
        .inc();
    warn!(csr = %csr.name_any(), error = %crate::error_chain(error), "Failed to process an agent certificate request");
    Action::requeue(Duration::from_secs(5))
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
