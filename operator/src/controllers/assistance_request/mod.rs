//! The AssistanceRequest controller: observe (the round's session) → plan (pure) → apply
//! (create the session, owned by the request) → status (server-side apply, Events) → notify
//! (queued, never blocking). Requeued at the approval deadline; session changes reach it
//! through the ownership of the session.

pub mod plan;

use std::sync::Arc;
use std::time::Instant;

use jiff::Timestamp;
use kube::api::{Api, ObjectMeta, PartialObjectMeta, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{self, ObjectRef, reflector};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use tether_crds::assistance_request::{AssistanceRequestStatus, condition_types as ct};
use tether_crds::{AssistanceRequest, Device, RemoteSession};
use tracing::info;

use super::Context;
use super::remote_session::lenient;
use super::toolkit::{self, ReconcileError, Retry, Scope};
use plan::{Observed, SessionAction};

/// Controller name in metrics and logs.
pub const CONTROLLER: &str = "assistancerequest";

/// Field manager for the request's status and the sessions it creates.
pub const FIELD_MANAGER: &str = "tether-operator/assistancerequest";

/// A failed reconcile of an AssistanceRequest.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The object is not usable.
    #[error("invalid AssistanceRequest: {0}")]
    Invalid(String),
    /// An API request failed.
    #[error("failed to {what}")]
    Kube {
        /// What was being done.
        what: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
}

impl ReconcileError for Error {
    fn category(&self) -> &'static str {
        match self {
            Self::Invalid(_) => "invalid",
            Self::Kube { .. } => "kube",
        }
    }

    /// An invalid request waits for a change; an API error is tried again soon.
    fn retry(&self) -> Retry {
        match self {
            Self::Invalid(_) => Retry::OnChange,
            Self::Kube { .. } => Retry::Soon,
        }
    }
}

/// Conditions this controller owns (the notifier owns `Notified`).
const OWNED_CONDITIONS: [&str; 3] = [ct::APPROVED, ct::DENIED, plan::APPROVABLE];

/// The part of the status this controller writes: everything but the approver's decision and
/// the notifier's record.
fn owned(status: &AssistanceRequestStatus) -> AssistanceRequestStatus {
    let mut s = status.clone();
    s.approval = None;
    s.notified = None;
    s.conditions
        .retain(|c| OWNED_CONDITIONS.contains(&c.type_.as_str()));
    s
}

/// Reconciles one AssistanceRequest.
pub async fn reconcile(
    request: Arc<AssistanceRequest>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let started = Instant::now();
    let namespace = request
        .namespace()
        .ok_or_else(|| Error::Invalid("no namespace".into()))?;
    let name = request.name_any();
    let requests: Api<AssistanceRequest> = Api::namespaced(ctx.client.clone(), &namespace);
    let sessions: Api<RemoteSession> = Api::namespaced(ctx.client.clone(), &namespace);

    // Observe: the current round's session, read fresh.
    let round = request.status.as_ref().and_then(|s| s.round).unwrap_or(1);
    let session_name = plan::session_name(&name, round);
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
        .get(&ObjectRef::<Device>::new(&request.spec.device).within(&namespace))
        .is_some()
        || Api::<Device>::namespaced(ctx.client.clone(), &namespace)
            .get_metadata_opt(&request.spec.device)
            .await
            .map_err(|source| Error::Kube {
                what: format!("read Device {namespace}/{}", request.spec.device),
                source,
            })?
            .is_some();
    let now = Timestamp::now();

    // Plan.
    let mut plan = plan::plan(
        Observed {
            request: &request,
            session: session.as_ref(),
            device_exists,
            now,
        },
        &ctx.settings.requests,
    );

    // Apply.
    if let SessionAction::Create {
        name: session_name,
        spec,
    } = &plan.session
        && let Err(refusal) = create_session(&sessions, &request, session_name, spec).await?
    {
        // The cluster refused the session (e.g. over the maximum duration): the request fails
        // with the API server's reason rather than retrying forever.
        let message = format!("the cluster refused the session: {refusal}");
        plan.status.phase = Some(tether_crds::assistance_request::RequestPhase::Failed);
        plan.status.message = Some(message.clone());
        plan.events.retain(|e| e.reason != "SessionCreated");
        plan.events.push(plan::PlannedEvent {
            warning: true,
            reason: "Failed",
            note: message,
        });
    }

    // Status.
    let desired = owned(&plan.status);
    if request.status.as_ref().map(owned).as_ref() != Some(&desired) {
        let patch = serde_json::json!({
            "apiVersion": AssistanceRequest::api_version(&()),
            "kind": AssistanceRequest::kind(&()),
            "status": desired,
        });
        requests
            .patch_status(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await
            .map_err(|source| Error::Kube {
                what: format!("write the status of AssistanceRequest {namespace}/{name}"),
                source,
            })?;
    }
    if plan::stale_approval(&plan.status) {
        // The decision of an earlier round (kept in status.history) belongs to the approver's
        // field manager: a merge patch removes it, so the new round shows no approver.
        requests
            .patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({"status": {"approval": null}})),
            )
            .await
            .map_err(|source| Error::Kube {
                what: format!(
                    "clear the previous round's decision of AssistanceRequest {namespace}/{name}"
                ),
                source,
            })?;
    }
    if request.status.as_ref().and_then(|s| s.phase) != plan.status.phase
        && let Some(phase) = plan.status.phase
    {
        info!(request = %name, namespace = %namespace, %phase, "Moved AssistanceRequest to a new phase");
    }
    toolkit::publish_events(&ctx, &*request, &plan.events).await;

    // Notify (queued; delivery records its own outcome).
    if let (Some(notifier), Some(notice)) = (&ctx.notifier, plan.notice.clone()) {
        notifier.submit(&request, notice);
    }

    ctx.metrics
        .reconcile_duration
        .with_label_values(&[CONTROLLER])
        .observe(started.elapsed().as_secs_f64());
    Ok(match plan.requeue_after {
        Some(after) => Action::requeue(after),
        None => Action::await_change(),
    })
}

