#![allow(clippy::unwrap_used)] // Tests fail loudly on any unexpected error.

use super::*;
use crate::client::{ClientMessage, Screen};
use crate::server::{self, Encoder, Image, SizeReason, Update};

/// RGB565, big-endian.
const RGB565_BE: PixelFormat = PixelFormat {
    bits_per_pixel: 16,
    depth: 16,
    big_endian: true,
    true_colour: true,
    red_max: 31,
    green_max: 63,
    blue_max: 31,
    red_shift: 11,
    green_shift: 5,
    blue_shift: 0,
};

/// 32-bit big-endian, colour in the high three bytes (ZRLE's other CPIXEL).
const RGBX_BE: PixelFormat = PixelFormat {
    bits_per_pixel: 32,
    depth: 24,
    big_endian: true,
    true_colour: true,
    red_max: 255,
    green_max: 255,
    blue_max: 255,
    red_shift: 24,
    green_shift: 16,
    blue_shift: 8,
};

/// A BGRX picture coloured by `f`.
struct Picture {
    width: u16,
    height: u16,
    data: Vec<u8>,
}

impl Picture {
    fn new(width: u16, height: u16, f: impl Fn(u16, u16) -> (u8, u8, u8)) -> Self {
        let mut data = Vec::new();
        for y in 0..height {
            for x in 0..width {
                let (r, g, b) = f(x, y);
                data.extend_from_slice(&[b, g, r, 0xAA]);
            }
        }
        Self {
            width,
            height,
            data,
        }
    }

    fn image(&self) -> Image<'_> {
        Image {
            width: self.width,
            height: self.height,
            stride: 4 * usize::from(self.width),
            data: &self.data,
        }
    }

    fn rgb(&self, x: u16, y: u16) -> (u8, u8, u8) {
        self.image().rgb(x, y)
    }
}

/// A desktop: windows of flat colour, text-like strokes, and a noisy photo in one corner,
/// so every Tight and ZRLE path is taken.
fn desktop(width: u16, height: u16, seed: u32) -> Picture {
    Picture::new(width, height, move |x, y| {
        let (xs, ys) = (u32::from(x), u32::from(y));
        if x < width / 3 && y < height / 2 {
            let n = (xs.wrapping_mul(2_654_435_761) ^ ys.wrapping_mul(40503) ^ seed)
                .wrapping_mul(0x9E37_79B1);
            ((n >> 24) as u8, (n >> 16) as u8, (n >> 8) as u8)
        } else if (xs / 4 + ys / 7 + seed).is_multiple_of(9) {
            (20, 20, 20)
        } else if y > height / 2 {
            (40, 90, (160 + seed % 50) as u8)
        } else {
            (240, 240, ((xs + seed) / 16 % 3 * 60) as u8)
        }
    })
}

/// The server's handshake and ServerInit, as Tether's server sends them.
fn handshake(width: u16, height: u16) -> Vec<u8> {
    let mut s = server::version().to_vec();
    s.extend_from_slice(&server::security_types());
    s.extend_from_slice(&server::security_ok());
    s.extend(server::server_init(
        width,
        height,
        &PixelFormat::BGRX,
        "kiosk",
    ));
    s
}

fn set_format(format: PixelFormat) -> Vec<u8> {
    ClientMessage::SetPixelFormat(format).encode()
}

fn full_update(enc: &mut Encoder, picture: &Picture) -> Vec<u8> {
    let mut update = Update::new();
    let image = picture.image();
    enc.encode(&image, image.bounds(), &mut update);
    update.finish()
}

/// Decodes `bytes` (all of them) and returns the events.
fn decode(dec: &mut Decoder, bytes: &[u8]) -> Vec<Event> {
    let mut events = Vec::new();
    dec.feed(bytes, |e| events.push(e.clone())).unwrap();
    assert_eq!(dec.buffered(), 0, "every byte decoded");
    events
}

