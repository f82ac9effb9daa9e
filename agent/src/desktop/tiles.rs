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

    /// The frame after `previous` when only `regions` were grabbed again: `data` equals
    /// `previous.data` everywhere else (see [`sync`]), so only the tiles the regions touch are
    /// compared. `Err` with the buffer back when none of them changed.
    pub fn next_in(previous: &Frame, data: Vec<u8>, regions: &[Rect]) -> Result<Self, Vec<u8>> {
        let size = previous.size;
        if data.len() != previous.data.len() {
            return Err(data);
        }
        let generation = previous.generation + 1;
        let (across, down) = tile_grid(size);
        let mut touched = vec![false; across * down];
        for region in regions {
            mark_tiles(size, *region, &mut touched);
        }
        let mut changed_at = previous.changed_at.clone();
        let mut any = false;
        for (i, _) in touched.iter().enumerate().filter(|(_, t)| **t) {
            let tile = tile_rect(size, i % across, i / across);
            if !same_in(size, &previous.data, &data, tile) {
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

/// Marks the tiles `region` touches (row-major, clipped to the screen).
pub fn mark_tiles(size: Size, region: Rect, marked: &mut [bool]) {
    let region = region.intersect(&size.bounds());
    if region.is_empty() {
        return;
    }
    let (across, _) = tile_grid(size);
    let t = usize::from(TILE);
    let (x0, y0) = (usize::from(region.x) / t, usize::from(region.y) / t);
    let x1 = (usize::from(region.x) + usize::from(region.width) - 1) / t;
    let y1 = (usize::from(region.y) + usize::from(region.height) - 1) / t;
    for ty in y0..=y1 {
        for tx in x0..=x1 {
            if let Some(m) = marked.get_mut(ty * across + tx) {
                *m = true;
            }
        }
    }
}

/// Whether `rect` holds the same pixels in two captures of the screen (BGRX, `size`).
fn same_in(size: Size, old: &[u8], new: &[u8], rect: Rect) -> bool {
    let stride = 4 * usize::from(size.width);
    let (x0, x1) = (
        4 * usize::from(rect.x),
        4 * usize::from(rect.x + rect.width),
    );
    (usize::from(rect.y)..usize::from(rect.y + rect.height)).all(|y| {
        let row = y * stride;
        old.get(row + x0..row + x1) == new.get(row + x0..row + x1)
    })
}

/// Brings `data`, a capture of the screen as it was at generation `had`, up to `latest` by
/// copying the tiles that changed after `had`; a buffer of another size, or of no known
/// generation, is replaced by a copy of `latest`.
pub fn sync(latest: &Frame, data: &mut Vec<u8>, had: Option<u64>) {
    let Some(had) = had.filter(|_| data.len() == latest.data.len()) else {
        data.clear();
        data.extend_from_slice(&latest.data);
        return;
    };
    let across = latest.tiles_across();
    for (i, _) in latest
        .changed_at
        .iter()
        .enumerate()
        .filter(|(_, at)| **at > had)
    {
        let tile = latest.tile_rect(i % across, i / across);
        copy_rect(latest.size, &latest.data, data, tile);
    }
}

/// Copies `rect` from one capture of the screen to another.
fn copy_rect(size: Size, from: &[u8], to: &mut [u8], rect: Rect) {
    let stride = 4 * usize::from(size.width);
    let (x0, x1) = (
        4 * usize::from(rect.x),
        4 * usize::from(rect.x + rect.width),
    );
    for y in usize::from(rect.y)..usize::from(rect.y + rect.height) {
        let row = y * stride;
        if let (Some(src), Some(dst)) =
            (from.get(row + x0..row + x1), to.get_mut(row + x0..row + x1))
        {
            dst.copy_from_slice(src);
        }
    }
}

/// Writes `pixels` (BGRX rows of `4 * rect.width` bytes) into a capture of the screen at
/// `rect`.
pub fn put_rect(size: Size, data: &mut [u8], rect: Rect, pixels: &[u8]) {
    let stride = 4 * usize::from(size.width);
    let width = 4 * usize::from(rect.width);
    let x0 = 4 * usize::from(rect.x);
    for (i, src) in pixels
        .chunks_exact(width.max(1))
        .take(usize::from(rect.height))
        .enumerate()
    {
        let row = (usize::from(rect.y) + i) * stride;
        if let Some(dst) = data.get_mut(row + x0..row + x0 + width) {
            dst.copy_from_slice(src);
        }
    }
}

/// The tiles whose row `y` differs between a capture of the screen and `row`, a fresh grab
/// of that row alone; marks them in `marked` (nothing when `row` is not a whole row).
pub fn mark_row_changes(size: Size, data: &[u8], y: u16, row: &[u8], marked: &mut [bool]) {
    let stride = 4 * usize::from(size.width);
    let Some(old) = data.get(usize::from(y) * stride..(usize::from(y) + 1) * stride) else {
        return;
    };
    if row.len() != stride {
        return;
    }
    let (across, _) = tile_grid(size);
    let ty = usize::from(y / TILE);
    let tile_bytes = 4 * usize::from(TILE);
    for tx in 0..across {
        let (a, b) = (tx * tile_bytes, ((tx + 1) * tile_bytes).min(stride));
        if old.get(a..b) != row.get(a..b)
            && let Some(m) = marked.get_mut(ty * across + tx)
        {
            *m = true;
        }
    }
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

    #[test]
    fn a_partial_grab_changes_only_the_tiles_it_touched_and_sync_catches_a_buffer_up() {
        let s = size(256, 128); // 4 × 2 tiles
        let first = Frame::first(s, vec![0; s.frame_bytes()]);
        // The buffer of the first frame, then a grab of (70, 10, 4, 2) with new pixels.
        let mut data = first.data.clone();
        let rect = Rect::new(70, 10, 4, 2);
        put_rect(s, &mut data, rect, &[7; 4 * 4 * 2]);
        let second = Frame::next_in(&first, data, &[rect]).unwrap();
        assert_eq!(second.changed_at, vec![1, 2, 1, 1, 1, 1, 1, 1]);
        // Pixels outside the regions are not compared: a difference there is not seen.
        let mut data = second.data.clone();
        data[0] = 1;
        assert!(Frame::next_in(&second, data, &[Rect::new(200, 100, 1, 1)]).is_err());
        // A buffer of generation 1 catches up with generation 2 by its changed tiles.
        let mut old = vec![0; s.frame_bytes()];
        sync(&second, &mut old, Some(1));
        assert_eq!(old, second.data);
        // A buffer of no known generation or the wrong size becomes a copy.
        let mut other = vec![5; 3];
        sync(&second, &mut other, Some(1));
        assert_eq!(other, second.data);
    }

    #[test]
    fn a_sampled_row_marks_the_tiles_where_it_changed() {
        let s = size(200, 130);
        let data = vec![0u8; s.frame_bytes()];
        let mut row = vec![0u8; 4 * 200];
        row[4 * 130] = 1; // column 130: the third tile
        let mut marked = vec![false; 12];
        mark_row_changes(s, &data, 70, &row, &mut marked); // row 70: the second tile row
        assert_eq!(marked.iter().filter(|m| **m).count(), 1);
        assert!(marked[4 + 2]);
        // A row past the screen or a short grab marks nothing and reads nothing past an end.
        mark_row_changes(s, &data, 500, &row, &mut marked);
        mark_row_changes(s, &data, 0, &row[..8], &mut marked);
        assert_eq!(marked.iter().filter(|m| **m).count(), 1);
        let mut tiles = vec![false; 12];
        mark_tiles(s, Rect::new(60, 60, 10, 10), &mut tiles);
        assert_eq!(tiles.iter().filter(|m| **m).count(), 4);
        mark_tiles(s, Rect::new(300, 300, 10, 10), &mut tiles);
        assert_eq!(tiles.iter().filter(|m| **m).count(), 4);
    }
}
