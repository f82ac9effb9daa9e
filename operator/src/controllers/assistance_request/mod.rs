//! The AssistanceRequest controller, the same pipeline as RemoteSession's: observe (the
//! round's session, the Device) → plan (pure) → apply (create the session, owned by the
//! request) → status (server-side apply) and Events → notify
//! (queued, never blocking). Requeued at the approval deadline; session changes reach it
//! through the ownership of the session.

pub mod apply;
pub mod approvals;
pub mod observe;
pub mod plan;
mod session;
pub mod status;

use std::sync::Arc;
use std::time::Instant;

use jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, PartialObjectMeta};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{WatchStreamExt, watcher};
use tether_crds::{AssistanceRequest, Device, RemoteSession};
use tracing::info;

use futures::StreamExt;

use super::Context;
use super::policies::PolicyChange;
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

    // Observe.
    let observed = observe::observe(&ctx, &request, &namespace, &name).await?;
    let now = Timestamp::now();
    // What approving takes is read fresh while the request waits for approvers, so a policy
    // stored just before the request holds it (the watch cache may not have it yet).
    let approval_rule = if awaiting_decision(&request) {
        let policies = ctx
            .policies
            .read(&ctx.client, &namespace)
            .await
            .map_err(|source| Error::Kube {
                what: format!("read the SessionPolicies of namespace {namespace}"),
                source,
            })?;
        Some(plan::approval_rule(&policies))
    } else {
        ctx.policies
            .applicable(&namespace)
            .map(|policies| plan::approval_rule(&policies))
    };

    // Plan.
    let mut plan = plan::plan(
        Observed {
            request: &request,
            session: observed.session.as_ref(),
            device_exists: observed.device_exists,
            now,
            approval_rule: approval_rule.as_ref(),
        },
        &ctx.settings.requests,
    );

    // Apply.
    if let SessionAction::Create {
        name: session_name,
        spec,
    } = &plan.session
        && let Err(refusal) = apply::create_session(&sessions, &request, session_name, spec).await?
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
    status::write(&requests, &request, &plan, &namespace, &name).await?;
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

    Ok(toolkit::finished(
        &ctx,
        CONTROLLER,
        started,
        plan.requeue_after,
    ))
}

/// Whether `request` waits for a decision (or has not been looked at yet): what a change to
/// its Device or to the policies can affect.
fn awaiting_decision(request: &AssistanceRequest) -> bool {
    request
        .status
        .as_ref()
        .and_then(|s| s.phase)
        .is_none_or(|p| p == tether_crds::assistance_request::RequestPhase::Pending)
}

/// Builds the controller: a request is reconciled when it changes, when a session it owns
/// changes, and when its Device appears or goes (whether it can be approved).
///
/// Requests are watched leniently: one that cannot be read is reported and left out, never
/// stopping the others. Sessions are watched by their metadata alone (ownership is all this
/// watch needs), so a session's spec can never stop it either.
///
/// Requests waiting for approvers are also looked at again when a SessionPolicy of their
/// namespace changes (`policy_changes`): what approving them takes may have changed.
pub fn build(
    client: kube::Client,
    scope: &Scope,
    policy_changes: impl futures::Stream<Item = PolicyChange> + Send + 'static,
) -> Controller<AssistanceRequest> {
    let (reader, requests) = toolkit::lenient_cache::<AssistanceRequest>(&client, scope);
    let sessions = watcher(
        scope.api::<PartialObjectMeta<RemoteSession>>(client.clone()),
        watcher::Config::default().labels(apply::REQUEST_LABEL),
    )
    .touched_objects();
    let devices = watcher(
        scope.api::<PartialObjectMeta<Device>>(client),
        watcher::Config::default(),
    )
    .touched_objects();
    let index = reader.clone();
    let pending = reader.clone();
    let policy_wakes = policy_changes.flat_map(move |change| {
        let namespace = match change {
            PolicyChange::Namespace(ns) => Some(ns),
            PolicyChange::Cluster | PolicyChange::Synced => None,
        };
        let waiting: Vec<ObjectRef<AssistanceRequest>> = pending
            .state()
            .into_iter()
            .filter(|r| namespace.is_none() || r.namespace() == namespace)
            .filter(|r| awaiting_decision(r))
            .map(|r| ObjectRef::from_obj(&*r))
            .collect();
        futures::stream::iter(waiting)
    });
    Controller::for_stream(requests, reader)
        .reconcile_on(policy_wakes)
        .owns_stream(sessions)
        .watches_stream(devices, move |device: PartialObjectMeta<Device>| {
            let namespace = device.namespace();
            let name = device.name_any();
            index
                .state()
                .into_iter()
                .filter(|r| r.namespace() == namespace && r.spec.device == name)
                .filter(|r| awaiting_decision(r))
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
