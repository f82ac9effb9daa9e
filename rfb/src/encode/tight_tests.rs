//! Tight: fill, mono and indexed palettes, plain pixels and JPEG each decode back to the
//! source, rectangles are cut to the sizes viewers accept, and the four zlib streams last
//! as long as the connection unless a reset is announced.

#![allow(clippy::unwrap_used)] // Tests fail loudly on any unexpected error.

use super::*;
use crate::encode::testing::*;

/// JPEG quality level 9 and 4 (pseudo-encodings −23 and −28).
const JPEG_9: i32 = -23;
const JPEG_4: i32 = -28;

fn encode_all(format: PixelFormat, encodings: &[i32], frame: &Frame) -> (Viewer, Vec<u8>) {
    let image = frame.image();
    let mut enc = encoder(encodings, format);
    let mut viewer = Viewer::new(format, frame.width, frame.height);
    let msg = send(&mut enc, &image, image.bounds());
    viewer.apply(&msg).unwrap();
    let controls = viewer.tight_controls.clone();
    (viewer, controls)
}

#[test]
fn each_kind_of_picture_takes_its_compression_and_decodes_exactly() {
    let cases: [(&str, Picture, u8); 5] = [
        ("solid", Box::new(|_, _| (10, 200, 30)), FILL),
        ("text", Box::new(text), 0x10 | EXPLICIT_FILTER),
        ("few", Box::new(few), 0x20 | EXPLICIT_FILTER),
        ("gradient", Box::new(gradient), 0x00),
        ("noise", Box::new(noise(5)), 0x00),
    ];
    for format in [PixelFormat::BGRX, RGB565_BE, RGBX_BE, XRGB_BE, BGR233] {
        for (name, f, control) in &cases {
            let frame = Frame::new(120, 90, f);
            let (viewer, controls) = encode_all(format, &[encoding::TIGHT], &frame);
            let image = frame.image();
            assert_eq!(
                viewer.fb,
                expected(&image, image.bounds(), &format),
                "{name} {format:?}"
            );
            // 8-bit gradients have few enough colours for a palette.
            if format != BGR233 || *control != 0 {
                assert_eq!(controls, [*control], "{name} {format:?}");
            }
        }
    }
}

#[test]
fn odd_sizes_and_partial_rectangles_decode_exactly() {
    for (w, h) in [(1, 1), (65, 3), (2049, 2), (3, 2100)] {
        for f in [text, few, gradient] {
            let frame = Frame::new(w, h, f);
            let image = frame.image();
            let mut enc = encoder(&[encoding::TIGHT], PixelFormat::BGRX);
            let mut viewer = Viewer::new(PixelFormat::BGRX, w, h);
            check(
                &mut viewer,
                &send(&mut enc, &image, image.bounds()),
                &image,
                image.bounds(),
            );
        }
    }
    let frame = Frame::new(300, 200, noise(1));
    let image = frame.image();
    let mut enc = encoder(&[encoding::TIGHT], RGB565_BE);
    let mut viewer = Viewer::new(RGB565_BE, 300, 200);
    for rect in [Rect::new(5, 7, 33, 44), Rect::new(250, 150, 100, 100)] {
        check(&mut viewer, &send(&mut enc, &image, rect), &image, rect);
    }
}

#[test]
fn rectangles_are_cut_to_2048_columns_and_65536_pixels() {
    let frame = Frame::new(2049, 2, gradient);
    let (viewer, _) = encode_all(PixelFormat::BGRX, &[encoding::TIGHT], &frame);
    assert_eq!(viewer.encodings.len(), 2);

    // 300×300 = 90000 pixels: 218 rows, then the remaining 82.
    let parts: Vec<Rect> = split(Rect::new(10, 20, 300, 300)).collect();
    assert_eq!(
        parts,
        [Rect::new(10, 20, 300, 218), Rect::new(10, 238, 300, 82)]
    );
    let parts: Vec<Rect> = split(Rect::new(0, 0, 4100, 40)).collect();
    assert_eq!(parts.len(), 6);
    assert!(
        parts
            .iter()
            .all(|r| r.width <= MAX_WIDTH && r.area() <= MAX_AREA)
    );
    assert_eq!(parts.iter().map(Rect::area).sum::<usize>(), 4100 * 40);
    // The viewer model refuses larger rectangles, so decoding a big update checks them all.
    let frame = Frame::new(2500, 100, few);
    let (viewer, _) = encode_all(RGB565_BE, &[encoding::TIGHT], &frame);
    assert_eq!(
        viewer.fb,
        expected(&frame.image(), frame.image().bounds(), &RGB565_BE)
    );
}

