//! Apply: creates the round's RemoteSession, owned by the request (server-side apply, so a
//! reconcile interrupted after the create finds it and carries on).

use kube::api::{Api, ObjectMeta, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use tether_crds::contract::labels;
use tether_crds::{AssistanceRequest, RemoteSession};

use super::{Error, FIELD_MANAGER};

/// Label on the sessions a request creates, naming the request.
pub const REQUEST_LABEL: &str = "tether.dev/assistance-request";

/// Creates the round's session, owned by the request. `Ok(Err(reason))` when the API server
/// refuses it for good (validation or admission), `Ok(Ok(()))` when it exists.
pub async fn create_session(
    sessions: &Api<RemoteSession>,
    request: &AssistanceRequest,
    name: &str,
    spec: &tether_crds::RemoteSessionSpec,
) -> Result<Result<(), String>, Error> {
    let mut session = RemoteSession::new(name, spec.clone());
    session.metadata = ObjectMeta {
        name: Some(name.to_owned()),
        labels: Some(
            [
                (labels::MANAGED_BY.to_owned(), labels::OPERATOR.to_owned()),
                (REQUEST_LABEL.to_owned(), request.name_any()),
            ]
            .into(),
        ),
        owner_references: request.controller_owner_ref(&()).map(|r| vec![r]),
        ..Default::default()
    };
    match sessions
        .patch(
            name,
            &PatchParams::apply(FIELD_MANAGER),
            &Patch::Apply(&session),
        )
        .await
    {
        Ok(_) => Ok(Ok(())),
        Err(kube::Error::Api(e)) if matches!(e.code, 400 | 403 | 422) => Ok(Err(e.message.clone())),
        Err(source) => Err(Error::Kube {
            what: format!("create RemoteSession {name}"),
            source,
        }),
    }
}
