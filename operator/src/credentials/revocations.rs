//! The revocation list relays watch: ConfigMap `tether-revocations`, revoked session uids
//! mapped to when they were revoked, pruned once every token they protect against expired.

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use tether_proto::token::{DEFAULT_LEEWAY, Revocations, TOKEN_LIFETIME};

use super::{Credentials, CredentialsError, REVOCATIONS_CONFIGMAP, labels};

impl Credentials {
    /// Creates the revocations ConfigMap unless it exists.
    pub(super) async fn ensure_revocations(&self) -> Result<(), CredentialsError> {
        let cm = ConfigMap {
            metadata: ObjectMeta {
                name: Some(REVOCATIONS_CONFIGMAP.into()),
                labels: Some(labels()),
                ..Default::default()
            },
            ..Default::default()
        };
        match self.configmaps.create(&PostParams::default(), &cm).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
            Err(source) => Err(CredentialsError::Kube {
                what: format!("create ConfigMap {REVOCATIONS_CONFIGMAP}"),
                source,
            }),
        }
    }

    /// Publishes that the tokens of session `uid` are revoked from `now`. Idempotent.
    pub async fn revoke(&self, uid: &str, now: i64) -> Result<(), CredentialsError> {
        let patch = serde_json::json!({"data": {uid: now.to_string()}});
        self.configmaps
            .patch(
                REVOCATIONS_CONFIGMAP,
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
            .map(|_| ())
            .map_err(CredentialsError::kube("publish a revocation"))
    }

    /// Drops revocations old enough that every token they protect against has expired.
    pub(super) async fn prune_revocations(&self, now: i64) -> Result<(), CredentialsError> {
        let Some(cm) = self
            .configmaps
            .get_opt(REVOCATIONS_CONFIGMAP)
            .await
            .map_err(CredentialsError::kube("read the revocations"))?
        else {
            return self.ensure_revocations().await;
        };
        let mut revocations = Revocations::from_data(&cm.data.unwrap_or_default());
        let horizon = now - (TOKEN_LIFETIME + DEFAULT_LEEWAY).as_secs() as i64;
        let old = revocations.prune(horizon);
        if old.is_empty() {
            return Ok(());
        }
        let nulls: serde_json::Map<String, serde_json::Value> = old
            .into_iter()
            .map(|uid| (uid, serde_json::Value::Null))
            .collect();
        self.configmaps
            .patch(
                REVOCATIONS_CONFIGMAP,
                &PatchParams::default(),
                &Patch::Merge(&serde_json::json!({"data": nulls})),
            )
            .await
            .map(|_| ())
            .map_err(CredentialsError::kube("prune the revocations"))
    }
}
