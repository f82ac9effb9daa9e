//! Observe: everything a RemoteSession's plan depends on besides the session itself — its
//! Device (from the shared cache, or fresh when the plan decides something once from it) and
//! its access Secret (read fresh, so a token just issued is never issued twice).

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DynamicObject};
use kube::runtime::reflector::ObjectRef;
use tether_crds::contract::access_secret;
use tether_crds::decode::{api_resource, decode};
use tether_crds::device::Device;
use tether_crds::remote_session::{RemoteSession, SessionMode};

use super::Error;
use super::plan::AccessState;
use crate::controllers::Context;

/// Annotation on the access Secret: when its token expires (RFC 3339).
pub const TOKEN_EXPIRES_AT: &str = access_secret::TOKEN_EXPIRES_AT;

/// Annotation on the access Secret: the session's `metadata.generation` its token was minted
/// from.
pub const SESSION_GENERATION: &str = access_secret::SESSION_GENERATION;

/// What was observed, owned.
pub struct Observation {
    /// The session's Device, if it exists.
    pub device: Option<Device>,
    /// The access Secret's state, if it exists.
    pub access: Option<AccessState>,
}

/// Name of a session's access Secret.
pub fn access_secret_name(session: &str) -> String {
    access_secret::name(session)
}

/// Reads the session's Device and access Secret.
pub async fn observe(
    ctx: &Context,
    session: &RemoteSession,
    namespace: &str,
    name: &str,
) -> Result<Observation, Error> {
    // A Dynamic session's mode is decided once, from who is logged on: decided from a cache
    // that has not yet seen the Device's latest report, it would stay wrong for the whole
    // session, so that one decision reads the Device fresh.
    let decides_mode = session.spec.mode == SessionMode::Dynamic
        && session
            .status
            .as_ref()
            .and_then(|s| s.effective_mode)
            .is_none();
    let cached = if decides_mode {
        None
    } else {
        ctx.devices
            .get(&ObjectRef::<Device>::new(&session.spec.device).within(namespace))
            .map(|d| (*d).clone())
    };
    // A miss in the cache may only mean it is still filling: a missing Device fails the
    // session for good, so ask the API server before believing it. (The cache also leaves out
    // a Device that cannot be read: the session then waits, saying which, until it is fixed.)
    let device = match cached {
        Some(device) => Some(device),
        None => Api::<DynamicObject>::namespaced_with(
            ctx.client.clone(),
            namespace,
            &api_resource::<Device>(),
        )
        .get_opt(&session.spec.device)
        .await
        .map_err(|source| Error::Kube {
            what: format!("read Device {namespace}/{}", session.spec.device),
            source,
        })?
        .map(decode::<Device>)
        .transpose()
        .map_err(Error::UnreadableDevice)?,
    };
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    let secret_name = access_secret_name(name);
    let secret = secrets
        .get_opt(&secret_name)
        .await
        .map_err(|source| Error::Kube {
            what: format!("read Secret {namespace}/{secret_name}"),
            source,
        })?;
    let access = secret.map(|s| AccessState {
        // An unreadable annotation counts as expired: the token is simply re-issued.
        expires_at: s
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(TOKEN_EXPIRES_AT))
            .and_then(|t| t.parse::<Timestamp>().ok())
            .unwrap_or(Timestamp::UNIX_EPOCH),
        // Likewise a missing one (a Secret written before it was recorded): issued again once.
        generation: s
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(SESSION_GENERATION))
            .and_then(|g| g.parse::<i64>().ok()),
    });
    Ok(Observation { device, access })
}
