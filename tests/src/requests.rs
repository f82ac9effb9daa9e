//! A namespace for asking for help and approving it: the chart's roles bound to the test users,
//! the Device `laptop`, and the operator watching the namespace as a process; waiting for a
//! request or a session to reach a phase.

use std::process::Output;

use kube::api::{Api, Patch, PatchParams};
use tether_crds::assistance_request::RequestPhase;
use tether_crds::remote_session::SessionPhase;
use tether_crds::{AssistanceRequest, Device, RemoteSession};

use crate::dataplane::kubectl_tether;
use crate::{
    OPERATOR_USER, Operator, PATIENCE, TEST_MANAGER, control_plane, eventually,
    install_chart_templates, install_crds, kubectl_ok,
};

/// A namespace with roles bound, the Device `laptop`, and the operator watching it.
pub struct Env {
    /// The cluster administrator.
    pub admin: kube::Client,
    /// The test's namespace.
    pub ns: String,
    /// The operator, watching `ns`.
    pub operator: Operator,
}

/// Installs the CRDs and the chart's `templates` (with `set` values), creates a namespace
/// named after `prefix` with `bindings` (RoleBinding name, ClusterRole, `--user=…` or
/// `--group=…`), the Device `laptop`, and starts the operator with `operator_args`.
pub async fn setup(
    prefix: &str,
    templates: &[&str],
    set: &[&str],
    bindings: &[(&str, &str, &str)],
    operator_args: &[&str],
) -> Env {
    let cp = control_plane();
    let admin = cp.client("admin").await.expect("admin client");
    install_crds(&admin).await.expect("the CRDs are installed");
    install_chart_templates(templates, set);
    let ns = cp.namespace(prefix).await.expect("a test namespace");
    for (binding, role, subject) in bindings {
        kubectl_ok(
            cp,
            "admin",
            &[
                "create",
                "rolebinding",
                binding,
                "-n",
                &ns,
                &format!("--clusterrole={role}"),
                subject,
            ],
        );
    }
    let device = serde_json::json!({"apiVersion": "tether.dev/v1alpha1", "kind": "Device", "metadata": {"name": "laptop"}});
    Api::<Device>::namespaced(admin.clone(), &ns)
        .patch(
            "laptop",
            &PatchParams::apply(TEST_MANAGER),
            &Patch::Apply(&device),
        )
        .await
        .expect("the Device is applied");
    let operator = Operator::start(cp, OPERATOR_USER, &ns, operator_args).await;
    Env {
        admin,
        ns,
        operator,
    }
}

/// `kubectl tether …` as `user` in the test namespace, through the real kubectl.
pub fn tether(env: &Env, user: &str, args: &[&str]) -> Output {
    kubectl_tether(&env.ns, user, args, None)
}

/// Binds the chart's user roles in the test namespace: alice requests, bob approves, carol
/// is a technician, dave both requests and approves.
pub async fn with_user_roles(prefix: &str, operator_args: &[&str]) -> Env {
    let mut args = vec!["--max-session-duration=2h".to_owned()];
    args.extend(operator_args.iter().map(|a| (*a).to_owned()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    setup(
        prefix,
        &[
            "templates/operator-rbac.yaml",
            "templates/admission-policies.yaml",
            "templates/user-roles.yaml",
        ],
        &["operator.maxSessionDuration=2h"],
        &[
            ("requesters", "tether-requester", "--group=requesters"),
            ("approvers", "tether-approver", "--group=approvers"),
            ("technicians", "tether-technician", "--group=technicians"),
            ("dave-requests", "tether-requester", "--user=dave"),
            ("dave-approves", "tether-approver", "--user=dave"),
        ],
        &args,
    )
    .await
}

/// Waits until AssistanceRequest `name` is in `phase`.
pub async fn wait_request(env: &Env, name: &str, phase: RequestPhase) -> AssistanceRequest {
    let api: Api<AssistanceRequest> = Api::namespaced(env.admin.clone(), &env.ns);
    eventually(&format!("{name} is {phase}"), PATIENCE, || {
        let api = api.clone();
        async move {
            let r = api.get(name).await.ok()?;
            (r.status.as_ref()?.phase == Some(phase)).then_some(r)
        }
    })
    .await
}

/// Waits until RemoteSession `name` is in `phase`.
pub async fn wait_session(env: &Env, name: &str, phase: SessionPhase) -> RemoteSession {
    let api: Api<RemoteSession> = Api::namespaced(env.admin.clone(), &env.ns);
    eventually(&format!("{name} is {phase}"), PATIENCE, || {
        let api = api.clone();
        async move {
            let s = api.get(name).await.ok()?;
            (s.status.as_ref()?.phase == Some(phase)).then_some(s)
        }
    })
    .await
}