/// The largest difference of one channel between the decoded framebuffer and `picture`,
/// after quantising the picture to `format`.
fn worst_difference(fb: &Framebuffer, picture: &Picture, format: &PixelFormat) -> u8 {
    assert_eq!((fb.width, fb.height), (picture.width, picture.height));
    let pixels = pixels::Pixels::new(*format).unwrap();
    let mut worst = 0;
    for y in 0..picture.height {
        for x in 0..picture.width {
            let (r, g, b) = picture.rgb(x, y);
            let want = pixels.colour(format.pixel(r, g, b));
            let want = ((want >> 16) as u8, (want >> 8) as u8, want as u8);
            let got = fb.rgb(x, y);
            for (a, b) in [(got.0, want.0), (got.1, want.1), (got.2, want.2)] {
                worst = worst.max(a.abs_diff(b));
            }
        }
    }
    worst
}

#[test]
fn every_lossless_encoding_and_format_decodes_to_the_servers_pixels() {
    let (w, h) = (150, 90);
    let first = desktop(w, h, 1);
    let second = desktop(w, h, 7);
    for format in [PixelFormat::BGRX, RGB565_BE, RGBX_BE] {
        for encodings in [
            vec![encoding::RAW],
            vec![encoding::ZRLE],
            vec![encoding::TIGHT],
            vec![encoding::TIGHT, -256], // compression level 0: stored zlib blocks
        ] {
            let mut enc = Encoder::new();
            enc.set_format(format).unwrap();
            enc.set_encodings(&encodings);
            let mut dec = Decoder::default();
            let events = decode(&mut dec, &handshake(w, h));
            assert_eq!(
                events,
                [Event::Ready {
                    width: w,
                    height: h,
                    name: "kiosk".into()
                }]
            );
            dec.push_viewer(&[server::version(), &[1, 1]].concat());
            dec.push_viewer(&set_format(format));
            // Two frames: the zlib streams carry their dictionaries from one to the next.
            for picture in [&first, &second] {
                let events = decode(&mut dec, &full_update(&mut enc, picture));
                assert!(matches!(
                    &events[..],
                    [Event::Update { resized: false, .. }]
                ));
                assert_eq!(
                    worst_difference(dec.framebuffer(), picture, &format),
                    0,
                    "{format:?} {encodings:?}"
                );
            }
        }
    }
}

#[test]
fn tight_jpeg_decodes_close_to_the_picture() {
    let (w, h) = (200, 120);
    let picture = Picture::new(w, h, |x, y| {
        let (x, y) = (f64::from(x), f64::from(y));
        (
            (128.0 + 100.0 * (x / 9.0).sin()) as u8,
            (128.0 + 100.0 * (y / 7.0).cos()) as u8,
            ((x + y) as u32 % 256) as u8,
        )
    });
    let mut enc = Encoder::new();
    enc.set_encodings(&[encoding::TIGHT, -23]); // JPEG quality 9
    let mut dec = Decoder::default();
    decode(&mut dec, &handshake(w, h));
    let bytes = full_update(&mut enc, &picture);
    decode(&mut dec, &bytes);
    let fb = dec.framebuffer();
    let mut total = 0u64;
    for y in 0..h {
        for x in 0..w {
            let (a, b) = (fb.rgb(x, y), picture.rgb(x, y));
            total += u64::from(a.0.abs_diff(b.0)) + u64::from(a.1.abs_diff(b.1));
            total += u64::from(a.2.abs_diff(b.2));
        }
    }
    let mean = total as f64 / (3.0 * f64::from(w) * f64::from(h));
    assert!(mean < 4.0, "mean difference {mean}");
    // It was JPEG: the bytes are far fewer than the pixels.
    assert!(bytes.len() < usize::from(w) * usize::from(h));
}

#[test]
fn a_scroll_arrives_as_copyrect_and_decodes_to_the_scrolled_screen() {
    let (w, h) = (120, 100);
    let before = desktop(w, h, 3);
    let after = Picture::new(w, h, |x, y| {
        if y + 10 < h {
            before.rgb(x, y + 10)
        } else {
            (9, 9, 9)
        }
    });
    let mut enc = Encoder::new();
    enc.set_encodings(&[encoding::ZRLE, encoding::COPY_RECT]);
    let mut dec = Decoder::default();
    decode(&mut dec, &handshake(w, h));
    decode(&mut dec, &full_update(&mut enc, &before));
    let mut update = Update::new();
    let scroll = enc.encode_with_scroll(
        &before.image(),
        &after.image(),
        after.image().bounds(),
        &mut update,
    );
    assert!(scroll.is_some(), "the encoder found the scroll");
    let events = decode(&mut dec, &update.finish());
    let [Event::Update { damage, .. }] = &events[..] else {
        panic!("{events:?}");
    };
    assert!(damage.len() >= 2, "a copy and the exposed rows: {damage:?}");
    assert_eq!(
        worst_difference(dec.framebuffer(), &after, &PixelFormat::BGRX),
        0
    );
}

