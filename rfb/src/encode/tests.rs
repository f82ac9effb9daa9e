//! The encoder as the server uses it: the viewer's order decides the encoding, formats Tight
//! cannot carry fall back to Raw, scrolls become CopyRects, and no image or rectangle makes
//! it panic or produce a rectangle a viewer cannot parse.

#![allow(clippy::unwrap_used)] // Tests fail loudly on any unexpected error.

use super::*;
use crate::encode::testing::*;

#[test]
fn the_viewers_order_decides_the_encoding() {
    let pick = |list: &[i32]| Preferences::from_encodings(list).encoding;
    assert_eq!(
        pick(&[encoding::ZRLE, encoding::TIGHT, encoding::RAW]),
        encoding::ZRLE
    );
    assert_eq!(
        pick(&[encoding::HEXTILE, encoding::TIGHT, encoding::ZRLE]),
        encoding::TIGHT
    );
    assert_eq!(
        pick(&[encoding::HEXTILE, encoding::COPY_RECT]),
        encoding::RAW
    );
    assert_eq!(pick(&[]), encoding::RAW);

    let frame = Frame::new(30, 20, few);
    let image = frame.image();
    for (list, used) in [
        (vec![encoding::ZRLE, encoding::TIGHT], encoding::ZRLE),
        (vec![encoding::TIGHT, encoding::ZRLE], encoding::TIGHT),
        (vec![encoding::HEXTILE], encoding::RAW),
    ] {
        let mut enc = encoder(&list, PixelFormat::BGRX);
        let mut viewer = Viewer::new(PixelFormat::BGRX, 30, 20);
        check(
            &mut viewer,
            &send(&mut enc, &image, image.bounds()),
            &image,
            image.bounds(),
        );
        assert_eq!(viewer.encodings, [used]);
    }
}

#[test]
fn a_viewer_may_switch_encodings_without_losing_the_streams() {
    let frames: Vec<Frame> = (0..6u64).map(|i| Frame::new(70, 50, noise(i))).collect();
    let mut enc = encoder(&[encoding::ZRLE], RGB565_BE);
    let mut viewer = Viewer::new(RGB565_BE, 70, 50);
    let lists = [
        vec![encoding::ZRLE],
        vec![encoding::TIGHT],
        vec![encoding::ZRLE, -247],
        vec![encoding::TIGHT, -256],
        vec![encoding::RAW],
        vec![encoding::ZRLE],
    ];
    for (frame, list) in frames.iter().zip(lists) {
        enc.set_encodings(&list);
        let image = frame.image();
        check(
            &mut viewer,
            &send(&mut enc, &image, image.bounds()),
            &image,
            image.bounds(),
        );
    }
    // Plain pixels through stream 0 both times; the second may announce a reset of stream 0
    // if zlib could not change its level in place.
    assert_eq!(viewer.tight_controls.len(), 2);
    assert_eq!(viewer.tight_controls[0], 0x00);
    assert_eq!(viewer.tight_controls[1] & !0b1, 0x00);
}

#[test]
fn formats_tight_cannot_carry_get_raw() {
    let odd = PixelFormat {
        red_shift: 20,
        green_shift: 12,
        blue_shift: 4,
        ..PixelFormat::BGRX
    };
    let frame = Frame::new(40, 30, text);
    let image = frame.image();
    let mut enc = encoder(&[encoding::TIGHT, encoding::ZRLE], odd);
    let mut viewer = Viewer::new(odd, 40, 30);
    check(
        &mut viewer,
        &send(&mut enc, &image, image.bounds()),
        &image,
        image.bounds(),
    );
    assert_eq!(viewer.encodings, [encoding::RAW]);
}

#[test]
fn a_scroll_is_sent_as_a_copy_and_the_exposed_rows() {
    let doc = noise(11);
    let prev = Frame::new(90, 120, &doc);
    let cur = Frame::new(90, 120, |x, y| doc(x, y + 9));
    for list in [
        vec![encoding::TIGHT, encoding::COPY_RECT],
        vec![encoding::ZRLE, encoding::COPY_RECT],
    ] {
        let mut enc = encoder(&list, PixelFormat::BGRX);
        let mut viewer = Viewer::showing(PixelFormat::BGRX, &prev.image());
        let mut update = Update::new();
        let scroll = enc.encode_with_scroll(
            &prev.image(),
            &cur.image(),
            cur.image().bounds(),
            &mut update,
        );
        assert_eq!(scroll.map(|s| s.dy), Some(-9));
        let msg = update.finish();
        check(&mut viewer, &msg, &cur.image(), cur.image().bounds());
        assert_eq!(viewer.encodings[0], encoding::COPY_RECT);
        // The copy plus only the nine exposed rows: far less than the whole noisy frame.
        assert!(msg.len() < 90 * 12 * 4, "{} bytes", msg.len());
    }
    // Without CopyRect in the viewer's list: the whole rectangle, encoded.
    let mut enc = encoder(&[encoding::ZRLE], PixelFormat::BGRX);
    let mut viewer = Viewer::showing(PixelFormat::BGRX, &prev.image());
    let mut update = Update::new();
    let bounds = cur.image().bounds();
    assert_eq!(
        enc.encode_with_scroll(&prev.image(), &cur.image(), bounds, &mut update),
        None
    );
    check(&mut viewer, &update.finish(), &cur.image(), bounds);
    assert_eq!(viewer.encodings, [encoding::ZRLE]);
    // After a resize there is nothing to copy from.
    let small = Frame::new(90, 60, &doc);
    let mut enc = encoder(&[encoding::ZRLE, encoding::COPY_RECT], PixelFormat::BGRX);
    let mut update = Update::new();
    assert_eq!(
        enc.encode_with_scroll(&small.image(), &cur.image(), bounds, &mut update),
        None
    );
}

