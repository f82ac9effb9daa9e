//! The life of a RemoteSession against a real API server and a real operator process, with
//! windows of a few seconds: scheduling, opening, expiry on time, the cluster maximum, GitOps
//! re-applies, dynamic mode and consent as reported by the relay. Credentials and revocation
//! are in `credentials.rs`.

#![allow(clippy::unwrap_used)] // Tests fail loudly on any unexpected error.

use jiff::{SignedDuration, Timestamp};
use kube::api::{Patch, PatchParams};
use tether_crds::remote_session::SessionPhase;
use tether_e2e::lifecycle::{
    access_secret, apply, assert_window_transitions_once, device_reports, event_reasons, in_secs,
    manifest, published_verifier, relay_reports, secret_text, setup, wait_phase,
};
use tether_e2e::{PATIENCE, TEST_MANAGER, eventually};
use tether_proto::token::{TokenError, verify_not_revoked};

#[tokio::test]
async fn scheduled_session_opens_issues_credentials_and_expires_on_time() {
    let env = setup("expiry").await;
    apply(&env, "maint", serde_json::json!({"device": "laptop", "startTime": in_secs(3), "duration": "5s", "technicians": {"users": ["carol"]}})).await;
    let scheduled = wait_phase(&env, "maint", SessionPhase::Scheduled).await;
    assert!(
        access_secret(&env, "maint").await.is_none(),
        "no credentials before the window"
    );
    assert_eq!(
        scheduled.metadata.finalizers.as_deref(),
        Some(&["tether.dev/revoke-credentials".to_owned()][..])
    );

    // The window opens: credentials are issued, signed with a published key.
    let pending = wait_phase(&env, "maint", SessionPhase::Pending).await;
    let status = pending.status.clone().unwrap();
    let access = status.access.clone().unwrap();
    assert_eq!(access.secret_name, "maint-access");
    let secret = eventually("the access Secret exists", PATIENCE, || {
        access_secret(&env, "maint")
    })
    .await;
    let owner = &secret.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(owner.uid, pending.metadata.uid.clone().unwrap());
    assert_eq!(owner.controller, Some(true));
    let token = secret_text(&secret, "token");
    let (verifier, _) = published_verifier(&env).await;
    let now = Timestamp::now().as_second();
    let claims = verifier
        .verify(&token, now, pending.metadata.uid.as_deref())
        .unwrap();
    assert_eq!(claims.session.name, "maint");
    assert_eq!(claims.session.device, "laptop");
    assert_eq!(claims.session.technicians.users, vec!["carol".to_owned()]);
    let expires_at = status.expires_at.clone().unwrap().0;
    assert_eq!(claims.session.ends_at, expires_at.as_second());
    assert!(claims.exp <= expires_at.as_second());

    // Expiry: on time, credentials deleted, revocation published, finalizer released.
    let expired = wait_phase(&env, "maint", SessionPhase::Expired).await;
    let st = expired.status.clone().unwrap();
    let ready = st.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
    let lateness = ready.last_transition_time.0.duration_since(expires_at);
    eprintln!("Expired written {lateness:?} after expiresAt (second precision)");
    assert!(
        lateness <= SignedDuration::from_secs(1),
        "Expired written {lateness:?} after expiresAt"
    );
    assert_eq!(st.ended_at.map(|t| t.0), Some(expires_at));
    assert!(st.access.unwrap().revoked_at.is_some());
    eventually("the access Secret is deleted", PATIENCE, || async {
        access_secret(&env, "maint").await.is_none().then_some(())
    })
    .await;
    let finalizers = env.sessions.get("maint").await.unwrap().metadata.finalizers;
    assert!(finalizers.unwrap_or_default().is_empty());

    // The token is refused everywhere from now on, even if someone kept a copy.
    let (verifier, revocations) = published_verifier(&env).await;
    let err = verify_not_revoked(&verifier, &revocations, &token, now, None).unwrap_err();
    assert_eq!(
        err,
        TokenError::Revoked(expired.metadata.uid.clone().unwrap())
    );

    let reasons = event_reasons(&env, "maint").await;
    assert_window_transitions_once(&reasons);
    let (_, metrics) = env.operator.get("/metrics").await.unwrap();
    assert!(
        metrics.contains("tether_operator_transition_lateness_seconds_count{phase=\"Expired\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn reschedule_is_accepted_only_while_scheduled() {
    let env = setup("resched").await;
    apply(
        &env,
        "later",
        serde_json::json!({"device": "laptop", "startTime": in_secs(3600), "duration": "30m"}),
    )
    .await;
    wait_phase(&env, "later", SessionPhase::Scheduled).await;
    let moved = in_secs(7200);
    apply(
        &env,
        "later",
        serde_json::json!({"device": "laptop", "startTime": moved, "duration": "45m"}),
    )
    .await;
    let api = env.sessions.clone();
    eventually("the operator follows the new window", PATIENCE, || {
        let api = api.clone();
        let moved = moved.clone();
        async move {
            let s = api.get("later").await.ok()?.status?;
            (s.scheduled_start?.0.to_string() == moved).then_some(())
        }
    })
    .await;

    apply(
        &env,
        "now",
        serde_json::json!({"device": "laptop", "duration": "30m"}),
    )
    .await;
    wait_phase(&env, "now", SessionPhase::Pending).await;
    let err = env
        .sessions
        .patch(
            "now",
            &PatchParams::apply(TEST_MANAGER),
            &Patch::Apply(manifest(
                "now",
                serde_json::json!({"device": "laptop", "duration": "45m"}),
            )),
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("can only be changed while the session is Scheduled"),
        "{err}"
    );
}

#[tokio::test]
async fn instant_session_defaults_and_the_cluster_maximum() {
    let env = setup("instant").await;
    let created = apply(&env, "quick", serde_json::json!({"device": "laptop"})).await;
    let pending = wait_phase(&env, "quick", SessionPhase::Pending).await;
    let st = pending.status.unwrap();
    let created_at = created.metadata.creation_timestamp.unwrap().0;
    assert_eq!(st.scheduled_start.unwrap().0, created_at);
    assert_eq!(
        st.expires_at.unwrap().0,
        created_at + SignedDuration::from_mins(30)
    );

    // Exactly the maximum is fine; over it the API server refuses with the reason.
    apply(
        &env,
        "hour",
        serde_json::json!({"device": "laptop", "duration": "1h"}),
    )
    .await;
    let err = env
        .sessions
        .patch(
            "long",
            &PatchParams::apply(TEST_MANAGER),
            &Patch::Apply(manifest(
                "long",
                serde_json::json!({"device": "laptop", "duration": "2h"}),
            )),
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("spec.duration 2h exceeds the cluster maximum of 1h"),
        "{err}"
    );
}

#[tokio::test]
async fn reapplying_a_finished_session_does_not_revive_it() {
    let env = setup("reapply").await;
    let spec = serde_json::json!({"device": "laptop", "duration": "2s"});
    apply(&env, "brief", spec.clone()).await;
    let ended = wait_phase(&env, "brief", SessionPhase::Expired).await;
    eventually("the finalizer is released", PATIENCE, || async {
        let s = env.sessions.get("brief").await.ok()?;
        s.metadata
            .finalizers
            .unwrap_or_default()
            .is_empty()
            .then_some(())
    })
    .await;
    let reconciles = |body: &str| -> u64 {
        body.lines()
            .find(|l| l.starts_with("tether_operator_reconcile_duration_seconds_count{controller=\"remotesession\"}"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let before = reconciles(&env.operator.get("/metrics").await.unwrap().1);

    // The GitOps tool applies the original manifest again, plus a label (so the object really
    // changes and the operator must look at it).
    let mut again = manifest("brief", spec);
    again["metadata"]["labels"] = serde_json::json!({"synced-by": "gitops"});
    env.sessions
        .patch(
            "brief",
            &PatchParams::apply(TEST_MANAGER),
            &Patch::Apply(&again),
        )
        .await
        .unwrap();
    eventually(
        "the operator reconciled the re-applied session",
        PATIENCE,
        || async {
            let after = reconciles(&env.operator.get("/metrics").await.ok()?.1);
            (after > before).then_some(())
        },
    )
    .await;
    let now = env.sessions.get("brief").await.unwrap();
    assert_eq!(
        now.status, ended.status,
        "status of a finished session never changes"
    );
    assert!(
        access_secret(&env, "brief").await.is_none(),
        "no new credentials"
    );
}

#[tokio::test]
async fn dynamic_mode_and_consent_decide_the_session() {
    let env = setup("dynamic").await;
    device_reports(&env, "laptop", false, &["dana"]).await;
    device_reports(&env, "kiosk", false, &[]).await;

    // Nobody at the kiosk: unattended, active as soon as the agent is connected.
    apply(
        &env,
        "kiosk-fix",
        serde_json::json!({"device": "kiosk", "mode": "Dynamic"}),
    )
    .await;
    let s = wait_phase(&env, "kiosk-fix", SessionPhase::Pending).await;
    assert_eq!(
        format!("{:?}", s.status.unwrap().effective_mode),
        "Some(Unattended)"
    );
    device_reports(&env, "kiosk", true, &[]).await;
    let active = wait_phase(&env, "kiosk-fix", SessionPhase::Active).await;
    let st = active.status.unwrap();
    assert!(st.started_at.is_some());
    assert!(
        st.conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
    );

    // Dana is logged on: interactive, and her refusal denies the session.
    apply(
        &env,
        "laptop-fix",
        serde_json::json!({"device": "laptop", "mode": "Dynamic"}),
    )
    .await;
    let s = wait_phase(&env, "laptop-fix", SessionPhase::Pending).await;
    assert_eq!(
        format!("{:?}", s.status.unwrap().effective_mode),
        "Some(Interactive)"
    );
    device_reports(&env, "laptop", true, &["dana"]).await;
    let api = env.sessions.clone();
    eventually("waiting for consent", PATIENCE, || {
        let api = api.clone();
        async move {
            let st = api.get("laptop-fix").await.ok()?.status?;
            (st.reason.as_deref() == Some("WaitingForConsent")).then_some(())
        }
    })
    .await;
    relay_reports(
        &env,
        "laptop-fix",
        &[("Consented", "False", "ConsentRefused")],
    )
    .await;
    let denied = wait_phase(&env, "laptop-fix", SessionPhase::Denied).await;
    assert_eq!(
        denied.status.unwrap().reason.as_deref(),
        Some("ConsentRefused")
    );
    eventually("the access Secret is deleted", PATIENCE, || async {
        access_secret(&env, "laptop-fix")
            .await
            .is_none()
            .then_some(())
    })
    .await;

    // A session on a device that does not exist fails with a clear reason.
    apply(
        &env,
        "ghost",
        serde_json::json!({"device": "no-such-device"}),
    )
    .await;
    let failed = wait_phase(&env, "ghost", SessionPhase::Failed).await;
    let st = failed.status.unwrap();
    assert_eq!(st.reason.as_deref(), Some("DeviceNotFound"));
    assert_eq!(
        st.message.unwrap(),
        format!(
            "Device no-such-device does not exist in namespace {}",
            env.ns
        )
    );
}
