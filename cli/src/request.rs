//! `kubectl tether request DEVICE --reason …`: ask for help; `--again NAME` asks again with a
//! reusable request.

use anyhow::{Context, Result, bail};
use kube::api::{Api, Patch, PatchParams, PostParams};
use tether_crds::AssistanceRequest;
use tether_crds::assistance_request::{AssistanceRequestSpec, annotations};

use crate::client::{GlobalArgs, connect, explain, whoami};

/// Flags of `request`.
#[derive(Clone, Debug, clap::Args)]
pub struct Args {
    /// The Device that needs help (not with `--again`).
    #[arg(required_unless_present = "again")]
    pub device: Option<String>,
    /// What the problem is.
    #[arg(long, required_unless_present = "again")]
    pub reason: Option<String>,
    /// Ask again with this reusable request instead of creating one.
    #[arg(long, value_name = "REQUEST", conflicts_with_all = ["device", "reason"])]
    pub again: Option<String>,
    /// Name of the request (default: `<device>-<random>`).
    #[arg(long)]
    pub name: Option<String>,
    /// The requester's full name (default: your user name).
    #[arg(long)]
    pub requester: Option<String>,
    /// The requester's account (default: your user name).
    #[arg(long)]
    pub account: Option<String>,
    /// Where notifications go.
    #[arg(long)]
    pub email: Option<String>,
    /// Preferred start: RFC 3339 (`2030-01-01T09:00:00Z`), a local time (`2030-01-01 09:00`)
    /// or a time from now (`+2h`); default: as soon as possible.
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub at: Option<jiff::Timestamp>,
    /// Latest end of the preferred window, written like `--at`; needs `--at`.
    #[arg(long, value_name = "TIME", requires = "at", value_parser = parse_time)]
    pub until: Option<jiff::Timestamp>,
    /// Session length (Go duration, e.g. 45m).
    #[arg(long)]
    pub duration: Option<tether_crds::GoDuration>,
    /// Session mode.
    #[arg(long, value_parser = ["Interactive", "Unattended", "Dynamic"])]
    pub mode: Option<String>,
    /// A user who may help (repeatable).
    #[arg(long = "assignee")]
    pub assignee_users: Vec<String>,
    /// A group whose members may help (repeatable).
    #[arg(long = "assignee-group")]
    pub assignee_groups: Vec<String>,
    /// An email notified as assignee (repeatable).
    #[arg(long = "notify")]
    pub notify: Vec<String>,
    /// Keep the request for more sessions (ask again with `--again`).
    #[arg(long)]
    pub reusable: bool,
    /// Ticket or incident id.
    #[arg(long)]
    pub ticket: Option<String>,
}

/// Reads `--at` and `--until`: see [`time_at`].
fn parse_time(text: &str) -> Result<jiff::Timestamp, String> {
    time_at(text, jiff::Timestamp::now(), &jiff::tz::TimeZone::system())
}

/// A point in time as written on the command line: RFC 3339 with a zone, a civil time read
/// in `tz` (`2030-01-01 09:00`, `2030-01-01T09:00:30`), or `+DURATION` from `now`. Whole
/// seconds, as the API stores times.
fn time_at(
    text: &str,
    now: jiff::Timestamp,
    tz: &jiff::tz::TimeZone,
) -> Result<jiff::Timestamp, String> {
    let text = text.trim();
    let parsed = if let Some(after) = text.strip_prefix('+') {
        tether_proto::duration::parse(after)
            .ok()
            .and_then(|d| jiff::SignedDuration::try_from(d).ok())
            .and_then(|d| now.checked_add(d).ok())
    } else if let Ok(t) = text.parse::<jiff::Timestamp>() {
        Some(t)
    } else {
        text.parse::<jiff::civil::DateTime>()
            .ok()
            .and_then(|dt| dt.to_zoned(tz.clone()).ok())
            .map(|z| z.timestamp())
    };
    let t = parsed.ok_or_else(|| {
        format!(
            "invalid time {:?}: use RFC 3339 (2030-01-01T09:00:00Z or 2030-01-01T10:00:00+01:00), \
             a local time (2030-01-01 09:00) or a time from now (+2h, +1h30m)",
            tether_proto::text::escape(text)
        )
    })?;
    jiff::Timestamp::from_second(t.as_second()).map_err(|e| e.to_string())
}

