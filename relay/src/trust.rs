//! What the relay trusts, kept current from the cluster: the token verification keys and CA
//! bundle the operator publishes in the ConfigMap `tether-trust`, and the revoked sessions in
//! `tether-revocations`. Both are watched, so a revocation reaches the relay as fast as the
//! API server delivers a watch event.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use tether_proto::token::{
    Claims, DEFAULT_LEEWAY, Revocations, TokenError, Verifier, VerifyingKey, verify_not_revoked,
};
use tokio::sync::watch;
use tracing::{info, warn};

/// ConfigMap with the CA bundle and token verification keys.
pub const TRUST_CONFIGMAP: &str = tether_crds::contract::trust::CONFIGMAP;
/// ConfigMap with revoked sessions.
pub const REVOCATIONS_CONFIGMAP: &str = tether_crds::contract::trust::REVOCATIONS_CONFIGMAP;

#[derive(Clone)]
struct State {
    verifier: Verifier,
    revocations: Revocations,
    ca_bundle: String,
    keys_loaded: bool,
    revocations_loaded: bool,
}

/// The relay's view of what to trust. Cheap to clone; every clone sees updates.
#[derive(Clone)]
pub struct TrustStore {
    state: Arc<RwLock<State>>,
    changed: watch::Sender<u64>,
}

impl std::fmt::Debug for TrustStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.read();
        f.debug_struct("TrustStore")
            .field("keys", &s.verifier.key_count())
            .field("revoked", &s.revocations.len())
            .finish()
    }
}

impl Default for TrustStore {
    fn default() -> Self {
        Self::new()
    }
}

