//! Session recordings as the operator sees them: where the store is (settings the chart sets,
//! handed to the relay in its ConfigMap) and opening that same store, with the credentials
//! Secret's contents, for retention.
//!
//! Credentials never pass through flags or the relay's ConfigMap: they live in a Secret in the
//! operator's namespace whose data keys are extra `object_store` options (`access_key_id`,
//! `secret_access_key`, …). The relay reads that Secret itself; the operator reads it when it
//! opens the store. Values are never logged.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use tether_crds::GoDuration;
use tether_recording::{Storage, StoreConfig};

/// Default size of one uploaded part: 5 MiB, S3's minimum, which keeps a busy channel's
/// buffered bytes smallest.
pub const DEFAULT_PART_SIZE: u64 = 5 * 1024 * 1024;

/// Smallest part size S3 accepts for every part but the last: 5 MiB.
pub const MIN_PART_SIZE: u64 = 5 * 1024 * 1024;

/// Option keys that hold credentials are refused as flags (they would be written to the
/// relay's ConfigMap) and accepted only from the credentials Secret; refused by
/// [`RecordingSettings::validate`] rather than while parsing, so the error never repeats the
/// value.
pub use tether_recording::storage::is_credential_key;

/// One `KEY=VALUE` store option from the command line (`--recording-option`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreOption {
    /// The `object_store` configuration key (`endpoint`, `region`, `allow_http`, …).
    pub key: String,
    /// Its value.
    pub value: String,
}

impl FromStr for StoreOption {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (key, value) = s
            .split_once('=')
            .ok_or_else(|| format!("expected KEY=VALUE, got {s:?}"))?;
        let key = key.trim();
        if key.is_empty() {
            return Err(format!("expected KEY=VALUE, got {s:?} (empty key)"));
        }
        Ok(Self {
            key: key.to_owned(),
            value: value.to_owned(),
        })
    }
}

/// Parses a part size in bytes (at least [`MIN_PART_SIZE`]), for clap.
pub fn parse_part_size(s: &str) -> Result<u64, String> {
    let bytes: u64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number of bytes"))?;
    if bytes < MIN_PART_SIZE {
        return Err(format!(
            "{bytes} bytes is below the minimum part size of {MIN_PART_SIZE} bytes (5 MiB) \
             that S3-compatible stores accept"
        ));
    }
    Ok(bytes)
}

/// Where and how sessions are recorded (operator settings, from the chart's `recording.*`
/// values).
#[derive(Clone, PartialEq, Eq)]
pub struct RecordingSettings {
    /// The store's URL (`file://…`, `s3://…`, `gs://…`, `az://…`); `None`: recording is not
    /// configured.
    pub store: Option<String>,
    /// Non-secret `object_store` options.
    pub options: BTreeMap<String, String>,
    /// Secret in the operator's namespace whose data keys are extra (secret) options.
    pub credentials_secret: Option<String>,
    /// PersistentVolumeClaim the relay mounts at a `file://` store's path.
    pub claim_name: Option<String>,
    /// Size of one uploaded part, in bytes.
    pub part_size: u64,
    /// How often the relay makes buffered recording bytes durable.
    pub flush_interval: GoDuration,
    /// How long recordings are kept after their last change; zero keeps them forever.
    pub retention: Duration,
    /// How often retention runs.
    pub sweep_interval: Duration,
}

impl fmt::Debug for RecordingSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Options given as flags are not credentials (those are refused), but keep the
        // habit: the Secret's name is shown, never its contents.
        f.debug_struct("RecordingSettings")
            .field("store", &self.store)
            .field("options", &self.options.keys().collect::<Vec<_>>())
            .field("credentials_secret", &self.credentials_secret)
            .field("claim_name", &self.claim_name)
            .field("part_size", &self.part_size)
            .field("flush_interval", &self.flush_interval.as_str())
            .field("retention", &self.retention)
            .field("sweep_interval", &self.sweep_interval)
            .finish()
    }
}

impl Default for RecordingSettings {
    fn default() -> Self {
        Self {
            store: None,
            options: BTreeMap::new(),
            credentials_secret: None,
            claim_name: None,
            part_size: DEFAULT_PART_SIZE,
            flush_interval: GoDuration::from_std(Duration::from_secs(2)),
            retention: Duration::ZERO,
            sweep_interval: Duration::from_secs(3600),
        }
    }
}