/// Builds the request's spec from the flags.
pub fn spec(args: &Args, user: &str) -> Result<AssistanceRequestSpec> {
    let mut spec = serde_json::json!({
        "device": args.device.clone().unwrap_or_default(),
        "requester": {
            "name": args.requester.clone().unwrap_or_else(|| user.to_owned()),
            "account": args.account.clone().unwrap_or_else(|| user.to_owned()),
        },
        "reason": args.reason.clone().unwrap_or_default(),
        "reusable": args.reusable,
        "sessionTemplate": {},
    });
    if let Some(email) = &args.email {
        spec["requester"]["email"] = email.clone().into();
    }
    if let Some(at) = args.at {
        spec["preferredWindow"] = serde_json::json!({"start": at.to_string()});
        if let Some(until) = args.until {
            if until <= at {
                bail!("--until must be after --at");
            }
            spec["preferredWindow"]["end"] = until.to_string().into();
        }
    }
    if let Some(d) = &args.duration {
        spec["sessionTemplate"]["duration"] = d.as_str().into();
    }
    if let Some(mode) = &args.mode {
        spec["sessionTemplate"]["mode"] = mode.clone().into();
    }
    if !args.assignee_users.is_empty()
        || !args.assignee_groups.is_empty()
        || !args.notify.is_empty()
    {
        spec["assignee"] = serde_json::json!({
            "users": args.assignee_users, "groups": args.assignee_groups, "emails": args.notify,
        });
    }
    if let Some(ticket) = &args.ticket {
        spec["ticket"] = ticket.clone().into();
    }
    serde_json::from_value(spec).context("invalid request")
}

/// A request name from the device's name and a random suffix, short enough for the API
/// server's bound on request names (their sessions are named `<request>-<round>`).
fn generated_name(device: &str, suffix: &str) -> String {
    let room = tether_crds::limits::REQUEST_NAME_MAX - suffix.len() - 1;
    let prefix: String = device.chars().take(room).collect();
    format!("{}-{suffix}", prefix.trim_end_matches(['-', '.']))
}

