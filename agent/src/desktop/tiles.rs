//! Captured frames and what changed between them, in 64×64 tiles: the capture compares each
//! new capture with the previous one tile by tile and stamps every tile with the generation
//! it last changed in, so any viewer, however many frames it skipped, finds what it has not
//! seen by comparing stamps with what it was sent.

use tether_rfb::server::{Image, Rect};

use super::backend::Size;

/// The side of a tile in pixels.
pub const TILE: u16 = 64;

/// One capture of the whole screen, shared by every viewer of the display.
#[derive(Debug)]
pub struct Frame {
    /// Counts captures that changed something (or the size); never 0.
    pub generation: u64,
    /// The screen's size.
    pub size: Size,
    /// The pixels: BGRX rows of `4 * size.width` bytes.
    pub data: Vec<u8>,
    /// For each tile (row-major, [`Frame::tiles_across`] per row), the generation it last
    /// changed in.
    pub changed_at: Vec<u64>,
}

/// Tiles across and down a screen of `size`.
pub fn tile_grid(size: Size) -> (usize, usize) {
    (
        usize::from(size.width).div_ceil(usize::from(TILE)),
        usize::from(size.height).div_ceil(usize::from(TILE)),
    )
}

impl Frame {
    /// The first frame of a display (every tile is new).
    pub fn first(size: Size, data: Vec<u8>) -> Self {
        let (across, down) = tile_grid(size);
        Self {
            generation: 1,
            size,
            data,
            changed_at: vec![1; across * down],
        }
    }

    /// The frame after `previous`; `Err` with the buffer back (for the next capture) when
    /// `data` shows nothing new. A new size changes every tile.
    pub fn next(previous: &Frame, size: Size, data: Vec<u8>) -> Result<Self, Vec<u8>> {
        let generation = previous.generation + 1;
        if size != previous.size {
            let (across, down) = tile_grid(size);
            return Ok(Self {
                generation,
                size,
                data,
                changed_at: vec![generation; across * down],
            });
        }
        let mut changed_at = previous.changed_at.clone();
        let mut any = false;
        for (i, stamp) in changed_tiles(size, &previous.data, &data)
            .into_iter()
            .enumerate()
        {
            if stamp {
                changed_at[i] = generation;
                any = true;
            }
        }
        if !any {
            return Err(data);
        }
        Ok(Self {
            generation,
            size,
            data,
            changed_at,
        })
    }

    /// Tiles per row.
    pub fn tiles_across(&self) -> usize {
        tile_grid(self.size).0
    }

    /// The pixels as an image for the encoder.
    pub fn image(&self) -> Image<'_> {
        Image {
            width: self.size.width,
            height: self.size.height,
            stride: 4 * usize::from(self.size.width),
            data: &self.data,
        }
    }

    /// The tile at column `tx`, row `ty`, clipped to the screen.
    pub fn tile_rect(&self, tx: usize, ty: usize) -> Rect {
        tile_rect(self.size, tx, ty)
    }
}

fn tile_rect(size: Size, tx: usize, ty: usize) -> Rect {
    let x = (tx * usize::from(TILE)) as u16;
    let y = (ty * usize::from(TILE)) as u16;
    Rect::new(x, y, TILE, TILE).intersect(&size.bounds())
}

/// Which tiles differ between two captures of the same size (row-major).
pub fn changed_tiles(size: Size, old: &[u8], new: &[u8]) -> Vec<bool> {
    let (across, down) = tile_grid(size);
    let stride = 4 * usize::from(size.width);
    let mut out = vec![false; across * down];
    if old.len() < stride * usize::from(size.height) || new.len() < old.len() {
        out.fill(true);
        return out;
    }
    for y in 0..usize::from(size.height) {
        let ty = y / usize::from(TILE);
        let row = y * stride;
        for tx in 0..across {
            let i = ty * across + tx;
            if out[i] {
                continue;
            }
            let x0 = row + tx * 4 * usize::from(TILE);
            let x1 = (x0 + 4 * usize::from(TILE)).min(row + stride);
            if old[x0..x1] != new[x0..x1] {
                out[i] = true;
            }
        }
    }
    out
}

