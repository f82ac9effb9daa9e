//! Desktop recordings exported as video end to end: a device agent serving a real X server
//! (Xvfb), the relay recording to its local store, a real VNC viewer (vncdotool) through
//! `kubectl tether vnc`, then `kubectl tether export --video` as an auditor and `ffprobe` on
//! the MP4 it wrote.

#![allow(clippy::unwrap_used)] // Tests fail loudly on any unexpected error.

use tether_e2e::dataplane::kubectl_tether;
use tether_e2e::desktop::{
    NOTICE_ROWS, Vnc, Xvfb, decorate, differing_below, recorded_screen_session,
};
use tether_e2e::recording::*;
use tether_recording::desktop::Reader;
use tether_recording::playback::{self, Player};

fn ffprobe(path: &std::path::Path) -> serde_json::Value {
    let out = std::process::Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-print_format",
            "json",
            "-show_streams",
            "-show_format",
        ])
        .arg(path)
        .output()
        .expect("ffprobe is needed (Debian package ffmpeg; `cargo xtask test` installs it)");
    assert!(
        out.status.success(),
        "ffprobe refused {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The video stream of an MP4 (which must be H.264) and the file's length in seconds.
fn video_of(mp4: &std::path::Path) -> (serde_json::Value, f64) {
    let probe = ffprobe(mp4);
    let video = probe["streams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["codec_type"] == "video")
        .unwrap_or_else(|| panic!("no video stream: {probe}"))
        .clone();
    assert_eq!(video["codec_name"], "h264", "{video}");
    let seconds = probe["format"]["duration"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    (video, seconds)
}

/// Exports session `screen` of `ns` with `--video` as the auditor into `dir`, checking that it
/// verified every checksum; the desktop recordings exported, in name order.
fn export_video(ns: &str, dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let out = kubectl_tether(
        ns,
        "dave",
        &["export", "screen", dir.to_str().unwrap(), "--video"],
        None,
    );
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    eprintln!("{err}");
    assert!(out.status.success(), "{err}");
    assert!(err.contains("every checksum verified"), "{err}");
    let mut rfbs: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "rfb"))
        .collect();
    rfbs.sort();
    rfbs
}

#[tokio::test]
async fn a_recorded_desktop_exports_to_an_mp4_of_its_size_and_length() {
    let x = Xvfb::start(640, 480);
    let _xterm = decorate(&x, "50x8+30+30", "Tether export");
    let cluster = start("export", None).await;
    let ns = cluster.namespace.clone();
    let _agent = recorded_screen_session(&cluster, &x).await;
    let dir = tempfile::tempdir().unwrap();
    {
        let vnc = Vnc::start(&ns, "carol", "screen").await;
        // A viewer connected for a few seconds while the screen changes under it.
        let first = dir.path().join("first.png");
        let (ok_first, err) = vnc.vncdo(&["capture", first.to_str().unwrap(), "pause", "2"]);
        assert!(ok_first, "{err}");
        x.run("xsetroot", &["-solid", "#cc6633"]);
        let second = dir.path().join("second.png");
        let (ok_second, err) = vnc.vncdo(&[
            "pause",
            "1",
            "capture",
            second.to_str().unwrap(),
            "pause",
            "3",
        ]);
        assert!(ok_second, "{err}");
    }
    // The screen as the X server has it when the recorded viewer left.
    let own = x.capture();
    end_and_audit_screen(&cluster).await;
    let rfbs = export_video(&ns, &dir.path().join("export"));
    let mut longest = 0.0f64;
    assert_eq!(rfbs.len(), 2, "one recording per viewer: {rfbs:?}");
    for rfb in &rfbs {
        let data = std::fs::read(rfb).unwrap();
        let reader = Reader::read(&data).unwrap();
        assert!(reader.complete, "{}", rfb.display());
        let mp4 = rfb.with_extension("mp4");
        let (video, seconds) = video_of(&mp4);
        assert_eq!(video["pix_fmt"], "yuv420p", "{video}");
        assert_eq!(
            (video["width"].as_u64(), video["height"].as_u64()),
            (Some(640), Some(480))
        );
        let recorded = f64::from(playback::duration_ms(&reader)) / 1000.0;
        assert!(
            (seconds - recorded).abs() <= 1.0,
            "{}: {seconds}s of video for {recorded}s recorded",
            mp4.display()
        );
        longest = longest.max(recorded);
    }
    // A video runs to the recording's last record: the second viewer asked for its screen
    // a second after it connected.
    assert!(longest >= 1.0, "the longest recording is {longest}s");

    // The last recording, decoded to its end, is the screen the X server had (the viewer
    // asked for lossless encodings; allow the xterm's cursor).
    let data = std::fs::read(rfbs.last().unwrap()).unwrap();
    let reader = Reader::read(&data).unwrap();
    let mut player = Player::new(&reader);
    player.advance_to(u32::MAX).unwrap();
    let fb = player.decoder().framebuffer();
    assert_eq!(
        (u32::from(fb.width), u32::from(fb.height)),
        (own.width, own.height)
    );
    // The agent's viewing notice sits on the top rows while a viewer is connected: in the
    // recording, and not on the X server's screen once the viewer has left. Those rows are
    // left out.
    let differing = differing_below(fb, &own, NOTICE_ROWS);
    assert!(
        differing < 200,
        "{differing} pixels of the decoded recording differ from the X server's screen"
    );
    assert_eq!(
        fb.rgb(600, 450),
        (0xcc, 0x66, 0x33),
        "the second background"
    );
}

/// A screen that changes size in the middle of a recording (RandR, as when the user plugs in a
/// monitor): the recording holds both sizes, the MP4 is as large as the largest with the whole
/// session in it, and the recording decodes to the screen as it ended.
#[tokio::test]
async fn a_recording_with_a_resize_in_the_middle_exports_at_its_largest_size() {
    let recorded = record_across_a_resize("export-resize").await;
    let (ns, dir, own) = (
        recorded.cluster.namespace.clone(),
        &recorded.dir,
        recorded.live.clone(),
    );
    // The recording of the viewer that saw the resize (the other one only captured once).
    let rfbs = export_video(&ns, &dir.path().join("export"));
    let rfb = rfbs.last().expect("a desktop recording").clone();
    let data = std::fs::read(&rfb).unwrap();
    let reader = Reader::read(&data).unwrap();
    assert!(reader.complete, "{}", rfb.display());
    let (sizes, damage) = playback::sizes(&reader);
    assert!(damage.is_none(), "{damage:?}");
    assert!(
        sizes.contains(&(640, 480)) && sizes.contains(&(800, 600)),
        "the recording holds both sizes: {sizes:?}"
    );

    let (video, seconds) = video_of(&rfb.with_extension("mp4"));
    assert_eq!(
        (video["width"].as_u64(), video["height"].as_u64()),
        (Some(800), Some(600)),
        "the video is as large as the largest screen"
    );
    let recorded = f64::from(playback::duration_ms(&reader)) / 1000.0;
    assert!(recorded >= 3.0, "the viewer stayed over 3 s: {recorded}s");
    assert!(
        (seconds - recorded).abs() <= 1.0,
        "{seconds}s of video for {recorded}s recorded"
    );

    // Decoded to its end, the recording is the resized screen.
    let mut player = Player::new(&reader);
    player.advance_to(u32::MAX).unwrap();
    let fb = player.decoder().framebuffer();
    assert_eq!((u32::from(fb.width), u32::from(fb.height)), (800, 600));
    let differing = differing_below(fb, &own, NOTICE_ROWS);
    assert!(
        differing < 200,
        "{differing} pixels of the decoded recording differ from the X server's screen"
    );
}
