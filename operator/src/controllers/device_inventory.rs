//! Device inventory: keeps what a device's agent last reported (hostname, OS, agent version)
//! after the device goes offline, and says since when it is offline.
//!
//! The relay writes a Device's presence by server-side apply, sending the agent's report only
//! while it is connected; on its own, server-side apply would drop the fields the relay stops
//! sending, and the inventory would go blank at every disconnection. The operator therefore
//! co-owns the reported values under its own field manager, applying exactly the values the
//! relay wrote (never forcing, so a stale copy can never overwrite a newer report: the API
//! server refuses it as a conflict and the next watch event brings the new value). Fields with
//! two managers survive one of them stopping to send them. The operator alone keeps
//! `status.offlineSince`: the relay's `lastSeen` while the device is `Offline`, nothing while
//! it is `Online` (`lastSeen` is not refreshed while connected, so it is no age then).

use std::sync::Arc;

use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{self, reflector};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use tether_crds::device::{Device, Presence};
use tracing::debug;

use super::Context;
use super::remote_session::{Scope, lenient};
use super::toolkit::{self, ReconcileError, Retry};

/// Controller name in metrics and logs.
pub const CONTROLLER: &str = "deviceinventory";

/// Field manager of the operator's share of a Device's status.
pub const FIELD_MANAGER: &str = "tether-operator/device-inventory";

/// The reported fields the operator co-owns, as named in the API.
const KEPT: [&str; 3] = ["hostname", "os", "agentVersion"];

/// A failed reconcile of a Device's inventory.
#[derive(Debug, thiserror::Error)]
pub enum Error {
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

/// The status fields the operator should own on `device`, or `None` when it already owns
/// exactly those (nothing to write). `owned` lists the status fields (API names) the
/// operator's field manager owns now.
pub fn plan(device: &Device, owned: &[String]) -> Option<serde_json::Value> {
    let status = device.status.as_ref()?;
    let mut desired = serde_json::Map::new();
    let reported = [
        ("hostname", status.hostname.as_ref()),
        ("os", status.os.as_ref()),
        ("agentVersion", status.agent_version.as_ref()),
    ];
    for (field, value) in reported {
        if let Some(value) = value.filter(|v| !v.is_empty()) {
            desired.insert(field.to_owned(), value.clone().into());
        }
    }
    let offline = status.presence == Some(Presence::Offline);
    let offline_since = if offline {
        // The first time it is seen offline: the relay's record of the disconnection.
        status
            .offline_since
            .clone()
            .or_else(|| status.last_seen.clone())
    } else {
        None
    };
    if let Some(since) = &offline_since {
        desired.insert("offlineSince".to_owned(), serde_json::json!(since));
    }
    let mut want: Vec<&str> = desired.keys().map(String::as_str).collect();
    want.sort_unstable();
    let mut have: Vec<&str> = owned.iter().map(String::as_str).collect();
    have.sort_unstable();
    let offline_since_matches = offline_since.as_ref() == status.offline_since.as_ref();
    if want == have && offline_since_matches {
        return None;
    }
    Some(serde_json::Value::Object(desired))
}

/// The status fields `manager` owns on `device` (its `status` subresource entry).
pub fn owned_fields(device: &Device, manager: &str) -> Vec<String> {
    let Some(entries) = device.metadata.managed_fields.as_ref() else {
        return Vec::new();
    };
    let mut fields = Vec::new();
    for entry in entries
        .iter()
        .filter(|e| e.manager.as_deref() == Some(manager))
    {
        let Some(status) = entry
            .fields_v1
            .as_ref()
            .and_then(|f| f.0.get("f:status"))
            .and_then(|s| s.as_object())
        else {
            continue;
        };
        for key in status.keys() {
            if let Some(field) = key.strip_prefix("f:")
                && (KEPT.contains(&field) || field == "offlineSince")
            {
                fields.push(field.to_owned());
            }
        }
    }
    fields
}

/// Reconciles one Device's inventory.
pub async fn reconcile(device: Arc<Device>, ctx: Arc<Context>) -> Result<Action, Error> {
    let owned = owned_fields(&device, FIELD_MANAGER);
    let Some(desired) = plan(&device, &owned) else {
        return Ok(Action::await_change());
    };
    let namespace = device.namespace().unwrap_or_default();
    let name = device.name_any();
    let api: Api<Device> = Api::namespaced(ctx.client.clone(), &namespace);
    let patch = serde_json::json!({
        "apiVersion": Device::api_version(&()),
        "kind": Device::kind(&()),
        "status": desired,
    });
    match api
        .patch_status(
            &name,
            &PatchParams::apply(FIELD_MANAGER),
            &Patch::Apply(&patch),
        )
        .await
    {
        Ok(_) => Ok(Action::await_change()),
        // A newer report than the one planned from (or a deleted Device): the watch brings it.
        Err(kube::Error::Api(e)) if matches!(e.code, 404 | 409) => {
            debug!(device = %name, %namespace, code = e.code, "Skipped a stale Device inventory update");
            Ok(Action::await_change())
        }
        Err(source) => Err(Error::Kube {
            what: format!("keep the inventory of Device {namespace}/{name}"),
            source,
        }),
    }
}

impl ReconcileError for Error {
    fn category(&self) -> &'static str {
        "kube"
    }