#[test]
fn the_cursor_shape_is_kept_and_drawn_at_the_pointer() {
    let mut dec = Decoder::default();
    decode(&mut dec, &handshake(40, 30));
    let argb = [0xFF_FF_00_00, 0x00_00_00_00, 0xFF_00_FF_00, 0xFF_00_00_FF];
    let mut update = Update::new();
    server::cursor(1, 0, 2, 2, &argb, &PixelFormat::BGRX, update.body());
    update.added(1);
    let events = decode(&mut dec, &update.finish());
    assert!(matches!(&events[..], [Event::Update { cursor: true, .. }]));
    let cursor = dec.cursor().unwrap();
    assert_eq!(
        (cursor.hot_x, cursor.hot_y, cursor.width, cursor.height),
        (1, 0, 2, 2)
    );
    assert_eq!(
        cursor.argb,
        [0xFF_FF_00_00, 0, 0xFF_00_FF_00, 0xFF_00_00_FF]
    );
    dec.push_viewer(&[server::version(), &[1, 1]].concat());
    dec.push_viewer(
        &ClientMessage::Pointer {
            buttons: 0,
            x: 10,
            y: 5,
        }
        .encode(),
    );
    assert_eq!(dec.pointer(), (10, 5));
    let shown = dec.composed();
    assert_eq!(shown.rgb(9, 5), (255, 0, 0), "hot spot at the pointer");
    assert_eq!(shown.rgb(10, 5), (0, 0, 0), "transparent pixel");
    assert_eq!(shown.rgb(10, 6), (0, 0, 255));
    assert_eq!(
        dec.framebuffer().rgb(9, 5),
        (0, 0, 0),
        "not drawn into the framebuffer"
    );
}

#[test]
fn resizes_of_both_kinds_change_the_framebuffer() {
    let mut dec = Decoder::default();
    decode(&mut dec, &handshake(64, 48));
    let mut enc = Encoder::new();
    enc.set_encodings(&[encoding::TIGHT, encoding::EXTENDED_DESKTOP_SIZE]);
    decode(&mut dec, &full_update(&mut enc, &desktop(64, 48, 1)));

    // ExtendedDesktopSize then the new screen in the same update, as the agent sends them.
    let bigger = desktop(100, 70, 2);
    let mut update = Update::new();
    let screen = Screen {
        id: 0,
        x: 0,
        y: 0,
        width: 100,
        height: 70,
        flags: 0,
    };
    server::extended_desktop_size(SizeReason::Server, 0, 100, 70, &[screen], update.body());
    update.added(1);
    enc.encode(&bigger.image(), bigger.image().bounds(), &mut update);
    let events = decode(&mut dec, &update.finish());
    assert!(matches!(&events[..], [Event::Update { resized: true, .. }]));
    assert_eq!(
        worst_difference(dec.framebuffer(), &bigger, &PixelFormat::BGRX),
        0
    );

    // A refused SetDesktopSize (status 1) changes nothing.
    let mut update = Update::new();
    server::extended_desktop_size(SizeReason::ThisClient, 1, 100, 70, &[screen], update.body());
    update.added(1);
    let events = decode(&mut dec, &update.finish());
    assert!(matches!(
        &events[..],
        [Event::Update { resized: false, .. }]
    ));

    // Plain DesktopSize, smaller.
    let smaller = desktop(50, 20, 3);
    let mut update = Update::new();
    server::desktop_size(50, 20, update.body());
    update.added(1);
    enc.encode(&smaller.image(), smaller.image().bounds(), &mut update);
    decode(&mut dec, &update.finish());
    assert_eq!(
        (dec.framebuffer().width, dec.framebuffer().height),
        (50, 20)
    );
    assert_eq!(
        worst_difference(dec.framebuffer(), &smaller, &PixelFormat::BGRX),
        0
    );
}

