//! Encoding framebuffer rectangles for one viewer: which encoding it gets ([`Preferences`]),
//! and the [`Encoder`] that keeps the connection's compression state.
//!
//! - Tight ([`encoding::TIGHT`]): fill colours, palettes, JPEG when the viewer allows lossy,
//!   zlib otherwise, over four streams.
//! - ZRLE ([`encoding::ZRLE`]): 64×64 tiles with palettes and run lengths, over one stream.
//! - Raw: for viewers that ask for neither, and for formats Tight cannot carry.
//! - CopyRect ([`copy`]): a scroll found between two frames is sent as a copy, and only the
//!   rows it exposed are encoded.
//!
//! The zlib streams live as long as the connection: a viewer decodes every rectangle with the
//! dictionary built by all the previous ones, so SetEncodings and SetPixelFormat leave them
//! as they are. Only Tight can announce a reset, and does so only when the viewer changes
//! the compression level.

pub mod copy;
mod pixels;
mod tight;
mod zrle;

#[cfg(test)]
mod fixtures;
#[cfg(test)]
mod testing;

use crate::client::PixelFormat;
use crate::encoding;
use crate::server::{Image, Rect, Update, rect_header, translate};

use copy::Scroll;
use pixels::{Lut, Packing};

/// The zlib level when the viewer sent no compression level: zlib's own default.
const DEFAULT_COMPRESS_LEVEL: u8 = 6;

/// What the viewer's SetEncodings says it understands, and the encoding the server uses for
/// pixels: the viewer's first choice among those the server implements.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Preferences {
    /// The encoding for pixel data.
    pub encoding: i32,
    /// CopyRect may be used.
    pub copy_rect: bool,
    /// Cursor pseudo-encoding: the shape is sent, not drawn into the framebuffer.
    pub cursor: bool,
    /// DesktopSize pseudo-encoding.
    pub desktop_size: bool,
    /// ExtendedDesktopSize pseudo-encoding.
    pub extended_desktop_size: bool,
    /// LastRect pseudo-encoding.
    pub last_rect: bool,
    /// Tight JPEG quality 0–9 (the viewer allows lossy when it sent one).
    pub jpeg_quality: Option<u8>,
    /// Compression level 0–9.
    pub compress_level: Option<u8>,
    /// Continuous updates and fences.
    pub continuous_updates: bool,
    /// Fence.
    pub fence: bool,
    /// Extended Clipboard (UTF-8).
    pub extended_clipboard: bool,
    /// QEMU extended key events.
    pub qemu_key: bool,
}

impl Default for Preferences {
    fn default() -> Self {
        Self::from_encodings(&[])
    }
}

/// Pixel encodings the server implements. Which one a viewer gets is decided by the viewer's
/// own order of preference (its SetEncodings list is ordered), not by the order here.
pub const IMPLEMENTED: &[i32] = &[encoding::TIGHT, encoding::ZRLE, encoding::RAW];

impl Preferences {
    /// Reads a viewer's SetEncodings list.
    pub fn from_encodings(list: &[i32]) -> Self {
        let has = |e: i32| list.contains(&e);
        let level = |range: std::ops::RangeInclusive<i32>| {
            list.iter()
                .find(|e| range.contains(e))
                .map(|e| (e - range.start()) as u8)
        };
        Self {
            encoding: list
                .iter()
                .copied()
                .find(|e| IMPLEMENTED.contains(e))
                .unwrap_or(encoding::RAW),
            copy_rect: has(encoding::COPY_RECT),
            cursor: has(encoding::CURSOR),
            desktop_size: has(encoding::DESKTOP_SIZE),
            extended_desktop_size: has(encoding::EXTENDED_DESKTOP_SIZE),
            last_rect: has(encoding::LAST_RECT),
            jpeg_quality: level(encoding::JPEG_QUALITY),
            compress_level: level(encoding::COMPRESS_LEVEL),
            continuous_updates: has(encoding::CONTINUOUS_UPDATES),
            fence: has(encoding::FENCE),
            extended_clipboard: has(encoding::EXTENDED_CLIPBOARD),
            qemu_key: has(encoding::QEMU_EXTENDED_KEY),
        }
    }

