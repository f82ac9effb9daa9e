//! The browser viewer end to end: a device agent serving a real X server (Xvfb), the relay,
//! `kubectl tether desktop` as the technician runs it, and headless Chromium loading its page
//! (noVNC) and typing into it; and what no browser should get through: a wrong, missing or
//! reused link, another Host, a WebSocket from another origin.

use std::time::Duration;

use serde_json::Value;
use tether_e2e::browser::{Chromium, Page, Viewer, actual_size, open_viewer, raw_get, wait_screen};
use tether_e2e::dataplane::{Cluster, bind_technician};
use tether_e2e::desktop::{Xvfb, decorate, desktop_session, reader_xterm, screen_session};
use tether_e2e::{PATIENCE, eventually};
use tether_rfb::client::{ClientMessage, Limits, Parser};

/// What the page sent the desktop so far, as RFB client messages.
async fn sent_messages(page: &mut Page) -> Vec<ClientMessage> {
    let recorded = page
        .eval("window.__tetherSent")
        .await
        .expect("the recorder's bytes");
    let bytes: Vec<u8> = recorded
        .as_array()
        .unwrap_or_else(|| panic!("the recorder holds an array, not {recorded}"))
        .iter()
        .filter_map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok()))
        .collect();
    let mut parser = Parser::new(Limits::default());
    parser.push(&bytes);
    let mut messages = Vec::new();
    loop {
        match parser.next_message() {
            Ok(Some((message, _))) => messages.push(message),
            Ok(None) => break,
            Err(e) => panic!(
                "noVNC's bytes are not RFB ({e}) after {messages:?}: {:?}",
                &bytes[..bytes.len().min(64)]
            ),
        }
    }
    messages
}

fn input_messages(messages: &[ClientMessage]) -> usize {
    messages
        .iter()
        .filter(|m| {
            matches!(
                m,
                ClientMessage::Key { .. }
                    | ClientMessage::QemuKey { .. }
                    | ClientMessage::Pointer { .. }
                    | ClientMessage::CutText(_)
            )
        })
        .count()
}

/// Clicks the device's screen at (`x`, `y`) through the viewer, then types `text`.
async fn click_and_type(page: &mut Page, x: f64, y: f64, text: &str) {
    let (left, top) = page.origin_of("#screen canvas").await;
    page.click(left + x, top + y).await;
    page.type_text(text).await;
}

#[tokio::test]
async fn the_browser_viewer_shows_the_screen_and_types_in_a_control_session() {
    // Anyone RBAC lets in may join, and bob may only watch.
    let x = Xvfb::start(800, 600);
    let _xterm = decorate(&x, "60x10+40+40", "Tether desktop");
    let cluster = Cluster::start("web-control", &[]).await;
    let _agent = screen_session(
        &cluster,
        &x,
        serde_json::json!({
            "features": {"desktop": "Control"},
            "technicians": {"viewOnly": {"users": ["bob"]}},
        }),
    )
    .await;
    let viewer = Viewer::start(&cluster.namespace, "carol", "screen").await;
    let (_chromium, mut page) = open_viewer(&viewer).await;
    let dir = tempfile::tempdir().unwrap();

    // The session around the screen: the device, a countdown, no view-only banner,
    // Ctrl-Alt-Del usable.
    assert_eq!(page.visible_text("device").await.as_deref(), Some("kiosk"));
    let countdown = page.visible_text("countdown").await.unwrap_or_default();
    assert!(countdown.starts_with("Session ends in "), "{countdown}");
    assert_eq!(page.visible_text("view-only").await, None);
    assert_eq!(
        page.eval("document.getElementById('ctrl-alt-del').disabled")
            .await
            .unwrap(),
        Value::Bool(false)
    );
    // The page learns the count from /state, polled every second.
    page.wait_for(
        "the page counts its own viewer",
        "document.getElementById('viewers').textContent.startsWith('1 browser viewer')",
        PATIENCE,
    )
    .await;

    // What the page paints is what the X server has (the xterm's cursor may blink between
    // the two captures: allow that much).
    actual_size(&mut page, 800, 600).await;
    let own = x.capture();
    let differing = wait_screen(&mut page, dir.path(), |seen| {
        let differing = seen.differing_pixels(&own);
        (differing < 200 && seen.at(700, 500) == [0x33, 0x66, 0xcc]).then_some(differing)
    })
    .await;
    eprintln!(
        "{differing} of {} pixels differ between the page and the X server",
        own.width * own.height
    );

    // Typing in the page reaches an application on the device.
    let marker = dir.path().join("typed");
    let _term = reader_xterm(&x, &marker).await;
    click_and_type(&mut page, 500.0, 340.0, "hello\n").await;
    let typed = eventually("the typed line reached the device", PATIENCE, || {
        let text = std::fs::read_to_string(&marker).ok();
        async move { text.filter(|t| !t.is_empty()) }
    })
    .await;
    assert_eq!(typed.trim(), "hello");
    // The page sent the keys and the click itself.
    let sent = sent_messages(&mut page).await;
    assert!(input_messages(&sent) >= 12, "{sent:?}");

    // Who else is in the session, as the relay says: nobody, then bob once he joins (with
    // his own rights: the session lets him only watch), then nobody again once he has left.
    page.wait_for(
        "the page says nobody else is in the session",
        "document.getElementById('others').textContent === 'No other technician is in this session.'",
        PATIENCE,
    )
    .await;
    bind_technician(&cluster.namespace, "bob");
    let bob = Viewer::start(&cluster.namespace, "bob", "screen").await;
    page.wait_for(
        "the page shows bob in the session",
        "document.getElementById('others').textContent === 'Also in this session: bob (view only)'",
        PATIENCE,
    )
    .await;
    drop(bob);
    page.wait_for(
        "the page shows bob gone",
        "document.getElementById('others').textContent === 'No other technician is in this session.'",
        PATIENCE,
    )
    .await;
}

