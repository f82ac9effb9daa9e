//! The credential authority: the CA and the token signing keys, persisted in Secrets in the
//! operator's namespace, rotated on time by one owned task, with their public halves published
//! for relays and agents; and the revocation list relays watch.
//!
//! | object (operator namespace) | holds |
//! |---|---|
//! | Secret `tether-ca` | the CA state (`authority.json`), `ca.crt`, `trust-bundle.crt` |
//! | Secret `tether-token-keys` | the token signing keys (`keys.json`) |
//! | ConfigMap `tether-trust` | public: `ca-bundle.crt`, `token-keys.json`; annotated with the rotation requests published |
//! | ConfigMap `tether-revocations` | public: revoked session uids → revocation time |
//!
//! Rotation on demand: an administrator sets the annotation [`ROTATE_ANNOTATION`] on Secret
//! `tether-ca` or `tether-token-keys` to a new value (`kubectl tether rotate ca|token-keys`);
//! the operator, watching both Secrets, rotates that credential at once exactly as it does on
//! time (the old CA and key stay trusted until what they issued expires) and records the value
//! it acted on in [`ROTATED_ANNOTATION`]. The watch also makes every replica adopt what
//! another stored, so a rotation is never overwritten with stale state.

pub mod ca;
pub mod keys;
mod revocations;

use std::collections::BTreeMap;
use std::sync::RwLock;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use tether_crds::contract::trust;
use tether_proto::token::{DEFAULT_LEEWAY, SigningKey, TOKEN_LIFETIME};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use ca::{Authority, CaPlan, CaSettings};
use keys::{KeyPlan, KeyRing, KeySettings};

/// Secret holding the CA.
pub const CA_SECRET: &str = trust::CA_SECRET;
/// Secret holding the token signing keys.
pub const KEYS_SECRET: &str = trust::KEYS_SECRET;
/// ConfigMap with the public trust material.
pub const TRUST_CONFIGMAP: &str = trust::CONFIGMAP;
/// ConfigMap with revoked sessions.
pub const REVOCATIONS_CONFIGMAP: &str = trust::REVOCATIONS_CONFIGMAP;
/// Field manager for credential objects.
pub const FIELD_MANAGER: &str = "tether-operator/credentials";
/// Annotation on Secret `tether-ca` or `tether-token-keys`, set by an administrator: a value
/// not yet in [`ROTATED_ANNOTATION`] asks for that credential to be rotated now.
pub const ROTATE_ANNOTATION: &str = trust::ROTATE;
/// Annotation the operator sets on the Secret it rotated on request: the value of
/// [`ROTATE_ANNOTATION`] it acted on.
pub const ROTATED_ANNOTATION: &str = trust::ROTATED;

/// The rotation an administrator asked for on `secret` that has not been carried out: the
/// value of its [`ROTATE_ANNOTATION`].
pub fn rotation_requested(secret: &Secret) -> Option<String> {
    let annotations = secret.metadata.annotations.as_ref()?;
    let wanted = annotations
        .get(ROTATE_ANNOTATION)
        .filter(|v| !v.is_empty())?;
    (annotations.get(ROTATED_ANNOTATION) != Some(wanted)).then(|| wanted.clone())
}

/// Settings of the credential authority.
#[derive(Clone, Debug, Default)]
pub struct CredentialSettings {
    /// CA lifetimes.
    pub ca: CaSettings,
    /// Token key rotation.
    pub keys: KeySettings,
}