impl TrustStore {
    /// An empty store: it refuses every token until keys are loaded.
    pub fn new() -> Self {
        Self {
            state: Arc::new(RwLock::new(State {
                verifier: Verifier::new([], DEFAULT_LEEWAY),
                revocations: Revocations::default(),
                ca_bundle: String::new(),
                keys_loaded: false,
                revocations_loaded: false,
            })),
            changed: watch::channel(0).0,
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn update(&self, f: impl FnOnce(&mut State)) {
        {
            let mut s = self.state.write().unwrap_or_else(|e| e.into_inner());
            f(&mut s);
        }
        self.changed.send_modify(|v| *v += 1);
    }

    /// Replaces the trust material from the `tether-trust` ConfigMap's data.
    pub fn load_trust(&self, data: &std::collections::BTreeMap<String, String>) {
        let keys: Vec<VerifyingKey> = data
            .get(tether_crds::contract::trust::TOKEN_KEYS)
            .and_then(|k| match serde_json::from_str(k) {
                Ok(keys) => Some(keys),
                Err(e) => {
                    warn!(error = %e, "Ignored unreadable token keys in ConfigMap tether-trust");
                    None
                }
            })
            .unwrap_or_default();
        let bundle = data
            .get(tether_crds::contract::trust::CA_BUNDLE)
            .cloned()
            .unwrap_or_default();
        self.update(|s| {
            s.verifier = Verifier::new(keys, DEFAULT_LEEWAY);
            s.ca_bundle = bundle;
            s.keys_loaded = true;
        });
    }

    /// Replaces the revocations from the `tether-revocations` ConfigMap's data.
    pub fn load_revocations(&self, data: &std::collections::BTreeMap<String, String>) {
        let revocations = Revocations::from_data(data);
        self.update(|s| {
            s.revocations = revocations;
            s.revocations_loaded = true;
        });
    }

    /// Whether keys and revocations have both been loaded.
    pub fn is_ready(&self) -> bool {
        let s = self.read();
        s.keys_loaded && s.revocations_loaded
    }

    /// Whether the session with `uid` is revoked.
    pub fn is_revoked(&self, uid: &str) -> bool {
        self.read().revocations.is_revoked(uid)
    }

    /// The CA bundle agents' certificates are checked against.
    pub fn ca_bundle(&self) -> String {
        self.read().ca_bundle.clone()
    }

    /// Checks a technician's token at `now` (Unix seconds), optionally for a given session.
    pub fn authorize(
        &self,
        token: &str,
        now: i64,
        session_uid: Option<&str>,
    ) -> Result<Claims, TokenError> {
        let s = self.read();
        verify_not_revoked(&s.verifier, &s.revocations, token, now, session_uid)
    }

    /// A receiver that changes whenever the trust material does (e.g. to re-check live
    /// sessions against new revocations).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Keeps the store current from the ConfigMaps in `namespace` until the future is dropped.
    /// Watch errors are retried with backoff by the watcher.
    pub async fn watch(self, client: kube::Client, namespace: String) {
        let api: Api<ConfigMap> = Api::namespaced(client, &namespace);
        let trust = watcher(
            api.clone(),
            watcher::Config::default().fields(&format!("metadata.name={TRUST_CONFIGMAP}")),
        )
        .default_backoff()
        .applied_objects();
        let revocations = watcher(
            api,
            watcher::Config::default().fields(&format!("metadata.name={REVOCATIONS_CONFIGMAP}")),
        )
        .default_backoff()
        .applied_objects();
        let mut trust = std::pin::pin!(trust);
        let mut revocations = std::pin::pin!(revocations);
        loop {
            tokio::select! {
                Some(event) = trust.next() => match event {
                    Ok(cm) => {
                        self.load_trust(&cm.data.unwrap_or_default());
                        info!(namespace, "Loaded trust material from ConfigMap tether-trust");
                    }
                    Err(e) => warn!(error = %e, "Failed to watch ConfigMap tether-trust"),
                },
                Some(event) = revocations.next() => match event {
                    Ok(cm) => self.load_revocations(&cm.data.unwrap_or_default()),
                    Err(e) => warn!(error = %e, "Failed to watch ConfigMap tether-revocations"),
                },
                else => {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use tether_proto::token::{
        Claims, DesktopPermission, Permissions, SessionClaims, SigningKey, Technicians,
    };

    const NOW: i64 = 1_800_000_000;

    fn token(key: &SigningKey, uid: &str) -> String {
        key.mint(&Claims::new(
            SessionClaims {
                uid: uid.into(),
                namespace: "ns".into(),
                name: "s".into(),
                device: "d".into(),
                ends_at: NOW + 600,
                technicians: Technicians::default(),
                permissions: Permissions {
                    desktop: DesktopPermission::Control,
                    shell: true,
                    files: true,
                    chat: true,
                    processes: true,
                    clipboard: Default::default(),
                },
                consent: false,
                consent_timeout: None,
                ticket: None,
                reason: None,
                recording: Default::default(),
                record_keystrokes: false,
            },
            "j".into(),
            NOW,
            NOW,
        ))
        .unwrap()
    }

    #[test]
    fn refuses_everything_until_loaded_then_follows_updates() {
        let key = SigningKey::generate("k1").unwrap();
        let store = TrustStore::new();
        let t = token(&key, "u1");
        assert!(!store.is_ready());
        assert!(matches!(
            store.authorize(&t, NOW, None),
            Err(TokenError::UnknownKey(_))
        ));

        let mut rx = store.subscribe();
        let keys = serde_json::to_string(&vec![key.verifying_key()]).unwrap();
        store.load_trust(&BTreeMap::from([("token-keys.json".into(), keys)]));
        store.load_revocations(&BTreeMap::new());
        assert!(store.is_ready());
        assert!(rx.has_changed().unwrap());
        rx.mark_unchanged();
        assert_eq!(
            store.authorize(&t, NOW, Some("u1")).unwrap().session.uid,
            "u1"
        );

        store.load_revocations(&BTreeMap::from([("u1".into(), NOW.to_string())]));
        assert!(rx.has_changed().unwrap());
        assert!(store.is_revoked("u1"));
        assert_eq!(
            store.authorize(&t, NOW, None),
            Err(TokenError::Revoked("u1".into()))
        );
    }

    #[test]
    fn unreadable_keys_trust_nothing() {
        let key = SigningKey::generate("k1").unwrap();
        let store = TrustStore::new();
        store.load_trust(&BTreeMap::from([(
            "token-keys.json".into(),
            "{not json".into(),
        )]));
        assert!(store.authorize(&token(&key, "u"), NOW, None).is_err());
    }
}
