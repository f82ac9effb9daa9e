//! Who may connect, end to end with real processes: every technician connection carries an
//! identity the cluster vouched for (a certificate from the `tether.dev/technician` signer),
//! checked against RBAC and the session's technicians, recorded by that name only, renewed
//! while connected, and bounded per session; each refusal comes with a positive control and
//! the reason the refusing component gave.

#![allow(clippy::unwrap_used)] // Tests fail loudly on any unexpected error.

use std::time::Duration;

use kube::api::Api;
use tether_crds::RemoteSession;
use tether_crds::remote_session::SessionPhase;
use tether_e2e::dataplane::tether;
use tether_e2e::dataplane::{Agent, Cluster, bind_technician};
use tether_e2e::output::{stderr, stdout};
use tether_e2e::technician::{self, certificate, connect, hello};
use tether_e2e::{PATIENCE, control_plane, eventually, kubectl};
use tether_proto::message::Control;

async fn wait_for(
    ns: &str,
    name: &str,
    what: &str,
    f: impl Fn(&RemoteSession) -> bool,
) -> RemoteSession {
    let admin = control_plane().client("admin").await.unwrap();
    let api: Api<RemoteSession> = Api::namespaced(admin, ns);
    eventually(&format!("{name}: {what}"), PATIENCE, || {
        let api = api.clone();
        let f = &f;
        async move {
            let s = api.get(name).await.ok()?;
            f(&s).then_some(s)
        }
    })
    .await
}

fn condition_message(s: &RemoteSession, type_: &str) -> Option<String> {
    s.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.message.clone())
}

