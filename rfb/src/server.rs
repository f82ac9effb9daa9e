//! What a desktop server sends, as bytes, without I/O: the handshake, ServerInit, framebuffer
//! updates with their rectangles, the clipboard and the extensions' replies.
//!
//! The server's own pixels are an [`Image`] in [`PixelFormat::BGRX`] (what X11, DXGI and
//! CoreGraphics capture); rectangles are translated into the viewer's pixel format and
//! encoded by an [`Encoder`] (defined in [`crate::encode`]) in the viewer's first choice of
//! Tight, ZRLE and Raw, keeping the per-connection state those need (ZRLE's and Tight's zlib
//! streams run across the whole connection). [`detect_vertical_scroll`] and [`copy_rect`]
//! turn a scroll into a CopyRect, so only the rows it exposed are encoded.

use crate::client::{PixelFormat, SECURITY_NONE, Screen, VERSION};
use crate::encoding;

pub use crate::encode::copy::{Scroll, copy_rect, detect_vertical_scroll};
pub use crate::encode::{Encoder, IMPLEMENTED, Preferences};

/// Server → viewer message types.
pub mod message_type {
    /// FramebufferUpdate.
    pub const FRAMEBUFFER_UPDATE: u8 = 0;
    /// Bell.
    pub const BELL: u8 = 2;
    /// ServerCutText.
    pub const CUT_TEXT: u8 = 3;
    /// EndOfContinuousUpdates.
    pub const END_OF_CONTINUOUS_UPDATES: u8 = 150;
    /// ServerFence.
    pub const FENCE: u8 = 248;
}

impl PixelFormat {
    /// 32 bits per pixel, depth 24, little-endian, blue in the lowest byte: `B G R X` in
    /// memory. What the server captures, and what it offers in ServerInit.
    pub const BGRX: Self = Self {
        bits_per_pixel: 32,
        depth: 24,
        big_endian: false,
        true_colour: true,
        red_max: 255,
        green_max: 255,
        blue_max: 255,
        red_shift: 16,
        green_shift: 8,
        blue_shift: 0,
    };

    /// Bytes per pixel on the wire (1, 2 or 4).
    pub fn bytes_per_pixel(&self) -> usize {
        usize::from(self.bits_per_pixel / 8).max(1)
    }

    /// Whether the format is one a server can translate to: true colour, 8/16/32 bits per
    /// pixel, every maximum of the form 2ⁿ−1 and fitting its shift in the pixel.
    pub fn is_supported(&self) -> bool {
        let fits = |max: u16, shift: u8| {
            max != 0
                && (u32::from(max) + 1).is_power_of_two()
                && u32::from(shift) + (16 - max.leading_zeros()) <= u32::from(self.bits_per_pixel)
        };
        self.true_colour
            && matches!(self.bits_per_pixel, 8 | 16 | 32)
            && fits(self.red_max, self.red_shift)
            && fits(self.green_max, self.green_shift)
            && fits(self.blue_max, self.blue_shift)
    }

    /// Appends the 16-byte PIXEL_FORMAT structure.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&[
            self.bits_per_pixel,
            self.depth,
            u8::from(self.big_endian),
            u8::from(self.true_colour),
        ]);
        for v in [self.red_max, self.green_max, self.blue_max] {
            out.extend_from_slice(&v.to_be_bytes());
        }
        out.extend_from_slice(&[self.red_shift, self.green_shift, self.blue_shift, 0, 0, 0]);
    }

    /// The pixel value of an 8-bit-per-channel colour in this format.
    pub fn pixel(&self, r: u8, g: u8, b: u8) -> u32 {
        let scale = |v: u8, max: u16| (u32::from(v) * u32::from(max) + 127) / 255;
        (scale(r, self.red_max) << self.red_shift)
            | (scale(g, self.green_max) << self.green_shift)
            | (scale(b, self.blue_max) << self.blue_shift)
    }

    /// Appends `pixel` in this format's size and byte order.
    pub fn put(&self, pixel: u32, out: &mut Vec<u8>) {
        match (self.bytes_per_pixel(), self.big_endian) {
            (1, _) => out.push(pixel as u8),
            (2, false) => out.extend_from_slice(&(pixel as u16).to_le_bytes()),
            (2, true) => out.extend_from_slice(&(pixel as u16).to_be_bytes()),
            (_, false) => out.extend_from_slice(&pixel.to_le_bytes()),
            (_, true) => out.extend_from_slice(&pixel.to_be_bytes()),
        }
    }
}

/// A rectangle of the framebuffer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Rect {
    /// Left edge.
    pub x: u16,
    /// Top edge.
    pub y: u16,
    /// Width.
    pub width: u16,
    /// Height.
    pub height: u16,
}

