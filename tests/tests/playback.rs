//! Desktop recordings played back in the browser end to end: a device agent serving a real X
//! server (Xvfb), the relay recording to its local store, a real VNC viewer (vncdotool)
//! through `kubectl tether vnc` while the screen changes, then `kubectl tether play` as an
//! auditor and headless Chromium on its page: the page paints the frames `Player` decodes
//! from the same recording, seeking forward and back, pausing, and playing faster.

#![allow(clippy::unwrap_used)] // Tests fail loudly on any unexpected error.

use std::time::Duration;

use serde_json::Value;
use tether_e2e::PATIENCE;
use tether_e2e::browser::{
    Chromium, Page, Viewer, actual_size, canvas_shot, open_viewer, wait_screen,
};
use tether_e2e::dataplane::kubectl_tether;
use tether_e2e::desktop::{
    NOTICE_ROWS, Rgb, Vnc, Xvfb, decorate, differing_below, recorded_screen_session,
};
use tether_e2e::recording::*;
use tether_recording::desktop::Reader;
use tether_recording::playback::{self, Player};
use tether_rfb::decode::Framebuffer;

const BLUE: (u8, u8, u8) = (0x33, 0x66, 0xcc);
const ORANGE: (u8, u8, u8) = (0xcc, 0x66, 0x33);
/// A point of the background no window covers.
const PROBE: (u16, u16) = (600, 450);

/// The screen as of `ms`, decoded from the start, with the recorded pointer drawn (as the
/// page and the MP4 export draw it).
fn frame_at(reader: &Reader, ms: u32) -> Framebuffer {
    let mut player = Player::new(reader);
    player.advance_to(ms).unwrap();
    player.decoder().composed()
}

/// The first record time at which the decoded screen passes `check`.
fn first_time(reader: &Reader, what: &str, check: impl Fn(&Framebuffer) -> bool) -> u32 {
    let mut player = Player::new(reader);
    while player.step().unwrap() {
        if player.decoder().is_ready() && check(player.decoder().framebuffer()) {
            return player.position_ms();
        }
    }
    panic!("the recording never shows {what}");
}

/// The first record time at which the background is `colour`.
fn first_time_of(reader: &Reader, colour: (u8, u8, u8)) -> u32 {
    first_time(reader, &format!("{colour:02x?}"), |fb| {
        fb.rgb(PROBE.0, PROBE.1) == colour
    })
}

/// Pauses a player page that has just opened, at the screen's actual size.
async fn paused(player: &Viewer, width: u32, height: u32) -> (Chromium, Page) {
    let (chromium, mut page) = open_viewer(player).await;
    page.eval("document.getElementById('play-pause').click()")
        .await
        .unwrap();
    page.wait_for(
        "the recording pauses",
        "document.body.dataset.playing === 'false'",
        PATIENCE,
    )
    .await;
    actual_size(&mut page, width, height).await;
    (chromium, page)
}

/// Waits until the page's screen is shown `width`×`height` (at its actual size).
async fn wait_size(page: &mut Page, width: u32, height: u32) {
    page.wait_for(
        &format!("the page's screen is {width}x{height}"),
        &format!(
            "(() => {{ const c = document.querySelector('#screen canvas'); \
             const r = c && c.getBoundingClientRect(); \
             return r && Math.round(r.width) === {width} && Math.round(r.height) === {height}; }})()"
        ),
        PATIENCE,
    )
    .await;
}

/// Moves the page's position slider to `ms` as a user does (its step is 100 ms).
async fn seek(page: &mut Page, ms: u32) {
    page.eval(&format!(
        "(() => {{ const s = document.getElementById('seek'); s.value = '{ms}'; \
         s.dispatchEvent(new Event('input')); s.dispatchEvent(new Event('change')); }})()"
    ))
    .await
    .unwrap();
}

/// Waits until the page paints `want` at its size (every pixel, the agent's notice rows
/// included: both are the recording).
async fn wait_frame(page: &mut Page, dir: &std::path::Path, want: &Framebuffer, what: &str) -> Rgb {
    eprintln!("waiting until the page shows {what}");
    let size = (u32::from(want.width), u32::from(want.height));
    wait_screen(page, dir, |seen| {
        let differing = differing_below(want, seen, 0);
        (differing < 10 && (seen.width, seen.height) == size).then(|| {
            eprintln!("{what}: {differing} pixels differ from the decoded frame");
            seen.clone()
        })
    })
    .await
}

