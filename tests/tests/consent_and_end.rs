//! Consent and the end of a session, end to end with real processes: the user refuses or is
//! not asked as the mode says, expiry and termination close both sides on time, and either
//! the technician or the user can end the session.

#![allow(clippy::unwrap_used)] // Tests fail loudly on any unexpected error.

use std::process::Command;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use tether_crds::remote_session::SessionPhase;
use tether_e2e::dataplane::{Agent, Cluster, session, tether, wait_phase, wait_presence};
use tether_e2e::output::{ok, stderr};
use tether_e2e::{PATIENCE, eventually};

#[tokio::test]
async fn consent_denied_and_dynamic_modes() {
    let cluster = Cluster::start("consent", &[]).await;
    let _refuser = Agent::enroll_and_run(
        &cluster.namespace,
        "desk",
        cluster.relay.port,
        &["--consent=never", "--logged-on-user=erin"],
    )
    .await;
    let _server = Agent::enroll_and_run(
        &cluster.namespace,
        "rack",
        cluster.relay.port,
        &["--consent=never", "--logged-on-user="],
    )
    .await;
    wait_presence(&cluster, "desk", true, PATIENCE).await;
    wait_presence(&cluster, "rack", true, PATIENCE).await;

    // The user says no: the technician is told, the session is Denied.
    session(
        &cluster,
        "nope",
        serde_json::json!({"device": "desk", "mode": "Interactive"}),
    )
    .await;
    wait_phase(&cluster, "nope", SessionPhase::Pending).await;
    let out = tether(
        &cluster.namespace,
        "carol",
        &["shell", "nope", "--", "true"],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("the user did not allow the session (ConsentRefused)"),
        "{}",
        stderr(&out)
    );
    let denied = wait_phase(&cluster, "nope", SessionPhase::Denied).await;
    assert_eq!(
        denied.status.unwrap().reason.as_deref(),
        Some("ConsentRefused")
    );

    // Dynamic with someone logged on: interactive, so the refusing user decides.
    session(
        &cluster,
        "dyn-desk",
        serde_json::json!({"device": "desk", "mode": "Dynamic"}),
    )
    .await;
    let s = wait_phase(&cluster, "dyn-desk", SessionPhase::Pending).await;
    assert_eq!(
        format!("{:?}", s.status.unwrap().effective_mode),
        "Some(Interactive)"
    );
    assert!(
        !tether(
            &cluster.namespace,
            "carol",
            &["shell", "dyn-desk", "--", "true"]
        )
        .status
        .success()
    );

    // Dynamic with nobody logged on: unattended, no prompt (the agent would have refused).
    session(
        &cluster,
        "dyn-rack",
        serde_json::json!({"device": "rack", "mode": "Dynamic"}),
    )
    .await;
    let s = wait_phase(&cluster, "dyn-rack", SessionPhase::Active).await;
    assert_eq!(
        format!("{:?}", s.status.unwrap().effective_mode),
        "Some(Unattended)"
    );
    let out = tether(
        &cluster.namespace,
        "carol",
        &["shell", "dyn-rack", "--", "echo", "unattended"],
    );
    assert_eq!(ok(out).trim(), "unattended");
}

