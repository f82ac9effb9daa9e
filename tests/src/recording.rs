//! Shared steps of the session-recording tests: a cluster recording to a test S3 server,
//! sessions, waits on their status, and checks with the real `asciinema`.

#![allow(clippy::unwrap_used)] // Test support fails loudly on any unexpected error.

use std::path::{Path, PathBuf};
use std::process::Command;

use kube::api::{Api, Patch, PatchParams};
use sha2::{Digest, Sha256};
use tether_crds::RemoteSession;
use tether_crds::remote_session::{RecordingStatus, SessionPhase};

use crate::dataplane::Cluster;
use crate::s3::S3Server;
use crate::{PATIENCE, TEST_MANAGER, control_plane, eventually};

/// The device's user says yes to every technician.
pub const CONSENTING: &[&str] = &["--consent=always", "--logged-on-user=dana"];

/// Key prefix of the recordings in the test bucket.
pub const PREFIX: &str = "recordings";

/// Relay flags that record to `s3` under [`PREFIX`], flushing every 500ms.
pub fn relay_args(s3: &S3Server) -> Vec<String> {
    vec![
        format!("--recording-store=s3://{}/{PREFIX}", s3.bucket()),
        format!("--recording-option=endpoint={}", s3.endpoint()),
        format!("--recording-option=region={}", s3.region()),
        format!(
            "--recording-credentials-file={}",
            s3.credentials_file().display()
        ),
        "--recording-option=allow_http=true".into(),
        "--recording-option=virtual_hosted_style_request=false".into(),
        "--recording-flush-interval=500ms".into(),
    ]
}

/// Operator and relay for a test namespace, recording to `s3` (or, without it, where the
/// operator's settings say).
pub async fn start(prefix: &str, s3: Option<&S3Server>) -> Cluster {
    let args = s3.map(relay_args).unwrap_or_default();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Cluster::start(prefix, &args).await
}

pub use crate::output::ok;

/// A recorded desktop session whose screen changed size while a viewer watched
/// ([`record_across_a_resize`]), ended and open to the auditor dave.
pub struct ResizedRecording {
    /// The cluster; the session is `screen` in its namespace.
    pub cluster: Cluster,
    /// The screen as the X server had it at the end (800×600).
    pub live: crate::desktop::Rgb,
    /// A directory for the test's files.
    pub dir: tempfile::TempDir,
    _agent: crate::dataplane::Agent,
    _xterm: crate::desktop::KillOnDrop,
    _x: crate::desktop::Xvfb,
}

/// A 640×480 screen recorded (`Required`) for a cluster named after `prefix`, resized to
/// 800×600 while a viewer watches ([`crate::desktop::view_across_a_resize`]), then the
/// session ended with its recording `Complete` and dave made an auditor.
pub async fn record_across_a_resize(prefix: &str) -> ResizedRecording {
    use crate::desktop::{Xvfb, decorate, recorded_screen_session, view_across_a_resize};
    let mut x = Xvfb::start_resizable(640, 480);
    let xterm = decorate(&x, "50x8+30+30", "Tether resize");
    let cluster = start(prefix, None).await;
    let agent = recorded_screen_session(&cluster, &x).await;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let live = view_across_a_resize(&cluster.namespace, &mut x, dir.path()).await;
    end_and_audit_screen(&cluster).await;
    ResizedRecording {
        cluster,
        live,
        dir,
        _agent: agent,
        _xterm: xterm,
        _x: x,
    }
}

/// Ends the session `screen` (as the administrator), waits until its recording is
/// `Complete`, and makes dave an auditor of its namespace ([`grant_auditors`]).
pub async fn end_and_audit_screen(cluster: &Cluster) {
    let ns = &cluster.namespace;
    ok(crate::dataplane::kubectl_tether(
        ns,
        "admin",
        &["terminate", "screen"],
        None,
    ));
    wait_recording(cluster, "screen", "Complete").await;
    grant_auditors(ns);
}

/// Makes group `auditors` (dave) auditors of namespace `ns`: `tether-auditor` there, and
/// `tether-recording-requester` cluster-wide (certificate requests are cluster-scoped).
pub fn grant_auditors(ns: &str) {
    crate::kubectl_ok(
        control_plane(),
        "admin",
        &[
            "create",
            "rolebinding",
            "auditors",
            "-n",
            ns,
            "--clusterrole=tether-auditor",
            "--group=auditors",
        ],
    );
    let crb = format!("auditors-{ns}");
    crate::kubectl_ok(
        control_plane(),
        "admin",
        &[
            "create",
            "clusterrolebinding",
            &crb,
            "--clusterrole=tether-recording-requester",
            "--group=auditors",
        ],
    );
}