/// The desktop recordings of the session `screen`, exported (and so verified) as the
/// auditor dave into `dir/export`.
fn exported_desktops(ns: &str, dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let exported = dir.join("export");
    ok(kubectl_tether(
        ns,
        "dave",
        &["export", "screen", &exported.to_string_lossy()],
        None,
    ));
    let mut rfbs: Vec<_> = std::fs::read_dir(&exported)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "rfb"))
        .collect();
    rfbs.sort();
    rfbs
}

async fn text(page: &mut Page, id: &str) -> String {
    page.visible_text(id).await.unwrap_or_default()
}

#[tokio::test]
async fn a_recorded_desktop_plays_in_the_browser_with_pause_seek_and_speed() {
    let x = Xvfb::start(640, 480);
    let _xterm = decorate(&x, "50x8+30+30", "Tether playback");
    let cluster = start("playback", None).await;
    let ns = cluster.namespace.clone();
    let _agent = recorded_screen_session(&cluster, &x).await;
    let dir = tempfile::tempdir().unwrap();
    {
        // One viewer, connected while the background changes under it.
        let vnc = Vnc::start(&ns, "carol", "screen").await;
        let (first, second) = (dir.path().join("first.png"), dir.path().join("second.png"));
        let mut viewer = vnc.vncdo_spawn(&[
            "capture",
            first.to_str().unwrap(),
            "pause",
            "3",
            "capture",
            second.to_str().unwrap(),
            "pause",
            "2",
        ]);
        std::thread::sleep(Duration::from_millis(1500));
        x.run("xsetroot", &["-solid", "#cc6633"]);
        let status = viewer.0.wait().unwrap();
        assert!(status.success(), "vncdo: {status}");
    }
    end_and_audit_screen(&cluster).await;

    // The frames to expect, from the same recording as exported (and verified).
    let rfb = exported_desktops(&ns, dir.path())
        .into_iter()
        .next()
        .expect("a desktop recording");
    let data = std::fs::read(&rfb).unwrap();
    let reader = Reader::read(&data).unwrap();
    let duration = playback::duration_ms(&reader);
    let (blue_at, orange_at) = (first_time_of(&reader, BLUE), first_time_of(&reader, ORANGE));
    // Slider positions (100 ms steps): one on the blue screen, one at the end.
    let early = (blue_at / 100 + 1) * 100;
    let late = duration.div_ceil(100) * 100;
    eprintln!("recording: {duration} ms, blue from {blue_at}, orange from {orange_at}");
    assert!(
        early < orange_at && orange_at <= late,
        "{early} {orange_at} {late}"
    );
    let early_frame = frame_at(&reader, early);
    let late_frame = frame_at(&reader, late);
    assert_eq!(early_frame.rgb(PROBE.0, PROBE.1), BLUE);
    assert_eq!(late_frame.rgb(PROBE.0, PROBE.1), ORANGE);

    // A desktop recording does not play in the terminal.
    let out = kubectl_tether(&ns, "dave", &["play", "screen", "--instant"], None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("is a desktop recording, which plays in the browser"),
        "{err}"
    );

    let mut player = Viewer::start_with(&ns, "dave", &["play", "screen", "--no-browser"]).await;
    let token = player.url.split("token=").nth(1).unwrap().to_owned();
    let (_chromium, mut page) = paused(&player, 640, 480).await;

    // The page around a recording: the device, the banner, the controls, no live-session
    // controls.
    assert_eq!(text(&mut page, "device").await, "kiosk");
    let banner = text(&mut page, "recording-banner").await;
    assert!(banner.starts_with("Recording:"), "{banner}");
    let about = text(&mut page, "session").await;
    assert!(
        about.contains(&format!("RemoteSession {ns}/screen")),
        "{about}"
    );
    assert!(about.contains("carol"), "{about}");
    for hidden in ["countdown", "ctrl-alt-del", "view-only"] {
        assert_eq!(page.visible_text(hidden).await, None, "{hidden}");
    }

    // Seeking to the blue screen shows the frame decoded there, and pausing keeps it.
    seek(&mut page, early).await;
    let shown = wait_frame(&mut page, dir.path(), &early_frame, "the early frame").await;
    let position = text(&mut page, "position").await;
    assert_eq!(
        position,
        format!("0:{:02} / 0:{:02}", early / 1000, duration / 1000)
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let still = canvas_shot(&mut page, dir.path(), "still.png").await;
    assert_eq!(
        still.differing_pixels(&shown),
        0,
        "the paused screen changed"
    );
    assert_eq!(text(&mut page, "position").await, position);
    assert_eq!(
        page.eval("document.body.dataset.playing").await.unwrap(),
        Value::from("false")
    );

    // Forward to the end, and back again (from a snapshot, re-decoded).
    seek(&mut page, late).await;
    wait_frame(&mut page, dir.path(), &late_frame, "the last frame").await;
    seek(&mut page, early).await;
    wait_frame(&mut page, dir.path(), &early_frame, "the early frame again").await;

    // Played at 4×, the recording reaches its end and stops there.
    page.eval(
        "(() => { const s = document.getElementById('speed'); s.value = '4'; \
         s.dispatchEvent(new Event('change')); })()",
    )
    .await
    .unwrap();
    page.eval("document.getElementById('play-pause').click()")
        .await
        .unwrap();
    wait_frame(&mut page, dir.path(), &late_frame, "the last frame, played").await;
    page.wait_for(
        "the recording ends",
        "document.body.dataset.playing === 'false'",
        PATIENCE,
    )
    .await;
    let end = text(&mut page, "position").await;
    assert!(
        end.ends_with(&format!("/ 0:{:02}", duration / 1000)),
        "{end}"
    );

    // The token was printed in the link only.
    player.drain();
    let mentions = player.printed.iter().filter(|l| l.contains(&token)).count();
    assert_eq!(mentions, 1, "{:#?}", player.printed);
}

/// A recording in which the device's screen changed size (RandR) plays in the browser at
/// each size: seeking before the resize shows the 640×480 screen, after it the 800×600 one,
/// and seeking back returns to 640×480, each frame as `Player` decodes it.
#[tokio::test]
async fn a_recording_with_a_resize_plays_in_the_browser_at_each_size() {
    let recorded = record_across_a_resize("play-resize").await;
    let (ns, dir, own) = (
        recorded.cluster.namespace.clone(),
        &recorded.dir,
        recorded.live.clone(),
    );

    // The recording of the viewer that saw the resize, and its channel.
    let (rfb, reader) = exported_desktops(&ns, dir.path())
        .into_iter()
        .find_map(|p| {
            let reader = Reader::read(&std::fs::read(&p).unwrap()).unwrap();
            let (sizes, _) = playback::sizes(&reader);
            (sizes.len() > 1).then_some((p, reader))
        })
        .expect("a desktop recording through the resize");
    let channel = rfb
        .to_string_lossy()
        .rsplit_once(".desktop-")
        .and_then(|(_, c)| c.strip_suffix(".rfb")?.parse::<u32>().ok())
        .expect("the recording's channel in its name");
    let duration = playback::duration_ms(&reader);
    let resized_at = first_time(&reader, "the 800x600 screen", |fb| {
        (fb.width, fb.height) == (800, 600) && fb.rgb(700, 500) == ORANGE
    });
    // Slider positions (100 ms steps): on the first screen, and at the end.
    let first = first_time(&reader, "a screen", |_| true);
    let early = (first / 100 + 1) * 100;
    let late = duration.div_ceil(100) * 100;
    eprintln!("recording: {duration} ms, resized at {resized_at}");
    assert!(early < resized_at && resized_at <= late, "{resized_at}");
    let early_frame = frame_at(&reader, early);
    let late_frame = frame_at(&reader, late);
    assert_eq!((early_frame.width, early_frame.height), (640, 480));
    assert_eq!((late_frame.width, late_frame.height), (800, 600));
    let differing = differing_below(&late_frame, &own, NOTICE_ROWS);
    assert!(
        differing < 200,
        "{differing} pixels differ from the live screen"
    );

    let player = Viewer::start_with(
        &ns,
        "dave",
        &[
            "play",
            "screen",
            "--channel",
            &channel.to_string(),
            "--no-browser",
        ],
    )
    .await;
    let (_chromium, mut page) = paused(&player, 640, 480).await;
    seek(&mut page, early).await;
    wait_frame(
        &mut page,
        dir.path(),
        &early_frame,
        "the screen before the resize",
    )
    .await;
    seek(&mut page, late).await;
    wait_size(&mut page, 800, 600).await;
    let last = wait_frame(&mut page, dir.path(), &late_frame, "the resized screen").await;
    let live = last.differing_pixels(&own);
    eprintln!("{live} of 480000 pixels differ between the page's last frame and the live screen");
    seek(&mut page, early).await;
    wait_size(&mut page, 640, 480).await;
    wait_frame(
        &mut page,
        dir.path(),
        &early_frame,
        "the screen before the resize, again",
    )
    .await;
}
