//! Session recording end to end: operator, relay, agent and `kubectl tether` as real
//! processes, recording to a real S3 server (versitygw) or the local filesystem. Recordings
//! are checked with the real `asciinema` player and against the bytes that were sent.

#![allow(clippy::unwrap_used)] // Tests fail loudly on any unexpected error.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use kube::api::{Api, Patch, PatchParams};
use sha2::{Digest, Sha256};
use tether_crds::RemoteSession;
use tether_crds::remote_session::{RecordingStatus, SessionPhase};
use tether_e2e::dataplane::{Agent, Cluster, kubectl_tether};
use tether_e2e::s3::S3Server;
use tether_e2e::{PATIENCE, TEST_MANAGER, control_plane, eventually};

/// The device's user says yes to every technician.
const CONSENTING: &[&str] = &["--consent=always", "--logged-on-user=dana"];

/// Key prefix of the recordings in the test bucket.
const PREFIX: &str = "recordings";

fn relay_args(s3: &S3Server) -> Vec<String> {
    vec![
        format!("--recording-store=s3://{}/{PREFIX}", s3.bucket()),
        format!("--recording-option=endpoint={}", s3.endpoint()),
        format!("--recording-option=region={}", s3.region()),
        format!("--recording-option=access_key_id={}", s3.access_key()),
        format!("--recording-option=secret_access_key={}", s3.secret_key()),
        "--recording-option=allow_http=true".into(),
        "--recording-option=virtual_hosted_style_request=false".into(),
        "--recording-flush-interval=500ms".into(),
    ]
}

async fn start(prefix: &str, s3: Option<&S3Server>) -> Cluster {
    let args = s3.map(relay_args).unwrap_or_default();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Cluster::start(prefix, &args).await
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "kubectl tether failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn api(cluster: &Cluster) -> Api<RemoteSession> {
    let admin = control_plane().client("admin").await.unwrap();
    Api::namespaced(admin, &cluster.namespace)
}

