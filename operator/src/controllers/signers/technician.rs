//! The `tether.dev/technician` signer: the identity every technician connection carries.
//!
//! `kubectl tether` files a CertificateSigningRequest for this signer naming one session in
//! annotations (`tether.dev/namespace`, `tether.dev/session`); the API server stamps it with
//! the caller's user and groups. The operator approves it only when
//! - a SubjectAccessReview for that requester grants the custom verb `connect` on the
//!   RemoteSession (the chart's `tether-technician` role has it);
//! - the user, or one of the groups the API server recorded, is in `spec.technicians` (an
//!   empty list admits any holder of the verb);
//! - the session's window is open: its access Secret holds a current grant.
//!
//! It then mints a session token for that technician alone (the session's grant, the user's
//! name, expiring with the certificate) and signs the CSR's key as a client certificate: CN =
//! the user, URI SANs `tether://technician/<namespace>/<session>` and
//! `tether://grant/<token>`, valid for 15 minutes, the CSR's `expirationSeconds` or
//! `--technician-certificate-validity` if shorter, and never past the session's end. The relay
//! admits only such certificates and records only the name in them; the CLI renews its
//! certificate while connected.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::authorization::v1::{ResourceAttributes, SubjectAccessReview};
use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use kube::api::{Api, PostParams};
use kube::runtime::controller::Action;
use tether_crds::remote_session::{RemoteSession, SessionPhase};
use tether_proto::token::{Claims, DesktopPermission};
use tracing::info;

use super::{self as signing, Error, NAMESPACE_ANNOTATION, Request, err, failed, serves};
use crate::controllers::Context;
use crate::controllers::remote_session::observe::access_secret_name;
use crate::controllers::toolkit::Scope;
use crate::credentials::ca::unix_now;

/// The signer name of technician client certificates.
pub const SIGNER: &str = tether_crds::contract::signers::TECHNICIAN;

/// The custom RBAC verb on `remotesessions` that allows connecting as a technician.
pub const VERB: &str = "connect";

/// Checks a CSR's requester, annotations and usages; `Err` is the denial message. A technician
/// certificate is always for one session.
pub fn parse(csr: &CertificateSigningRequest) -> Result<(Request, String), String> {
    let request = signing::parse(csr, SIGNER)?;
    let session = request.session.clone().ok_or_else(|| {
        format!(
            "annotation {} must name the RemoteSession to join",
            signing::SESSION_ANNOTATION
        )
    })?;
    Ok((request, session))
}

/// The review asking whether the requester may connect to `session`.
pub fn review(
    request: &Request,
    session: &str,
    csr: &CertificateSigningRequest,
) -> SubjectAccessReview {
    signing::review(
        request,
        csr,
        ResourceAttributes {
            namespace: Some(request.namespace.clone()),
            verb: Some(VERB.into()),
            group: Some("tether.dev".into()),
            resource: Some("remotesessions".into()),
            name: Some(session.to_owned()),
            ..Default::default()
        },
    )
}

/// Whether `user` (with `groups`) is among the session's technicians; an empty list admits
/// anyone RBAC allows to connect.
pub fn listed(session: &RemoteSession, user: &str, groups: &[String]) -> bool {
    session.spec.technicians.admits(user, groups)
}

/// The grant a technician's certificate carries: the session's, for this technician, with the
/// desktop for watching only when `spec.technicians.viewOnly` names them.
pub fn technician_grant(
    session: &RemoteSession,
    claims: Claims,
    user: &str,
    groups: &[String],
    jti: String,
    now: i64,
    not_after: i64,
) -> Claims {
    let mut grant = claims.for_technician(user, jti, now, not_after);
    if session.spec.technicians.watches_only(user, groups) {
        grant.session.permissions = grant.session.permissions.watching();
    }
    grant
}

/// Why a session has no grant to hand out, from its phase.
fn not_open(session: &RemoteSession, name: &str) -> String {
    let status = session.status.clone().unwrap_or_default();
    match status.phase {
        Some(p) if p.is_terminal() => format!("RemoteSession {name} has ended ({p})"),
        Some(SessionPhase::Scheduled) | None => format!(
            "RemoteSession {name} has not started; its window opens at {}",
            status
                .scheduled_start
                .map(|t| t.0.to_string())
                .unwrap_or_else(|| "its start time".into())
        ),
        Some(_) => format!("RemoteSession {name} has no credentials yet"),
    }
}

/// How long a request waits for a session whose window is opening (just created, or its start
/// just passed) to have its grant, before it is denied.
pub const OPENING_PATIENCE: i64 = 30;

