//! `kubectl tether list`, `get` and `describe`: readable tables of requests and sessions, and
//! a timeline of what happened to one of them.

use anyhow::{Result, bail};
use jiff::Timestamp;
use k8s_openapi::api::events::v1::Event;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use tether_crds::{AssistanceRequest, RemoteSession};

use crate::client::{GlobalArgs, connect, explain};
use crate::table::{age, render};

/// What to list.
#[derive(Clone, Copy, Debug, Default, clap::ValueEnum)]
pub enum Kind {
    /// AssistanceRequests.
    #[default]
    Requests,
    /// RemoteSessions.
    Sessions,
}

/// Flags of `list`.
#[derive(Clone, Debug, clap::Args)]
pub struct ListArgs {
    /// What to list.
    #[arg(value_enum, default_value_t = Kind::Requests)]
    pub kind: Kind,
    /// Every namespace.
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
}

/// Flags of `get` and `describe`.
#[derive(Clone, Debug, clap::Args)]
pub struct NameArgs {
    /// An AssistanceRequest, or a RemoteSession if no request has that name.
    pub name: String,
}

fn opt(s: Option<&str>) -> String {
    s.filter(|s| !s.is_empty()).unwrap_or("-").to_owned()
}

fn request_rows(items: &[AssistanceRequest], now: Timestamp, with_ns: bool) -> Vec<Vec<String>> {
    items
        .iter()
        .map(|r| {
            let st = r.status.clone().unwrap_or_default();
            let mut row = Vec::new();
            if with_ns {
                row.push(r.namespace().unwrap_or_default());
            }
            row.extend([
                r.name_any(),
                st.phase.map_or("-".into(), |p| p.to_string()),
                r.spec.device.clone(),
                r.spec.requester.name.clone(),
                opt(st.approval.as_ref().map(|a| a.approver.as_str())),
                opt(st.session.as_deref()),
                r.metadata
                    .creation_timestamp
                    .as_ref()
                    .map_or("-".into(), |t| age(t.0, now)),
            ]);
            row
        })
        .collect()
}

fn session_rows(items: &[RemoteSession], now: Timestamp, with_ns: bool) -> Vec<Vec<String>> {
    items
        .iter()
        .map(|s| {
            let st = s.status.clone().unwrap_or_default();
            let mut row = Vec::new();
            if with_ns {
                row.push(s.namespace().unwrap_or_default());
            }
            let ends = st.expires_at.as_ref().map(|t| t.0);
            let left = match (st.phase, ends) {
                (Some(p), Some(end)) if !p.is_terminal() && end > now => {
                    let secs = end.duration_since(now).as_secs();
                    format!("{}m{:02}s", secs / 60, secs % 60)
                }
                _ => "-".into(),
            };
            row.extend([
                s.name_any(),
                st.phase.map_or("-".into(), |p| p.to_string()),
                s.spec.device.clone(),
                st.effective_mode.map_or("-".into(), |m| format!("{m:?}")),
                left,
                opt(s.spec.assistance_request.as_deref()),
                s.metadata
                    .creation_timestamp
                    .as_ref()
                    .map_or("-".into(), |t| age(t.0, now)),
            ]);
            row
        })
        .collect()
}

