//! Session recording end to end: operator, relay, agent and `kubectl tether` as real
//! processes, recording to a real S3 server (versitygw). Recordings are checked with the real
//! `asciinema` player and against the bytes that were sent.

#![allow(clippy::unwrap_used)] // Tests fail loudly on any unexpected error.

use kube::api::{Api, Patch, PatchParams};
use tether_crds::RemoteSession;
use tether_crds::remote_session::SessionPhase;
use tether_e2e::dataplane::{Agent, Cluster, kubectl_tether};
use tether_e2e::recording::*;
use tether_e2e::s3::S3Server;
use tether_e2e::{PATIENCE, TEST_MANAGER, control_plane, eventually};

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
    grant_auditors(&ns);
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
    let flushed = eventually("the output is flushed to the store", PATIENCE, || async {
        if shell.is_finished() {
            return Some(false);
        }
        for key in s3.keys(Some(&format!("{PREFIX}/uploads"))).await {
            if String::from_utf8_lossy(&s3.get(&key).await).contains("before-42") {
                return Some(true);
            }
        }
        None
    })
    .await;
    if !flushed {
        let out = shell.join().unwrap();
        panic!(
            "the shell ended before the relay was killed: {}{}\nrelay log:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            relay.process.log_tail(30)
        );
    }

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

    // Both kinds of failure are counted.
    let metrics = cluster.relay.metrics().await;
    assert!(
        metrics.contains("tether_relay_recording_failures_total{stage=\"start\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tether_relay_recording_failures_total{stage=\"write\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn an_unattended_session_that_must_be_recorded_waits_for_its_store() {
    use k8s_openapi::api::core::v1::Secret;
    let mut s3 = S3Server::start().await;
    let secret_name = format!(
        "recording-credentials-{}",
        s3.endpoint().rsplit(':').next().unwrap()
    );
    let operator_args = [
        format!("--recording-store=s3://{}/{PREFIX}", s3.bucket()),
        format!("--recording-option=endpoint={}", s3.endpoint()),
        format!("--recording-option=region={}", s3.region()),
        "--recording-option=allow_http=true".into(),
        "--recording-option=virtual_hosted_style_request=false".into(),
        format!("--recording-credentials-secret={secret_name}"),
    ];
    let operator_args: Vec<&str> = operator_args.iter().map(String::as_str).collect();
    let relay_args = relay_args(&s3);
    let relay_args: Vec<&str> = relay_args.iter().map(String::as_str).collect();
    let cluster = Cluster::start_with("unattended", &operator_args, &relay_args).await;
    // The operator checks the same store, with credentials from a Secret it reads when
    // it checks.
    let admin = control_plane().client("admin").await.unwrap();
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": secret_name, "namespace": tether_e2e::SYSTEM_NAMESPACE},
        "stringData": {"access_key_id": s3.access_key(), "secret_access_key": s3.secret_key()},
    }))
    .unwrap();
    Api::<Secret>::namespaced(admin, tether_e2e::SYSTEM_NAMESPACE)
        .create(&Default::default(), &secret)
        .await
        .unwrap();
    let ns = cluster.namespace.clone();
    let _agent = Agent::enroll_and_run(&ns, "laptop", cluster.relay.port, &[]).await;

    s3.stop();
    let obj = serde_json::json!({
        "apiVersion": "tether.dev/v1alpha1", "kind": "RemoteSession", "metadata": {"name": "nightly"},
        "spec": {"device": "laptop", "mode": "Unattended", "recording": "Required"},
    });
    api(&cluster)
        .await
        .patch(
            "nightly",
            &PatchParams::apply(TEST_MANAGER),
            &Patch::Apply(&obj),
        )
        .await
        .unwrap();
    // The agent is there and no consent is needed, but nothing could be recorded.
    let waiting = wait_for(&cluster, "nightly", "WaitingForRecording", |s| {
        let st = s.status.as_ref()?;
        (st.reason.as_deref() == Some("WaitingForRecording")).then(|| st.clone())
    })
    .await;
    assert_eq!(waiting.phase, Some(SessionPhase::Pending));
    let message = waiting.message.unwrap_or_default();
    assert!(message.contains("recording store"), "{message}");

    // The store is back: the session goes Active on its own.
    s3.restart().await;
    wait_phase(&cluster, "nightly", SessionPhase::Active).await;
}
