//! One capture per display, shared by all its viewers: [`Desktops::attach`] opens the
//! display's back-end the first time a viewer asks for it and hands later viewers the same
//! [`SharedDesktop`]; the last viewer to leave shuts it down.
//!
//! A shared desktop owns two threads, three with a clipboard. The capture thread waits for change hints, grabs the
//! screen at most at the frame-rate cap, compares the capture with the previous one in tiles
//! and publishes a new [`Frame`] (in a `watch` channel) only when some tile changed; it also
//! publishes the cursor's shape when the back-end says it changed. The input thread applies
//! the viewers' keys and pointer events in the order they came, and releases whatever a
//! viewer still held when it leaves, so no key stays stuck on the device. The clipboard
//! thread puts the technicians' text on the device's clipboard and publishes the text other
//! applications put there (in a `watch` channel), which each viewer sends on if its session
//! lets the device's clipboard reach the technician.
//!
//! Pacing: with damage reports ([`next_look`]), the capture grabs only the tiles the damage
//! touches, as soon as the frame-rate cap allows after a hint, and polls every
//! [`Pacing::idle`] regardless (compositors draw without reporting damage) by sampling every
//! 32nd row and grabbing the tiles where a sampled row changed. Without damage reports
//! the whole screen is grabbed and compared at the full rate.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use super::backend::{Backend, CursorShape, DesktopError, Screen};
use tether_rfb::server::Rect;

use super::tiles::{
    Frame, mark_row_changes, mark_tiles, put_rect, sync, tile_grid, tiles_to_rects,
};

mod input;
mod pacing;

pub use input::InputCommand;
use input::input_loop;
pub use pacing::{Pacing, next_look};

/// The input commands queued per display before viewers wait.
const INPUT_QUEUE: usize = 256;

/// Clipboard texts queued for the device before viewers wait.
const CLIPBOARD_QUEUE: usize = 4;

/// The device's clipboard text as the clipboard thread last read it, `None` before any
/// change.
pub type DeviceClipboard = Option<Arc<str>>;

/// A display's capture and input, shared by its viewers.
pub struct SharedDesktop {
    /// The display's name.
    pub display: String,
    /// How the screen is captured, for logs.
    pub method: &'static str,
    frames: watch::Receiver<Arc<Frame>>,
    cursor: watch::Receiver<Option<Arc<CursorShape>>>,
    input: mpsc::Sender<InputCommand>,
    clipboard: Option<mpsc::Sender<String>>,
    device_clipboard: watch::Receiver<DeviceClipboard>,
    clipboard_too_big: Arc<AtomicU64>,
    failure: Arc<Mutex<Option<String>>>,
    stop: Arc<AtomicBool>,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
    next_viewer: AtomicU64,
}

impl std::fmt::Debug for SharedDesktop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedDesktop")
            .field("display", &self.display)
            .field("method", &self.method)
            .finish_non_exhaustive()
    }
}

impl SharedDesktop {
    /// The latest frames; `changed()` wakes on each new one and fails once the capture
    /// stopped (see [`SharedDesktop::failure`]).
    pub fn frames(&self) -> watch::Receiver<Arc<Frame>> {
        self.frames.clone()
    }

    /// The cursor's shape as it changes.
    pub fn cursor(&self) -> watch::Receiver<Option<Arc<CursorShape>>> {
        self.cursor.clone()
    }

    /// The device's clipboard as other applications change it; `changed()` fails when the
    /// display has no clipboard (or its thread stopped).
    pub fn device_clipboard(&self) -> watch::Receiver<DeviceClipboard> {
        self.device_clipboard.clone()
    }

    /// How many of the device's clipboard texts were too big to send, so far.
    pub fn clipboard_too_big(&self) -> Arc<AtomicU64> {
        self.clipboard_too_big.clone()
    }

    /// Queues text for the device's clipboard; false when the display has no clipboard.
    pub async fn set_clipboard(&self, text: String) -> bool {
        match &self.clipboard {
            Some(c) => c.send(text).await.is_ok(),
            None => false,
        }
    }

    /// Why the capture stopped, once it did.
    pub fn failure(&self) -> Option<String> {
        self.failure.lock().ok().and_then(|f| f.clone())
    }

    /// A number for a new viewer, unique on this display.
    pub fn viewer_id(&self) -> u64 {
        self.next_viewer.fetch_add(1, Ordering::Relaxed)
    }