#[test]
fn no_image_or_rectangle_breaks_the_stream() {
    let frame = Frame::new(50, 40, gradient);
    let broken = [
        // Data shorter than the rows claim.
        Image {
            data: &frame.data[..1000],
            ..frame.image()
        },
        // A stride shorter than a row.
        Image {
            stride: 3,
            ..frame.image()
        },
        // A stride so large any offset overflows.
        Image {
            stride: usize::MAX / 2,
            ..frame.image()
        },
        // No data at all.
        Image {
            data: &[],
            ..frame.image()
        },
    ];
    let rects = [
        Rect::new(0, 0, 50, 40),
        Rect::new(45, 35, 1000, 1000),
        Rect::new(60, 0, 10, 10),
        Rect::new(0, 0, 0, 0),
        Rect::new(u16::MAX, u16::MAX, u16::MAX, u16::MAX),
    ];
    for list in [
        vec![encoding::RAW],
        vec![encoding::ZRLE],
        vec![encoding::TIGHT],
        vec![encoding::TIGHT, -23],
    ] {
        for format in [PixelFormat::BGRX, RGB565_BE, BGR233] {
            let mut enc = encoder(&list, format);
            let mut viewer = Viewer::new(format, 50, 40);
            for image in &broken {
                for rect in rects {
                    let mut update = Update::new();
                    enc.encode(image, rect, &mut update);
                    enc.encode_with_scroll(image, image, rect, &mut update);
                    viewer.apply(&update.finish()).unwrap();
                }
            }
            // And the stream is still good for a proper image afterwards (few colours: exact
            // even where JPEG is allowed).
            let good = Frame::new(50, 40, few);
            let image = good.image();
            check(
                &mut viewer,
                &send(&mut enc, &image, image.bounds()),
                &image,
                image.bounds(),
            );
        }
    }
}

#[test]
fn random_images_rectangles_formats_and_encodings_always_decode() {
    let formats = [PixelFormat::BGRX, RGB565_BE, RGBX_BE, XRGB_BE, BGR233];
    let lists: [&[i32]; 5] = [
        &[encoding::RAW],
        &[encoding::ZRLE],
        &[encoding::TIGHT],
        &[encoding::TIGHT, -23, -256],
        &[encoding::ZRLE, encoding::TIGHT, -249],
    ];
    let mut seed = 0x5EED_u64;
    let mut next = |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n.max(1)
    };
    for round in 0..120 {
        let format = formats[next(5) as usize];
        let list = lists[next(5) as usize];
        let (w, h) = (1 + next(150) as u16, 1 + next(90) as u16);
        let picture: Picture = match next(4) {
            0 => Box::new(text),
            1 => Box::new(few),
            2 => Box::new(gradient),
            _ => Box::new(noise(round)),
        };
        let frame = Frame::new(w, h, picture);
        let valid = next(3) != 0;
        let image = if valid {
            frame.image()
        } else {
            Image {
                stride: next(8 * u64::from(w)) as usize,
                data: &frame.data[..next(frame.data.len() as u64) as usize],
                ..frame.image()
            }
        };
        let mut enc = encoder(list, format);
        let mut viewer = Viewer::new(format, w, h);
        for _ in 0..3 {
            let rect = Rect::new(
                next(u64::from(w) + 20) as u16,
                next(u64::from(h) + 20) as u16,
                next(200) as u16,
                next(120) as u16,
            );
            let msg = send(&mut enc, &image, rect);
            let lossy = list.contains(&-23) && format.bits_per_pixel >= 16;
            if valid && !lossy {
                check(&mut viewer, &msg, &image, rect);
            } else {
                viewer.apply(&msg).unwrap();
            }
        }
    }
}

/// A full-screen terminal `w`×`h` showing lines `first..` of a log, 13 rows per line, each
/// line as long as its number says (so every tile row of a change has its own span).
fn terminal(w: u16, h: u16, first: u16) -> Frame {
    Frame::new(w, h, move |x, y| {
        let line = first + y / 13;
        let len = 40 + (u32::from(line) * 37 % 200) as u16;
        let (column, row) = (u32::from(x / 6), u32::from(y % 13));
        let v = (column.wrapping_mul(2_654_435_761) ^ u32::from(line).wrapping_mul(40_503) ^ row)
            .wrapping_mul(2_246_822_519);
        let glyph = (v >> 29) != 0 && row < 10 && x % 6 < 5;
        if x < len && glyph {
            (200, 200, 200)
        } else {
            (0, 0, 0)
        }
    })
}

