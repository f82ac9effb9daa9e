//! Playing a desktop recording back: its records decoded in order into the framebuffer the
//! technician saw ([`Player`]), video frames at a fixed rate on one canvas through resizes
//! ([`Frames`]), and seeking through snapshots kept every few seconds ([`Timeline`]), as
//! Guacamole's player does.
//!
//! RFB's zlib streams run across the whole connection, so a recording is always decoded from
//! its start once; a [`Timeline`] keeps the decoder's whole state (framebuffer and zlib
//! windows, [`tether_rfb::decode::Snapshot`]) every `every_ms`, and a seek resumes from the
//! nearest one before the target instead of from the start.

use tether_rfb::decode::{DecodeError, Decoder, Event, Framebuffer, Snapshot};
use tether_rfb::server::Rect;

use crate::desktop::{Reader, TO_DEVICE, TO_VIEWER};

/// Why a recording cannot be played past some point.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("failed to decode the desktop recording at {ms} ms: {source}")]
pub struct PlayError {
    /// Where (milliseconds from the channel's start).
    pub ms: u32,
    /// What the decoder found.
    #[source]
    pub source: DecodeError,
}

/// A recording's records applied in order to a decoder.
#[derive(Debug)]
pub struct Player<'a> {
    reader: &'a Reader,
    next: usize,
    decoder: Decoder,
    /// Rectangles changed since [`Player::take_damage`] was last called.
    damage: Vec<Rect>,
    resized: bool,
}

impl<'a> Player<'a> {
    /// A player at the start of `reader`'s recording.
    pub fn new(reader: &'a Reader) -> Self {
        Self {
            reader,
            next: 0,
            decoder: Decoder::default(),
            damage: Vec::new(),
            resized: false,
        }
    }

    /// The decoder, with the framebuffer as of the records applied so far.
    pub fn decoder(&self) -> &Decoder {
        &self.decoder
    }

    /// The time of the last record applied (0 before any).
    pub fn position_ms(&self) -> u32 {
        self.next
            .checked_sub(1)
            .and_then(|i| self.reader.records.get(i))
            .map_or(0, |r| r.ms)
    }

    /// The time of the next record, `None` at the end.
    pub fn next_ms(&self) -> Option<u32> {
        self.reader.records.get(self.next).map(|r| r.ms)
    }

    /// Whether every record has been applied.
    pub fn is_done(&self) -> bool {
        self.next >= self.reader.records.len()
    }

    /// Applies the next record; false at the end.
    pub fn step(&mut self) -> Result<bool, PlayError> {
        let Some(record) = self.reader.records.get(self.next) else {
            return Ok(false);
        };
        self.next += 1;
        match record.way {
            TO_DEVICE => self.decoder.push_viewer(&record.bytes),
            TO_VIEWER => {
                let (damage, resized) = (&mut self.damage, &mut self.resized);
                self.decoder
                    .feed(&record.bytes, |e| {
                        if let Event::Update {
                            damage: d,
                            resized: r,
                            ..
                        } = e
                        {
                            damage.extend_from_slice(d);
                            *resized |= *r;
                        }
                    })
                    .map_err(|source| PlayError {
                        ms: record.ms,
                        source,
                    })?;
            }
            _ => {}
        }
        Ok(true)
    }

    /// Applies every record up to and including `ms`.
    pub fn advance_to(&mut self, ms: u32) -> Result<(), PlayError> {
        while self.next_ms().is_some_and(|t| t <= ms) {
            self.step()?;
        }
        Ok(())
    }

    /// The rectangles changed since the last call, and whether the screen was resized.
    pub fn take_damage(&mut self) -> (Vec<Rect>, bool) {
        (
            std::mem::take(&mut self.damage),
            std::mem::take(&mut self.resized),
        )
    }
}

/// The recording's length: the time of its last record.
pub fn duration_ms(reader: &Reader) -> u32 {
    reader.records.last().map_or(0, |r| r.ms)
}

/// Every framebuffer size the recording shows, in order (the first is ServerInit's); when a
/// decoding error stops it, the sizes up to there.
pub fn sizes(reader: &Reader) -> (Vec<(u16, u16)>, Option<PlayError>) {
    let mut player = Player::new(reader);
    let mut sizes: Vec<(u16, u16)> = Vec::new();
    loop {
        match player.step() {
            Ok(true) => {}
            Ok(false) => return (sizes, None),
            Err(e) => return (sizes, Some(e)),
        }
        let fb = player.decoder().framebuffer();
        let size = (fb.width, fb.height);
        if player.decoder().is_ready() && sizes.last() != Some(&size) {
            sizes.push(size);
        }
    }
}

/// The video canvas for a recording of these sizes: wide and tall enough for every one of
/// them, rounded up to even numbers (H.264 in 4:2:0 needs them).
pub fn canvas(sizes: &[(u16, u16)]) -> (u16, u16) {
    let w = sizes.iter().map(|s| s.0).max().unwrap_or(0).max(2);
    let h = sizes.iter().map(|s| s.1).max().unwrap_or(0).max(2);
    (w.saturating_add(w % 2), h.saturating_add(h % 2))
}