async fn session(cluster: &Cluster, name: &str, recording: &str) {
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

async fn wait_for<T>(
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

async fn wait_phase(cluster: &Cluster, name: &str, phase: SessionPhase) -> RemoteSession {
    wait_for(cluster, name, &format!("phase {phase}"), |s| {
        (s.status.as_ref()?.phase == Some(phase)).then(|| s.clone())
    })
    .await
}

async fn wait_recording(cluster: &Cluster, name: &str, state: &str) -> RecordingStatus {
    wait_for(cluster, name, &format!("recording {state}"), |s| {
        let r = s.status.as_ref()?.recording.clone()?;
        (r.state == state).then_some(r)
    })
    .await
}

/// The `Recording` condition's (status, reason, message), once it is `status`.
async fn wait_recording_condition(cluster: &Cluster, name: &str, status: &str) -> (String, String) {
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

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// What `asciinema cat` prints for a recording: it fails on anything that is not a valid
/// asciicast.
fn asciinema_cat(cast: &Path) -> String {
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
async fn objects(s3: &S3Server, ns: &str, name: &str) -> Vec<(String, Vec<u8>)> {
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

fn events(body: &[u8]) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(body)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test]
async fn a_recorded_session_is_playable_and_accounts_for_every_byte() {
    let s3 = S3Server::start().await;
    let cluster = start("rec", Some(&s3)).await;
    let ns = cluster.namespace.clone();
    let agent = Agent::enroll_and_run(&ns, "laptop", cluster.relay.port, CONSENTING).await;
    session(&cluster, "audited", "Required").await;
    wait_phase(&cluster, "audited", SessionPhase::Pending).await;

    // The output is computed on the device, so only the recording of the output has it.
    let out = ok(kubectl_tether(
        &ns,
        "carol",
        &[
            "shell",
            "audited",
            "--",
            "sh",
            "-c",
            "echo recorded-$((6*7))",
        ],
        None,
    ));
    assert!(out.contains("recorded-42"), "{out}");

    // A file each way through the file manager.
    let work = tempfile::tempdir().unwrap();
    let upload = work.path().join("up.bin");
    let body: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&upload, &body).unwrap();
    let sum = sha256(&body);
    ok(kubectl_tether(
        &ns,
        "carol",
        &["cp", upload.to_str().unwrap(), "audited:/home/up.bin"],
        None,
    ));
    std::fs::write(agent.home.join("down.txt"), "from the device").unwrap();
    let down = work.path().join("down.txt");
    ok(kubectl_tether(
        &ns,
        "carol",
        &["cp", "audited:/home/down.txt", down.to_str().unwrap()],
        None,
    ));

    // Chat both ways, a file sent through chat, the process list.
    assert!(
        agent
            .user(&["say", "the printer is stuck"])
            .status
            .success()
    );
    let note = work.path().join("note.txt");
    std::fs::write(&note, "try turning it off and on").unwrap();
    ok(kubectl_tether(
        &ns,
        "carol",
        &[
            "chat",
            "audited",
            "--message",
            "hello from the helpdesk",
            "--send-file",
            note.to_str().unwrap(),
            "--wait",
            "2s",
        ],
        None,
    ));
    ok(kubectl_tether(&ns, "carol", &["ps", "audited"], None));

    ok(kubectl_tether(
        &ns,
        "admin",
        &["terminate", "audited"],
        None,
    ));
    let status = wait_recording(&cluster, "audited", "Complete").await;
    assert!(
        status.location.as_deref().unwrap().starts_with("s3://"),
        "{status:?}"
    );

    let stored = objects(&s3, &ns, "audited").await;
    let (cast_name, cast) = stored
        .iter()
        .find(|(n, _)| n.ends_with(".cast"))
        .unwrap_or_else(|| panic!("no shell recording in {stored:?}"));
    let (_, log) = stored
        .iter()
        .find(|(n, _)| n.ends_with(".events.jsonl"))
        .unwrap();
    // status.recording lists each object with its size and checksum.
    for (name, bytes) in stored.iter().filter(|(n, _)| !n.ends_with(".json")) {
        let listed = status
            .objects
            .iter()
            .find(|o| &o.name == name)
            .unwrap_or_else(|| panic!("{name} not in {status:?}"));
        assert_eq!(listed.bytes, bytes.len() as i64, "{name}");
        assert_eq!(
            listed.sha256.as_deref(),
            Some(sha256(bytes).as_str()),
            "{name}"
        );
    }
    assert_eq!(
        status.bytes,
        status.objects.iter().map(|o| o.bytes).sum::<i64>()
    );

    let cast_file = work.path().join(cast_name);
    std::fs::write(&cast_file, cast).unwrap();
    let played = asciinema_cat(&cast_file);
    assert!(played.contains("recorded-42"), "{played}");

    let events = events(log);
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    for kind in [
        "recordingStarted",
        "technicianJoined",
        "channelOpened",
        "channelClosed",
        "sessionEnded",
    ] {
        assert!(kinds.contains(&kind), "{kind} missing from {kinds:?}");
    }
    let transfer = |direction: &str| {
        events
            .iter()
            .find(|e| e["event"] == "fileTransfer" && e["direction"] == direction)
            .unwrap_or_else(|| panic!("no {direction} in {events:#?}"))
            .clone()
    };
    let up = transfer("upload");
    assert_eq!(up["sha256"], sum.as_str());
    assert_eq!(up["size"], body.len());
    assert_eq!(up["complete"], true);
    assert_eq!(up["path"], "/home/up.bin");
    let down = transfer("download");
    assert_eq!(down["sha256"], sha256(b"from the device").as_str());
    assert_eq!(down["complete"], true);
    let said = |text: &str| {
        events
            .iter()
            .any(|e| e["event"] == "chatMessage" && e["text"] == text)
    };
    assert!(said("hello from the helpdesk"), "{events:#?}");
    assert!(said("the printer is stuck"), "{events:#?}");
    let chat_file = events
        .iter()
        .find(|e| e["event"] == "fileTransfer" && e["path"] == "note.txt")
        .unwrap_or_else(|| panic!("no chat file in {events:#?}"));
    assert_eq!(
        chat_file["sha256"],
        sha256(b"try turning it off and on").as_str()
    );
    assert_eq!(chat_file["complete"], true);
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "processList" && e["count"].as_u64().unwrap() > 0),
        "{events:#?}"
    );

    // Recordings are for auditors, through kubectl tether: a technician may not read them.
    let refused = kubectl_tether(&ns, "carol", &["recordings", "audited"], None);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success(),
        "a technician read the recordings"
    );
    assert!(err.contains("not permitted"), "{err}");
    tether_e2e::kubectl_ok(
        control_plane(),
        "admin",
        &[
            "create",
            "rolebinding",
            "auditors",
            "-n",
            &ns,
            "--clusterrole=tether-auditor",
            "--group=auditors",
        ],
    );
    // Certificate requests are cluster-scoped: the requester role is bound cluster-wide.
    let crb = format!("auditors-{ns}");
    tether_e2e::kubectl_ok(
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
    let listed = ok(kubectl_tether(&ns, "dave", &["recordings"], None));
    assert!(listed.contains(cast_name.as_str()), "{listed}");
    assert!(listed.contains(&sha256(cast)), "{listed}");
    let one = ok(kubectl_tether(
        &ns,
        "dave",
        &["recordings", "audited"],
        None,
    ));
    assert!(one.contains(cast_name.as_str()), "{one}");
    let played = ok(kubectl_tether(
        &ns,
        "dave",
        &["play", "audited", "--instant"],
        None,
    ));
    assert!(played.contains("recorded-42"), "{played}");
    let exported = work.path().join("export");
    let out = kubectl_tether(
        &ns,
        "dave",
        &["export", "audited", exported.to_str().unwrap()],
        None,
    );
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{err}");
    assert!(err.contains("every checksum verified"), "{err}");
    for (name, bytes) in stored.iter().filter(|(n, _)| !n.ends_with(".json")) {
        assert_eq!(
            &std::fs::read(exported.join(name)).unwrap(),
            bytes,
            "{name}"
        );
    }
    assert_eq!(
        asciinema_cat(&exported.join(cast_name)),
        asciinema_cat(&cast_file)
    );
}

#[tokio::test]
async fn a_relay_killed_mid_session_leaves_a_readable_recording() {
    let s3 = S3Server::start().await;
    let Cluster {
        operator: _operator,
        relay,
        namespace: ns,
    } = start("crash", Some(&s3)).await;
    let _agent = Agent::enroll_and_run(&ns, "laptop", relay.port, CONSENTING).await;
    let cluster_ns = ns.clone();
    let obj = serde_json::json!({
        "apiVersion": "tether.dev/v1alpha1", "kind": "RemoteSession", "metadata": {"name": "crashy"},
        "spec": {"device": "laptop", "mode": "Interactive", "recording": "Required"},
    });
    let api: Api<RemoteSession> =
        Api::namespaced(control_plane().client("admin").await.unwrap(), &ns);
    api.patch(
        "crashy",
        &PatchParams::apply(TEST_MANAGER),
        &Patch::Apply(&obj),
    )
    .await
    .unwrap();

    let shell = std::thread::spawn(move || {
        kubectl_tether(
            &cluster_ns,
            "carol",
            &[
                "shell",
                "crashy",
                "--",
                "sh",
                "-c",
                "echo before-$((40+2)); sleep 120",
            ],
            None,
        )
    });
    // Wait until the output is durable in the store (flushed into the upload's parts).
    eventually("the output is flushed to the store", PATIENCE, || async {
        for key in s3.keys(Some(&format!("{PREFIX}/uploads"))).await {
            if String::from_utf8_lossy(&s3.get(&key).await).contains("before-42") {
                return Some(());
            }
        }
        None
    })
    .await;

    let _relay = relay.restart(true).await;
    let out = shell.join().unwrap();
    assert!(!out.status.success(), "the shell outlived its relay");

    // The restarted relay completed what its predecessor left behind.
    let recovered = eventually("the recording is recovered", PATIENCE, || async {
        let s = api.get("crashy").await.ok()?;
        let r = s.status?.recording?;
        (r.state == "Recovered").then_some(r)
    })
    .await;
    let cast = recovered
        .objects
        .iter()
        .find(|o| o.kind == "shell")
        .unwrap_or_else(|| panic!("no shell object in {recovered:?}"));
    let key = s3
        .keys(Some(&format!("{PREFIX}/sessions/{ns}/crashy")))
        .await
        .into_iter()
        .find(|k| k.ends_with(&cast.name))
        .unwrap();
    let body = s3.get(&key).await;
    assert_eq!(cast.sha256.as_deref(), Some(sha256(&body).as_str()));
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("crash.cast");
    std::fs::write(&file, &body).unwrap();
    let played = asciinema_cat(&file);
    assert!(played.contains("before-42"), "{played}");
}

#[tokio::test]
async fn a_store_outage_stops_required_sessions_and_is_reported_for_the_others() {
    let mut s3 = S3Server::start().await;
    let cluster = start("outage", Some(&s3)).await;
    let ns = cluster.namespace.clone();
    let _agent = Agent::enroll_and_run(&ns, "laptop", cluster.relay.port, CONSENTING).await;
    session(&cluster, "must", "Required").await;
    session(&cluster, "may", "Enabled").await;
    wait_phase(&cluster, "must", SessionPhase::Pending).await;
    wait_phase(&cluster, "may", SessionPhase::Pending).await;

    s3.stop();
    // Required: nobody joins without a recording; the session does not go Active.
    let out = kubectl_tether(&ns, "carol", &["shell", "must", "--", "echo", "hi"], None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "joined an unrecorded Required session"
    );
    assert!(err.contains("must be recorded"), "{err}");
    let (reason, message) = wait_recording_condition(&cluster, "must", "False").await;
    assert_eq!(reason, "StorageUnavailable", "{message}");
    let must = api(&cluster).await.get("must").await.unwrap();
    assert_eq!(must.status.unwrap().phase, Some(SessionPhase::Pending));

    // Enabled: the session goes on and says it is not recorded.
    let out = ok(kubectl_tether(
        &ns,
        "carol",
        &["shell", "may", "--", "echo", "unrecorded"],
        None,
    ));
    assert!(out.contains("unrecorded"), "{out}");
    let (reason, _) = wait_recording_condition(&cluster, "may", "False").await;
    assert_eq!(reason, "StorageUnavailable");

    // A Required session whose store fails while it runs ends, with the reason.
    s3.restart().await;
    session(&cluster, "live", "Required").await;
    wait_phase(&cluster, "live", SessionPhase::Pending).await;
    let live_ns = ns.clone();
    let shell = std::thread::spawn(move || {
        kubectl_tether(
            &live_ns,
            "carol",
            &[
                "shell",
                "live",
                "--",
                "sh",
                "-c",
                "i=0; while [ $i -lt 1200 ]; do echo tick $i; i=$((i+1)); sleep 0.1; done",
            ],
            None,
        )
    });
    wait_recording(&cluster, "live", "Recording").await;
    wait_phase(&cluster, "live", SessionPhase::Active).await;
    s3.stop();
    let failed = wait_phase(&cluster, "live", SessionPhase::Failed).await;
    let st = failed.status.unwrap();
    assert_eq!(st.reason.as_deref(), Some("RecordingFailed"), "{st:?}");
    assert!(
        st.message
            .as_deref()
            .unwrap_or_default()
            .contains("recording failed"),
        "{st:?}"
    );
    let out = shell.join().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("RecordingFailed"), "{err}");
}

