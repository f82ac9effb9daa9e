//! Status: writes the operator's part of a RemoteSession's status by server-side apply (the
//! plan's Events are published by [`crate::controllers::toolkit`]). The relay owns its own conditions (`Consented`, `Ended`,
//! `Recording`) and `status.recording`; the operator never sends them, so neither side
//! overwrites or removes the other's.

use kube::Resource;
use kube::api::{Api, Patch, PatchParams};
use tether_crds::remote_session::{RemoteSession, RemoteSessionStatus, condition_types as ct};

use super::Error;
use super::plan::Plan;

/// Field manager for everything this controller writes in status.
pub const FIELD_MANAGER: &str = "tether-operator/remotesession";

/// Condition types this controller owns.
const OWNED_CONDITIONS: [&str; 4] = [
    ct::READY,
    ct::EXPIRING_SOON,
    ct::AGENT_CONNECTED,
    ct::ADMITTED,
];

/// The operator-owned projection of a status: without the relay's conditions and without
/// `status.recording`, which a stale copy sent by the operator would otherwise overwrite.
fn owned(status: &RemoteSessionStatus) -> RemoteSessionStatus {
    let mut s = status.clone();
    s.conditions
        .retain(|c| OWNED_CONDITIONS.contains(&c.type_.as_str()));
    s.recording = None;
    s
}

/// Writes the plan's status unless the operator's part is already as planned.
pub async fn write(
    api: &Api<RemoteSession>,
    session: &RemoteSession,
    plan: &Plan,
    name: &str,
) -> Result<(), Error> {
    let desired = owned(&plan.status);
    if session.status.as_ref().map(owned).as_ref() == Some(&desired) {
        return Ok(());
    }
    let patch = serde_json::json!({
        "apiVersion": RemoteSession::api_version(&()),
        "kind": RemoteSession::kind(&()),
        "status": desired,
    });
    match api
        .patch_status(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        // Deleted while we planned: nothing left to describe.
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(source) => Err(Error::Kube {
            what: format!("write the status of RemoteSession {name}"),
            source,
        }),
    }
}

/// Field manager for `status.recording.state` when the operator marks a recording `Failed`
/// that the relay could not finish (see [`super::plan::stale_recording`]); the relay takes the
/// field back whenever it publishes the recording again.
pub const RECORDING_FIELD_MANAGER: &str = "tether-operator/recording-state";

/// Marks the session's recording `Failed`, with `message`, leaving every other field of
/// `status.recording` to the relay.
pub async fn mark_recording_failed(
    api: &Api<RemoteSession>,
    name: &str,
    message: &str,
) -> Result<(), Error> {
    let patch = serde_json::json!({
        "apiVersion": RemoteSession::api_version(&()),
        "kind": RemoteSession::kind(&()),
        "status": {"recording": {"state": "Failed", "message": message}},
    });
    match api
        .patch_status(
            name,
            &PatchParams::apply(RECORDING_FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(source) => Err(Error::Kube {
            what: format!("mark the recording of RemoteSession {name} failed"),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

    fn condition(type_: &str) -> Condition {
        Condition {
            type_: type_.into(),
            status: "False".into(),
            reason: "StorageUnavailable".into(),
            message: String::new(),
            observed_generation: None,
            last_transition_time: Time(jiff::Timestamp::UNIX_EPOCH),
        }
    }

    #[test]
    fn the_relays_conditions_are_never_sent() {
        let status = RemoteSessionStatus {
            conditions: [
                ct::READY,
                ct::CONSENTED,
                ct::ENDED,
                super::super::plan::RECORDING_CONDITION,
            ]
            .into_iter()
            .map(condition)
            .collect(),
            recording: Some(Default::default()),
            ..Default::default()
        };
        let sent = owned(&status);
        let types: Vec<&str> = sent.conditions.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(types, vec![ct::READY]);
        // Sending nothing for the relay's fields leaves them to the relay under server-side
        // apply; status.recording is the relay's too.
        assert!(
            serde_json::to_value(&sent)
                .unwrap()
                .get("recording")
                .is_none()
        );
    }
}
