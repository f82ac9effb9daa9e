//! Watches that survive objects the operator cannot read.
//!
//! A typed watch fails its whole list on the first object that does not decode, and retries
//! forever: the cache never fills, the operator never becomes ready and no session anywhere is
//! expired. These watches list and watch dynamic objects and decode each one: a bad object is
//! reported once per version (a log line and a Warning Event naming it) and left out, and
//! everything else goes on.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};

use futures::{Stream, StreamExt, future};
use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{Api, DynamicObject};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Client, Resource};
use serde::de::DeserializeOwned;
use tether_crds::decode::{Undecodable, api_resource, decode};
use tracing::{debug, warn};

/// Event reason for an object the operator cannot read.
pub const UNREADABLE: &str = "Unreadable";

/// Longest part of a decoding error put in an Event (notes are limited to 1 KiB).
const ERROR_IN_EVENT: usize = 400;

/// Reports objects that cannot be read, once per object version.
pub struct Reports {
    recorder: Option<Recorder>,
    seen: Mutex<HashMap<String, Option<String>>>,
}

impl Reports {
    /// Reports by a log line and a Warning Event on the object.
    pub fn new(client: Client) -> Arc<Self> {
        Arc::new(Self {
            recorder: Some(Recorder::new(
                client,
                Reporter {
                    controller: "tether-operator".into(),
                    instance: std::env::var("POD_NAME").ok(),
                },
            )),
            seen: Mutex::new(HashMap::new()),
        })
    }

    /// Reports by a debug log line only: for a second watch of objects another watch reports.
    pub fn quiet() -> Arc<Self> {
        Arc::new(Self {
            recorder: None,
            seen: Mutex::new(HashMap::new()),
        })
    }

    /// Whether this version of the object is reported for the first time.
    fn first_time(&self, bad: &Undecodable) -> bool {
        let key = format!(
            "{}/{}/{}",
            bad.kind,
            bad.namespace.as_deref().unwrap_or(""),
            bad.name
        );
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.insert(key, bad.resource_version.clone()) != Some(bad.resource_version.clone())
    }

    /// Forgets an object (it was deleted or became readable), so a later bad version is
    /// reported again.
    fn forget(&self, kind: &str, namespace: Option<&str>, name: &str) {
        let key = format!("{kind}/{}/{name}", namespace.unwrap_or(""));
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key);
    }

    /// Logs and publishes that `bad` is left out.
    async fn report(&self, bad: &Undecodable, api_version: &str) {
        if !self.first_time(bad) {
            return;
        }
        let error = tether_proto::text::escape_short(&bad.error, ERROR_IN_EVENT);
        let Some(recorder) = &self.recorder else {
            debug!(kind = %bad.kind, namespace = ?bad.namespace, name = %bad.name, %error, "Skipped an object that cannot be read");
            return;
        };
        warn!(
            kind = %bad.kind, namespace = ?bad.namespace, name = %bad.name, %error,
            "Skipped an object that cannot be read; it is ignored until it is fixed or deleted"
        );
        let reference = ObjectReference {
            api_version: Some(api_version.to_owned()),
            kind: Some(bad.kind.clone()),
            name: Some(bad.name.clone()),
            namespace: bad.namespace.clone(),
            uid: bad.uid.clone(),
            ..Default::default()
        };
        let event = Event {
            type_: EventType::Warning,
            reason: UNREADABLE.into(),
            note: Some(format!(
                "tether-operator cannot read this {}, so it ignores it until it is fixed or deleted: {error}",
                bad.kind
            )),
            action: "Read".into(),
            secondary: None,
        };
        if let Err(e) = recorder.publish(&event, &reference).await {
            warn!(kind = %bad.kind, name = %bad.name, error = %e, "Failed to publish an Event about an unreadable object");
        }
    }
}

/// Watches `K` in `api`'s scope as dynamic objects, decoding each: objects that do not decode
/// are reported and left out. When one that was readable turns unreadable, `store`'s copy is
/// removed (a `Delete` event), so nothing acts on a spec that is no longer there.
pub fn watch<K>(
    api: Api<DynamicObject>,
    config: watcher::Config,
    reports: Arc<Reports>,
    store: Option<Store<K>>,
) -> impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send
where
    K: Resource<DynamicType = ()> + DeserializeOwned + Clone + Debug + Send + Sync + 'static,
{
    watcher(api, config)
        .then(move |event| {
            let reports = reports.clone();
            let store = store.clone();
            async move {
                match event {
                    Ok(event) => convert(event, &reports, store.as_ref()).await.map(Ok),
                    Err(e) => Some(Err(e)),
                }
            }
        })
        .filter_map(future::ready)
}

