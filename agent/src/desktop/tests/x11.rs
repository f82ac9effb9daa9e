//! The desktop channel against Xvfb: pixels, incremental updates, input, view-only, shared
//! captures, the X authority, and the failures a technician must be able to read.

use tether_rfb::encoding;
use tether_rfb::server::Rect;
use tokio::task::JoinHandle;
use x11rb::connection::Connection;
use x11rb::protocol::Event;
use x11rb::protocol::xproto::{self, ConnectionExt as _, EventMask, InputFocus};
use x11rb::rust_connection::RustConnection;

use super::*;
use crate::desktop::{DesktopSettings, Desktops, Grant, ServeError, ViewerStats, serve_channel};

pub(super) fn settings(xvfb: &Xvfb) -> DesktopSettings {
    DesktopSettings {
        display: Some(xvfb.display.clone()),
        xauthority: None,
        max_fps: 60,
    }
}

const CONTROL: Grant = Grant {
    control: true,
    clipboard_to_device: false,
    clipboard_from_device: false,
};

/// Serves one viewer of `settings`' display on a new channel.
pub(super) fn open(
    desktops: &Desktops,
    settings: DesktopSettings,
    grant: Grant,
) -> (Viewer, JoinHandle<Result<ViewerStats, ServeError>>) {
    let ((server_r, server_w), viewer) = channel();
    let desktops = desktops.clone();
    let served = tokio::spawn(async move {
        serve_channel(
            &desktops,
            &settings,
            &[],
            "kiosk-7",
            grant,
            server_r,
            server_w,
        )
        .await
    });
    (Viewer::new(viewer), served)
}

