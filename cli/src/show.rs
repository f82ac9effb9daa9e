//! `kubectl tether list`, `get` and `describe`: readable tables of requests and sessions, and
//! a timeline of what happened to one of them.
//!
//! Objects are read one at a time (as dynamic objects, then decoded): one that Tether cannot
//! read is named in a warning and never hides the others. Every string in them is shown
//! escaped, since users wrote it.

use anyhow::{Result, bail};
use jiff::Timestamp;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DynamicObject, ListParams};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tether_crds::decode::{Undecodable, api_resource, decode, decode_all};
use tether_crds::device::{Device, Presence};
use tether_crds::{AssistanceRequest, RemoteSession};
use tether_proto::text::escape;

use crate::client::{GlobalArgs, connect, explain};
use crate::table::{age, render, span, time};

/// What to list.
#[derive(Clone, Copy, Debug, Default, clap::ValueEnum)]
pub enum Kind {
    /// AssistanceRequests.
    #[default]
    Requests,
    /// RemoteSessions.
    Sessions,
    /// Devices: presence and what their agents last reported.
    Devices,
}

/// Flags of `list`.
#[derive(Clone, Debug, clap::Args)]
pub struct ListArgs {
    /// What to list: AssistanceRequests (what people asked for), RemoteSessions (what
    /// technicians connect to) or Devices (the inventory).
    #[arg(value_enum, default_value_t = Kind::Requests)]
    pub kind: Kind,
    /// List RemoteSessions (the same as `list sessions`).
    #[arg(long, conflicts_with = "kind")]
    pub sessions: bool,
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
    s.filter(|s| !s.is_empty())
        .map_or_else(|| "-".to_owned(), |s| escape(s).into_owned())
}

/// `s` escaped for one line of a terminal.
fn esc(s: &str) -> String {
    escape(s).into_owned()
}

/// Reads one object by name, decoding it apart from the request so that an object Tether
/// cannot read is reported by name instead of as a bare decoding error.
pub async fn get_one<K>(client: &kube::Client, namespace: &str, name: &str) -> Result<Option<K>>
where
    K: Resource<DynamicType = ()> + DeserializeOwned,
{
    let kind = K::kind(&());
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), namespace, &api_resource::<K>());
    let Some(object) = api
        .get_opt(name)
        .await
        .map_err(|e| explain(e, &format!("read {kind} {name} in namespace {namespace}")))?
    else {
        return Ok(None);
    };
    match decode::<K>(object) {
        Ok(k) => Ok(Some(k)),
        Err(bad) => bail!("{}", unreadable(&bad)),
    }
}

/// Lists every object of `K` in `namespace` (or all namespaces), and those that could not be
/// read apart.
async fn list_all<K>(
    client: &kube::Client,
    namespace: Option<&str>,
) -> Result<(Vec<K>, Vec<Undecodable>)>
where
    K: Resource<DynamicType = ()> + DeserializeOwned,
{
    let resource = api_resource::<K>();
    let api: Api<DynamicObject> = match namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
        None => Api::all_with(client.clone(), &resource),
    };
    let kind = K::kind(&());
    let where_ = namespace.map_or_else(
        || "all namespaces".to_owned(),
        |ns| format!("namespace {ns}"),
    );
    let items = api
        .list(&ListParams::default())
        .await
        .map_err(|e| explain(e, &format!("list {kind}s in {where_}")))?
        .items;
    Ok(decode_all(items))
}

/// What to tell about an object that cannot be read, escaped.
fn unreadable(bad: &Undecodable) -> String {
    format!(
        "{} {}/{} cannot be read, so it is left out: {}; fix or delete it",
        bad.kind,
        esc(bad.namespace.as_deref().unwrap_or("")),
        esc(&bad.name),
        esc(&bad.error)
    )
}