/// Creates the round's session, owned by the request. `Ok(Err(reason))` when the API server
/// refuses it for good (validation or admission), `Ok(Ok(()))` when it exists.
async fn create_session(
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
                (
                    "app.kubernetes.io/managed-by".to_owned(),
                    "tether-operator".to_owned(),
                ),
                (
                    "tether.dev/assistance-request".to_owned(),
                    request.name_any(),
                ),
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

/// Builds the controller: a request is reconciled when it changes, when a session it owns
/// changes, and when its Device appears or goes (whether it can be approved).
///
/// Requests are watched leniently: one that cannot be read is reported and left out, never
/// stopping the others. Sessions are watched by their metadata alone (ownership is all this
/// watch needs), so a session's spec can never stop it either.
pub fn build(client: kube::Client, scope: &Scope) -> Controller<AssistanceRequest> {
    let (reader, writer) = reflector::store::<AssistanceRequest>();
    let requests = reflector(
        writer,
        lenient::watch(
            lenient::dynamic_api::<AssistanceRequest>(client.clone(), scope.namespace()),
            watcher::Config::default().any_semantic(),
            lenient::Reports::new(client.clone()),
            Some(reader.clone()),
        ),
    )
    .applied_objects();
    let sessions = watcher(
        scope.api::<PartialObjectMeta<RemoteSession>>(client.clone()),
        watcher::Config::default().labels("tether.dev/assistance-request"),
    )
    .touched_objects();
    let devices = watcher(
        scope.api::<PartialObjectMeta<Device>>(client),
        watcher::Config::default(),
    )
    .touched_objects();
    let index = reader.clone();
    Controller::for_stream(requests, reader)
        .owns_stream(sessions)
        .watches_stream(devices, move |device: PartialObjectMeta<Device>| {
            let namespace = device.namespace();
            let name = device.name_any();
            index
                .state()
                .into_iter()
                .filter(|r| r.namespace() == namespace && r.spec.device == name)
                .filter(|r| {
                    r.status
                        .as_ref()
                        .and_then(|s| s.phase)
                        .is_none_or(|p| p == tether_crds::assistance_request::RequestPhase::Pending)
                })
                .map(|r| ObjectRef::from_obj(&*r))
                .collect::<Vec<_>>()
        })
}

/// Runs the controller until `shutdown` resolves.
pub async fn run(
    controller: Controller<AssistanceRequest>,
    ctx: Arc<Context>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    toolkit::run(CONTROLLER, controller, reconcile, ctx, shutdown).await;
}