#[tokio::test]
async fn a_view_only_session_shows_its_banner_and_the_page_sends_no_input() {
    let (cluster, _agent, x, _xterm) = desktop_session("web-view", "ViewOnly").await;
    let viewer = Viewer::start(&cluster.namespace, "carol", "screen").await;
    let (_chromium, mut page) = open_viewer(&viewer).await;
    let dir = tempfile::tempdir().unwrap();

    let banner = page.visible_text("view-only").await.unwrap_or_default();
    assert!(banner.starts_with("View only"), "{banner}");
    assert_eq!(
        page.eval("document.getElementById('ctrl-alt-del').disabled")
            .await
            .unwrap(),
        Value::Bool(true)
    );
    let status = page.visible_text("status").await.unwrap_or_default();
    assert!(status.contains("view only"), "{status}");

    // The screen is there.
    actual_size(&mut page, 800, 600).await;
    wait_screen(&mut page, dir.path(), |seen| {
        (seen.at(700, 500) == [0x33, 0x66, 0xcc]).then_some(())
    })
    .await;

    // Clicks and keys go nowhere: noVNC itself sends none (each key event is handled before
    // DevTools answers, so the recorder has seen whatever would have been sent), the relay
    // dropped none, and nothing reached the device.
    let before = x.pointer();
    let marker = dir.path().join("typed");
    let _term = reader_xterm(&x, &marker).await;
    let sent_before = sent_messages(&mut page).await;
    assert!(!sent_before.is_empty(), "the recorder sees the page's RFB");
    click_and_type(&mut page, 500.0, 340.0, "hello\n").await;
    page.eval("document.getElementById('ctrl-alt-del').click()")
        .await
        .unwrap();
    let sent = sent_messages(&mut page).await;
    assert_eq!(input_messages(&sent), 0, "{sent:?}");
    let metrics = cluster.relay.metrics().await;
    for what in ["keys", "pointer"] {
        let series = format!("tether_relay_desktop_dropped_total{{what=\"{what}\"}}");
        assert_eq!(
            counter(&metrics, &series),
            0,
            "the relay had no {what} to drop"
        );
    }
    assert_eq!(x.pointer(), before, "the pointer did not move");
    assert!(!marker.exists(), "nothing was typed on the device");
}

