//! The X11 back-end (x11rb, pure Rust, no libxcb): capture with MIT-SHM, falling back to
//! plain GetImage; XDamage hints; XFIXES cursor shapes; RandR size changes; XTEST input.
//!
//! Two connections per display: the capture thread's (capture, damage, cursor and RandR
//! events) and the input thread's (XTEST), so a capture in progress never delays a key.
//!
//! MIT-SHM without `unsafe`: the server creates the segment (SHM 1.2 `CreateSegment`) and
//! passes its file descriptor; `ShmGetImage` fills it and the capture reads it back with
//! `pread` into the frame's own buffer. A mapping would need `unsafe` (the server writes the
//! memory behind Rust's back) and still a copy, since a published frame must not change
//! under the viewers encoding it; `pread` is that one copy, from the page cache. Servers
//! without SHM 1.2 and connections that cannot pass descriptors (TCP) use GetImage.

mod auth;
pub mod clipboard;
mod damage;
mod input;
pub mod keymap;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use tether_rfb::server::Rect;
use tracing::{debug, info};
use x11rb::connection::{Connection, RequestConnection};
use x11rb::errors::{ConnectionError, ReplyError, ReplyOrIdError};
use x11rb::protocol::xproto::{self, ConnectionExt as _, ImageFormat, ImageOrder};
use x11rb::protocol::{randr, shm, xfixes};
use x11rb::reexports::x11rb_protocol::parse_display;
use x11rb::rust_connection::{DefaultStream, RustConnection};

use self::input::X11Input;
use super::backend::{Backend, Capture, Clipboard, CursorShape, CursorSource, DesktopError, Size};

/// Which X display to open, and how to authenticate to it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct X11Settings {
    /// The display (`:0`, `host:1.0`); `None` when neither `--display` nor `DISPLAY` named one.
    pub display: Option<String>,
    /// The Xauthority file (`--xauthority` or `XAUTHORITY`); `None`: the logged-on users'.
    pub xauthority: Option<PathBuf>,
    /// Logged-on users whose Xauthority files are looked in.
    pub users: Vec<String>,
}

/// Opens the display: three connections, the capture's extensions checked and set up.
pub fn open(settings: &X11Settings) -> Result<Backend, DesktopError> {
    let display = settings.display.clone().ok_or(DesktopError::NoDisplay)?;
    let own_home = std::env::var_os("HOME").map(PathBuf::from);
    let auth_files = auth::candidates(
        settings.xauthority.as_deref(),
        &settings.users,
        own_home.as_deref(),
    );
    let (conn, screen_num) = connect(&display, &auth_files)?;
    let screen = X11Screen::new(conn, screen_num, &display)?;
    let (input_conn, _) = connect(&display, &auth_files)?;
    let input = X11Input::new(input_conn, screen_num, &display)?;
    let clipboard = connect(&display, &auth_files)
        .and_then(|(conn, _)| clipboard::X11Clipboard::new(conn, screen_num, &display));
    let clipboard: Option<Box<dyn Clipboard>> = match clipboard {
        Ok(c) => Some(Box::new(c)),
        Err(e) => {
            let name = &display;
            info!(display = %name, error = %tether_telemetry::error_chain(&e), "Left the clipboard out: its X connection failed");
            None
        }
    };
    let method = if screen.shm.is_some() {
        "MIT-SHM"
    } else {
        "GetImage"
    };
    Ok(Backend {
        display,
        screen: Box::new(screen),
        input: Box::new(input),
        clipboard,
        method,
    })
}

/// One connection to the configured display, authenticated as the capture's are, for the
/// agent's own windows on the user's screen (the consent dialog, the viewing notice).
pub fn connect_once(settings: &X11Settings) -> Result<(RustConnection, usize), DesktopError> {
    let display = settings.display.clone().ok_or(DesktopError::NoDisplay)?;
    let own_home = std::env::var_os("HOME").map(PathBuf::from);
    let auth_files = auth::candidates(
        settings.xauthority.as_deref(),
        &settings.users,
        own_home.as_deref(),
    );
    connect(&display, &auth_files)
}

fn open_error(display: &str, reason: impl std::fmt::Display) -> DesktopError {
    DesktopError::Open {
        display: display.to_owned(),
        reason: reason.to_string(),
    }
}

/// Connects with the first cookie for the display found in `auth_files` (none: without).
fn connect(display: &str, auth_files: &[PathBuf]) -> Result<(RustConnection, usize), DesktopError> {
    let parsed = parse_display::parse_display(Some(display)).map_err(|e| open_error(display, e))?;
    let screen = usize::from(parsed.screen);
    let mut failure = None;
    for address in parsed.connect_instruction() {
        match DefaultStream::connect(&address) {
            Ok((stream, (family, peer))) => {
                let found = auth_files.iter().find_map(|path| {
                    let bytes = std::fs::read(path).ok()?;
                    auth::cookie(&bytes, family, &peer, parsed.display).map(|c| (path, c))
                });
                let (name, data) = match found {
                    Some((path, cookie)) => {
                        let name = display;
                        debug!(display = %name, xauthority = %path.display(), "Found the X display's cookie");
                        cookie
                    }
                    None => (Vec::new(), Vec::new()),
                };
                let conn =
                    RustConnection::connect_to_stream_with_auth_info(stream, screen, name, data)
                        .map_err(|e| open_error(display, e))?;
                return Ok((conn, screen));
            }
            Err(e) => failure = Some(e),
        }
    }
    Err(open_error(
        display,
        failure.map_or_else(|| "no address to connect to".to_owned(), |e| e.to_string()),
    ))
}