#[tokio::test]
async fn expiry_and_termination_close_both_sides_on_time() {
    let cluster = Cluster::start("deadline", &[]).await;
    let _agent = Agent::enroll_and_run(
        &cluster.namespace,
        "pc",
        cluster.relay.port,
        &["--consent=always"],
    )
    .await;
    wait_presence(&cluster, "pc", true, PATIENCE).await;

    // A short session: a long-running shell is cut at the deadline.
    session(
        &cluster,
        "short",
        serde_json::json!({"device": "pc", "mode": "Unattended", "duration": "8s"}),
    )
    .await;
    let s = wait_phase(&cluster, "short", SessionPhase::Active).await;
    let expires_at = s.status.unwrap().expires_at.unwrap().0;
    // A certificate obtained while the session runs, presented again after it ended.
    let kept = tether_e2e::technician::certificate("carol", &cluster.namespace, "short")
        .await
        .unwrap()
        .expect("carol may connect to the running session");
    let hello = tether_e2e::technician::hello(None, None);
    let before = tether_e2e::technician::connect(cluster.relay.port, Some(&kept), &hello)
        .await
        .unwrap();
    assert!(before.welcomed(), "{:?}", before.refusal());
    before.conn.close("done");
    let started = Instant::now();
    let out = tether(
        &cluster.namespace,
        "carol",
        &["shell", "short", "--", "sleep", "61"],
    );
    let ended = Timestamp::now();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("the session ended (Expired)"),
        "{}",
        stderr(&out)
    );
    let late = ended.duration_since(expires_at);
    eprintln!(
        "shell closed {late:?} after expiresAt (ran {:?})",
        started.elapsed()
    );
    assert!(
        late <= jiff::SignedDuration::from_secs(1),
        "closed {late:?} after expiresAt"
    );
    // Nothing the session started keeps running on the device.
    eventually(
        "the expired session's command is gone",
        PATIENCE,
        || async {
            let out = Command::new("pgrep")
                .args(["-f", "^sleep 61$"])
                .output()
                .ok()?;
            (!out.status.success()).then_some(())
        },
    )
    .await;
    // The certificate that worked during the session is refused by the relay once it ended…
    // (it lived no longer than the session, so it has expired: the relay's TLS layer or its
    // admission says so; one still valid would meet the relay's "the session has ended").
    let refusal =
        match tether_e2e::technician::connect(cluster.relay.port, Some(&kept), &hello).await {
            Ok(after) => after.refusal().unwrap(),
            Err(e) => format!("{e:#}"),
        };
    assert!(
        refusal.contains("the session has ended")
            || refusal.contains("the technician certificate has expired")
            || refusal.contains("CertificateExpired"),
        "{refusal}"
    );
    // …and the operator issues no new one.
    let denied = tether_e2e::technician::certificate("carol", &cluster.namespace, "short")
        .await
        .unwrap()
        .unwrap_err();
    assert!(denied.contains("RemoteSession short has ended"), "{denied}");

    // Termination mid-shell: closed within a second.
    session(
        &cluster,
        "long",
        serde_json::json!({"device": "pc", "mode": "Unattended", "duration": "30m"}),
    )
    .await;
    wait_phase(&cluster, "long", SessionPhase::Active).await;
    let ns = cluster.namespace.clone();
    let shell = tokio::task::spawn_blocking(move || {
        let out = tether(&ns, "carol", &["shell", "long", "--", "sleep", "62"]);
        (Instant::now(), out)
    });
    // Wait until the shell is really running on the device.
    eventually("the remote sleep runs", PATIENCE, || async {
        let out = Command::new("pgrep")
            .args(["-f", "^sleep 62$"])
            .output()
            .ok()?;
        out.status.success().then_some(())
    })
    .await;
    let asked = Instant::now();
    let out = tether(
        &cluster.namespace,
        "admin",
        &["terminate", "long", "--no-wait"],
    );
    ok(out);
    let (closed_at, out) = shell.await.unwrap();
    let took = closed_at.duration_since(asked);
    eprintln!("shell closed {took:?} after the termination");
    assert!(
        took <= Duration::from_secs(1),
        "closed {took:?} after the termination"
    );
    let err = stderr(&out);
    assert!(err.contains("the session ended (Terminated)"), "{err}");
    wait_phase(&cluster, "long", SessionPhase::Terminated).await;
}

