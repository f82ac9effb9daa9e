//! SessionPolicies against a real kube-apiserver: the chart's admission policy refuses each
//! rule's violation with a message naming the policy and the rule, passes sessions that meet
//! every rule, leaves admitted sessions alone when a policy tightens, applies the cluster-wide
//! policy in every namespace, and `kubectl tether policy` shows the effective policy.

#![allow(clippy::unwrap_used)] // Tests fail loudly on any unexpected error.

use tether_e2e::lifecycle::tether_cli;
use tether_e2e::output::{stderr, stdout};
use tether_e2e::{
    PATIENCE, SYSTEM_NAMESPACE, control_plane, eventually, install_chart_templates, install_crds,
    kubectl_apply, kubectl_ok,
};

/// The CRDs and the chart's SessionPolicy admission policy, and a fresh namespace.
async fn setup(prefix: &str) -> String {
    let cp = control_plane();
    let admin = cp.client("admin").await.unwrap();
    install_crds(&admin).await.unwrap();
    install_chart_templates(
        &[
            "templates/session-policies.yaml",
            "templates/user-roles.yaml",
        ],
        &[],
    );
    cp.namespace(prefix).await.unwrap()
}

fn session(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: tether.dev/v1alpha1\nkind: RemoteSession\nmetadata:\n  name: {name}\nspec:\n  device: laptop\n{spec}"
    )
}

fn policy(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: tether.dev/v1alpha1\nkind: SessionPolicy\nmetadata:\n  name: {name}\nspec:\n{spec}"
    )
}

/// Applies `yaml` as the administrator in `ns`; the error output when it is refused.
fn apply(ns: &str, yaml: &str) -> Result<(), String> {
    let out = kubectl_apply(control_plane(), "admin", ns, yaml);
    if out.status.success() {
        Ok(())
    } else {
        Err(stderr(&out))
    }
}

