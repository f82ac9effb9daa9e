//! Notifications of AssistanceRequest changes by email (SMTP, with STARTTLS or implicit TLS
//! and credentials from a Secret) and by a generic JSON webhook.
//!
//! Delivery never blocks reconciliation: reconciles submit notices to a bounded queue served
//! by one owned worker, which retries with backoff and records the outcome on the request
//! (`status.notified`, condition `Notified`) and in metrics. A notice that could not be
//! delivered is offered again by later reconciles, after a growing pause.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use lettre::message::header::ContentType;
use lettre::transport::smtp::authentication::Credentials as SmtpCredentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use prometheus::IntCounterVec;
use tether_crds::AssistanceRequest;
use tether_crds::assistance_request::condition_types as ct;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::controllers::assistance_request::plan::Notice;
use crate::controllers::remote_session::plan::second_time;

/// Field manager for what the notifier writes on requests.
pub const FIELD_MANAGER: &str = "tether-operator/notifier";

/// How the SMTP connection is secured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SmtpTls {
    /// Plain connection upgraded with STARTTLS (required), usually port 587.
    Starttls,
    /// TLS from the first byte, usually port 465.
    Tls,
    /// No encryption (only for relays on a trusted network).
    None,
}

/// Email settings.
#[derive(Clone, Debug)]
pub struct EmailConfig {
    /// SMTP server host name.
    pub host: String,
    /// SMTP server port.
    pub port: u16,
    /// How the connection is secured.
    pub tls: SmtpTls,
    /// Extra CA certificate(s) (PEM) trusted for the SMTP server.
    pub ca_file: Option<PathBuf>,
    /// Sender address.
    pub from: String,
    /// SMTP user name, if the server requires authentication.
    pub username: Option<String>,
    /// SMTP password.
    pub password: Option<String>,
}

/// Webhook settings.
#[derive(Clone, Debug)]
pub struct WebhookConfig {
    /// URL receiving a POST with a JSON body per change.
    pub url: String,
    /// Bearer token sent in `Authorization`.
    pub token: Option<String>,
    /// Extra CA certificate(s) (PEM) trusted for an https URL.
    pub ca_file: Option<PathBuf>,
}

/// A failure to set up a notification channel.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// A CA file could not be read.
    #[error("failed to read CA file {path}")]
    CaFile {
        /// The file.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The SMTP settings are not usable.
    #[error("invalid SMTP settings: {0}")]
    Smtp(String),
    /// The webhook settings are not usable.
    #[error("invalid webhook settings: {0}")]
    Webhook(String),
}

/// The HTTP(S) client posting webhooks.
type WebhookClient = HttpClient<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

struct Job {
    namespace: String,
    name: String,
    uid: String,
    notice: Notice,
}

struct Channels {
    email: Option<(AsyncSmtpTransport<Tokio1Executor>, lettre::message::Mailbox)>,
    webhook: Option<(WebhookClient, WebhookConfig)>,
}

/// Accepts notices from reconciles; cheap to clone.
#[derive(Clone)]
pub struct Notifier {
    tx: mpsc::Sender<Job>,
    /// (uid, key) → not before: in flight, or failed and pausing.
    pending: Arc<Mutex<HashMap<(String, String), Instant>>>,
}

/// The worker that delivers notices; run it until shutdown.
pub struct Worker {
    rx: mpsc::Receiver<Job>,
    channels: Arc<Channels>,
    pending: Arc<Mutex<HashMap<(String, String), Instant>>>,
    client: kube::Client,
    metric: IntCounterVec,
}

fn read_ca(path: &Option<PathBuf>) -> Result<Option<Vec<u8>>, NotifyError> {
    path.as_ref()
        .map(|p| {
            std::fs::read(p).map_err(|source| NotifyError::CaFile {
                path: p.display().to_string(),
                source,
            })
        })
        .transpose()
}