/// Whether to look again (and when) rather than deny a request for a session that has no grant
/// yet: it may be opening right now (not planned yet, `Pending`, or `Scheduled` with its start
/// passed), and the request is younger than [`OPENING_PATIENCE`].
pub fn wait_for_grant(session: &RemoteSession, filed: Option<&Time>, now: i64) -> Option<Duration> {
    let age = filed.map_or(0, |t| now - t.0.as_second());
    if age > OPENING_PATIENCE {
        return None;
    }
    let status = session.status.clone().unwrap_or_default();
    let opening = match status.phase {
        None | Some(SessionPhase::Pending | SessionPhase::Active) => true,
        Some(SessionPhase::Scheduled) => status
            .scheduled_start
            .is_none_or(|t| t.0.as_second() <= now + 1),
        Some(_) => false,
    };
    opening.then_some(Duration::from_millis(500))
}

/// How long the certificate lives: the request's validity, capped by the operator's setting
/// and by the session's end.
pub fn not_after(request: &Request, cap: Duration, ends_at: i64, now: i64) -> i64 {
    let validity = request.validity.min(cap).as_secs() as i64;
    (now + validity).min(ends_at)
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
    let csr_name = csr.name_any();
    let api: Api<CertificateSigningRequest> = Api::all(ctx.client.clone());
    let refuse = |reason: &'static str, message: String| {
        let api = api.clone();
        let csr = csr.clone();
        async move { signing::refuse(&api, &csr, "technician", reason, message).await }
    };
    let (request, name) = match parse(&csr) {
        Ok(r) => r,
        Err(message) => return refuse("InvalidRequest", message).await,
    };
    let ns = request.namespace.clone();
    let user = request.user.clone();
    let review = Api::<SubjectAccessReview>::all(ctx.client.clone())
        .create(&PostParams::default(), &review(&request, &name, &csr))
        .await
        .map_err(err(format!(
            "review the access of {user} for CertificateSigningRequest {csr_name}"
        )))?;
    if !review.status.as_ref().is_some_and(|s| s.allowed) {
        return refuse(
            "Forbidden",
            format!("user {user} may not {VERB} to RemoteSession {name} in namespace {ns}"),
        )
        .await;
    }
    let sessions: Api<RemoteSession> = Api::namespaced(ctx.client.clone(), &ns);
    let Some(session) = sessions
        .get_opt(&name)
        .await
        .map_err(err(format!("read RemoteSession {ns}/{name}")))?
    else {
        return refuse(
            "NotFound",
            format!("RemoteSession {name} not found in namespace {ns}"),
        )
        .await;
    };
    let groups = csr.spec.groups.clone().unwrap_or_default();
    if !listed(&session, &user, &groups) {
        return refuse(
            "NotATechnician",
            format!(
                "user {user} is not among the technicians of RemoteSession {name} (spec.technicians)"
            ),
        )
        .await;
    }
    if session
        .status
        .as_ref()
        .and_then(|s| s.phase)
        .is_some_and(SessionPhase::is_terminal)
    {
        return refuse("SessionOver", not_open(&session, &name)).await;
    }
    // The session's current grant, exactly as the RemoteSession controller decided it.
    let secret = Api::<Secret>::namespaced(ctx.client.clone(), &ns)
        .get_opt(&access_secret_name(&name))
        .await
        .map_err(err(format!(
            "read the access Secret of RemoteSession {ns}/{name}"
        )))?;
    let token = secret
        .as_ref()
        .and_then(|s| s.data.as_ref()?.get("token"))
        .map(|t| String::from_utf8_lossy(&t.0).into_owned());
    let now = unix_now();
    let Some(token) = token else {
        return match wait_for_grant(&session, csr.metadata.creation_timestamp.as_ref(), now) {
            Some(again) => Ok(Action::requeue(again)),
            None => refuse("SessionNotOpen", not_open(&session, &name)).await,
        };
    };
    let claims =
        match ctx
            .credentials
            .verifier()
            .verify(&token, now, session.metadata.uid.as_deref())
        {
            Ok(claims) => claims,
            // Being re-issued right now (rotation): the next attempt finds the new one.
            Err(e) => {
                return Err(failed(
                    format!("use the grant of RemoteSession {ns}/{name}"),
                    e,
                ));
            }
        };
    let not_after = not_after(
        &request,
        ctx.settings.technician_certificate_validity,
        claims.session.ends_at,
        now,
    );
    if not_after <= now {
        return refuse("SessionOver", format!("RemoteSession {name} has ended")).await;
    }
    let grant = technician_grant(
        &session,
        claims,
        &user,
        &groups,
        format!("{:032x}", rand::random::<u128>()),
        now,
        not_after,
    );
    let watching = grant.session.permissions.desktop == DesktopPermission::ViewOnly;
    let minted = ctx
        .credentials
        .signing_key()
        .map_err(|e| failed("load the token signing key", e))?
        .mint(&grant);
    let grant_token = match minted {
        Ok(t) => t,
        Err(e) => return signing::fail(&api, &csr_name, e.to_string()).await,
    };
    let pem = String::from_utf8_lossy(&csr.spec.request.0).into_owned();
    let validity = Duration::from_secs(u64::try_from(not_after - now).unwrap_or(0));
    let issued = match ctx.credentials.authority().sign_technician_csr(
        &pem,
        &user,
        &ns,
        &name,
        &grant_token,
        validity,
        now,
    ) {
        Ok(issued) => issued,
        Err(e) => return signing::fail(&api, &csr_name, e.to_string()).await,
    };
    signing::issue(
        &ctx,
        &api,
        &csr,
        format!("user {user} may {VERB} to RemoteSession {name} in namespace {ns}"),
        &issued.cert,
    )
    .await?;
    info!(
        csr = %csr_name, user = %tether_proto::text::escape(&user), namespace = %ns, session = %name,
        not_after = issued.not_after, desktop = if watching { "view-only" } else { "as the session allows" },
        "Issued a technician certificate"
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
        "technician-signer",
        |csr, ctx, scope| async move { reconcile(csr, ctx, &scope).await },
        shutdown,
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csr(annotations: serde_json::Value) -> CertificateSigningRequest {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "carol-fix", "annotations": annotations},
            "spec": {
                "request": "", "signerName": SIGNER, "username": "carol",
                "groups": ["technicians", "system:authenticated"],
                "usages": ["client auth", "digital signature"],
            },
        }))
        .unwrap()
    }

    fn session(technicians: serde_json::Value) -> RemoteSession {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "tether.dev/v1alpha1", "kind": "RemoteSession",
            "metadata": {"name": "fix", "namespace": "helpdesk"},
            "spec": {"device": "laptop", "technicians": technicians},
        }))
        .unwrap()
    }

    fn grant(desktop: DesktopPermission) -> Claims {
        use tether_proto::token::{Clipboard, Permissions, SessionClaims, Technicians};
        Claims::new(
            SessionClaims {
                uid: "u".into(),
                namespace: "helpdesk".into(),
                name: "fix".into(),
                device: "laptop".into(),
                ends_at: 2_000_000_000,
                technicians: Technicians::default(),
                permissions: Permissions {
                    desktop,
                    shell: true,
                    files: true,
                    chat: true,
                    processes: false,
                    clipboard: Clipboard {
                        to_device: true,
                        from_device: true,
                    },
                },
                consent: false,
                consent_timeout: None,
                ticket: None,
                reason: None,
                recording: Default::default(),
                record_keystrokes: false,
            },
            "j".into(),
            1_900_000_000,
            1_900_000_000,
        )
    }

    #[test]
    fn a_technician_named_view_only_gets_a_watching_grant_and_the_others_the_sessions() {
        let s = session(serde_json::json!({
            "users": ["junior", "senior"],
            "groups": ["helpdesk"],
            "viewOnly": {"users": ["senior"], "groups": ["trainees"]},
        }));
        let issue = |user: &str, groups: &[&str], desktop| {
            let groups: Vec<String> = groups.iter().map(|g| (*g).to_owned()).collect();
            technician_grant(
                &s,
                grant(desktop),
                user,
                &groups,
                "k".into(),
                1_900_000_000,
                1_900_000_600,
            )
            .session
            .permissions
        };
        let junior = issue("junior", &[], DesktopPermission::Control);
        assert_eq!(junior.desktop, DesktopPermission::Control);
        assert!(junior.clipboard.to_device);
        let senior = issue("senior", &[], DesktopPermission::Control);
        assert_eq!(senior.desktop, DesktopPermission::ViewOnly);
        assert!(!senior.clipboard.to_device && senior.clipboard.from_device);
        assert!(
            senior.shell && senior.files && senior.chat,
            "only the desktop is narrowed"
        );
        // By group, too; and a session without a desktop stays without one.
        let trainee = issue("tom", &["helpdesk", "trainees"], DesktopPermission::Control);
        assert_eq!(trainee.desktop, DesktopPermission::ViewOnly);
        let none = issue("senior", &[], DesktopPermission::None);
        assert_eq!(none.desktop, DesktopPermission::None);
        // viewOnly lets nobody in: a trainee outside users and groups is not listed.
        assert!(!listed(&s, "tina", &["trainees".to_owned()]));
        assert!(listed(
            &s,
            "tom",
            &["helpdesk".to_owned(), "trainees".to_owned()]
        ));
        // With nobody listed, anyone RBAC allows connects, and viewOnly still narrows.
        let open = session(serde_json::json!({"viewOnly": {"users": ["senior"]}}));
        assert!(listed(&open, "anyone", &[]));
        assert!(open.spec.technicians.watches_only("senior", &[]));
    }

    #[test]
    fn a_request_names_one_session() {
        let (request, session) = parse(&csr(
            serde_json::json!({NAMESPACE_ANNOTATION: "helpdesk", signing::SESSION_ANNOTATION: "fix"}),
        ))
        .unwrap();
        assert_eq!((request.user.as_str(), session.as_str()), ("carol", "fix"));
        let whole = parse(&csr(serde_json::json!({NAMESPACE_ANNOTATION: "helpdesk"}))).unwrap_err();
        assert!(whole.contains("must name the RemoteSession"), "{whole}");
        let c = csr(
            serde_json::json!({NAMESPACE_ANNOTATION: "helpdesk", signing::SESSION_ANNOTATION: "fix"}),
        );
        let (request, name) = parse(&c).unwrap();
        let attrs = review(&request, &name, &c)
            .spec
            .resource_attributes
            .unwrap();
        assert_eq!(
            (
                attrs.verb.as_deref(),
                attrs.resource.as_deref(),
                attrs.name.as_deref()
            ),
            (Some("connect"), Some("remotesessions"), Some("fix"))
        );
        assert_eq!(attrs.subresource, None);
    }

    #[test]
    fn the_session_lists_who_may_join() {
        let groups = vec!["technicians".to_owned()];
        assert!(listed(&session(serde_json::json!({})), "anyone", &[]));
        let users = session(serde_json::json!({"users": ["carol"]}));
        assert!(listed(&users, "carol", &[]));
        assert!(!listed(&users, "bob", &groups));
        let by_group = session(serde_json::json!({"groups": ["technicians"]}));
        assert!(listed(&by_group, "dave", &groups));
        assert!(!listed(&by_group, "dave", &["auditors".to_owned()]));
        // A user name is not a group name.
        assert!(!listed(&by_group, "technicians", &[]));
    }

    #[test]
    fn a_session_being_opened_is_waited_for_briefly() {
        let now = 1_800_000_000;
        let filed = Time(jiff::Timestamp::from_second(now - 2).unwrap());
        let fresh = session(serde_json::json!({}));
        assert!(
            wait_for_grant(&fresh, Some(&filed), now).is_some(),
            "not planned yet"
        );
        let mut pending = fresh.clone();
        pending.status = Some(tether_crds::remote_session::RemoteSessionStatus {
            phase: Some(SessionPhase::Pending),
            ..Default::default()
        });
        assert!(wait_for_grant(&pending, Some(&filed), now).is_some());
        let old = Time(jiff::Timestamp::from_second(now - OPENING_PATIENCE - 1).unwrap());
        assert!(
            wait_for_grant(&pending, Some(&old), now).is_none(),
            "not forever"
        );
        let mut later = fresh.clone();
        later.status = Some(tether_crds::remote_session::RemoteSessionStatus {
            phase: Some(SessionPhase::Scheduled),
            scheduled_start: Some(Time(jiff::Timestamp::from_second(now + 3600).unwrap())),
            ..Default::default()
        });
        assert!(
            wait_for_grant(&later, Some(&filed), now).is_none(),
            "denied at once"
        );
        let mut ended = fresh;
        ended.status = Some(tether_crds::remote_session::RemoteSessionStatus {
            phase: Some(SessionPhase::Expired),
            ..Default::default()
        });
        assert!(wait_for_grant(&ended, Some(&filed), now).is_none());
    }

    #[test]
    fn certificates_never_outlive_the_session_or_fifteen_minutes() {
        let request = Request {
            user: "carol".into(),
            namespace: "helpdesk".into(),
            session: Some("fix".into()),
            validity: signing::MAX_VALIDITY,
        };
        let now = 1_800_000_000;
        assert_eq!(
            not_after(&request, signing::MAX_VALIDITY, now + 3600, now),
            now + 900
        );
        assert_eq!(
            not_after(&request, signing::MAX_VALIDITY, now + 60, now),
            now + 60
        );
        assert_eq!(
            not_after(&request, Duration::from_secs(20), now + 3600, now),
            now + 20
        );
    }
}
