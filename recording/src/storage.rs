//! Where recordings go: a URL naming the store and a key prefix, plus `object_store` options.
//!
//! - `file:///var/lib/tether/recordings` — the local filesystem, the embedded default;
//! - `s3://bucket/prefix` — Amazon S3 or any S3-compatible store (`endpoint`, `region`,
//!   `virtual_hosted_style_request=false` for path-style, `allow_http` for plain HTTP);
//! - `gs://bucket/prefix`, `az://container/prefix` — Google Cloud Storage and Azure Blob.
//!
//! Options use `object_store`'s configuration keys (`endpoint`, `region`, `access_key_id`,
//! `secret_access_key`, …); the provider's usual environment variables (`AWS_*`, `GOOGLE_*`,
//! `AZURE_*`) are read too, so credentials can come from a Secret mounted as environment.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use object_store::local::LocalFileSystem;
use object_store::multipart::MultipartStore;
use object_store::path::Path;
use object_store::{BackoffConfig, ClientOptions, ObjectStore, RetryConfig};

use crate::Error;

/// Option keys that hold credentials (object_store's names for S3, Azure and GCS): their
/// values are never shown, and configuration refuses them anywhere but a Secret.
const CREDENTIAL_KEYS: &[&str] = &[
    "secret_access_key",
    "aws_secret_access_key",
    "session_token",
    "aws_session_token",
    "aws_token",
    "token",
    "access_key",
    "account_key",
    "master_key",
    "azure_storage_account_key",
    "azure_storage_access_key",
    "azure_storage_master_key",
    "client_secret",
    "azure_client_secret",
    "azure_storage_client_secret",
    "sas_key",
    "sas_token",
    "azure_storage_sas_key",
    "azure_storage_sas_token",
    "bearer_token",
    "azure_storage_token",
    "service_account_key",
    "google_service_account_key",
];

/// Whether a store option key names a credential.
pub fn is_credential_key(key: &str) -> bool {
    CREDENTIAL_KEYS.contains(&key.to_ascii_lowercase().as_str())
}

/// A store's location and options, as configured (credentials included, never printed).
#[derive(Clone, PartialEq, Eq)]
pub struct StoreConfig {
    /// `file://…`, `s3://…`, `gs://…` or `az://…`.
    pub url: String,
    /// `object_store` configuration keys and values.
    pub options: BTreeMap<String, String>,
    /// How long one request may take, retries included, before it counts as failed.
    pub request_timeout: Duration,
}

impl fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let options: BTreeMap<&str, &str> = self
            .options
            .iter()
            .map(|(k, v)| {
                let shown = if is_credential_key(k) {
                    "<redacted>"
                } else {
                    v.as_str()
                };
                (k.as_str(), shown)
            })
            .collect();
        f.debug_struct("StoreConfig")
            .field("url", &self.url)
            .field("options", &options)
            .field("request_timeout", &self.request_timeout)
            .finish()
    }
}

impl StoreConfig {
    /// A store at `url` with no extra options.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            options: BTreeMap::new(),
            request_timeout: Duration::from_secs(15),
        }
    }

    /// Adds an `object_store` option.
    #[must_use]
    pub fn option(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.options.insert(key.into(), value.into());
        self
    }
}

/// An opened store: the `object_store` client, its multipart interface when it has one, and
/// the key prefix under which Tether keeps recordings.
#[derive(Clone)]
pub struct Storage {
    /// The store.
    pub store: Arc<dyn ObjectStore>,
    /// Low-level multipart uploads, which can be resumed after a crash (S3, GCS, Azure).
    /// Stores without it (the local filesystem) get the same behaviour from part objects.
    pub multipart: Option<Arc<dyn MultipartStore>>,
    /// The local filesystem store, when that is the store: uploads write their parts into
    /// one working file and rename it into place (see `upload`).
    pub local: Option<Arc<LocalFileSystem>>,
    /// Key prefix of every recording.
    pub prefix: Path,
    /// The store's URL, for messages and status (no credentials).
    pub location: String,
}

impl fmt::Debug for Storage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Storage")
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