/// A failure of the credential authority.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    /// Reading or writing a Kubernetes object failed.
    #[error("failed to {what}")]
    Kube {
        /// What was being done.
        what: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// A stored object is unreadable.
    #[error("{0} is corrupt; delete it to start a new one (issued credentials stop working)")]
    Corrupt(String),
    /// The CA failed.
    #[error(transparent)]
    Ca(#[from] ca::CaError),
    /// A signing key failed.
    #[error(transparent)]
    Token(#[from] tether_proto::token::TokenError),
}

impl CredentialsError {
    fn kube(what: impl Into<String>) -> impl FnOnce(kube::Error) -> Self {
        let what = what.into();
        move |source| Self::Kube { what, source }
    }
}

struct State {
    authority: Authority,
    ca_version: Option<String>,
    /// The last rotation request carried out on the CA, written back with every update.
    ca_rotated_for: Option<String>,
    keys: KeyRing,
    keys_version: Option<String>,
    /// The last rotation request carried out on the keys.
    keys_rotated_for: Option<String>,
}

/// The operator's credential authority.
pub struct Credentials {
    secrets: Api<Secret>,
    configmaps: Api<ConfigMap>,
    settings: CredentialSettings,
    state: RwLock<State>,
    changed: tokio::sync::watch::Sender<u64>,
}

fn secret_json<T: serde::de::DeserializeOwned>(
    secret: &Secret,
    key: &str,
) -> Result<T, CredentialsError> {
    let name = secret.metadata.name.clone().unwrap_or_default();
    let bytes = secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .ok_or_else(|| CredentialsError::Corrupt(format!("Secret {name} (no {key})")))?;
    serde_json::from_slice(&bytes.0)
        .map_err(|e| CredentialsError::Corrupt(format!("Secret {name} ({key}: {e})")))
}

fn data(entries: &[(&str, String)]) -> BTreeMap<String, ByteString> {
    entries
        .iter()
        .map(|(k, v)| ((*k).to_owned(), ByteString(v.clone().into_bytes())))
        .collect()
}

fn labels() -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/managed-by".to_owned(),
            "tether-operator".to_owned(),
        ),
        ("app.kubernetes.io/part-of".to_owned(), "tether".to_owned()),
    ])
}

impl Credentials {
    /// Loads the CA and keys from their Secrets, creating them on first start, and publishes
    /// the public material.
    pub async fn load_or_create(
        client: kube::Client,
        namespace: &str,
        settings: CredentialSettings,
        now: i64,
    ) -> Result<Self, CredentialsError> {
        let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
        let configmaps: Api<ConfigMap> = Api::namespaced(client, namespace);

        let (authority, ca_version) = match Self::read(&secrets, CA_SECRET).await? {
            Some(secret) => (
                secret_json::<Authority>(&secret, "authority.json")?,
                secret.metadata.resource_version.clone(),
            ),
            None => {
                let authority = Authority::create(now, &settings.ca)?;
                match Self::create(&secrets, CA_SECRET, ca_data(&authority)).await? {
                    Some(version) => {
                        info!(namespace, "Created the Tether certificate authority");
                        (authority, Some(version))
                    }
                    // Another replica won the race: use its CA.
                    None => {
                        let secret = Self::read(&secrets, CA_SECRET).await?.ok_or_else(|| {
                            CredentialsError::Corrupt(format!("Secret {CA_SECRET} (vanished)"))
                        })?;
                        (
                            secret_json(&secret, "authority.json")?,
                            secret.metadata.resource_version.clone(),
                        )
                    }
                }
            }
        };
        let (keys, keys_version) = match Self::read(&secrets, KEYS_SECRET).await? {
            Some(secret) => (
                secret_json::<KeyRing>(&secret, "keys.json")?,
                secret.metadata.resource_version.clone(),
            ),
            None => {
                let ring = KeyRing::create(now)?;
                match Self::create(&secrets, KEYS_SECRET, keys_data(&ring)).await? {
                    Some(version) => {
                        info!(namespace, "Created the token signing keys");
                        (ring, Some(version))
                    }
                    None => {
                        let secret = Self::read(&secrets, KEYS_SECRET).await?.ok_or_else(|| {
                            CredentialsError::Corrupt(format!("Secret {KEYS_SECRET} (vanished)"))
                        })?;
                        (
                            secret_json(&secret, "keys.json")?,
                            secret.metadata.resource_version.clone(),
                        )
                    }
                }
            }
        };
        let credentials = Self {
            secrets,
            configmaps,
            settings,
            state: RwLock::new(State {
                authority,
                ca_version,
                ca_rotated_for: None,
                keys,
                keys_version,
                keys_rotated_for: None,
            }),
            changed: tokio::sync::watch::channel(0).0,
        };
        credentials.publish_trust().await?;
        credentials.ensure_revocations().await?;
        Ok(credentials)
    }