#[tokio::test]
async fn the_local_filesystem_is_the_default_store() {
    // No store flags: the relay records where the operator's settings say, a directory.
    let cluster = start("local", None).await;
    let ns = cluster.namespace.clone();
    let _agent = Agent::enroll_and_run(&ns, "laptop", cluster.relay.port, CONSENTING).await;
    session(&cluster, "plain", "Enabled").await;
    wait_phase(&cluster, "plain", SessionPhase::Pending).await;
    ok(kubectl_tether(
        &ns,
        "carol",
        &["shell", "plain", "--", "sh", "-c", "echo local-$((1+1))"],
        None,
    ));
    ok(kubectl_tether(&ns, "admin", &["terminate", "plain"], None));
    let status = wait_recording(&cluster, "plain", "Complete").await;
    let location = status.location.clone().unwrap();
    let dir = location
        .strip_prefix("file://")
        .unwrap_or_else(|| panic!("not a local store: {location}"));
    let uid = api(&cluster)
        .await
        .get("plain")
        .await
        .unwrap()
        .metadata
        .uid
        .unwrap();
    let cast = status.objects.iter().find(|o| o.kind == "shell").unwrap();
    let file = Path::new(dir)
        .join("sessions")
        .join(&ns)
        .join("plain")
        .join(uid)
        .join(&cast.name);
    let played = asciinema_cat(&file);
    assert!(played.contains("local-2"), "{played}");
}