    /// Queues input for the device (waits while the queue is full). Input for a display
    /// whose input thread has stopped is dropped.
    pub async fn input(&self, command: InputCommand) {
        if self.input.send(command).await.is_err() {
            debug!(display = %self.display, "Dropped input for a display whose input stopped");
        }
    }

    /// Leaves the desktop: the last viewer to leave stops its threads and waits for them.
    pub async fn leave(self: Arc<Self>) {
        if let Some(desktop) = Arc::into_inner(self) {
            let threads = desktop
                .threads
                .lock()
                .map(|mut t| std::mem::take(&mut *t))
                .unwrap_or_default();
            let name = desktop.display.clone();
            drop(desktop);
            let joined = tokio::task::spawn_blocking(move || {
                for thread in threads {
                    let _ = thread.join();
                }
            })
            .await;
            if joined.is_ok() {
                info!(display = %name, "Stopped capturing a display its last viewer left");
            }
        }
    }
}

impl Drop for SharedDesktop {
    fn drop(&mut self) {
        // The capture thread sees this within one wait; the input thread ends when the
        // sender (dropped with `self`) is gone. `leave` joins them; a cancelled viewer's
        // drop lets them finish alone.
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The displays being captured, by name, each shared by its viewers.
#[derive(Clone, Default)]
pub struct Desktops {
    open: Arc<tokio::sync::Mutex<HashMap<String, Weak<SharedDesktop>>>>,
}

impl std::fmt::Debug for Desktops {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Desktops").finish_non_exhaustive()
    }
}

impl Desktops {
    /// The display `key`'s shared desktop: the one already capturing, or a new one from
    /// `open` (called on a blocking thread) paced by `pacing`.
    pub async fn attach<F>(
        &self,
        key: &str,
        pacing: Pacing,
        open: F,
    ) -> Result<Arc<SharedDesktop>, DesktopError>
    where
        F: FnOnce() -> Result<Backend, DesktopError> + Send + 'static,
    {
        let mut displays = self.open.lock().await;
        if let Some(desktop) = displays.get(key).and_then(Weak::upgrade) {
            return Ok(desktop);
        }
        displays.retain(|_, d| d.strong_count() > 0);
        let started = tokio::task::spawn_blocking(move || start(open, pacing))
            .await
            .map_err(|e| DesktopError::Open {
                display: key.to_owned(),
                reason: format!("the capture failed to start: {e}"),
            })??;
        let desktop = Arc::new(started);
        displays.insert(key.to_owned(), Arc::downgrade(&desktop));
        Ok(desktop)
    }

