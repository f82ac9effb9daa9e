//! What the encoders share: the server's pixels as values in the viewer's format, the
//! compact pixel forms ZRLE and Tight put on the wire, colour palettes and the zlib helper.

use flate2::{Compress, FlushCompress};

use crate::client::PixelFormat;
use crate::server::{Image, Rect};

/// Per-channel tables from a BGRX byte to its bits in the viewer's pixel value: one lookup and
/// an OR per channel instead of the multiply and divide [`PixelFormat::pixel`] does.
#[derive(Clone)]
pub(crate) struct Lut {
    red: [u32; 256],
    green: [u32; 256],
    blue: [u32; 256],
}

impl std::fmt::Debug for Lut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Lut")
    }
}

impl Lut {
    /// The tables for `format` (a format [`PixelFormat::is_supported`] accepts).
    pub(crate) fn new(format: &PixelFormat) -> Self {
        let mut lut = Self {
            red: [0; 256],
            green: [0; 256],
            blue: [0; 256],
        };
        for v in 0..=255u8 {
            let i = usize::from(v);
            lut.red[i] = format.pixel(v, 0, 0);
            lut.green[i] = format.pixel(0, v, 0);
            lut.blue[i] = format.pixel(0, 0, v);
        }
        lut
    }

    /// Replaces `out` with the pixel values of `rect` (inside the image's bounds), row by row.
    /// Rows the image's data does not hold are black, so that a short buffer still yields a
    /// well-formed rectangle.
    pub(crate) fn pixels(&self, image: &Image<'_>, rect: Rect, out: &mut Vec<u32>) {
        out.clear();
        out.reserve(rect.area());
        let width = usize::from(rect.width);
        for y in rect.y..rect.y.saturating_add(rect.height) {
            let row = image.row(rect.x, y, rect.width);
            if row.len() < 4 * width {
                out.resize(out.len() + width, 0);
                continue;
            }
            out.extend(row.chunks_exact(4).map(|px| {
                self.red[usize::from(px[2])]
                    | self.green[usize::from(px[1])]
                    | self.blue[usize::from(px[0])]
            }));
        }
    }
}

/// How a pixel value is written: whole, or in the three-byte forms of ZRLE (CPIXEL) and
/// Tight (TPIXEL).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Packing {
    /// The pixel as Raw sends it: 1, 2 or 4 bytes in the format's byte order.
    Whole {
        /// Bytes per pixel.
        bytes: u8,
        /// Big-endian byte order.
        big_endian: bool,
    },
    /// CPIXEL when every colour bit is in the low three bytes: those, in the format's order.
    Low3 {
        /// Big-endian byte order.
        big_endian: bool,
    },
    /// CPIXEL when every colour bit is in the high three bytes: those, in the format's order.
    High3 {
        /// Big-endian byte order.
        big_endian: bool,
    },
    /// TPIXEL of a 32-bit depth-24 format with 8-bit channels: red, green, blue.
    Rgb {
        /// Shifts of red, green and blue.
        shifts: [u8; 3],
    },
}

impl Packing {
    /// The pixel as it is.
    pub(crate) fn whole(format: &PixelFormat) -> Self {
        Self::Whole {
            bytes: format.bytes_per_pixel() as u8,
            big_endian: format.big_endian,
        }
    }

    /// ZRLE's CPIXEL (RFC 6143 §7.7.6): three bytes for 32-bit formats of depth ≤ 24 whose
    /// colour bits fit the low (preferred, by convention) or the high three bytes.
    pub(crate) fn cpixel(format: &PixelFormat) -> Self {
        if format.bits_per_pixel != 32 || format.depth > 24 {
            return Self::whole(format);
        }
        let all = format.pixel(255, 255, 255);
        let big_endian = format.big_endian;
        if all >> 24 == 0 {
            Self::Low3 { big_endian }
        } else if all & 0xFF == 0 {
            Self::High3 { big_endian }
        } else {
            Self::whole(format)
        }
    }

    /// Tight's TPIXEL: red, green, blue bytes for 32-bit depth-24 formats with 8-bit channels,
    /// the pixel as it is otherwise. `None` for such a format whose channels are not on byte
    /// boundaries: viewers disagree on whether TPIXEL is then three bytes or four.
    pub(crate) fn tpixel(format: &PixelFormat) -> Option<Self> {
        let eight_bit = [format.red_max, format.green_max, format.blue_max] == [255; 3];
        if format.bits_per_pixel != 32 || format.depth != 24 || !eight_bit {
            return Some(Self::whole(format));
        }
        let shifts = [format.red_shift, format.green_shift, format.blue_shift];
        shifts
            .iter()
            .all(|s| s % 8 == 0)
            .then_some(Self::Rgb { shifts })
    }

    /// Bytes per pixel written.
    pub(crate) fn len(self) -> usize {
        match self {
            Self::Whole { bytes, .. } => usize::from(bytes),
            Self::Low3 { .. } | Self::High3 { .. } | Self::Rgb { .. } => 3,
        }
    }

