//! The updating half of a viewer's server: what the viewer asked for, what it already has,
//! and the updates that close the gap (see [`super::server`] for the whole).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tether_rfb::client::Screen;
use tether_rfb::server::{self as rfb, Encoder, Rect, SizeReason, Update};
use tether_transport::FrameWriter;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use tether_rfb::client::clipboard_action as action;

use super::backend::{CursorShape, Size};
use super::capture::{DeviceClipboard, SharedDesktop};
use super::clipboard;
use super::server::{Command, ServeError, ViewerOptions, send};
use super::tiles::{Frame, tile_grid, tiles_to_rects};

/// Fence flags: BlockBefore, BlockAfter, SyncNext (all honoured by processing in order).
const FENCE_SUPPORTED: u32 = 0b111;
/// Fence flag: a request the other side must answer.
const FENCE_REQUEST: u32 = 1 << 31;

/// ExtendedDesktopSize status: resizing is prohibited.
const RESIZE_PROHIBITED: u16 = 1;

/// The updating half: what this viewer asked for and what it already has.
pub(super) struct Updater {
    encoder: Encoder,
    writer: FrameWriter,
    frames: watch::Receiver<Arc<Frame>>,
    cursor: watch::Receiver<Option<Arc<CursorShape>>>,
    cursor_alive: bool,
    failure: Box<dyn Fn() -> Option<String> + Send + Sync>,
    interval: Duration,
    last_update: Option<Instant>,
    /// Regions asked for in full (non-incremental).
    full: Option<Rect>,
    /// Regions asked for incrementally.
    incremental: Option<Rect>,
    /// The region of continuous updates, while enabled.
    continuous: Option<Rect>,
    /// The size the viewer was told.
    viewer_size: Size,
    /// Per tile of the latest frame's grid, the generation this viewer has.
    known: Vec<u64>,
    known_size: Size,
    cursor_sent: Option<u32>,
    /// The frame the viewer's framebuffer holds, when it holds one whole (every tile sent as
    /// of that frame): what a scroll is copied from.
    last_sent: Option<Arc<Frame>>,
    /// An ExtendedDesktopSize rectangle announcing support is due.
    announce_size: bool,
    announced_size: bool,
    /// A SetDesktopSize waits for its answer.
    size_reply: bool,
    announced_continuous: bool,
    announced_fence: bool,
    /// The device's clipboard, while this viewer may read it and the display has one.
    device_clipboard: Option<watch::Receiver<DeviceClipboard>>,
    clipboard_to_device: bool,
    display: String,
    announced_clipboard: bool,
    /// The device's texts too big to send, and how many there were when the viewer came.
    too_big: Option<(Arc<AtomicU64>, u64)>,
    /// The viewer's Extended Clipboard capabilities (actions, largest text), once sent.
    viewer_caps: Option<(u32, Option<u32>)>,
    sent: Sent,
}

/// What the updating half sent.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Sent {
    /// Framebuffer updates.
    pub updates: u64,
    /// RFB bytes.
    pub bytes: u64,
    /// Device clipboard texts.
    pub clipboard: u64,
    /// Device clipboard texts dropped as over the cap while the viewer was allowed them.
    pub dropped_clipboard: u64,
}

/// The next change of `rx`: true for a new value, false once it closed; never while `None`.
async fn next_change<T>(rx: &mut Option<watch::Receiver<T>>) -> bool {
    match rx {
        Some(rx) => rx.changed().await.is_ok(),
        None => std::future::pending().await,
    }
}

impl Updater {
    pub(super) fn new(
        desktop: &Arc<SharedDesktop>,
        writer: FrameWriter,
        options: &ViewerOptions,
    ) -> Self {
        let frames = desktop.frames();
        // Only what changes from now on is sent unasked.
        let device_clipboard = options.clipboard_from_device.then(|| {
            let mut rx = desktop.device_clipboard();
            rx.mark_unchanged();
            rx
        });
        let size = frames.borrow().size;
        let weak = Arc::downgrade(desktop);
        Self {
            encoder: Encoder::new(),
            writer,
            frames,
            cursor: desktop.cursor(),
            cursor_alive: true,
            failure: Box::new(move || weak.upgrade().and_then(|d| d.failure())),
            interval: Duration::from_secs(1) / options.max_fps.max(1),
            last_update: None,
            full: None,
            incremental: None,
            continuous: None,
            viewer_size: size,
            known: Vec::new(),
            known_size: Size::default(),
            cursor_sent: None,
            last_sent: None,
            announce_size: false,
            announced_size: false,
            size_reply: false,
            announced_continuous: false,
            announced_fence: false,
            device_clipboard,
            clipboard_to_device: options.clipboard_to_device,
            display: desktop.display.clone(),
            announced_clipboard: false,
            too_big: options.clipboard_from_device.then(|| {
                let count = desktop.clipboard_too_big();
                let now = count.load(Ordering::Relaxed);
                (count, now)
            }),
            viewer_caps: None,
            sent: Sent::default(),
        }
    }

