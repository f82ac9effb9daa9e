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

use std::sync::Arc;

use k8s_openapi::api::authorization::v1::{ResourceAttributes, SubjectAccessReview};
use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use kube::ResourceExt;
use kube::api::{Api, PostParams};
use kube::runtime::controller::Action;
use tracing::info;

use super::{self as signing, Error, err, serves};
pub use super::{
    MAX_VALIDITY, NAMESPACE_ANNOTATION, RELAY_ANNOTATION, Request, SESSION_ANNOTATION,
};
use crate::controllers::Context;
use crate::controllers::toolkit::Scope;
use crate::credentials::ca::unix_now;

/// The signer name of recordings (auditor) client certificates.
pub const SIGNER: &str = tether_crds::contract::signers::RECORDINGS;

/// Checks a CSR's requester, annotations and usages; `Err` is the denial message.
pub fn parse(csr: &CertificateSigningRequest) -> Result<Request, String> {
    signing::parse(csr, SIGNER)
}

/// What the requester must be allowed, in words.
fn permission(request: &Request) -> String {
    match &request.session {
        Some(session) => format!(
            "get remotesessions/recording {session} in namespace {}",
            request.namespace
        ),
        None => format!(
            "get remotesessions/recording in namespace {}",
            request.namespace
        ),
    }
}

/// The denial message when RBAC says no.
pub fn refusal(request: &Request) -> String {
    format!("user {} may not {}", request.user, permission(request))
}

/// The review asking whether the CSR's requester may read these recordings.
pub fn review(request: &Request, csr: &CertificateSigningRequest) -> SubjectAccessReview {
    signing::review(
        request,
        csr,
        ResourceAttributes {
            namespace: Some(request.namespace.clone()),
            verb: Some("get".into()),
            group: Some("tether.dev".into()),
            resource: Some("remotesessions".into()),
            subresource: Some("recording".into()),
            name: request.session.clone(),
            ..Default::default()
        },
    )
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
    ) || signing::decided(&csr)
    {
        return Ok(Action::await_change());
    }
    let name = csr.name_any();
    let api: Api<CertificateSigningRequest> = Api::all(ctx.client.clone());
    let request = match parse(&csr) {
        Ok(r) => r,
        Err(message) => {
            return signing::refuse(&api, &csr, "recordings", "InvalidRequest", message).await;
        }
    };
    let review = Api::<SubjectAccessReview>::all(ctx.client.clone())
        .create(&PostParams::default(), &review(&request, &csr))
        .await
        .map_err(err(format!(
            "review the access of {} for CertificateSigningRequest {name}",
            request.user
        )))?;
    if !review.status.as_ref().is_some_and(|s| s.allowed) {
        return signing::refuse(&api, &csr, "recordings", "Forbidden", refusal(&request)).await;
    }

    // Sign first: if signing fails the request is not left approved without a certificate.
    let pem = String::from_utf8_lossy(&csr.spec.request.0).into_owned();
    let issued = match ctx.credentials.authority().sign_recordings_csr(
        &pem,
        &request.user,
        &request.namespace,
        request.session.as_deref(),
        request.validity,
        unix_now(),
    ) {
        Ok(issued) => issued,
        Err(e) => return signing::fail(&api, &name, e.to_string()).await,
    };
    signing::issue(
        &ctx,
        &api,
        &csr,
        format!("user {} may {}", request.user, permission(&request)),
        &issued.cert,
    )
    .await?;
    info!(
        csr = %name, user = %request.user, namespace = %request.namespace,
        session = request.session.as_deref().unwrap_or(""), not_after = issued.not_after,
        "Issued a recordings certificate"
    );
    Ok(Action::await_change())
}

/// Runs the signer for the namespaces in `scope` until `shutdown`.
pub async fn run(
    ctx: Arc<Context>,
    scope: Scope,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    signing::run(
        ctx,
        scope,
        SIGNER,
        "recordings-signer",
        |csr, ctx, scope| async move { reconcile(csr, ctx, &scope).await },
        shutdown,
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

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
            refusal(&r),
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
            refusal(&one),
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
        let review = review(&parse(&c).unwrap(), &c);
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
