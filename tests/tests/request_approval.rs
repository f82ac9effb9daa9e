//! Deciding requests for help, against a real API server with real users: the chart's roles
//! and admission policies decide who may request and approve (never one's own request, never
//! in someone else's name); denial, approval timeouts, one-time and reusable requests, and
//! eligibility checked again when the session starts. `kubectl tether` runs through the real
//! `kubectl`; the operator runs as a process.

#![allow(clippy::unwrap_used)] // Tests fail loudly on any unexpected error.

use kube::api::{Api, DeleteParams};
use tether_crds::Device;
use tether_crds::assistance_request::RequestPhase;
use tether_crds::remote_session::SessionPhase;
use tether_e2e::output::{fails, ok};
use tether_e2e::requests::{tether, wait_request, wait_session, with_user_roles};
use tether_e2e::{control_plane, kubectl, kubectl_ok};

#[tokio::test]
async fn self_approval_is_refused() {
    let env = with_user_roles("selfapprove", &[]).await;
    ok(tether(
        &env,
        "dave",
        &["request", "laptop", "--name", "mine", "--reason", "printer"],
    ));
    wait_request(&env, "mine", RequestPhase::Pending).await;
    let err = fails(tether(&env, "dave", &["approve", "mine"]));
    assert!(
        err.contains("self-approval is not allowed: dave requested AssistanceRequest mine"),
        "{err}"
    );

    // Creating a request in someone else's name is refused too.
    let yaml = format!(
        "apiVersion: tether.dev/v1alpha1\nkind: AssistanceRequest\nmetadata:\n  name: forged\n  namespace: {}\n  annotations:\n    tether.dev/requested-by: bob\nspec:\n  device: laptop\n  requester: {{name: Bob}}\n  reason: x\n",
        env.ns
    );
    let out = tether_e2e::kubectl_apply(control_plane(), "alice", &env.ns, &yaml);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("must be your own user name (alice)"));
    // A user allowed to write status but without the `approve` verb is stopped by admission.
    let cp = control_plane();
    kubectl_ok(
        cp,
        "admin",
        &[
            "create",
            "role",
            "status-writer",
            "-n",
            &env.ns,
            "--verb=get,patch",
            "--resource=assistancerequests.tether.dev/status",
        ],
    );
    kubectl_ok(
        cp,
        "admin",
        &[
            "create",
            "rolebinding",
            "carol-status",
            "-n",
            &env.ns,
            "--role=status-writer",
            "--user=carol",
        ],
    );
    let raw = kubectl(
        cp,
        "carol",
        &[
            "patch",
            "assistancerequest",
            "mine",
            "-n",
            &env.ns,
            "--subresource=status",
            "--type=merge",
            "-p",
            r#"{"status":{"approval":{"round":1,"decision":"Approved","approver":"carol"}}}"#,
        ],
    );
    let err = String::from_utf8_lossy(&raw.stderr);
    assert!(!raw.status.success());
    assert!(err.contains("user carol may not decide AssistanceRequest mine: RBAC verb \"approve\" on assistancerequests.tether.dev is missing"), "{err}");
    // A user without any role sees nothing.
    let err = fails(tether(
        &env,
        "carol",
        &["request", "laptop", "--reason", "x"],
    ));
    assert!(
        err.contains("not permitted") || err.contains("forbidden"),
        "{err}"
    );
}