    /// The zlib level (0–9) for ZRLE and Tight.
    fn zlib_level(&self) -> u32 {
        u32::from(self.compress_level.unwrap_or(DEFAULT_COMPRESS_LEVEL).min(9))
    }
}

/// Encodes rectangles of the framebuffer for one viewer, in its pixel format and with its
/// preferred encoding, keeping the state that encoding carries across the connection.
///
/// One `Encoder` per connection, used for that connection's rectangles in the order they are
/// sent: ZRLE's and Tight's zlib streams continue from one rectangle to the next, and the
/// viewer's copies of them only follow if every byte produced reaches it.
#[derive(Debug)]
pub struct Encoder {
    format: PixelFormat,
    prefs: Preferences,
    lut: Lut,
    /// Created by the first ZRLE rectangle.
    zrle: Option<zrle::Zrle>,
    /// ZRLE's stream failed: the viewer's copy can never catch up, so Raw from then on.
    zrle_failed: bool,
    /// Created by the first Tight rectangle.
    tight: Option<tight::Tight>,
}

impl Default for Encoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Encoder {
    /// An encoder for a viewer that has not yet said what it wants: the server's format, Raw.
    pub fn new() -> Self {
        Self {
            format: PixelFormat::BGRX,
            prefs: Preferences::default(),
            lut: Lut::new(&PixelFormat::BGRX),
            zrle: None,
            zrle_failed: false,
            tight: None,
        }
    }

    /// The viewer's pixel format.
    pub fn format(&self) -> &PixelFormat {
        &self.format
    }

    /// What the viewer understands.
    pub fn preferences(&self) -> &Preferences {
        &self.prefs
    }