/// The dynamic API of `K` in one namespace or all of them.
pub fn dynamic_api<K: Resource<DynamicType = ()>>(
    client: Client,
    namespace: Option<&str>,
) -> Api<DynamicObject> {
    let resource = api_resource::<K>();
    match namespace {
        Some(ns) => Api::namespaced_with(client, ns, &resource),
        None => Api::all_with(client, &resource),
    }
}

async fn convert<K>(
    event: watcher::Event<DynamicObject>,
    reports: &Reports,
    store: Option<&Store<K>>,
) -> Option<watcher::Event<K>>
where
    K: Resource<DynamicType = ()> + DeserializeOwned + Clone,
{
    let api_version = K::api_version(&()).into_owned();
    let kind = K::kind(&()).into_owned();
    match event {
        watcher::Event::Init => Some(watcher::Event::Init),
        watcher::Event::InitDone => Some(watcher::Event::InitDone),
        watcher::Event::Apply(object) => match decode::<K>(object) {
            Ok(k) => {
                reports.forget(&kind, k.meta().namespace.as_deref(), &name_of(&k));
                Some(watcher::Event::Apply(k))
            }
            Err(bad) => {
                reports.report(&bad, &api_version).await;
                // Drop the last readable version, if the cache holds one.
                let cached = store.and_then(|s| {
                    let mut key = ObjectRef::<K>::new(&bad.name);
                    if let Some(ns) = &bad.namespace {
                        key = key.within(ns);
                    }
                    s.get(&key)
                });
                cached.map(|k| watcher::Event::Delete((*k).clone()))
            }
        },
        watcher::Event::InitApply(object) => match decode::<K>(object) {
            Ok(k) => Some(watcher::Event::InitApply(k)),
            Err(bad) => {
                // Left out of the new list, so it is dropped from the cache at InitDone.
                reports.report(&bad, &api_version).await;
                None
            }
        },
        watcher::Event::Delete(object) => {
            let namespace = object.metadata.namespace.clone();
            let name = object.metadata.name.clone().unwrap_or_default();
            reports.forget(&kind, namespace.as_deref(), &name);
            match decode::<K>(object) {
                Ok(k) => Some(watcher::Event::Delete(k)),
                // Unreadable when deleted: remove what the cache holds under its name.
                Err(_) => store
                    .and_then(|s| {
                        let mut key = ObjectRef::<K>::new(&name);
                        if let Some(ns) = &namespace {
                            key = key.within(ns);
                        }
                        s.get(&key)
                    })
                    .map(|k| watcher::Event::Delete((*k).clone())),
            }
        }
    }
}

fn name_of<K: Resource>(k: &K) -> String {
    k.meta().name.clone().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tether_crds::RemoteSession;

    fn object(name: &str, start: &str, rv: &str) -> DynamicObject {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "tether.dev/v1alpha1",
            "kind": "RemoteSession",
            "metadata": {"name": name, "namespace": "team", "resourceVersion": rv},
            "spec": {"device": "d", "duration": "30m", "startTime": start},
        }))
        .unwrap()
    }

    #[tokio::test]
    async fn a_bad_object_is_left_out_of_a_list_and_reported_once_per_version() {
        let reports = Reports::quiet();
        let good = convert::<RemoteSession>(
            watcher::Event::InitApply(object("good", "2030-01-01T10:00:00Z", "1")),
            &reports,
            None,
        )
        .await;
        assert!(
            matches!(good, Some(watcher::Event::InitApply(s)) if s.metadata.name.as_deref() == Some("good"))
        );
        let bad_object = || object("bad", "2030-01-01T10:00:00.1234567890Z", "2");
        let bad =
            convert::<RemoteSession>(watcher::Event::InitApply(bad_object()), &reports, None).await;
        assert!(bad.is_none());
        let undecodable = decode::<RemoteSession>(bad_object()).unwrap_err();
        assert!(!reports.first_time(&undecodable), "reported once");
        // The list still completes.
        let done = convert::<RemoteSession>(watcher::Event::InitDone, &reports, None).await;
        assert!(matches!(done, Some(watcher::Event::InitDone)));
        // A new version is reported again.
        let mut next = undecodable.clone();
        next.resource_version = Some("3".into());
        assert!(reports.first_time(&next));
    }
}
