//! What every controller of the operator shares: where it looks ([`Scope`]), the Events a
//! plan asks for and their publishing, error categories, and one run loop with one error
//! policy, under which an object that cannot be reconciled as it is waits for a change
//! instead of being retried every few seconds.

use std::fmt::Debug;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryFuture};
use kube::api::Api;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tracing::warn;

use super::Context;

/// How soon a reconcile that failed for a reason that may pass (an API error, a credential
/// store that did not answer) is tried again.
pub const RETRY_AFTER: Duration = Duration::from_secs(5);

/// Where a controller looks: one namespace or all of them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Every namespace.
    Cluster,
    /// One namespace.
    Namespace(String),
}

impl Scope {
    /// The namespace watched, or `None` for every namespace.
    pub fn namespace(&self) -> Option<&str> {
        match self {
            Self::Cluster => None,
            Self::Namespace(ns) => Some(ns),
        }
    }

    /// Whether an object in `namespace` (`None`: cluster-scoped) is in this scope.
    pub fn covers(&self, namespace: Option<&str>) -> bool {
        match self {
            Self::Cluster => true,
            Self::Namespace(ns) => namespace == Some(ns.as_str()),
        }
    }

    /// An Api for `K` in this scope.
    pub fn api<K>(&self, client: Client) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as Resource>::DynamicType: Default,
    {
        match self {
            Self::Cluster => Api::all(client),
            Self::Namespace(ns) => Api::namespaced(client, ns),
        }
    }
}

/// An Event a plan asks to publish about the object it planned for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedEvent {
    /// Whether it is a `Warning` (else `Normal`).
    pub warning: bool,
    /// CamelCase reason.
    pub reason: &'static str,
    /// Human-readable note.
    pub note: String,
}

impl PlannedEvent {
    /// The Event as the recorder publishes it.
    pub fn to_event(&self) -> Event {
        Event {
            type_: if self.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: self.reason.to_owned(),
            note: Some(self.note.clone()),
            action: "Reconcile".into(),
            secondary: None,
        }
    }
}

/// Publishes `events` about `object` with the operator's one recorder. A failure to publish
/// is logged and never fails the reconcile: Events are for people, status is the record.
pub async fn publish_events<K>(ctx: &Context, object: &K, events: &[PlannedEvent])
where
    K: Resource<DynamicType = ()>,
{
    let reference = object.object_ref(&());
    for event in events {
        if let Err(e) = ctx.recorder.publish(&event.to_event(), &reference).await {
            warn!(
                kind = %K::kind(&()),
                name = %object.name_any(),
                error = %e,
                "Failed to publish an Event"
            );
        }
    }
}

/// What a controller's error says about trying again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retry {
    /// It may pass by itself: try again soon.
    Soon,
    /// The object cannot be reconciled as it is: wait until it (or what it is watched
    /// with) changes.
    OnChange,
}

/// A reconcile error with a stable category, for metrics labels and Event reasons.
pub trait ReconcileError: std::error::Error + Send + 'static {
    /// A stable, low-cardinality category (`kube`, `invalid`, …).
    fn category(&self) -> &'static str;

    /// Whether to try again soon or wait for a change.
    fn retry(&self) -> Retry;
}

/// The action after a failed reconcile: retried after [`RETRY_AFTER`], or, for an object
/// that cannot be reconciled as it is, only when it changes.
pub fn action_after(error: &impl ReconcileError) -> Action {
    match error.retry() {
        Retry::Soon => Action::requeue(RETRY_AFTER),
        Retry::OnChange => Action::await_change(),
    }
}

