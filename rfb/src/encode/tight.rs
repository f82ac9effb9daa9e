//! Tight (encoding 7, as TightVNC and TigerVNC define it): solid rectangles as one fill
//! colour, few colours through the palette filter (a one-bit bitmap for two), many colours as
//! JPEG when the viewer allows lossy and as plain pixels otherwise, over four zlib streams
//! that live as long as the connection.

use flate2::{Compress, Compression, FlushCompress};
use jpeg_encoder::{ColorType, SamplingFactor};

use super::pixels::{Lut, Packing, Palette, deflate};
use crate::client::PixelFormat;
use crate::encoding;
use crate::server::{Image, Rect, Update, rect_header, translate};

/// The widest rectangle a viewer accepts.
const MAX_WIDTH: u16 = 2048;
/// The most pixels in one rectangle (TightVNC's limit, which sizes viewers' buffers).
const MAX_AREA: usize = 65536;
/// Filtered data shorter than this is sent as it is, without zlib.
const MIN_TO_COMPRESS: usize = 12;
/// The largest compact length (22 bits).
const MAX_LENGTH: usize = (1 << 22) - 1;
/// Below this many pixels JPEG's tables cost more than zlib saves.
const MIN_JPEG_AREA: usize = 256;
/// The side of the cells a large rectangle is cut into by content.
const CELL: u16 = 64;
/// Rectangles of more pixels than this are cut by content first.
const CUT_ABOVE: usize = 4 * (CELL as usize) * (CELL as usize);

/// Compression-control values (upper nibble; the lower one holds stream resets).
const FILL: u8 = 0x80;
const JPEG: u8 = 0x90;
/// Basic compression's "a filter id follows" bit.
const EXPLICIT_FILTER: u8 = 0x40;
const FILTER_PALETTE: u8 = 1;

/// Which stream each kind of data uses, as TigerVNC does: similar data shares a dictionary.
const STREAM_FULL: usize = 0;
const STREAM_MONO: usize = 1;
const STREAM_INDEXED: usize = 2;

/// TigerVNC's JPEG settings for quality levels 0–9: quality and chroma subsampling.
const JPEG_LEVELS: [(u8, SamplingFactor); 10] = [
    (15, SamplingFactor::F_2_2),
    (29, SamplingFactor::F_2_2),
    (41, SamplingFactor::F_2_2),
    (42, SamplingFactor::F_2_1),
    (62, SamplingFactor::F_2_1),
    (77, SamplingFactor::F_2_1),
    (79, SamplingFactor::F_1_1),
    (86, SamplingFactor::F_1_1),
    (92, SamplingFactor::F_1_1),
    (100, SamplingFactor::F_1_1),
];

/// What a cell of a large rectangle holds, for cutting it into runs of one kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// One colour (in the viewer's format).
    Solid(u32),
    /// A palette's worth of colours.
    Few,
    /// Too many colours for a palette.
    Many,
}

/// What the viewer allows for this connection's Tight rectangles.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Options {
    /// The viewer's pixel format.
    pub(crate) format: PixelFormat,
    /// TPIXEL for the viewer's format.
    pub(crate) packing: Packing,
    /// JPEG quality level 0–9, when the viewer sent one and its format has 16 or 32 bits.
    pub(crate) jpeg: Option<u8>,
}

/// A connection's Tight state: four zlib streams (created on first use), the resets the
/// viewer must do with the next rectangle, and reusable buffers.
#[derive(Debug)]
pub(crate) struct Tight {
    streams: [Option<Compress>; 4],
    level: u32,
    /// Bit i: the viewer must reset stream i before the next rectangle (our side already did).
    reset: u8,
    palette: Palette,
    pixels: Vec<u32>,
    data: Vec<u8>,
    packed: Vec<u8>,
}

impl Tight {
    /// Streams at zlib `level` (0–9).
    pub(crate) fn new(level: u32) -> Self {
        Self {
            streams: [None, None, None, None],
            level,
            reset: 0,
            palette: Palette::default(),
            pixels: Vec::new(),
            data: Vec::new(),
            packed: Vec::new(),
        }
    }