/// Why the recording settings or store cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RecordingsError {
    /// The settings contradict each other.
    #[error("invalid recording settings: {0}")]
    Settings(String),
    /// The credentials Secret could not be read.
    #[error("failed to read the recording credentials Secret {namespace}/{name}")]
    Credentials {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// The credentials Secret does not exist.
    #[error("the recording credentials Secret {namespace}/{name} does not exist")]
    MissingCredentials {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
    },
    /// The store refused the configuration.
    #[error("failed to open the recording store")]
    Store(#[source] tether_recording::Error),
}

impl RecordingSettings {
    /// Checks what clap cannot: no credentials among the options, a claim only with a
    /// `file://` store, and a store URL Tether knows.
    pub fn validate(&self) -> Result<(), RecordingsError> {
        let flush = self.flush_interval.as_std();
        let (min, max) = (
            tether_recording::recorder::MIN_FLUSH_INTERVAL,
            tether_recording::recorder::MAX_FLUSH_INTERVAL,
        );
        if flush < min || flush > max {
            return Err(RecordingsError::Settings(format!(
                "--recording-flush-interval {} is out of range: it must be between {min:?} and {max:?}",
                self.flush_interval.as_str()
            )));
        }
        if let Some(key) = self.options.keys().find(|k| is_credential_key(k)) {
            return Err(RecordingsError::Settings(format!(
                "recording option {key} is a credential: put it in the credentials Secret \
                 (--recording-credentials-secret), never in flags or values"
            )));
        }
        let Some(store) = &self.store else {
            if self.claim_name.is_some() {
                return Err(RecordingsError::Settings(
                    "--recording-claim-name needs a file:// --recording-store".into(),
                ));
            }
            return Ok(());
        };
        let scheme = store.split_once("://").map(|(s, _)| s);
        match scheme {
            Some("file") => {
                if self.file_path().is_none_or(|p| p == "/") {
                    return Err(RecordingsError::Settings(format!(
                        "{store} names no directory: use file:///var/lib/tether/recordings"
                    )));
                }
            }
            Some("s3" | "s3a" | "gs" | "az" | "azure" | "abfs" | "abfss") => {
                if self.claim_name.is_some() {
                    return Err(RecordingsError::Settings(format!(
                        "--recording-claim-name is for file:// stores, not {store}"
                    )));
                }
            }
            _ => {
                return Err(RecordingsError::Settings(format!(
                    "unsupported recording store {store:?}: use file://, s3://, gs:// or az://"
                )));
            }
        }
        Ok(())
    }

    /// The store's URL without user info or query (what logs and Events may show).
    pub fn location(&self) -> Option<String> {
        let store = self.store.as_deref()?;
        let store = store.split(['?', '#']).next().unwrap_or_default();
        Some(match store.split_once("://") {
            Some((scheme, rest)) => {
                let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
                let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
                format!("{scheme}://{host}{path}")
            }
            None => store.to_owned(),
        })
    }

    /// The directory of a `file://` store.
    pub fn file_path(&self) -> Option<&str> {
        let path = self.store.as_deref()?.strip_prefix("file://")?;
        let path = path.split(['?', '#']).next().unwrap_or_default();
        (path.starts_with('/')).then_some(path)
    }

    /// Whether the retention sweeper runs: a store and a non-zero retention.
    pub fn retention_enabled(&self) -> bool {
        self.store.is_some() && !self.retention.is_zero()
    }

    /// Opens the store the relay records to: the configured options plus the credentials
    /// Secret's data (read from `namespace`). `None` when recording is not configured.
    pub async fn open(
        &self,
        client: &kube::Client,
        namespace: &str,
    ) -> Result<Option<Storage>, RecordingsError> {
        let Some(url) = &self.store else {
            return Ok(None);
        };
        let mut config = StoreConfig::new(url.clone());
        config.options = self.options.clone();
        if let Some(name) = &self.credentials_secret {
            let secret = Api::<Secret>::namespaced(client.clone(), namespace)
                .get_opt(name)
                .await
                .map_err(|source| RecordingsError::Credentials {
                    namespace: namespace.to_owned(),
                    name: name.clone(),
                    source,
                })?
                .ok_or_else(|| RecordingsError::MissingCredentials {
                    namespace: namespace.to_owned(),
                    name: name.clone(),
                })?;
            config.options.extend(credential_options(&secret));
        }
        Storage::open(&config)
            .map(Some)
            .map_err(RecordingsError::Store)
    }
}

/// How long a store check is trusted before it is repeated.
const PROBE_TTL: Duration = Duration::from_secs(10);

/// How long a store check may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether the recording store answers, for sessions that must be recorded before they may
/// become Active. Checked at most every ten seconds, however many sessions ask.
pub struct StoreProbe {
    settings: RecordingSettings,
    client: kube::Client,
    namespace: String,
    last: tokio::sync::Mutex<Option<(std::time::Instant, Result<(), String>)>>,
}

impl StoreProbe {
    /// A probe of the store `settings` configure (credentials read from `namespace`).
    pub fn new(settings: RecordingSettings, client: kube::Client, namespace: String) -> Self {
        Self {
            settings,
            client,
            namespace,
            last: tokio::sync::Mutex::new(None),
        }
    }

    /// `Err` says, in a sentence, why sessions cannot be recorded now.
    pub async fn check(&self) -> Result<(), String> {
        let mut last = self.last.lock().await;
        if let Some((at, result)) = last.as_ref()
            && at.elapsed() < PROBE_TTL
        {
            return result.clone();
        }
        let result = match self.settings.open(&self.client, &self.namespace).await {
            Ok(None) => Err(
                "no recording store is configured (tether-operator --recording-store)".to_owned(),
            ),
            Ok(Some(storage)) => match tokio::time::timeout(PROBE_TIMEOUT, storage.probe()).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(format!("the recording store is unavailable: {e}")),
                Err(_) => Err(format!(
                    "the recording store did not answer within {PROBE_TIMEOUT:?}"
                )),
            },
            Err(e) => Err(format!("the recording store cannot be used: {e}")),
        };
        *last = Some((std::time::Instant::now(), result.clone()));
        result
    }
}

