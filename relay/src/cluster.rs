//! What the relay writes to the cluster: Device presence (online/offline, last seen, what the
//! agent reports), the session conditions only the relay can know (`Consented`, `Ended`), and
//! enrollments (a CertificateSigningRequest carrying a digest of the presented bootstrap
//! token, which the operator checks, then approves and signs or denies). The relay never
//! reads the bootstrap token itself.
//! Everything by server-side apply with the field manager `tether-relay`, so the relay owns
//! exactly its fields.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestSpec,
};
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use tether_proto::message::AgentInfo;

/// Field manager for everything the relay writes.
pub const FIELD_MANAGER: &str = "tether-relay";

/// Field manager of `status.recording`.
pub const RECORDING_FIELD_MANAGER: &str = "tether-relay/recording";

/// Signer name of agent client certificates, signed by the operator.
pub const AGENT_SIGNER: &str = tether_crds::contract::signers::AGENT;

/// What the operator decided about an agent certificate request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enrollment {
    /// Approved and signed: the certificate, PEM.
    Signed(String),
    /// Denied (or failed), with the operator's reason and message.
    Denied {
        /// Machine-readable reason, e.g. `AlreadyEnrolled` or `BadBootstrapToken`.
        reason: String,
        /// The operator's sentence.
        message: String,
    },
}

/// A failed cluster write.
#[derive(Debug, thiserror::Error)]
#[error("failed to {what}")]
pub struct ClusterError {
    what: String,
    #[source]
    source: Box<dyn std::error::Error + Send + Sync>,
}

impl ClusterError {
    fn new(
        what: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self {
            what: what.into(),
            source: Box::new(source),
        }
    }

    fn msg(what: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(what, std::io::Error::other(message.into()))
    }
}

/// The relay's cluster client.
#[derive(Clone)]
pub struct Cluster {
    client: kube::Client,
    relay: String,
    peer_address: Option<String>,
}

fn now_second() -> String {
    Timestamp::from_second(Timestamp::now().as_second())
        .unwrap_or_else(|_| Timestamp::now())
        .to_string()
}

impl Cluster {
    /// A writer acting as the relay named `relay`.
    pub fn new(client: kube::Client, relay: impl Into<String>) -> Self {
        Self {
            client,
            relay: relay.into(),
            peer_address: None,
        }
    }

    /// Records `address` on Devices as where other replicas reach this relay.
    pub fn with_peer_address(mut self, address: Option<String>) -> Self {
        self.peer_address = address;
        self
    }

    /// The client.
    pub fn client(&self) -> &kube::Client {
        &self.client
    }