    /// Takes in SetPixelFormat. An unsupported format (colour maps) is refused with the
    /// reason, and the previous one stays. The zlib streams carry on.
    pub fn set_format(&mut self, format: PixelFormat) -> Result<(), &'static str> {
        if !format.is_supported() {
            return Err("only true-colour pixel formats of 8, 16 or 32 bits are supported");
        }
        self.format = format;
        self.lut = Lut::new(&format);
        Ok(())
    }

    /// Takes in SetEncodings; a viewer may send it any number of times. The zlib streams carry
    /// on (viewers keep theirs). A new compression level applies to Tight's next rectangles
    /// (through fresh streams the viewer is told to reset to); ZRLE, which cannot tell the
    /// viewer of a reset, keeps the level its stream started with.
    pub fn set_encodings(&mut self, list: &[i32]) {
        self.prefs = Preferences::from_encodings(list);
        let level = self.prefs.zlib_level();
        if let Some(z) = &mut self.zrle {
            z.set_level(level);
        }
        if let Some(t) = &mut self.tight {
            t.set_level(level);
        }
    }

    /// Appends `rect` of `image` to `update` in the viewer's encoding (clipped to the image;
    /// nothing when that leaves it empty). Tight cuts it into several rectangles when it is
    /// wide or large; each is counted in the update.
    pub fn encode(&mut self, image: &Image<'_>, rect: Rect, update: &mut Update) {
        let rect = rect.intersect(&image.bounds());
        if rect.is_empty() {
            return;
        }
        let level = self.prefs.zlib_level();
        match self.prefs.encoding {
            encoding::TIGHT => {
                let Some(packing) = Packing::tpixel(&self.format) else {
                    return self.raw(image, rect, update);
                };
                // Tight allows JPEG only for 16- and 32-bit formats.
                let jpeg = self
                    .prefs
                    .jpeg_quality
                    .filter(|_| self.format.bits_per_pixel >= 16);
                let options = tight::Options {
                    format: self.format,
                    packing,
                    jpeg,
                };
                self.tight
                    .get_or_insert_with(|| tight::Tight::new(level))
                    .encode(image, rect, &self.lut, options, update);
            }
            encoding::ZRLE if !self.zrle_failed => {
                let packing = Packing::cpixel(&self.format);
                let z = self.zrle.get_or_insert_with(|| zrle::Zrle::new(level));
                let out = update.body();
                let start = out.len();
                if z.encode(image, rect, &self.lut, packing, out).is_ok() {
                    update.added(1);
                } else {
                    out.truncate(start);
                    self.zrle = None;
                    self.zrle_failed = true;
                    self.raw(image, rect, update);
                }
            }
            _ => self.raw(image, rect, update),
        }
    }

    /// Appends `rect` of `cur` to `update`, as a CopyRect of the rows a vertical scroll moved
    /// followed by the rows it exposed, when the viewer announced CopyRect and
    /// [`copy::detect_vertical_scroll`] finds one; as [`Encoder::encode`] otherwise. Returns
    /// the scroll used.
    ///
    /// `prev` must be what the viewer's framebuffer holds (the frame last sent), and this
    /// rectangle must come before any other of the update that overlaps `rect`.
    pub fn encode_with_scroll(
        &mut self,
        prev: &Image<'_>,
        cur: &Image<'_>,
        rect: Rect,
        update: &mut Update,
    ) -> Option<Scroll> {
        // After a resize the viewer's old contents are gone: nothing to copy from.
        let same_size = (prev.width, prev.height) == (cur.width, cur.height);
        let scroll = (self.prefs.copy_rect && same_size)
            .then(|| copy::detect_vertical_scroll(prev, cur, rect))
            .flatten();
        let Some(scroll) = scroll else {
            self.encode(cur, rect, update);
            return None;
        };
        let src = scroll.src();
        copy::copy_rect(src.x, src.y, scroll.dst, update);
        for part in scroll.exposed(rect.intersect(&cur.bounds())) {
            self.encode(cur, part, update);
        }
        Some(scroll)
    }

    /// Appends what changed inside `rects` from `prev`, what the viewer's framebuffer holds, to
    /// `cur`: each rectangle cut to the bounds of its changed pixels, and, when the viewer
    /// announced CopyRect, a vertical scroll across all of them sent as one copy followed by
    /// the rows it exposed (a full-screen terminal's scroll changes every tile row, each with
    /// its own span: looked for one rectangle at a time, the scroll is cut at every tile
    /// boundary). Without a scroll across them, each rectangle is looked at on its own as
    /// [`Encoder::encode_with_scroll`] does. Frames of different sizes are encoded whole.
    ///
    /// `rects` must not overlap, and must hold every pixel where `cur` differs from `prev`.
    pub fn encode_changes(
        &mut self,
        prev: &Image<'_>,
        cur: &Image<'_>,
        rects: &[Rect],
        update: &mut Update,
    ) {
        if (prev.width, prev.height) != (cur.width, cur.height) {
            for &rect in rects {
                self.encode(cur, rect, update);
            }
            return;
        }
        let changed: Vec<Rect> = rects
            .iter()
            .filter_map(|&r| copy::changed_bounds(prev, cur, r))
            .collect();
        let Some(all) = changed.iter().copied().reduce(|a, b| a.union(&b)) else {
            return;
        };
        let scroll = self
            .prefs
            .copy_rect
            .then(|| copy::detect_vertical_scroll(prev, cur, all))
            .flatten();
        match scroll {
            Some(scroll) => {
                let src = scroll.src();
                copy::copy_rect(src.x, src.y, scroll.dst, update);
                for rect in changed {
                    for part in scroll.exposed(rect) {
                        self.encode(cur, part, update);
                    }
                }
            }
            None => {
                for rect in changed {
                    self.encode_with_scroll(prev, cur, rect, update);
                }
            }
        }
    }

    fn raw(&self, image: &Image<'_>, rect: Rect, update: &mut Update) {
        let out = update.body();
        rect_header(rect, encoding::RAW, out);
        translate(image, rect, &self.format, out);
        update.added(1);
    }
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