impl Rect {
    /// A rectangle.
    pub const fn new(x: u16, y: u16, width: u16, height: u16) -> Self {
        Self {
            x,
            y,
            width,
            height,
        }
    }

    /// Whether it covers no pixel.
    pub fn is_empty(&self) -> bool {
        self.width == 0 || self.height == 0
    }

    /// Pixels covered.
    pub fn area(&self) -> usize {
        usize::from(self.width) * usize::from(self.height)
    }

    /// The part of `self` inside `other` (empty when they do not meet).
    pub fn intersect(&self, other: &Rect) -> Rect {
        let x0 = self.x.max(other.x);
        let y0 = self.y.max(other.y);
        let x1 = (u32::from(self.x) + u32::from(self.width))
            .min(u32::from(other.x) + u32::from(other.width));
        let y1 = (u32::from(self.y) + u32::from(self.height))
            .min(u32::from(other.y) + u32::from(other.height));
        if x1 <= u32::from(x0) || y1 <= u32::from(y0) {
            return Rect::default();
        }
        Rect::new(
            x0,
            y0,
            (x1 - u32::from(x0)) as u16,
            (y1 - u32::from(y0)) as u16,
        )
    }

    /// The smallest rectangle covering both.
    pub fn union(&self, other: &Rect) -> Rect {
        if self.is_empty() {
            return *other;
        }
        if other.is_empty() {
            return *self;
        }
        let x0 = self.x.min(other.x);
        let y0 = self.y.min(other.y);
        let x1 = (u32::from(self.x) + u32::from(self.width))
            .max(u32::from(other.x) + u32::from(other.width));
        let y1 = (u32::from(self.y) + u32::from(self.height))
            .max(u32::from(other.y) + u32::from(other.height));
        Rect::new(
            x0,
            y0,
            (x1 - u32::from(x0)) as u16,
            (y1 - u32::from(y0)) as u16,
        )
    }
}

/// The server's pixels: `height` rows of `stride` bytes, each pixel four bytes in
/// [`PixelFormat::BGRX`].
#[derive(Clone, Copy, Debug)]
pub struct Image<'a> {
    /// Width in pixels.
    pub width: u16,
    /// Height in pixels.
    pub height: u16,
    /// Bytes from one row to the next (at least `4 * width`).
    pub stride: usize,
    /// The pixels.
    pub data: &'a [u8],
}

impl Image<'_> {
    /// The whole image as a rectangle.
    pub fn bounds(&self) -> Rect {
        Rect::new(0, 0, self.width, self.height)
    }

    /// Whether `data` holds `height` rows of `stride ≥ 4·width` bytes.
    pub fn is_valid(&self) -> bool {
        self.stride >= 4 * usize::from(self.width)
            && self.data.len() >= self.stride * usize::from(self.height)
    }

    /// The pixels of row `y` from column `x`, `width` of them (BGRX bytes). Callers keep the
    /// rectangle inside [`Image::bounds`].
    pub fn row(&self, x: u16, y: u16, width: u16) -> &[u8] {
        // Checked: `stride` comes from the capture, and a wild one must not overflow.
        let start = usize::from(y)
            .checked_mul(self.stride)
            .and_then(|s| s.checked_add(4 * usize::from(x)));
        let end = start.and_then(|s| s.checked_add(4 * usize::from(width)));
        match (start, end) {
            (Some(start), Some(end)) => self.data.get(start..end).unwrap_or_default(),
            _ => &[],
        }
    }

    /// The pixel at (`x`, `y`) as `(r, g, b)`; black outside the image.
    pub fn rgb(&self, x: u16, y: u16) -> (u8, u8, u8) {
        match self.row(x, y, 1) {
            [b, g, r, _] => (*r, *g, *b),
            _ => (0, 0, 0),
        }
    }
}

/// Appends the pixels of `rect` of `image` in `format`, row by row (Raw encoding's body).
pub fn translate(image: &Image<'_>, rect: Rect, format: &PixelFormat, out: &mut Vec<u8>) {
    let rect = rect.intersect(&image.bounds());
    out.reserve(rect.area() * format.bytes_per_pixel());
    let same = *format == PixelFormat::BGRX;
    for y in rect.y..rect.y + rect.height {
        let row = image.row(rect.x, y, rect.width);
        if row.len() < 4 * usize::from(rect.width) {
            // Rows the image's data lacks are sent black: a short rectangle would desync the
            // viewer's parser.
            out.resize(
                out.len() + usize::from(rect.width) * format.bytes_per_pixel(),
                0,
            );
            continue;
        }
        if same {
            out.extend_from_slice(row);
            continue;
        }
        for px in row.chunks_exact(4) {
            format.put(format.pixel(px[2], px[1], px[0]), out);
        }
    }
}