/// Warns, on stderr, about every object that could not be read.
fn warn_unreadable(bad: &[Undecodable]) {
    for b in bad {
        eprintln!("warning: {}", unreadable(b));
    }
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
                esc(&r.spec.device),
                esc(&r.spec.requester.name),
                // Only the current round's decision: an earlier round's is in its history.
                opt(st
                    .approval
                    .as_ref()
                    .filter(|a| Some(a.round) == st.round || st.round.is_none())
                    .map(|a| a.approver.as_str())),
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
                    span(end.duration_since(now).as_secs())
                }
                _ => "-".into(),
            };
            row.extend([
                s.name_any(),
                st.phase.map_or("-".into(), |p| p.to_string()),
                esc(&s.spec.device),
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

/// Devices as inventory rows. LAST SEEN is `now` while the agent is connected (the relay
/// records presence changes, not every heartbeat, so a connected agent's `lastSeen` is no
/// age) and the time since it went offline otherwise; hostname, OS and agent version are
/// what the agent last reported, kept while it is offline.
fn device_rows(items: &[Device], now: Timestamp, with_ns: bool) -> Vec<Vec<String>> {
    items
        .iter()
        .map(|d| {
            let st = d.status.clone().unwrap_or_default();
            let mut row = Vec::new();
            if with_ns {
                row.push(d.namespace().unwrap_or_default());
            }
            let (presence, seen) = match st.presence {
                Some(Presence::Online) => ("Online".to_owned(), "now".to_owned()),
                Some(Presence::Offline) => (
                    "Offline".to_owned(),
                    st.offline_since
                        .as_ref()
                        .or(st.last_seen.as_ref())
                        .map_or("-".into(), |t| format!("{} ago", age(t.0, now))),
                ),
                None => ("-".to_owned(), "never".to_owned()),
            };
            row.extend([
                esc(&d.name_any()),
                if d.spec.disabled {
                    format!("{presence} (disabled)")
                } else {
                    presence
                },
                opt(st.hostname.as_deref()),
                opt(st.os.as_deref()),
                opt(st.agent_version.as_deref()),
                seen,
                d.metadata
                    .creation_timestamp
                    .as_ref()
                    .map_or("-".into(), |t| age(t.0, now)),
            ]);
            row
        })
        .collect()
}

/// The timeline's lines: times in one width, the object and reason columns as wide as their
/// widest entry, so every column lines up.
fn timeline_text(timeline: &[(Timestamp, String, String, String)]) -> String {
    let rows: Vec<Vec<String>> = timeline
        .iter()
        .map(|(at, subject, reason, note)| {
            vec![time(*at), subject.clone(), reason.clone(), note.clone()]
        })
        .collect();
    let table = render(&["TIME", "OBJECT", "REASON", "MESSAGE"], &rows);
    table.lines().skip(1).map(|l| format!("  {l}\n")).collect()
}

fn where_(scope: Option<&str>) -> String {
    scope.map_or_else(
        || "any namespace".to_owned(),
        |ns| format!("namespace {ns}"),
    )
}

/// Runs `list`.
pub async fn list(global: &GlobalArgs, args: ListArgs) -> Result<()> {
    let conn = connect(global).await?;
    let now = Timestamp::now();
    let ns = &conn.namespace;
    let scope = (!args.all_namespaces).then_some(ns.as_str());
    let mut headers: Vec<&str> = if args.all_namespaces {
        vec!["NAMESPACE"]
    } else {
        vec![]
    };
    let kind = if args.sessions {
        Kind::Sessions
    } else {
        args.kind
    };
    // What the table holds, said on stderr so that stdout stays a plain table.
    match kind {
        Kind::Requests => eprintln!(
            "AssistanceRequests in {} (`kubectl tether list sessions` lists RemoteSessions)",
            where_(scope)
        ),
        Kind::Sessions => eprintln!("RemoteSessions in {}", where_(scope)),
        Kind::Devices => eprintln!("Devices in {}", where_(scope)),
    }
    let out = match kind {
        Kind::Requests => {
            let (items, bad) = list_all::<AssistanceRequest>(&conn.client, scope).await?;
            warn_unreadable(&bad);
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
                println!("No AssistanceRequests in {}.", where_(scope));
                return Ok(());
            }
            render(&headers, &request_rows(&items, now, args.all_namespaces))
        }
        Kind::Sessions => {
            let (items, bad) = list_all::<RemoteSession>(&conn.client, scope).await?;
            warn_unreadable(&bad);
            headers.extend(["NAME", "PHASE", "DEVICE", "MODE", "LEFT", "REQUEST", "AGE"]);
            if items.is_empty() {
                println!("No RemoteSessions in {}.", where_(scope));
                return Ok(());
            }
            render(&headers, &session_rows(&items, now, args.all_namespaces))
        }
        Kind::Devices => {
            let (items, bad) = list_all::<Device>(&conn.client, scope).await?;
            warn_unreadable(&bad);
            headers.extend([
                "NAME",
                "PRESENCE",
                "HOSTNAME",
                "OS",
                "AGENT",
                "LAST SEEN",
                "AGE",
            ]);
            if items.is_empty() {
                println!("No Devices in {}.", where_(scope));
                return Ok(());
            }
            render(&headers, &device_rows(&items, now, args.all_namespaces))
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
    if let Some(r) = get_one::<AssistanceRequest>(&conn.client, ns, name).await? {
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
    match get_one::<RemoteSession>(&conn.client, ns, name).await? {
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
        None => bail!(
            "no AssistanceRequest or RemoteSession named {} in namespace {ns}",
            esc(name)
        ),
    }
}

/// Runs `describe`: the object's state and a timeline of its Events (and, for a request, its
/// session's).
pub async fn describe(global: &GlobalArgs, args: NameArgs) -> Result<()> {
    let conn = connect(global).await?;
    let ns = &conn.namespace;
    let name = &args.name;
    let mut subjects = vec![name.clone()];
    let mut out = String::new();
    if let Some(r) = get_one::<AssistanceRequest>(&conn.client, ns, name).await? {
        let st = r.status.clone().unwrap_or_default();
        out.push_str(&format!("AssistanceRequest {ns}/{name}\n"));
        out.push_str(&format!(
            "  Phase:      {}\n",
            st.phase.map_or("-".into(), |p| p.to_string())
        ));
        if let Some(m) = &st.message {
            out.push_str(&format!("  Message:    {}\n", esc(m)));
        }
        out.push_str(&format!("  Device:     {}\n", esc(&r.spec.device)));
        out.push_str(&format!(
            "  Requester:  {}{}\n",
            esc(&r.spec.requester.name),
            r.spec
                .requester
                .email
                .as_ref()
                .map(|e| format!(" <{}>", esc(e)))
                .unwrap_or_default()
        ));
        out.push_str(&format!("  Reason:     {}\n", esc(&r.spec.reason)));
        out.push_str(&format!(
            "  Window:     {}\n",
            r.spec
                .preferred_window
                .as_ref()
                .map_or("as soon as possible".into(), |w| format!(
                    "from {}{}",
                    time(w.start.0),
                    w.end
                        .as_ref()
                        .map(|e| format!(" until {}", time(e.0)))
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
                esc(&a.approver),
                a.decided_at
                    .as_ref()
                    .map(|t| format!(" at {}", time(t.0)))
                    .unwrap_or_default(),
                a.reason
                    .as_ref()
                    .map(|r| format!(": {}", esc(r)))
                    .unwrap_or_default()
            ));
        }
        if let Some(s) = &st.session {
            out.push_str(&format!("  Session:    {}\n", esc(s)));
            subjects.push(s.clone());
        }
        for h in &st.history {
            out.push_str(&format!(
                "  Round {}:    {}{}\n",
                h.round,
                h.outcome,
                h.session
                    .as_ref()
                    .map(|s| format!(" (session {})", esc(s)))
                    .unwrap_or_default()
            ));
        }
    } else if let Some(s) = get_one::<RemoteSession>(&conn.client, ns, name).await? {
        let st = s.status.clone().unwrap_or_default();
        out.push_str(&format!("RemoteSession {ns}/{name}\n"));
        out.push_str(&format!(
            "  Phase:      {}\n",
            st.phase.map_or("-".into(), |p| p.to_string())
        ));
        if let Some(m) = &st.message {
            out.push_str(&format!("  Message:    {}\n", esc(m)));
        }
        out.push_str(&format!("  Device:     {}\n", esc(&s.spec.device)));
        out.push_str(&format!(
            "  Window:     {} – {}\n",
            st.scheduled_start.map_or("-".into(), |t| time(t.0)),
            st.expires_at.map_or("-".into(), |t| time(t.0))
        ));
        if let Some(r) = &s.spec.assistance_request {
            out.push_str(&format!("  Request:    {}\n", esc(r)));
        }
    } else {
        bail!(
            "no AssistanceRequest or RemoteSession named {} in namespace {ns}",
            esc(name)
        );
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
                esc(&subject),
                esc(&e.reason.unwrap_or_default()),
                esc(&e.note.unwrap_or_default()),
            ))
        })
        .collect();
    timeline.sort_by_key(|(at, ..)| *at);
    out.push_str("\nTimeline:\n");
    if timeline.is_empty() {
        out.push_str("  (no events)\n");
    }
    out.push_str(&timeline_text(&timeline));
    print!("{out}");
    Ok(())
}

#[cfg(test)]
#[path = "show_tests.rs"]
mod tests;
