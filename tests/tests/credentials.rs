//! A RemoteSession's credentials against a real API server and a real operator process:
//! termination and deletion revoke everything, operator restarts miss and repeat nothing, a
//! deleted access Secret is issued again, keys rotate with overlap, and a relay learns of a
//! termination within a second.

#![allow(clippy::unwrap_used)] // Tests fail loudly on any unexpected error.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use tether_crds::remote_session::SessionPhase;
use tether_e2e::lifecycle::{
    MAX, access_secret, apply, count, event_reasons, in_secs, published_verifier, secret_text,
    setup, tether_cli, wait_phase, wait_until,
};
use tether_e2e::{
    OPERATOR_USER, Operator, PATIENCE, SYSTEM_NAMESPACE, control_plane, eventually, install_crds,
    kubectl, kubectl_ok,
};
use tether_proto::token::{TokenError, VerifyingKey};

#[tokio::test]
async fn terminate_and_delete_mid_session_revoke_everything() {
    let env = setup("terminate").await;
    let cp = control_plane();
    apply(&env, "oops", serde_json::json!({"device": "laptop"})).await;
    let live = wait_phase(&env, "oops", SessionPhase::Pending).await;
    eventually("credentials are issued", PATIENCE, || {
        access_secret(&env, "oops")
    })
    .await;

    // alice may patch sessions but lacks the `terminate` verb: the API server refuses.
    kubectl_ok(
        cp,
        "admin",
        &[
            "create",
            "role",
            "patcher",
            "-n",
            &env.ns,
            "--verb=get,patch",
            "--resource=remotesessions.tether.dev",
        ],
    );
    kubectl_ok(
        cp,
        "admin",
        &[
            "create",
            "rolebinding",
            "alice-patcher",
            "-n",
            &env.ns,
            "--role=patcher",
            "--user=alice",
        ],
    );
    let out = tether_cli("alice", &env.ns, &["terminate", "oops"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("RBAC verb \"terminate\" on remotesessions.tether.dev is missing"),
        "{stderr}"
    );
    // Nor can she put someone else's name on a termination.
    let forged = kubectl(
        cp,
        "alice",
        &[
            "annotate",
            "-n",
            &env.ns,
            "remotesession",
            "oops",
            "tether.dev/terminated-by=admin",
        ],
    );
    assert!(!forged.status.success());
    assert!(String::from_utf8_lossy(&forged.stderr).contains("must name the caller (alice)"));

    // The admin terminates with a reason; the CLI waits until the operator has ended it.
    let out = tether_cli(
        "admin",
        &env.ns,
        &["terminate", "oops", "--reason", "wrong device"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("terminated"));
    let ended = env.sessions.get("oops").await.unwrap();
    let st = ended.status.unwrap();
    assert_eq!(st.phase, Some(SessionPhase::Terminated));
    assert_eq!(
        st.message.as_deref(),
        Some("terminated by admin: wrong device")
    );
    eventually("the access Secret is deleted", PATIENCE, || async {
        access_secret(&env, "oops").await.is_none().then_some(())
    })
    .await;
    let (_, revocations) = published_verifier(&env).await;
    assert!(revocations.is_revoked(live.metadata.uid.as_deref().unwrap()));
    // Already ended: a clear error, not a second termination.
    let out = tether_cli("admin", &env.ns, &["terminate", "oops"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("has already ended (Terminated)"));
    let out = tether_cli("admin", &env.ns, &["terminate", "nosuch"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("RemoteSession nosuch not found"));

    // A user granted `terminate` can end sessions too.
    kubectl_ok(
        cp,
        "admin",
        &[
            "create",
            "role",
            "terminator",
            "-n",
            &env.ns,
            "--verb=get,patch,terminate",
            "--resource=remotesessions.tether.dev",
        ],
    );
    kubectl_ok(
        cp,
        "admin",
        &[
            "create",
            "rolebinding",
            "bob-terminator",
            "-n",
            &env.ns,
            "--role=terminator",
            "--user=bob",
        ],
    );
    apply(&env, "second", serde_json::json!({"device": "laptop"})).await;
    wait_phase(&env, "second", SessionPhase::Pending).await;
    let out = tether_cli("bob", &env.ns, &["terminate", "second"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Deleting a live session ends it: credentials revoked, then the object goes.
    apply(&env, "gone", serde_json::json!({"device": "laptop"})).await;
    let live = wait_phase(&env, "gone", SessionPhase::Pending).await;
    eventually("credentials are issued", PATIENCE, || {
        access_secret(&env, "gone")
    })
    .await;
    env.sessions
        .delete("gone", &DeleteParams::default())
        .await
        .unwrap();
    eventually("the session is gone", PATIENCE, || async {
        env.sessions
            .get_opt("gone")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    assert!(access_secret(&env, "gone").await.is_none());
    let (_, revocations) = published_verifier(&env).await;
    assert!(revocations.is_revoked(live.metadata.uid.as_deref().unwrap()));
}

#[tokio::test]
async fn operator_restarts_miss_and_repeat_nothing() {
    let mut env = setup("restart").await;
    let start = in_secs(4);
    apply(
        &env,
        "steady",
        serde_json::json!({"device": "laptop", "startTime": start, "duration": "6s"}),
    )
    .await;
    wait_phase(&env, "steady", SessionPhase::Scheduled).await;

    // Down across the window's opening.
    env.operator.process.kill();
    let opens: Timestamp = start.parse().unwrap();
    wait_until(opens + SignedDuration::from_secs(1)).await;
    let cp = control_plane();
    env.operator = Operator::start(
        cp,
        OPERATOR_USER,
        &env.ns,
        &[&format!("--max-session-duration={MAX}")],
    )
    .await;
    wait_phase(&env, "steady", SessionPhase::Pending).await;
    eventually("credentials are issued", PATIENCE, || {
        access_secret(&env, "steady")
    })
    .await;

    // Killed again mid-session (once it has said the window opened: a kill between writing
    // a transition and publishing its Event loses that Event) and back before the end.
    eventually("the opening is announced", PATIENCE, || async {
        event_reasons(&env, "steady")
            .await
            .contains(&"WindowOpened".to_owned())
            .then_some(())
    })
    .await;
    env.operator.process.kill();
    env.operator = Operator::start(
        cp,
        OPERATOR_USER,
        &env.ns,
        &[&format!("--max-session-duration={MAX}")],
    )
    .await;
    wait_phase(&env, "steady", SessionPhase::Expired).await;
    eventually("the access Secret is deleted", PATIENCE, || async {
        access_secret(&env, "steady").await.is_none().then_some(())
    })
    .await;

    let reasons = eventually("every Event is recorded", PATIENCE, || async {
        let r = event_reasons(&env, "steady").await;
        r.contains(&"AccessRevoked".to_owned()).then_some(r)
    })
    .await;
    for reason in [
        "Scheduled",
        "WindowOpened",
        "AccessIssued",
        "Expired",
        "AccessRevoked",
    ] {
        assert_eq!(
            count(&reasons, reason),
            1,
            "{reason} should appear exactly once in {reasons:?}"
        );
    }
}

#[tokio::test]
async fn a_deleted_access_secret_is_issued_again() {
    let env = setup("reissue").await;
    apply(&env, "keep", serde_json::json!({"device": "laptop"})).await;
    wait_phase(&env, "keep", SessionPhase::Pending).await;
    let first = eventually("credentials are issued", PATIENCE, || {
        access_secret(&env, "keep")
    })
    .await;
    let secrets: Api<Secret> = Api::namespaced(env.admin.clone(), &env.ns);
    secrets
        .delete("keep-access", &DeleteParams::default())
        .await
        .unwrap();
    let second = eventually("credentials are issued again", PATIENCE, || async {
        access_secret(&env, "keep")
            .await
            .filter(|s| s.metadata.uid != first.metadata.uid)
    })
    .await;
    assert_ne!(secret_text(&first, "token"), secret_text(&second, "token"));
}

#[tokio::test]
async fn credentials_rotate_with_overlap() {
    let cp = control_plane();
    let admin = cp.client("admin").await.unwrap();
    install_crds(&admin).await.unwrap();
    let ns = cp.namespace("rotation").await.unwrap();
    // Its own credential namespace and very short lifetimes: the CA rotates every few
    // seconds (a third of 9s before expiry) and the signing key every 3s.
    let _operator = Operator::start(
        cp,
        "admin",
        &ns,
        &[
            &format!("--namespace={ns}"),
            "--ca-validity=9s",
            "--token-key-rotation=3s",
        ],
    )
    .await;
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), &ns);
    let cms: Api<ConfigMap> = Api::namespaced(admin.clone(), &ns);
    let first_keys: Vec<VerifyingKey> =
        eventually("the trust ConfigMap is published", PATIENCE, || async {
            let data = cms.get("tether-trust").await.ok()?.data?;
            serde_json::from_str(&data["token-keys.json"]).ok()
        })
        .await;
    let first_ca = secrets.get("tether-ca").await.unwrap();
    let first_ca_pem = String::from_utf8(first_ca.data.unwrap()["ca.crt"].0.clone()).unwrap();

    // Keys: the first key keeps being published after newer ones take over.
    let keys: Vec<VerifyingKey> = eventually("two newer signing keys exist", PATIENCE, || async {
        let data = cms.get("tether-trust").await.ok()?.data?;
        let keys: Vec<VerifyingKey> = serde_json::from_str(&data["token-keys.json"]).ok()?;
        (keys.len() >= 3).then_some(keys)
    })
    .await;
    assert!(
        keys.iter().any(|k| k.kid == first_keys[0].kid),
        "the retired key is still trusted"
    );
    assert_ne!(keys[0].kid, first_keys[0].kid, "a new key signs");

    // CA: the new bundle holds the new CA and the old one, whose certificates stay valid.
    let bundle = eventually("the CA rotated", PATIENCE, || async {
        let data = cms.get("tether-trust").await.ok()?.data?;
        let bundle = data["ca-bundle.crt"].clone();
        (bundle.matches("BEGIN CERTIFICATE").count() >= 2).then_some(bundle)
    })
    .await;
    assert!(
        bundle.contains(first_ca_pem.trim()),
        "the previous CA stays trusted until it expires"
    );
    let rotated = secrets.get("tether-ca").await.unwrap();
    let current = String::from_utf8(rotated.data.unwrap()["ca.crt"].0.clone()).unwrap();
    assert_ne!(current, first_ca_pem);
}

#[tokio::test]
async fn a_relay_learns_a_termination_within_a_second() {
    let env = setup("revoke").await;
    apply(&env, "live", serde_json::json!({"device": "laptop"})).await;
    let live = wait_phase(&env, "live", SessionPhase::Pending).await;
    let uid = live.metadata.uid.clone().unwrap();
    let secret = eventually("credentials are issued", PATIENCE, || {
        access_secret(&env, "live")
    })
    .await;
    let token = secret_text(&secret, "token");

    // The relay's trust store, watching what the operator publishes.
    let store = tether_relay::trust::TrustStore::new();
    let watching = tokio::spawn(
        store
            .clone()
            .watch(env.admin.clone(), SYSTEM_NAMESPACE.to_owned()),
    );
    eventually("the relay loaded its trust material", PATIENCE, || async {
        store.is_ready().then_some(())
    })
    .await;
    store
        .authorize(&token, Timestamp::now().as_second(), Some(&uid))
        .unwrap();

    let mut changes = store.subscribe();
    let asked = std::time::Instant::now();
    let patch =
        serde_json::json!({"metadata": {"annotations": {"tether.dev/terminated-by": "admin"}}});
    env.sessions
        .patch("live", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    while !store.is_revoked(&uid) {
        tokio::time::timeout(PATIENCE, changes.changed())
            .await
            .unwrap()
            .unwrap();
    }
    let took = asked.elapsed();
    eprintln!("relay learned the termination {took:?} after it was requested");
    assert!(took <= Duration::from_secs(1), "took {took:?}");
    let err = store
        .authorize(&token, Timestamp::now().as_second(), Some(&uid))
        .unwrap_err();
    assert_eq!(err, TokenError::Revoked(uid));
    watching.abort();
}