/// A session's server stream: handshake, extension replies, several updates in every
/// encoding, clipboard, bell and fences between them.
fn session(w: u16, h: u16) -> (Vec<u8>, Picture) {
    let mut s = handshake(w, h);
    let mut enc = Encoder::new();
    enc.set_encodings(&[encoding::ZRLE]);
    s.extend(server::end_of_continuous_updates());
    s.extend(server::fence(1 << 31, b"sync"));
    s.extend(full_update(&mut enc, &desktop(w, h, 1)));
    s.extend(server::bell());
    s.extend(server::cut_text("copied on the device"));
    // An Extended Clipboard message: ServerCutText with a negative length.
    s.extend_from_slice(&[3, 0, 0, 0]);
    s.extend_from_slice(&(-6i32).to_be_bytes());
    s.extend_from_slice(&[1, 0, 0, 0, 0, 1]);
    s.extend(full_update(&mut enc, &desktop(w, h, 2)));
    enc.set_encodings(&[encoding::TIGHT]);
    s.extend(full_update(&mut enc, &desktop(w, h, 3)));
    enc.set_encodings(&[encoding::ZRLE]);
    let last = desktop(w, h, 4);
    s.extend(full_update(&mut enc, &last));
    (s, last)
}

#[test]
fn bytes_split_anywhere_decode_the_same() {
    let (stream, last) = session(90, 70);
    let mut whole = Decoder::default();
    let events = decode(&mut whole, &stream);
    let skipped = events
        .iter()
        .filter(|e| matches!(e, Event::Skipped(_)))
        .count();
    assert_eq!(skipped, 5);
    assert_eq!(
        worst_difference(whole.framebuffer(), &last, &PixelFormat::BGRX),
        0
    );
    for chunk in [1, 7, 1000] {
        let mut dec = Decoder::default();
        let mut n = 0;
        for piece in stream.chunks(chunk) {
            dec.feed(piece, |_| n += 1).unwrap();
        }
        assert_eq!(n, events.len(), "chunks of {chunk}");
        assert_eq!(dec.framebuffer(), whole.framebuffer(), "chunks of {chunk}");
    }
}

#[test]
fn a_snapshot_resumes_with_its_zlib_streams() {
    let (w, h) = (90, 70);
    let (stream, _) = session(w, h);
    let mut enc_z = Encoder::new();
    enc_z.set_encodings(&[encoding::ZRLE]);
    let mut dec = Decoder::default();
    // Half of the session, then a snapshot (mid-message, as records cut it).
    let half = stream.len() / 2;
    dec.feed(&stream[..half], |_| {}).unwrap();
    let snapshot = dec.snapshot();
    let mut resumed = Decoder::resume(&snapshot);
    dec.feed(&stream[half..], |_| {}).unwrap();
    resumed.feed(&stream[half..], |_| {}).unwrap();
    assert_eq!(resumed.framebuffer(), dec.framebuffer());
    // The streams carry on after the snapshot: more updates on both.
    let more = Picture::new(w, h, |x, y| ((x * 3) as u8, (y * 2) as u8, 77));
    let mut enc = Encoder::new();
    enc.set_encodings(&[encoding::ZRLE]);
    let mut fresh = Decoder::default();
    let mut s = handshake(w, h);
    s.extend(full_update(&mut enc, &desktop(w, h, 5)));
    fresh.feed(&s, |_| {}).unwrap();
    let again = Decoder::resume(&fresh.snapshot());
    let mut again = again;
    let next = full_update(&mut enc, &more);
    again.feed(&next, |_| {}).unwrap();
    assert_eq!(
        worst_difference(again.framebuffer(), &more, &PixelFormat::BGRX),
        0
    );
    assert_eq!(snapshot.framebuffer().width, w);
}

#[test]
fn the_gradient_filter_predicts_from_left_and_above() {
    let mut dec = Decoder::default();
    decode(&mut dec, &handshake(2, 2));
    let mut update = Update::new();
    server::rect_header(Rect::new(0, 0, 2, 1), encoding::TIGHT, update.body());
    // Basic compression, explicit filter, stream 0; gradient; 6 bytes, sent as they are.
    update
        .body()
        .extend_from_slice(&[0x40, 2, 10, 20, 30, 5, 5, 5]);
    update.added(1);
    decode(&mut dec, &update.finish());
    assert_eq!(dec.framebuffer().rgb(0, 0), (10, 20, 30));
    assert_eq!(dec.framebuffer().rgb(1, 0), (15, 25, 35));
}