#[tokio::test]
async fn denial_and_approval_timeout() {
    let env = with_user_roles("deny", &["--approval-timeout=3s"]).await;
    ok(tether(
        &env,
        "alice",
        &["request", "laptop", "--name", "nope", "--reason", "x"],
    ));
    wait_request(&env, "nope", RequestPhase::Pending).await;
    ok(tether(
        &env,
        "bob",
        &["deny", "nope", "--reason", "use the portal"],
    ));
    let denied = wait_request(&env, "nope", RequestPhase::Denied).await;
    let st = denied.status.unwrap();
    let condition = st.conditions.iter().find(|c| c.type_ == "Denied").unwrap();
    assert_eq!(condition.message, "denied by bob: use the portal");
    assert!(st.session.is_none());

    ok(tether(
        &env,
        "alice",
        &["request", "laptop", "--name", "ignored", "--reason", "y"],
    ));
    let expired = wait_request(&env, "ignored", RequestPhase::ApprovalExpired).await;
    assert_eq!(
        expired.status.unwrap().message.as_deref(),
        Some("nobody decided within 3s")
    );
    let err = fails(tether(&env, "bob", &["approve", "ignored"]));
    assert!(
        err.contains("only a Pending request can be decided"),
        "{err}"
    );
    let err = fails(tether(&env, "bob", &["approve", "ghost"]));
    assert!(err.contains("AssistanceRequest ghost not found"), "{err}");
}

#[tokio::test]
async fn one_time_and_reusable_requests() {
    let env = with_user_roles("reuse", &[]).await;
    // One-time: the request ends with its session.
    ok(tether(
        &env,
        "alice",
        &["request", "laptop", "--name", "once", "--reason", "x"],
    ));
    wait_request(&env, "once", RequestPhase::Pending).await;
    ok(tether(&env, "bob", &["approve", "once"]));
    wait_session(&env, "once-1", SessionPhase::Pending).await;
    ok(tether(
        &env,
        "admin",
        &["terminate", "once-1", "--reason", "fixed by phone"],
    ));
    let closed = wait_request(&env, "once", RequestPhase::Closed).await;
    assert!(
        closed
            .status
            .unwrap()
            .message
            .unwrap()
            .contains("fixed by phone")
    );
    let err = fails(tether(&env, "admin", &["request", "--again", "once"]));
    assert!(err.contains("is one-time"), "{err}");

    // Reusable: back to Inactive, then a new round with a new approval and a new session.
    ok(tether(
        &env,
        "alice",
        &[
            "request",
            "laptop",
            "--name",
            "kiosk",
            "--reason",
            "weekly check",
            "--reusable",
        ],
    ));
    wait_request(&env, "kiosk", RequestPhase::Pending).await;
    ok(tether(&env, "bob", &["approve", "kiosk"]));
    wait_session(&env, "kiosk-1", SessionPhase::Pending).await;
    ok(tether(&env, "admin", &["terminate", "kiosk-1"]));
    let inactive = wait_request(&env, "kiosk", RequestPhase::Inactive).await;
    let history = inactive.status.unwrap().history;
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].outcome, RequestPhase::Closed);

    ok(tether(&env, "admin", &["request", "--again", "kiosk"]));
    let again = wait_request(&env, "kiosk", RequestPhase::Pending).await;
    assert_eq!(again.status.unwrap().round, Some(2));
    ok(tether(&env, "bob", &["approve", "kiosk"]));
    wait_session(&env, "kiosk-2", SessionPhase::Pending).await;
}

#[tokio::test]
async fn eligibility_is_rechecked_when_the_session_starts() {
    let env = with_user_roles("eligible", &[]).await;
    let at = jiff::Timestamp::from_second(jiff::Timestamp::now().as_second() + 4)
        .unwrap()
        .to_string();
    ok(tether(
        &env,
        "alice",
        &[
            "request", "laptop", "--name", "later", "--reason", "x", "--at", &at,
        ],
    ));
    wait_request(&env, "later", RequestPhase::Pending).await;
    ok(tether(&env, "bob", &["approve", "later"]));
    wait_request(&env, "later", RequestPhase::Scheduled).await;
    // The device is decommissioned before the window opens.
    Api::<Device>::namespaced(env.admin.clone(), &env.ns)
        .delete("laptop", &DeleteParams::default())
        .await
        .unwrap();
    let failed = wait_request(&env, "later", RequestPhase::Failed).await;
    let message = failed.status.unwrap().message.unwrap();
    assert!(
        message.contains(&format!(
            "Device laptop does not exist in namespace {}",
            env.ns
        )),
        "{message}"
    );
}
