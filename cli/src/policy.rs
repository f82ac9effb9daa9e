//! `kubectl tether policy [NAMESPACE]`: the SessionPolicies that apply to a namespace's
//! sessions — its own and the cluster-wide one — and the effective policy they make together
//! (the API server checks each, so a session must meet the strictest of every rule).

use anyhow::Result;
use kube::api::{Api, ListParams};
use tether_crds::business_hours::Enforcement;
use tether_crds::session_policy::{CLUSTER_POLICY, FeatureLimits};
use tether_crds::{SessionPolicy, SessionPolicySpec};
use tether_proto::text::escape;

use crate::client::{GlobalArgs, connect, explain};

/// Flags of `policy`.
#[derive(Clone, Debug, clap::Args)]
pub struct Args {
    /// The namespace (device group) to show; default: the context's namespace (or -n).
    #[arg(value_name = "NAMESPACE")]
    pub namespace_arg: Option<String>,
    /// The namespace Tether is installed in, which holds the cluster-wide policy.
    #[arg(long, default_value = "tether-system")]
    pub operator_namespace: String,
}

/// Runs `policy`.
pub async fn run(global: &GlobalArgs, args: Args) -> Result<()> {
    let conn = connect(global).await?;
    let ns = args.namespace_arg.unwrap_or(conn.namespace);
    let own = Api::<SessionPolicy>::namespaced(conn.client.clone(), &ns)
        .list(&ListParams::default())
        .await
        .map_err(|e| explain(e, &format!("list SessionPolicies in namespace {ns}")))?;
    let cluster = Api::<SessionPolicy>::namespaced(conn.client.clone(), &args.operator_namespace)
        .get_opt(CLUSTER_POLICY)
        .await;
    let mut applied: Vec<(String, SessionPolicySpec)> = Vec::new();
    let mut notes = Vec::new();
    match cluster {
        Ok(Some(p)) => applied.push((
            format!(
                "{}/{CLUSTER_POLICY} (cluster-wide)",
                args.operator_namespace
            ),
            p.spec,
        )),
        Ok(None) => notes.push(format!(
            "no cluster-wide policy ({}/{CLUSTER_POLICY} does not exist)",
            args.operator_namespace
        )),
        Err(e) => notes.push(format!(
            "the cluster-wide policy could not be read: {}",
            explain(e, "read it")
        )),
    }
    for p in own.items {
        let name = p.metadata.name.clone().unwrap_or_default();
        if ns == args.operator_namespace && name == CLUSTER_POLICY {
            continue;
        }
        applied.push((format!("{ns}/{name}"), p.spec));
    }
    print!("{}", render(&ns, &applied, &notes));
    Ok(())
}