#[tokio::test]
async fn either_party_can_end_the_session() {
    let cluster = Cluster::start("end", &[]).await;
    let agent = Agent::enroll_and_run(
        &cluster.namespace,
        "ws",
        cluster.relay.port,
        &["--consent=always"],
    )
    .await;
    wait_presence(&cluster, "ws", true, PATIENCE).await;
    session(
        &cluster,
        "by-user",
        serde_json::json!({"device": "ws", "mode": "Unattended"}),
    )
    .await;
    wait_phase(&cluster, "by-user", SessionPhase::Active).await;
    let ns = cluster.namespace.clone();
    let shell = tokio::task::spawn_blocking(move || {
        tether(&ns, "carol", &["shell", "by-user", "--", "sleep", "63"])
    });
    eventually("the remote sleep runs", PATIENCE, || async {
        let out = Command::new("pgrep")
            .args(["-f", "^sleep 63$"])
            .output()
            .ok()?;
        out.status.success().then_some(())
    })
    .await;
    assert!(agent.user(&["end"]).status.success());
    let out = shell.await.unwrap();
    assert!(stderr(&out).contains("EndedByUser"), "{}", stderr(&out));
    let done = wait_phase(&cluster, "by-user", SessionPhase::Completed).await;
    assert_eq!(done.status.unwrap().reason.as_deref(), Some("EndedByUser"));
    eventually("the ended session's command is gone", PATIENCE, || async {
        let out = Command::new("pgrep")
            .args(["-f", "^sleep 63$"])
            .output()
            .ok()?;
        (!out.status.success()).then_some(())
    })
    .await;

    session(
        &cluster,
        "by-tech",
        serde_json::json!({"device": "ws", "mode": "Unattended"}),
    )
    .await;
    wait_phase(&cluster, "by-tech", SessionPhase::Active).await;
    ok(tether(&cluster.namespace, "carol", &["end", "by-tech"]));
    let done = wait_phase(&cluster, "by-tech", SessionPhase::Completed).await;
    assert_eq!(
        done.status.unwrap().reason.as_deref(),
        Some("EndedByTechnician")
    );
}

#[tokio::test]
async fn the_user_sees_the_ticket_and_a_group_policy_shortens_the_time_to_answer() {
    let cluster = Cluster::start("consent-time", &[]).await;
    let work = tempfile::tempdir().unwrap();
    let seen = work.path().join("timeouts");
    // The consent command writes down how long it was given and the ticket it was shown,
    // then says no.
    let answer = format!(
        "--consent=command:echo $TETHER_CONSENT_TIMEOUT $TETHER_TICKET >> {}; exit 1",
        seen.display()
    );
    let _agent = Agent::enroll_and_run(
        &cluster.namespace,
        "desk",
        cluster.relay.port,
        &[&answer, "--logged-on-user=erin"],
    )
    .await;
    wait_presence(&cluster, "desk", true, PATIENCE).await;
    let ask = |name: String| {
        let cluster = &cluster;
        let seen = &seen;
        async move {
            session(
                cluster,
                &name,
                serde_json::json!({"device": "desk", "mode": "Interactive", "ticket": "INC-7"}),
            )
            .await;
            wait_phase(cluster, &name, SessionPhase::Pending).await;
            let out = tether(&cluster.namespace, "carol", &["shell", &name, "--", "true"]);
            assert!(
                stderr(&out).contains("(ConsentRefused)"),
                "{}",
                stderr(&out)
            );
            let given = std::fs::read_to_string(seen).unwrap();
            given.lines().last().unwrap().trim().to_owned()
        }
    };
    // Without a policy the relay's own timeout applies (the test cluster's is 20 s).
    assert_eq!(ask("before".into()).await, "20 INC-7");

    let policy = "apiVersion: tether.dev/v1alpha1\nkind: SessionPolicy\nmetadata:\n  name: quick\nspec:\n  consentTimeout: 7s\n";
    let out = tether_e2e::kubectl_apply(
        tether_e2e::control_plane(),
        "admin",
        &cluster.namespace,
        policy,
    );
    assert!(out.status.success(), "{out:?}");
    // The operator learns of the policy through its watch; credentials issued after that
    // carry it.
    let mut given = String::new();
    for attempt in 1..=5 {
        given = ask(format!("after-{attempt}")).await;
        if given == "7 INC-7" {
            break;
        }
    }
    assert_eq!(given, "7 INC-7", "the user is given the policy's 7 s");
}
