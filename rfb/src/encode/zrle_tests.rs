//! ZRLE: every kind of picture, size and pixel format decodes back to the source pixels,
//! each tile takes the subencoding that suits it, and the zlib stream spans the connection.

#![allow(clippy::unwrap_used)] // Tests fail loudly on any unexpected error.

use super::*;
use crate::client::PixelFormat;
use crate::encode::testing::*;
use crate::server::Update;

const FORMATS: [PixelFormat; 5] = [PixelFormat::BGRX, RGB565_BE, RGBX_BE, XRGB_BE, BGR233];

fn pictures() -> Vec<(&'static str, Picture)> {
    vec![
        ("solid", Box::new(|_, _| (10, 200, 30))),
        ("text", Box::new(text)),
        ("few", Box::new(few)),
        ("gradient", Box::new(gradient)),
        ("noise", Box::new(noise(7))),
    ]
}

#[test]
fn every_picture_size_and_format_decodes_to_the_source() {
    for format in FORMATS {
        for (w, h) in [(1, 1), (65, 3), (2049, 2), (130, 70)] {
            for (name, f) in pictures() {
                let frame = Frame::new(w, h, f);
                let image = frame.image();
                let mut enc = encoder(&[encoding::ZRLE], format);
                let mut viewer = Viewer::new(format, w, h);
                let msg = send(&mut enc, &image, image.bounds());
                viewer.apply(&msg).unwrap();
                assert_eq!(
                    viewer.fb,
                    expected(&image, image.bounds(), &format),
                    "{name} {w}x{h} {format:?}"
                );
                assert_eq!(viewer.encodings, [encoding::ZRLE]);
            }
        }
    }
}

#[test]
fn partial_rectangles_land_where_they_belong() {
    let frame = Frame::new(200, 150, few);
    let image = frame.image();
    let mut enc = encoder(&[encoding::ZRLE], PixelFormat::BGRX);
    let mut viewer = Viewer::new(PixelFormat::BGRX, 200, 150);
    for rect in [
        Rect::new(3, 5, 70, 65),
        Rect::new(130, 140, 100, 100), // clipped to the image
        Rect::new(199, 0, 1, 150),
    ] {
        let msg = send(&mut enc, &image, rect);
        check(&mut viewer, &msg, &image, rect);
    }
    // Untouched pixels are still black.
    assert_eq!(viewer.pixels(Rect::new(0, 0, 3, 5)), vec![0; 15]);
}

#[test]
fn updates_in_a_row_share_one_zlib_stream() {
    let frames: Vec<Frame> = (0..4u64).map(|i| Frame::new(90, 40, noise(i))).collect();
    let mut enc = encoder(&[encoding::ZRLE], RGB565_BE);
    let mut viewer = Viewer::new(RGB565_BE, 90, 40);
    let mut messages = Vec::new();
    for (i, frame) in frames.iter().enumerate() {
        let image = frame.image();
        // Another SetEncodings mid-connection, with a new level, must not reset the stream.
        if i == 2 {
            enc.set_encodings(&[encoding::ZRLE, -255]);
        }
        let rect = Rect::new(i as u16 * 7, 0, 60, 40);
        let msg = send(&mut enc, &image, rect);
        check(&mut viewer, &msg, &image, rect);
        messages.push(msg);
    }
    // A viewer that joins the stream late cannot follow: the rectangles really depend on the
    // stream's history (no reset, no fresh zlib header).
    let mut late = Viewer::new(RGB565_BE, 90, 40);
    assert!(late.apply(&messages[1]).is_err());
}

/// The subencoding byte and the rest of a single tile's uncompressed bytes.
fn tile_bytes(f: impl Fn(u16, u16) -> (u8, u8, u8), w: u16, h: u16) -> Vec<u8> {
    let frame = Frame::new(w, h, f);
    let image = frame.image();
    let lut = Lut::new(&PixelFormat::BGRX);
    let mut pixels = Vec::new();
    lut.pixels(&image, image.bounds(), &mut pixels);
    let mut out = Vec::new();
    let packing = Packing::cpixel(&PixelFormat::BGRX);
    write_tile(
        &pixels,
        usize::from(w),
        usize::from(h),
        packing,
        &mut Palette::default(),
        &mut out,
    );
    out
}

