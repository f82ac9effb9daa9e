//! Observe: what an AssistanceRequest's plan depends on besides the request itself — the
//! current round's RemoteSession (read fresh) and whether its Device exists.

use kube::api::Api;
use kube::runtime::reflector::ObjectRef;
use tether_crds::{AssistanceRequest, Device, RemoteSession};

use super::Error;
use crate::controllers::Context;

/// What was observed, owned.
pub struct Observation {
    /// The current round's session, if it exists.
    pub session: Option<RemoteSession>,
    /// Whether the request's Device exists.
    pub device_exists: bool,
}

/// Reads the round's session and whether the Device exists.
pub async fn observe(
    ctx: &Context,
    request: &AssistanceRequest,
    namespace: &str,
    name: &str,
) -> Result<Observation, Error> {
    let sessions: Api<RemoteSession> = Api::namespaced(ctx.client.clone(), namespace);
    // The current round's session, read fresh.
    let round = request.status.as_ref().and_then(|s| s.round).unwrap_or(1);
    let session_name = super::plan::session_name(name, round);
    let session = sessions
        .get_opt(&session_name)
        .await
        .map_err(|source| Error::Kube {
            what: format!("read RemoteSession {namespace}/{session_name}"),
            source,
        })?;
    // Whether the Device exists decides whether the request may be approved: the cache
    // first, then (a miss may only mean it is still filling) the API server.
    let device_exists = ctx
        .devices
        .get(&ObjectRef::<Device>::new(&request.spec.device).within(namespace))
        .is_some()
        || Api::<Device>::namespaced(ctx.client.clone(), namespace)
            .get_metadata_opt(&request.spec.device)
            .await
            .map_err(|source| Error::Kube {
                what: format!("read Device {namespace}/{}", request.spec.device),
                source,
            })?
            .is_some();
    Ok(Observation {
        session,
        device_exists,
    })
}