/// Runs `list`.
pub async fn list(global: &GlobalArgs, args: ListArgs) -> Result<()> {
    let conn = connect(global).await?;
    let now = Timestamp::now();
    let ns = &conn.namespace;
    let mut headers: Vec<&str> = if args.all_namespaces {
        vec!["NAMESPACE"]
    } else {
        vec![]
    };
    let out = match args.kind {
        Kind::Requests => {
            let api: Api<AssistanceRequest> = if args.all_namespaces {
                Api::all(conn.client.clone())
            } else {
                Api::namespaced(conn.client.clone(), ns)
            };
            let items = api
                .list(&ListParams::default())
                .await
                .map_err(|e| explain(e, &format!("list AssistanceRequests in namespace {ns}")))?
                .items;
            headers.extend([
                "NAME",
                "PHASE",
                "DEVICE",
                "REQUESTER",
                "APPROVER",
                "SESSION",
                "AGE",
            ]);
            if items.is_empty() {
                println!("No AssistanceRequests in namespace {ns}.");
                return Ok(());
            }
            render(&headers, &request_rows(&items, now, args.all_namespaces))
        }
        Kind::Sessions => {
            let api: Api<RemoteSession> = if args.all_namespaces {
                Api::all(conn.client.clone())
            } else {
                Api::namespaced(conn.client.clone(), ns)
            };
            let items = api
                .list(&ListParams::default())
                .await
                .map_err(|e| explain(e, &format!("list RemoteSessions in namespace {ns}")))?
                .items;
            headers.extend(["NAME", "PHASE", "DEVICE", "MODE", "LEFT", "REQUEST", "AGE"]);
            if items.is_empty() {
                println!("No RemoteSessions in namespace {ns}.");
                return Ok(());
            }
            render(&headers, &session_rows(&items, now, args.all_namespaces))
        }
    };
    print!("{out}");
    Ok(())
}

/// Runs `get`: one request (or session) as a table row.
pub async fn get(global: &GlobalArgs, args: NameArgs) -> Result<()> {
    let conn = connect(global).await?;
    let now = Timestamp::now();
    let ns = &conn.namespace;
    let name = &args.name;
    let requests: Api<AssistanceRequest> = Api::namespaced(conn.client.clone(), ns);
    if let Some(r) = requests
        .get_opt(name)
        .await
        .map_err(|e| explain(e, &format!("read AssistanceRequest {name}")))?
    {
        print!(
            "{}",
            render(
                &[
                    "NAME",
                    "PHASE",
                    "DEVICE",
                    "REQUESTER",
                    "APPROVER",
                    "SESSION",
                    "AGE"
                ],
                &request_rows(&[r], now, false)
            )
        );
        return Ok(());
    }
    let sessions: Api<RemoteSession> = Api::namespaced(conn.client.clone(), ns);
    match sessions
        .get_opt(name)
        .await
        .map_err(|e| explain(e, &format!("read RemoteSession {name}")))?
    {
        Some(s) => {
            print!(
                "{}",
                render(
                    &["NAME", "PHASE", "DEVICE", "MODE", "LEFT", "REQUEST", "AGE"],
                    &session_rows(&[s], now, false)
                )
            );
            Ok(())
        }
        None => bail!("no AssistanceRequest or RemoteSession named {name} in namespace {ns}"),
    }
}