/// Ends the viewer's half and waits for the server's result.
pub(super) async fn finish(
    mut viewer: Viewer,
    served: JoinHandle<Result<ViewerStats, ServeError>>,
) -> ViewerStats {
    viewer.to.finish().await.unwrap();
    assert!(
        viewer.until_closed().await,
        "the agent closes the channel after the viewer"
    );
    tokio::time::timeout(PATIENCE, served)
        .await
        .expect("the server ends in time")
        .unwrap()
        .expect("the viewer was served without error")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_update_shows_what_the_x_server_shows_and_an_incremental_one_only_what_changed() {
    let xvfb = Xvfb::start(320, 240, &[]);
    let conn = xvfb.connect();
    let w = window(
        &conn,
        Rect::new(10, 20, 150, 100),
        0x00c0_4020,
        EventMask::NO_EVENT,
    );
    fill(&conn, w, Rect::new(5, 5, 30, 30), 0x0020_80ff);
    window(
        &conn,
        Rect::new(250, 180, 70, 60),
        0x0000_ff00,
        EventMask::NO_EVENT,
    );

    let desktops = Desktops::default();
    let (mut viewer, served) = open(&desktops, settings(&xvfb), CONTROL);
    viewer.handshake(&[encoding::RAW]).await;
    assert_eq!((viewer.width, viewer.height), (320, 240));
    assert_eq!(viewer.name, "kiosk-7 (Tether)");
    viewer.request(false).await;
    let full = viewer.update().await;
    assert!(full.covers(Rect::new(0, 0, 320, 240)), "{full:?}");
    let (_, _, expected) = screen_pixels(&conn);
    assert_eq!(
        viewer.pixels, expected,
        "the decoded frame is the X server's own capture"
    );

    // A change in one corner: the next incremental update carries it, not the screen.
    let changed = Rect::new(200, 150, 40, 30);
    window(&conn, changed, 0x00ff_00ff, EventMask::NO_EVENT);
    viewer.request(true).await;
    let mut got = viewer.update().await;
    // A capture may land between drawing calls; whatever came after is in later updates.
    for _ in 0..10 {
        if viewer.pixels == screen_pixels(&conn).2 {
            break;
        }
        viewer.request(true).await;
        got = viewer.update().await;
    }
    assert_eq!(viewer.pixels, screen_pixels(&conn).2);
    assert!(
        got.area() < 320 * 240 / 4,
        "only the changed tiles are sent: {got:?}"
    );
    assert!(
        got.rects
            .iter()
            .all(|r| !r.intersect(&Rect::new(128, 128, 192, 112)).is_empty()),
        "every rectangle touches the tiles of the change: {got:?}"
    );
    let stats = finish(viewer, served).await;
    assert!(stats.updates >= 2);
    assert!(stats.bytes > 320 * 240 * 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_and_the_pointer_reach_the_x_server_when_the_session_has_control() {
    let xvfb = Xvfb::start(320, 240, &[]);
    let conn = xvfb.connect();
    let target = window(
        &conn,
        Rect::new(0, 0, 320, 240),
        0x0080_8080,
        EventMask::KEY_PRESS,
    );
    conn.set_input_focus(InputFocus::POINTER_ROOT, target, x11rb::CURRENT_TIME)
        .unwrap();
    conn.get_input_focus().unwrap().reply().unwrap();

    let desktops = Desktops::default();
    let (mut viewer, served) = open(&desktops, settings(&xvfb), CONTROL);
    viewer.handshake(&[encoding::RAW]).await;

    // PointerEvent: no buttons, at (123, 45).
    viewer.send(&[5, 0, 0, 123, 0, 45]).await;
    assert!(
        eventually(|| {
            let p = conn.query_pointer(root(&conn)).unwrap().reply().unwrap();
            (p.root_x, p.root_y) == (123, 45)
        })
        .await,
        "the pointer moved to where the viewer put it"
    );

    // 'a' down and up, then a keysym no key carries (Cyrillic capital Ӕ, U+04D4).
    let keysym_of = |code: u8| {
        let setup = conn.setup();
        let map = conn.get_keyboard_mapping(code, 1).unwrap().reply().unwrap();
        let _ = setup;
        map.keysyms
    };
    let unusual = 0x0100_04d4;
    for keysym in [0x61u32, unusual] {
        let mut down = vec![4, 1, 0, 0];
        down.extend_from_slice(&keysym.to_be_bytes());
        let mut up = vec![4, 0, 0, 0];
        up.extend_from_slice(&keysym.to_be_bytes());
        viewer.send(&down).await;
        viewer.send(&up).await;
        let mut pressed = None;
        assert!(
            eventually(|| {
                while let Ok(Some(event)) = conn.poll_for_event() {
                    if let Event::KeyPress(e) = event {
                        pressed = Some(e.detail);
                    }
                }
                pressed.is_some()
            })
            .await,
            "keysym {keysym:#x} arrived as a key press"
        );
        let code = pressed.unwrap();
        assert!(
            keysym_of(code).contains(&keysym),
            "keycode {code} types keysym {keysym:#x} (its mapping: {:x?})",
            keysym_of(code)
        );
    }
    let stats = finish(viewer, served).await;
    assert_eq!(stats.dropped_input, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_view_only_session_moves_nothing() {
    let xvfb = Xvfb::start(320, 240, &[]);
    let conn = xvfb.connect();
    let before = conn.query_pointer(root(&conn)).unwrap().reply().unwrap();
    let desktops = Desktops::default();
    let grant = Grant {
        control: false,
        clipboard_to_device: false,
        clipboard_from_device: false,
    };
    let (mut viewer, served) = open(&desktops, settings(&xvfb), grant);
    viewer.handshake(&[encoding::RAW]).await;
    viewer.send(&[5, 1, 0, 200, 0, 100]).await;
    viewer.send(&[4, 1, 0, 0, 0, 0, 0, 0x61]).await;
    // The update is answered after the input before it was handled (in order).
    viewer.request(false).await;
    viewer.update().await;
    let after = conn.query_pointer(root(&conn)).unwrap().reply().unwrap();
    assert_eq!((after.root_x, after.root_y), (before.root_x, before.root_y));
    assert_eq!(after.mask, before.mask, "no button was pressed");
    let stats = finish(viewer, served).await;
    assert_eq!(stats.dropped_input, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewers_of_one_display_share_one_capture_that_stops_with_the_last() {
    let xvfb = Xvfb::start(256, 128, &[]);
    let desktops = Desktops::default();
    let (mut first, first_served) = open(&desktops, settings(&xvfb), CONTROL);
    first.handshake(&[encoding::RAW, encoding::CURSOR]).await;
    let (mut second, second_served) = open(&desktops, settings(&xvfb), CONTROL);
    second.handshake(&[encoding::RAW]).await;
    assert_eq!(desktops.capturing().await, 1);
    // The viewer that announced the Cursor pseudo-encoding gets the shape; the other not.
    first.request(false).await;
    let with_cursor = first.update().await;
    assert!(
        with_cursor
            .pseudo
            .iter()
            .any(|(e, _)| *e == encoding::CURSOR),
        "{with_cursor:?}"
    );
    second.request(false).await;
    let without = second.update().await;
    assert!(without.pseudo.is_empty(), "{without:?}");
    assert_eq!(first.pixels, second.pixels);

    finish(first, first_served).await;
    assert_eq!(
        desktops.capturing().await,
        1,
        "the second viewer keeps the capture"
    );
    finish(second, second_served).await;
    assert_eq!(
        desktops.capturing().await,
        0,
        "the last viewer stopped the capture"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resizing_is_refused_with_the_reason_prohibited() {
    let xvfb = Xvfb::start(256, 128, &[]);
    let desktops = Desktops::default();
    let (mut viewer, served) = open(&desktops, settings(&xvfb), CONTROL);
    viewer
        .handshake(&[encoding::RAW, encoding::EXTENDED_DESKTOP_SIZE])
        .await;
    viewer.request(false).await;
    let first = viewer.update().await;
    assert!(
        first
            .pseudo
            .contains(&(encoding::EXTENDED_DESKTOP_SIZE, Rect::new(0, 0, 256, 128))),
        "support is announced with the current size: {first:?}"
    );
    // SetDesktopSize 800×600, one screen.
    let mut resize = vec![251, 0];
    resize.extend_from_slice(&800u16.to_be_bytes());
    resize.extend_from_slice(&600u16.to_be_bytes());
    resize.extend_from_slice(&[1, 0]);
    resize.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 3, 32, 2, 88, 0, 0, 0, 0]);
    viewer.send(&resize).await;
    viewer.request(true).await;
    let reply = viewer.update().await;
    assert!(
        reply
            .pseudo
            .contains(&(encoding::EXTENDED_DESKTOP_SIZE, Rect::new(1, 1, 256, 128))),
        "this client's request, status prohibited, size unchanged: {reply:?}"
    );
    finish(viewer, served).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_display_the_technician_reads_why() {
    let desktops = Desktops::default();
    let none = DesktopSettings::default();
    let (mut viewer, served) = open(&desktops, none, CONTROL);
    assert_eq!(
        viewer.version().await,
        0,
        "no security types: the handshake failed"
    );
    assert_eq!(
        viewer.refusal().await,
        "no X display: the agent has no --display and DISPLAY is not set"
    );
    assert!(viewer.until_closed().await);
    assert!(
        viewer
            .closed
            .as_deref()
            .is_some_and(|r| r.starts_with("no X display"))
    );
    let result = served.await.unwrap();
    assert!(matches!(result, Err(ServeError::Desktop(_))), "{result:?}");

    // A display nobody serves.
    let free = (500..600)
        .find(|n| !std::path::Path::new(&format!("/tmp/.X11-unix/X{n}")).exists())
        .unwrap();
    let missing = DesktopSettings {
        display: Some(format!(":{free}")),
        ..DesktopSettings::default()
    };
    let (mut viewer, served) = open(&desktops, missing, CONTROL);
    assert_eq!(viewer.version().await, 0);
    let reason = viewer.refusal().await;
    assert!(
        reason.starts_with(&format!("cannot open X display :{free} (")),
        "{reason}"
    );
    assert!(served.await.unwrap().is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cookie_comes_from_the_configured_xauthority() {
    let dir = tempfile::tempdir().unwrap();
    let cookie = dir.path().join("server-cookie");
    let secret: Vec<u8> = (0..16).map(|i| i * 13 + 7).collect();
    std::fs::write(&cookie, crate::desktop::x11::test_cookie_file(&secret)).unwrap();
    let xvfb = Xvfb::start(128, 64, &["-auth", cookie.to_str().unwrap()]);
    let desktops = Desktops::default();

    // Without the cookie the server refuses, and the technician reads the X server's words.
    let (mut viewer, served) = open(&desktops, settings(&xvfb), CONTROL);
    assert_eq!(viewer.version().await, 0);
    let reason = viewer.refusal().await;
    assert!(
        reason.starts_with(&format!("cannot open X display {} (", xvfb.display)),
        "{reason}"
    );
    assert!(served.await.unwrap().is_err());

    let with_cookie = DesktopSettings {
        xauthority: Some(cookie.clone()),
        ..settings(&xvfb)
    };
    let (mut viewer, served) = open(&desktops, with_cookie, CONTROL);
    viewer.handshake(&[encoding::RAW]).await;
    assert_eq!((viewer.width, viewer.height), (128, 64));
    finish(viewer, served).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_viewer_message_closes_the_channel_with_the_parsers_reason() {
    let xvfb = Xvfb::start(128, 64, &[]);
    let desktops = Desktops::default();
    let (mut viewer, served) = open(&desktops, settings(&xvfb), CONTROL);
    viewer.handshake(&[encoding::RAW]).await;
    viewer.send(&[99, 0, 0, 0]).await;
    assert!(viewer.until_closed().await, "the agent closed the channel");
    assert_eq!(
        viewer.closed.as_deref(),
        Some("message type 99 is not allowed on the desktop channel")
    );
    let result = served.await.unwrap();
    assert!(matches!(result, Err(ServeError::Viewer(_))), "{result:?}");
    assert_eq!(
        desktops.capturing().await,
        0,
        "the capture stopped with its only viewer"
    );

    // An unsupported pixel format (a colour map) closes it too, with the reason.
    let (mut viewer, served) = open(&desktops, settings(&xvfb), CONTROL);
    viewer.handshake(&[encoding::RAW]).await;
    viewer
        .send(&[0, 0, 0, 0, 8, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])
        .await;
    assert!(viewer.until_closed().await);
    assert!(
        viewer
            .closed
            .as_deref()
            .is_some_and(|r| r.contains("only true-colour")),
        "{:?}",
        viewer.closed
    );
    assert!(matches!(
        served.await.unwrap(),
        Err(ServeError::PixelFormat(_))
    ));
}

#[test]
fn shared_memory_and_getimage_captures_both_equal_the_x_servers_own_image() {
    for (extra, method) in [
        (&[][..], "MIT-SHM"),
        (&["-extension", "MIT-SHM"][..], "GetImage"),
    ] {
        let xvfb = Xvfb::start(300, 200, extra);
        let conn = xvfb.connect();
        let w = window(
            &conn,
            Rect::new(30, 40, 200, 100),
            0x0012_3456,
            EventMask::NO_EVENT,
        );
        fill(&conn, w, Rect::new(10, 10, 50, 20), 0x00fe_dcba);
        let mut backend = crate::desktop::x11::open(&crate::desktop::x11::X11Settings {
            display: Some(xvfb.display.clone()),
            xauthority: None,
            users: Vec::new(),
        })
        .unwrap();
        assert_eq!(backend.method, method);
        let mut data = Vec::new();
        let bounds = backend.screen.size().bounds();
        backend.screen.grab(bounds, &mut data).unwrap();
        let captured: Vec<u32> = data
            .chunks_exact(4)
            .map(|p| u32::from_le_bytes([p[0], p[1], p[2], 0]))
            .collect();
        assert_eq!(
            captured,
            screen_pixels(&conn).2,
            "{method} captures what GetImage shows"
        );
        // A region: its rows only.
        backend
            .screen
            .grab(Rect::new(40, 50, 8, 2), &mut data)
            .unwrap();
        assert_eq!(data.len(), 8 * 2 * 4);
        assert_eq!(
            u32::from_le_bytes([data[0], data[1], data[2], 0]),
            0x00fe_dcba
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuous_updates_and_fences_follow_the_extensions_rules() {
    let xvfb = Xvfb::start(256, 128, &[]);
    let conn = xvfb.connect();
    let desktops = Desktops::default();
    let (mut viewer, served) = open(&desktops, settings(&xvfb), CONTROL);
    viewer
        .handshake(&[encoding::RAW, encoding::CONTINUOUS_UPDATES, encoding::FENCE])
        .await;
    // The first SetEncodings naming them is confirmed: EndOfContinuousUpdates and a fence.
    assert!(matches!(
        viewer.message().await,
        Message::EndOfContinuousUpdates
    ));
    let Message::Fence { flags, payload } = viewer.message().await else {
        panic!("a ServerFence announces fences");
    };
    assert_eq!((flags >> 31, payload.len()), (1, 0));
    // A ClientFence request is echoed with the request flag cleared, payload and all.
    let mut fence = vec![248, 0, 0, 0];
    fence.extend_from_slice(&(1u32 << 31 | 0b11 | 1 << 8).to_be_bytes());
    fence.extend_from_slice(&[3, 7, 8, 9]);
    viewer.send(&fence).await;
    let Message::Fence { flags, payload } = viewer.message().await else {
        panic!("the fence is answered");
    };
    assert_eq!(
        (flags, payload),
        (0b11, vec![7, 8, 9]),
        "unknown flags are dropped from the answer"
    );

    // Continuous updates: changes come without requests.
    viewer.request(false).await;
    viewer.update().await;
    let mut enable = vec![150, 1, 0, 0, 0, 0];
    enable.extend_from_slice(&256u16.to_be_bytes());
    enable.extend_from_slice(&128u16.to_be_bytes());
    viewer.send(&enable).await;
    window(
        &conn,
        Rect::new(10, 10, 20, 20),
        0x00ff_ffff,
        EventMask::NO_EVENT,
    );
    let mut got = viewer.update().await;
    for _ in 0..10 {
        if got.covers(Rect::new(10, 10, 20, 20)) {
            break;
        }
        got = viewer.update().await;
    }
    assert!(got.covers(Rect::new(10, 10, 20, 20)), "{got:?}");
    let mut disable = enable.clone();
    disable[1] = 0;
    viewer.send(&disable).await;
    let mut ended = false;
    for _ in 0..10 {
        if matches!(viewer.message().await, Message::EndOfContinuousUpdates) {
            ended = true;
            break;
        }
    }
    assert!(ended, "disabling continuous updates is confirmed");
    finish(viewer, served).await;
}

/// Incremental updates until the viewer shows what the X server does; every update's content.
async fn catch_up(viewer: &mut Viewer, conn: &RustConnection) -> Vec<Received> {
    let mut got = Vec::new();
    for _ in 0..20 {
        if viewer.pixels == screen_pixels(conn).2 {
            return got;
        }
        viewer.request(true).await;
        got.push(viewer.update().await);
    }
    panic!("the viewer never caught up with the screen");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scroll_is_sent_as_a_copy_and_the_rows_it_exposed() {
    let xvfb = Xvfb::start(320, 240, &[]);
    let conn = xvfb.connect();
    let area = Rect::new(0, 0, 192, 160);
    let w = window(
        &conn,
        Rect::new(32, 32, area.width, area.height),
        0,
        EventMask::NO_EVENT,
    );
    // Every row a colour of its own, so a move of rows is unambiguous.
    let rows = |from: u16, to: u16, seed: u32| {
        for y in from..to {
            let colour = (u32::from(y) * 0x0001_0307 + seed) & 0x00ff_ffff;
            fill(&conn, w, Rect::new(0, y, area.width, 1), colour);
        }
    };
    rows(0, area.height, 0);
    let desktops = Desktops::default();
    let (mut viewer, served) = open(&desktops, settings(&xvfb), CONTROL);
    viewer
        .handshake(&[encoding::COPY_RECT, encoding::RAW])
        .await;
    viewer.request(false).await;
    viewer.update().await;
    catch_up(&mut viewer, &conn).await;

    // Scroll the window's content up by 24 rows and draw the rows that came into view, as
    // one change: with the server grabbed, no capture sees the scroll half drawn.
    let gc = conn.generate_id().unwrap();
    conn.create_gc(gc, w, &xproto::CreateGCAux::new()).unwrap();
    conn.grab_server().unwrap();
    conn.copy_area(w, w, gc, 0, 24, 0, 0, area.width, area.height - 24)
        .unwrap();
    rows(area.height - 24, area.height, 0x0040_0000);
    conn.ungrab_server().unwrap();
    conn.flush().unwrap();
    let got = catch_up(&mut viewer, &conn).await;
    assert!(
        got.iter().any(|u| !u.copies.is_empty()),
        "the scroll came as a CopyRect: {got:?}"
    );
    let raw: usize = got.iter().map(Received::area).sum();
    assert!(
        raw < usize::from(area.width) * usize::from(area.height) / 2,
        "most of the scrolled area was copied, not resent ({raw} pixels sent): {got:?}"
    );
    finish(viewer, served).await;
}
