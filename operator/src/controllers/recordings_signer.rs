//! The `tether.dev/recordings` signer: auditors get short-lived client certificates for
//! reading recordings through the relay, so they never hold storage credentials.
//!
//! A CertificateSigningRequest for this signer names what it wants to read in annotations:
//! `tether.dev/namespace` (required) and `tether.dev/session` (optional, one RemoteSession).
//! The operator asks the API server (a SubjectAccessReview for the CSR's requester, with the
//! user, groups, uid and extra the API server recorded) whether the requester may `get`
//! `remotesessions/recording` there. If so, it signs the CSR's key as a client certificate
//! with CN = the user and the URI SAN `tether://recordings/<namespace>[/<session>]` (the
//! scope the relay enforces), valid for 15 minutes or the CSR's `expirationSeconds` if
//! shorter, and annotates the CSR with the relay's address (`tether.dev/relay`) before
//! publishing the certificate, followed by the CA bundle (so the auditor can check the relay
//! without reading the operator's trust ConfigMap). Otherwise the CSR is denied with the
//! missing permission. An operator watching one namespace decides only that namespace's
//! requests, so each names its own relay.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use tracing::{info, warn};

use super::Context;
use super::enrollment::{Error, condition, err, valid_name};
use super::remote_session::Scope;
use crate::credentials::ca::unix_now;

/// The signer name of recordings (auditor) client certificates.
pub const SIGNER: &str = "tether.dev/recordings";

/// Annotation naming the namespace whose recordings are asked for.
pub const NAMESPACE_ANNOTATION: &str = "tether.dev/namespace";
/// Annotation naming one RemoteSession, to narrow the certificate to its recordings.
pub const SESSION_ANNOTATION: &str = "tether.dev/session";
/// Annotation the operator sets on a signed CSR: the relay to present the certificate to.
pub const RELAY_ANNOTATION: &str = "tether.dev/relay";

/// Longest lifetime of a recordings certificate.
pub const MAX_VALIDITY: Duration = Duration::from_secs(15 * 60);

/// Key usages a client certificate may ask for; anything else (`server auth`, `cert sign`,
/// …) is refused.
const ALLOWED_USAGES: [&str; 3] = ["client auth", "digital signature", "key encipherment"];

/// What a CSR asks for, once its annotations and usages are checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// The requester, as the API server authenticated it.
    pub user: String,
    /// The namespace whose recordings it wants.
    pub namespace: String,
    /// One session, or all of the namespace.
    pub session: Option<String>,
    /// How long the certificate lives.
    pub validity: Duration,
}

/// A RemoteSession name: a DNS subdomain.
fn valid_session(name: &str) -> bool {
    name.len() <= 253 && name.split('.').all(valid_name)
}

