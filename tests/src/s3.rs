//! A real S3-compatible object store for tests: versitygw (built and cached with the control
//! plane) serving a temporary directory through its posix backend on a free loopback port,
//! with one bucket, random credentials, and an `object_store` client for assertions. Tests can
//! stop it mid-session and bring it back with the same data.

use std::io::Read;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::{BackoffConfig, ObjectMeta, ObjectStore, ObjectStoreExt, RetryConfig};
use tether_controlplane::process::{ManagedProcess, Supervisor};

use crate::{PATIENCE, free_port, http_get};

/// Unauthenticated path versitygw answers `200` on once it serves requests.
const HEALTH_PATH: &str = "/health";

/// A running (or deliberately stopped) versitygw server with one bucket.
///
/// Its directory holds the objects (`data/<bucket>/…`), their metadata (`meta/`, a sidecar
/// directory rather than extended attributes, so any filesystem works) and the server's log
/// (`versitygw.log`, appended across restarts). Dropping the server kills it and removes the
/// directory; a watchdog does the same if the test binary dies without dropping it.
pub struct S3Server {
    process: Option<ManagedProcess>,
    supervisor: Supervisor,
    binary: PathBuf,
    port: u16,
    access_key: String,
    secret_key: String,
}

impl S3Server {
    /// Region the server reports and clients sign for.
    pub const REGION: &str = "us-east-1";

    /// The bucket that exists from the start.
    pub const BUCKET: &str = "tether-test";

    /// Starts versitygw on a free loopback port with a fresh directory, one bucket and random
    /// credentials, and waits until it serves requests.
    ///
    /// # Panics
    ///
    /// When versitygw is not built (`cargo xtask controlplane` builds it) or does not become
    /// ready within [`PATIENCE`]; the message includes its log.
    pub async fn start() -> Self {
        // Clients of this server (from `store()` or built by tests) need a rustls provider.
        tether_recording::storage::install_crypto_provider();
        let binary = tether_controlplane::Assets::from_env()
            .require("versitygw")
            .unwrap_or_else(|e| panic!("{e}"));
        let dir = tempfile::Builder::new()
            .prefix("tether-s3-")
            .tempdir()
            .expect("a temporary directory")
            .keep();
        // A bucket in the posix backend is a top-level directory.
        std::fs::create_dir_all(dir.join("data").join(Self::BUCKET)).expect("bucket directory");
        std::fs::create_dir_all(dir.join("meta")).expect("metadata directory");
        let supervisor = Supervisor::new(dir, false).expect("the process watchdog starts");
        let mut server = Self {
            process: None,
            supervisor,
            binary,
            port: free_port(),
            access_key: format!("TETHER{}", random_hex(7).to_ascii_uppercase()),
            secret_key: random_hex(20),
        };
        server.launch().await;
        server
    }

    /// The URL clients connect to: `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The bucket created at start.
    pub fn bucket(&self) -> &str {
        Self::BUCKET
    }

    /// The access key id of the server's root account.
    pub fn access_key(&self) -> &str {
        &self.access_key
    }

    /// The secret access key of the server's root account.
    pub fn secret_key(&self) -> &str {
        &self.secret_key
    }

    /// The region (`us-east-1`).
    pub fn region(&self) -> &str {
        Self::REGION
    }

    /// Whether the server process is running.
    pub fn is_running(&mut self) -> bool {
        self.process.as_mut().is_some_and(|p| p.exited().is_none())
    }