fn email_channel(
    config: &EmailConfig,
) -> Result<(AsyncSmtpTransport<Tokio1Executor>, lettre::message::Mailbox), NotifyError> {
    let from = config
        .from
        .parse()
        .map_err(|e| NotifyError::Smtp(format!("sender {:?}: {e}", config.from)))?;
    let mut params = TlsParameters::builder(config.host.clone());
    if let Some(pem) = read_ca(&config.ca_file)? {
        let cert =
            Certificate::from_pem(&pem).map_err(|e| NotifyError::Smtp(format!("CA: {e}")))?;
        params = params.add_root_certificate(cert);
    }
    let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&config.host)
        .port(config.port)
        .timeout(Some(Duration::from_secs(10)));
    if config.tls != SmtpTls::None {
        let params = params
            .build_rustls()
            .map_err(|e| NotifyError::Smtp(format!("TLS: {e}")))?;
        builder = builder.tls(match config.tls {
            SmtpTls::Starttls => Tls::Required(params),
            _ => Tls::Wrapper(params),
        });
    }
    if let (Some(user), Some(pass)) = (&config.username, &config.password) {
        builder = builder.credentials(SmtpCredentials::new(user.clone(), pass.clone()));
    }
    Ok((builder.build(), from))
}

fn webhook_channel(config: &WebhookConfig) -> Result<WebhookClient, NotifyError> {
    let uri: hyper::Uri = config
        .url
        .parse()
        .map_err(|e| NotifyError::Webhook(format!("URL {:?}: {e}", config.url)))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err(NotifyError::Webhook(format!(
            "URL {:?} is not http(s)",
            config.url
        )));
    }
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(pem) = read_ca(&config.ca_file)? {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| NotifyError::Webhook(format!("CA: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| NotifyError::Webhook(format!("CA: {e}")))?;
        }
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| NotifyError::Webhook(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .build();
    Ok(HttpClient::builder(TokioExecutor::new()).build(connector))
}

/// Creates the notifier and its worker; `None` when neither email nor webhook is configured.
pub fn notifier(
    email: Option<EmailConfig>,
    webhook: Option<WebhookConfig>,
    client: kube::Client,
    metric: IntCounterVec,
) -> Result<Option<(Notifier, Worker)>, NotifyError> {
    if email.is_none() && webhook.is_none() {
        return Ok(None);
    }
    let channels = Channels {
        email: email.as_ref().map(email_channel).transpose()?,
        webhook: match webhook {
            Some(config) => Some((webhook_channel(&config)?, config)),
            None => None,
        },
    };
    let (tx, rx) = mpsc::channel(1024);
    let pending = Arc::new(Mutex::new(HashMap::new()));
    Ok(Some((
        Notifier {
            tx,
            pending: pending.clone(),
        },
        Worker {
            rx,
            channels: Arc::new(channels),
            pending,
            client,
            metric,
        },
    )))
}

impl Notifier {
    /// Offers a notice for delivery. Returns immediately: a notice already in flight, or
    /// pausing after a failure, is skipped; a full queue drops it (a later reconcile offers
    /// it again).
    pub fn submit(&self, request: &AssistanceRequest, notice: Notice) {
        let uid = request.metadata.uid.clone().unwrap_or_default();
        let key = (uid.clone(), notice.key.clone());
        {
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            if pending
                .get(&key)
                .is_some_and(|until| Instant::now() < *until)
            {
                return;
            }
            // In flight: hold until the worker finishes (it sets the next time).
            pending.insert(key.clone(), Instant::now() + Duration::from_secs(3600));
        }
        let job = Job {
            namespace: request.metadata.namespace.clone().unwrap_or_default(),
            name: request.metadata.name.clone().unwrap_or_default(),
            uid,
            notice,
        };
        if self.tx.try_send(job).is_err() {
            warn!("Dropped a notification: the queue is full");
            self.pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&key);
        }
    }
}

impl Worker {
    /// Delivers notices, four at a time, until `shutdown`.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let limit = Arc::new(Semaphore::new(4));
        let mut tasks = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                job = self.rx.recv() => {
                    let Some(job) = job else { break };
                    let Ok(permit) = limit.clone().acquire_owned().await else { break };
                    let channels = self.channels.clone();
                    let pending = self.pending.clone();
                    let client = self.client.clone();
                    let metric = self.metric.clone();
                    tasks.spawn(async move {
                        deliver(job, &channels, &pending, client, &metric).await;
                        drop(permit);
                    });
                }
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
                () = shutdown.cancelled() => break,
            }
        }
        tasks.shutdown().await;
    }
}