    /// Records the device as online with what its agent reports, or offline.
    pub async fn presence(
        &self,
        namespace: &str,
        device: &str,
        online: bool,
        info: Option<&AgentInfo>,
    ) -> Result<(), ClusterError> {
        let api: Api<tether_crds::Device> = Api::namespaced(self.client.clone(), namespace);
        if !online {
            // The agent may have moved to another replica already (this one is draining, or
            // lost it first): the Device is then that replica's to describe, and going
            // offline here would hide the agent where it is.
            let attached_elsewhere = api
                .get_opt(device)
                .await
                .ok()
                .flatten()
                .and_then(|d| d.status?.relay)
                .is_some_and(|relay| relay != self.relay);
            if attached_elsewhere {
                return Ok(());
            }
        }
        let mut status = serde_json::json!({
            "presence": if online { "Online" } else { "Offline" },
            "lastSeen": now_second(),
            "relay": self.relay,
        });
        if let Some(address) = &self.peer_address {
            status["relayAddress"] = address.clone().into();
        }
        if let Some(info) = info {
            status["hostname"] = info.hostname.clone().into();
            status["os"] = info.os.clone().into();
            status["agentVersion"] = info.agent_version.clone().into();
            status["loggedOnUsers"] = serde_json::json!(info.logged_on_users);
            status["loggedOnUsersUnknown"] = info.logged_on_users_unknown.into();
        }
        let patch = serde_json::json!({
            "apiVersion": "tether.dev/v1alpha1", "kind": "Device", "status": status,
        });
        let params = PatchParams::apply(FIELD_MANAGER).force();
        match api
            .patch_status(device, &params, &Patch::Apply(&patch))
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 => {
                // Enrolled, but the Device was deleted since: bring it back.
                let device_obj = serde_json::json!({
                    "apiVersion": "tether.dev/v1alpha1", "kind": "Device",
                    "metadata": {"name": device}, "spec": {},
                });
                api.patch(device, &params, &Patch::Apply(&device_obj))
                    .await
                    .map_err(|e| {
                        ClusterError::new(format!("create Device {namespace}/{device}"), e)
                    })?;
                api.patch_status(device, &params, &Patch::Apply(&patch))
                    .await
                    .map(|_| ())
                    .map_err(|e| {
                        ClusterError::new(format!("update Device {namespace}/{device}"), e)
                    })
            }
            Err(e) => Err(ClusterError::new(
                format!("update Device {namespace}/{device}"),
                e,
            )),
        }
    }

    /// Applies the relay's conditions on a RemoteSession (all of them each time: server-side
    /// apply drops what the manager stops sending).
    pub async fn session_conditions(
        &self,
        namespace: &str,
        name: &str,
        conditions: &BTreeMap<String, (bool, String, String)>,
    ) -> Result<(), ClusterError> {
        let now = now_second();
        let list: Vec<serde_json::Value> = conditions
            .iter()
            .map(|(type_, (status, reason, message))| {
                serde_json::json!({
                    "type": type_,
                    "status": if *status { "True" } else { "False" },
                    "reason": reason,
                    "message": message,
                    "lastTransitionTime": now,
                })
            })
            .collect();
        let patch = serde_json::json!({
            "apiVersion": "tether.dev/v1alpha1", "kind": "RemoteSession",
            "status": {"conditions": list},
        });
        let api: Api<tether_crds::RemoteSession> = Api::namespaced(self.client.clone(), namespace);
        api.patch_status(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
        .map(|_| ())
        .map_err(|e| ClusterError::new(format!("update RemoteSession {namespace}/{name}"), e))
    }

    /// Applies `status.recording` of a RemoteSession (its own field manager, so the relay's
    /// conditions are not disturbed).
    pub async fn session_recording(
        &self,
        namespace: &str,
        name: &str,
        recording: &tether_crds::remote_session::RecordingStatus,
    ) -> Result<(), ClusterError> {
        let patch = serde_json::json!({
            "apiVersion": "tether.dev/v1alpha1", "kind": "RemoteSession",
            "status": {"recording": recording},
        });
        let api: Api<tether_crds::RemoteSession> = Api::namespaced(self.client.clone(), namespace);
        match api
            .patch_status(
                name,
                &PatchParams::apply(RECORDING_FIELD_MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await
        {
            Ok(_) => Ok(()),
            // The session was deleted; its recording stays in the store.
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
            Err(e) => Err(ClusterError::new(
                format!("update RemoteSession {namespace}/{name}"),
                e,
            )),
        }
    }

    /// Asks the operator to check `token` and sign an agent's CSR for `namespace`/`device`,
    /// and waits for its decision. The request carries a digest of the token bound to the
    /// request's name ([`tether_crds::device::token_digest`]), never the token.
    pub async fn sign_agent_csr(
        &self,
        namespace: &str,
        device: &str,
        token: &str,
        csr_pem: &str,
        wait: Duration,
    ) -> Result<Enrollment, ClusterError> {
        use tether_crds::device::{
            CSR_DEVICE_ANNOTATION, CSR_NAMESPACE_ANNOTATION, CSR_TOKEN_DIGEST_ANNOTATION,
        };
        let api: Api<CertificateSigningRequest> = Api::all(self.client.clone());
        let name = format!(
            "tether-agent-{namespace}-{device}-{:08x}",
            rand::random::<u32>()
        );
        let csr = CertificateSigningRequest {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                annotations: Some(BTreeMap::from([
                    (CSR_NAMESPACE_ANNOTATION.to_owned(), namespace.to_owned()),
                    (CSR_DEVICE_ANNOTATION.to_owned(), device.to_owned()),
                    (
                        CSR_TOKEN_DIGEST_ANNOTATION.to_owned(),
                        tether_crds::device::token_digest(&name, token),
                    ),
                ])),
                ..Default::default()
            },
            spec: CertificateSigningRequestSpec {
                request: k8s_openapi::ByteString(csr_pem.as_bytes().to_vec()),
                signer_name: AGENT_SIGNER.into(),
                usages: Some(vec!["client auth".into(), "digital signature".into()]),
                expiration_seconds: Some(30 * 24 * 3600),
                ..Default::default()
            },
            status: None,
        };
        api.create(&PostParams::default(), &csr)
            .await
            .map_err(|e| ClusterError::new("create a CertificateSigningRequest", e))?;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let current = api.get(&name).await.map_err(|e| {
                ClusterError::new(format!("read CertificateSigningRequest {name}"), e)
            })?;
            if let Some(status) = &current.status {
                if let Some(cert) = &status.certificate
                    && !cert.0.is_empty()
                {
                    return String::from_utf8(cert.0.clone())
                        .map(Enrollment::Signed)
                        .map_err(|_| {
                            ClusterError::msg("read the signed certificate", "not UTF-8 PEM")
                        });
                }
                if let Some(denied) = status
                    .conditions
                    .iter()
                    .flatten()
                    .find(|c| c.type_ == "Denied" || c.type_ == "Failed")
                {
                    return Ok(Enrollment::Denied {
                        reason: denied
                            .reason
                            .clone()
                            .unwrap_or_else(|| denied.type_.clone()),
                        message: denied.message.clone().unwrap_or_default(),
                    });
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ClusterError::msg(
                    "enroll the device",
                    format!(
                        "CertificateSigningRequest {name} was not signed within {wait:?}; is tether-operator running?"
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