#[tokio::test]
async fn the_viewer_refuses_wrong_links_reused_links_other_hosts_and_origins() {
    let (cluster, _agent, _x, _xterm) = desktop_session("web-abuse", "Control").await;
    let viewer = Viewer::start(&cluster.namespace, "carol", "screen").await;
    let port = viewer.port;
    let host = format!("127.0.0.1:{port}");
    let origin = format!("http://127.0.0.1:{port}");
    let path = viewer
        .url
        .split_once(&host)
        .map(|(_, p)| p.to_owned())
        .expect("the link's path");

    // Nothing without the cookie; a wrong token gets nothing and spends nothing.
    for (what, path) in [
        ("the page", "/"),
        ("the state", "/state"),
        ("noVNC", "/assets/novnc/core/rfb.js"),
        ("no token", "/open"),
        ("a wrong token", "/open?token=00112233"),
    ] {
        let r = raw_get(port, path, &[("Host", &host)]).await.unwrap();
        assert_eq!(r.status, 403, "{what}: {r:?}");
        assert!(r.header("set-cookie").is_none(), "{what}: {r:?}");
    }
    // Another Host (DNS rebinding: a name that resolves to 127.0.0.1) gets nothing, not even
    // with the right token, and the token is not spent.
    for bad in [
        "evil.example:80",
        &format!("evil.example:{port}"),
        "127.0.0.1",
    ] {
        let r = raw_get(port, &path, &[("Host", bad)]).await.unwrap();
        assert_eq!(r.status, 421, "Host {bad}: {r:?}");
        assert!(r.header("set-cookie").is_none());
    }
    let r = raw_get(port, &path, &[]).await.unwrap();
    assert_ne!(r.status / 100, 2, "no Host: {r:?}");
    assert!(r.header("set-cookie").is_none());

    // The right link, once: a cookie for this server only, then a redirect to the page.
    let r = raw_get(port, &path, &[("Host", &host)]).await.unwrap();
    assert_eq!(r.status, 303, "{r:?}");
    let set_cookie = r.header("set-cookie").expect("a cookie").to_owned();
    assert!(set_cookie.contains("HttpOnly"), "{set_cookie}");
    assert!(set_cookie.contains("SameSite=Strict"), "{set_cookie}");
    let cookie = set_cookie.split(';').next().expect("name=value").to_owned();
    assert!(!cookie.contains(path.trim_start_matches("/open?token=")));
    // Every response says what the page may load.
    let csp = r.header("content-security-policy").unwrap_or_default();
    assert!(csp.contains("default-src 'none'"), "{csp}");
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert!(!csp.contains("unsafe"), "{csp}");

    // Used once, the link is spent.
    let again = raw_get(port, &path, &[("Host", &host)]).await.unwrap();
    assert_eq!(again.status, 403, "{again:?}");
    assert!(again.body.contains("already used"), "{again:?}");
    assert!(again.header("set-cookie").is_none());

    // The cookie opens the page, and only with the right Host.
    let page = raw_get(port, "/", &[("Host", &host), ("Cookie", &cookie)])
        .await
        .unwrap();
    assert_eq!(page.status, 200, "{page:?}");
    assert!(page.body.contains("viewer.js"));
    let rebound = raw_get(
        port,
        "/",
        &[
            ("Host", &format!("evil.example:{port}")),
            ("Cookie", &cookie),
        ],
    )
    .await
    .unwrap();
    assert_eq!(rebound.status, 421, "{rebound:?}");
    let forged = raw_get(
        port,
        "/",
        &[("Host", &host), ("Cookie", &format!("{}x", cookie))],
    )
    .await
    .unwrap();
    assert_eq!(forged.status, 403, "{forged:?}");

    // The WebSocket: only from the page's own origin, only with the cookie.
    let upgrade = |origin: Option<&str>, cookie: Option<&str>| {
        let mut headers = vec![
            ("Host", host.clone()),
            ("Upgrade", "websocket".to_owned()),
            ("Connection", "Upgrade".to_owned()),
            ("Sec-WebSocket-Version", "13".to_owned()),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==".to_owned()),
        ];
        if let Some(o) = origin {
            headers.push(("Origin", o.to_owned()));
        }
        if let Some(c) = cookie {
            headers.push(("Cookie", c.to_owned()));
        }
        headers
    };
    let ws = |headers: Vec<(&'static str, String)>| async move {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        raw_get(port, "/ws", &headers).await.unwrap()
    };
    let foreign = ws(upgrade(Some("http://evil.example"), Some(&cookie))).await;
    assert_eq!(foreign.status, 403, "{foreign:?}");
    let other_port = ws(upgrade(Some("http://127.0.0.1:1"), Some(&cookie))).await;
    assert_eq!(other_port.status, 403, "{other_port:?}");
    let no_origin = ws(upgrade(None, Some(&cookie))).await;
    assert_eq!(no_origin.status, 403, "{no_origin:?}");
    let no_cookie = ws(upgrade(Some(&origin), None)).await;
    assert_eq!(no_cookie.status, 403, "{no_cookie:?}");
    // Positive control: the page's own origin with the cookie is switched to the desktop.
    let own = ws(upgrade(Some(&origin), Some(&cookie))).await;
    assert_eq!(own.status, 101, "{own:?}");

    // A browser given the spent link is refused too, and says so rather than showing a
    // blank page.
    let chromium = Chromium::launch();
    let mut tab = chromium.page().await;
    tab.goto(&viewer.url).await;
    let body = tab
        .wait_for(
            "the browser shows the refusal",
            "document.body && document.body.innerText",
            Duration::from_secs(30),
        )
        .await;
    assert!(
        body.as_str().unwrap_or_default().contains("already used"),
        "{body}"
    );
    // The token is printed once, in the link, and nowhere else.
    let mut viewer = viewer;
    viewer.drain();
    let token = path.trim_start_matches("/open?token=");
    let mentions = viewer.printed.iter().filter(|l| l.contains(token)).count();
    assert_eq!(mentions, 1, "{:#?}", viewer.printed);
}