#[test]
fn malformed_streams_are_errors_and_stay_errors() {
    let bad: Vec<(&str, Vec<u8>)> = vec![
        ("not RFB", b"HTTP/1.1 200 OK\r\n".to_vec()),
        ("refused", {
            let mut s = server::version().to_vec();
            s.push(0);
            s.extend_from_slice(&4u32.to_be_bytes());
            s.extend_from_slice(b"nope");
            s
        }),
        ("huge framebuffer", {
            let mut s = server::version().to_vec();
            s.extend_from_slice(&server::security_types());
            s.extend_from_slice(&server::security_ok());
            s.extend(server::server_init(65535, 65535, &PixelFormat::BGRX, ""));
            s
        }),
        ("rectangle outside", {
            let mut s = handshake(10, 10);
            s.extend_from_slice(&[0, 0, 0, 1]);
            server::rect_header(Rect::new(5, 5, 10, 10), encoding::RAW, &mut s);
            s
        }),
        ("unknown message", [handshake(10, 10), vec![77]].concat()),
        ("unknown encoding", {
            let mut s = handshake(10, 10);
            s.extend_from_slice(&[0, 0, 0, 1]);
            server::rect_header(Rect::new(0, 0, 1, 1), 12345, &mut s);
            s
        }),
        ("corrupt zlib", {
            let mut s = handshake(10, 10);
            s.extend_from_slice(&[0, 0, 0, 1]);
            server::rect_header(Rect::new(0, 0, 4, 4), encoding::ZRLE, &mut s);
            s.extend_from_slice(&6u32.to_be_bytes());
            s.extend_from_slice(&[0x78, 0x9c, 0xFF, 0xFF, 0xFF, 0xFF]);
            s
        }),
        ("zlib bomb", {
            use flate2::{Compress, Compression, FlushCompress};
            let mut z = Compress::new(Compression::new(9), true);
            let mut out = Vec::with_capacity(1 << 16);
            z.compress_vec(&vec![0u8; 1 << 20], &mut out, FlushCompress::Sync)
                .unwrap();
            let mut s = handshake(10, 10);
            s.extend_from_slice(&[0, 0, 0, 1]);
            server::rect_header(Rect::new(0, 0, 4, 4), encoding::ZRLE, &mut s);
            s.extend_from_slice(&(out.len() as u32).to_be_bytes());
            s.extend_from_slice(&out);
            s
        }),
        ("bad JPEG", {
            let mut s = handshake(10, 10);
            s.extend_from_slice(&[0, 0, 0, 1]);
            server::rect_header(Rect::new(0, 0, 4, 4), encoding::TIGHT, &mut s);
            s.extend_from_slice(&[0x90, 3, 1, 2, 3]);
            s
        }),
    ];
    for (what, bytes) in bad {
        let mut dec = Decoder::default();
        let err = dec.feed(&bytes, |_| {});
        assert!(err.is_err(), "{what}: {err:?}");
        assert_eq!(dec.poll(), Err(DecodeError::Failed), "{what}");
    }
    // Positive control: a well-formed stream of the same shape decodes.
    let mut dec = Decoder::default();
    let mut s = handshake(10, 10);
    s.extend_from_slice(&[0, 0, 0, 1]);
    server::rect_header(Rect::new(5, 5, 5, 5), encoding::RAW, &mut s);
    s.extend_from_slice(&[7; 100]);
    decode(&mut dec, &s);
    assert_eq!(dec.framebuffer().rgb(9, 9), (7, 7, 7));
}

#[test]
fn garbage_after_the_handshake_never_panics() {
    let mut seed = 0x1234_5678u32;
    for round in 0..300 {
        let mut s = handshake(32, 24);
        let len = (round * 7) % 400 + 1;
        for _ in 0..len {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            s.push(seed as u8);
        }
        // Nudge towards real messages: updates with plausible rectangles.
        if round % 2 == 0 {
            let at = handshake(32, 24).len();
            s[at] = 0;
        }
        let mut dec = Decoder::default();
        for piece in s.chunks(1 + round % 13) {
            if dec.feed(piece, |_| {}).is_err() {
                break;
            }
        }
    }
}
