//! CopyRect (encoding 1): finding the rows of a rectangle that a vertical scroll moved, and
//! the rectangle that has the viewer copy them from where it already has them.

use std::collections::HashMap;

use crate::encoding;
use crate::server::{Image, Rect, Update, rect_header};

/// Fewer moved rows than this are not worth a CopyRect.
const MIN_ROWS: usize = 4;
/// Shifts checked row by row after the vote: the work stays O(rows) whatever the content.
const CANDIDATES: usize = 3;

/// A vertical scroll between two frames: the rows of `dst` in the current frame are those of
/// [`Scroll::src`] in the previous one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scroll {
    /// Rows the content moved: positive when it moved down, negative when up.
    pub dy: i32,
    /// Where the moved rows are now: a band of the searched rectangle's rows, its full width.
    pub dst: Rect,
}

impl Scroll {
    /// Where the moved rows were in the previous frame (the CopyRect's source).
    pub fn src(&self) -> Rect {
        let y = i32::from(self.dst.y) - self.dy;
        Rect {
            y: u16::try_from(y).unwrap_or_default(),
            ..self.dst
        }
    }

    /// The parts of `rect` above and below [`Scroll::dst`] (either may be empty): what is still
    /// to be sent from the current frame once the viewer has copied the band.
    pub fn exposed(&self, rect: Rect) -> [Rect; 2] {
        let top = self.dst.y.saturating_sub(rect.y).min(rect.height);
        let dst_end = u32::from(self.dst.y) + u32::from(self.dst.height);
        let rect_end = u32::from(rect.y) + u32::from(rect.height);
        let below = rect_end.saturating_sub(dst_end).min(u32::from(rect.height)) as u16;
        [
            Rect::new(rect.x, rect.y, rect.width, top),
            Rect::new(
                rect.x,
                (rect_end - u32::from(below)) as u16,
                rect.width,
                below,
            ),
        ]
    }
}

/// Finds the vertical scroll that explains most of `rect`'s rows: the rows of `cur` that are
/// rows of `prev` moved by the same distance, as the longest band of such rows.
///
/// Rows are hashed once each; rows that changed and whose content occurs once in `prev` vote
/// for the distance they moved; the few best-supported distances are then checked row by row,
/// comparing bytes, so a hash collision never produces a wrong copy. The padding byte of BGRX
/// is ignored. `None` when no band of at least four rows and a quarter of the rectangle moved
/// (including when nothing changed, or everything did with no trace of `prev`).
pub fn detect_vertical_scroll(prev: &Image<'_>, cur: &Image<'_>, rect: Rect) -> Option<Scroll> {
    let rect = rect.intersect(&prev.bounds()).intersect(&cur.bounds());
    let h = usize::from(rect.height);
    if h < MIN_ROWS {
        return None;
    }
    fn row<'a>(image: &'a Image<'_>, rect: Rect, i: usize) -> &'a [u8] {
        image.row(rect.x, rect.y + i as u16, rect.width)
    }
    let old: Vec<u64> = (0..h).map(|i| row_hash(row(prev, rect, i))).collect();
    let new: Vec<u64> = (0..h).map(|i| row_hash(row(cur, rect, i))).collect();

    // Rows of `prev` by content; content seen twice (blank lines, borders) says nothing.
    let mut unique: HashMap<u64, Option<usize>> = HashMap::with_capacity(h);
    for (i, &v) in old.iter().enumerate() {
        unique
            .entry(v)
            .and_modify(|seen| *seen = None)
            .or_insert(Some(i));
    }
    let mut votes: HashMap<i32, usize> = HashMap::new();
    for (i, &v) in new.iter().enumerate() {
        if v == old[i] {
            continue;
        }
        if let Some(Some(j)) = unique.get(&v) {
            *votes.entry(i as i32 - *j as i32).or_default() += 1;
        }
    }
    let mut candidates: Vec<(i32, usize)> = votes.into_iter().collect();
    candidates.sort_unstable_by_key(|&(dy, n)| (std::cmp::Reverse(n), dy.unsigned_abs(), dy));
    candidates.truncate(CANDIDATES);

    let mut best: Option<(usize, usize, i32)> = None;
    for (dy, _) in candidates {
        let (start, len) = longest_band(h, dy, |i, j| {
            new[i] == old[j] && same_pixels(row(cur, rect, i), row(prev, rect, j))
        });
        let changed = (start..start + len).any(|i| new[i] != old[i]);
        let enough = len >= MIN_ROWS && len * 4 >= h && changed;
        if enough && best.is_none_or(|(_, l, _)| len > l) {
            best = Some((start, len, dy));
        }
    }
    best.map(|(start, len, dy)| Scroll {
        dy,
        dst: Rect::new(rect.x, rect.y + start as u16, rect.width, len as u16),
    })
}