#[test]
fn jpeg_is_used_for_many_colours_only_when_the_viewer_allows_it() {
    let frame = Frame::new(160, 96, gradient);
    let image = frame.image();
    for (level, min_psnr) in [(JPEG_9, 40.0), (JPEG_4, 28.0)] {
        let (viewer, controls) = encode_all(PixelFormat::BGRX, &[encoding::TIGHT, level], &frame);
        assert_eq!(controls, [JPEG]);
        let shown: Vec<u8> = viewer
            .fb
            .iter()
            .flat_map(|p| [(p >> 16) as u8, (p >> 8) as u8, *p as u8])
            .collect();
        let source: Vec<u8> = (0..96)
            .flat_map(|y| (0..160).map(move |x| (x, y)))
            .flat_map(|(x, y)| {
                let (r, g, b) = image.rgb(x, y);
                [r, g, b]
            })
            .collect();
        let quality = psnr(&shown, &source);
        assert!(quality > min_psnr, "PSNR {quality} at {level}");
    }
    // Without a quality level: lossless.
    let (_, controls) = encode_all(PixelFormat::BGRX, &[encoding::TIGHT], &frame);
    assert_eq!(controls, [0x00]);
    // 8-bit viewers never get JPEG; few colours never do either.
    let (_, controls) = encode_all(
        BGR233,
        &[encoding::TIGHT, JPEG_9],
        &Frame::new(160, 96, noise(2)),
    );
    assert!(controls.iter().all(|c| c & 0xF0 != JPEG));
    let (_, controls) = encode_all(
        PixelFormat::BGRX,
        &[encoding::TIGHT, JPEG_9],
        &Frame::new(160, 96, text),
    );
    assert_eq!(controls, [0x10 | EXPLICIT_FILTER]);
    // 16-bit viewers may, and get the decoded colours in their own format.
    let (viewer, controls) = encode_all(RGB565_BE, &[encoding::TIGHT, JPEG_9], &frame);
    assert_eq!(controls, [JPEG]);
    let close = viewer
        .fb
        .iter()
        .zip(expected(&image, image.bounds(), &RGB565_BE))
        .filter(|(a, b)| {
            let d = |p: u32, shift: u32, mask: u32| ((p >> shift) & mask) as i32;
            let (a, b) = (**a, *b);
            (d(a, 11, 31) - d(b, 11, 31)).abs() <= 1 && (d(a, 5, 63) - d(b, 5, 63)).abs() <= 2
        })
        .count();
    assert!(close * 10 >= viewer.fb.len() * 9, "{close} close pixels");
}

#[test]
fn updates_in_a_row_share_the_streams_and_resets_are_announced() {
    let frames: Vec<Frame> = [text, text, few, gradient, text]
        .into_iter()
        .map(|f| Frame::new(100, 60, f))
        .collect();
    let mut enc = encoder(&[encoding::TIGHT], PixelFormat::BGRX);
    let mut viewer = Viewer::new(PixelFormat::BGRX, 100, 60);
    let mut messages = Vec::new();
    for (i, frame) in frames.iter().enumerate() {
        if i == 1 {
            // The same list again changes nothing.
            enc.set_encodings(&[encoding::TIGHT]);
        }
        if i == 3 {
            // A new compression level mid-connection: in place where zlib can, else the
            // streams already used start afresh, announced with the next rectangle.
            enc.set_encodings(&[encoding::TIGHT, -255]);
        }
        let image = frame.image();
        let msg = send(&mut enc, &image, image.bounds());
        check(&mut viewer, &msg, &image, image.bounds());
        messages.push(msg);
    }
    let c = &viewer.tight_controls;
    assert!(c[..3].iter().chain(&c[4..]).all(|c| c & 0x0F == 0), "{c:?}");
    assert_eq!(c[3] & 0x0F & !0b0110, 0, "{c:?}");
    // The second mono rectangle needs the first one's dictionary.
    let mut late = Viewer::new(PixelFormat::BGRX, 100, 60);
    assert!(late.apply(&messages[1]).is_err());

    // A stream our side had to drop is announced in the next rectangle, whatever its kind,
    // and both sides start it afresh.
    let tight = enc.tight.as_mut().unwrap();
    tight.streams[STREAM_MONO] = None;
    tight.reset |= 1 << STREAM_MONO;
    let solid = Frame::new(100, 60, |_, _| (1, 2, 3));
    let msg = send(&mut enc, &solid.image(), solid.image().bounds());
    check(&mut viewer, &msg, &solid.image(), solid.image().bounds());
    assert_eq!(viewer.tight_controls.last(), Some(&(FILL | 0b10)));
    let msg = send(&mut enc, &frames[0].image(), frames[0].image().bounds());
    check(
        &mut viewer,
        &msg,
        &frames[0].image(),
        frames[0].image().bounds(),
    );
    assert_eq!(
        viewer.tight_controls.last(),
        Some(&(0x10 | EXPLICIT_FILTER))
    );
}