/// Runs `describe`: the object's state and a timeline of its Events (and, for a request, its
/// session's).
pub async fn describe(global: &GlobalArgs, args: NameArgs) -> Result<()> {
    let conn = connect(global).await?;
    let ns = &conn.namespace;
    let name = &args.name;
    let requests: Api<AssistanceRequest> = Api::namespaced(conn.client.clone(), ns);
    let sessions: Api<RemoteSession> = Api::namespaced(conn.client.clone(), ns);
    let mut subjects = vec![name.clone()];
    let mut out = String::new();
    if let Some(r) = requests
        .get_opt(name)
        .await
        .map_err(|e| explain(e, &format!("read AssistanceRequest {name}")))?
    {
        let st = r.status.clone().unwrap_or_default();
        out.push_str(&format!("AssistanceRequest {ns}/{name}\n"));
        out.push_str(&format!(
            "  Phase:      {}\n",
            st.phase.map_or("-".into(), |p| p.to_string())
        ));
        if let Some(m) = &st.message {
            out.push_str(&format!("  Message:    {m}\n"));
        }
        out.push_str(&format!("  Device:     {}\n", r.spec.device));
        out.push_str(&format!(
            "  Requester:  {}{}\n",
            r.spec.requester.name,
            r.spec
                .requester
                .email
                .as_ref()
                .map(|e| format!(" <{e}>"))
                .unwrap_or_default()
        ));
        out.push_str(&format!("  Reason:     {}\n", r.spec.reason));
        out.push_str(&format!(
            "  Window:     {}\n",
            r.spec
                .preferred_window
                .as_ref()
                .map_or("as soon as possible".into(), |w| format!(
                    "from {}{}",
                    w.start.0,
                    w.end
                        .as_ref()
                        .map(|e| format!(" until {}", e.0))
                        .unwrap_or_default()
                ))
        ));
        out.push_str(&format!(
            "  Reusable:   {}\n",
            if r.spec.reusable {
                "yes"
            } else {
                "no (one-time)"
            }
        ));
        out.push_str(&format!("  Round:      {}\n", st.round.unwrap_or(1)));
        if let Some(a) = &st.approval {
            out.push_str(&format!(
                "  Decision:   {:?} by {}{}{}\n",
                a.decision,
                a.approver,
                a.decided_at
                    .as_ref()
                    .map(|t| format!(" at {}", t.0))
                    .unwrap_or_default(),
                a.reason
                    .as_ref()
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default()
            ));
        }
        if let Some(s) = &st.session {
            out.push_str(&format!("  Session:    {s}\n"));
            subjects.push(s.clone());
        }
        for h in &st.history {
            out.push_str(&format!(
                "  Round {}:    {}{}\n",
                h.round,
                h.outcome,
                h.session
                    .as_ref()
                    .map(|s| format!(" (session {s})"))
                    .unwrap_or_default()
            ));
        }
    } else if let Some(s) = sessions
        .get_opt(name)
        .await
        .map_err(|e| explain(e, &format!("read RemoteSession {name}")))?
    {
        let st = s.status.clone().unwrap_or_default();
        out.push_str(&format!("RemoteSession {ns}/{name}\n"));
        out.push_str(&format!(
            "  Phase:      {}\n",
            st.phase.map_or("-".into(), |p| p.to_string())
        ));
        if let Some(m) = &st.message {
            out.push_str(&format!("  Message:    {m}\n"));
        }
        out.push_str(&format!("  Device:     {}\n", s.spec.device));
        out.push_str(&format!(
            "  Window:     {} – {}\n",
            st.scheduled_start.map_or("-".into(), |t| t.0.to_string()),
            st.expires_at.map_or("-".into(), |t| t.0.to_string())
        ));
        if let Some(r) = &s.spec.assistance_request {
            out.push_str(&format!("  Request:    {r}\n"));
        }
    } else {
        bail!("no AssistanceRequest or RemoteSession named {name} in namespace {ns}");
    }

    // Timeline.
    let events: Api<Event> = Api::namespaced(conn.client.clone(), ns);
    let mut timeline: Vec<(Timestamp, String, String, String)> = events
        .list(&ListParams::default())
        .await
        .map_err(|e| explain(e, &format!("list Events in namespace {ns}")))?
        .items
        .into_iter()
        .filter_map(|e| {
            let subject = e.regarding.as_ref()?.name.clone()?;
            if !subjects.contains(&subject) {
                return None;
            }
            let at = e
                .event_time
                .as_ref()
                .map(|t| t.0)
                .or_else(|| e.deprecated_last_timestamp.as_ref().map(|t| t.0))?;
            Some((
                at,
                subject,
                e.reason.unwrap_or_default(),
                e.note.unwrap_or_default(),
            ))
        })
        .collect();
    timeline.sort_by_key(|(at, ..)| *at);
    out.push_str("\nTimeline:\n");
    if timeline.is_empty() {
        out.push_str("  (no events)\n");
    }
    for (at, subject, reason, note) in timeline {
        out.push_str(&format!("  {at}  {subject:<20} {reason:<20} {note}\n"));
    }
    print!("{out}");
    Ok(())
}
