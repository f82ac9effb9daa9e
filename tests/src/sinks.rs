//! Real receivers for notifications: an SMTP server (Python's aiosmtpd, optionally requiring
//! STARTTLS with a certificate from a throw-away CA) and an HTTP webhook endpoint, both on
//! loopback, recording what they received for the tests to inspect.

use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;

use crate::{ManagedProcess, PATIENCE, control_plane, eventually, free_port};

/// One message the SMTP server accepted.
#[derive(Clone, Debug, serde::Deserialize)]
pub struct Mail {
    /// Envelope sender.
    pub mail_from: String,
    /// Envelope recipients.
    pub rcpt_tos: Vec<String>,
    /// The raw message.
    pub content: String,
    /// Whether STARTTLS was in effect.
    pub tls: bool,
}

impl Mail {
    /// The value of a header (first occurrence).
    pub fn header(&self, name: &str) -> Option<String> {
        let prefix = format!("{}:", name.to_ascii_lowercase());
        self.content
            .lines()
            .take_while(|l| !l.is_empty())
            .find(|l| l.to_ascii_lowercase().starts_with(&prefix))
            .map(|l| l[prefix.len()..].trim().to_owned())
    }
}

/// A running SMTP server.
pub struct SmtpSink {
    /// The server process.
    pub process: ManagedProcess,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// The CA that signed its certificate (with TLS).
    pub ca_file: Option<PathBuf>,
    dir: tempfile::TempDir,
}

fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("TETHER_TEST_PYTHON") {
        return PathBuf::from(p);
    }
    let p = tether_controlplane::assets::cache_root().join("python/bin/python3");
    assert!(
        p.exists(),
        "the test SMTP server needs aiosmtpd: run `cargo xtask test`, which installs it into {}",
        p.display()
    );
    p
}

impl SmtpSink {
    /// Starts the server; with `tls`, it requires STARTTLS with a certificate for 127.0.0.1.
    pub async fn start(tls: bool) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let port = free_port();
        let mut cmd = Command::new(python());
        cmd.arg(concat!(env!("CARGO_MANIFEST_DIR"), "/support/smtp_sink.py"))
            .arg(format!("--port={port}"))
            .arg("--dir")
            .arg(dir.path().join("mail"));
        std::fs::create_dir_all(dir.path().join("mail")).expect("mail directory");
        let mut ca_file = None;
        if tls {
            let (ca, cert, key) = loopback_certificate();
            let (ca_path, cert_path, key_path) = (
                dir.path().join("ca.crt"),
                dir.path().join("smtp.crt"),
                dir.path().join("smtp.key"),
            );
            std::fs::write(&ca_path, ca).expect("write CA");
            std::fs::write(&cert_path, cert).expect("write certificate");
            std::fs::write(&key_path, key).expect("write key");
            cmd.arg("--cert")
                .arg(&cert_path)
                .arg("--key")
                .arg(&key_path);
            ca_file = Some(ca_path);
        }
        let process = control_plane()
            .spawn(&format!("smtp-{port}"), cmd)
            .expect("the SMTP server starts");
        let mut sink = Self {
            process,
            port,
            ca_file,
            dir,
        };
        let log = sink.process.log_path().to_path_buf();
        eventually("the SMTP server is ready", PATIENCE, || {
            let ready = std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("ready");
            std::future::ready(ready.then_some(()))
        })
        .await;
        assert!(
            sink.process.exited().is_none(),
            "{}",
            sink.process.log_tail(20)
        );
        sink
    }

    /// Every message received so far, oldest first.
    pub fn messages(&self) -> Vec<Mail> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(self.dir.path().join("mail"))
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        files.retain(|p| p.extension().is_some_and(|e| e == "json"));
        files.sort();
        files
            .iter()
            .filter_map(|p| serde_json::from_slice(&std::fs::read(p).ok()?).ok())
            .collect()
    }
}

/// A CA and a serving certificate for 127.0.0.1 signed by it (PEM: ca, cert, key).
fn loopback_certificate() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, SanType};
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key).expect("CA");
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
    params
        .subject_alt_names
        .push(SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()));
    let cert = params.signed_by(&key, &ca).expect("certificate");
    (ca.pem(), cert.pem(), key.serialize_pem())
}

/// One webhook call.
#[derive(Clone, Debug)]
pub struct Hook {
    /// The Authorization header, if any.
    pub authorization: Option<String>,
    /// The JSON body.
    pub body: serde_json::Value,
}

/// An HTTP endpoint recording every POST to `/hook`.
pub struct WebhookSink {
    /// Its port on 127.0.0.1.
    pub port: u16,
    received: Arc<Mutex<Vec<Hook>>>,
    task: tokio::task::JoinHandle<()>,
}

impl WebhookSink {
    /// Starts the endpoint in the calling test's runtime.
    pub async fn start() -> Self {
        let received = Arc::new(Mutex::new(Vec::new()));
        let app = Router::new()
            .route(
                "/hook",
                post(
                    |State(store): State<Arc<Mutex<Vec<Hook>>>>,
                     headers: HeaderMap,
                     body: Bytes| async move {
                        let hook = Hook {
                            authorization: headers
                                .get("authorization")
                                .and_then(|v| v.to_str().ok())
                                .map(str::to_owned),
                            body: serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
                        };
                        store.lock().expect("not poisoned").push(hook);
                        "ok"
                    },
                ),
            )
            .with_state(received.clone());
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .expect("bind the webhook port");
        let port = listener.local_addr().expect("address").port();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            port,
            received,
            task,
        }
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }

    /// Every call so far.
    pub fn received(&self) -> Vec<Hook> {
        self.received.lock().expect("not poisoned").clone()
    }
}

impl Drop for WebhookSink {
    fn drop(&mut self) {
        self.task.abort();
    }
}