    /// How many displays are being captured now.
    #[cfg(test)]
    pub async fn capturing(&self) -> usize {
        let displays = self.open.lock().await;
        displays.values().filter(|d| d.strong_count() > 0).count()
    }
}

/// Opens the back-end, captures the first frame and starts the threads.
fn start<F>(open: F, pacing: Pacing) -> Result<SharedDesktop, DesktopError>
where
    F: FnOnce() -> Result<Backend, DesktopError>,
{
    let Backend {
        display: name,
        mut screen,
        input,
        clipboard,
        method,
    } = open()?;
    let size = screen.size();
    let started = Instant::now();
    let mut data = Vec::new();
    screen.grab(size.bounds(), &mut data)?;
    let capture_ms = started.elapsed().as_secs_f64() * 1000.0;
    let cursor = screen.cursor()?.map(Arc::new);
    info!(display = %name, method, width = size.width, height = size.height, capture_ms, "Started capturing a display");
    let (frames_tx, frames) = watch::channel(Arc::new(Frame::first(size, data)));
    let (cursor_tx, cursor_rx) = watch::channel(cursor);
    let (input_tx, input_rx) = mpsc::channel(INPUT_QUEUE);
    let stop = Arc::new(AtomicBool::new(false));
    let failure = Arc::new(Mutex::new(None));
    let capture = {
        let (stop, failure, thread_name) = (stop.clone(), failure.clone(), name.clone());
        std::thread::Builder::new()
            .name("desktop-capture".into())
            .spawn(move || {
                let result = capture_loop(screen.as_mut(), &pacing, &frames_tx, &cursor_tx, &stop);
                if let Err(e) = result {
                    warn!(display = %thread_name, error = %tether_telemetry::error_chain(&e), "Lost a display while capturing it");
                    if let Ok(mut f) = failure.lock() {
                        *f = Some(e.to_string());
                    }
                }
            })
            .map_err(|e| DesktopError::Open {
                display: name.clone(),
                reason: format!("failed to start the capture thread: {e}"),
            })?
    };
    let input_thread = {
        let thread_name = name.clone();
        std::thread::Builder::new()
            .name("desktop-input".into())
            .spawn(move || input_loop(&thread_name, input, input_rx))
            .map_err(|e| DesktopError::Open {
                display: name.clone(),
                reason: format!("failed to start the input thread: {e}"),
            })?
    };
    let mut threads = vec![capture, input_thread];
    let (device_tx, device_clipboard) = watch::channel(None);
    let clipboard_too_big = Arc::new(AtomicU64::new(0));
    let clipboard = match clipboard {
        None => None,
        Some(mut backend) => {
            let (tx, mut rx) = mpsc::channel(CLIPBOARD_QUEUE);
            let (stop, thread_name) = (stop.clone(), name.clone());
            let too_big = clipboard_too_big.clone();
            let thread = std::thread::Builder::new()
                .name("desktop-clipboard".into())
                .spawn(move || {
                    let result =
                        super::clipboard::thread_loop(backend.as_mut(), &mut rx, &device_tx, &too_big, &stop);
                    if let Err(e) = result {
                        warn!(display = %thread_name, error = %tether_telemetry::error_chain(&e), "Lost the display's clipboard");
                    }
                })
                .map_err(|e| DesktopError::Open {
                    display: name.clone(),
                    reason: format!("failed to start the clipboard thread: {e}"),
                })?;
            threads.push(thread);
            Some(tx)
        }
    };
    Ok(SharedDesktop {
        display: name,
        method,
        frames,
        cursor: cursor_rx,
        input: input_tx,
        clipboard,
        device_clipboard,
        clipboard_too_big,
        failure,
        stop,
        threads: Mutex::new(threads),
        next_viewer: AtomicU64::new(1),
    })
}

/// The longest a capture thread waits before it looks at its stop flag again.
const STOP_CHECK: Duration = Duration::from_millis(100);

/// Rows apart that a poll samples when the back-end reports damage: a poll grabs every
/// `ROW_STEP`th row (starting at the next offset of [`ROW_OFFSETS`]) and then the tiles where
/// a sampled row changed, so a change at least this tall is found by the first poll and any
/// change within `ROW_STEP` polls, for 1/`ROW_STEP` of a full capture's cost.
const ROW_STEP: u16 = 32;

/// The order a poll's first row takes (spread out, so a small change is found early).
const ROW_OFFSETS: [u16; ROW_STEP as usize] = [
    0, 16, 8, 24, 4, 20, 12, 28, 2, 18, 10, 26, 6, 22, 14, 30, 1, 17, 9, 25, 5, 21, 13, 29, 3, 19,
    11, 27, 7, 23, 15, 31,
];

/// The capture thread's buffers and counters.
struct Capturer<'a> {
    screen: &'a mut dyn Screen,
    frames: &'a watch::Sender<Arc<Frame>>,
    /// A buffer for the next capture, holding the screen as it was at `spare_generation`.
    spare: Vec<u8>,
    spare_generation: Option<u64>,
    /// The frame before the current one, kept to reuse its buffer.
    previous: Option<Arc<Frame>>,
    /// A grab of one region.
    region: Vec<u8>,
    /// Polls so far (their count picks the sampled rows).
    polls: usize,
}