    /// Changes the compression level for what follows. zlib can do it in place only when it
    /// has output room to close the current block, which flate2 1.1 does not give it; a
    /// stream that refuses is replaced by a fresh one at the new level, and the viewer is
    /// told with the next rectangle to reset its copy. Unused streams simply start at it.
    pub(crate) fn set_level(&mut self, level: u32) {
        if level == self.level {
            return;
        }
        self.level = level;
        for (i, stream) in self.streams.iter_mut().enumerate() {
            if let Some(z) = stream
                && z.set_level(Compression::new(level)).is_err()
            {
                *stream = None;
                self.reset |= 1 << i;
            }
        }
    }

    /// Appends `rect` (inside the image) to `update` as Tight rectangles of at most
    /// [`MAX_WIDTH`] columns and [`MAX_AREA`] pixels.
    ///
    /// A rectangle larger than a few cells is first cut along its content ([`Tight::runs`]),
    /// so that a screen of windows is sent as fills for its background, palettes for its text
    /// and JPEG only for its pictures, rather than each strip taking the compression its most
    /// colourful part needs.
    pub(crate) fn encode(
        &mut self,
        image: &Image<'_>,
        rect: Rect,
        lut: &Lut,
        options: Options,
        update: &mut Update,
    ) {
        let runs = if rect.area() > CUT_ABOVE {
            self.runs(image, rect, lut)
        } else {
            vec![rect]
        };
        for run in runs {
            for sub in split(run) {
                self.encode_one(image, sub, lut, options, update);
            }
        }
    }

    /// `rect` cut into bands of [`CELL`] rows, and each band into runs of [`CELL`]-wide cells
    /// of one kind: one fill colour, the same few colours (the smaller palette a subset of the
    /// larger), or many colours.
    fn runs(&mut self, image: &Image<'_>, rect: Rect, lut: &Lut) -> Vec<Rect> {
        let mut runs: Vec<(Rect, Kind)> = Vec::new();
        let mut colours: Vec<u32> = Vec::new();
        for y in (rect.y..rect.y + rect.height).step_by(usize::from(CELL)) {
            let height = CELL.min(rect.y + rect.height - y);
            let mut open: Option<(Rect, Kind)> = None;
            for x in (rect.x..rect.x + rect.width).step_by(usize::from(CELL)) {
                let cell = Rect::new(x, y, CELL.min(rect.x + rect.width - x), height);
                lut.pixels(image, cell, &mut self.pixels);
                let max = (cell.area() / 4).clamp(2, 256);
                let kind = if !self.palette.build(&self.pixels, max) {
                    Kind::Many
                } else if self.palette.len() == 1 {
                    Kind::Solid(self.pixels[0])
                } else {
                    Kind::Few
                };
                let joins = match (&open, kind) {
                    (Some((_, Kind::Few)), Kind::Few) => {
                        let cell_colours = self.palette.colours();
                        let union = colours
                            .iter()
                            .chain(cell_colours)
                            .copied()
                            .collect::<std::collections::BTreeSet<u32>>()
                            .len();
                        // One palette for both, never a bigger one than either had (and a
                        // two-colour bitmap never becomes indexed pixels).
                        let (a, b) = (colours.len(), cell_colours.len());
                        let joins = union == a.max(b) && (a == b || a.min(b) > 2);
                        if joins && cell_colours.len() > colours.len() {
                            colours.clear();
                            colours.extend_from_slice(cell_colours);
                        }
                        joins
                    }
                    (Some((_, open_kind)), kind) => *open_kind == kind,
                    (None, _) => false,
                };
                match &mut open {
                    Some((run, _)) if joins => run.width += cell.width,
                    _ => {
                        if let Some(run) = open.replace((cell, kind)) {
                            runs.push(run);
                        }
                        if kind == Kind::Few {
                            colours.clear();
                            colours.extend_from_slice(self.palette.colours());
                        }
                    }
                }
            }
            runs.extend(open);
        }
        stack(runs)
    }