/// The report: the policies that apply, then each rule's effective value.
fn render(ns: &str, applied: &[(String, SessionPolicySpec)], notes: &[String]) -> String {
    let mut out = format!("Sessions in namespace {}:\n", escape(ns));
    if applied.is_empty() {
        out.push_str(
            "  no SessionPolicy applies: only the cluster's maximum duration limits them\n",
        );
    } else {
        out.push_str("  policies (a session must pass each):\n");
        for (name, _) in applied {
            out.push_str(&format!("    {}\n", escape(name)));
        }
    }
    for note in notes {
        out.push_str(&format!("  note: {}\n", escape(note)));
    }
    let effective = applied
        .iter()
        .fold(SessionPolicySpec::default(), |acc, (_, p)| acc.narrowed(p));
    let mut rows: Vec<Vec<String>> = Vec::new();
    let any = "any".to_owned();
    rows.push(vec![
        "modes".into(),
        effective
            .modes
            .as_ref()
            .map(|m| {
                if m.is_empty() {
                    "none (no session can be created)".to_owned()
                } else {
                    m.iter()
                        .map(|m| format!("{m:?}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            })
            .unwrap_or_else(|| any.clone()),
    ]);
    let f = effective.features.unwrap_or_default();
    rows.push(vec![
        "desktop".into(),
        f.desktop
            .map(|d| format!("at most {d:?}"))
            .unwrap_or_else(|| "Control".into()),
    ]);
    for (rule, value) in switches(&f) {
        rows.push(vec![
            rule.into(),
            match value {
                Some(false) => "not allowed".into(),
                _ => "allowed".into(),
            },
        ]);
    }
    rows.push(vec![
        "recording".into(),
        effective
            .recording
            .map(|r| format!("at least {r:?}"))
            .unwrap_or_else(|| any.clone()),
    ]);
    rows.push(vec![
        "max duration".into(),
        effective
            .max_duration
            .map(|d| d.as_str().to_owned())
            .unwrap_or_else(|| "the cluster's maximum".into()),
    ]);
    rows.push(vec![
        "consent timeout".into(),
        effective
            .consent_timeout
            .as_ref()
            .map(|d| format!("at most {} (or the relay's, when shorter)", d.as_str()))
            .unwrap_or_else(|| "the relay's".into()),
    ]);
    rows.push(vec![
        "admin tools (shell, processes)".into(),
        match &effective.admin_tools {
            None => "any technician the session names".into(),
            Some(t) if t.users.is_empty() && t.groups.is_empty() => {
                "nobody (sessions must disable them)".into()
            }
            Some(t) => format!(
                "only users [{}] and groups [{}]",
                escape(&t.users.join(", ")),
                escape(&t.groups.join(", "))
            ),
        },
    ]);
    // Each policy's business hours apply on their own: a session starts only inside all.
    let hours: Vec<String> = applied
        .iter()
        .filter_map(|(name, p)| {
            let h = p.business_hours.as_ref()?;
            let outside = match h.outside {
                Enforcement::Hold => "held outside",
                Enforcement::Refuse => "refused outside",
            };
            Some(format!(
                "{} ({outside}; {})",
                escape(&h.describe()),
                escape(name)
            ))
        })
        .collect();
    if hours.is_empty() {
        rows.push(vec!["business hours".into(), "any time".into()]);
    }
    for h in hours {
        rows.push(vec!["business hours".into(), h]);
    }
    let c = effective.concurrency.clone().unwrap_or_default();
    let full = match c.when_full {
        Enforcement::Hold => "the next waits",
        Enforcement::Refuse => "the next is refused",
    };
    let limit = |n: Option<u32>| match n {
        Some(n) => format!("at most {n} at once ({full})"),
        None => "no limit".into(),
    };
    rows.push(vec![
        "sessions per namespace".into(),
        limit(c.per_namespace),
    ]);
    rows.push(vec!["sessions per device".into(), limit(c.per_device)]);
    rows.push(vec![
        "approvers per request".into(),
        match &effective.approvals {
            None => "1, anyone allowed to approve".into(),
            Some(a) if a.groups.is_empty() => format!("{} distinct people", a.required.max(1)),
            Some(a) => format!(
                "{} distinct people from groups [{}]",
                a.required.max(1),
                escape(&a.groups.join(", "))
            ),
        },
    ]);
    out.push('\n');
    out.push_str(&crate::table::render(&["RULE", "EFFECTIVE"], &rows));
    out
}

/// The on/off rules and their limits.
fn switches(f: &FeatureLimits) -> [(&'static str, Option<bool>); 7] {
    [
        ("shell", f.shell),
        ("files", f.files),
        ("chat", f.chat),
        ("processes", f.processes),
        ("clipboard to device", f.clipboard_to_device),
        ("clipboard from device", f.clipboard_from_device),
        ("keystrokes in recordings", f.record_keystrokes),
    ]
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // Tests fail loudly on any unexpected error.

    use super::*;

    #[test]
    fn the_report_shows_the_strictest_value_of_each_rule() {
        let cluster: SessionPolicySpec =
            serde_json::from_str(r#"{"recording": "Enabled", "maxDuration": "8h"}"#).unwrap();
        let group: SessionPolicySpec = serde_json::from_str(
            r#"{"modes": ["Unattended"], "recording": "Required",
                "features": {"desktop": "ViewOnly", "shell": false},
                "adminTools": {"groups": ["seniors"]},
                "businessHours": {"timeZone": "Europe/Madrid", "outside": "Refuse",
                  "windows": [{"days": ["Mon", "Fri"], "start": "08:00", "end": "18:00"}]},
                "concurrency": {"perDevice": 1},
                "consentTimeout": "45s",
                "approvals": {"required": 2, "groups": ["leads"]}}"#,
        )
        .unwrap();
        let out = render(
            "servers",
            &[
                ("tether-system/default (cluster-wide)".into(), cluster),
                ("servers/\u{1b}[31mlocked".into(), group),
            ],
            &[],
        );
        assert!(
            out.contains("tether-system/default (cluster-wide)"),
            "{out}"
        );
        // Names are escaped before they reach the terminal.
        assert!(!out.contains('\u{1b}'), "{out}");
        for line in [
            "modes                            Unattended",
            "desktop                          at most ViewOnly",
            "shell                            not allowed",
            "files                            allowed",
            "recording                        at least Required",
            "max duration                     8h",
            "admin tools (shell, processes)   only users [] and groups [seniors]",
            "business hours                   Mon,Fri 08:00–18:00 Europe/Madrid (refused outside; servers/\\u{1b}[31mlocked)",
            "sessions per namespace           no limit",
            "sessions per device              at most 1 at once (the next waits)",
            "consent timeout                  at most 45s (or the relay's, when shorter)",
            "approvers per request            2 distinct people from groups [leads]",
        ] {
            assert!(out.contains(line), "{line:?} missing from\n{out}");
        }
        let none = render("open", &[], &[]);
        assert!(none.contains("no SessionPolicy applies"), "{none}");
    }
}