fn lost(display: &str, e: impl std::error::Error + Send + Sync + 'static) -> DesktopError {
    DesktopError::Lost {
        display: display.to_owned(),
        source: Box::new(e),
    }
}

/// A server-created shared memory segment the capture reads back with `pread`.
struct Segment {
    id: shm::Seg,
    file: File,
    bytes: usize,
}

/// The capture thread's connection.
struct X11Screen {
    conn: RustConnection,
    display: String,
    root: xproto::Window,
    size: Size,
    shm: Option<Segment>,
    /// The damage object on the root window and the region its damage is moved into.
    damage: Option<(x11rb::protocol::damage::Damage, xfixes::Region)>,
    /// A GetImage failed because the screen had just changed size: reported by `wait`.
    resized: bool,
}

impl X11Screen {
    fn new(conn: RustConnection, screen_num: usize, display: &str) -> Result<Self, DesktopError> {
        let setup = conn.setup();
        let Some(screen) = setup.roots.get(screen_num) else {
            return Err(open_error(
                display,
                format!("the server has no screen {screen_num}"),
            ));
        };
        let unsupported = |reason: String| DesktopError::Unsupported {
            display: display.to_owned(),
            reason,
        };
        let depth = screen.root_depth;
        let bpp = setup
            .pixmap_formats
            .iter()
            .find(|f| f.depth == depth)
            .map(|f| f.bits_per_pixel);
        let visual = screen
            .allowed_depths
            .iter()
            .flat_map(|d| d.visuals.iter())
            .find(|v| v.visual_id == screen.root_visual);
        let masks = visual.map(|v| (v.red_mask, v.green_mask, v.blue_mask));
        if !matches!(depth, 24 | 32)
            || bpp != Some(32)
            || setup.image_byte_order != ImageOrder::LSB_FIRST
            || masks != Some((0xff_0000, 0xff00, 0xff))
        {
            return Err(unsupported(format!(
                "depth {depth}, {bpp:?} bits per pixel, byte order {:?}, colour masks {masks:x?}; only 24-bit true colour in 32-bit little-endian pixels is captured",
                setup.image_byte_order
            )));
        }
        let root = screen.root;
        let size = Size {
            width: screen.width_in_pixels,
            height: screen.height_in_pixels,
        };
        let mut this = Self {
            conn,
            display: display.to_owned(),
            root,
            size,
            shm: None,
            damage: None,
            resized: false,
        };
        this.shm = this.segment(size);
        this.damage = this.watch_damage();
        this.watch_cursor_and_size();
        this.conn.flush().map_err(|e| lost(display, e))?;
        Ok(this)
    }

    /// A shared segment for a screen of `size`, where the server can make one for this
    /// connection.
    fn segment(&self, size: Size) -> Option<Segment> {
        let make = || -> Result<Option<Segment>, ReplyOrIdError> {
            if self
                .conn
                .extension_information(shm::X11_EXTENSION_NAME)?
                .is_none()
            {
                return Ok(None);
            }
            let version = shm::query_version(&self.conn)?.reply()?;
            if (version.major_version, version.minor_version) < (1, 2) {
                return Ok(None);
            }
            let bytes = size.frame_bytes().max(4);
            let id = self.conn.generate_id()?;
            let reply = shm::create_segment(&self.conn, id, bytes as u32, false)?.reply()?;
            Ok(Some(Segment {
                id,
                file: File::from(reply.shm_fd),
                bytes,
            }))
        };
        match make() {
            Ok(segment) => segment,
            Err(e) => {
                info!(display = %self.display, error = %e, "Fell back to GetImage: the X server made no shared memory segment");
                None
            }
        }
    }

    fn watch_cursor_and_size(&self) {
        let cursor = || -> Result<(), ReplyError> {
            if self
                .conn
                .extension_information(xfixes::X11_EXTENSION_NAME)?
                .is_some()
            {
                xfixes::query_version(&self.conn, 4, 0)?.reply()?;
                xfixes::select_cursor_input(
                    &self.conn,
                    self.root,
                    xfixes::CursorNotifyMask::DISPLAY_CURSOR,
                )?
                .check()?;
            }
            Ok(())
        };
        if let Err(e) = cursor() {
            info!(display = %self.display, error = %e, "Sent no cursor shapes: XFIXES is unavailable");
        }
        let size = || -> Result<(), ReplyError> {
            if self
                .conn
                .extension_information(randr::X11_EXTENSION_NAME)?
                .is_some()
            {
                randr::query_version(&self.conn, 1, 2)?.reply()?;
                randr::select_input(&self.conn, self.root, randr::NotifyMask::SCREEN_CHANGE)?
                    .check()?;
            }
            Ok(())
        };
        if let Err(e) = size() {
            info!(display = %self.display, error = %e, "Watched no size changes: RandR is unavailable");
        }
    }

