//! What a desktop back-end provides: capture, change hints, the cursor's shape, input and
//! (optionally) the clipboard, each a small synchronous trait. X11 implements them today
//! ([`super::x11`]); DXGI + SendInput, CoreGraphics and a Wayland portal can follow without
//! touching the RFB server or the shared capture.
//!
//! The traits are synchronous on purpose: every platform API they wrap blocks, so the
//! shared capture ([`super::capture`]) calls them on threads of its own, never on the async
//! runtime's workers.

use std::time::Duration;

use tether_rfb::server::Rect;

/// Why the desktop cannot be served. Its `Display` is what the technician reads.
#[derive(Debug, thiserror::Error)]
pub enum DesktopError {
    /// No display was configured and the environment names none.
    #[error("no X display: the agent has no --display and DISPLAY is not set")]
    NoDisplay,
    /// The display could not be opened.
    #[error("cannot open X display {display} ({reason})")]
    Open {
        /// The display name.
        display: String,
        /// Why, in words (the X server's own reason where it gave one).
        reason: String,
    },
    /// The display is of a kind the agent cannot capture.
    #[error("the X display {display} is not supported: {reason}")]
    Unsupported {
        /// The display name.
        display: String,
        /// What about it.
        reason: String,
    },
    /// The connection to the display failed while serving.
    #[error("lost the X display {display}")]
    Lost {
        /// The display name.
        display: String,
        /// The failure.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// The screen's size in pixels.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Size {
    /// Width.
    pub width: u16,
    /// Height.
    pub height: u16,
}

impl Size {
    /// The whole screen as a rectangle.
    pub fn bounds(self) -> Rect {
        Rect::new(0, 0, self.width, self.height)
    }

    /// Bytes of one BGRX capture of the whole screen.
    pub fn frame_bytes(self) -> usize {
        4 * usize::from(self.width) * usize::from(self.height)
    }
}

/// Grabs the screen's pixels.
pub trait Capture: Send {
    /// The screen's current size (it changes after [`Changes::resized`]).
    fn size(&self) -> Size;

    /// Grabs `region` of the screen into `out` (resized to fit) as BGRX rows of
    /// `4 * region.width` bytes. The region lies within [`Capture::size`].
    fn grab(&mut self, region: Rect, out: &mut Vec<u8>) -> Result<(), DesktopError>;
}

/// What a back-end noticed since it was last asked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Rectangles the platform reported as drawn to. A hint only: compositors draw without
    /// reporting, so the capture compares tiles to learn what really changed.
    pub damaged: Vec<Rect>,
    /// The cursor's shape changed.
    pub cursor: bool,
    /// The screen's size changed ([`Capture::size`] has the new one).
    pub resized: bool,
}

impl Changes {
    /// Whether nothing was noticed.
    pub fn is_empty(&self) -> bool {
        self.damaged.is_empty() && !self.cursor && !self.resized
    }
}

/// Tells what changed on the screen.
pub trait ChangeTracker: Send {
    /// Whether the platform reports damage at all (without it the capture polls at the
    /// frame-rate cap instead of waiting for a hint).
    fn reports_damage(&self) -> bool;

    /// Waits up to `timeout` for something to change, then returns what changed since the
    /// last call (possibly nothing).
    fn wait(&mut self, timeout: Duration) -> Result<Changes, DesktopError>;
}

/// A cursor shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CursorShape {
    /// Changes whenever the shape does.
    pub serial: u32,
    /// Width in pixels.
    pub width: u16,
    /// Height in pixels.
    pub height: u16,
    /// The hot spot's column.
    pub hot_x: u16,
    /// The hot spot's row.
    pub hot_y: u16,
    /// `width * height` pixels, ARGB with alpha in the top byte (premultiplied, as X11
    /// and Windows give it).
    pub argb: Vec<u32>,
}

/// Reads the cursor's shape.
pub trait CursorSource: Send {
    /// The current shape, `None` when the platform cannot tell.
    fn cursor(&mut self) -> Result<Option<CursorShape>, DesktopError>;
}

/// Everything the capture thread uses, from one connection to the display.
pub trait Screen: Capture + ChangeTracker + CursorSource {}

impl<T: Capture + ChangeTracker + CursorSource> Screen for T {}

/// Injects input as if from the device's own keyboard and mouse.
pub trait Input: Send {
    /// Presses or releases the key that produces `keysym` (an X keysym, as RFB sends).
    fn key(&mut self, keysym: u32, down: bool) -> Result<(), DesktopError>;

    /// Moves the pointer to (`x`, `y`).
    fn pointer_move(&mut self, x: u16, y: u16) -> Result<(), DesktopError>;

    /// Presses or releases pointer button `button` (1 left, 2 middle, 3 right, 4/5 wheel up
    /// and down, 6/7 wheel left and right, 8 back).
    fn button(&mut self, button: u8, down: bool) -> Result<(), DesktopError>;
}

/// The most bytes of clipboard text (UTF-8) that travel in either direction; bigger texts
/// are dropped and counted.
pub const MAX_CLIPBOARD: usize = 1 << 20;

/// What a back-end read from the device's clipboard after another application changed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClipboardText {
    /// The text, at most [`MAX_CLIPBOARD`] bytes of UTF-8.
    Text(String),
    /// Text too big to send (at least this many bytes), dropped.
    TooBig(usize),
}

/// The device's clipboard, as UTF-8 text. It runs on a thread of its own: holding a
/// clipboard usually means answering other applications' requests for it.
pub trait Clipboard: Send {
    /// Puts `text` on the clipboard (and keeps serving it until another application
    /// takes the clipboard).
    fn set_text(&mut self, text: &str) -> Result<(), DesktopError>;

    /// Waits up to `timeout`, serving what this back-end holds meanwhile; returns the
    /// clipboard's new contents when another application changed it.
    fn wait(&mut self, timeout: Duration) -> Result<Option<ClipboardText>, DesktopError>;
}

/// An opened back-end: the screen for the capture thread and the input for the input
/// thread (separate connections, so a slow capture never delays a keystroke).
pub struct Backend {
    /// What the display is called, for logs and the desktop's name.
    pub display: String,
    /// Capture, changes and cursor.
    pub screen: Box<dyn Screen>,
    /// Keyboard and pointer.
    pub input: Box<dyn Input>,
    /// The clipboard, where the back-end has one.
    pub clipboard: Option<Box<dyn Clipboard>>,
    /// How the screen is captured (for example `MIT-SHM` or `GetImage`), for logs.
    pub method: &'static str,
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend")
            .field("display", &self.display)
            .field("method", &self.method)
            .finish_non_exhaustive()
    }
}