/// The server's protocol version (the first thing it sends).
pub fn version() -> &'static [u8] {
    VERSION
}

/// The security types offered: None only.
pub fn security_types() -> [u8; 2] {
    [1, SECURITY_NONE]
}

/// SecurityResult: OK.
pub fn security_ok() -> [u8; 4] {
    [0, 0, 0, 0]
}

/// ServerInit: the framebuffer's size, the server's pixel format and the desktop's name.
pub fn server_init(width: u16, height: u16, format: &PixelFormat, name: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(24 + name.len());
    out.extend_from_slice(&width.to_be_bytes());
    out.extend_from_slice(&height.to_be_bytes());
    format.encode(&mut out);
    let name = name.as_bytes();
    out.extend_from_slice(&(name.len() as u32).to_be_bytes());
    out.extend_from_slice(name);
    out
}

/// Appends a rectangle header.
pub fn rect_header(rect: Rect, encoding: i32, out: &mut Vec<u8>) {
    for v in [rect.x, rect.y, rect.width, rect.height] {
        out.extend_from_slice(&v.to_be_bytes());
    }
    out.extend_from_slice(&encoding.to_be_bytes());
}

/// A FramebufferUpdate being built: rectangles are appended to it, the count is filled in
/// by [`Update::finish`].
#[derive(Debug, Default)]
pub struct Update {
    bytes: Vec<u8>,
    rects: u16,
}

impl Update {
    /// An empty update.
    pub fn new() -> Self {
        Self {
            bytes: vec![message_type::FRAMEBUFFER_UPDATE, 0, 0, 0],
            rects: 0,
        }
    }

    /// The buffer rectangles are appended to; call [`Update::added`] for each.
    pub fn body(&mut self) -> &mut Vec<u8> {
        &mut self.bytes
    }

    /// Counts `n` rectangles appended to [`Update::body`].
    pub fn added(&mut self, n: u16) {
        self.rects = self.rects.saturating_add(n);
    }

    /// Rectangles so far.
    pub fn rects(&self) -> u16 {
        self.rects
    }

    /// The message's bytes.
    pub fn finish(mut self) -> Vec<u8> {
        let count = self.rects.to_be_bytes();
        self.bytes[2] = count[0];
        self.bytes[3] = count[1];
        self.bytes
    }
}

/// A DesktopSize pseudo-rectangle: the framebuffer is now `width`×`height`.
pub fn desktop_size(width: u16, height: u16, out: &mut Vec<u8>) {
    rect_header(Rect::new(0, 0, width, height), encoding::DESKTOP_SIZE, out);
}

/// Why an ExtendedDesktopSize rectangle is sent (its x field).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SizeReason {
    /// The server changed size.
    Server = 0,
    /// This viewer asked.
    ThisClient = 1,
    /// Another viewer asked.
    OtherClient = 2,
}

/// An ExtendedDesktopSize pseudo-rectangle; `status` 0 is success (y field).
pub fn extended_desktop_size(
    reason: SizeReason,
    status: u16,
    width: u16,
    height: u16,
    screens: &[Screen],
    out: &mut Vec<u8>,
) {
    rect_header(
        Rect::new(reason as u16, status, width, height),
        encoding::EXTENDED_DESKTOP_SIZE,
        out,
    );
    out.extend_from_slice(&[screens.len().min(255) as u8, 0, 0, 0]);
    for s in screens.iter().take(255) {
        out.extend_from_slice(&s.id.to_be_bytes());
        for v in [s.x, s.y, s.width, s.height] {
            out.extend_from_slice(&v.to_be_bytes());
        }
        out.extend_from_slice(&s.flags.to_be_bytes());
    }
}

/// A Cursor pseudo-rectangle: the pointer's shape, `width`×`height` pixels of `argb`
/// (alpha in the top byte) with its hot spot at (`hot_x`, `hot_y`), in the viewer's
/// `format` with a one-bit mask (alpha ≥ 128 is opaque).
pub fn cursor(
    hot_x: u16,
    hot_y: u16,
    width: u16,
    height: u16,
    argb: &[u32],
    format: &PixelFormat,
    out: &mut Vec<u8>,
) {
    let (w, h) = (usize::from(width), usize::from(height));
    if argb.len() < w * h {
        return;
    }
    rect_header(
        Rect::new(hot_x, hot_y, width, height),
        encoding::CURSOR,
        out,
    );
    for &p in &argb[..w * h] {
        let [_, r, g, b] = p.to_be_bytes();
        format.put(format.pixel(r, g, b), out);
    }
    let row_bytes = w.div_ceil(8);
    for y in 0..h {
        let mut row = vec![0u8; row_bytes];
        for x in 0..w {
            if argb[y * w + x] >> 24 >= 128 {
                row[x / 8] |= 0x80 >> (x % 8);
            }
        }
        out.extend_from_slice(&row);
    }
}