/// Tile rectangles (64×64) of `image` that differ between the two frames, joined along each
/// tile row: what the agent's damage tracking hands the encoder.
fn dirty_rows(prev: &Image<'_>, cur: &Image<'_>) -> Vec<Rect> {
    let mut rects = Vec::new();
    for ty in (0..cur.height).step_by(64) {
        let mut span: Option<Rect> = None;
        for tx in (0..cur.width).step_by(64) {
            let tile = Rect::new(tx, ty, 64, 64).intersect(&cur.bounds());
            if copy::changed_bounds(prev, cur, tile).is_some() {
                span = Some(span.map_or(tile, |s| s.union(&tile)));
            }
        }
        rects.extend(span);
    }
    rects
}

#[test]
fn a_terminal_scrolling_the_whole_screen_is_one_copy_and_its_new_line() {
    let (w, h) = (640, 390);
    for (list, name) in [
        (&[encoding::COPY_RECT, encoding::ZRLE][..], "ZRLE"),
        (&[encoding::COPY_RECT, encoding::TIGHT, -26][..], "Tight"),
    ] {
        let prev = terminal(w, h, 0);
        let cur = terminal(w, h, 1);
        let (p, c) = (prev.image(), cur.image());
        let rects = dirty_rows(&p, &c);
        assert!(rects.len() > 4, "{name}: {} dirty rows", rects.len());
        let mut enc = encoder(list, PixelFormat::BGRX);
        let mut viewer = Viewer::showing(PixelFormat::BGRX, &p);
        let mut update = Update::new();
        enc.encode_changes(&p, &c, &rects, &mut update);
        viewer.apply(&update.finish()).unwrap();
        assert_eq!(
            viewer.fb,
            expected(&c, c.bounds(), &PixelFormat::BGRX),
            "{name}"
        );
        // One copy of everything but the last line, then only that line's changed pixels.
        assert_eq!(viewer.encodings[0], encoding::COPY_RECT, "{name}");
        let copy = viewer.rects[0];
        assert!(copy.y == 0 && copy.height >= h - 2 * 13, "{name}: {copy:?}");
        let sent: usize = viewer.rects[1..].iter().map(Rect::area).sum();
        assert!(
            sent <= usize::from(w) * 13,
            "{name}: {sent} pixels besides the copy"
        );
        // Without CopyRect the same change is sent as pixels, cut to what changed.
        let mut enc = encoder(&list[1..], PixelFormat::BGRX);
        let mut viewer = Viewer::showing(PixelFormat::BGRX, &p);
        let mut update = Update::new();
        enc.encode_changes(&p, &c, &rects, &mut update);
        viewer.apply(&update.finish()).unwrap();
        assert_eq!(
            viewer.fb,
            expected(&c, c.bounds(), &PixelFormat::BGRX),
            "{name}"
        );
        assert!(!viewer.encodings.contains(&encoding::COPY_RECT), "{name}");
    }
}

#[test]
fn a_change_is_sent_as_the_bounds_of_its_changed_pixels() {
    let prev = Frame::new(200, 150, text);
    // One character cell (6×13 at 70,40) repainted, inside a 64×64 tile the damage reports.
    let cur = Frame::new(200, 150, |x, y| {
        if (70..76).contains(&x) && (40..53).contains(&y) {
            (255, 0, 0)
        } else {
            text(x, y)
        }
    });
    let (p, c) = (prev.image(), cur.image());
    for list in [&[encoding::ZRLE][..], &[encoding::TIGHT], &[encoding::RAW]] {
        let mut enc = encoder(list, PixelFormat::BGRX);
        let mut viewer = Viewer::showing(PixelFormat::BGRX, &p);
        let mut update = Update::new();
        let tiles = [Rect::new(64, 0, 64, 64), Rect::new(0, 64, 200, 64)];
        enc.encode_changes(&p, &c, &tiles, &mut update);
        viewer.apply(&update.finish()).unwrap();
        assert_eq!(viewer.fb, expected(&c, c.bounds(), &PixelFormat::BGRX));
        // The red cell's pixels that differ from the text under it: within the cell.
        assert_eq!(viewer.rects.len(), 1, "{list:?}: {:?}", viewer.rects);
        let r = viewer.rects[0];
        assert!(
            r.x >= 70 && r.y >= 40 && r.x + r.width <= 76 && r.y + r.height <= 53,
            "{r:?}"
        );
        // Nothing changed: nothing is sent.
        let mut update = Update::new();
        enc.encode_changes(&c, &c, &tiles, &mut update);
        assert_eq!(update.rects(), 0);
    }
    // Frames of another size are sent whole.
    let small = Frame::new(100, 100, text);
    let mut enc = encoder(&[encoding::ZRLE], PixelFormat::BGRX);
    let mut viewer = Viewer::new(PixelFormat::BGRX, 200, 150);
    let mut update = Update::new();
    enc.encode_changes(&small.image(), &c, &[c.bounds()], &mut update);
    viewer.apply(&update.finish()).unwrap();
    assert_eq!(viewer.fb, expected(&c, c.bounds(), &PixelFormat::BGRX));
}