/// Checks a CSR's requester, annotations and usages; `Err` is the denial message.
pub fn parse(csr: &CertificateSigningRequest) -> Result<Request, String> {
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
            "signer {SIGNER} issues client certificates only; refused usages: {}",
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

impl Request {
    /// What the requester must be allowed, in words.
    fn permission(&self) -> String {
        match &self.session {
            Some(session) => format!(
                "get remotesessions/recording {session} in namespace {}",
                self.namespace
            ),
            None => format!(
                "get remotesessions/recording in namespace {}",
                self.namespace
            ),
        }
    }

    /// The denial message when RBAC says no.
    pub fn refusal(&self) -> String {
        format!("user {} may not {}", self.user, self.permission())
    }

    /// The review asking whether the CSR's requester may read these recordings.
    pub fn review(&self, csr: &CertificateSigningRequest) -> SubjectAccessReview {
        SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(self.user.clone()),
                groups: csr.spec.groups.clone(),
                uid: csr.spec.uid.clone(),
                extra: csr.spec.extra.clone(),
                resource_attributes: Some(ResourceAttributes {
                    namespace: Some(self.namespace.clone()),
                    verb: Some("get".into()),
                    group: Some("tether.dev".into()),
                    resource: Some("remotesessions".into()),
                    subresource: Some("recording".into()),
                    name: self.session.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        }
    }
}

/// Whether this operator decides requests for `namespace`: an operator watching one namespace
/// leaves the others' requests to the operators that serve them (and name their relays).
pub fn serves(scope: &Scope, namespace: Option<&str>) -> bool {
    match scope {
        Scope::Cluster => true,
        Scope::Namespace(ns) => namespace == Some(ns.as_str()),
    }
}

/// Decides (approve or deny) and signs one request, if it is for a namespace in `scope`.
pub async fn reconcile(
    csr: Arc<CertificateSigningRequest>,
    ctx: Arc<Context>,
    scope: &Scope,
) -> Result<Action, Error> {
    if !serves(
        scope,
        csr.annotations()
            .get(NAMESPACE_ANNOTATION)
            .map(String::as_str),
    ) {
        return Ok(Action::await_change());
    }
    let name = csr.name_any();
    let status = csr.status.clone().unwrap_or_default();
    let conditions = status.conditions.unwrap_or_default();
    if conditions
        .iter()
        .any(|c| matches!(c.type_.as_str(), "Denied" | "Failed"))
        || status.certificate.as_ref().is_some_and(|c| !c.0.is_empty())
    {
        return Ok(Action::await_change());
    }
    // Someone may have approved it by hand: the RBAC check still decides whether it is signed.
    let approved = conditions.iter().any(|c| c.type_ == "Approved");
    let api: Api<CertificateSigningRequest> = Api::all(ctx.client.clone());
    let refuse = |reason: &'static str, message: String| {
        let api = api.clone();
        let name = name.clone();
        async move {
            warn!(csr = %name, %message, "Denied a recordings certificate request");
            let (type_, result) = if approved {
                // An approved request cannot be denied; it fails instead.
                let patch = serde_json::json!({"status": {"conditions": [condition("Failed", reason, message)]}});
                (
                    "Failed",
                    api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                        .await,
                )
            } else {
                let patch = serde_json::json!({"status": {"conditions": [condition("Denied", reason, message)]}});
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
    };

    let request = match parse(&csr) {
        Ok(r) => r,
        Err(message) => return refuse("InvalidRequest", message).await,
    };
    let review = Api::<SubjectAccessReview>::all(ctx.client.clone())
        .create(&PostParams::default(), &request.review(&csr))
        .await
        .map_err(err(format!(
            "review the access of {} for CertificateSigningRequest {name}",
            request.user
        )))?;
    let allowed = review.status.as_ref().is_some_and(|s| s.allowed);
    if !allowed {
        return refuse("Forbidden", request.refusal()).await;
    }

    // Sign first: if signing fails the request is not left approved without a certificate.
    let pem = String::from_utf8_lossy(&csr.spec.request.0).into_owned();
    let authority = ctx.credentials.authority();
    let issued = match authority.sign_recordings_csr(
        &pem,
        &request.user,
        &request.namespace,
        request.session.as_deref(),
        request.validity,
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
    // Where to use it, before the certificate appears: whoever sees the certificate sees this.
    if let Some(relay) = &ctx.settings.sessions.relay_address {
        let patch = serde_json::json!({"metadata": {"annotations": {RELAY_ANNOTATION: relay}}});
        api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(err(format!("annotate CertificateSigningRequest {name}")))?;
    }
    if !approved {
        let approve = serde_json::json!({"status": {"conditions": [condition(
            "Approved",
            "AuthorizedByRBAC",
            format!("user {} may {}", request.user, request.permission()),
        )]}});
        api.patch_approval(&name, &PatchParams::default(), &Patch::Merge(&approve))
            .await
            .map_err(err(format!("approve CertificateSigningRequest {name}")))?;
    }
    // The certificate, then the CA bundle: what the relay's certificate chains to, for
    // auditors who may not read the trust ConfigMap.
    let chain = format!("{}\n{}", issued.cert.trim_end(), authority.trust_bundle());
    let sign =
        serde_json::json!({"status": {"certificate": k8s_openapi::ByteString(chain.into_bytes())}});
    api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&sign))
        .await
        .map_err(err(format!("sign CertificateSigningRequest {name}")))?;
    info!(
        csr = %name, user = %request.user, namespace = %request.namespace,
        session = request.session.as_deref().unwrap_or(""), not_after = issued.not_after,
        "Issued a recordings certificate"
    );
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
        .with_label_values(&["recordings-signer", "kube"])
        .inc();
    warn!(csr = %csr.name_any(), error = %crate::error_chain(error), "Failed to process a recordings certificate request");
    Action::requeue(Duration::from_secs(5))
}

/// Runs the signer for the namespaces in `scope` until `shutdown`.
pub async fn run(
    ctx: Arc<Context>,
    scope: Scope,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let api: Api<CertificateSigningRequest> = Api::all(ctx.client.clone());
    let scope = Arc::new(scope);
    Controller::new(
        api,
        watcher::Config::default().fields(&format!("spec.signerName={SIGNER}")),
    )
    .graceful_shutdown_on(shutdown)
    .run(
        move |csr, ctx| {
            let scope = scope.clone();
            async move { reconcile(csr, ctx, &scope).await }
        },
        error_policy,
        ctx,
    )
    .for_each(|_| async {})
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csr(annotations: serde_json::Value, spec: serde_json::Value) -> CertificateSigningRequest {
        let mut s = serde_json::json!({
            "request": "", "signerName": SIGNER, "username": "dave",
            "groups": ["auditors", "system:authenticated"], "uid": "u-1",
            "extra": {"scopes": ["a"]}, "usages": ["client auth", "digital signature"],
        });
        if let (Some(s), Some(extra)) = (s.as_object_mut(), spec.as_object()) {
            s.extend(extra.clone());
        }
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "dave-helpdesk", "annotations": annotations},
            "spec": s,
        }))
        .unwrap()
    }

    #[test]
    fn a_namespace_or_one_session_is_asked_for() {
        let r = parse(&csr(
            serde_json::json!({NAMESPACE_ANNOTATION: "helpdesk"}),
            serde_json::json!({}),
        ))
        .unwrap();
        assert_eq!(
            r,
            Request {
                user: "dave".into(),
                namespace: "helpdesk".into(),
                session: None,
                validity: MAX_VALIDITY,
            }
        );
        assert_eq!(
            r.refusal(),
            "user dave may not get remotesessions/recording in namespace helpdesk"
        );
        let one = parse(&csr(
            serde_json::json!({NAMESPACE_ANNOTATION: "helpdesk", SESSION_ANNOTATION: "printer.fix-1"}),
            serde_json::json!({"expirationSeconds": 600}),
        ))
        .unwrap();
        assert_eq!(one.session.as_deref(), Some("printer.fix-1"));
        assert_eq!(one.validity, Duration::from_secs(600));
        assert_eq!(
            one.refusal(),
            "user dave may not get remotesessions/recording printer.fix-1 in namespace helpdesk"
        );
        // Longer than 15 minutes is cut to 15 minutes.
        let long = parse(&csr(
            serde_json::json!({NAMESPACE_ANNOTATION: "helpdesk"}),
            serde_json::json!({"expirationSeconds": 86400}),
        ))
        .unwrap();
        assert_eq!(long.validity, MAX_VALIDITY);
    }

    #[test]
    fn the_review_carries_the_requesters_identity() {
        let c = csr(
            serde_json::json!({NAMESPACE_ANNOTATION: "helpdesk", SESSION_ANNOTATION: "printer"}),
            serde_json::json!({}),
        );
        let review = parse(&c).unwrap().review(&c);
        let spec = review.spec;
        assert_eq!(spec.user.as_deref(), Some("dave"));
        assert_eq!(spec.uid.as_deref(), Some("u-1"));
        assert_eq!(
            spec.groups.unwrap(),
            vec!["auditors".to_owned(), "system:authenticated".to_owned()]
        );
        assert_eq!(spec.extra.unwrap()["scopes"], vec!["a".to_owned()]);
        let attrs = spec.resource_attributes.unwrap();
        assert_eq!(
            (
                attrs.verb.as_deref(),
                attrs.group.as_deref(),
                attrs.resource.as_deref(),
                attrs.subresource.as_deref(),
                attrs.namespace.as_deref(),
                attrs.name.as_deref()
            ),
            (
                Some("get"),
                Some("tether.dev"),
                Some("remotesessions"),
                Some("recording"),
                Some("helpdesk"),
                Some("printer")
            )
        );
    }

    #[test]
    fn a_namespaced_operator_decides_only_its_namespace() {
        assert!(serves(&Scope::Cluster, Some("helpdesk")));
        assert!(serves(&Scope::Cluster, None), "and denies what names none");
        let one = Scope::Namespace("helpdesk".into());
        assert!(serves(&one, Some("helpdesk")));
        assert!(!serves(&one, Some("kiosks")));
        assert!(!serves(&one, None));
    }

    #[test]
    fn bad_requests_are_refused_with_a_reason() {
        let no_ns = parse(&csr(serde_json::json!({}), serde_json::json!({}))).unwrap_err();
        assert!(no_ns.contains(NAMESPACE_ANNOTATION), "{no_ns}");
        let bad_session = parse(&csr(
            serde_json::json!({NAMESPACE_ANNOTATION: "helpdesk", SESSION_ANNOTATION: "../x"}),
            serde_json::json!({}),
        ))
        .unwrap_err();
        assert!(bad_session.contains(SESSION_ANNOTATION), "{bad_session}");
        let server = parse(&csr(
            serde_json::json!({NAMESPACE_ANNOTATION: "helpdesk"}),
            serde_json::json!({"usages": ["client auth", "server auth"]}),
        ))
        .unwrap_err();
        assert!(server.contains("refused usages: server auth"), "{server}");
        let anonymous = parse(&csr(
            serde_json::json!({NAMESPACE_ANNOTATION: "helpdesk"}),
            serde_json::json!({"username": ""}),
        ))
        .unwrap_err();
        assert!(anonymous.contains("no requester"), "{anonymous}");
    }
}