#[tokio::test]
async fn the_end_of_the_session_is_shown_on_the_page() {
    let (cluster, _agent, _x, _xterm) = desktop_session("web-end", "Control").await;
    let mut viewer = Viewer::start(&cluster.namespace, "carol", "screen").await;
    let (_chromium, mut page) = open_viewer(&viewer).await;
    let out = tether_e2e::dataplane::tether(&cluster.namespace, "admin", &["terminate", "screen"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    page.wait_for(
        "the page says the session ended",
        "document.body.dataset.state === 'ended'",
        PATIENCE,
    )
    .await;
    let title = page.visible_text("overlay-title").await.unwrap_or_default();
    assert_eq!(title, "The session ended");
    let text = page.visible_text("overlay-text").await.unwrap_or_default();
    assert!(text.contains("The relay closed the session"), "{text}");
    let printed = viewer.wait_exit(PATIENCE).await;
    assert!(
        printed.iter().any(|l| l.contains("session ended")),
        "{printed:#?}"
    );
}

/// A counter's value in Prometheus text, 0 when absent.
fn counter(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// The device's screen changes size while the page shows it (a monitor plugged in, RandR):
/// the page follows at the new size, with the new screen's pixels.
#[tokio::test]
async fn the_page_follows_a_resize_of_the_devices_screen() {
    let mut x = Xvfb::start_resizable(640, 480);
    let _xterm = decorate(&x, "50x8+30+30", "Tether resize");
    let cluster = Cluster::start("web-resize", &[]).await;
    let _agent = screen_session(
        &cluster,
        &x,
        serde_json::json!({"features": {"desktop": "Control"}}),
    )
    .await;
    let viewer = Viewer::start(&cluster.namespace, "carol", "screen").await;
    let (_chromium, mut page) = open_viewer(&viewer).await;
    let dir = tempfile::tempdir().unwrap();
    actual_size(&mut page, 640, 480).await;

    x.resize(800, 600);
    x.run("xsetroot", &["-solid", "#cc6633"]);
    page.wait_for(
        "the page shows the screen at its new size",
        "(() => { const c = document.querySelector('#screen canvas'); \
         const r = c && c.getBoundingClientRect(); \
         return r && Math.round(r.width) === 800 && Math.round(r.height) === 600; })()",
        PATIENCE,
    )
    .await;
    let own = x.capture();
    assert_eq!((own.width, own.height), (800, 600));
    let differing = wait_screen(&mut page, dir.path(), |seen| {
        ((seen.width, seen.height) == (800, 600) && seen.at(700, 500) == [0xcc, 0x66, 0x33])
            .then(|| seen.differing_pixels(&own))
            .filter(|d| *d < 200)
    })
    .await;
    eprintln!("{differing} of 480000 pixels differ between the page and the resized screen");
}
