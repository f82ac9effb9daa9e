//! The operator's client-certificate signers for people, and what they share: reading a CertificateSigningRequest's
//! requester, scope annotations and usages; denying it with a reason; and approving it,
//! naming the relay and publishing the certificate with the CA bundle after it.
//!
//! Two signers: `tether.dev/technician` (joining one session, [`technician`]) and
//! `tether.dev/recordings` (reading recordings, [`recordings`]). Each decides from RBAC (a SubjectAccessReview for the
//! requester the API server recorded), never from what the request says about itself.

pub mod recordings;
pub mod technician;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::runtime::controller::Controller;
use kube::runtime::watcher;

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use tracing::{info, warn};

use super::Context;
use super::enrollment::{condition, valid_name};
use super::toolkit::Scope;

/// A failed signing step.
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

/// An [`Error`] from any source, saying what was being done.
pub(crate) fn failed(
    what: impl Into<String>,
    source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
) -> Error {
    Error {
        what: what.into(),
        source: source.into(),
    }
}

/// Annotation naming the namespace a request is for.
pub const NAMESPACE_ANNOTATION: &str = tether_crds::contract::csr_annotations::NAMESPACE;
/// Annotation naming one RemoteSession.
pub const SESSION_ANNOTATION: &str = tether_crds::contract::csr_annotations::SESSION;
/// Annotation the operator sets on a signed CSR: the relay to present the certificate to.
pub const RELAY_ANNOTATION: &str = tether_crds::contract::csr_annotations::RELAY;

/// Longest lifetime of a certificate these signers issue.
pub const MAX_VALIDITY: Duration = Duration::from_secs(15 * 60);

/// Key usages a client certificate may ask for; anything else (`server auth`, `cert sign`,
/// …) is refused.
const ALLOWED_USAGES: [&str; 3] = ["client auth", "digital signature", "key encipherment"];

/// What a CSR asks for, once its annotations and usages are checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// The requester, as the API server authenticated it.
    pub user: String,
    /// The namespace it is for.
    pub namespace: String,
    /// One session, or all of the namespace.
    pub session: Option<String>,
    /// How long the certificate lives at most.
    pub validity: Duration,
}

/// A RemoteSession name: a DNS subdomain.
fn valid_session(name: &str) -> bool {
    name.len() <= 253 && name.split('.').all(valid_name)
}

/// Checks a CSR's requester, annotations and usages for `signer`; `Err` is the denial message.
pub fn parse(csr: &CertificateSigningRequest, signer: &str) -> Result<Request, String> {
    let user = csr.spec.username.clone().unwrap_or_default();
    if user.is_empty() {
        return Err("the request has no requester".into());
    }
    let annotations = csr.annotations();
    let namespace = annotations
        .get(NAMESPACE_ANNOTATION)
        .cloned()
        .unwrap_or_default();
    if !valid_name(&namespace) {
        return Err(format!(
            "annotation {NAMESPACE_ANNOTATION} must name a namespace, not {namespace:?}"
        ));
    }
    let session = annotations
        .get(SESSION_ANNOTATION)
        .filter(|s| !s.is_empty())
        .cloned();
    if let Some(session) = &session
        && !valid_session(session)
    {
        return Err(format!(
            "annotation {SESSION_ANNOTATION} must name a RemoteSession, not {session:?}"
        ));
    }
    let unexpected: BTreeSet<&str> = csr
        .spec
        .usages
        .iter()
        .flatten()
        .map(String::as_str)
        .filter(|u| !ALLOWED_USAGES.contains(u))
        .collect();
    if !unexpected.is_empty() {
        return Err(format!(
            "signer {signer} issues client certificates only; refused usages: {}",
            unexpected.into_iter().collect::<Vec<_>>().join(", ")
        ));
    }
    let validity = csr
        .spec
        .expiration_seconds
        .and_then(|s| u64::try_from(s).ok())
        .map_or(MAX_VALIDITY, |s| Duration::from_secs(s).min(MAX_VALIDITY));
    Ok(Request {
        user,
        namespace,
        session,
        validity,
    })
}

/// Whether this operator decides requests for `namespace`: an operator watching one namespace
/// leaves the others' requests to the operators that serve them (and name their relays).
pub fn serves(scope: &Scope, namespace: Option<&str>) -> bool {
    scope.covers(namespace)
}

