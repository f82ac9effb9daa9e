//! A namespace for asking for help and approving it: the chart's roles bound to the test users,
//! the Device `laptop`, and the operator watching the namespace as a process.

use std::process::Output;

use kube::api::{Api, Patch, PatchParams};
use tether_crds::Device;

use crate::dataplane::kubectl_tether;
use crate::{
    OPERATOR_USER, Operator, TEST_MANAGER, control_plane, install_chart_templates, install_crds,
    kubectl_ok,
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
