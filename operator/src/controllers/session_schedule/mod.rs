//! The SessionSchedule controller, the same pipeline as the other kinds': observe (the
//! schedule's sessions, read fresh) → plan (pure, virtual-time tested) → apply (create the
//! run's session, terminate replaced ones, delete those beyond the history limits) → status
//! (server-side apply) and Events. Requeued exactly at the next run; session changes reach it
//! through the sessions' owner references.

pub mod apply;
pub mod cron;
pub mod observe;
pub mod plan;

use std::sync::Arc;
use std::time::Instant;

use jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, PartialObjectMeta};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::{WatchStreamExt, watcher};
use tether_crds::RemoteSession;
use tether_crds::session_schedule::{SCHEDULE_LABEL, SessionSchedule};
use tokio::sync::OnceCell;
use tracing::info;

use super::Context;
use super::toolkit::{self, ReconcileError, Retry, Scope};
use plan::Observed;

/// Controller name in metrics and logs.
pub const CONTROLLER: &str = "sessionschedule";

/// Field manager for the schedule's status and the sessions it creates.
pub const FIELD_MANAGER: &str = "tether-operator/sessionschedule";

/// A failed reconcile of a SessionSchedule.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The object is not usable.
    #[error("invalid SessionSchedule: {0}")]
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
    /// The API server did not say who the operator is (needed to terminate a session).
    #[error("the API server did not say who the operator is")]
    Unidentified,
}

impl ReconcileError for Error {
    fn category(&self) -> &'static str {
        match self {
            Self::Invalid(_) => "invalid",
            Self::Kube { .. } => "kube",
            Self::Unidentified => "identity",
        }
    }

    /// An invalid schedule waits for a change; an API error is tried again soon.
    fn retry(&self) -> Retry {
        match self {
            Self::Invalid(_) => Retry::OnChange,
            Self::Kube { .. } | Self::Unidentified => Retry::Soon,
        }
    }
}

/// The operator's own user name, as the API server knows it: a replaced session's
/// termination names it, and the admission policy checks that it is the caller.
pub type Identity = Arc<OnceCell<String>>;

/// Reconciles one SessionSchedule.
pub async fn reconcile(
    schedule: Arc<SessionSchedule>,
    ctx: Arc<Context>,
    identity: Identity,
) -> Result<Action, Error> {
    let started = Instant::now();
    let namespace = schedule
        .namespace()
        .ok_or_else(|| Error::Invalid("no namespace".into()))?;
    let name = schedule.name_any();
    if schedule.metadata.deletion_timestamp.is_some() {
        // Its sessions go with it (garbage collection of owned objects).
        return Ok(Action::await_change());
    }
    let schedules: Api<SessionSchedule> = Api::namespaced(ctx.client.clone(), &namespace);
    let sessions: Api<RemoteSession> = Api::namespaced(ctx.client.clone(), &namespace);

    // Observe.
    let owned = observe::sessions(&ctx, &schedule, &namespace, &name).await?;
    let now = Timestamp::now();

    // Plan.
    let mut plan = plan::plan(Observed {
        schedule: &schedule,
        sessions: &owned,
        now,
    });

    // Apply: the replaced sessions end before their successor is created.
    if !plan.terminate.is_empty() {
        let user = identity
            .get_or_try_init(|| apply::whoami(&ctx.client))
            .await?;
        for (old, reason) in &plan.terminate {
            apply::terminate(&sessions, &namespace, old, user, reason).await?;
            info!(session = %old, schedule = %name, namespace = %namespace, "Terminated a RemoteSession replaced by its SessionSchedule's next run");
        }
    }
    if let Some(new) = &plan.create {
        match apply::create_session(&sessions, &schedule, new).await? {
            Ok(()) => {
                info!(session = %new.name, schedule = %name, namespace = %namespace, run = %new.run, "Created RemoteSession for a SessionSchedule run");
                plan.events.push(plan::PlannedEvent {
                    warning: false,
                    reason: "SessionCreated",
                    note: format!(
                        "Created RemoteSession {} for the run at {}",
                        new.name, new.run
                    ),
                });
            }
            Err(refusal) => {
                // The cluster refused the session (a policy, the cluster maximum): this run
                // is skipped, the next one tries again.
                plan::refused(&mut plan.status, &new.name, &refusal, now);
                plan.events.push(plan::PlannedEvent {
                    warning: true,
                    reason: plan::SESSION_REFUSED,
                    note: format!(
                        "The cluster refused RemoteSession {} for the run at {}: {refusal}",
                        new.name, new.run
                    ),
                });
            }
        }
    }
    for old in &plan.delete {
        apply::delete_session(&sessions, &namespace, old).await?;
        info!(session = %old, schedule = %name, namespace = %namespace, "Deleted a RemoteSession beyond its SessionSchedule's history limits");
    }

    // Status.
    apply::write_status(&schedules, &schedule, &plan.status, &namespace, &name).await?;
    toolkit::publish_events(&ctx, &*schedule, &plan.events).await;

    Ok(toolkit::finished(
        &ctx,
        CONTROLLER,
        started,
        plan.requeue_after,
    ))
}

/// Builds the controller: a schedule is reconciled when it changes, when a session it owns
/// changes (a session ending frees a `Forbid` schedule and moves the history), and at its
/// next run.
///
/// Schedules are watched leniently: one that cannot be read is reported and left out.
/// Sessions are watched by their metadata alone, as ownership is all this watch needs.
pub fn build(client: kube::Client, scope: &Scope) -> Controller<SessionSchedule> {
    let (reader, schedules) = toolkit::lenient_cache::<SessionSchedule>(&client, scope);
    let sessions = watcher(
        scope.api::<PartialObjectMeta<RemoteSession>>(client),
        watcher::Config::default().labels(SCHEDULE_LABEL),
    )
    .touched_objects();
    Controller::for_stream(schedules, reader).owns_stream(sessions)
}

/// Runs the controller until `shutdown` resolves.
pub async fn run(
    controller: Controller<SessionSchedule>,
    ctx: Arc<Context>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let identity = Identity::default();
    toolkit::run(
        CONTROLLER,
        controller,
        move |schedule, ctx| reconcile(schedule, ctx, identity.clone()),
        ctx,
        shutdown,
    )
    .await;
}