    /// Appends `pixel`.
    pub(crate) fn put(self, pixel: u32, out: &mut Vec<u8>) {
        match self {
            Self::Whole { bytes: 1, .. } => out.push(pixel as u8),
            Self::Whole {
                bytes: 2,
                big_endian,
            } => out.extend_from_slice(&if big_endian {
                (pixel as u16).to_be_bytes()
            } else {
                (pixel as u16).to_le_bytes()
            }),
            Self::Whole { big_endian, .. } => out.extend_from_slice(&if big_endian {
                pixel.to_be_bytes()
            } else {
                pixel.to_le_bytes()
            }),
            Self::Low3 { big_endian } => three(pixel, big_endian, out),
            Self::High3 { big_endian } => three(pixel >> 8, big_endian, out),
            Self::Rgb { shifts } => {
                out.extend_from_slice(&shifts.map(|s| (pixel >> s) as u8));
            }
        }
    }

    /// Appends every pixel of `pixels`.
    pub(crate) fn put_all(self, pixels: &[u32], out: &mut Vec<u8>) {
        out.reserve(pixels.len() * self.len());
        for &p in pixels {
            self.put(p, out);
        }
    }
}

/// The low three bytes of `v` in the given byte order.
fn three(v: u32, big_endian: bool, out: &mut Vec<u8>) {
    let [a, b, c, _] = v.to_le_bytes();
    if big_endian {
        out.extend_from_slice(&[c, b, a]);
    } else {
        out.extend_from_slice(&[a, b, c]);
    }
}

const SLOTS: usize = 512;

/// The colours of a run of pixels, in order of first appearance, up to 256 of them: an open
/// hash table twice that size keeps lookups at one or two probes even for the noisy tiles
/// that fill it.
#[derive(Clone)]
pub(crate) struct Palette {
    colours: Vec<u32>,
    keys: [u32; SLOTS],
    /// Index + 1 of the colour in the slot; 0 for an empty slot.
    index: [u16; SLOTS],
}

impl std::fmt::Debug for Palette {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Palette")
            .field("colours", &self.colours.len())
            .finish()
    }
}

impl Default for Palette {
    fn default() -> Self {
        Self {
            colours: Vec::with_capacity(256),
            keys: [0; SLOTS],
            index: [0; SLOTS],
        }
    }
}

impl Palette {
    /// Collects the colours of `pixels`; false (and the palette unusable) as soon as there are
    /// more than `max` (at most 256).
    pub(crate) fn build(&mut self, pixels: &[u32], max: usize) -> bool {
        let max = max.min(256);
        self.colours.clear();
        self.index.fill(0);
        let mut last = None;
        for &p in pixels {
            // Runs are the common case on a desktop; they cost one compare.
            if last == Some(p) {
                continue;
            }
            last = Some(p);
            let slot = self.slot(p);
            if self.index[slot] != 0 {
                continue;
            }
            if self.colours.len() == max {
                return false;
            }
            self.colours.push(p);
            self.keys[slot] = p;
            self.index[slot] = self.colours.len() as u16;
        }
        true
    }

    /// The slot holding `p`, or the empty one where it would go.
    fn slot(&self, p: u32) -> usize {
        let mut i = (p.wrapping_mul(0x9E37_79B1) >> 23) as usize % SLOTS;
        // At most 256 of the 512 slots are taken, so an empty one is always found.
        while self.index[i] != 0 && self.keys[i] != p {
            i = (i + 1) % SLOTS;
        }
        i
    }

    /// The colours, in order of first appearance.
    pub(crate) fn colours(&self) -> &[u32] {
        &self.colours
    }

    /// Colours collected.
    pub(crate) fn len(&self) -> usize {
        self.colours.len()
    }

    /// The index of `p` (0 for a colour not in the palette, which callers never ask for).
    pub(crate) fn index(&self, p: u32) -> u8 {
        self.index[self.slot(p)].saturating_sub(1) as u8
    }
}

/// Runs of equal pixels: `(pixel, length)`.
pub(crate) fn runs(pixels: &[u32]) -> impl Iterator<Item = (u32, usize)> + '_ {
    let mut rest = pixels;
    std::iter::from_fn(move || {
        let (&first, _) = rest.split_first()?;
        let len = rest.iter().take_while(|&&p| p == first).count();
        rest = &rest[len..];
        Some((first, len))
    })
}

/// A zlib stream stopped making progress or reported an error; its state is unknown, so the
/// viewer's copy can no longer follow it.
#[derive(Debug)]
pub(crate) struct DeflateFailed;

/// Compresses all of `input` into `out` on the connection's stream `z`, ending with `flush`
/// (`Sync` at the end of a rectangle, so the viewer can decode it without what follows).
pub(crate) fn deflate(
    z: &mut Compress,
    input: &[u8],
    flush: FlushCompress,
    out: &mut Vec<u8>,
) -> Result<(), DeflateFailed> {
    let mut rest = input;
    loop {
        out.reserve(rest.len() / 2 + 1024);
        let (before_in, before_out) = (z.total_in(), z.total_out());
        z.compress_vec(rest, out, flush)
            .map_err(|_| DeflateFailed)?;
        let used = usize::try_from(z.total_in() - before_in).map_err(|_| DeflateFailed)?;
        rest = rest.get(used..).ok_or(DeflateFailed)?;
        // Done when the input is in and zlib left output room: it had nothing more to flush.
        if rest.is_empty() && out.len() < out.capacity() {
            return Ok(());
        }
        if used == 0 && z.total_out() == before_out {
            return Err(DeflateFailed);
        }
    }
}