/// RBAC, the session's list and the relay all decide on the identity the API server stamped:
/// someone without `connect` gets no certificate, someone with it but not listed gets none, a
/// listed technician connects; a hand-built client claiming any name with the access Secret's
/// token is refused by the relay, and the name recorded is always the certificate's.
#[tokio::test]
async fn only_a_listed_technician_with_the_verb_connects_under_their_own_name() {
    let cluster = Cluster::start("who", &[]).await;
    let ns = cluster.namespace.clone();
    let cp = control_plane();
    // bob (group approvers) holds the technician role too, but is not listed on the session.
    bind_technician(&ns, "bob");
    let _agent = Agent::enroll_and_run(
        &ns,
        "desk",
        cluster.relay.port,
        &["--consent=always", "--logged-on-user=dana"],
    )
    .await;
    cluster.apply_session("fix",
        serde_json::json!({"device": "desk", "mode": "Interactive", "technicians": {"users": ["carol"]}}),
    )
    .await;
    cluster.wait_phase("fix", SessionPhase::Pending).await;

    // No `connect` verb: the operator denies alice's request, naming the missing permission.
    let alice = certificate("alice", &ns, "fix").await.unwrap().unwrap_err();
    assert!(
        alice.contains("user alice may not connect to RemoteSession fix"),
        "{alice}"
    );
    let out = tether(&ns, "alice", &["shell", "fix", "--", "true"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("user alice may not connect"),
        "{}",
        stderr(&out)
    );

    // The verb but not listed: denied with the reason.
    let bob = certificate("bob", &ns, "fix").await.unwrap().unwrap_err();
    assert!(
        bob.contains("user bob is not among the technicians of RemoteSession fix"),
        "{bob}"
    );
    let out = tether(&ns, "bob", &["shell", "fix", "--", "true"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("not among the technicians"),
        "{}",
        stderr(&out)
    );

    // Positive control: carol is listed and holds the verb.
    let out = tether(&ns, "carol", &["shell", "fix", "--", "echo", "in as carol"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "in as carol");
    let s = wait_for(&ns, "fix", "Consented names carol", |s| {
        condition_message(s, "Consented").is_some_and(|m| m.contains("carol"))
    })
    .await;
    assert_eq!(
        condition_message(&s, "Consented").unwrap(),
        "the user allowed carol to join"
    );

    // A hand-built client: the access Secret's token (read as admin), a forged name full of
    // terminal escapes and newlines, and no certificate. The relay refuses it and says why.
    let admin = cp.client("admin").await.unwrap();
    let secret = Api::<k8s_openapi::api::core::v1::Secret>::namespaced(admin, &ns)
        .get("fix-access")
        .await
        .unwrap();
    let token = String::from_utf8(secret.data.unwrap()["token"].0.clone()).unwrap();
    let forged = format!("admin\n\u{1b}[2J{}", "x".repeat(200_000));
    let raw = connect(
        cluster.relay.port,
        None,
        &hello(Some(&forged), Some(&token)),
    )
    .await
    .unwrap();
    let refusal = raw.refusal().unwrap();
    assert!(
        refusal.contains("technicians must present a technician certificate"),
        "{refusal}"
    );
    // The same forged hello with carol's certificate is welcomed — as carol.
    let carol = certificate("carol", &ns, "fix").await.unwrap().unwrap();
    let raw = connect(
        cluster.relay.port,
        Some(&carol),
        &hello(Some(&forged), Some(&token)),
    )
    .await
    .unwrap();
    assert!(raw.welcomed(), "{:?}", raw.refusal());
    raw.conn.close("done");
    let s = wait_for(&ns, "fix", "still Consented by carol", |s| {
        condition_message(s, "Consented").is_some()
    })
    .await;
    let consented = condition_message(&s, "Consented").unwrap();
    assert!(
        !consented.contains("admin") && !consented.contains('\u{1b}'),
        "{consented}"
    );

    // A certificate for one session does not open another.
    cluster
        .apply_session(
            "other",
            serde_json::json!({"device": "desk", "mode": "Unattended"}),
        )
        .await;
    cluster.wait_phase("other", SessionPhase::Active).await;
    let out = tether(&ns, "carol", &["shell", "other", "--", "echo", "other"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // (carol's certificate for "fix" names "fix": the relay admits it to "fix" only.)
    let raw = connect(cluster.relay.port, Some(&carol), &hello(None, None))
        .await
        .unwrap();
    match &raw.reply {
        tether_proto::message::HelloReply::Welcome(w) => {
            assert_eq!(w.session.as_ref().unwrap().name, "fix");
        }
        other => panic!("{other:?}"),
    }

    // No technician role reads Secrets any more.
    let can = kubectl(
        cp,
        "admin",
        &[
            "auth",
            "can-i",
            "get",
            "secrets",
            "-n",
            &ns,
            "--as",
            "carol",
            "--as-group",
            "technicians",
        ],
    );
    assert_eq!(stdout(&can).trim(), "no");
    let can = kubectl(
        cp,
        "admin",
        &[
            "auth",
            "can-i",
            "connect",
            "remotesessions.tether.dev",
            "-n",
            &ns,
            "--as",
            "carol",
            "--as-group",
            "technicians",
        ],
    );
    assert_eq!(stdout(&can).trim(), "yes");
}

/// A terminated session's certificates stop working at the relay at once (revocation), and
/// the operator issues no new ones; before, the same certificate worked.
#[tokio::test]
async fn a_revoked_session_refuses_the_certificates_it_issued() {
    let cluster = Cluster::start("revoked", &[]).await;
    let ns = cluster.namespace.clone();
    let _agent = Agent::enroll_and_run(&ns, "kiosk", cluster.relay.port, &[]).await;
    cluster
        .apply_session(
            "maint",
            serde_json::json!({"device": "kiosk", "mode": "Unattended", "duration": "30m"}),
        )
        .await;
    cluster.wait_phase("maint", SessionPhase::Active).await;
    let cert = certificate("carol", &ns, "maint").await.unwrap().unwrap();
    let before = connect(cluster.relay.port, Some(&cert), &hello(None, None))
        .await
        .unwrap();
    assert!(before.welcomed(), "{:?}", before.refusal());
    before.conn.close("done");

    let out = tether(&ns, "admin", &["terminate", "maint", "--reason", "done"]);
    assert!(out.status.success(), "{}", stderr(&out));
    cluster.wait_phase("maint", SessionPhase::Terminated).await;
    let refusal = eventually(
        "the relay refuses the revoked session's certificate",
        PATIENCE,
        || {
            let cert = cert.clone();
            let port = cluster.relay.port;
            async move {
                let raw = connect(port, Some(&cert), &hello(None, None)).await.ok()?;
                raw.refusal().ok()
            }
        },
    )
    .await;
    assert!(refusal.contains("the session has ended"), "{refusal}");
    let denied = certificate("carol", &ns, "maint")
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        denied.contains("RemoteSession maint has ended (Terminated)"),
        "{denied}"
    );
}

/// Certificates are short-lived: a connection whose certificate is not renewed is closed when
/// it runs out, with the reason; `kubectl tether` renews its own and keeps working past it.
#[tokio::test]
async fn connections_last_as_long_as_a_renewed_certificate() {
    let cluster =
        Cluster::start_with("renew", &["--technician-certificate-validity=15s"], &[]).await;
    let ns = cluster.namespace.clone();
    let _agent = Agent::enroll_and_run(&ns, "server", cluster.relay.port, &[]).await;
    cluster
        .apply_session(
            "long",
            serde_json::json!({"device": "server", "mode": "Unattended", "duration": "30m"}),
        )
        .await;
    cluster.wait_phase("long", SessionPhase::Active).await;

    // Not renewed: the relay says goodbye when the certificate expires.
    let cert = certificate("carol", &ns, "long").await.unwrap().unwrap();
    let mut raw = connect(cluster.relay.port, Some(&cert), &hello(None, None))
        .await
        .unwrap();
    assert!(raw.welcomed(), "{:?}", raw.refusal());
    let bye = tokio::time::timeout(
        Duration::from_secs(60),
        raw.until(|m| matches!(m, Control::Goodbye { .. })),
    )
    .await
    .expect("closed within a minute");
    match bye {
        Some(Control::Goodbye { reason }) => {
            assert!(reason.contains("certificate expired"), "{reason}")
        }
        other => panic!("expected a goodbye, got {other:?}"),
    }

    // Renewed by kubectl tether: a command running three lifetimes finishes.
    let out = tether(
        &ns,
        "carol",
        &[
            "shell",
            "long",
            "--",
            "sh",
            "-c",
            "sleep 40; echo still here",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "still here");

    // A renewal for another key is refused: the connection still ends at the first expiry.
    let mut raw = connect(
        cluster.relay.port,
        Some(&cert_fresh(&ns).await),
        &hello(None, None),
    )
    .await
    .unwrap();
    assert!(raw.welcomed());
    let other = certificate("carol", &ns, "long").await.unwrap().unwrap();
    raw.writer
        .message(&Control::Renew {
            certificate: format!("{}{}", other.cert, other.ca),
        })
        .await
        .unwrap();
    let next = tokio::time::timeout(
        Duration::from_secs(60),
        raw.until(|m| matches!(m, Control::Goodbye { .. } | Control::Renewed { .. })),
    )
    .await
    .expect("an answer within a minute");
    assert!(matches!(next, Some(Control::Goodbye { .. })), "{next:?}");
}

async fn cert_fresh(ns: &str) -> technician::Certificate {
    certificate("carol", ns, "long").await.unwrap().unwrap()
}

/// A session takes a bounded number of technicians at once: the ninth is refused with the
/// reason while eight are connected, and admitted once one leaves.
#[tokio::test]
async fn a_session_takes_a_bounded_number_of_technicians() {
    let cluster = Cluster::start("seats", &[]).await;
    let ns = cluster.namespace.clone();
    let _agent = Agent::enroll_and_run(&ns, "tablet", cluster.relay.port, &[]).await;
    cluster
        .apply_session(
            "busy",
            serde_json::json!({"device": "tablet", "mode": "Unattended"}),
        )
        .await;
    cluster.wait_phase("busy", SessionPhase::Active).await;
    let cert = certificate("carol", &ns, "busy").await.unwrap().unwrap();
    let mut joined = Vec::new();
    for _ in 0..8 {
        let raw = connect(cluster.relay.port, Some(&cert), &hello(None, None))
            .await
            .unwrap();
        assert!(raw.welcomed(), "{:?}", raw.refusal());
        joined.push(raw);
    }
    let ninth = connect(cluster.relay.port, Some(&cert), &hello(None, None))
        .await
        .unwrap();
    let refusal = ninth.refusal().unwrap();
    assert!(
        refusal.contains("already has 8 technicians connected"),
        "{refusal}"
    );
    let first = joined.remove(0);
    first.conn.close("leaving");
    let again = eventually("a place is free again", PATIENCE, || {
        let cert = cert.clone();
        let port = cluster.relay.port;
        async move {
            let raw = connect(port, Some(&cert), &hello(None, None)).await.ok()?;
            raw.welcomed().then_some(raw)
        }
    })
    .await;
    assert!(again.welcomed());
}

/// The user is asked for each technician who joins, not once per session: a second technician
/// is refused when the user says no to them, while the first stays connected.
#[tokio::test]
async fn each_technician_is_asked_for() {
    let cluster = Cluster::start("consent", &[]).await;
    let ns = cluster.namespace.clone();
    bind_technician(&ns, "bob");
    let asked = tempfile::NamedTempFile::new().unwrap();
    let consent = format!(
        "--consent=command:echo \"$TETHER_TECHNICIAN\" >> {}; test \"$TETHER_TECHNICIAN\" = carol",
        asked.path().display()
    );
    let _agent = Agent::enroll_and_run(
        &ns,
        "pc",
        cluster.relay.port,
        &[&consent, "--logged-on-user=dana"],
    )
    .await;
    cluster
        .apply_session(
            "two",
            serde_json::json!({"device": "pc", "mode": "Interactive"}),
        )
        .await;
    cluster.wait_phase("two", SessionPhase::Pending).await;
    let carol = certificate("carol", &ns, "two").await.unwrap().unwrap();
    let first = connect(cluster.relay.port, Some(&carol), &hello(None, None))
        .await
        .unwrap();
    assert!(first.welcomed(), "{:?}", first.refusal());
    cluster.wait_phase("two", SessionPhase::Active).await;

    let bob = certificate("bob", &ns, "two").await.unwrap().unwrap();
    let second = connect(cluster.relay.port, Some(&bob), &hello(None, None))
        .await
        .unwrap();
    let refusal = second.refusal().unwrap();
    assert!(refusal.contains("the user did not allow"), "{refusal}");
    // carol reconnecting is not asked again; the session goes on.
    let again = connect(cluster.relay.port, Some(&carol), &hello(None, None))
        .await
        .unwrap();
    assert!(again.welcomed(), "{:?}", again.refusal());
    let log = std::fs::read_to_string(asked.path()).unwrap();
    assert_eq!(
        log.lines().collect::<Vec<_>>(),
        vec!["carol", "bob"],
        "{log}"
    );
    let s = cluster.wait_phase("two", SessionPhase::Active).await;
    assert!(s.status.unwrap().phase == Some(SessionPhase::Active));
}

/// The relay's reason reaches the client before the connection closes, every time: an
/// unsupported protocol version and a technician without a certificate, twenty times each
/// over TCP; a supported hello with a certificate is welcomed.
#[tokio::test]
async fn refusals_arrive_before_the_connection_closes() {
    let cluster = Cluster::start("refusals", &[]).await;
    let ns = cluster.namespace.clone();
    let _agent = Agent::enroll_and_run(&ns, "box", cluster.relay.port, &[]).await;
    cluster
        .apply_session(
            "s",
            serde_json::json!({"device": "box", "mode": "Unattended"}),
        )
        .await;
    cluster.wait_phase("s", SessionPhase::Active).await;
    let cert = certificate("carol", &ns, "s").await.unwrap().unwrap();
    for _ in 0..20 {
        let mut old = hello(None, None);
        old.versions = vec![999];
        let raw = connect(cluster.relay.port, Some(&cert), &old)
            .await
            .unwrap();
        let refusal = raw.refusal().unwrap();
        assert!(
            refusal.contains("this relay speaks protocol version"),
            "{refusal}"
        );
        let raw = connect(cluster.relay.port, None, &hello(Some("carol"), None))
            .await
            .unwrap();
        let refusal = raw.refusal().unwrap();
        assert!(refusal.contains("technician certificate"), "{refusal}");
    }
    let raw = connect(cluster.relay.port, Some(&cert), &hello(None, None))
        .await
        .unwrap();
    assert!(raw.welcomed(), "{:?}", raw.refusal());
}