/// Bell.
pub fn bell() -> [u8; 1] {
    [message_type::BELL]
}

/// ServerCutText with Latin-1 `text` (characters outside Latin-1 become `?`).
pub fn cut_text(text: &str) -> Vec<u8> {
    let latin1: Vec<u8> = text
        .chars()
        .map(|c| u8::try_from(u32::from(c)).unwrap_or(b'?'))
        .collect();
    let mut out = vec![message_type::CUT_TEXT, 0, 0, 0];
    out.extend_from_slice(&(latin1.len() as u32).to_be_bytes());
    out.extend_from_slice(&latin1);
    out
}

/// EndOfContinuousUpdates (also tells a viewer the server supports them).
pub fn end_of_continuous_updates() -> [u8; 1] {
    [message_type::END_OF_CONTINUOUS_UPDATES]
}

/// ServerFence with `flags` and up to 64 bytes of `payload`.
pub fn fence(flags: u32, payload: &[u8]) -> Vec<u8> {
    let payload = &payload[..payload.len().min(64)];
    let mut out = vec![message_type::FENCE, 0, 0, 0];
    out.extend_from_slice(&flags.to_be_bytes());
    out.push(payload.len() as u8);
    out.extend_from_slice(payload);
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // Tests fail loudly on any unexpected error.

    use super::*;

    fn image(width: u16, height: u16) -> Vec<u8> {
        let mut data = Vec::new();
        for y in 0..height {
            for x in 0..width {
                data.extend_from_slice(&[x as u8, y as u8, (x ^ y) as u8, 0]);
            }
        }
        data
    }

    #[test]
    fn raw_rectangles_are_translated_into_the_viewers_format() {
        let data = image(4, 3);
        let img = Image {
            width: 4,
            height: 3,
            stride: 16,
            data: &data,
        };
        let mut enc = Encoder::new();
        let mut update = Update::new();
        enc.encode(&img, Rect::new(1, 1, 2, 2), &mut update);
        let bytes = update.finish();
        assert_eq!(&bytes[..4], &[0, 0, 0, 1]);
        assert_eq!(&bytes[4..12], &[0, 1, 0, 1, 0, 2, 0, 2]);
        assert_eq!(&bytes[12..16], &0i32.to_be_bytes());
        assert_eq!(&bytes[16..20], &[1, 1, 0, 0]);
        assert_eq!(bytes.len(), 16 + 4 * 4);

        // RGB565 big-endian: (r>>3)<<11 | (g>>2)<<5 | b>>3.
        let rgb565 = PixelFormat {
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
        enc.set_format(rgb565).unwrap();
        let mut update = Update::new();
        enc.encode(&img, Rect::new(3, 2, 5, 5), &mut update);
        let bytes = update.finish();
        // Clipped to the image: one pixel at (3, 2), b=3 g=2 r=1.
        assert_eq!(&bytes[4..12], &[0, 3, 0, 2, 0, 1, 0, 1]);
        assert_eq!(bytes.len(), 16 + 2);
        let colour_map = PixelFormat {
            true_colour: false,
            ..PixelFormat::BGRX
        };
        assert!(enc.set_format(colour_map).is_err());
    }

    #[test]
    fn the_viewers_first_implemented_encoding_is_used() {
        let prefs = Preferences::from_encodings(&[
            encoding::XVP,
            encoding::RAW,
            encoding::CURSOR,
            -28,
            -250,
        ]);
        assert_eq!(prefs.encoding, encoding::RAW);
        assert!(prefs.cursor);
        assert_eq!(prefs.jpeg_quality, Some(4));
        assert_eq!(prefs.compress_level, Some(6));
        assert!(!prefs.desktop_size);
    }

    #[test]
    fn cursor_shapes_carry_a_one_bit_mask() {
        let mut out = Vec::new();
        let argb = [0xFF_FF_00_00, 0x00_00_00_00, 0x80_00_FF_00];
        cursor(1, 0, 3, 1, &argb, &PixelFormat::BGRX, &mut out);
        assert_eq!(&out[8..12], &encoding::CURSOR.to_be_bytes());
        assert_eq!(&out[12..16], &[0, 0, 0xFF, 0]);
        assert_eq!(out.last(), Some(&0b1010_0000));
    }

    #[test]
    fn rectangles_meet_and_join() {
        let a = Rect::new(0, 0, 10, 10);
        let b = Rect::new(5, 5, 10, 10);
        assert_eq!(a.intersect(&b), Rect::new(5, 5, 5, 5));
        assert_eq!(a.union(&b), Rect::new(0, 0, 15, 15));
        assert!(a.intersect(&Rect::new(20, 20, 1, 1)).is_empty());
    }
}