    async fn read(secrets: &Api<Secret>, name: &str) -> Result<Option<Secret>, CredentialsError> {
        secrets
            .get_opt(name)
            .await
            .map_err(CredentialsError::kube(format!("read Secret {name}")))
    }

    /// Creates a Secret; `None` if it already exists.
    async fn create(
        secrets: &Api<Secret>,
        name: &str,
        data: BTreeMap<String, ByteString>,
    ) -> Result<Option<String>, CredentialsError> {
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                labels: Some(labels()),
                ..Default::default()
            },
            data: Some(data),
            type_: Some("Opaque".into()),
            ..Default::default()
        };
        let params = PostParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..Default::default()
        };
        match secrets.create(&params, &secret).await {
            Ok(created) => Ok(created.metadata.resource_version),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(None),
            Err(e) => Err(CredentialsError::Kube {
                what: format!("create Secret {name}"),
                source: e,
            }),
        }
    }

    /// The key that signs new session tokens.
    pub fn signing_key(&self) -> Result<SigningKey, CredentialsError> {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        Ok(state.keys.signing_key()?)
    }

    /// Checks tokens this operator signed (with any key still published).
    pub fn verifier(&self) -> tether_proto::token::Verifier {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        tether_proto::token::Verifier::new(
            state.keys.verifying_keys(),
            tether_proto::token::DEFAULT_LEEWAY,
        )
    }

    /// A copy of the CA, for issuing certificates.
    pub fn authority(&self) -> Authority {
        self.state
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .authority
            .clone()
    }

    /// Rotates whatever is due at `now`, persists and republishes it, prunes old revocations,
    /// and returns when to look again (Unix seconds).
    pub async fn maintain(&self, now: i64) -> Result<i64, CredentialsError> {
        let (ca_plan, key_plan) = {
            let state = self.state.read().unwrap_or_else(|e| e.into_inner());
            (
                state.authority.plan(now, &self.settings.ca),
                state.keys.plan(now, &self.settings.keys),
            )
        };
        let mut changed = false;
        if ca_plan == CaPlan::Rotate {
            let (mut authority, version, rotated_for) = {
                let s = self.state.read().unwrap_or_else(|e| e.into_inner());
                (
                    s.authority.clone(),
                    s.ca_version.clone(),
                    s.ca_rotated_for.clone(),
                )
            };
            authority.rotate(now, &self.settings.ca)?;
            let version = self
                .replace(CA_SECRET, ca_data(&authority), version, rotated_for)
                .await?;
            let mut s = self.state.write().unwrap_or_else(|e| e.into_inner());
            s.authority = authority;
            s.ca_version = version;
            changed = true;
            info!("Rotated the Tether certificate authority");
        }
        {
            let (mut ring, version, rotated_for) = {
                let s = self.state.read().unwrap_or_else(|e| e.into_inner());
                (
                    s.keys.clone(),
                    s.keys_version.clone(),
                    s.keys_rotated_for.clone(),
                )
            };
            let rotated = key_plan == KeyPlan::Rotate;
            if rotated {
                ring.rotate(now, &self.settings.keys)?;
            }
            let pruned = ring.prune(now, &self.settings.keys);
            if rotated || pruned {
                let version = self
                    .replace(KEYS_SECRET, keys_data(&ring), version, rotated_for)
                    .await?;
                let mut s = self.state.write().unwrap_or_else(|e| e.into_inner());
                s.keys = ring;
                s.keys_version = version;
                changed = true;
                if rotated {
                    info!("Rotated the token signing key");
                }
            }
        }
        if changed {
            self.publish_trust().await?;
            self.changed.send_modify(|n| *n += 1);
        }
        self.prune_revocations(now).await?;

        let s = self.state.read().unwrap_or_else(|e| e.into_inner());
        let next_ca = match s.authority.plan(now, &self.settings.ca) {
            CaPlan::KeepUntil(t) => t,
            CaPlan::Rotate => now + 60,
        };
        let next_keys = match s.keys.plan(now, &self.settings.keys) {
            KeyPlan::KeepUntil(t) => t,
            KeyPlan::Rotate => now + 60,
        };
        let next_prune = now + (TOKEN_LIFETIME + DEFAULT_LEEWAY).as_secs() as i64;
        Ok(next_ca.min(next_keys).min(next_prune))
    }

    /// Replaces a Secret's data if its resourceVersion is still `version` (so two replicas
    /// never overwrite each other's rotation), recording the last rotation request carried
    /// out (`rotated_for`) in its annotations.
    async fn replace(
        &self,
        name: &str,
        data: BTreeMap<String, ByteString>,
        version: Option<String>,
        rotated_for: Option<String>,
    ) -> Result<Option<String>, CredentialsError> {
        let annotations = rotated_for.map(|value| {
            BTreeMap::from([
                (ROTATE_ANNOTATION.to_owned(), value.clone()),
                (ROTATED_ANNOTATION.to_owned(), value),
            ])
        });
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                labels: Some(labels()),
                annotations,
                resource_version: version,
                ..Default::default()
            },
            data: Some(data),
            type_: Some("Opaque".into()),
            ..Default::default()
        };
        let params = PostParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..Default::default()
        };
        self.secrets
            .replace(name, &params, &secret)
            .await
            .map(|s| s.metadata.resource_version)
            .map_err(CredentialsError::kube(format!("update Secret {name}")))
    }

    /// A receiver that changes whenever new trust material is published (rotations).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Publishes the CA bundle and the token verification keys in `tether-trust`, annotated
    /// with the rotation requests they carry out (what `kubectl tether rotate` waits for).
    async fn publish_trust(&self) -> Result<(), CredentialsError> {
        let (bundle, keys, ca_for, keys_for) = {
            let s = self.state.read().unwrap_or_else(|e| e.into_inner());
            (
                s.authority.trust_bundle(),
                s.keys.verifying_keys(),
                s.ca_rotated_for.clone(),
                s.keys_rotated_for.clone(),
            )
        };
        let mut annotations = serde_json::Map::new();
        if let Some(value) = ca_for {
            annotations.insert(trust::CA_PUBLISHED_FOR.into(), value.into());
        }
        if let Some(value) = keys_for {
            annotations.insert(trust::TOKEN_KEYS_PUBLISHED_FOR.into(), value.into());
        }
        let keys = serde_json::to_string_pretty(&keys)
            .map_err(|e| CredentialsError::Corrupt(format!("token keys ({e})")))?;
        let cm = serde_json::json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": TRUST_CONFIGMAP, "labels": labels(), "annotations": annotations},
            "data": {trust::CA_BUNDLE: bundle, trust::TOKEN_KEYS: keys},
        });
        self.configmaps
            .patch(
                TRUST_CONFIGMAP,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&cm),
            )
            .await
            .map(|_| ())
            .map_err(CredentialsError::kube(format!(
                "publish ConfigMap {TRUST_CONFIGMAP}"
            )))
    }

    /// Takes in a change of Secret `tether-ca` or `tether-token-keys` seen by the watch:
    /// adopts what is stored when it differs from what this replica holds (another replica
    /// rotated, or an administrator annotated it), and rotates at once when an administrator
    /// asked for it. Other Secrets are ignored.
    pub async fn observe(&self, secret: &Secret, now: i64) -> Result<(), CredentialsError> {
        let name = secret.metadata.name.as_deref().unwrap_or_default();
        let version = secret.metadata.resource_version.clone();
        let requested = rotation_requested(secret);
        let carried_out = secret
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(ROTATED_ANNOTATION))
            .cloned();
        let mut changed = false;
        match name {
            CA_SECRET => {
                let mut authority: Authority = secret_json(secret, "authority.json")?;
                {
                    let mut s = self.state.write().unwrap_or_else(|e| e.into_inner());
                    changed |= s.authority != authority;
                    s.authority = authority.clone();
                    s.ca_version = version.clone();
                    s.ca_rotated_for = carried_out;
                }
                if let Some(value) = requested {
                    authority.rotate(now, &self.settings.ca)?;
                    let version = self
                        .replace(CA_SECRET, ca_data(&authority), version, Some(value.clone()))
                        .await?;
                    let mut s = self.state.write().unwrap_or_else(|e| e.into_inner());
                    s.authority = authority;
                    s.ca_version = version;
                    s.ca_rotated_for = Some(value.clone());
                    changed = true;
                    info!(request = %value, "Rotated the Tether certificate authority on request");
                }
            }
            KEYS_SECRET => {
                let mut ring: KeyRing = secret_json(secret, "keys.json")?;
                {
                    let mut s = self.state.write().unwrap_or_else(|e| e.into_inner());
                    changed |= s.keys != ring;
                    s.keys = ring.clone();
                    s.keys_version = version.clone();
                    s.keys_rotated_for = carried_out;
                }
                if let Some(value) = requested {
                    ring.rotate(now, &self.settings.keys)?;
                    let version = self
                        .replace(KEYS_SECRET, keys_data(&ring), version, Some(value.clone()))
                        .await?;
                    let mut s = self.state.write().unwrap_or_else(|e| e.into_inner());
                    s.keys = ring;
                    s.keys_version = version;
                    s.keys_rotated_for = Some(value.clone());
                    changed = true;
                    info!(request = %value, "Rotated the token signing key on request");
                }
            }
            _ => return Ok(()),
        }
        if changed {
            self.publish_trust().await?;
            self.changed.send_modify(|n| *n += 1);
        }
        Ok(())
    }

    /// Keeps the credentials rotated until `shutdown`: sleeps exactly until the next thing is
    /// due, retrying after a short delay when the API server is unavailable, and rotates on
    /// request as soon as the watch of the credential Secrets sees one.
    pub async fn run(&self, shutdown: CancellationToken) {
        use futures::StreamExt;
        use kube::runtime::{WatchStreamExt, watcher};
        let mut secrets = watcher(
            self.secrets.clone(),
            watcher::Config::default().labels("app.kubernetes.io/managed-by=tether-operator"),
        )
        .default_backoff()
        .applied_objects()
        .boxed();
        let mut due = tokio::time::Instant::now();
        // A credential Secret whose change could not be taken in, read again when retrying.
        let mut again: Option<String> = None;
        loop {
            let now = ca::unix_now();
            if tokio::time::Instant::now() >= due {
                if let Some(name) = again.take() {
                    let fresh = Self::read(&self.secrets, &name).await;
                    if let Err(e) = match fresh {
                        Ok(Some(secret)) => self.observe(&secret, now).await,
                        Ok(None) => Ok(()),
                        Err(e) => Err(e),
                    } {
                        warn!(error = %crate::error_chain(&e), secret = %name, "Failed to take in a change of a credential Secret; retrying");
                        again = Some(name);
                    }
                }
                let wake_in = match self.maintain(now).await {
                    Ok(next) => Duration::from_secs((next - now).max(1) as u64),
                    Err(e) => {
                        warn!(error = %e, "Failed to maintain credentials; retrying");
                        Duration::from_secs(10)
                    }
                };
                due = tokio::time::Instant::now() + wake_in;
            }
            tokio::select! {
                () = tokio::time::sleep_until(due) => {}
                Some(event) = secrets.next() => match event {
                    Ok(secret) => {
                        if let Err(e) = self.observe(&secret, ca::unix_now()).await {
                            warn!(error = %crate::error_chain(&e), "Failed to take in a change of a credential Secret; retrying");
                            again = secret.metadata.name.clone();
                            due = due.min(tokio::time::Instant::now() + Duration::from_secs(10));
                        }
                    }
                    Err(e) => debug!(error = %e, "The watch of the credential Secrets failed; retrying"),
                },
                () = shutdown.cancelled() => return,
            }
        }
    }
}

fn ca_data(authority: &Authority) -> BTreeMap<String, ByteString> {
    data(&[
        (
            "authority.json",
            serde_json::to_string(authority).unwrap_or_default(),
        ),
        ("ca.crt", authority.current.cert.clone()),
        ("trust-bundle.crt", authority.trust_bundle()),
    ])
}

fn keys_data(ring: &KeyRing) -> BTreeMap<String, ByteString> {
    data(&[("keys.json", serde_json::to_string(ring).unwrap_or_default())])
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