/// Waits until the API server refuses `yaml` (the admission plugin learns of new parameters
/// through a watch, a moment after they are stored), trying with server-side dry runs so
/// nothing is created meanwhile, then applies it for real and returns the refusal.
async fn refused(ns: &str, yaml: &str) -> String {
    use std::io::Write;
    eventually("the SessionPolicy is in force", PATIENCE, || async {
        let mut child = control_plane()
            .kubectl("admin")
            .args(["apply", "--dry-run=server", "-n", ns, "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(yaml.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        (!out.status.success()).then_some(())
    })
    .await;
    apply(ns, yaml).expect_err("refused by a dry run, admitted for real")
}

#[tokio::test]
async fn each_rule_of_a_group_policy_is_enforced_at_admission_with_its_name() {
    let ns = setup("policy-rules").await;
    let servers = "  modes: [Unattended, Interactive]\n  recording: Required\n  maxDuration: 2h\n  features:\n    desktop: ViewOnly\n    processes: false\n    clipboardToDevice: false\n  adminTools:\n    groups: [seniors]\n";
    apply(&ns, &policy("servers", servers)).unwrap();
    let ok = "  mode: Unattended\n  recording: Required\n  duration: 1h\n  technicians:\n    groups: [seniors]\n  features:\n    desktop: ViewOnly\n    processes: false\n";
    // Each case breaks one rule of a spec that passes them all.
    let cases = [
        (
            "mode",
            ok.replace("mode: Unattended", "mode: Dynamic"),
            "rule modes: mode Dynamic is not allowed here (allowed: Unattended, Interactive)",
        ),
        (
            "recording",
            ok.replace("recording: Required", "recording: Enabled"),
            "rule recording: recording Enabled is less than this group requires (Required)",
        ),
        (
            "duration",
            ok.replace("duration: 1h", "duration: 3h"),
            "rule maxDuration: spec.duration 3h is longer than this group allows (2h)",
        ),
        (
            "desktop",
            ok.replace("desktop: ViewOnly", "desktop: Control"),
            "rule features.desktop: desktop Control is more than this group allows (at most ViewOnly)",
        ),
        (
            "desktop-default",
            ok.replace("    desktop: ViewOnly\n", ""),
            "rule features.desktop: desktop Control",
        ),
        (
            "processes",
            ok.replace("processes: false", "processes: true"),
            "rule features.processes: sessions here may not enable processes",
        ),
        (
            "processes-default",
            ok.replace("    processes: false\n", ""),
            "rule features.processes",
        ),
        (
            "clipboard",
            format!("{ok}    clipboard:\n      toDevice: true\n"),
            "rule features.clipboardToDevice: the clipboard may not travel technician → device here",
        ),
        (
            "admin-group",
            ok.replace("groups: [seniors]", "groups: [juniors]"),
            "rule adminTools: a session with a shell or the process list must name its technicians, only users [] and groups [seniors]",
        ),
        (
            "admin-anyone",
            ok.replace("  technicians:\n    groups: [seniors]\n", ""),
            "rule adminTools",
        ),
        (
            "admin-user",
            ok.replace(
                "    groups: [seniors]\n",
                "    groups: [seniors]\n    users: [mallory]\n",
            ),
            "rule adminTools",
        ),
    ];
    let first = session("probe", &cases[0].1);
    let message = refused(&ns, &first).await;
    assert!(
        message.contains(&format!("SessionPolicy {ns}/servers, {}", cases[0].2)),
        "{message}"
    );
    for (name, spec, want) in &cases[1..] {
        let err = apply(&ns, &session(name, spec)).expect_err(name);
        assert!(
            err.contains(&format!("SessionPolicy {ns}/servers, ")) && err.contains(want),
            "{name}: want {want:?} in {err}"
        );
    }
    // A session that meets every rule is admitted; without a shell or the process list, the
    // admin-tools rule does not ask for technicians.
    apply(&ns, &session("compliant", ok)).unwrap();
    apply(
        &ns,
        &session(
            "files-only",
            "  mode: Interactive\n  recording: Required\n  features:\n    desktop: Disabled\n    shell: false\n    processes: false\n",
        ),
    )
    .unwrap();

    // Tightening the policy does not touch admitted sessions: annotating one (as GitOps tools
    // and `terminate` do) is not a spec change, so it is not checked again; a spec change is.
    apply(
        &ns,
        &policy(
            "servers",
            &servers.replace("maxDuration: 2h", "maxDuration: 30m"),
        ),
    )
    .unwrap();
    let cp = control_plane();
    let longer = session("longer", &ok.replace("duration: 1h", "duration: 45m"));
    let message = refused(&ns, &longer).await;
    assert!(message.contains("rule maxDuration"), "{message}");
    kubectl_ok(
        cp,
        "admin",
        &[
            "annotate",
            "-n",
            &ns,
            "remotesession",
            "compliant",
            "example.com/ticket=42",
        ],
    );

    // A second policy in the namespace applies as well.
    apply(&ns, &policy("no-chat", "  features:\n    chat: false\n")).unwrap();
    let chatty = session("chatty", &ok.replace("duration: 1h", "duration: 20m"));
    let message = refused(&ns, &chatty).await;
    assert!(
        message.contains(&format!("SessionPolicy {ns}/no-chat, rule features.chat")),
        "{message}"
    );

    // What `kubectl tether policy` shows a viewer: both policies, each rule's effective value.
    kubectl_ok(
        cp,
        "admin",
        &[
            "create",
            "rolebinding",
            "viewers",
            "-n",
            &ns,
            "--clusterrole=tether-viewer",
            "--user=dave",
        ],
    );
    let out = eventually("dave may read the policies", PATIENCE, || async {
        let out = tether_cli("dave", &ns, &["policy"]);
        out.status.success().then(|| stdout(&out))
    })
    .await;
    for line in [
        &format!("    {ns}/servers"),
        &format!("    {ns}/no-chat"),
        "modes                            Unattended, Interactive",
        "desktop                          at most ViewOnly",
        "chat                             not allowed",
        "processes                        not allowed",
        "recording                        at least Required",
        "max duration                     30m",
        "admin tools (shell, processes)   only users [] and groups [seniors]",
    ] {
        assert!(out.contains(line), "{line:?} missing from\n{out}");
    }
}

#[tokio::test]
async fn the_cluster_wide_policy_applies_in_every_namespace_and_bad_policies_are_refused() {
    let ns = setup("policy-cluster").await;
    let other = control_plane().namespace("policy-cluster-b").await.unwrap();
    // The cluster-wide policy only forbids keeping keystrokes: nothing the other test's
    // sessions ask for.
    apply(
        SYSTEM_NAMESPACE,
        &policy("default", "  features:\n    recordKeystrokes: false\n"),
    )
    .unwrap();
    let keys = session("keys", "  features:\n    recordKeystrokes: true\n");
    for ns in [&ns, &other] {
        let message = refused(ns, &keys).await;
        assert!(
            message.contains(&format!(
                "SessionPolicy {SYSTEM_NAMESPACE}/default, rule features.recordKeystrokes"
            )),
            "{message}"
        );
    }
    apply(&ns, &session("plain", "  duration: 10m\n")).unwrap();
    let out = tether_cli("admin", &other, &["policy"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = stdout(&out);
    assert!(
        out.contains(&format!("{SYSTEM_NAMESPACE}/default (cluster-wide)")),
        "{out}"
    );
    assert!(
        out.contains("keystrokes in recordings         not allowed"),
        "{out}"
    );

    // Policies themselves are checked by the schema; a null is dropped, not stored.
    for (bad, want) in [
        ("  modes: [Sometimes]\n", "Unsupported value: \"Sometimes\""),
        ("  maxDuration: forever\n", "spec.maxDuration"),
        ("  modes: []\n", "spec.modes"),
        ("  features:\n    desktop: Off\n", "spec.features.desktop"),
    ] {
        let err = apply(&ns, &policy("bad", bad)).expect_err(bad);
        assert!(err.contains(want), "{bad}: want {want:?} in {err}");
    }
    apply(
        &ns,
        &policy("nulls", "  maxDuration: null\n  features: null\n"),
    )
    .unwrap();
    apply(&ns, &session("after-nulls", "  duration: 10m\n")).unwrap();
    let stored = kubectl_ok(
        control_plane(),
        "admin",
        &[
            "get",
            "-n",
            &ns,
            "sessionpolicy",
            "nulls",
            "-o",
            "jsonpath={.spec}",
        ],
    );
    assert!(!stored.contains("null"), "{stored}");
}
