//! The desktop end to end: a device agent serving a real X server (Xvfb), the relay, and a
//! technician's real VNC viewer (vncdotool) through `kubectl tether vnc`.

use std::time::Duration;

use tether_crds::remote_session::SessionPhase;
use tether_e2e::dataplane::{Agent, Cluster, bind_technician};
use tether_e2e::desktop::{Vnc, Xvfb, decorate, desktop_session, reader_xterm, screen_session};
use tether_e2e::{PATIENCE, eventually};

#[test]
fn the_x_servers_own_capture_reads_the_screen() {
    let x = Xvfb::start(320, 200);
    x.run("xsetroot", &["-solid", "#3366cc"]);
    let screen = x.capture();
    assert_eq!((screen.width, screen.height), (320, 200));
    assert_eq!(screen.at(5, 5), [0x33, 0x66, 0xcc]);
}

#[tokio::test]
async fn a_vnc_viewer_sees_the_devices_screen_and_controls_it() {
    let (cluster, _agent, x, _xterm) = desktop_session("desk-control", "Control").await;
    let vnc = Vnc::start(&cluster.namespace, "carol", "screen").await;
    let dir = tempfile::tempdir().unwrap();

    // What the viewer shows is what the X server has, pixel for pixel (the xterm's cursor
    // may blink between the two captures: allow that much). A viewer stays connected, and
    // the agent's notice that the screen is viewed is up, in both captures.
    let _watching = vnc.vncdo_spawn(&["pause", "60"]);
    eventually("the viewing notice is on the screen", PATIENCE, || {
        let up = std::process::Command::new("xdotool")
            .args(["search", "--name", "^Tether: screen shared"])
            .env("DISPLAY", &x.display)
            .output()
            .is_ok_and(|o| o.status.success());
        async move { up.then_some(()) }
    })
    .await;
    let seen = vnc.screenshot(dir.path());
    let own = x.capture();
    let differing = seen.differing_pixels(&own);
    assert!(
        differing < 200,
        "{differing} of {} pixels differ between the viewer and the X server",
        own.width * own.height
    );
    assert_eq!(seen.at(700, 500), [0x33, 0x66, 0xcc]);

    // The pointer lands where it was sent. (The viewers stay connected while the device is
    // checked, as a technician's would.)
    let _viewer = vnc.vncdo_spawn(&["move", "123", "321", "pause", "60"]);
    eventually("the pointer moved", PATIENCE, || {
        let at = x.pointer();
        async move { (at == (123, 321)).then_some(()) }
    })
    .await;

    // A click lands where it was sent: xev's window at (600, 20) reports it, with where it
    // was on the screen.
    let xev_log = dir.path().join("xev.log");
    let _xev = x.xev("100x100+600+20", &xev_log);
    eventually("xev's window is mapped", PATIENCE, || {
        let mapped = std::fs::read_to_string(&xev_log).is_ok_and(|l| l.contains("MapNotify"));
        async move { mapped.then_some(()) }
    })
    .await;
    let _viewer = vnc.vncdo_spawn(&["move", "610", "30", "click", "1", "pause", "60"]);
    let pressed = eventually("xev saw the click", PATIENCE, || {
        let log = std::fs::read_to_string(&xev_log).unwrap_or_default();
        let press = log
            .split("ButtonPress event")
            .nth(1)
            .map(|e| e.lines().take(4).collect::<Vec<_>>().join(" "));
        async move { press }
    })
    .await;
    assert!(pressed.contains("root:(610,30)"), "{pressed}");
    assert!(pressed.contains("button 1"), "{pressed}");

    // Keys typed reach an application: an xterm under the pointer runs what is typed.
    let marker = dir.path().join("typed");
    let _term = reader_xterm(&x, &marker).await;
    let _viewer = vnc.vncdo_spawn(&[
        "move", "500", "340", "pause", "0.5", "type", "hello", "key", "enter", "pause", "60",
    ]);
    let typed = eventually("the typed line reached the device", PATIENCE, || {
        let text = std::fs::read_to_string(&marker).ok();
        async move { text.filter(|t| !t.is_empty()) }
    })
    .await;
    assert_eq!(typed.trim(), "hello");
}

#[tokio::test]
async fn a_view_only_session_shows_the_screen_and_drops_all_input() {
    let (cluster, _agent, x, _xterm) = desktop_session("desk-view", "ViewOnly").await;
    let vnc = Vnc::start(&cluster.namespace, "carol", "screen").await;
    let dir = tempfile::tempdir().unwrap();
    let seen = vnc.screenshot(dir.path());
    assert_eq!(seen.at(700, 500), [0x33, 0x66, 0xcc]);

    let before = x.pointer();
    let marker = dir.path().join("typed");
    let _term = reader_xterm(&x, &marker).await;
    let (ok, stderr) = vnc.vncdo(&[
        "move", "500", "340", "type", "hello", "key", "enter", "click", "1",
    ]);
    assert!(ok, "{stderr}");
    // The relay counted what it dropped: the proof that the input arrived and went nowhere.
    let metrics = dropped_input(&cluster, 12).await;
    assert!(
        metrics.0 >= 12,
        "h e l l o and Return, down and up: {metrics:?}"
    );
    assert_eq!(x.pointer(), before, "the pointer did not move");
    assert!(!marker.exists(), "nothing was typed on the device");
}