    fn encode_one(
        &mut self,
        image: &Image<'_>,
        rect: Rect,
        lut: &Lut,
        options: Options,
        update: &mut Update,
    ) {
        lut.pixels(image, rect, &mut self.pixels);
        let area = rect.area();
        let width = usize::from(rect.width);
        let packing = options.packing;
        let out = update.body();
        let start = out.len();
        rect_header(rect, encoding::TIGHT, out);
        // Few colours for the area, or the palette costs more than it saves.
        let max_colours = (area / 4).clamp(2, 256);
        let result = if self.palette.build(&self.pixels, max_colours) {
            match self.palette.len() {
                1 => {
                    out.push(FILL | self.reset);
                    packing.put(self.pixels[0], out);
                    Ok(())
                }
                n => {
                    let (stream, mono) = if n == 2 {
                        (STREAM_MONO, true)
                    } else {
                        (STREAM_INDEXED, false)
                    };
                    out.push(((stream as u8) << 4) | EXPLICIT_FILTER | self.reset);
                    out.extend_from_slice(&[FILTER_PALETTE, (n - 1) as u8]);
                    packing.put_all(self.palette.colours(), out);
                    self.data.clear();
                    if mono {
                        bitmap(
                            &self.pixels,
                            width,
                            self.palette.colours()[0],
                            &mut self.data,
                        );
                    } else {
                        let palette = &self.palette;
                        self.data
                            .extend(self.pixels.iter().map(|&p| palette.index(p)));
                    }
                    self.compressed(stream, out)
                }
            }
        } else if let Some(level) = options.jpeg.filter(|_| area >= MIN_JPEG_AREA)
            && jpeg(image, rect, level, &mut self.data, &mut self.packed)
        {
            out.push(JPEG | self.reset);
            compact_length(self.packed.len(), out);
            out.extend_from_slice(&self.packed);
            Ok(())
        } else {
            out.push(((STREAM_FULL as u8) << 4) | self.reset);
            self.data.clear();
            packing.put_all(&self.pixels, &mut self.data);
            self.compressed(STREAM_FULL, out)
        };
        match result {
            Ok(()) => self.reset = 0,
            Err(stream) => {
                // The stream's state is unknown: start it afresh on both sides and send this
                // rectangle as Raw, which needs no stream.
                self.streams[stream] = None;
                self.reset |= 1 << stream;
                out.truncate(start);
                rect_header(rect, encoding::RAW, out);
                translate(image, rect, &options.format, out);
            }
        }
        update.added(1);
    }

    /// Appends `self.data` through `stream`: as it is when short, else its compact length and
    /// the zlib bytes. `Err(stream)` when zlib failed.
    fn compressed(&mut self, stream: usize, out: &mut Vec<u8>) -> Result<(), usize> {
        if self.data.len() < MIN_TO_COMPRESS {
            out.extend_from_slice(&self.data);
            return Ok(());
        }
        let level = self.level;
        let z = self.streams[stream]
            .get_or_insert_with(|| Compress::new(Compression::new(level), true));
        self.packed.clear();
        deflate(z, &self.data, FlushCompress::Sync, &mut self.packed).map_err(|_| stream)?;
        if self.packed.len() > MAX_LENGTH {
            return Err(stream);
        }
        compact_length(self.packed.len(), out);
        out.extend_from_slice(&self.packed);
        Ok(())
    }
}

