//! Apply: the writes a SessionSchedule's plan asks for — create the run's session (created,
//! not applied, so a retry never changes a session that exists: `AlreadyExists` means done),
//! terminate a replaced session the way `kubectl tether terminate` does, delete sessions
//! beyond the history limits — and the status, by server-side apply.

use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Resource, ResourceExt};
use tether_crds::contract::labels;
use tether_crds::remote_session::annotations;
use tether_crds::session_schedule::{SCHEDULE_LABEL, SessionScheduleStatus};
use tether_crds::{RemoteSession, SessionSchedule};

use super::plan::NewSession;
use super::{Error, FIELD_MANAGER};

fn kube_error(what: String) -> impl FnOnce(kube::Error) -> Error {
    move |source| Error::Kube { what, source }
}

/// A write to a session that is gone: done already (it ended, or history took it).
fn gone_is_done<T>(result: Result<T, kube::Error>, what: String) -> Result<(), Error> {
    match result {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(source) => Err(kube_error(what)(source)),
    }
}

/// Creates the run's session, labelled with and owned by the schedule. `Ok(Err(reason))`
/// when the API server refuses it for good (validation or admission), `Ok(Ok(()))` when it
/// exists, created now or before.
pub async fn create_session(
    sessions: &Api<RemoteSession>,
    schedule: &SessionSchedule,
    new: &NewSession,
) -> Result<Result<(), String>, Error> {
    let mut session = RemoteSession::new(&new.name, new.spec.clone());
    session.metadata = ObjectMeta {
        name: Some(new.name.clone()),
        labels: Some(
            [
                (labels::MANAGED_BY.to_owned(), labels::OPERATOR.to_owned()),
                (SCHEDULE_LABEL.to_owned(), schedule.name_any()),
            ]
            .into(),
        ),
        owner_references: schedule.controller_owner_ref(&()).map(|r| vec![r]),
        ..Default::default()
    };
    let params = PostParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..Default::default()
    };
    match sessions.create(&params, &session).await {
        Ok(_) => Ok(Ok(())),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(Ok(())),
        Err(kube::Error::Api(e)) if matches!(e.code, 400 | 403 | 422) => Ok(Err(e.message.clone())),
        Err(source) => Err(kube_error(format!("create RemoteSession {}", new.name))(
            source,
        )),
    }
}

/// Terminates `name` as `user` (the operator), with `reason`. A session gone already is
/// ended already.
pub async fn terminate(
    sessions: &Api<RemoteSession>,
    namespace: &str,
    name: &str,
    user: &str,
    reason: &str,
) -> Result<(), Error> {
    let patch = serde_json::json!({"metadata": {"annotations": {
        annotations::TERMINATED_BY: user,
        annotations::TERMINATION_REASON: reason,
    }}});
    gone_is_done(
        sessions
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await,
        format!("terminate RemoteSession {namespace}/{name}"),
    )
}

/// Deletes an ended session beyond the history limits (gone already is fine).
pub async fn delete_session(
    sessions: &Api<RemoteSession>,
    namespace: &str,
    name: &str,
) -> Result<(), Error> {
    gone_is_done(
        sessions.delete(name, &DeleteParams::background()).await,
        format!("delete RemoteSession {namespace}/{name}"),
    )
}

/// The operator's user name, from the API server (a SelfSubjectReview).
pub async fn whoami(client: &kube::Client) -> Result<String, Error> {
    let review = Api::<SelfSubjectReview>::all(client.clone())
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await
        .map_err(kube_error(
            "find out the operator's user name (SelfSubjectReview)".into(),
        ))?;
    review
        .status
        .and_then(|s| s.user_info)
        .and_then(|u| u.username)
        .ok_or(Error::Unidentified)
}

/// Writes `status` when it differs from what is stored.
pub async fn write_status(
    schedules: &Api<SessionSchedule>,
    schedule: &SessionSchedule,
    status: &SessionScheduleStatus,
    namespace: &str,
    name: &str,
) -> Result<(), Error> {
    if schedule.status.as_ref() == Some(status) {
        return Ok(());
    }
    crate::controllers::toolkit::apply_status(schedules, name, status, FIELD_MANAGER)
        .await
        .map_err(kube_error(format!(
            "write the status of SessionSchedule {namespace}/{name}"
        )))?;
    Ok(())
}
