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
//! Pacing ([`next_capture`]): with damage reports, a capture follows a hint as soon as the
//! frame-rate cap allows, and the screen is polled every [`Pacing::idle`] regardless
//! (compositors draw without reporting damage) and at the full rate for [`Pacing::active_for`]
//! after anything changed; without damage reports the screen is polled at the full rate.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use super::backend::{Backend, CursorShape, DesktopError, Input, Screen};
use super::tiles::Frame;

/// How often the screen is captured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pacing {
    /// The shortest time between two captures (the frame-rate cap).
    pub frame: Duration,
    /// The longest time between two captures while nothing seems to change.
    pub idle: Duration,
    /// How long after a change the screen is polled at the full rate.
    pub active_for: Duration,
}

impl Pacing {
    /// Pacing for a cap of `max_fps` frames per second (at least 1).
    pub fn with_max_fps(max_fps: u32) -> Self {
        let frame = Duration::from_secs(1) / max_fps.max(1);
        Self {
            frame,
            idle: Duration::from_millis(200).max(frame),
            active_for: Duration::from_secs(1),
        }
    }
}

/// When the next capture is due, given the last capture, the last time a capture showed a
/// change, whether a hint arrived since the last capture, and whether the back-end reports
/// damage at all.
pub fn next_capture(
    pacing: &Pacing,
    last_capture: Instant,
    last_change: Option<Instant>,
    hinted: bool,
    reports_damage: bool,
) -> Instant {
    let soonest = last_capture + pacing.frame;
    let active =
        last_change.is_some_and(|t| last_capture.saturating_duration_since(t) < pacing.active_for);
    if hinted || active || !reports_damage {
        soonest
    } else {
        last_capture + pacing.idle
    }
}

/// What a viewer asks of the input thread.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InputCommand {
    /// A key by keysym.
    Key {
        /// Which viewer.
        viewer: u64,
        /// The X keysym.
        keysym: u32,
        /// Pressed or released.
        down: bool,
    },
    /// The pointer's position and buttons (RFB's mask: bit 0 is button 1).
    Pointer {
        /// Which viewer.
        viewer: u64,
        /// Column.
        x: u16,
        /// Row.
        y: u16,
        /// Buttons held.
        buttons: u8,
    },
    /// The viewer left: release what it holds.
    Left {
        /// Which viewer.
        viewer: u64,
    },
}

/// One thing to do to the device's input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Press or release a key.
    Key(u32, bool),
    /// Move the pointer.
    Move(u16, u16),
    /// Press or release a button.
    Button(u8, bool),
}

/// What each viewer holds down, so a viewer's button mask becomes presses and releases and
/// a viewer that leaves releases everything.
#[derive(Debug, Default)]
pub struct InputState {
    held: HashMap<u64, (Vec<u32>, u8)>,
}

impl InputState {
    /// The actions a command means.
    pub fn apply(&mut self, command: &InputCommand) -> Vec<Action> {
        match *command {
            InputCommand::Key {
                viewer,
                keysym,
                down,
            } => {
                let keys = &mut self.held.entry(viewer).or_default().0;
                if down {
                    if !keys.contains(&keysym) {
                        keys.push(keysym);
                    }
                } else {
                    keys.retain(|k| *k != keysym);
                }
                vec![Action::Key(keysym, down)]
            }
            InputCommand::Pointer {
                viewer,
                x,
                y,
                buttons,
            } => {
                let held = &mut self.held.entry(viewer).or_default().1;
                let mut out = vec![Action::Move(x, y)];
                out.extend(button_changes(*held, buttons));
                *held = buttons;
                out
            }
            InputCommand::Left { viewer } => {
                let Some((keys, buttons)) = self.held.remove(&viewer) else {
                    return Vec::new();
                };
                let mut out: Vec<Action> = keys
                    .into_iter()
                    .rev()
                    .map(|k| Action::Key(k, false))
                    .collect();
                out.extend(button_changes(buttons, 0));
                out
            }
        }
    }

    /// Releases everything every viewer holds.
    pub fn release_all(&mut self) -> Vec<Action> {
        let viewers: Vec<u64> = self.held.keys().copied().collect();
        viewers
            .into_iter()
            .flat_map(|viewer| self.apply(&InputCommand::Left { viewer }))
            .collect()
    }
}

/// Presses and releases that take the mask `from` to `to` (bit n is button n + 1).
fn button_changes(from: u8, to: u8) -> impl Iterator<Item = Action> {
    (0..8u8).filter_map(move |bit| {
        let mask = 1 << bit;
        match (from & mask != 0, to & mask != 0) {
            (false, true) => Some(Action::Button(bit + 1, true)),
            (true, false) => Some(Action::Button(bit + 1, false)),
            _ => None,
        }
    })
}

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