    /// Re-reads the root window's size; true when it changed.
    fn refresh_size(&mut self) -> Result<bool, DesktopError> {
        let geometry = self
            .conn
            .get_geometry(self.root)
            .map_err(|e| lost(&self.display, e))?
            .reply()
            .map_err(|e| lost(&self.display, e))?;
        let size = Size {
            width: geometry.width,
            height: geometry.height,
        };
        if size == self.size {
            return Ok(false);
        }
        info!(display = %self.display, width = size.width, height = size.height, "Saw the X screen change size");
        self.size = size;
        if let Some(old) = self.shm.take() {
            let _ = shm::detach(&self.conn, old.id);
            self.shm = self.segment(size);
        }
        Ok(true)
    }

    fn grab_shm(&mut self, region: Rect, out: &mut Vec<u8>) -> Result<bool, ReplyError> {
        let Some(segment) = &self.shm else {
            return Ok(false);
        };
        let bytes = 4 * region.area();
        if bytes > segment.bytes {
            return Ok(false);
        }
        shm::get_image(
            &self.conn,
            self.root,
            region.x as i16,
            region.y as i16,
            region.width,
            region.height,
            !0,
            ImageFormat::Z_PIXMAP.into(),
            segment.id,
            0,
        )?
        .reply()?;
        out.resize(bytes, 0);
        segment
            .file
            .read_exact_at(out, 0)
            .map_err(|e| ReplyError::ConnectionError(ConnectionError::IoError(e)))?;
        Ok(true)
    }

    fn grab_plain(&self, region: Rect, out: &mut Vec<u8>) -> Result<(), ReplyError> {
        let reply = self
            .conn
            .get_image(
                ImageFormat::Z_PIXMAP,
                self.root,
                region.x as i16,
                region.y as i16,
                region.width,
                region.height,
                !0,
            )?
            .reply()?;
        *out = reply.data;
        Ok(())
    }
}

impl Capture for X11Screen {
    fn size(&self) -> Size {
        self.size
    }

    fn grab(&mut self, region: Rect, out: &mut Vec<u8>) -> Result<(), DesktopError> {
        let region = region.intersect(&self.size.bounds());
        let result = match self.grab_shm(region, out) {
            Ok(true) => Ok(()),
            Ok(false) => self.grab_plain(region, out),
            Err(ReplyError::X11Error(e)) if self.shm.is_some() => {
                // The segment is unusable after all (for example over a forwarded
                // connection); GetImage serves from now on.
                info!(display = %self.display, error = ?e.error_kind, "Fell back to GetImage: the shared memory capture failed");
                self.shm = None;
                self.grab_plain(region, out)
            }
            Err(e) => Err(e),
        };
        match result {
            Ok(()) if out.len() == 4 * region.area() => Ok(()),
            Ok(()) => {
                out.clear();
                Ok(())
            }
            // A screen that shrank between reading its size and the capture: the next wait
            // reports the new size and this capture is empty.
            Err(ReplyError::X11Error(e)) if e.error_kind == x11rb::protocol::ErrorKind::Match => {
                self.resized |= self.refresh_size()?;
                out.clear();
                Ok(())
            }
            Err(e) => Err(lost(&self.display, e)),
        }
    }
}

impl CursorSource for X11Screen {
    fn cursor(&mut self) -> Result<Option<CursorShape>, DesktopError> {
        if self
            .conn
            .extension_information(xfixes::X11_EXTENSION_NAME)
            .map_err(|e| lost(&self.display, e))?
            .is_none()
        {
            return Ok(None);
        }
        let reply = match xfixes::get_cursor_image(&self.conn)
            .map_err(|e| lost(&self.display, e))?
            .reply()
        {
            Ok(r) => r,
            Err(ReplyError::X11Error(e)) => {
                debug!(display = %self.display, error = ?e.error_kind, "Got no cursor image");
                return Ok(None);
            }
            Err(e) => return Err(lost(&self.display, e)),
        };
        let pixels = usize::from(reply.width) * usize::from(reply.height);
        if reply.cursor_image.len() < pixels {
            return Ok(None);
        }
        Ok(Some(CursorShape {
            serial: reply.cursor_serial,
            width: reply.width,
            height: reply.height,
            hot_x: reply.xhot.min(reply.width.saturating_sub(1)),
            hot_y: reply.yhot.min(reply.height.saturating_sub(1)),
            argb: reply.cursor_image,
        }))
    }
}

/// An Xauthority file with one cookie for any display (for tests that start an X server
/// with `-auth`).
#[cfg(test)]
pub fn test_cookie_file(cookie: &[u8]) -> Vec<u8> {
    auth::file_with_cookie(None, cookie)
}
