//! Asking for help, approving it and being told, against a real API server with real users:
//! a request from ask to session through the real `kubectl`, the operator as a process
//! notifying a real SMTP server (STARTTLS) and a webhook, and a dead SMTP server that stalls
//! nothing.

#![allow(clippy::unwrap_used)] // Tests fail loudly on any unexpected error.

use kube::api::Api;
use tether_crds::AssistanceRequest;
use tether_crds::assistance_request::RequestPhase;
use tether_crds::remote_session::SessionPhase;
use tether_e2e::output::{fails, ok};
use tether_e2e::requests::{tether, wait_request, wait_session, with_user_roles};
use tether_e2e::sinks::{SmtpSink, WebhookSink};
use tether_e2e::{PATIENCE, control_plane, eventually, kubectl, kubectl_ok};

#[tokio::test]
async fn request_approve_run_and_notify() {
    let smtp = SmtpSink::start(true).await;
    let hook = WebhookSink::start().await;
    let smtp_port = format!("--smtp-port={}", smtp.port);
    let ca = format!(
        "--smtp-ca-file={}",
        smtp.ca_file.as_ref().unwrap().display()
    );
    let url = format!("--webhook-url={}", hook.url());
    let token_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(token_file.path(), "s3cret\n").unwrap();
    let token = format!("--webhook-token-file={}", token_file.path().display());
    let env = with_user_roles(
        "approve",
        &[
            "--smtp-host=127.0.0.1",
            &smtp_port,
            "--smtp-tls=starttls",
            &ca,
            "--smtp-from=tether@test.local",
            &url,
            &token,
        ],
    )
    .await;
    let cp = control_plane();

    // alice asks for help.
    let out = ok(tether(
        &env,
        "alice",
        &[
            "request",
            "laptop",
            "--name",
            "vpn",
            "--reason",
            "VPN fails with error 809",
            "--email",
            "dana@example.com",
            "--notify",
            "helpdesk@example.com",
            "--assignee-group",
            "technicians",
            "--duration",
            "45m",
        ],
    ));
    assert!(
        out.contains("assistancerequest.tether.dev/vpn created"),
        "{out}"
    );
    let pending = wait_request(&env, "vpn", RequestPhase::Pending).await;
    let annotations = pending.metadata.annotations.unwrap();
    assert_eq!(annotations["tether.dev/requested-by"], "alice");

    // She cannot approve it: the CLI says which verb is missing.
    let err = fails(tether(&env, "alice", &["approve", "vpn"]));
    assert!(
        err.contains("RBAC verb \"approve\" on assistancerequests.tether.dev is missing"),
        "{err}"
    );
    // Nor can she write the approval herself: RBAC refuses the status write.
    let raw = kubectl(
        cp,
        "alice",
        &[
            "patch",
            "assistancerequest",
            "vpn",
            "-n",
            &env.ns,
            "--subresource=status",
            "--type=merge",
            "-p",
            r#"{"status":{"approval":{"round":1,"decision":"Approved","approver":"alice"}}}"#,
        ],
    );
    assert!(!raw.status.success());
    assert!(String::from_utf8_lossy(&raw.stderr).contains("forbidden"));

    // bob approves; `kubectl wait` sees the condition.
    let out = ok(tether(
        &env,
        "bob",
        &["approve", "vpn", "--reason", "known VPN issue"],
    ));
    assert!(out.contains("approved"), "{out}");
    kubectl_ok(
        cp,
        "admin",
        &[
            "wait",
            "--for=condition=Approved",
            "assistancerequest/vpn",
            "-n",
            &env.ns,
            "--timeout=60s",
        ],
    );
    // A decision is final.
    let err = fails(tether(&env, "bob", &["deny", "vpn"]));
    assert!(err.contains("already decided"), "{err}");
    let raw = kubectl(
        cp,
        "bob",
        &[
            "patch",
            "assistancerequest",
            "vpn",
            "-n",
            &env.ns,
            "--subresource=status",
            "--type=merge",
            "-p",
            r#"{"status":{"approval":{"round":1,"decision":"Denied","approver":"bob"}}}"#,
        ],
    );
    assert!(
        String::from_utf8_lossy(&raw.stderr).contains("was already decided (Approved by bob)"),
        "{}",
        String::from_utf8_lossy(&raw.stderr)
    );
    // Approvers cannot forge the rest of the status.
    let raw = kubectl(
        cp,
        "bob",
        &[
            "patch",
            "assistancerequest",
            "vpn",
            "-n",
            &env.ns,
            "--subresource=status",
            "--type=merge",
            "-p",
            r#"{"status":{"phase":"Completed"}}"#,
        ],
    );
    assert!(
        String::from_utf8_lossy(&raw.stderr)
            .contains("only status.approval and status.approvals can be written by users")
    );

    // The approved request becomes a session with the template and the assignees.
    let session = wait_session(&env, "vpn-1", SessionPhase::Pending).await;
    assert_eq!(session.spec.duration.as_str(), "45m");
    assert_eq!(session.spec.technicians.groups, vec!["technicians"]);
    assert_eq!(session.spec.assistance_request.as_deref(), Some("vpn"));
    let owner = &session.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(owner.kind, "AssistanceRequest");
    let request = wait_request(&env, "vpn", RequestPhase::WaitingForConnection).await;
    assert_eq!(request.status.unwrap().approval.unwrap().approver, "bob");
    // The spec was never touched by the approval.
    assert_eq!(request.metadata.generation, Some(1));

    // The assigned technicians may connect (the operator signs carol a technician certificate
    // for the session); the requester may not, and nobody reads the session's Secret.
    tether_e2e::kubectl_apply(
        cp,
        "admin",
        "default",
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata:\n  name: e2e-certificate-requesters\nroleRef:\n  apiGroup: rbac.authorization.k8s.io\n  kind: ClusterRole\n  name: tether-certificate-requester\nsubjects:\n- apiGroup: rbac.authorization.k8s.io\n  kind: Group\n  name: technicians\n- apiGroup: rbac.authorization.k8s.io\n  kind: Group\n  name: approvers\n- apiGroup: rbac.authorization.k8s.io\n  kind: Group\n  name: requesters\n",
    );
    let carol = tether_e2e::technician::certificate("carol", &env.ns, "vpn-1")
        .await
        .unwrap();
    assert!(carol.is_ok(), "{carol:?}");
    let alice = tether_e2e::technician::certificate("alice", &env.ns, "vpn-1")
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        alice.contains("user alice may not connect to RemoteSession vpn-1"),
        "{alice}"
    );
    for user in ["carol", "alice"] {
        assert!(
            !kubectl(cp, user, &["get", "secret", "vpn-1-access", "-n", &env.ns])
                .status
                .success()
        );
    }

    // Readable tables and a timeline.
    let list = ok(tether(&env, "bob", &["list"]));
    assert!(
        list.contains("NAME") && list.contains("vpn") && list.contains("WaitingForConnection"),
        "{list}"
    );
    let sessions = ok(tether(&env, "bob", &["list", "sessions"]));
    assert!(
        sessions.contains("vpn-1") && sessions.contains("Pending"),
        "{sessions}"
    );
    let described = ok(tether(&env, "bob", &["describe", "vpn"]));
    for text in [
        "Decision:   Approved by bob",
        "Requested",
        "Approved",
        "SessionCreated",
        "WindowOpened",
    ] {
        assert!(
            described.contains(text),
            "{text} missing from:\n{described}"
        );
    }

    // Emails reached requester and assignee over STARTTLS for each change.
    let mails = eventually(
        "emails for Pending, Approved and WaitingForConnection",
        PATIENCE,
        || {
            let mails = smtp.messages();
            let subjects: Vec<String> = mails.iter().filter_map(|m| m.header("Subject")).collect();
            std::future::ready(
                ["Pending", "Approved", "WaitingForConnection"]
                    .iter()
                    .all(|p| subjects.iter().any(|s| s.ends_with(p)))
                    .then_some(mails),
            )
        },
    )
    .await;
    for mail in &mails {
        assert!(mail.tls, "sent without STARTTLS");
        assert_eq!(mail.mail_from, "tether@test.local");
        assert_eq!(
            mail.rcpt_tos,
            vec!["dana@example.com", "helpdesk@example.com"]
        );
        assert!(mail.content.contains("VPN fails with error 809"));
    }
    let approved = mails
        .iter()
        .find(|m| m.header("Subject").unwrap().ends_with("Approved"))
        .unwrap();
    assert!(
        approved
            .content
            .contains("Decision:  Approved by bob (known VPN issue)"),
        "{}",
        approved.content
    );

    // And the webhook got the same changes as JSON, with its token.
    let hooks = eventually("webhook calls", PATIENCE, || {
        let hooks = hook.received();
        std::future::ready(
            hooks
                .iter()
                .any(|h| h.body["phase"] == "WaitingForConnection")
                .then_some(hooks),
        )
    })
    .await;
    assert!(
        hooks
            .iter()
            .all(|h| h.authorization.as_deref() == Some("Bearer s3cret"))
    );
    let h = hooks
        .iter()
        .find(|h| h.body["phase"] == "Approved")
        .unwrap();
    assert_eq!(h.body["approval"]["approver"], "bob");
    assert_eq!(h.body["name"], "vpn");

    let api: Api<AssistanceRequest> = Api::namespaced(env.admin.clone(), &env.ns);
    let notified = api.get("vpn").await.unwrap().status.unwrap();
    assert!(
        notified
            .conditions
            .iter()
            .any(|c| c.type_ == "Notified" && c.status == "True")
    );
    let (_, metrics) = env.operator.get("/metrics").await.unwrap();
    assert!(
        metrics.contains(
            "tether_operator_notifications_total{channel=\"email\",result=\"delivered\"}"
        )
    );
}

