//! For the tests: pixel formats, pictures, the pixels a viewer should end up with, and the
//! round trip from encoder to [`super::testing::Viewer`].

#![allow(clippy::unwrap_used)] // Test helpers fail loudly.

use super::testing::Viewer;
use crate::client::PixelFormat;
use crate::server::{Image, Rect};

/// RGB565, big-endian.
pub(crate) const RGB565_BE: PixelFormat = PixelFormat {
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

/// 32-bit big-endian, red in the high byte: `R G B X` in memory, colour in the high 3 bytes.
pub(crate) const RGBX_BE: PixelFormat = PixelFormat {
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

/// 32-bit big-endian with the colour in the low 3 bytes.
pub(crate) const XRGB_BE: PixelFormat = PixelFormat {
    big_endian: true,
    ..PixelFormat::BGRX
};

/// 8-bit BGR233.
pub(crate) const BGR233: PixelFormat = PixelFormat {
    bits_per_pixel: 8,
    depth: 8,
    big_endian: false,
    true_colour: true,
    red_max: 7,
    green_max: 7,
    blue_max: 3,
    red_shift: 0,
    green_shift: 3,
    blue_shift: 6,
};

/// A picture: the colour at (x, y).
pub(crate) type Picture = Box<dyn Fn(u16, u16) -> (u8, u8, u8)>;

/// A picture owned by a test.
#[derive(Clone)]
pub(crate) struct Frame {
    pub(crate) width: u16,
    pub(crate) height: u16,
    pub(crate) data: Vec<u8>,
}

impl Frame {
    /// `width`×`height` pixels coloured by `f(x, y) -> (r, g, b)`.
    pub(crate) fn new(width: u16, height: u16, f: impl Fn(u16, u16) -> (u8, u8, u8)) -> Self {
        let mut data = Vec::with_capacity(4 * usize::from(width) * usize::from(height));
        for y in 0..height {
            for x in 0..width {
                let (r, g, b) = f(x, y);
                // The padding byte varies, as some captures leave it: encoders must ignore it.
                data.extend_from_slice(&[b, g, r, (x ^ y) as u8]);
            }
        }
        Self {
            width,
            height,
            data,
        }
    }

    pub(crate) fn image(&self) -> Image<'_> {
        Image {
            width: self.width,
            height: self.height,
            stride: 4 * usize::from(self.width),
            data: &self.data,
        }
    }
}

/// A deterministic pseudo-random byte stream.
pub(crate) fn noise(seed: u64) -> impl Fn(u16, u16) -> (u8, u8, u8) {
    move |x, y| {
        let mut v = seed ^ (u64::from(x) << 32) ^ u64::from(y).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        v ^= v >> 33;
        v = v.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
        v ^= v >> 33;
        v = v.wrapping_mul(0xC4CE_B9FE_1A85_EC53);
        v ^= v >> 33;
        let [r, g, b, ..] = v.to_le_bytes();
        (r, g, b)
    }
}

/// Dark text-like strokes on a light background: two colours.
pub(crate) fn text(x: u16, y: u16) -> (u8, u8, u8) {
    if (x / 3 + y / 5).is_multiple_of(4) || (x % 7 == 2 && y % 11 < 8) {
        (20, 20, 30)
    } else {
        (250, 250, 245)
    }
}

/// Twelve colours in blocks and stripes.
pub(crate) fn few(x: u16, y: u16) -> (u8, u8, u8) {
    let i = ((x / 5) + 3 * (y / 4)) % 12;
    [
        (0, 0, 0),
        (255, 255, 255),
        (255, 0, 0),
        (0, 255, 0),
        (0, 0, 255),
        (128, 128, 0),
        (0, 128, 128),
        (128, 0, 128),
        (200, 100, 50),
        (50, 100, 200),
        (10, 20, 30),
        (240, 230, 220),
    ][usize::from(i)]
}

/// A smooth gradient: thousands of colours.
pub(crate) fn gradient(x: u16, y: u16) -> (u8, u8, u8) {
    (x as u8, y as u8, (x / 2 + y / 3) as u8)
}

/// The pixel values a viewer in `format` should hold for `rect` of `image`.
pub(crate) fn expected(image: &Image<'_>, rect: Rect, format: &PixelFormat) -> Vec<u32> {
    let mut out = Vec::new();
    for y in rect.y..rect.y + rect.height {
        for x in rect.x..rect.x + rect.width {
            let (r, g, b) = image.rgb(x, y);
            out.push(format.pixel(r, g, b));
        }
    }
    out
}

/// Peak signal-to-noise ratio in dB between 8-bit channel values.
pub(crate) fn psnr(a: &[u8], b: &[u8]) -> f64 {
    let se: f64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| (f64::from(x) - f64::from(y)).powi(2))
        .sum();
    let mse = se / a.len().max(1) as f64;
    if mse == 0.0 {
        return f64::INFINITY;
    }
    10.0 * (255.0f64 * 255.0 / mse).log10()
}

/// An encoder for a viewer that sent `encodings` and `format`.
pub(crate) fn encoder(encodings: &[i32], format: PixelFormat) -> super::Encoder {
    let mut enc = super::Encoder::new();
    enc.set_format(format).unwrap();
    enc.set_encodings(encodings);
    enc
}

/// One update holding `rect` of `image`.
pub(crate) fn send(enc: &mut super::Encoder, image: &Image<'_>, rect: Rect) -> Vec<u8> {
    let mut update = crate::server::Update::new();
    enc.encode(image, rect, &mut update);
    update.finish()
}

/// Decodes `msg` and checks the viewer now shows `rect` of `image` exactly.
pub(crate) fn check(viewer: &mut Viewer, msg: &[u8], image: &Image<'_>, rect: Rect) {
    viewer.apply(msg).unwrap();
    let rect = rect.intersect(&image.bounds());
    assert_eq!(
        viewer.pixels(rect),
        expected(image, rect, &viewer.format),
        "{rect:?} in {:?}",
        viewer.format
    );
}