async fn deliver(
    job: Job,
    channels: &Channels,
    pending: &Mutex<HashMap<(String, String), Instant>>,
    client: kube::Client,
    metric: &IntCounterVec,
) {
    let mut failures = Vec::new();
    if let Some((transport, from)) = &channels.email
        && !job.notice.recipients.is_empty()
    {
        match retry(|| send_email(transport, from, &job.notice)).await {
            Ok(()) => metric.with_label_values(&["email", "delivered"]).inc(),
            Err(e) => {
                metric.with_label_values(&["email", "failed"]).inc();
                failures.push(format!("email: {e}"));
            }
        }
    }
    if let Some((http, config)) = &channels.webhook {
        match retry(|| post_webhook(http, config, &job.notice)).await {
            Ok(()) => metric.with_label_values(&["webhook", "delivered"]).inc(),
            Err(e) => {
                metric.with_label_values(&["webhook", "failed"]).inc();
                failures.push(format!("webhook: {e}"));
            }
        }
    }
    let key = (job.uid.clone(), job.notice.key.clone());
    let delivered = failures.is_empty();
    {
        let mut pending = pending.lock().unwrap_or_else(|e| e.into_inner());
        if delivered {
            pending.remove(&key);
        } else {
            // Offered again by a later reconcile, but not for a while.
            pending.insert(key, Instant::now() + Duration::from_secs(120));
        }
    }
    let now = Timestamp::now();
    let (status, reason, message) = if delivered {
        (
            "True",
            "Delivered",
            format!("notified: {}", job.notice.subject),
        )
    } else {
        ("False", "DeliveryFailed", failures.join("; "))
    };
    let mut patch_status = serde_json::json!({
        "conditions": [{
            "type": ct::NOTIFIED, "status": status, "reason": reason, "message": message,
            "lastTransitionTime": second_time(now),
        }],
    });
    if delivered {
        patch_status["notified"] = job.notice.key.clone().into();
        info!(request = %job.name, namespace = %job.namespace, key = %job.notice.key, "Notified about AssistanceRequest");
    } else {
        warn!(request = %job.name, namespace = %job.namespace, error = %message, "Failed to notify about AssistanceRequest");
    }
    let patch = serde_json::json!({
        "apiVersion": "tether.dev/v1alpha1", "kind": "AssistanceRequest", "status": patch_status,
    });
    let api: Api<AssistanceRequest> = Api::namespaced(client, &job.namespace);
    if let Err(e) = api
        .patch_status(
            &job.name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
    {
        warn!(request = %job.name, error = %e, "Failed to record notification status");
    }
}

/// Up to 4 attempts, 1 s, 2 s and 4 s apart.
async fn retry<F, Fut>(mut attempt: F) -> Result<(), String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let mut delay = Duration::from_secs(1);
    let mut last = String::new();
    for n in 0..4 {
        match attempt().await {
            Ok(()) => return Ok(()),
            Err(e) => last = e,
        }
        if n < 3 {
            tokio::time::sleep(delay).await;
            delay *= 2;
        }
    }
    Err(last)
}

async fn send_email(
    transport: &AsyncSmtpTransport<Tokio1Executor>,
    from: &lettre::message::Mailbox,
    notice: &Notice,
) -> Result<(), String> {
    let mut builder = Message::builder()
        .from(from.clone())
        .subject(notice.subject.clone())
        .header(ContentType::TEXT_PLAIN);
    for to in &notice.recipients {
        let mailbox = to.parse().map_err(|e| format!("recipient {to:?}: {e}"))?;
        builder = builder.to(mailbox);
    }
    let message = builder
        .body(notice.body.clone())
        .map_err(|e| format!("building the message: {e}"))?;
    transport
        .send(message)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

async fn post_webhook(
    http: &WebhookClient,
    config: &WebhookConfig,
    notice: &Notice,
) -> Result<(), String> {
    let body = serde_json::to_vec(&notice.payload).map_err(|e| e.to_string())?;
    let mut request = hyper::Request::post(&config.url).header("content-type", "application/json");
    if let Some(token) = &config.token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let request = request
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let response = tokio::time::timeout(Duration::from_secs(10), http.request(request))
        .await
        .map_err(|_| "timed out after 10s".to_owned())?
        .map_err(|e| e.to_string())?;
    let status = response.status();
    // Drain the body so the connection can be reused.
    let _ = response.into_body().collect().await;
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("the webhook answered {status}"))
    }
}