/// The error policy of every controller: counts the error by controller and category, logs
/// it with its causes, and decides when to look again ([`action_after`]).
pub fn error_policy<K, E>(controller: &'static str, object: &K, error: &E, ctx: &Context) -> Action
where
    K: Resource<DynamicType = ()>,
    E: ReconcileError,
{
    ctx.metrics
        .reconcile_errors
        .with_label_values(&[controller, error.category()])
        .inc();
    let kind = K::kind(&());
    warn!(
        name = %object.name_any(),
        namespace = object.namespace().as_deref().unwrap_or_default(),
        error = %crate::error_chain(error),
        category = error.category(),
        "Failed to reconcile {kind}"
    );
    action_after(error)
}

/// Runs `controller` with `reconcile` and the shared [`error_policy`] until `shutdown`
/// resolves (reconciles in flight finish first).
pub async fn run<K, R, F>(
    name: &'static str,
    controller: Controller<K>,
    reconcile: R,
    ctx: Arc<Context>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) where
    K: Clone + Resource<DynamicType = ()> + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Eq + Hash + Clone + Debug + Unpin,
    R: FnMut(Arc<K>, Arc<Context>) -> F,
    F: TryFuture<Ok = Action> + Send + 'static,
    F::Error: ReconcileError,
{
    let kind = K::kind(&());
    controller
        .graceful_shutdown_on(shutdown)
        .run(
            reconcile,
            move |object, error, ctx| error_policy(name, &*object, error, &ctx),
            ctx,
        )
        .for_each(|result| {
            let kind = kind.clone();
            async move {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "{kind} reconcile did not complete");
                }
            }
        })
        .await;
}

/// The end of a reconcile: its duration observed under `controller`, and the action for a
/// plan that wants to look again after `requeue_after` (or only on a change).
pub fn finished(
    ctx: &Context,
    controller: &'static str,
    started: std::time::Instant,
    requeue_after: Option<Duration>,
) -> Action {
    ctx.metrics
        .reconcile_duration
        .with_label_values(&[controller])
        .observe(started.elapsed().as_secs_f64());
    match requeue_after {
        Some(after) => Action::requeue(after),
        None => Action::await_change(),
    }
}

/// A controller's own kind `K`, watched leniently ([`super::remote_session::lenient`]: an
/// object that cannot be read is reported and left out) into the cache the controller reads.
pub fn lenient_cache<K>(
    client: &Client,
    scope: &Scope,
) -> (
    kube::runtime::reflector::Store<K>,
    impl futures::Stream<Item = Result<K, kube::runtime::watcher::Error>> + Send + use<K>,
)
where
    K: Resource<DynamicType = ()> + DeserializeOwned + Clone + Debug + Send + Sync + 'static,
{
    use super::remote_session::lenient;
    use kube::runtime::{WatchStreamExt, reflector, watcher};
    let (reader, writer) = reflector::store::<K>();
    let stream = reflector(
        writer,
        lenient::watch(
            lenient::dynamic_api::<K>(client.clone(), scope.namespace()),
            watcher::Config::default().any_semantic(),
            lenient::Reports::new(client.clone()),
            Some(reader.clone()),
        ),
    )
    .applied_objects();
    (reader, stream)
}

/// Writes `status` to `K` `name` by server-side apply as `field_manager`, taking the fields
/// from any other manager that held them.
pub async fn apply_status<K>(
    api: &Api<K>,
    name: &str,
    status: &impl serde::Serialize,
    field_manager: &str,
) -> Result<(), kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
{
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    api.patch_status(
        name,
        &kube::api::PatchParams::apply(field_manager).force(),
        &kube::api::Patch::Apply(&patch),
    )
    .await
    .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("failed")]
    struct Failed(Retry);

    impl ReconcileError for Failed {
        fn category(&self) -> &'static str {
            "test"
        }
        fn retry(&self) -> Retry {
            self.0
        }
    }

    #[test]
    fn an_object_that_cannot_be_reconciled_waits_for_a_change() {
        assert_eq!(
            action_after(&Failed(Retry::OnChange)),
            Action::await_change()
        );
        assert_eq!(
            action_after(&Failed(Retry::Soon)),
            Action::requeue(RETRY_AFTER)
        );
    }

    #[test]
    fn scope_covers_its_namespace_only() {
        let ns = Scope::Namespace("helpdesk".into());
        assert!(ns.covers(Some("helpdesk")));
        assert!(!ns.covers(Some("other")));
        assert!(!ns.covers(None));
        assert!(Scope::Cluster.covers(Some("other")));
        assert!(Scope::Cluster.covers(None));
        assert_eq!(ns.namespace(), Some("helpdesk"));
        assert_eq!(Scope::Cluster.namespace(), None);
    }

    #[test]
    fn planned_events_keep_their_type_and_reason() {
        let event = PlannedEvent {
            warning: true,
            reason: "Failed",
            note: "it broke".into(),
        }
        .to_event();
        assert_eq!(event.type_, EventType::Warning);
        assert_eq!(event.reason, "Failed");
        assert_eq!(event.note.as_deref(), Some("it broke"));
    }
}
