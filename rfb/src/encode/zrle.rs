//! ZRLE (RFC 6143 §7.7.6): 64×64 tiles, each raw, solid, packed-palette, plain RLE or
//! palette RLE, whichever is smallest, all through one zlib stream for the whole connection.

use flate2::{Compress, Compression, FlushCompress};

use super::pixels::{DeflateFailed, Lut, Packing, Palette, deflate, runs};
use crate::encoding;
use crate::server::{Image, Rect, rect_header};

/// Tile edge.
const TILE: u16 = 64;
/// Largest palette a tile may carry (the subencoding's low seven bits).
const MAX_PALETTE: usize = 127;
/// Largest palette of the packed-palette subencodings.
const MAX_PACKED: usize = 16;

/// A connection's ZRLE state: its zlib stream and reusable buffers.
#[derive(Debug)]
pub(crate) struct Zrle {
    z: Compress,
    level: u32,
    pixels: Vec<u32>,
    tile: Vec<u32>,
    raw: Vec<u8>,
    palette: Palette,
}

/// How one tile is sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tile {
    Raw,
    Packed,
    PlainRle,
    PaletteRle,
}

impl Zrle {
    /// A fresh stream at zlib `level` (0–9).
    pub(crate) fn new(level: u32) -> Self {
        Self {
            z: Compress::new(Compression::new(level), true),
            level,
            pixels: Vec::new(),
            tile: Vec::with_capacity(usize::from(TILE) * usize::from(TILE)),
            raw: Vec::new(),
            palette: Palette::default(),
        }
    }

    /// Asks zlib to change the compression level for what follows. The stream is never reset:
    /// ZRLE has no way to tell the viewer. zlib refuses when the new level uses another
    /// matching strategy and it has no output room to close the current block, which is how
    /// flate2 1.1 calls it, so in practice the first rectangle's level stays; a refusal
    /// leaves the stream untouched.
    pub(crate) fn set_level(&mut self, level: u32) {
        if level != self.level && self.z.set_level(Compression::new(level)).is_ok() {
            self.level = level;
        }
    }

    /// Appends `rect` (inside the image) as a ZRLE rectangle to `out`. On failure `out` holds
    /// part of a rectangle and the stream is unusable: the caller drops both.
    pub(crate) fn encode(
        &mut self,
        image: &Image<'_>,
        rect: Rect,
        lut: &Lut,
        packing: Packing,
        out: &mut Vec<u8>,
    ) -> Result<(), DeflateFailed> {
        rect_header(rect, encoding::ZRLE, out);
        let length_at = out.len();
        out.extend_from_slice(&[0; 4]);
        lut.pixels(image, rect, &mut self.pixels);
        let width = usize::from(rect.width);
        for ty in (0..rect.height).step_by(usize::from(TILE)) {
            let th = TILE.min(rect.height - ty);
            self.raw.clear();
            for tx in (0..rect.width).step_by(usize::from(TILE)) {
                let tw = TILE.min(rect.width - tx);
                self.tile.clear();
                for y in ty..ty + th {
                    let start = usize::from(y) * width + usize::from(tx);
                    let row = self.pixels.get(start..start + usize::from(tw));
                    self.tile.extend_from_slice(row.unwrap_or_default());
                }
                write_tile(
                    &self.tile,
                    usize::from(tw),
                    usize::from(th),
                    packing,
                    &mut self.palette,
                    &mut self.raw,
                );
            }
            // A row of tiles at a time bounds the uncompressed buffer at 64 rows.
            deflate(&mut self.z, &self.raw, FlushCompress::None, out)?;
        }
        deflate(&mut self.z, &[], FlushCompress::Sync, out)?;
        let length = u32::try_from(out.len() - length_at - 4).map_err(|_| DeflateFailed)?;
        out[length_at..length_at + 4].copy_from_slice(&length.to_be_bytes());
        Ok(())
    }
}

/// Bytes that give a run of `len` pixels its length: 255s, then the rest of `len − 1`.
fn run_bytes(len: usize) -> usize {
    (len - 1) / 255 + 1
}

fn put_run(len: usize, out: &mut Vec<u8>) {
    let mut n = len - 1;
    while n >= 255 {
        out.push(255);
        n -= 255;
    }
    out.push(n as u8);
}

/// Bits per index of a packed palette of `n` colours.
fn packed_bits(n: usize) -> usize {
    match n {
        ..=2 => 1,
        3..=4 => 2,
        _ => 4,
    }
}

/// Appends one tile (`w`×`h` pixels, row-major) in its smallest subencoding.
fn write_tile(
    tile: &[u32],
    w: usize,
    h: usize,
    packing: Packing,
    palette: &mut Palette,
    out: &mut Vec<u8>,
) {
    let cp = packing.len();
    let has_palette = palette.build(tile, MAX_PALETTE);
    if has_palette && palette.len() == 1 {
        out.push(1);
        packing.put(tile[0], out);
        return;
    }
    // Exact sizes of every candidate, in one pass over the runs.
    let (mut plain, mut indexed) = (0, 0);
    for (_, len) in runs(tile) {
        plain += cp + run_bytes(len);
        indexed += if len == 1 { 1 } else { 1 + run_bytes(len) };
    }
    let n = palette.len();
    let mut options = Vec::with_capacity(4);
    if has_palette && n <= MAX_PACKED {
        options.push((n * cp + h * (w * packed_bits(n)).div_ceil(8), Tile::Packed));
    }
    if has_palette {
        options.push((n * cp + indexed, Tile::PaletteRle));
    }
    options.push((plain, Tile::PlainRle));
    options.push((w * h * cp, Tile::Raw));
    // Ties go to the earlier option: palettes compress better under zlib than raw pixels.
    let choice = options
        .iter()
        .min_by_key(|(size, _)| *size)
        .map_or(Tile::Raw, |(_, t)| *t);
    match choice {
        Tile::Raw => {
            out.push(0);
            packing.put_all(tile, out);
        }
        Tile::Packed => {
            out.push(n as u8);
            packing.put_all(palette.colours(), out);
            let bits = packed_bits(n);
            for row in tile.chunks(w) {
                let (mut byte, mut used) = (0u8, 0);
                for &p in row {
                    byte = (byte << bits) | palette.index(p);
                    used += bits;
                    if used == 8 {
                        out.push(byte);
                        (byte, used) = (0, 0);
                    }
                }
                if used > 0 {
                    out.push(byte << (8 - used));
                }
            }
        }
        Tile::PlainRle => {
            out.push(128);
            for (p, len) in runs(tile) {
                packing.put(p, out);
                put_run(len, out);
            }
        }
        Tile::PaletteRle => {
            out.push(128 + n as u8);
            packing.put_all(palette.colours(), out);
            for (p, len) in runs(tile) {
                let index = palette.index(p);
                if len == 1 {
                    out.push(index);
                } else {
                    out.push(index | 128);
                    put_run(len, out);
                }
            }
        }
    }
}

#[cfg(test)]
#[path = "zrle_tests.rs"]
mod tests;