/// A review asking whether the CSR's requester — the user, groups, uid and extra the API
/// server recorded — may do `attributes`.
pub fn review(
    request: &Request,
    csr: &CertificateSigningRequest,
    attributes: ResourceAttributes,
) -> SubjectAccessReview {
    SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(request.user.clone()),
            groups: csr.spec.groups.clone(),
            uid: csr.spec.uid.clone(),
            extra: csr.spec.extra.clone(),
            resource_attributes: Some(attributes),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// Whether a request was already decided (denied, failed or signed): nothing left to do.
pub fn decided(csr: &CertificateSigningRequest) -> bool {
    let status = csr.status.clone().unwrap_or_default();
    status
        .conditions
        .iter()
        .flatten()
        .any(|c| matches!(c.type_.as_str(), "Denied" | "Failed"))
        || status.certificate.as_ref().is_some_and(|c| !c.0.is_empty())
}

/// Whether someone (an administrator by hand, or an earlier reconcile) approved it already.
pub fn approved(csr: &CertificateSigningRequest) -> bool {
    csr.status
        .iter()
        .flat_map(|s| s.conditions.iter().flatten())
        .any(|c| c.type_ == "Approved")
}

/// Denies a request with `reason` and `message` (an approved request cannot be denied: it is
/// marked failed instead).
pub async fn refuse(
    api: &Api<CertificateSigningRequest>,
    csr: &CertificateSigningRequest,
    what: &str,
    reason: &'static str,
    message: String,
) -> Result<Action, Error> {
    let name = csr.name_any();
    warn!(csr = %name, message = %tether_proto::text::escape(&message), "Denied a {what} certificate request");
    let (type_, result) = if approved(csr) {
        let patch =
            serde_json::json!({"status": {"conditions": [condition("Failed", reason, message)]}});
        (
            "Failed",
            api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await,
        )
    } else {
        let patch =
            serde_json::json!({"status": {"conditions": [condition("Denied", reason, message)]}});
        (
            "Denied",
            api.patch_approval(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await,
        )
    };
    result.map(|_| Action::await_change()).map_err(err(format!(
        "mark CertificateSigningRequest {name} {type_}"
    )))
}

/// Marks a request failed when signing itself failed (the request is not left approved
/// without a certificate).
pub async fn fail(
    api: &Api<CertificateSigningRequest>,
    name: &str,
    message: String,
) -> Result<Action, Error> {
    let patch = serde_json::json!({"status": {"conditions": [condition("Failed", "InvalidRequest", message)]}});
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(err(format!("fail CertificateSigningRequest {name}")))?;
    Ok(Action::await_change())
}

/// Approves a request (`because`: what RBAC allowed, in words) and publishes `certificate`
/// followed by the CA bundle, after annotating the relay's address: whoever sees the
/// certificate also sees where to use it.
pub async fn issue(
    ctx: &Context,
    api: &Api<CertificateSigningRequest>,
    csr: &CertificateSigningRequest,
    because: String,
    certificate: &str,
) -> Result<(), Error> {
    let name = csr.name_any();
    if let Some(relay) = &ctx.settings.sessions.relay_address {
        let patch = serde_json::json!({"metadata": {"annotations": {RELAY_ANNOTATION: relay}}});
        api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(err(format!("annotate CertificateSigningRequest {name}")))?;
    }
    if !approved(csr) {
        let approve = serde_json::json!({"status": {"conditions": [condition(
            "Approved",
            "AuthorizedByRBAC",
            because,
        )]}});
        api.patch_approval(&name, &PatchParams::default(), &Patch::Merge(&approve))
            .await
            .map_err(err(format!("approve CertificateSigningRequest {name}")))?;
    }
    let chain = format!(
        "{}\n{}",
        certificate.trim_end(),
        ctx.credentials.authority().trust_bundle()
    );
    let sign =
        serde_json::json!({"status": {"certificate": k8s_openapi::ByteString(chain.into_bytes())}});
    api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&sign))
        .await
        .map_err(err(format!("sign CertificateSigningRequest {name}")))?;
    info!(csr = %name, "Published a signed certificate");
    Ok(())
}

/// Runs a signer's controller — the CertificateSigningRequests for `signer`, each handed to
/// `reconcile` with the namespaces this operator serves — until `shutdown`; errors are retried
/// and counted under `controller`.
pub async fn run<R, F>(
    ctx: Arc<Context>,
    scope: Scope,
    signer: &'static str,
    controller: &'static str,
    reconcile: R,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) where
    R: Fn(Arc<CertificateSigningRequest>, Arc<Context>, Arc<Scope>) -> F + Send + Sync + 'static,
    F: std::future::Future<Output = Result<Action, Error>> + Send + 'static,
{
    let api: Api<CertificateSigningRequest> = Api::all(ctx.client.clone());
    let scope = Arc::new(scope);
    Controller::new(
        api,
        watcher::Config::default().fields(&format!("spec.signerName={signer}")),
    )
    .graceful_shutdown_on(shutdown)
    .run(
        move |csr, ctx| reconcile(csr, ctx, scope.clone()),
        move |csr, error, ctx| retry(&ctx, controller, &csr, error),
        ctx,
    )
    .for_each(|_| async {})
    .await;
}

/// Retries after an error, counted under `controller`.
pub fn retry(
    ctx: &Context,
    controller: &str,
    csr: &CertificateSigningRequest,
    error: &Error,
) -> Action {
    ctx.metrics
        .reconcile_errors
        .with_label_values(&[controller, "kube"])
        .inc();
    warn!(csr = %csr.name_any(), error = %crate::error_chain(error), "Failed to process a {controller} certificate request");
    Action::requeue(Duration::from_secs(5))
}
