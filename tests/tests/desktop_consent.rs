//! On the device's own screen, end to end with real processes and a real X server (Xvfb):
//! the consent dialog the agent draws appears on the display the desktop serves, a click
//! (xdotool, as the user's mouse) on Allow lets the technician in and on Deny refuses the
//! session; while a viewer is connected a notice says so, naming everyone, and its End
//! session button ends the session; a second technician joining is asked of the user again.

#![allow(clippy::unwrap_used)] // Tests fail loudly on any unexpected error.

use std::process::Command;

use tether_crds::remote_session::SessionPhase;
use tether_e2e::dataplane::{Agent, Cluster, tether};
use tether_e2e::desktop::{Vnc, Xvfb};
use tether_e2e::output::stderr;
use tether_e2e::{PATIENCE, control_plane, eventually, kubectl_ok};

/// The consent dialog's window name starts with this (`agent/src/onscreen/dialog.rs`).
const DIALOG: &str = "Tether: remote assistance request";

/// The viewing notice's window name starts with this (`agent/src/onscreen/notice.rs`).
const NOTICE: &str = "Tether: screen shared";

/// A window of the agent's on the test display: its name and geometry.
#[derive(Clone, Debug)]
struct Shown {
    name: String,
    x: i32,
    y: i32,
    width: i32,
    height: i32,
}

fn xdotool(x: &Xvfb, args: &[&str]) -> Option<String> {
    let out = Command::new("xdotool")
        .args(args)
        .env("DISPLAY", &x.display)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The agent's window whose name starts with `title`, if it is on the screen now.
fn find(x: &Xvfb, title: &str) -> Option<Shown> {
    let ids = xdotool(x, &["search", "--name", &format!("^{title}")])?;
    let id = ids.lines().next()?.trim().to_owned();
    let name = xdotool(x, &["getwindowname", &id])?.trim().to_owned();
    let geometry = xdotool(x, &["getwindowgeometry", "--shell", &id])?;
    let field = |key: &str| -> Option<i32> {
        geometry
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('=')?.trim().parse().ok())
    };
    Some(Shown {
        name,
        x: field("X")?,
        y: field("Y")?,
        width: field("WIDTH")?,
        height: field("HEIGHT")?,
    })
}

async fn appears(x: &Xvfb, title: &str) -> Shown {
    eventually(&format!("{title:?} is on the screen"), PATIENCE, || {
        let shown = find(x, title);
        async move { shown }
    })
    .await
}

async fn goes_away(x: &Xvfb, title: &str) {
    eventually(&format!("{title:?} is off the screen"), PATIENCE, || {
        let gone = find(x, title).is_none();
        async move { gone.then_some(()) }
    })
    .await;
}

fn click(x: &Xvfb, at: (i32, i32)) {
    let (cx, cy) = (at.0.to_string(), at.1.to_string());
    xdotool(x, &["mousemove", &cx, &cy, "click", "1"]).expect("xdotool clicks");
}

/// Where the dialog's buttons are: bottom right, Deny rightmost. The offsets fall inside the
/// buttons with either core font the agent uses (`9x15`, `fixed`; `layout::dialog`).
fn deny_button(d: &Shown) -> (i32, i32) {
    (d.x + d.width - 32, d.y + d.height - 22)
}

fn allow_button(d: &Shown) -> (i32, i32) {
    (d.x + d.width - 100, d.y + d.height - 22)
}

/// The notice's (first) End session button, at the right of its first row.
fn end_button(n: &Shown) -> (i32, i32) {
    (n.x + n.width - 46, n.y + 12)
}

/// Clicks Allow until the dialog is gone (Allow counts only once the dialog has been on
/// the screen for a moment, so a click that comes too soon is ignored, as it should be).
async fn allow(x: &Xvfb, technician: &str) {
    let dialog = appears(x, DIALOG).await;
    assert!(
        dialog.name.ends_with(&format!("from {technician}")),
        "{dialog:?}"
    );
    eventually("the dialog took the Allow", PATIENCE, || {
        if let Some(d) = find(x, DIALOG) {
            click(x, allow_button(&d));
        }
        let gone = find(x, DIALOG).is_none();
        async move { gone.then_some(()) }
    })
    .await;
}

async fn setup(prefix: &str) -> (Xvfb, Cluster, Agent) {
    let x = Xvfb::start(800, 600);
    x.run("xsetroot", &["-solid", "#3366cc"]);
    let cluster = Cluster::start(prefix, &[]).await;
    let display = format!("--display={}", x.display);
    // No --consent: with a display, the dialog on it is the default.
    let agent = Agent::enroll_and_run(
        &cluster.namespace,
        "kiosk",
        cluster.relay.port,
        &[&display, "--logged-on-user=erin"],
    )
    .await;
    (x, cluster, agent)
}

fn interactive_desktop() -> serde_json::Value {
    serde_json::json!({
        "device": "kiosk",
        "mode": "Interactive",
        "reason": "printer queue stuck\nTechnician: your admin",
        "features": {"desktop": "Control", "shell": true},
    })
}