fn capture_loop(
    screen: &mut dyn Screen,
    pacing: &Pacing,
    frames: &watch::Sender<Arc<Frame>>,
    cursor: &watch::Sender<Option<Arc<CursorShape>>>,
    stop: &AtomicBool,
) -> Result<(), DesktopError> {
    let reports_damage = screen.reports_damage();
    let mut last_capture = Instant::now();
    let mut last_change = Some(last_capture);
    let mut hinted = false;
    let mut spare: Vec<u8> = Vec::new();
    let mut previous: Option<Arc<Frame>> = None;
    let mut captures: u64 = 0;
    let mut capture_time = Duration::ZERO;
    while !stop.load(Ordering::Relaxed) && !frames.is_closed() {
        let due = next_capture(pacing, last_capture, last_change, hinted, reports_damage);
        let wait = due
            .saturating_duration_since(Instant::now())
            .min(STOP_CHECK);
        let changes = screen.wait(wait)?;
        hinted |= !changes.damaged.is_empty() || changes.resized;
        if changes.cursor {
            let shape = screen.cursor()?;
            let serial = |s: &Option<Arc<CursorShape>>| s.as_ref().map(|c| c.serial);
            if shape.as_ref().map(|c| c.serial) != serial(&cursor.borrow()) {
                cursor.send_replace(shape.map(Arc::new));
            }
        }
        let now = Instant::now();
        if now < due {
            continue;
        }
        let size = screen.size();
        screen.grab(size.bounds(), &mut spare)?;
        captures += 1;
        capture_time += now.elapsed();
        last_capture = now;
        hinted = false;
        let latest = frames.borrow().clone();
        match Frame::next(&latest, size, std::mem::take(&mut spare)) {
            Ok(frame) => {
                last_change = Some(now);
                frames.send_replace(Arc::new(frame));
                // The frame before the one just replaced is no viewer's any more (unless one
                // is still encoding it): its buffer takes the next capture.
                if let Some(old) = previous
                    .replace(latest)
                    .and_then(|f| Arc::try_unwrap(f).ok())
                {
                    spare = old.data;
                }
            }
            Err(unchanged) => spare = unchanged,
        }
        if captures.is_multiple_of(1000) {
            debug!(
                captures,
                capture_ms = capture_time.as_secs_f64() * 1000.0 / captures as f64,
                "Captured a display a thousand times more"
            );
        }
    }
    Ok(())
}

fn input_loop(name: &str, mut input: Box<dyn Input>, mut commands: mpsc::Receiver<InputCommand>) {
    let mut state = InputState::default();
    let run = |actions: Vec<Action>, input: &mut dyn Input| {
        for action in actions {
            let result = match action {
                Action::Key(keysym, down) => input.key(keysym, down),
                Action::Move(x, y) => input.pointer_move(x, y),
                Action::Button(button, down) => input.button(button, down),
            };
            if let Err(e) = result {
                debug!(display = %name, ?action, error = %tether_telemetry::error_chain(&e), "Failed to inject input");
            }
        }
    };
    while let Some(command) = commands.blocking_recv() {
        let actions = state.apply(&command);
        run(actions, input.as_mut());
    }
    let actions = state.release_all();
    run(actions, input.as_mut());
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // Tests fail loudly on any unexpected error.

    use super::*;

    #[test]
    fn captures_follow_hints_and_poll_when_idle() {
        let pacing = Pacing::with_max_fps(30);
        assert_eq!(pacing.frame, Duration::from_nanos(33_333_333));
        let t0 = Instant::now();
        let last = t0 + Duration::from_secs(10);
        // Idle with damage reports: poll every 200 ms.
        assert_eq!(
            next_capture(&pacing, last, Some(t0), false, true),
            last + pacing.idle
        );
        // A hint: as soon as the cap allows.
        assert_eq!(
            next_capture(&pacing, last, Some(t0), true, true),
            last + pacing.frame
        );
        // Something changed half a second ago: full rate, hint or not.
        let recent = last - Duration::from_millis(500);
        assert_eq!(
            next_capture(&pacing, last, Some(recent), false, true),
            last + pacing.frame
        );
        // No damage reports at all: full rate always.
        assert_eq!(
            next_capture(&pacing, last, None, false, false),
            last + pacing.frame
        );
        // A low cap is never exceeded by the idle poll.
        let slow = Pacing::with_max_fps(2);
        assert_eq!(slow.idle, Duration::from_millis(500));
        assert_eq!(Pacing::with_max_fps(0).frame, Duration::from_secs(1));
    }

    #[test]
    fn button_masks_become_presses_and_releases_and_leaving_releases_all() {
        let mut state = InputState::default();
        let pointer = |viewer, buttons| InputCommand::Pointer {
            viewer,
            x: 5,
            y: 6,
            buttons,
        };
        assert_eq!(
            state.apply(&pointer(1, 0b1)),
            vec![Action::Move(5, 6), Action::Button(1, true)]
        );
        // Wheel down: bit 4 pressed then released is button 5.
        assert_eq!(
            state.apply(&pointer(1, 0b1_0001)),
            vec![Action::Move(5, 6), Action::Button(5, true)]
        );
        assert_eq!(
            state.apply(&pointer(1, 0b1)),
            vec![Action::Move(5, 6), Action::Button(5, false)]
        );
        let key = |viewer, keysym, down| InputCommand::Key {
            viewer,
            keysym,
            down,
        };
        state.apply(&key(1, 0xffe1, true)); // Shift
        state.apply(&key(1, 0x61, true));
        state.apply(&key(1, 0x61, false));
        state.apply(&key(2, 0x62, true));
        assert_eq!(
            state.apply(&InputCommand::Left { viewer: 1 }),
            vec![Action::Key(0xffe1, false), Action::Button(1, false)]
        );
        assert!(state.apply(&InputCommand::Left { viewer: 1 }).is_empty());
        assert_eq!(state.release_all(), vec![Action::Key(0x62, false)]);
    }
}