    fn retry(&self) -> Retry {
        Retry::Soon
    }
}

/// Runs the inventory controller until `shutdown` resolves. Devices are watched leniently: one
/// that cannot be read is left out (the RemoteSession controller's watch reports it).
pub async fn run(
    client: kube::Client,
    scope: Scope,
    ctx: Arc<Context>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let (reader, writer) = reflector::store::<Device>();
    let devices = reflector(
        writer,
        lenient::watch(
            lenient::dynamic_api::<Device>(client, scope.namespace()),
            watcher::Config::default().any_semantic(),
            lenient::Reports::quiet(),
            Some(reader.clone()),
        ),
    )
    .applied_objects();
    let controller = Controller::for_stream(devices, reader);
    toolkit::run(CONTROLLER, controller, reconcile, ctx, shutdown).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use tether_crds::device::{DeviceSpec, DeviceStatus};

    fn device(status: DeviceStatus) -> Device {
        let mut d = Device::new("laptop", DeviceSpec::default());
        d.status = Some(status);
        d
    }

    fn t(s: &str) -> Time {
        Time(s.parse().unwrap())
    }

    fn online() -> DeviceStatus {
        DeviceStatus {
            presence: Some(Presence::Online),
            last_seen: Some(t("2026-01-01T09:00:00Z")),
            hostname: Some("reception".into()),
            os: Some("Linux 6.8".into()),
            agent_version: Some("0.1.0".into()),
            ..Default::default()
        }
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn the_operator_co_owns_what_the_agent_reported() {
        let d = device(online());
        let patch = plan(&d, &[]).unwrap();
        assert_eq!(
            patch,
            serde_json::json!({"hostname": "reception", "os": "Linux 6.8", "agentVersion": "0.1.0"})
        );
        // Online: no offlineSince, and nothing more to do once owned.
        assert_eq!(
            plan(&d, &strings(&["hostname", "os", "agentVersion"])),
            None
        );
        // A field the relay took back (a new report) is owned again.
        assert!(plan(&d, &strings(&["hostname", "os"])).is_some());
    }

    #[test]
    fn offline_keeps_the_last_report_and_says_since_when() {
        // The relay wrote Offline without the report; the operator's share kept the values.
        let mut status = online();
        status.presence = Some(Presence::Offline);
        status.last_seen = Some(t("2026-01-01T10:00:00Z"));
        let d = device(status.clone());
        let owned = strings(&["hostname", "os", "agentVersion"]);
        let patch = plan(&d, &owned).unwrap();
        assert_eq!(patch["offlineSince"], "2026-01-01T10:00:00Z");
        assert_eq!(patch["hostname"], "reception");
        // Recorded once: a later lastSeen does not move it.
        status.offline_since = Some(t("2026-01-01T10:00:00Z"));
        status.last_seen = Some(t("2026-01-01T10:05:00Z"));
        let owned = strings(&["hostname", "os", "agentVersion", "offlineSince"]);
        assert_eq!(plan(&device(status.clone()), &owned), None);
        // Back online: offlineSince goes (the operator stops sending it).
        status.presence = Some(Presence::Online);
        let patch = plan(&device(status), &owned).unwrap();
        assert!(patch.get("offlineSince").is_none(), "{patch}");
    }

    #[test]
    fn a_device_without_a_report_needs_nothing() {
        assert_eq!(plan(&Device::new("new", DeviceSpec::default()), &[]), None);
        assert_eq!(plan(&device(DeviceStatus::default()), &[]), None);
    }

    #[test]
    fn owned_fields_are_read_from_managed_fields() {
        let mut d = device(online());
        d.metadata.managed_fields = Some(
            serde_json::from_value(serde_json::json!([
                {"manager": FIELD_MANAGER, "operation": "Apply", "subresource": "status",
                 "fieldsType": "FieldsV1",
                 "fieldsV1": {"f:status": {"f:hostname": {}, "f:offlineSince": {}}}},
                {"manager": "tether-relay", "operation": "Apply", "subresource": "status",
                 "fieldsType": "FieldsV1",
                 "fieldsV1": {"f:status": {"f:os": {}, "f:presence": {}}}},
            ]))
            .unwrap(),
        );
        let mut owned = owned_fields(&d, FIELD_MANAGER);
        owned.sort();
        assert_eq!(owned, strings(&["hostname", "offlineSince"]));
    }
}
