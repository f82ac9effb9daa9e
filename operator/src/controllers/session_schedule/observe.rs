//! Observe: the sessions a SessionSchedule owns, read fresh from the API server: labelled with
//! the schedule's name and owned (as controller) by this schedule's uid, so a session merely
//! labelled like it is never counted, replaced or deleted.

use kube::Resource;
use kube::api::{Api, DynamicObject, ListParams};
use tether_crds::RemoteSession;
use tether_crds::decode::{api_resource, decode};
use tether_crds::session_schedule::{SCHEDULE_LABEL, SessionSchedule};
use tracing::warn;

use super::Error;
use crate::controllers::Context;

/// The sessions `schedule` owns. One that cannot be read is logged and left out (the
/// RemoteSession controller reports it on the object).
pub async fn sessions(
    ctx: &Context,
    schedule: &SessionSchedule,
    namespace: &str,
    name: &str,
) -> Result<Vec<RemoteSession>, Error> {
    let api: Api<DynamicObject> = Api::namespaced_with(
        ctx.client.clone(),
        namespace,
        &api_resource::<RemoteSession>(),
    );
    let list = api
        .list(&ListParams::default().labels(&format!("{SCHEDULE_LABEL}={name}")))
        .await
        .map_err(|source| Error::Kube {
            what: format!("list the RemoteSessions of SessionSchedule {namespace}/{name}"),
            source,
        })?;
    let uid = schedule.meta().uid.as_deref();
    Ok(list
        .items
        .into_iter()
        .filter(|o| {
            o.metadata
                .owner_references
                .iter()
                .flatten()
                .any(|r| r.controller == Some(true) && Some(r.uid.as_str()) == uid)
        })
        .filter_map(|o| match decode::<RemoteSession>(o) {
            Ok(session) => Some(session),
            Err(bad) => {
                warn!(schedule = %name, namespace = %namespace, error = %bad, "Left out a RemoteSession of a SessionSchedule that cannot be read");
                None
            }
        })
        .collect())
}