#[tokio::test]
async fn the_user_allows_or_denies_on_the_screen_sees_who_views_and_ends_the_session() {
    let (x, cluster, _agent) = setup("desk-consent").await;
    let ns = cluster.namespace.clone();

    // Deny: the technician is refused and the session says why.
    cluster
        .apply_session("refused", interactive_desktop())
        .await;
    cluster.wait_phase("refused", SessionPhase::Pending).await;
    let shell = {
        let ns = ns.clone();
        tokio::task::spawn_blocking(move || {
            tether(&ns, "carol", &["shell", "refused", "--", "true"])
        })
    };
    let dialog = appears(&x, DIALOG).await;
    assert_eq!(dialog.name, format!("{DIALOG} from carol"));
    click(&x, deny_button(&dialog));
    goes_away(&x, DIALOG).await;
    let out = shell.await.unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("the user did not allow the session (ConsentRefused)"),
        "{}",
        stderr(&out)
    );
    let denied = cluster.wait_phase("refused", SessionPhase::Denied).await;
    assert_eq!(
        denied.status.unwrap().reason.as_deref(),
        Some("ConsentRefused")
    );

    // Allow: the technician gets the desktop.
    cluster
        .apply_session("allowed", interactive_desktop())
        .await;
    cluster.wait_phase("allowed", SessionPhase::Pending).await;
    let (mut vnc, ()) = tokio::join!(Vnc::start(&ns, "carol", "allowed"), allow(&x, "carol"));
    cluster.wait_phase("allowed", SessionPhase::Active).await;
    assert!(find(&x, NOTICE).is_none(), "no viewer yet, no notice");

    // A viewer connects: the notice says who controls the screen…
    let viewer = vnc.vncdo_spawn(&["pause", "120"]);
    let notice = appears(&x, NOTICE).await;
    assert!(
        notice
            .name
            .contains("Your screen is being controlled by carol (session allowed)"),
        "{notice:?}"
    );
    assert_eq!(notice.y, 0, "at the top of the screen: {notice:?}");
    // …and is in what the technician sees too (the notice's amber at its left edge).
    let dir = tempfile::tempdir().unwrap();
    let seen = vnc.screenshot(dir.path());
    let left_edge = ((notice.x + 3) as u32, (notice.y + notice.height / 2) as u32);
    assert_eq!(seen.at(left_edge.0, left_edge.1), [0xff, 0xd7, 0x5e]);
    // The viewer leaves: so does the notice.
    drop(viewer);
    goes_away(&x, NOTICE).await;

    // End session on the notice ends the session, as the user.
    let _viewer = vnc.vncdo_spawn(&["pause", "120"]);
    let notice = appears(&x, NOTICE).await;
    click(&x, end_button(&notice));
    let done = cluster.wait_phase("allowed", SessionPhase::Completed).await;
    assert_eq!(done.status.unwrap().reason.as_deref(), Some("EndedByUser"));
    let printed = vnc.wait_exit(PATIENCE).await;
    assert!(
        printed.iter().any(|l| l.contains("EndedByUser")),
        "{printed:#?}"
    );
    goes_away(&x, NOTICE).await;
}

#[tokio::test]
async fn a_second_technician_is_asked_for_and_listed() {
    let (x, cluster, _agent) = setup("desk-pair").await;
    let ns = cluster.namespace.clone();
    // bob may be a technician here too.
    kubectl_ok(
        control_plane(),
        "admin",
        &[
            "create",
            "rolebinding",
            "second-technician",
            "-n",
            &ns,
            "--clusterrole=tether-technician",
            "--user=bob",
        ],
    );
    cluster.apply_session("pair", interactive_desktop()).await;
    cluster.wait_phase("pair", SessionPhase::Pending).await;
    let (carol, ()) = tokio::join!(Vnc::start(&ns, "carol", "pair"), allow(&x, "carol"));
    cluster.wait_phase("pair", SessionPhase::Active).await;
    let _carol_viewer = carol.vncdo_spawn(&["pause", "120"]);
    let notice = appears(&x, NOTICE).await;
    assert!(notice.name.contains("controlled by carol"), "{notice:?}");

    // bob joins the running session: the user is asked again, about bob.
    let (bob, ()) = tokio::join!(Vnc::start(&ns, "bob", "pair"), allow(&x, "bob"));
    let _bob_viewer = bob.vncdo_spawn(&["pause", "120"]);
    eventually("the notice lists both technicians", PATIENCE, || {
        let name = find(&x, NOTICE).map(|n| n.name).unwrap_or_default();
        async move { name.contains("controlled by carol, bob").then_some(()) }
    })
    .await;
    // The session's status says whom the user allowed last.
    let admin = control_plane().client("admin").await.unwrap();
    let api: kube::Api<tether_crds::RemoteSession> = kube::Api::namespaced(admin, &ns);
    let consented = eventually("the session records bob's consent", PATIENCE, || {
        let api = api.clone();
        async move {
            let s = api.get("pair").await.ok()?;
            let conditions = s.status?.conditions;
            let c = conditions.into_iter().find(|c| c.type_ == "Consented")?;
            c.message.contains("bob").then_some(c)
        }
    })
    .await;
    assert_eq!(consented.status, "True", "{consented:?}");
    assert!(
        consented.message.contains("the user allowed bob to join"),
        "{consented:?}"
    );
}