/// Two technicians on one desktop, each with what the session gives them: carol controls it,
/// bob (named in `spec.technicians.viewOnly`) only watches. His keys and pointer are dropped
/// by the relay while hers reach the device.
#[tokio::test]
async fn one_technician_controls_the_desktop_while_another_only_watches() {
    let x = Xvfb::start(800, 600);
    let _decoration = decorate(&x, "60x10+40+40", "Tether desktop");
    let cluster = Cluster::start("desk-two", &[]).await;
    let ns = cluster.namespace.clone();
    bind_technician(&ns, "bob");
    let _agent = screen_session(
        &cluster,
        &x,
        serde_json::json!({
            "features": {"desktop": "Control"},
            "technicians": {"users": ["carol", "bob"], "viewOnly": {"users": ["bob"]}},
        }),
    )
    .await;
    let carol = Vnc::start(&ns, "carol", "screen").await;
    let bob = Vnc::start(&ns, "bob", "screen").await;
    let dir = tempfile::tempdir().unwrap();
    // Both see the screen.
    assert_eq!(bob.screenshot(dir.path()).at(700, 500), [0x33, 0x66, 0xcc]);

    let marker = dir.path().join("typed");
    let _term = reader_xterm(&x, &marker).await;
    let before = x.pointer();
    let (ok, stderr) = bob.vncdo(&["move", "500", "340", "type", "bob", "key", "enter"]);
    assert!(ok, "{stderr}");
    let dropped = dropped_input(&cluster, 8).await;
    assert!(dropped.0 >= 8, "b o b and Return, down and up: {dropped:?}");
    assert_eq!(x.pointer(), before, "bob's pointer did not move");
    assert!(!marker.exists(), "bob typed nothing on the device");

    let _carol_viewer = carol.vncdo_spawn(&[
        "move", "500", "340", "pause", "0.5", "type", "carol", "key", "enter", "pause", "60",
    ]);
    let typed = eventually("carol's line reached the device", PATIENCE, || {
        let text = std::fs::read_to_string(&marker).ok();
        async move { text.filter(|t| !t.is_empty()) }
    })
    .await;
    assert_eq!(typed.trim(), "carol");
}

#[tokio::test]
async fn ending_the_session_closes_the_desktop() {
    let (cluster, _agent, _x, _xterm) = desktop_session("desk-end", "Control").await;
    let mut vnc = Vnc::start(&cluster.namespace, "carol", "screen").await;
    let out = tether_e2e::dataplane::tether(&cluster.namespace, "admin", &["terminate", "screen"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = vnc.wait_exit(PATIENCE).await;
    assert!(
        printed.iter().any(|l| l.contains("session ended")),
        "{printed:#?}"
    );
}

#[tokio::test]
async fn a_device_without_a_display_says_so() {
    let cluster = Cluster::start("desk-nodisplay", &[]).await;
    let ns = cluster.namespace.clone();
    // A display nobody serves.
    let _agent = Agent::enroll_and_run(
        &ns,
        "headless",
        cluster.relay.port,
        &["--consent=never", "--display=:999"],
    )
    .await;
    cluster
        .apply_session(
            "screen",
            serde_json::json!({"device": "headless", "mode": "Unattended"}),
        )
        .await;
    cluster.wait_phase("screen", SessionPhase::Active).await;
    let mut vnc = Vnc::start(&ns, "carol", "screen").await;
    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("none.png");
    let (ok, _) = vnc.vncdo(&["capture", &png.to_string_lossy()]);
    assert!(!ok, "there is no screen to capture");
    let said = eventually("the CLI says why", Duration::from_secs(30), || {
        vnc.drain();
        let line = vnc.printed.iter().find(|l| l.contains("display")).cloned();
        async move { line }
    })
    .await;
    assert!(said.contains(":999"), "{said}");
}

#[tokio::test]
async fn a_malformed_viewer_message_closes_only_that_desktop() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (cluster, _agent, _x, _xterm) = desktop_session("desk-bad", "Control").await;
    let mut vnc = Vnc::start(&cluster.namespace, "carol", "screen").await;
    // A viewer of our own, to send what no real viewer would.
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", vnc.port))
        .await
        .unwrap();
    let mut version = [0u8; 12];
    s.read_exact(&mut version).await.unwrap();
    s.write_all(b"RFB 003.008\n").await.unwrap();
    let mut types = [0u8; 2];
    s.read_exact(&mut types).await.unwrap();
    assert_eq!(types, [1, 2], "VNC authentication only");
    s.write_all(&[2]).await.unwrap();
    let mut challenge = [0u8; 16];
    s.read_exact(&mut challenge).await.unwrap();
    s.write_all(&tether_rfb::auth::response(&vnc.password, &challenge))
        .await
        .unwrap();
    let mut result = [0u8; 4];
    s.read_exact(&mut result).await.unwrap();
    assert_eq!(result, [0; 4]);
    s.write_all(&[1]).await.unwrap(); // ClientInit, shared
    let mut init = [0u8; 24];
    s.read_exact(&mut init).await.unwrap();
    assert_eq!(&init[..4], &[3, 32, 2, 88], "800x600");
    // Message type 99 does not exist.
    s.write_all(&[99, 1, 2, 3]).await.unwrap();
    let said = eventually("the technician is told why", PATIENCE, || {
        vnc.drain();
        let line = vnc.printed.iter().find(|l| l.contains("type 99")).cloned();
        async move { line }
    })
    .await;
    assert!(said.contains("not allowed"), "{said}");
    // The session and the desktop go on for everyone else.
    let dir = tempfile::tempdir().unwrap();
    let seen = vnc.screenshot(dir.path());
    assert_eq!(seen.at(700, 500), [0x33, 0x66, 0xcc]);
    cluster.wait_phase("screen", SessionPhase::Active).await;
}

#[tokio::test]
async fn a_wrong_vnc_password_is_refused() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (cluster, _agent, _x, _xterm) = desktop_session("desk-pass", "Control").await;
    let vnc = Vnc::start(&cluster.namespace, "carol", "screen").await;
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", vnc.port))
        .await
        .unwrap();
    let mut version = [0u8; 12];
    s.read_exact(&mut version).await.unwrap();
    s.write_all(b"RFB 003.008\n").await.unwrap();
    let mut types = [0u8; 2];
    s.read_exact(&mut types).await.unwrap();
    s.write_all(&[2]).await.unwrap();
    let mut challenge = [0u8; 16];
    s.read_exact(&mut challenge).await.unwrap();
    s.write_all(&tether_rfb::auth::response("guessing", &challenge))
        .await
        .unwrap();
    let mut result = [0u8; 4];
    s.read_exact(&mut result).await.unwrap();
    assert_eq!(result, [0, 0, 0, 1], "failed");
    // Nothing but the reason follows; the viewer never reaches the device.
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest).await;
    assert!(String::from_utf8_lossy(&rest).contains("wrong password"));
}