#[test]
fn each_tile_takes_the_subencoding_that_suits_it() {
    // One colour: solid, the colour as a 3-byte CPIXEL.
    assert_eq!(tile_bytes(|_, _| (1, 2, 3), 64, 64), [1, 3, 2, 1]);
    // A fine checkerboard of two colours: packed, one bit per pixel.
    let checker = tile_bytes(
        |x, y| {
            if (x + y) % 2 == 0 {
                (0, 0, 0)
            } else {
                (9, 9, 9)
            }
        },
        16,
        4,
    );
    assert_eq!(checker[0], 2);
    assert_eq!(checker.len(), 1 + 2 * 3 + 4 * 2);
    assert_eq!(checker[7], 0b0101_0101);
    // Two colours in eight runs of 512: palette RLE, lengths continued by 255s (511 = 255 +
    // 255 + 1).
    let stripes = tile_bytes(
        |_, y| if y / 8 % 2 == 0 { (0, 0, 0) } else { (9, 9, 9) },
        64,
        64,
    );
    assert_eq!(stripes[0], 128 + 2);
    assert_eq!(stripes.len(), 1 + 2 * 3 + 8 * (1 + 3));
    assert_eq!(&stripes[7..11], &[0x80, 255, 255, 1]);
    // A colour per row: 64 colours in 64 runs, cheaper as plain RLE than with a palette.
    let bands = tile_bytes(|_, y| (y as u8 * 4, y as u8, 0), 64, 64);
    assert_eq!(bands[0], 128);
    // Noise: raw.
    assert_eq!(tile_bytes(noise(3), 64, 64)[0], 0);
    // Twelve colours in short runs: a 4-bit packed palette.
    assert_eq!(tile_bytes(|x, y| few(x * 5, y * 4), 12, 12)[0], 12);
}

#[test]
fn compressed_pixels_use_the_three_bytes_that_carry_colour() {
    assert_eq!(
        Packing::cpixel(&PixelFormat::BGRX),
        Packing::Low3 { big_endian: false }
    );
    assert_eq!(
        Packing::cpixel(&RGBX_BE),
        Packing::High3 { big_endian: true }
    );
    assert_eq!(
        Packing::cpixel(&XRGB_BE),
        Packing::Low3 { big_endian: true }
    );
    let depth32 = PixelFormat {
        depth: 32,
        ..PixelFormat::BGRX
    };
    assert_eq!(Packing::cpixel(&depth32).len(), 4);
    assert_eq!(Packing::cpixel(&RGB565_BE).len(), 2);
    let mut out = Vec::new();
    Packing::cpixel(&RGBX_BE).put(RGBX_BE.pixel(1, 2, 3), &mut out);
    Packing::cpixel(&XRGB_BE).put(XRGB_BE.pixel(1, 2, 3), &mut out);
    assert_eq!(out, [1, 2, 3, 1, 2, 3]);

    // And a 32-bit depth-32 viewer still decodes (whole pixels).
    let frame = Frame::new(70, 10, gradient);
    let image = frame.image();
    let mut enc = encoder(&[encoding::ZRLE], depth32);
    let mut viewer = Viewer::new(depth32, 70, 10);
    check(
        &mut viewer,
        &send(&mut enc, &image, image.bounds()),
        &image,
        image.bounds(),
    );
}

#[test]
fn a_short_image_buffer_still_yields_a_well_formed_rectangle() {
    let frame = Frame::new(100, 100, text);
    let image = Image {
        data: &frame.data[..frame.data.len() / 2],
        ..frame.image()
    };
    let mut enc = encoder(&[encoding::ZRLE], PixelFormat::BGRX);
    let mut viewer = Viewer::new(PixelFormat::BGRX, 100, 100);
    let mut update = Update::new();
    enc.encode(&image, image.bounds(), &mut update);
    viewer.apply(&update.finish()).unwrap();
    // The rows the buffer holds arrive; the rest are black.
    assert_eq!(
        viewer.pixels(Rect::new(0, 0, 100, 50)),
        expected(&frame.image(), Rect::new(0, 0, 100, 50), &PixelFormat::BGRX)
    );
    assert_eq!(viewer.pixels(Rect::new(0, 50, 100, 50)), vec![0; 5000]);
}