/// Joins marked tiles into few rectangles: runs along each tile row, then runs of rows with
/// the same span stacked. `marked` is row-major, `across` per row.
pub fn tiles_to_rects(size: Size, marked: &[bool]) -> Vec<Rect> {
    let (across, down) = tile_grid(size);
    // Spans (first, last tile column) per tile row.
    let mut open: Vec<(usize, usize, usize, usize)> = Vec::new(); // (tx0, tx1, ty0, ty1)
    let mut done: Vec<(usize, usize, usize, usize)> = Vec::new();
    for ty in 0..down {
        let mut spans = Vec::new();
        let mut tx = 0;
        while tx < across {
            if marked.get(ty * across + tx).copied().unwrap_or(false) {
                let start = tx;
                while tx < across && marked.get(ty * across + tx).copied().unwrap_or(false) {
                    tx += 1;
                }
                spans.push((start, tx - 1));
            } else {
                tx += 1;
            }
        }
        let mut still_open = Vec::new();
        for o in open.drain(..) {
            if let Some(pos) = spans.iter().position(|s| *s == (o.0, o.1)) {
                spans.remove(pos);
                still_open.push((o.0, o.1, o.2, ty));
            } else {
                done.push(o);
            }
        }
        still_open.extend(spans.into_iter().map(|(a, b)| (a, b, ty, ty)));
        open = still_open;
    }
    done.extend(open);
    done.into_iter()
        .map(|(tx0, tx1, ty0, ty1)| tile_rect(size, tx0, ty0).union(&tile_rect(size, tx1, ty1)))
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // Tests fail loudly on any unexpected error.

    use super::*;

    fn size(width: u16, height: u16) -> Size {
        Size { width, height }
    }

    #[test]
    fn a_changed_pixel_marks_its_tile_only() {
        let s = size(200, 130); // 4 × 3 tiles, the last ones partial
        let old = vec![0u8; s.frame_bytes()];
        let mut new = old.clone();
        // Pixel (199, 129): the last tile.
        let at = (129 * 200 + 199) * 4;
        new[at] = 1;
        let marked = changed_tiles(s, &old, &new);
        assert_eq!(marked.len(), 12);
        assert_eq!(marked.iter().filter(|m| **m).count(), 1);
        assert!(marked[11]);
        assert_eq!(tiles_to_rects(s, &marked), vec![Rect::new(192, 128, 8, 2)]);
    }

    #[test]
    fn frames_stamp_tiles_with_the_generation_they_changed_in() {
        let s = size(128, 64);
        let first = Frame::first(s, vec![0; s.frame_bytes()]);
        assert_eq!(first.changed_at, vec![1, 1]);
        let same = Frame::next(&first, s, vec![0; s.frame_bytes()]);
        assert!(same.is_err(), "an identical capture is not a new frame");
        let mut data = vec![0; s.frame_bytes()];
        data[4 * 100] = 9; // column 100, row 0: the second tile
        let second = Frame::next(&first, s, data).unwrap();
        assert_eq!(second.generation, 2);
        assert_eq!(second.changed_at, vec![1, 2]);
        let bigger = Frame::next(&second, size(200, 64), vec![0; 200 * 64 * 4]).unwrap();
        assert_eq!(bigger.changed_at, vec![3, 3, 3, 3]);
    }

    #[test]
    fn marked_tiles_join_into_rectangles() {
        let s = size(256, 256); // 4 × 4
        #[rustfmt::skip]
        let marked = [
            true,  true,  false, false,
            true,  true,  false, true,
            false, false, false, true,
            false, false, false, false,
        ];
        let mut rects = tiles_to_rects(s, &marked);
        rects.sort_by_key(|r| (r.y, r.x));
        assert_eq!(
            rects,
            vec![Rect::new(0, 0, 128, 128), Rect::new(192, 64, 64, 128)]
        );
        assert!(tiles_to_rects(s, &[false; 16]).is_empty());
        // A short or wrong-sized buffer marks everything rather than reading past its end.
        assert!(changed_tiles(s, &[0; 10], &[0; 10]).iter().all(|m| *m));
    }
}