/// Runs of bands stacked: a run of many colours or of one fill directly below one of the
/// same kind, columns and width continues it, so that a picture taller than a band is one
/// JPEG (cut only by [`MAX_AREA`]) rather than one per band. Runs of few colours stay per
/// band: their palettes may differ.
fn stack(runs: Vec<(Rect, Kind)>) -> Vec<Rect> {
    let mut out: Vec<(Rect, Kind)> = Vec::with_capacity(runs.len());
    // Indexes into `out` of runs that end on the band being added, by left column.
    let mut open: Vec<usize> = Vec::new();
    let mut next: Vec<usize> = Vec::new();
    let mut band_y = None;
    for (run, kind) in runs {
        if band_y != Some(run.y) {
            band_y = Some(run.y);
            open = std::mem::take(&mut next);
        }
        let above = open.iter().copied().find(|&i| {
            let (r, k) = out[i];
            k == kind
                && kind != Kind::Few
                && r.x == run.x
                && r.width == run.width
                && r.y + r.height == run.y
        });
        match above {
            Some(i) => {
                out[i].0.height += run.height;
                next.push(i);
            }
            None => {
                next.push(out.len());
                out.push((run, kind));
            }
        }
    }
    out.into_iter().map(|(r, _)| r).collect()
}

/// `rect` cut into rectangles of at most [`MAX_WIDTH`] columns and [`MAX_AREA`] pixels, left
/// to right, top to bottom.
pub(crate) fn split(rect: Rect) -> impl Iterator<Item = Rect> {
    let w = rect.width.clamp(1, MAX_WIDTH);
    let h = (MAX_AREA / usize::from(w)).min(usize::from(u16::MAX)) as u16;
    let rows = (0..rect.height).step_by(usize::from(h));
    rows.flat_map(move |dy| {
        (0..rect.width).step_by(usize::from(w)).map(move |dx| {
            Rect::new(
                rect.x.saturating_add(dx),
                rect.y.saturating_add(dy),
                w.min(rect.width - dx),
                h.min(rect.height - dy),
            )
        })
    })
}

/// Appends the one-bit bitmap of a two-colour rectangle: 0 for `first`, 1 for the other,
/// most significant bit leftmost, each row padded to a byte.
fn bitmap(pixels: &[u32], width: usize, first: u32, out: &mut Vec<u8>) {
    for row in pixels.chunks(width.max(1)) {
        for byte in row.chunks(8) {
            let mut b = 0u8;
            for (i, &p) in byte.iter().enumerate() {
                if p != first {
                    b |= 0x80 >> i;
                }
            }
            out.push(b);
        }
    }
}

/// JPEG-compresses `rect` of the image (its BGRX rows gathered into `rows`) into `jpeg` at
/// quality level `level`; false when the encoder refused or the result is too long to send.
fn jpeg(image: &Image<'_>, rect: Rect, level: u8, rows: &mut Vec<u8>, jpeg: &mut Vec<u8>) -> bool {
    rows.clear();
    let row_len = 4 * usize::from(rect.width);
    for y in rect.y..rect.y + rect.height {
        let row = image.row(rect.x, y, rect.width);
        if row.len() == row_len {
            rows.extend_from_slice(row);
        } else {
            rows.resize(rows.len() + row_len, 0);
        }
    }
    let (quality, sampling) = JPEG_LEVELS[usize::from(level.min(9))];
    jpeg.clear();
    let mut encoder = jpeg_encoder::Encoder::new(&mut *jpeg, quality);
    encoder.set_sampling_factor(sampling);
    // The fourth byte is BGRX's padding; the encoder ignores it as alpha.
    let ok = encoder
        .encode(rows, rect.width, rect.height, ColorType::Bgra)
        .is_ok();
    ok && jpeg.len() <= MAX_LENGTH
}

/// Appends Tight's compact length: 7 bits per byte, least significant first, the high bit
/// saying another byte follows; the third byte carries 8 bits.
pub(crate) fn compact_length(len: usize, out: &mut Vec<u8>) {
    let len = len.min(MAX_LENGTH);
    if len < 0x80 {
        out.push(len as u8);
    } else if len < 0x4000 {
        out.extend_from_slice(&[(len as u8 & 0x7F) | 0x80, (len >> 7) as u8]);
    } else {
        out.extend_from_slice(&[
            (len as u8 & 0x7F) | 0x80,
            ((len >> 7) as u8 & 0x7F) | 0x80,
            (len >> 14) as u8,
        ]);
    }
}

#[cfg(test)]
#[path = "tight_tests.rs"]
mod tests;