#[tokio::test]
async fn a_dead_smtp_server_does_not_stall_the_operator() {
    let dead_port = tether_e2e::free_port();
    let env = with_user_roles(
        "deadsmtp",
        &[
            "--smtp-host=127.0.0.1",
            &format!("--smtp-port={dead_port}"),
            "--smtp-tls=none",
        ],
    )
    .await;
    ok(tether(
        &env,
        "alice",
        &[
            "request",
            "laptop",
            "--name",
            "quiet",
            "--reason",
            "x",
            "--email",
            "dana@example.com",
        ],
    ));
    wait_request(&env, "quiet", RequestPhase::Pending).await;
    ok(tether(&env, "bob", &["approve", "quiet"]));
    // The workflow goes on while the notifications fail.
    wait_session(&env, "quiet-1", SessionPhase::Pending).await;
    wait_request(&env, "quiet", RequestPhase::WaitingForConnection).await;
    let api: Api<AssistanceRequest> = Api::namespaced(env.admin.clone(), &env.ns);
    let condition = eventually("the failure is visible", PATIENCE, || async {
        let st = api.get("quiet").await.ok()?.status?;
        st.conditions
            .into_iter()
            .find(|c| c.type_ == "Notified" && c.status == "False")
    })
    .await;
    assert_eq!(condition.reason, "DeliveryFailed");
    assert!(condition.message.contains("email"), "{}", condition.message);
    let (_, metrics) = env.operator.get("/metrics").await.unwrap();
    assert!(
        metrics
            .contains("tether_operator_notifications_total{channel=\"email\",result=\"failed\"}"),
        "{metrics}"
    );
}