#[tokio::test]
async fn the_clipboard_reaches_the_device_only_when_the_session_allows_it() {
    for (prefix, allowed) in [("desk-clip-on", true), ("desk-clip-off", false)] {
        let x = Xvfb::start(640, 480);
        let _xterm = decorate(&x, "60x10+40+40", "Tether desktop");
        let cluster = Cluster::start(prefix, &[]).await;
        let ns = cluster.namespace.clone();
        let _agent = screen_session(
            &cluster,
            &x,
            serde_json::json!({
                "features": {"desktop": "Control", "clipboard": {"toDevice": allowed}},
            }),
        )
        .await;
        let vnc = Vnc::start(&ns, "carol", "screen").await;
        let dir = tempfile::tempdir().unwrap();
        let text = dir.path().join("clip.txt");
        std::fs::write(&text, "ticket INC-20432").unwrap();
        // The device's clipboard lives while a viewer is connected (the agent owns the
        // selection): this one stays.
        let _viewer = vnc.vncdo_spawn(&["pastefile", &text.to_string_lossy(), "pause", "60"]);
        let clipboard = || {
            std::process::Command::new("xclip")
                .args(["-o", "-selection", "clipboard"])
                .env("DISPLAY", &x.display)
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default()
        };
        if allowed {
            eventually("the device's clipboard holds the text", PATIENCE, || {
                let now = clipboard();
                async move { (now == "ticket INC-20432").then_some(()) }
            })
            .await;
        } else {
            let dropped = eventually("the relay dropped the clipboard", PATIENCE, || {
                let relay = &cluster.relay;
                async move {
                    let text = relay.metrics().await;
                    let n = counter(
                        &text,
                        "tether_relay_desktop_dropped_total{what=\"clipboard\"}",
                    );
                    (n >= 1).then_some(n)
                }
            })
            .await;
            assert!(dropped >= 1);
            assert_ne!(clipboard(), "ticket INC-20432");
        }
    }
}

/// A counter's value in Prometheus text, 0 when absent.
/// Waits until the relay has counted at least `keys` dropped key events and one dropped pointer
/// event (the proof that input arrived and went nowhere); the counts.
async fn dropped_input(cluster: &Cluster, keys: u64) -> (u64, u64) {
    eventually("the relay counted the dropped input", PATIENCE, || {
        let relay = &cluster.relay;
        async move {
            let text = relay.metrics().await;
            let seen = counter(&text, "tether_relay_desktop_dropped_total{what=\"keys\"}");
            let pointer = counter(
                &text,
                "tether_relay_desktop_dropped_total{what=\"pointer\"}",
            );
            (seen >= keys && pointer >= 1).then_some((seen, pointer))
        }
    })
    .await
}

fn counter(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}