/// Runs `request`.
pub async fn run(global: &GlobalArgs, args: Args) -> Result<()> {
    let conn = connect(global).await?;
    let api: Api<AssistanceRequest> = Api::namespaced(conn.client.clone(), &conn.namespace);
    let ns = &conn.namespace;
    if let Some(name) = &args.again {
        let Some(existing) =
            crate::show::get_one::<AssistanceRequest>(&conn.client, ns, name).await?
        else {
            bail!("AssistanceRequest {name} not found in namespace {ns}");
        };
        if !existing.spec.reusable {
            bail!("AssistanceRequest {name} is one-time; create a new request instead");
        }
        if let Some(phase) = existing.status.as_ref().and_then(|s| s.phase)
            && phase.is_active_round()
        {
            bail!("AssistanceRequest {name} is {phase}; ask again once its session has ended");
        }
        let patch = serde_json::json!({"metadata": {"annotations": {
            annotations::REQUEST_AGAIN: jiff::Timestamp::now().to_string(),
        }}});
        api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|e| explain(e, &format!("request AssistanceRequest {name} again")))?;
        println!("assistancerequest.tether.dev/{name} requested again");
        return Ok(());
    }
    let user = whoami(&conn.client).await?;
    let spec = spec(&args, &user)?;
    let name = args.name.clone().unwrap_or_else(|| {
        const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
        let suffix: String = (0..5)
            .map(|_| char::from(CHARS[rand::random_range(0..CHARS.len())]))
            .collect();
        generated_name(&spec.device, &suffix)
    });
    let mut request = AssistanceRequest::new(&name, spec);
    request.metadata.annotations = Some([(annotations::REQUESTED_BY.to_owned(), user)].into());
    let created = api
        .create(&PostParams::default(), &request)
        .await
        .map_err(|e| explain(e, &format!("create an AssistanceRequest in namespace {ns}")))?;
    println!(
        "assistancerequest.tether.dev/{} created; an approver can run: kubectl tether approve {} -n {ns}",
        created.metadata.name.clone().unwrap_or_default(),
        created.metadata.name.unwrap_or_default()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        Cli::try_parse_from(std::iter::once("request").chain(args.iter().copied())).map(|c| c.args)
    }

    #[test]
    fn generated_names_fit_the_bound_on_request_names() {
        assert_eq!(generated_name("laptop-042", "ab1cd"), "laptop-042-ab1cd");
        let long = format!("{}-{}", "a".repeat(43), "b".repeat(19));
        let name = generated_name(&long, "ab1cd");
        assert_eq!(name.len(), tether_crds::limits::REQUEST_NAME_MAX - 1);
        assert_eq!(name, format!("{}-ab1cd", "a".repeat(43)));
    }

    #[test]
    fn times_on_the_command_line() {
        let now: jiff::Timestamp = "2030-01-01T08:00:00.75Z".parse().unwrap();
        let tz = jiff::tz::TimeZone::fixed(jiff::tz::offset(1));
        let at = |s: &str| time_at(s, now, &tz).map(|t| t.to_string());
        assert_eq!(at("2030-01-01T09:00:00Z").unwrap(), "2030-01-01T09:00:00Z");
        assert_eq!(
            at("2030-01-01T10:00:00+01:00").unwrap(),
            "2030-01-01T09:00:00Z"
        );
        assert_eq!(at("2030-01-01 10:00").unwrap(), "2030-01-01T09:00:00Z");
        assert_eq!(at("2030-01-01T10:00:30").unwrap(), "2030-01-01T09:00:30Z");
        // From now, in whole seconds.
        assert_eq!(at("+2h").unwrap(), "2030-01-01T10:00:00Z");
        assert_eq!(at("+1h30m").unwrap(), "2030-01-01T09:30:00Z");
        for bad in ["tomorrow", "", "+soon", "2030-13-01", "+-5m"] {
            let err = at(bad).unwrap_err();
            assert!(err.starts_with("invalid time"), "{bad}: {err}");
        }
        // What the user typed is escaped in the message.
        assert!(at("\u{1b}[2J").unwrap_err().contains("\\u{1b}"));
    }

    #[test]
    fn builds_a_spec_from_flags() {
        let args = parse(&[
            "laptop",
            "--reason",
            "VPN",
            "--email",
            "dana@example.com",
            "--at",
            "2030-01-01T09:00:00Z",
            "--until",
            "2030-01-01T10:00:00Z",
            "--duration",
            "45m",
            "--assignee-group",
            "helpdesk",
            "--notify",
            "help@example.com",
            "--reusable",
        ])
        .unwrap();
        let spec = spec(&args, "dana").unwrap();
        assert_eq!(spec.device, "laptop");
        assert_eq!(spec.requester.name, "dana");
        assert_eq!(spec.requester.account.as_deref(), Some("dana"));
        assert_eq!(spec.requester.email.as_deref(), Some("dana@example.com"));
        assert!(spec.reusable);
        assert_eq!(spec.session_template.duration.unwrap().as_str(), "45m");
        let assignee = spec.assignee.unwrap();
        assert_eq!(assignee.groups, vec!["helpdesk"]);
        assert_eq!(assignee.emails, vec!["help@example.com"]);
        assert!(spec.preferred_window.unwrap().end.is_some());
    }

    #[test]
    fn refuses_bad_input_clearly() {
        assert!(
            parse(&["laptop"])
                .unwrap_err()
                .to_string()
                .contains("--reason")
        );
        assert!(parse(&["laptop", "--reason", "x", "--duration", "soon"]).is_err());
        let err = parse(&["laptop", "--reason", "x", "--at", "tomorrow"])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--at") && err.contains("RFC 3339") && err.contains("+2h"),
            "{err}"
        );
        assert!(!err.contains("four digit"), "{err}");
        let err = parse(&["laptop", "--reason", "x", "--duration", "soon"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--duration") && err.contains("30m"), "{err}");
        assert!(parse(&["laptop", "--reason", "x", "--until", "2030-01-01T10:00:00Z"]).is_err());
        let args = parse(&[
            "laptop",
            "--reason",
            "x",
            "--at",
            "2030-01-01T10:00:00Z",
            "--until",
            "2030-01-01T09:00:00Z",
        ])
        .unwrap();
        assert!(
            spec(&args, "u")
                .unwrap_err()
                .to_string()
                .contains("--until must be after --at")
        );
        assert!(parse(&["--again", "vpn"]).is_ok());
        assert!(parse(&["--again", "vpn", "--reason", "x"]).is_err());
    }
}
