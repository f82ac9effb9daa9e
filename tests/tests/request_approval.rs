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

/// Waits until AssistanceRequest `name` was approved (its session may already be under way).
async fn approved(
    api: &Api<tether_crds::AssistanceRequest>,
    name: &str,
) -> tether_crds::AssistanceRequest {
    tether_e2e::eventually(
        &format!("{name} is approved"),
        tether_e2e::PATIENCE,
        || async {
            let r = api.get(name).await.ok()?;
            let approved = r
                .status
                .as_ref()?
                .conditions
                .iter()
                .any(|c| c.type_ == "Approved" && c.status == "True");
            approved.then_some(r)
        },
    )
    .await
}

/// A status patch written straight to the API server as `user`; its error output.
fn raw_status_patch(
    env: &tether_e2e::requests::Env,
    user: &str,
    name: &str,
    patch: &str,
) -> String {
    let out = kubectl(
        control_plane(),
        user,
        &[
            "patch",
            "assistancerequest",
            name,
            "-n",
            &env.ns,
            "--subresource=status",
            "--type=merge",
            "-p",
            patch,
        ],
    );
    assert!(
        !out.status.success(),
        "{user}'s patch was admitted: {patch}"
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test]
async fn a_group_policy_asking_for_two_approvers_needs_two_distinct_people() {
    let env = with_user_roles("twoeyes", &[]).await;
    let policy = |spec: &str| {
        format!(
            "apiVersion: tether.dev/v1alpha1\nkind: SessionPolicy\nmetadata:\n  name: four-eyes\nspec:\n  approvals: {spec}\n"
        )
    };
    let out =
        tether_e2e::kubectl_apply(control_plane(), "admin", &env.ns, &policy("{required: 2}"));
    assert!(out.status.success(), "{out:?}");
    ok(tether(
        &env,
        "alice",
        &[
            "request",
            "laptop",
            "--name",
            "two",
            "--reason",
            "payroll server",
        ],
    ));
    // The operator writes what approving takes before anyone can approve.
    let api: Api<tether_crds::AssistanceRequest> = Api::namespaced(env.admin.clone(), &env.ns);
    let rule = tether_e2e::eventually(
        "the approval rule is written",
        tether_e2e::PATIENCE,
        || async { api.get("two").await.ok()?.status?.approval_rule },
    )
    .await;
    assert_eq!(rule.required, 2);
    assert_eq!(rule.policies, vec![format!("{}/four-eyes", env.ns)]);

    // One approval leaves it Pending.
    let said = ok(tether(&env, "bob", &["approve", "two"]));
    assert!(
        said.contains("approval added (1 of 2 approvers; waiting for 1 more)"),
        "{said}"
    );
    let pending = tether_e2e::eventually(
        "the first approval is counted",
        tether_e2e::PATIENCE,
        || async {
            let r = api.get("two").await.ok()?;
            let st = r.status.clone()?;
            (st.message.as_deref()?
                == "approved by 1 of 2 required approvers (bob); waiting for 1 more")
                .then_some(r)
        },
    )
    .await;
    assert_eq!(pending.status.unwrap().phase, Some(RequestPhase::Pending));
    // The same person twice counts once: the plugin says so, and the API server refuses it
    // from anyone who writes the status directly.
    let err = fails(tether(&env, "bob", &["approve", "two"]));
    assert!(err.contains("you (bob) already approved round 1"), "{err}");
    let stored =
        serde_json::to_value(&api.get("two").await.unwrap().status.unwrap().approvals).unwrap();
    let with = |extra: serde_json::Value| {
        let mut list = stored.as_array().unwrap().clone();
        list.push(extra);
        serde_json::json!({"status": {"approvals": list}}).to_string()
    };
    let again = serde_json::json!({"round": 1, "decision": "Approved", "approver": "bob", "reason": "again"});
    let err = raw_status_patch(&env, "bob", "two", &with(again));
    assert!(
        err.contains(
            "bob already approved round 1 of AssistanceRequest two; each approver counts once"
        ),
        "{err}"
    );
    // Nor can one approval stand for the whole decision, or an approval be written in another's name.
    let err = raw_status_patch(
        &env,
        "bob",
        "two",
        r#"{"status":{"approval":{"round":1,"decision":"Approved","approver":"bob"}}}"#,
    );
    assert!(
        err.contains("AssistanceRequest two needs 2 approvers"),
        "{err}"
    );
    let forged = serde_json::json!({"round": 1, "decision": "Approved", "approver": "dave"});
    let err = raw_status_patch(&env, "bob", "two", &with(forged));
    assert!(err.contains("must be your own (bob)"), "{err}");
    // And the approvals already given stay as they are.
    let edited = serde_json::json!({"status": {"approvals": [
        {"round": 1, "decision": "Approved", "approver": "bob", "reason": "edited"},
    ]}});
    let err = raw_status_patch(&env, "bob", "two", &edited.to_string());
    assert!(err.contains("earlier approvals cannot be changed"), "{err}");

    // A second, different approver approves it; both are recorded with when they approved.
    let said = ok(tether(&env, "dave", &["approve", "two"]));
    assert!(said.contains("approved (2 of 2 approvers)"), "{said}");
    let st = approved(&api, "two").await.status.unwrap();
    let who: Vec<&str> = st.approvals.iter().map(|a| a.approver.as_str()).collect();
    assert_eq!(who, vec!["bob", "dave"]);
    assert!(st.approvals.iter().all(|a| a.decided_at.is_some()));
    wait_session(&env, "two-1", SessionPhase::Pending).await;

    // Approvers from a named group only: dave (not in it) is refused, bob approves.
    let out = tether_e2e::kubectl_apply(
        control_plane(),
        "admin",
        &env.ns,
        &policy("{required: 1, groups: [approvers]}"),
    );
    assert!(out.status.success(), "{out:?}");
    ok(tether(
        &env,
        "alice",
        &[
            "request", "laptop", "--name", "grouped", "--reason", "printer",
        ],
    ));
    tether_e2e::eventually(
        "the group rule is written",
        tether_e2e::PATIENCE,
        || async {
            let rule = api.get("grouped").await.ok()?.status?.approval_rule?;
            (rule.groups == vec!["approvers".to_owned()]).then_some(())
        },
    )
    .await;
    let err = fails(tether(&env, "dave", &["approve", "grouped"]));
    assert!(
        err.contains("only members of approvers may approve AssistanceRequest grouped"),
        "{err}"
    );
    ok(tether(&env, "bob", &["approve", "grouped"]));
    approved(&api, "grouped").await;
}