/// RemoteSessions of the test namespace, as the admin.
pub async fn api(cluster: &Cluster) -> Api<RemoteSession> {
    let admin = control_plane().client("admin").await.unwrap();
    Api::namespaced(admin, &cluster.namespace)
}

/// Applies an interactive session on `laptop` with the given recording policy.
pub async fn session(cluster: &Cluster, name: &str, recording: &str) {
    let obj = serde_json::json!({
        "apiVersion": "tether.dev/v1alpha1", "kind": "RemoteSession", "metadata": {"name": name},
        "spec": {"device": "laptop", "mode": "Interactive", "recording": recording},
    });
    api(cluster)
        .await
        .patch(name, &PatchParams::apply(TEST_MANAGER), &Patch::Apply(&obj))
        .await
        .unwrap();
}

/// Waits until `check` finds what it looks for in the session; fails with its last status.
pub async fn wait_for<T>(
    cluster: &Cluster,
    name: &str,
    what: &str,
    check: impl Fn(&RemoteSession) -> Option<T>,
) -> T {
    let api = api(cluster).await;
    let last = std::sync::Mutex::new(None);
    let found = tokio::time::timeout(
        PATIENCE,
        eventually(&format!("{name}: {what}"), PATIENCE * 2, || {
            let api = api.clone();
            let check = &check;
            let last = &last;
            async move {
                let s = api.get(name).await.ok()?;
                let found = check(&s);
                *last.lock().unwrap() = s.status;
                found
            }
        }),
    )
    .await;
    found.unwrap_or_else(|_| {
        panic!(
            "timed out after {PATIENCE:?} waiting until {name}: {what}; last status: {:#?}",
            last.lock().unwrap()
        )
    })
}

/// Waits until the session is in `phase`.
pub async fn wait_phase(cluster: &Cluster, name: &str, phase: SessionPhase) -> RemoteSession {
    wait_for(cluster, name, &format!("phase {phase}"), |s| {
        (s.status.as_ref()?.phase == Some(phase)).then(|| s.clone())
    })
    .await
}

/// Waits until `status.recording` is in `state`.
pub async fn wait_recording(cluster: &Cluster, name: &str, state: &str) -> RecordingStatus {
    wait_for(cluster, name, &format!("recording {state}"), |s| {
        let r = s.status.as_ref()?.recording.clone()?;
        (r.state == state).then_some(r)
    })
    .await
}

/// The `Recording` condition's (status, reason, message), once it is `status`.
pub async fn wait_recording_condition(
    cluster: &Cluster,
    name: &str,
    status: &str,
) -> (String, String) {
    wait_for(cluster, name, &format!("Recording={status}"), |s| {
        s.status
            .as_ref()?
            .conditions
            .iter()
            .find(|c| c.type_ == "Recording" && c.status == status)
            .map(|c| (c.reason.clone(), c.message.clone()))
    })
    .await
}

/// SHA-256 in hex.
pub fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// What `asciinema cat` prints for a recording: it fails on anything that is not a valid
/// asciicast.
pub fn asciinema_cat(cast: &Path) -> String {
    let asciinema = std::env::var_os("TETHER_TEST_ASCIINEMA")
        .map_or_else(|| PathBuf::from("asciinema"), PathBuf::from);
    let out = Command::new(&asciinema)
        .arg("cat")
        .arg(cast)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {} ({e}); `cargo xtask test` installs it",
                asciinema.display()
            )
        });
    assert!(
        out.status.success(),
        "asciinema refused {}: {}",
        cast.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The session's objects in the bucket, by name (`<recording>.<kind>….<ext>`).
pub async fn objects(s3: &S3Server, ns: &str, name: &str) -> Vec<(String, Vec<u8>)> {
    let mut found = Vec::new();
    for key in s3
        .keys(Some(&format!("{PREFIX}/sessions/{ns}/{name}")))
        .await
    {
        let file = key.rsplit('/').next().unwrap().to_owned();
        found.push((file, s3.get(&key).await));
    }
    found
}

/// An event log's lines.
pub fn events(body: &[u8]) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(body)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}