/// A credentials Secret's data as store options (`data` and `stringData`, trimmed of the
/// trailing newline `kubectl create secret --from-file` often leaves).
pub fn credential_options(secret: &Secret) -> BTreeMap<String, String> {
    let mut options: BTreeMap<String, String> = secret
        .data
        .iter()
        .flatten()
        .map(|(k, v)| {
            (
                k.clone(),
                String::from_utf8_lossy(&v.0).trim_end().to_owned(),
            )
        })
        .collect();
    options.extend(
        secret
            .string_data
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.trim_end().to_owned())),
    );
    options
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_parse_and_credentials_are_refused() {
        let o: StoreOption = "endpoint=http://127.0.0.1:9000".parse().unwrap();
        assert_eq!(
            (o.key.as_str(), o.value.as_str()),
            ("endpoint", "http://127.0.0.1:9000")
        );
        let o: StoreOption = "allow_http=".parse().unwrap();
        assert_eq!(o.value, "");
        assert!(
            "endpoint"
                .parse::<StoreOption>()
                .unwrap_err()
                .contains("KEY=VALUE")
        );
        assert!(
            "=x".parse::<StoreOption>()
                .unwrap_err()
                .contains("empty key")
        );
        let leaky = RecordingSettings {
            store: Some("s3://bucket".into()),
            options: BTreeMap::from([("Secret_Access_Key".into(), "hunter2".into())]),
            ..Default::default()
        };
        let err = leaky.validate().unwrap_err().to_string();
        assert!(err.contains("credentials Secret"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn part_size_has_a_floor() {
        assert_eq!(parse_part_size("5242880").unwrap(), DEFAULT_PART_SIZE);
        let err = parse_part_size("1048576").unwrap_err();
        assert!(err.contains("minimum part size of 5242880"), "{err}");
        assert!(
            parse_part_size("8MiB")
                .unwrap_err()
                .contains("number of bytes")
        );
    }

    #[test]
    fn validation_names_the_problem() {
        let ok = RecordingSettings {
            store: Some("file:///var/lib/tether/recordings".into()),
            claim_name: Some("recordings".into()),
            ..Default::default()
        };
        ok.validate().unwrap();
        assert_eq!(ok.file_path(), Some("/var/lib/tether/recordings"));
        assert_eq!(
            ok.location().as_deref(),
            Some("file:///var/lib/tether/recordings")
        );
        let with_user = RecordingSettings {
            store: Some("s3://user:pw@bucket/prefix?token=x".into()),
            ..Default::default()
        };
        assert_eq!(with_user.location().as_deref(), Some("s3://bucket/prefix"));
        let s3_claim = RecordingSettings {
            store: Some("s3://bucket/tether".into()),
            claim_name: Some("recordings".into()),
            ..Default::default()
        };
        assert!(
            s3_claim
                .validate()
                .unwrap_err()
                .to_string()
                .contains("for file:// stores")
        );
        let claim_only = RecordingSettings {
            claim_name: Some("recordings".into()),
            ..Default::default()
        };
        assert!(claim_only.validate().is_err());
        let ftp = RecordingSettings {
            store: Some("ftp://x".into()),
            ..Default::default()
        };
        assert!(
            ftp.validate()
                .unwrap_err()
                .to_string()
                .contains("unsupported")
        );
        for bad in ["0s", "5m"] {
            let settings = RecordingSettings {
                flush_interval: bad.parse().unwrap(),
                ..Default::default()
            };
            let err = settings.validate().unwrap_err().to_string();
            assert!(err.contains("out of range"), "{bad}: {err}");
        }
        assert!(!RecordingSettings::default().retention_enabled());
        let debug = format!(
            "{:?}",
            RecordingSettings {
                options: BTreeMap::from([("endpoint".into(), "http://minio:9000".into())]),
                ..Default::default()
            }
        );
        assert!(!debug.contains("minio"), "{debug}");
    }

    #[test]
    fn secret_data_becomes_options() {
        let secret: Secret = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "s3"},
            "data": {"access_key_id": "QUtJQQ==", "secret_access_key": "aHVudGVyMgo="},
        }))
        .unwrap();
        let options = credential_options(&secret);
        assert_eq!(options["access_key_id"], "AKIA");
        assert_eq!(options["secret_access_key"], "hunter2");
    }
}
