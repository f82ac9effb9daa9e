//! Apply: carries out a plan's side effects on credentials and the finalizer — issuing the
//! session token into the access Secret, deleting it, publishing revocations — each idempotent,
//! so a reconcile interrupted anywhere is finished by the next one.

use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use tether_crds::contract::{access_secret, labels};
use tether_crds::remote_session::RemoteSession;
use tether_proto::token::{Claims, Permissions, SessionClaims, Technicians};

use super::Error;
use super::observe::{SESSION_GENERATION, TOKEN_EXPIRES_AT, access_secret_name};
use super::plan::{FINALIZER, FinalizerAction, Grant};
use crate::controllers::Context;

/// Field manager for the finalizer (kept apart so status and finalizer never collide).
pub const FINALIZER_MANAGER: &str = "tether-operator/finalizer";

/// Field manager for access Secrets.
pub const ACCESS_MANAGER: &str = "tether-operator/access";

/// Adds or removes the finalizer by server-side apply: the operator owns exactly its own
/// entry in `metadata.finalizers`.
pub async fn finalizer(
    api: &Api<RemoteSession>,
    name: &str,
    action: FinalizerAction,
) -> Result<(), Error> {
    let finalizers: Vec<&str> = match action {
        FinalizerAction::Keep => return Ok(()),
        FinalizerAction::Add => vec![FINALIZER],
        FinalizerAction::Remove => vec![],
    };
    let patch = serde_json::json!({
        "apiVersion": RemoteSession::api_version(&()),
        "kind": RemoteSession::kind(&()),
        "metadata": {"name": name, "finalizers": finalizers},
    });
    match api
        .patch(
            name,
            &PatchParams::apply(FINALIZER_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        // Already gone: nothing left to hold.
        Err(kube::Error::Api(e)) if e.code == 404 && action == FinalizerAction::Remove => Ok(()),
        Err(source) => Err(Error::Kube {
            what: format!("update the finalizer of RemoteSession {name}"),
            source,
        }),
    }
}

fn permissions(session: &RemoteSession) -> Permissions {
    let f = &session.spec.features;
    Permissions {
        desktop: f.desktop.into(),
        shell: f.shell,
        files: f.files,
        chat: f.chat,
        processes: f.processes,
        clipboard: f.clipboard.into(),
    }
}

/// Signs a new session token carrying exactly the plan's `grant` and writes it, with the
/// relay address, into the access Secret (owned by the session, so it is garbage-collected
/// with it).
pub async fn mint(
    ctx: &Context,
    session: &RemoteSession,
    namespace: &str,
    name: &str,
    grant: Grant,
    now: Timestamp,
) -> Result<(), Error> {
    let key = ctx.credentials.signing_key().map_err(Error::Credentials)?;
    let jti = format!("{:032x}", rand::random::<u128>());
    let claims = Claims::granted(
        SessionClaims {
            uid: session.metadata.uid.clone().unwrap_or_default(),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            device: session.spec.device.clone(),
            ends_at: grant.ends_at.as_second(),
            technicians: Technicians {
                users: session.spec.technicians.users.clone(),
                groups: session.spec.technicians.groups.clone(),
            },
            permissions: permissions(session),
            consent: grant.consent,
            consent_timeout: grant
                .consent_timeout
                .map(|t| u32::try_from(t.as_secs().max(1)).unwrap_or(u32::MAX)),
            reason: session.spec.reason.clone(),
            ticket: session.spec.ticket.clone(),
            recording: session.spec.recording.into(),
            record_keystrokes: session.spec.features.record_keystrokes,
        },
        jti,
        now.as_second(),
        grant.not_before.as_second(),
        grant.expires_at.as_second(),
    );
    let token = key
        .mint(&claims)
        .map_err(|e| Error::Credentials(e.into()))?;
    let expires = Timestamp::from_second(claims.exp).unwrap_or(now);
    let ends = Timestamp::from_second(grant.ends_at.as_second()).unwrap_or(grant.ends_at);
    let secret_name = access_secret_name(name);
    let mut data = BTreeMap::from([
        (access_secret::TOKEN.to_owned(), token),
        (
            access_secret::SESSION.to_owned(),
            format!("{namespace}/{name}"),
        ),
        (
            access_secret::DEVICE.to_owned(),
            session.spec.device.clone(),
        ),
        (access_secret::EXPIRES_AT.to_owned(), expires.to_string()),
        (access_secret::ENDS_AT.to_owned(), ends.to_string()),
    ]);
    if let Some(relay) = &ctx.settings.sessions.relay_address {
        data.insert(access_secret::RELAY.to_owned(), relay.clone());
    }
    // What to trust for the relay's certificate.
    data.insert(
        access_secret::CA.to_owned(),
        ctx.credentials.authority().trust_bundle(),
    );
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(secret_name.clone()),
            namespace: Some(namespace.to_owned()),
            labels: Some(BTreeMap::from([
                (labels::MANAGED_BY.to_owned(), labels::OPERATOR.to_owned()),
                (
                    labels::COMPONENT.to_owned(),
                    access_secret::COMPONENT.to_owned(),
                ),
                (access_secret::SESSION_LABEL.to_owned(), name.to_owned()),
            ])),
            annotations: Some(BTreeMap::from([
                (TOKEN_EXPIRES_AT.to_owned(), expires.to_string()),
                (access_secret::TOKEN_KEY.to_owned(), key.kid().to_owned()),
                (
                    SESSION_GENERATION.to_owned(),
                    session.metadata.generation.unwrap_or_default().to_string(),
                ),
            ])),
            owner_references: session.controller_owner_ref(&()).map(|r| vec![r]),
            ..Default::default()
        },
        type_: Some(access_secret::TYPE.into()),
        data: Some(
            data.into_iter()
                .map(|(k, v)| (k, ByteString(v.into_bytes())))
                .collect(),
        ),
        ..Default::default()
    };
    let mut value = serde_json::to_value(&secret).map_err(|e| Error::Invalid(format!("{e}")))?;
    value["apiVersion"] = "v1".into();
    value["kind"] = "Secret".into();
    Api::<Secret>::namespaced(ctx.client.clone(), namespace)
        .patch(
            &secret_name,
            &PatchParams::apply(ACCESS_MANAGER).force(),
            &Patch::Apply(&value),
        )
        .await
        .map(|_| ())
        .map_err(|source| Error::Kube {
            what: format!("write Secret {namespace}/{secret_name}"),
            source,
        })
}

/// Deletes the access Secret, if it is still there.
pub async fn delete_access(ctx: &Context, namespace: &str, name: &str) -> Result<(), Error> {
    let secret_name = access_secret_name(name);
    match Api::<Secret>::namespaced(ctx.client.clone(), namespace)
        .delete(&secret_name, &DeleteParams::default())
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(source) => Err(Error::Kube {
            what: format!("delete Secret {namespace}/{secret_name}"),
            source,
        }),
    }
}

/// Publishes that the session's tokens are revoked.
pub async fn revoke(ctx: &Context, session: &RemoteSession, now: Timestamp) -> Result<(), Error> {
    let uid = session.uid().unwrap_or_default();
    ctx.credentials
        .revoke(&uid, now.as_second())
        .await
        .map_err(Error::Credentials)
}