#[test]
fn short_data_is_sent_without_zlib() {
    // 2 colours, 8×4: four bytes of bitmap, under the 12 that are worth compressing.
    let frame = Frame::new(
        8,
        4,
        |x, y| if x == y { (0, 0, 0) } else { (255, 255, 255) },
    );
    let image = frame.image();
    let mut enc = encoder(&[encoding::TIGHT], PixelFormat::BGRX);
    let msg = send(&mut enc, &image, image.bounds());
    // Header, control, filter, palette size, two TPIXELs, four bitmap bytes.
    assert_eq!(msg.len(), 4 + 12 + 3 + 6 + 4);
    assert_eq!(
        &msg[msg.len() - 4..],
        &[0b0111_1111, 0b1011_1111, 0b1101_1111, 0b1110_1111]
    );
    let mut viewer = Viewer::new(PixelFormat::BGRX, 8, 4);
    check(&mut viewer, &msg, &image, image.bounds());
}

#[test]
fn compact_lengths_take_one_to_three_bytes() {
    let enc = |n| {
        let mut out = Vec::new();
        compact_length(n, &mut out);
        out
    };
    assert_eq!(enc(0), [0]);
    assert_eq!(enc(127), [0x7F]);
    assert_eq!(enc(128), [0x80, 0x01]);
    assert_eq!(enc(10000), [0x90, 0x4E]);
    assert_eq!(enc(16383), [0xFF, 0x7F]);
    assert_eq!(enc(16384), [0x80, 0x80, 0x01]);
    assert_eq!(enc(MAX_LENGTH), [0xFF, 0xFF, 0xFF]);
}

#[test]
fn tight_pixels_are_red_green_blue_for_24_bit_colour() {
    assert_eq!(
        Packing::tpixel(&PixelFormat::BGRX),
        Some(Packing::Rgb { shifts: [16, 8, 0] })
    );
    let mut out = Vec::new();
    for format in [PixelFormat::BGRX, RGBX_BE, XRGB_BE] {
        Packing::tpixel(&format)
            .unwrap()
            .put(format.pixel(1, 2, 3), &mut out);
    }
    assert_eq!(out, [1, 2, 3, 1, 2, 3, 1, 2, 3]);
    assert_eq!(Packing::tpixel(&RGB565_BE).map(Packing::len), Some(2));
    // Channels off byte boundaries: viewers disagree on TPIXEL's size, so no Tight at all.
    let odd = PixelFormat {
        red_shift: 20,
        green_shift: 12,
        blue_shift: 4,
        ..PixelFormat::BGRX
    };
    assert_eq!(Packing::tpixel(&odd), None);
}

#[test]
fn a_screen_of_windows_is_cut_by_content_so_only_its_picture_is_jpeg() {
    // A solid background, a window of text and a photo-like block of noise beside it.
    let photo = noise(11);
    let (w, h) = (768, 384);
    let in_photo = |x: u16, y: u16| (400..600).contains(&x) && (60..260).contains(&y);
    let frame = Frame::new(w, h, |x, y| {
        if in_photo(x, y) {
            photo(x, y)
        } else if (20..360).contains(&x) && (30..300).contains(&y) {
            text(x, y)
        } else {
            (46, 92, 138)
        }
    });
    let image = frame.image();
    let (viewer, controls) = encode_all(PixelFormat::BGRX, &[encoding::TIGHT, JPEG_4], &frame);
    // Everything but the photo's cells arrives exactly: only those cells were JPEG.
    let exact = expected(&image, image.bounds(), &PixelFormat::BGRX);
    for y in 0..h {
        for x in 0..w {
            let (cx, cy) = (x / 64 * 64, y / 64 * 64);
            let cell_of_photo = cx < 600 && cx + 64 > 400 && cy < 260 && cy + 64 > 60;
            let i = usize::from(y) * usize::from(w) + usize::from(x);
            if !cell_of_photo {
                assert_eq!(viewer.fb[i], exact[i], "({x}, {y})");
            }
        }
    }
    // The photo's three middle bands of cells have the same columns and stack into one
    // 256×192 JPEG; its first and last bands hold four rows of it, so their outer cells are
    // palettes and their JPEGs narrower: three in all, not one per band.
    assert_eq!(
        controls.iter().filter(|&&c| c == JPEG).count(),
        3,
        "{controls:x?}"
    );
    assert!(controls.contains(&FILL));
    assert!(
        controls.contains(&(0x10 | EXPLICIT_FILTER)),
        "{controls:x?}"
    );
    // Small rectangles are not cut: one rectangle, one compression.
    let (_, controls) = encode_all(
        PixelFormat::BGRX,
        &[encoding::TIGHT, JPEG_4],
        &Frame::new(100, 100, gradient),
    );
    assert_eq!(controls, [JPEG]);
}
