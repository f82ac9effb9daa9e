//! The SessionPolicies the operator enforces itself (business hours, concurrency, approvers):
//! a cache of every SessionPolicy in scope and of the cluster-wide one, and which of them
//! apply to a namespace.
//!
//! Fails closed: until both caches have listed everything, [`PolicyCache::applicable`] says
//! nothing is known, and the sessions that depend on it wait. The watch is typed, so a policy
//! that cannot be decoded keeps the cache from syncing rather than being skipped.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use futures::channel::mpsc::UnboundedReceiver;
use futures::{Stream, StreamExt};
use kube::Client;
use kube::api::Api;
use kube::runtime::reflector::{self, Store, reflector};
use kube::runtime::{WatchStreamExt, watcher};
use tether_crds::session_policy::CLUSTER_POLICY;
use tether_crds::{SessionPolicy, SessionPolicySpec};

use super::toolkit::Scope;

/// The SessionPolicies in the operator's scope and the cluster-wide one.
#[derive(Clone)]
pub struct PolicyCache {
    scoped: Store<SessionPolicy>,
    cluster: Store<SessionPolicy>,
    synced: Arc<AtomicU8>,
    operator_namespace: String,
}

/// A change to a policy, for waking the objects it governs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PolicyChange {
    /// A namespace's policy changed: its objects may be affected.
    Namespace(String),
    /// The cluster-wide policy changed: every namespace may be affected.
    Cluster,
    /// Both caches have listed everything for the first time.
    Synced,
}

impl PolicyCache {
    /// The policies that apply in `namespace` — the cluster-wide one first, then the
    /// namespace's own by name — as (`namespace/name`, spec); `None` until the caches synced.
    pub fn applicable(&self, namespace: &str) -> Option<Vec<(String, SessionPolicySpec)>> {
        if self.synced.load(Ordering::Acquire) < 2 {
            return None;
        }
        let cluster = self.cluster.get(
            &kube::runtime::reflector::ObjectRef::new(CLUSTER_POLICY)
                .within(&self.operator_namespace),
        );
        let own = self.scoped.state();
        Some(
            self.assemble(
                cluster.as_deref(),
                own.iter()
                    .map(|p| &**p)
                    .filter(|p| p.metadata.namespace.as_deref() == Some(namespace)),
                namespace,
            ),
        )
    }

    /// The policies that apply in `namespace`, read from the API server rather than the
    /// caches: what decides whether a session may start must include a policy created a
    /// moment before the session, which the caches may not have yet.
    pub async fn read(
        &self,
        client: &Client,
        namespace: &str,
    ) -> Result<Vec<(String, SessionPolicySpec)>, kube::Error> {
        let own_api = Api::<SessionPolicy>::namespaced(client.clone(), namespace);
        let cluster_api =
            Api::<SessionPolicy>::namespaced(client.clone(), &self.operator_namespace);
        let everything = kube::api::ListParams::default();
        let (own, cluster) = tokio::try_join!(
            own_api.list(&everything),
            cluster_api.get_opt(CLUSTER_POLICY),
        )?;
        Ok(self.assemble(cluster.as_ref(), own.items.iter(), namespace))
    }

    /// The cluster-wide policy and the namespace's own, named and in order.
    fn assemble<'a>(
        &self,
        cluster: Option<&SessionPolicy>,
        own: impl Iterator<Item = &'a SessionPolicy>,
        namespace: &str,
    ) -> Vec<(String, SessionPolicySpec)> {
        let mut found: Vec<(String, SessionPolicySpec)> = cluster
            .map(|p| {
                (
                    format!("{}/{CLUSTER_POLICY}", self.operator_namespace),
                    p.spec.clone(),
                )
            })
            .into_iter()
            .collect();
        let mut mine: Vec<(String, SessionPolicySpec)> = own
            .filter_map(|p| {
                let name = p.metadata.name.as_deref()?;
                let cluster_one = namespace == self.operator_namespace && name == CLUSTER_POLICY;
                (!cluster_one).then(|| (format!("{namespace}/{name}"), p.spec.clone()))
            })
            .collect();
        mine.sort_by(|a, b| a.0.cmp(&b.0));
        found.extend(mine);
        found
    }

    /// Whether both caches have listed everything.
    pub fn synced(&self) -> bool {
        self.synced.load(Ordering::Acquire) >= 2
    }
}

/// Builds the cache, the stream that keeps it current, and a second receiver of the same
/// changes. The stream yields a [`PolicyChange`] for every change and must be polled (by a
/// controller); each change is also sent to the receiver, for another controller.
pub fn watch(
    client: Client,
    scope: &Scope,
    operator_namespace: &str,
) -> (
    PolicyCache,
    impl Stream<Item = PolicyChange> + Send + 'static,
    UnboundedReceiver<PolicyChange>,
) {
    let synced = Arc::new(AtomicU8::new(0));
    let (scoped, scoped_writer) = reflector::store::<SessionPolicy>();
    let (cluster, cluster_writer) = reflector::store::<SessionPolicy>();
    let operator_ns = operator_namespace.to_owned();
    let changes = |synced: Arc<AtomicU8>, operator_ns: String| {
        move |event: Result<watcher::Event<SessionPolicy>, watcher::Error>| {
            let synced = synced.clone();
            let operator_ns = operator_ns.clone();
            async move {
                match event {
                    // Both lists done: everything waiting may go on. A later re-list (after
                    // a watch broke) may have missed deletions: look at everything again.
                    Ok(watcher::Event::InitDone) => match synced.fetch_add(1, Ordering::AcqRel) {
                        0 => None,
                        1 => Some(PolicyChange::Synced),
                        _ => Some(PolicyChange::Cluster),
                    },
                    Ok(watcher::Event::Apply(p) | watcher::Event::Delete(p)) => {
                        let ns = p.metadata.namespace.clone().unwrap_or_default();
                        Some(
                            if ns == operator_ns
                                && p.metadata.name.as_deref() == Some(CLUSTER_POLICY)
                            {
                                PolicyChange::Cluster
                            } else {
                                PolicyChange::Namespace(ns)
                            },
                        )
                    }
                    Ok(_) => None,
                    Err(err) => {
                        tracing::warn!(error = %err, "Failed to watch SessionPolicies");
                        None
                    }
                }
            }
        }
    };
    let scoped_stream = reflector(
        scoped_writer,
        watcher(
            scope.api::<SessionPolicy>(client.clone()),
            watcher::Config::default(),
        )
        .default_backoff(),
    )
    .filter_map(changes(synced.clone(), operator_ns.clone()));
    let cluster_stream = reflector(
        cluster_writer,
        watcher(
            Api::<SessionPolicy>::namespaced(client, operator_namespace),
            watcher::Config::default().fields(&format!("metadata.name={CLUSTER_POLICY}")),
        )
        .default_backoff(),
    )
    .filter_map(changes(synced.clone(), operator_ns.clone()));
    let cache = PolicyCache {
        scoped,
        cluster,
        synced,
        operator_namespace: operator_ns,
    };
    let (copy, copies) = futures::channel::mpsc::unbounded();
    let changes = futures::stream::select(scoped_stream, cluster_stream).inspect(move |change| {
        // The receiver lives as long as the controller that polls it.
        let _ = copy.unbounded_send(change.clone());
    });
    (cache, changes, copies)
}
