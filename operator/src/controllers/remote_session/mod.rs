//! The RemoteSession controller: observe → plan → status, requeued exactly at the session's
//! next time-window boundary.

pub mod plan;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::{self, reflector};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use tether_crds::remote_session::RemoteSession;
use tracing::{info, warn};

use super::Context;
use plan::{Observed, Plan};

/// Field manager for everything this controller writes.
pub const FIELD_MANAGER: &str = "tether-operator/remotesession";

/// Controller name in metrics and logs.
pub const CONTROLLER: &str = "remotesession";

/// A failed reconcile of a RemoteSession.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The object lacks a name or namespace (never true for objects from the API server).
    #[error("RemoteSession has no {0}")]
    Invalid(&'static str),
    /// Writing status failed.
    #[error("failed to write the status of RemoteSession {namespace}/{name}")]
    Status {
        /// Namespace of the session.
        namespace: String,
        /// Name of the session.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
}

impl Error {
    /// A stable, low-cardinality category for metrics.
    pub fn category(&self) -> &'static str {
        match self {
            Self::Invalid(_) => "invalid",
            Self::Status { .. } => "status",
        }
    }
}

/// Reconciles one RemoteSession.
pub async fn reconcile(session: Arc<RemoteSession>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let namespace = session.namespace().ok_or(Error::Invalid("namespace"))?;
    let name = session
        .metadata
        .name
        .clone()
        .ok_or(Error::Invalid("name"))?;

    // Observe.
    let now = Timestamp::now();

    // Plan.
    let plan = plan::plan(
        Observed {
            session: &session,
            now,
        },
        &ctx.settings.sessions,
    );

    // Status.
    let api: Api<RemoteSession> = Api::namespaced(ctx.client.clone(), &namespace);
    write_status(&api, &session, &plan, &namespace, &name).await?;
    if let Some(transition) = &plan.transition {
        if let Some(due) = transition.due {
            let late = now.duration_since(due).as_secs_f64().max(0.0);
            ctx.metrics
                .transition_lateness
                .with_label_values(&[transition.to.as_str()])
                .observe(late);
        }
        info!(
            session = %name, namespace = %namespace, phase = %transition.to,
            "Moved RemoteSession to a new phase"
        );
    }
    publish_events(&ctx, &session, &plan).await;

    ctx.metrics
        .reconcile_duration
        .with_label_values(&[CONTROLLER])
        .observe(started.elapsed().as_secs_f64());
    Ok(match plan.requeue_after {
        Some(after) => Action::requeue(after),
        None => Action::await_change(),
    })
}

async fn write_status(
    api: &Api<RemoteSession>,
    session: &RemoteSession,
    plan: &Plan,
    namespace: &str,
    name: &str,
) -> Result<(), Error> {
    if session.status.as_ref() == Some(&plan.status) {
        return Ok(());
    }
    let patch = serde_json::json!({
        "apiVersion": RemoteSession::api_version(&()),
        "kind": RemoteSession::kind(&()),
        "status": plan.status,
    });
    api.patch_status(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map(|_| ())
    .map_err(|source| Error::Status {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        source,
    })
}

/// Events are best effort: a failure is logged and never fails the reconcile.
async fn publish_events(ctx: &Context, session: &RemoteSession, plan: &Plan) {
    let reference = session.object_ref(&());
    for event in &plan.events {
        let result = ctx
            .recorder
            .publish(
                &Event {
                    type_: if event.warning {
                        EventType::Warning
                    } else {
                        EventType::Normal
                    },
                    reason: event.reason.to_owned(),
                    note: Some(event.note.clone()),
                    action: "Reconcile".into(),
                    secondary: None,
                },
                &reference,
            )
            .await;
        if let Err(e) = result {
            warn!(session = %session.name_any(), error = %e, "Failed to publish an Event for RemoteSession");
        }
    }
}

/// Backs off after an error and counts it.
pub fn error_policy(session: Arc<RemoteSession>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics
        .reconcile_errors
        .with_label_values(&[CONTROLLER, error.category()])
        .inc();
    warn!(session = %session.name_any(), error = %error, category = error.category(), "Failed to reconcile RemoteSession");
    Action::requeue(Duration::from_secs(5))
}

/// Builds the controller for RemoteSessions visible through `api`. `on_synced` runs each time
/// the cache has completed a full list, which is when the operator is ready.
///
/// Readiness is taken from the watch stream rather than `Store::wait_until_ready`: the store's
/// readiness future wakes only one waiter, and the controller itself is already waiting on it.
pub fn controller(
    api: Api<RemoteSession>,
    on_synced: impl Fn() + Send + Sync + 'static,
) -> Controller<RemoteSession> {
    let (reader, writer) = reflector::store();
    let stream = reflector(
        writer,
        watcher(api, watcher::Config::default().any_semantic()),
    )
    .inspect(move |event| {
        if matches!(event, Ok(watcher::Event::InitDone)) {
            on_synced();
        }
    })
    .applied_objects();
    Controller::for_stream(stream, reader)
}

/// Runs the controller until `shutdown` resolves.
pub async fn run(
    controller: Controller<RemoteSession>,
    ctx: Arc<Context>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    controller
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "RemoteSession reconcile did not complete");
            }
        })
        .await;
}