/// The smallest rectangle inside `rect` holding every pixel where `cur` differs from `prev`
/// (padding bytes ignored); `None` when none does. Both images must have the same size.
pub fn changed_bounds(prev: &Image<'_>, cur: &Image<'_>, rect: Rect) -> Option<Rect> {
    let rect = rect.intersect(&prev.bounds()).intersect(&cur.bounds());
    let differs = |y: u16| {
        !same_pixels(
            prev.row(rect.x, y, rect.width),
            cur.row(rect.x, y, rect.width),
        )
    };
    let rows = rect.y..rect.y + rect.height;
    let top = rows.clone().find(|&y| differs(y))?;
    let bottom = rows.rev().find(|&y| differs(y)).unwrap_or(top);
    let (mut left, mut right) = (rect.width, 0u16);
    for y in top..=bottom {
        let (a, b) = (
            prev.row(rect.x, y, rect.width),
            cur.row(rect.x, y, rect.width),
        );
        let pixel_differs = |i: &u16| {
            let at = 4 * usize::from(*i);
            a.get(at..at + 3) != b.get(at..at + 3)
        };
        if let Some(first) = (0..left).find(pixel_differs) {
            left = first;
        }
        if let Some(last) = (right..rect.width).rev().find(pixel_differs) {
            right = last;
        }
    }
    let right = right.max(left);
    Some(Rect::new(
        rect.x + left,
        top,
        right - left + 1,
        bottom - top + 1,
    ))
}

/// The longest run `(start, len)` of rows `i` of `0..h` whose source row `i − dy` is inside
/// `0..h` and for which `same(i, i − dy)`.
fn longest_band(h: usize, dy: i32, mut same: impl FnMut(usize, usize) -> bool) -> (usize, usize) {
    let lo = dy.max(0) as usize;
    let hi = (h as i64 + i64::from(dy.min(0))).max(0) as usize;
    let (mut best, mut run_start) = ((0, 0), None);
    for i in lo..hi.max(lo) {
        let j = (i as i64 - i64::from(dy)) as usize;
        if same(i, j) {
            let s = *run_start.get_or_insert(i);
            if i + 1 - s > best.1 {
                best = (s, i + 1 - s);
            }
        } else {
            run_start = None;
        }
    }
    best
}

/// A row's hash, ignoring each pixel's padding byte.
fn row_hash(row: &[u8]) -> u64 {
    const K: u64 = 0x517C_C1B7_2722_0A95;
    let mut h = row.len() as u64;
    let mut chunks = row.chunks_exact(8);
    for c in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(c);
        let v = u64::from_le_bytes(word) & 0x00FF_FFFF_00FF_FFFF;
        h = (h.rotate_left(5) ^ v).wrapping_mul(K);
    }
    for px in chunks.remainder().chunks(4) {
        let v = px
            .iter()
            .take(3)
            .fold(0u64, |a, &b| (a << 8) | u64::from(b));
        h = (h.rotate_left(5) ^ v).wrapping_mul(K);
    }
    h
}

/// Whether two BGRX rows hold the same colours.
fn same_pixels(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len()
        && a.chunks(4)
            .zip(b.chunks(4))
            .all(|(p, q)| p.get(..3) == q.get(..3))
}

/// Appends a CopyRect rectangle to `update`: the viewer copies the `dst`-sized area at
/// (`src_x`, `src_y`) of its framebuffer to `dst`. Nothing for an empty `dst`.
///
/// The viewer copies from what it has when it reaches this rectangle, so put it before any
/// other rectangle of the same update that overlaps the source, and send it only to a viewer
/// that announced CopyRect ([`crate::server::Preferences::copy_rect`]).
pub fn copy_rect(src_x: u16, src_y: u16, dst: Rect, update: &mut Update) {
    if dst.is_empty() {
        return;
    }
    let out = update.body();
    rect_header(dst, encoding::COPY_RECT, out);
    out.extend_from_slice(&src_x.to_be_bytes());
    out.extend_from_slice(&src_y.to_be_bytes());
    update.added(1);
}

#[cfg(test)]
#[path = "copy_tests.rs"]
mod tests;