/// Installs ring as the process-wide rustls provider unless one is installed already. The
/// stores' HTTPS clients use that provider (like every other TLS connection of Tether's)
/// instead of bundling their own.
pub fn install_crypto_provider() {
    // An error only says a provider is already installed, which is what is wanted.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Applies `options` to an object_store builder, each key parsed as that store's config key.
fn configure<B, K: std::str::FromStr>(
    mut builder: B,
    options: &BTreeMap<String, String>,
    store: &str,
    bad: &dyn Fn(String) -> Error,
    set: impl Fn(B, K, &str) -> B,
) -> Result<B, Error> {
    for (k, v) in options {
        let key = k
            .parse()
            .map_err(|_| bad(format!("unknown {store} option {k:?}")))?;
        builder = set(builder, key, v);
    }
    Ok(builder)
}

impl Storage {
    /// Opens the store a configuration names. Nothing is contacted yet.
    pub fn open(config: &StoreConfig) -> Result<Self, Error> {
        install_crypto_provider();
        let bad = |message: String| Error::Config {
            url: config.url.clone(),
            message,
        };
        let url = url::Url::parse(&config.url).map_err(|e| {
            bad(format!(
                "not a URL ({e}); use file:///path or s3://bucket/prefix"
            ))
        })?;
        let prefix = Path::parse(url.path().trim_matches('/'))
            .map_err(|e| bad(format!("invalid key prefix: {e}")))?;
        let retry = RetryConfig {
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(2),
                base: 2.0,
            },
            max_retries: 4,
            retry_timeout: config.request_timeout,
        };
        let client = ClientOptions::new()
            .with_connect_timeout(Duration::from_secs(3))
            .with_timeout(config.request_timeout);
        let bucket_url = format!("{}://{}", url.scheme(), url.host_str().unwrap_or_default());
        let mut local = None;
        let (store, multipart, prefix): (
            Arc<dyn ObjectStore>,
            Option<Arc<dyn MultipartStore>>,
            Path,
        ) = match url.scheme() {
            "file" => {
                let dir = std::path::Path::new(url.path());
                std::fs::create_dir_all(dir)
                    .map_err(|e| bad(format!("cannot create {}: {e}", dir.display())))?;
                let fs = Arc::new(
                    LocalFileSystem::new_with_prefix(dir)
                        .map_err(|e| bad(e.to_string()))?
                        .with_automatic_cleanup(true),
                );
                local = Some(fs.clone());
                (fs, None, Path::default())
            }
            "s3" | "s3a" => {
                let b = object_store::aws::AmazonS3Builder::from_env()
                    .with_url(bucket_url)
                    .with_retry(retry)
                    .with_client_options(client);
                let b = configure(b, &config.options, "S3", &bad, |b, k, v| {
                    b.with_config(k, v)
                })?;
                let s3 = Arc::new(b.build().map_err(|e| bad(e.to_string()))?);
                (s3.clone(), Some(s3), prefix)
            }
            "gs" => {
                let b = object_store::gcp::GoogleCloudStorageBuilder::from_env()
                    .with_url(bucket_url)
                    .with_retry(retry)
                    .with_client_options(client);
                let b = configure(b, &config.options, "GCS", &bad, |b, k, v| {
                    b.with_config(k, v)
                })?;
                let gcs = Arc::new(b.build().map_err(|e| bad(e.to_string()))?);
                (gcs.clone(), Some(gcs), prefix)
            }
            "az" | "azure" | "abfs" | "abfss" => {
                let b = object_store::azure::MicrosoftAzureBuilder::from_env()
                    .with_url(bucket_url)
                    .with_retry(retry)
                    .with_client_options(client);
                let b = configure(b, &config.options, "Azure", &bad, |b, k, v| {
                    b.with_config(k, v)
                })?;
                let az = Arc::new(b.build().map_err(|e| bad(e.to_string()))?);
                (az.clone(), Some(az), prefix)
            }
            other => {
                return Err(bad(format!(
                    "unsupported scheme {other:?}: use file, s3, gs or az"
                )));
            }
        };
        let mut location = url.clone();
        let _ = location.set_password(None);
        let _ = location.set_username("");
        location.set_query(None);
        Ok(Self {
            store,
            multipart,
            local,
            prefix,
            location: location.to_string(),
        })
    }

    /// The key of `relative` under the prefix.
    pub fn key(&self, relative: &str) -> Path {
        let mut key = self.prefix.clone();
        for part in relative.split('/').filter(|p| !p.is_empty()) {
            key = key.clone().join(part);
        }
        key
    }

    /// Checks that the store answers (a listing of the prefix).
    pub async fn probe(&self) -> Result<(), Error> {
        use futures::TryStreamExt;
        self.store
            .list(Some(&self.key(crate::layout::PROBE)))
            .try_next()
            .await
            .map(|_| ())
            .map_err(|e| Error::store(format!("reach {}", self.location), e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_never_printed() {
        let c = StoreConfig::new("s3://b/p")
            .option("access_key_id", "AKIA")
            .option("secret_access_key", "hunter2");
        let shown = format!("{c:?}");
        assert!(
            shown.contains("AKIA") && !shown.contains("hunter2"),
            "{shown}"
        );
    }

    #[test]
    fn urls_choose_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let file = Storage::open(&StoreConfig::new(format!(
            "file://{}",
            dir.path().display()
        )))
        .unwrap();
        assert!(file.multipart.is_none() && file.local.is_some());
        let s3 = Storage::open(
            &StoreConfig::new("s3://recordings/tether/prod")
                .option("endpoint", "http://127.0.0.1:9000")
                .option("allow_http", "true")
                .option("region", "us-east-1")
                .option("access_key_id", "a")
                .option("secret_access_key", "b"),
        )
        .unwrap();
        assert!(s3.multipart.is_some() && s3.local.is_none());
        assert_eq!(s3.prefix.as_ref(), "tether/prod");
        assert_eq!(s3.key("ns/a").as_ref(), "tether/prod/ns/a");
        let err = Storage::open(&StoreConfig::new("ftp://x")).unwrap_err();
        assert!(err.to_string().contains("unsupported scheme"), "{err}");
        let err = Storage::open(&StoreConfig::new("s3://b").option("colour", "red")).unwrap_err();
        assert!(
            err.to_string().contains("unknown S3 option \"colour\""),
            "{err}"
        );
    }
}