    /// Runs until the reading half is done or something fails; gives the writer back with
    /// what was sent.
    pub(super) async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
    ) -> (FrameWriter, Sent, Result<(), ServeError>) {
        let result = self.serve(&mut commands).await;
        if let Some((count, at_start)) = &self.too_big {
            self.sent.dropped_clipboard += count.load(Ordering::Relaxed).saturating_sub(*at_start);
        }
        (self.writer, self.sent, result)
    }

    async fn serve(&mut self, commands: &mut mpsc::Receiver<Command>) -> Result<(), ServeError> {
        loop {
            let frame = self.frames.borrow().clone();
            let cursor = self.cursor.borrow().clone();
            let due = self.deliverable(&frame, cursor.as_deref()).then(|| {
                self.last_update
                    .map_or_else(Instant::now, |t| t + self.interval)
            });
            tokio::select! {
                command = commands.recv() => match command {
                    Some(c) => self.handle(c).await?,
                    None => return Ok(()),
                },
                changed = self.frames.changed() => if changed.is_err() {
                    let why = (self.failure)().unwrap_or_else(|| "the display closed".into());
                    return Err(ServeError::CaptureStopped(why));
                },
                changed = self.cursor.changed(), if self.cursor_alive => if changed.is_err() {
                    self.cursor_alive = false;
                },
                changed = next_change(&mut self.device_clipboard) => if changed {
                    self.device_clipboard_changed(false).await?;
                } else {
                    self.device_clipboard = None;
                },
                () = tokio::time::sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => {
                    self.update(frame, cursor).await?;
                }
            }
        }
    }

    async fn write(&mut self, bytes: impl Into<Bytes>) -> Result<(), ServeError> {
        let bytes: Bytes = bytes.into();
        self.sent.bytes += bytes.len() as u64;
        send(&mut self.writer, bytes).await?;
        Ok(())
    }

    async fn handle(&mut self, command: Command) -> Result<(), ServeError> {
        match command {
            Command::Format(format) => self
                .encoder
                .set_format(format)
                .map_err(ServeError::PixelFormat)?,
            Command::Encodings(list) => {
                let had_cursor = self.encoder.preferences().cursor;
                self.encoder.set_encodings(&list);
                let prefs = self.encoder.preferences().clone();
                if prefs.cursor && !had_cursor {
                    self.cursor_sent = None;
                }
                // Each extension is confirmed once, the first time the viewer names it.
                if prefs.continuous_updates && !self.announced_continuous {
                    self.announced_continuous = true;
                    self.write(rfb::end_of_continuous_updates().to_vec())
                        .await?;
                }
                if prefs.fence && !self.announced_fence {
                    self.announced_fence = true;
                    self.write(rfb::fence(FENCE_REQUEST, &[])).await?;
                }
                if prefs.extended_desktop_size && !self.announced_size {
                    self.announced_size = true;
                    self.announce_size = true;
                }
                let clipboard_allowed = self.clipboard_to_device || self.device_clipboard.is_some();
                if prefs.extended_clipboard && clipboard_allowed && !self.announced_clipboard {
                    self.announced_clipboard = true;
                    let from_device = self.device_clipboard.is_some();
                    self.write(clipboard::caps(self.clipboard_to_device, from_device))
                        .await?;
                }
            }
            Command::Request {
                incremental,
                region,
            } => {
                if !incremental {
                    self.full = Some(union(self.full, region));
                } else if self.continuous.is_none() {
                    self.incremental = Some(union(self.incremental, region));
                }
            }
            Command::Continuous { enable, region } => {
                if enable {
                    self.continuous = Some(region);
                    self.incremental = None;
                } else {
                    self.continuous = None;
                    self.write(rfb::end_of_continuous_updates().to_vec())
                        .await?;
                }
            }
            Command::Fence { flags, payload } => {
                if flags & FENCE_REQUEST != 0 {
                    self.write(rfb::fence(flags & FENCE_SUPPORTED, &payload))
                        .await?;
                }
            }
            Command::SetDesktopSize => {
                if self.encoder.preferences().extended_desktop_size {
                    self.size_reply = true;
                }
            }
            Command::ClipboardCaps { actions, text_max } => {
                self.viewer_caps = Some((actions, text_max));
            }
            Command::ClipboardRequest => {
                if self.encoder.preferences().extended_clipboard {
                    self.write(clipboard::request()).await?;
                }
            }
            Command::ClipboardProvide => self.device_clipboard_changed(true).await?,
            Command::ClipboardPeek => {
                let has_text = self.device_text().is_some();
                self.write(clipboard::notify(has_text)).await?;
            }
        }
        Ok(())
    }

    /// The device's clipboard text as last read, when this viewer may have it.
    fn device_text(&self) -> Option<Arc<str>> {
        self.device_clipboard
            .as_ref()
            .and_then(|rx| rx.borrow().clone())
    }

    /// Sends the device's clipboard: as ServerCutText to a plain viewer, to an Extended
    /// Clipboard one as `provide` (when it asked, or takes that much unasked) or else as
    /// `notify`, so it can ask.
    async fn device_clipboard_changed(&mut self, asked: bool) -> Result<(), ServeError> {
        let Some(current) = self.device_text() else {
            return Ok(());
        };
        let text = &*current;
        let extended = self.encoder.preferences().extended_clipboard;
        let message = if extended {
            let (actions, text_max) = self.viewer_caps.unwrap_or((action::PROVIDE, None));
            let fits = text_max.is_none_or(|max| text.len() as u64 <= u64::from(max));
            if asked || (actions & action::PROVIDE != 0 && fits) {
                clipboard::provide(text)
            } else if actions & action::NOTIFY != 0 {
                return self.write(clipboard::notify(true)).await;
            } else {
                return Ok(());
            }
        } else {
            rfb::cut_text(text)
        };
        clipboard::log_from_device(&self.display, text, extended);
        self.sent.clipboard += 1;
        self.write(message).await
    }

    /// Tiles of `frame` inside `region` this viewer has not been sent, as rectangles.
    fn dirty(&self, frame: &Frame, region: Rect) -> Vec<Rect> {
        let region = region.intersect(&self.viewer_size.bounds());
        if region.is_empty() {
            return Vec::new();
        }
        let (across, _) = tile_grid(frame.size);
        let fresh = self.known_size != frame.size;
        let marked: Vec<bool> = frame
            .changed_at
            .iter()
            .enumerate()
            .map(|(i, stamp)| {
                let unseen = fresh || self.known.get(i).is_none_or(|k| stamp > k);
                unseen
                    && !frame
                        .tile_rect(i % across, i / across)
                        .intersect(&region)
                        .is_empty()
            })
            .collect();
        tiles_to_rects(frame.size, &marked)
            .into_iter()
            .map(|r| r.intersect(&region))
            .filter(|r| !r.is_empty())
            .collect()
    }

    fn wanted(&self) -> Option<Rect> {
        match (self.incremental, self.continuous) {
            (Some(a), Some(b)) => Some(a.union(&b)),
            (a, b) => a.or(b),
        }
    }

    fn cursor_changed(&self, cursor: Option<&CursorShape>) -> bool {
        self.encoder.preferences().cursor
            && cursor.is_some_and(|c| Some(c.serial) != self.cursor_sent)
    }

    /// Whether an update is due now (subject to the frame interval).
    fn deliverable(&self, frame: &Frame, cursor: Option<&CursorShape>) -> bool {
        let Some(wanted) = self.full.or(self.wanted()) else {
            return false;
        };
        let prefs = self.encoder.preferences();
        let resizable = prefs.desktop_size || prefs.extended_desktop_size;
        self.full.is_some()
            || self.size_reply
            || self.announce_size
            || (resizable && frame.size != self.viewer_size)
            || self.cursor_changed(cursor)
            || !self.dirty(frame, wanted).is_empty()
    }

    /// Builds, encodes and sends one update from `frame`.
    async fn update(
        &mut self,
        frame: Arc<Frame>,
        cursor: Option<Arc<CursorShape>>,
    ) -> Result<(), ServeError> {
        let mut update = Update::new();
        let prefs = self.encoder.preferences().clone();
        let screen = |size: Size| Screen {
            id: 0,
            x: 0,
            y: 0,
            width: size.width,
            height: size.height,
            flags: 0,
        };
        if frame.size != self.viewer_size && (prefs.extended_desktop_size || prefs.desktop_size) {
            let size = frame.size;
            if prefs.extended_desktop_size {
                rfb::extended_desktop_size(
                    SizeReason::Server,
                    0,
                    size.width,
                    size.height,
                    &[screen(size)],
                    update.body(),
                );
            } else {
                rfb::desktop_size(size.width, size.height, update.body());
            }
            update.added(1);
            self.viewer_size = size;
            self.announce_size = false;
            // Everything the viewer had is gone with the old size.
            self.full = Some(size.bounds());
        }
        if self.size_reply || self.announce_size {
            let (reason, status) = if self.size_reply {
                (SizeReason::ThisClient, RESIZE_PROHIBITED)
            } else {
                (SizeReason::Server, 0)
            };
            let size = self.viewer_size;
            rfb::extended_desktop_size(
                reason,
                status,
                size.width,
                size.height,
                &[screen(size)],
                update.body(),
            );
            update.added(1);
            self.size_reply = false;
            self.announce_size = false;
        }
        if let Some(shape) = cursor.as_deref().filter(|c| self.cursor_changed(Some(c))) {
            rfb::cursor(
                shape.hot_x,
                shape.hot_y,
                shape.width,
                shape.height,
                &shape.argb,
                self.encoder.format(),
                update.body(),
            );
            update.added(1);
            self.cursor_sent = Some(shape.serial);
        }
        let bounds = self.viewer_size.bounds();
        let asked = match (self.full, self.wanted()) {
            (Some(f), Some(w)) => Some(f.union(&w)),
            (f, w) => f.or(w),
        };
        let covers_screen = asked.is_some_and(|a| a.intersect(&bounds) == bounds);
        // A non-incremental request is answered with every pixel asked for, whatever the
        // viewer had.
        let asked_full = self.full.is_some();
        let mut rects = match self.full.take() {
            Some(full) => {
                let full = full.intersect(&self.viewer_size.bounds());
                let mut rects: Vec<Rect> = if full.is_empty() {
                    Vec::new()
                } else {
                    vec![full]
                };
                // What changed elsewhere in an incremental region goes along.
                if let Some(wanted) = self.wanted() {
                    rects.extend(
                        self.dirty(&frame, wanted)
                            .into_iter()
                            .filter(|r| r.intersect(&full) != *r),
                    );
                }
                rects
            }
            None => self
                .wanted()
                .map(|w| self.dirty(&frame, w))
                .unwrap_or_default(),
        };
        rects.retain(|r| !r.is_empty());
        self.incremental = None;
        self.mark_known(&frame, &rects);
        // Changes are measured against, and scrolls copied from, what the viewer holds: so
        // only against a frame it holds whole.
        let prev = self
            .last_sent
            .take()
            .filter(|p| p.size == frame.size && !asked_full);
        self.last_sent =
            (covers_screen && frame.size == self.viewer_size && self.knows_all(&frame))
                .then(|| frame.clone());
        let encoder = std::mem::take(&mut self.encoder);
        let encoded = tokio::task::spawn_blocking(move || {
            let mut encoder = encoder;
            let image = frame.image();
            match &prev {
                Some(prev) => encoder.encode_changes(&prev.image(), &image, &rects, &mut update),
                None => {
                    for rect in rects {
                        encoder.encode(&image, rect, &mut update);
                    }
                }
            }
            (encoder, update.finish())
        })
        .await;
        let (encoder, bytes) = match encoded {
            Ok(done) => done,
            Err(e) => {
                return Err(ServeError::CaptureStopped(format!(
                    "the encoder failed: {e}"
                )));
            }
        };
        self.encoder = encoder;
        self.last_update = Some(Instant::now());
        self.sent.updates += 1;
        self.write(bytes).await
    }

    /// Whether the viewer has every tile of `frame` as it is there.
    fn knows_all(&self, frame: &Frame) -> bool {
        self.known_size == frame.size
            && self.known.len() == frame.changed_at.len()
            && self
                .known
                .iter()
                .zip(&frame.changed_at)
                .all(|(k, c)| k >= c)
    }

    /// Records that the tiles under `rects` were sent as they are in `frame`.
    fn mark_known(&mut self, frame: &Frame, rects: &[Rect]) {
        if self.known_size != frame.size {
            self.known = vec![0; frame.changed_at.len()];
            self.known_size = frame.size;
        }
        let across = frame.tiles_across();
        for (i, stamp) in frame.changed_at.iter().enumerate() {
            let tile = frame.tile_rect(i % across, i / across);
            if rects.iter().any(|r| !r.intersect(&tile).is_empty())
                && let Some(known) = self.known.get_mut(i)
            {
                *known = *stamp;
            }
        }
    }
}

fn union(a: Option<Rect>, b: Rect) -> Rect {
    a.map_or(b, |a| a.union(&b))
}