/// Writes `fb` centred on a black `canvas` as RGB bytes into `out` (replacing it).
pub fn compose(fb: &Framebuffer, canvas: (u16, u16), out: &mut Vec<u8>) {
    let (cw, ch) = (usize::from(canvas.0), usize::from(canvas.1));
    out.clear();
    out.resize(3 * cw * ch, 0);
    let (w, h) = (
        usize::from(fb.width).min(cw),
        usize::from(fb.height).min(ch),
    );
    let (left, top) = ((cw - w) / 2, (ch - h) / 2);
    for y in 0..h {
        let row = &fb.pixels[y * usize::from(fb.width)..][..w];
        let at = 3 * ((top + y) * cw + left);
        for (px, dst) in row.iter().zip(out[at..at + 3 * w].chunks_exact_mut(3)) {
            dst.copy_from_slice(&[(px >> 16) as u8, (px >> 8) as u8, *px as u8]);
        }
    }
}

/// Video frames of a recording at a fixed rate: frame `i` shows the screen as of
/// `i / fps` seconds (the last record at or before it), so a still screen repeats and changes
/// faster than the rate are dropped. Each frame is the framebuffer with the cursor drawn,
/// centred on [`canvas`] of every size the recording shows.
#[derive(Debug)]
pub struct Frames<'a> {
    player: Player<'a>,
    fps: u32,
    canvas: (u16, u16),
    index: u64,
    count: u64,
    cursor: bool,
    /// The error that stopped decoding; frames after it repeat the last good screen.
    pub error: Option<PlayError>,
}

impl<'a> Frames<'a> {
    /// Frames of `reader` at `fps` (at least 1), on a canvas fitting `sizes`
    /// (from [`sizes`]), with the cursor drawn when `cursor`.
    pub fn new(reader: &'a Reader, fps: u32, sizes: &[(u16, u16)], cursor: bool) -> Self {
        let fps = fps.max(1);
        let count = u64::from(duration_ms(reader)) * u64::from(fps) / 1000 + 1;
        Self {
            player: Player::new(reader),
            fps,
            canvas: canvas(sizes),
            index: 0,
            count,
            cursor,
            error: None,
        }
    }

    /// The canvas (width, height).
    pub fn canvas(&self) -> (u16, u16) {
        self.canvas
    }

    /// How many frames there are.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Writes the next frame's RGB bytes into `out`; false after the last.
    pub fn next_frame(&mut self, out: &mut Vec<u8>) -> bool {
        if self.index >= self.count {
            return false;
        }
        let ms = self.index * 1000 / u64::from(self.fps);
        self.index += 1;
        if self.error.is_none()
            && let Err(e) = self
                .player
                .advance_to(u32::try_from(ms).unwrap_or(u32::MAX))
        {
            self.error = Some(e);
        }
        let decoder = self.player.decoder();
        if self.cursor {
            compose(&decoder.composed(), self.canvas, out);
        } else {
            compose(decoder.framebuffer(), self.canvas, out);
        }
        true
    }

    /// The player behind the frames.
    pub fn player(&self) -> &Player<'a> {
        &self.player
    }
}

/// A recording decoded once from the start, with the decoder's state kept every `every_ms`,
/// so that seeking decodes at most `every_ms` of records.
#[derive(Debug)]
pub struct Timeline<'a> {
    reader: &'a Reader,
    /// `(ms, records applied, state)`, in order; the first is the start.
    snapshots: Vec<(u32, usize, Snapshot)>,
    /// The error that stopped decoding, if any: seeking past it shows the last good screen.
    pub error: Option<PlayError>,
}

impl<'a> Timeline<'a> {
    /// Decodes `reader` from the start, keeping a snapshot at least `every_ms` apart (at
    /// record boundaries).
    pub fn build(reader: &'a Reader, every_ms: u32) -> Self {
        let mut player = Player::new(reader);
        let mut snapshots: Vec<(u32, usize, Snapshot)> = vec![(0, 0, player.decoder.snapshot())];
        let mut error = None;
        loop {
            match player.step() {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => {
                    error = Some(e);
                    break;
                }
            }
            let ms = player.position_ms();
            let last: u32 = snapshots.last().map_or(0, |s| s.0);
            if ms >= last.saturating_add(every_ms) && player.decoder.is_ready() {
                snapshots.push((ms, player.next, player.decoder.snapshot()));
            }
        }
        Self {
            reader,
            snapshots,
            error,
        }
    }

    /// How many snapshots are kept.
    pub fn snapshots(&self) -> usize {
        self.snapshots.len()
    }

    /// A player showing the screen as of `ms`: resumed from the nearest snapshot at or before
    /// it, then advanced record by record.
    pub fn seek(&self, ms: u32) -> Player<'a> {
        let i = self
            .snapshots
            .partition_point(|s| s.0 <= ms)
            .saturating_sub(1);
        let mut player = Player::new(self.reader);
        if let Some((_, next, snapshot)) = self.snapshots.get(i) {
            player.next = *next;
            player.decoder = Decoder::resume(snapshot);
        }
        // An error here was met (and kept) by build; the screen stays as it was before it.
        let _ = player.advance_to(ms);
        player.take_damage();
        player
    }
}

#[cfg(test)]
#[path = "playback_tests.rs"]
mod tests;
