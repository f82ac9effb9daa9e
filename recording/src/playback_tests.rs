#![allow(clippy::unwrap_used)] // Tests fail loudly on any unexpected error.

use super::*;
use crate::desktop::{Encoder as Recorder, MAGIC};
use tether_rfb::client::{ClientMessage, PixelFormat, Screen};
use tether_rfb::encoding;
use tether_rfb::server::{self, Encoder, Image, SizeReason, Update};

/// A `width`×`height` BGRX screen coloured by `seed`.
pub(crate) fn screen(width: u16, height: u16, seed: u8) -> Vec<u8> {
    let mut data = Vec::new();
    for y in 0..height {
        for x in 0..width {
            let band = (x / 8 + y / 8 + u16::from(seed)) % 5;
            data.extend_from_slice(&[band as u8 * 50, seed.wrapping_mul(37), (y % 256) as u8, 0]);
        }
    }
    data
}

fn image(width: u16, height: u16, data: &[u8]) -> Image<'_> {
    Image {
        width,
        height,
        stride: 4 * usize::from(width),
        data,
    }
}

/// A recorded session: 64×48 for a while, one frame a second in ZRLE, resized to 80×40 at
/// 5.5 s, and on to `seconds`.
pub(crate) fn recording(seconds: u32) -> (Vec<u8>, Vec<u8>) {
    let mut rec = Recorder::new("carol", 0, false);
    let mut object = MAGIC.to_vec();
    let mut hs = server::version().to_vec();
    hs.extend_from_slice(&server::security_types());
    hs.extend_from_slice(&server::security_ok());
    hs.extend(server::server_init(64, 48, &PixelFormat::BGRX, "kiosk"));
    object.extend(rec.record(TO_VIEWER, 0, &hs).bytes);
    let viewer: Vec<u8> = [
        ClientMessage::Version,
        ClientMessage::Security,
        ClientMessage::Init { shared: true },
        ClientMessage::SetEncodings(vec![encoding::ZRLE, encoding::EXTENDED_DESKTOP_SIZE]),
        ClientMessage::UpdateRequest {
            incremental: false,
            x: 0,
            y: 0,
            width: 64,
            height: 48,
        },
    ]
    .iter()
    .flat_map(ClientMessage::encode)
    .collect();
    object.extend(rec.record(TO_DEVICE, 1, &viewer).bytes);
    let mut enc = Encoder::new();
    enc.set_encodings(&[encoding::ZRLE, encoding::EXTENDED_DESKTOP_SIZE]);
    let mut last = Vec::new();
    for s in 0..=seconds {
        let (w, h) = if s * 1000 + 500 >= 6000 {
            (80, 40)
        } else {
            (64, 48)
        };
        let mut update = Update::new();
        if s == 6 {
            let screen = Screen {
                id: 0,
                x: 0,
                y: 0,
                width: w,
                height: h,
                flags: 0,
            };
            server::extended_desktop_size(SizeReason::Server, 0, w, h, &[screen], update.body());
            update.added(1);
        }
        let data = screen(w, h, s as u8);
        let img = image(w, h, &data);
        enc.encode(&img, img.bounds(), &mut update);
        let ms = if s == 6 { 5500 } else { s * 1000 + 10 };
        let bytes = update.finish();
        // Records cut messages anywhere: the decoder waits for the rest.
        let cut = bytes.len() / 3;
        object.extend(rec.record(TO_VIEWER, ms, &bytes[..cut]).bytes);
        object.extend(rec.record(TO_VIEWER, ms, &bytes[cut..]).bytes);
        last = data;
    }
    object.extend(rec.finish());
    (object, last)
}

fn bgrx(fb: &Framebuffer) -> Vec<u8> {
    fb.pixels.iter().flat_map(|p| p.to_le_bytes()).collect()
}

#[test]
fn a_recording_plays_to_its_last_screen_through_a_resize() {
    let (object, last) = recording(9);
    let reader = Reader::read(&object).unwrap();
    let mut player = Player::new(&reader);
    player.advance_to(u32::MAX).unwrap();
    assert!(player.is_done());
    let fb = player.decoder().framebuffer();
    assert_eq!((fb.width, fb.height), (80, 40));
    assert_eq!(bgrx(fb), last);
    let (got, error) = sizes(&reader);
    assert_eq!(got, [(64, 48), (80, 40)]);
    assert!(error.is_none());
    assert_eq!(canvas(&got), (80, 48));
    assert_eq!(canvas(&[(63, 47)]), (64, 48), "even sizes");
}

#[test]
fn frames_come_at_the_rate_asked_on_one_canvas() {
    let (object, _) = recording(9);
    let reader = Reader::read(&object).unwrap();
    let (got, _) = sizes(&reader);
    let mut frames = Frames::new(&reader, 10, &got, true);
    assert_eq!(frames.canvas(), (80, 48));
    // 9.01 s at 10 fps: frames at 0.0 … 9.0 s.
    assert_eq!(frames.count(), 91);
    let mut out = Vec::new();
    let mut n = 0;
    let mut at_3s = Vec::new();
    while frames.next_frame(&mut out) {
        assert_eq!(out.len(), 3 * 80 * 48);
        if n == 30 {
            at_3s = out.clone();
        }
        n += 1;
    }
    assert_eq!(n, 91);
    assert!(frames.error.is_none());
    // At 3.0 s the screen of 2 s (recorded at 2.01 s) shows, centred with 8 black columns
    // either side.
    let expected = screen(64, 48, 2);
    let px = |x: usize, y: usize| &at_3s[3 * (y * 80 + x)..3 * (y * 80 + x) + 3];
    assert_eq!(px(0, 0), [0, 0, 0]);
    let (b, g, r) = (expected[0], expected[1], expected[2]);
    assert_eq!(px(8, 0), [r, g, b]);
}

#[test]
fn seeking_from_snapshots_shows_what_playing_from_the_start_shows() {
    let (object, _) = recording(12);
    let reader = Reader::read(&object).unwrap();
    let timeline = Timeline::build(&reader, 2000);
    assert!(timeline.snapshots() >= 5, "{}", timeline.snapshots());
    assert!(timeline.error.is_none());
    for ms in [0, 10, 999, 2500, 5499, 5500, 5600, 7010, 12_500] {
        let mut linear = Player::new(&reader);
        linear.advance_to(ms).unwrap();
        let sought = timeline.seek(ms);
        assert_eq!(
            sought.decoder().framebuffer(),
            linear.decoder().framebuffer(),
            "at {ms} ms"
        );
        assert_eq!(sought.next_ms(), linear.next_ms(), "at {ms} ms");
    }
}

#[test]
fn a_corrupt_record_stops_playback_with_its_time() {
    let (object, _) = recording(3);
    let mut reader = Reader::read(&object).unwrap();
    // The third second's update, mangled.
    let at = reader.records.iter().position(|r| r.ms == 2010).unwrap();
    reader.records[at].bytes = vec![0, 0, 0, 1, 0, 0, 0, 0, 0, 1, 0, 1, 0x7F, 0, 0, 0];
    let mut player = Player::new(&reader);
    let err = player.advance_to(u32::MAX).unwrap_err();
    assert_eq!(err.ms, 2010);
    let (got, error) = sizes(&reader);
    assert_eq!(got, [(64, 48)]);
    assert_eq!(error.map(|e| e.ms), Some(2010));
    // Frames go on showing the last good screen.
    let mut frames = Frames::new(&reader, 5, &got, false);
    let mut out = Vec::new();
    while frames.next_frame(&mut out) {}
    assert_eq!(frames.error.as_ref().map(|e| e.ms), Some(2010));
}