impl Capturer<'_> {
    /// Publishes `frame`, and takes the buffer of the frame before the one it replaces (no
    /// viewer's any more, unless one is still encoding it) for the next capture.
    fn publish(&mut self, latest: Arc<Frame>, frame: Frame) {
        self.frames.send_replace(Arc::new(frame));
        match self
            .previous
            .replace(latest)
            .and_then(|f| Arc::try_unwrap(f).ok())
        {
            Some(old) => {
                self.spare_generation = Some(old.generation);
                self.spare = old.data;
            }
            None => self.spare_generation = None,
        }
    }

    /// Grabs the whole screen; true when it changed.
    fn full(&mut self) -> Result<bool, DesktopError> {
        let size = self.screen.size();
        self.screen.grab(size.bounds(), &mut self.spare)?;
        let latest = self.frames.borrow().clone();
        match Frame::next(&latest, size, std::mem::take(&mut self.spare)) {
            Ok(frame) => {
                self.publish(latest, frame);
                Ok(true)
            }
            Err(unchanged) => {
                self.spare = unchanged;
                self.spare_generation = Some(latest.generation);
                Ok(false)
            }
        }
    }

    /// Grabs the tiles `damaged` touches and, when `poll`, the tiles where a sample of rows
    /// changed; true when something did.
    fn partial(&mut self, damaged: &[Rect], poll: bool) -> Result<bool, DesktopError> {
        let latest = self.frames.borrow().clone();
        let size = self.screen.size();
        if size != latest.size {
            return self.full();
        }
        let (across, down) = tile_grid(size);
        let mut marked = vec![false; across * down];
        for rect in damaged {
            mark_tiles(size, *rect, &mut marked);
        }
        if poll {
            let first = ROW_OFFSETS[self.polls % ROW_OFFSETS.len()];
            self.polls += 1;
            for y in (first..size.height).step_by(usize::from(ROW_STEP)) {
                self.screen
                    .grab(Rect::new(0, y, size.width, 1), &mut self.region)?;
                if self.region.len() == 4 * usize::from(size.width) {
                    mark_row_changes(size, &latest.data, y, &self.region, &mut marked);
                }
            }
        }
        if !marked.contains(&true) {
            return Ok(false);
        }
        sync(&latest, &mut self.spare, self.spare_generation);
        let regions = tiles_to_rects(size, &marked);
        for rect in &regions {
            self.screen.grab(*rect, &mut self.region)?;
            if self.region.len() != 4 * rect.area() {
                // The screen changed size under the grab: the next look sees the new size.
                return Ok(false);
            }
            put_rect(size, &mut self.spare, *rect, &self.region);
        }
        match Frame::next_in(&latest, std::mem::take(&mut self.spare), &regions) {
            Ok(frame) => {
                self.publish(latest, frame);
                Ok(true)
            }
            Err(unchanged) => {
                self.spare = unchanged;
                self.spare_generation = Some(latest.generation);
                Ok(false)
            }
        }
    }
}

fn capture_loop(
    screen: &mut dyn Screen,
    pacing: &Pacing,
    frames: &watch::Sender<Arc<Frame>>,
    cursor: &watch::Sender<Option<Arc<CursorShape>>>,
    stop: &AtomicBool,
) -> Result<(), DesktopError> {
    let reports_damage = screen.reports_damage();
    let mut last_capture = Instant::now();
    let mut last_poll = last_capture;
    let mut hinted = false;
    let mut resized = false;
    let mut damaged: Vec<Rect> = Vec::new();
    let mut captures: u64 = 0;
    let mut changes_seen: u64 = 0;
    let mut capture_time = Duration::ZERO;
    let mut capturer = Capturer {
        screen,
        frames,
        spare: Vec::new(),
        spare_generation: None,
        previous: None,
        region: Vec::new(),
        polls: 0,
    };
    while !stop.load(Ordering::Relaxed) && !frames.is_closed() {
        let due = next_look(pacing, last_capture, last_poll, hinted, reports_damage);
        let wait = due
            .saturating_duration_since(Instant::now())
            .min(STOP_CHECK);
        let changes = capturer.screen.wait(wait)?;
        hinted |= !changes.damaged.is_empty() || changes.resized;
        resized |= changes.resized;
        damaged.extend(changes.damaged);
        if changes.cursor {
            let shape = capturer.screen.cursor()?;
            let serial = |s: &Option<Arc<CursorShape>>| s.as_ref().map(|c| c.serial);
            if shape.as_ref().map(|c| c.serial) != serial(&cursor.borrow()) {
                cursor.send_replace(shape.map(Arc::new));
            }
        }
        let now = Instant::now();
        if now < due {
            continue;
        }
        let changed = if !reports_damage || std::mem::take(&mut resized) {
            capturer.full()?
        } else {
            let poll = now.saturating_duration_since(last_poll) >= pacing.idle;
            if poll {
                last_poll = now;
            }
            capturer.partial(&damaged, poll)?
        };
        damaged.clear();
        captures += 1;
        capture_time += now.elapsed();
        last_capture = now;
        hinted = false;
        if changed {
            changes_seen += 1;
        }
        if captures.is_multiple_of(1000) {
            debug!(
                captures,
                changes_seen,
                capture_ms = capture_time.as_secs_f64() * 1000.0 / captures as f64,
                "Captured a display a thousand times more"
            );
        }
    }
    Ok(())
}