    /// The last `lines` lines of the server's log, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        tether_controlplane::process::log_tail(&self.log_path(), lines)
    }

    /// Kills the server at once (SIGKILL), as an outage would, keeping its data. Requests
    /// fail until [`restart`](Self::restart). A no-op when already stopped.
    pub fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill();
        }
    }

    /// Starts the server again on the same port with the same data and credentials (stopping
    /// it first if it runs), and waits until it serves requests.
    pub async fn restart(&mut self) {
        self.stop();
        self.launch().await;
    }

    /// A client for the bucket, with few, quick retries so that a stopped server shows up as
    /// an error within seconds.
    pub fn store(&self) -> AmazonS3 {
        AmazonS3Builder::new()
            .with_endpoint(self.endpoint())
            .with_bucket_name(self.bucket())
            .with_region(self.region())
            .with_access_key_id(self.access_key())
            .with_secret_access_key(self.secret_key())
            .with_allow_http(true)
            .with_virtual_hosted_style_request(false)
            .with_retry(RetryConfig {
                backoff: BackoffConfig {
                    init_backoff: Duration::from_millis(50),
                    max_backoff: Duration::from_millis(500),
                    base: 2.0,
                },
                max_retries: 3,
                retry_timeout: Duration::from_secs(10),
            })
            .build()
            .expect("a valid S3 client configuration")
    }

    /// Every object whose key starts with `prefix` (all objects for `None`), sorted by key.
    pub async fn list(&self, prefix: Option<&str>) -> Vec<ObjectMeta> {
        let prefix = prefix.map(ObjectPath::from);
        let mut objects: Vec<ObjectMeta> = self
            .store()
            .list(prefix.as_ref())
            .try_collect()
            .await
            .unwrap_or_else(|e| panic!("failed to list {prefix:?}: {e}"));
        objects.sort_by(|a, b| a.location.cmp(&b.location));
        objects
    }

    /// The keys of every object under `prefix`, sorted.
    pub async fn keys(&self, prefix: Option<&str>) -> Vec<String> {
        self.list(prefix)
            .await
            .into_iter()
            .map(|o| o.location.to_string())
            .collect()
    }

    /// The content of the object `key`.
    ///
    /// # Panics
    ///
    /// When the object does not exist or cannot be read.
    pub async fn get(&self, key: &str) -> Vec<u8> {
        let read = async {
            self.store()
                .get(&ObjectPath::from(key))
                .await?
                .bytes()
                .await
        };
        read.await
            .unwrap_or_else(|e| panic!("failed to read object {key:?}: {e}"))
            .to_vec()
    }

    /// A credentials file for `tether-relay --recording-credentials-file` (`KEY=VALUE` lines),
    /// written once beside the server's data; credentials never go on a command line.
    pub fn credentials_file(&self) -> PathBuf {
        let path = self.supervisor.dir().join("relay-credentials.env");
        if !path.exists() {
            std::fs::write(
                &path,
                format!(
                    "access_key_id={}\nsecret_access_key={}\n",
                    self.access_key(),
                    self.secret_key()
                ),
            )
            .expect("write the relay's credentials file");
        }
        path
    }

    fn log_path(&self) -> PathBuf {
        self.supervisor.dir().join("versitygw.log")
    }

    /// Spawns versitygw and waits until its health endpoint answers. Without `--quiet` it logs
    /// one line per request (status, method, path, error), which failure messages include.
    async fn launch(&mut self) {
        let dir = self.supervisor.dir();
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--port")
            .arg(format!("127.0.0.1:{}", self.port))
            .args(["--region", Self::REGION, "--health", HEALTH_PATH])
            .arg("posix")
            .arg("--sidecar")
            .arg(dir.join("meta"))
            .arg(dir.join("data"))
            // Credentials through the environment, so they are not visible in `ps`.
            .env("ROOT_ACCESS_KEY_ID", &self.access_key)
            .env("ROOT_SECRET_ACCESS_KEY", &self.secret_key);
        let process = self
            .supervisor
            .spawn("versitygw", cmd)
            .expect("versitygw starts");
        let process = self.process.insert(process);
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = process.exited() {
                panic!(
                    "versitygw exited ({status}) before it was ready:\n{}",
                    process.log_tail(40)
                );
            }
            if let Ok((200, _)) = http_get(self.port, HEALTH_PATH).await {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "versitygw was not ready on port {} after {PATIENCE:?}:\n{}",
                self.port,
                process.log_tail(40)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        // The process first, then the supervisor (field order) removes the directory.
        self.stop();
    }
}

/// `bytes` random bytes from the kernel, hex-encoded.
fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .expect("random bytes from /dev/urandom");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}
