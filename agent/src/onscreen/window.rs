//! One window of the agent's own on the user's X display: a connection of its own, a
//! top-level override-redirect window kept above the others, a core font, and drawing of
//! lines and buttons. Dropping it destroys the window and closes the connection (and the X
//! server destroys whatever a closed connection created, so nothing is left on the screen
//! even when the thread holding it panics).

use std::os::fd::AsFd;
use std::time::Duration;

use x11rb::connection::Connection;
use x11rb::errors::{ConnectionError, ReplyError, ReplyOrIdError};
use x11rb::protocol::Event;
use x11rb::protocol::xproto::{
    self, AtomEnum, ConfigureWindowAux, ConnectionExt as _, CreateGCAux, CreateWindowAux,
    EventMask, PropMode, StackMode, Visibility, WindowClass,
};
use x11rb::rust_connection::RustConnection;
use x11rb::wrapper::ConnectionExt as _;

use super::layout::{Button, Cell, Line, Rect};
use super::text::latin1;
use crate::desktop::backend::DesktopError;
use crate::desktop::x11::{X11Settings, connect_once, keymap::Keymap};

/// The fonts tried, in order: a larger fixed-width core font, then the one every X server has.
const FONTS: [&str; 2] = ["9x15", "fixed"];

/// Why a window could not be shown or kept.
#[derive(Debug, thiserror::Error)]
pub enum WindowError {
    /// The display cannot be opened.
    #[error(transparent)]
    Open(#[from] DesktopError),
    /// The X server has none of the core fonts.
    #[error("the X server has none of the fonts {FONTS:?}")]
    NoFont,
    /// An X request failed or the connection broke.
    #[error("failed to draw on the X display")]
    X(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl From<ConnectionError> for WindowError {
    fn from(e: ConnectionError) -> Self {
        Self::X(Box::new(e))
    }
}

impl From<ReplyError> for WindowError {
    fn from(e: ReplyError) -> Self {
        Self::X(Box::new(e))
    }
}

impl From<ReplyOrIdError> for WindowError {
    fn from(e: ReplyOrIdError) -> Self {
        Self::X(Box::new(e))
    }
}

/// The colours used, as 24-bit true-colour pixels (the only visual the desktop serves).
#[derive(Clone, Copy, Debug)]
pub struct Colours {
    /// The window's background.
    pub background: u32,
    /// Text and frames.
    pub text: u32,
    /// Inside buttons.
    pub button: u32,
}

/// What happened in the window since the last look.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Happened {
    /// Part of it must be drawn again.
    Exposed,
    /// The first pointer button went down at (x, y) in the window.
    Clicked(i16, i16),
    /// Return or keypad Enter was pressed.
    Enter,
    /// Escape was pressed.
    Escape,
}

/// An agent's window on the user's display.
pub struct Window {
    conn: RustConnection,
    id: xproto::Window,
    gc: xproto::Gcontext,
    button_gc: xproto::Gcontext,
    back_gc: xproto::Gcontext,
    /// The font's cell.
    pub cell: Cell,
    /// The screen's size.
    pub screen: (u16, u16),
    enter: Vec<u8>,
    escape: Vec<u8>,
    obscured: bool,
}

impl Window {
    /// Opens a connection and the font; the window is created by [`Window::show`].
    pub fn open(
        settings: &X11Settings,
        title: &str,
        size: (u16, u16),
        at: impl Fn((u16, u16), (u16, u16)) -> (i16, i16),
        colours: Colours,
    ) -> Result<Self, WindowError> {
        let (conn, screen_num) = connect_once(settings)?;
        let setup = conn.setup();
        let Some(screen) = setup.roots.get(screen_num) else {
            return Err(WindowError::Open(DesktopError::Open {
                display: settings.display.clone().unwrap_or_default(),
                reason: format!("the server has no screen {screen_num}"),
            }));
        };
        let (root, screen_size) = (
            screen.root,
            (screen.width_in_pixels, screen.height_in_pixels),
        );
        let true_colour = screen.root_depth >= 24;
        let pixel = |rgb: u32, fallback: u32| if true_colour { rgb } else { fallback };
        let (white, black) = (screen.white_pixel, screen.black_pixel);
        let (min_keycode, max_keycode) = (setup.min_keycode, setup.max_keycode);

        let font = conn.generate_id()?;
        let opened = FONTS.iter().any(|name| {
            matches!(
                conn.open_font(font, name.as_bytes()).map(|c| c.check()),
                Ok(Ok(()))
            )
        });
        if !opened {
            return Err(WindowError::NoFont);
        }
        let info = conn.query_font(font)?.reply()?;
        let cell = Cell {
            width: u16::try_from(info.max_bounds.character_width.max(1)).unwrap_or(6),
            height: u16::try_from((info.font_ascent + info.font_descent).max(1)).unwrap_or(13),
            ascent: u16::try_from(info.font_ascent.max(1)).unwrap_or(11),
        };

        let id = conn.generate_id()?;
        let (x, y) = at(screen_size, size);
        conn.create_window(
            x11rb::COPY_DEPTH_FROM_PARENT,
            id,
            root,
            x,
            y,
            size.0.max(1),
            size.1.max(1),
            1,
            WindowClass::INPUT_OUTPUT,
            x11rb::COPY_FROM_PARENT,
            &CreateWindowAux::new()
                .background_pixel(pixel(colours.background, white))
                .border_pixel(pixel(colours.text, black))
                // Above everything, and no window manager moves, covers or decorates it.
                .override_redirect(1)
                .event_mask(
                    EventMask::EXPOSURE
                        | EventMask::BUTTON_PRESS
                        | EventMask::KEY_PRESS
                        | EventMask::VISIBILITY_CHANGE,
                ),
        )?;
        let title = latin1(title);
        conn.change_property8(
            PropMode::REPLACE,
            id,
            AtomEnum::WM_NAME,
            AtomEnum::STRING,
            &title,
        )?;
        conn.change_property8(
            PropMode::REPLACE,
            id,
            AtomEnum::WM_CLASS,
            AtomEnum::STRING,
            b"tether-agent\0Tether\0",
        )?;
        let gc = conn.generate_id()?;
        conn.create_gc(
            gc,
            id,
            &CreateGCAux::new()
                .foreground(pixel(colours.text, black))
                .background(pixel(colours.background, white))
                .font(font),
        )?;
        let button_gc = conn.generate_id()?;
        conn.create_gc(
            button_gc,
            id,
            &CreateGCAux::new()
                .foreground(pixel(colours.text, black))
                .background(pixel(colours.button, white))
                .font(font),
        )?;
        let back_gc = conn.generate_id()?;
        conn.create_gc(
            back_gc,
            id,
            &CreateGCAux::new().foreground(pixel(colours.button, white)),
        )?;
        conn.close_font(font)?;

        let count = max_keycode.saturating_sub(min_keycode).saturating_add(1);
        let mapping = conn.get_keyboard_mapping(min_keycode, count)?.reply()?;
        let keymap = Keymap::new(min_keycode, mapping.keysyms_per_keycode, mapping.keysyms);
        let codes = |syms: &[u32]| syms.iter().filter_map(|s| keymap.keycode(*s)).collect();
        // Return and KP_Enter; Escape.
        let enter = codes(&[0xff0d, 0xff8d]);
        let escape = codes(&[0xff1b]);
        conn.map_window(id)?;
        conn.flush()?;
        Ok(Self {
            conn,
            id,
            gc,
            button_gc,
            back_gc,
            cell,
            screen: screen_size,
            enter,
            escape,
            obscured: false,
        })
    }

    /// Names the window (what window lists, screen readers and `xdotool getwindowname`
    /// show); `title` must be clean text.
    pub fn set_title(&self, title: &str) -> Result<(), WindowError> {
        let mut title = latin1(title);
        title.truncate(1024);
        self.conn.change_property8(
            PropMode::REPLACE,
            self.id,
            AtomEnum::WM_NAME,
            AtomEnum::STRING,
            &title,
        )?;
        Ok(())
    }

    /// Moves and resizes the window.
    pub fn place(&self, x: i16, y: i16, size: (u16, u16)) -> Result<(), WindowError> {
        self.conn.configure_window(
            self.id,
            &ConfigureWindowAux::new()
                .x(i32::from(x))
                .y(i32::from(y))
                .width(u32::from(size.0.max(1)))
                .height(u32::from(size.1.max(1))),
        )?;
        Ok(())
    }

    /// Clears the window.
    pub fn clear(&self) -> Result<(), WindowError> {
        self.conn.clear_area(false, self.id, 0, 0, 0, 0)?;
        Ok(())
    }

    /// Draws a line of text over its background (padded with spaces to `cols` characters, so
    /// a shorter text replaces a longer one).
    pub fn line(&self, line: &Line, cols: usize) -> Result<(), WindowError> {
        let mut bytes = latin1(&line.text);
        if bytes.len() < cols {
            bytes.resize(cols, b' ');
        }
        // ImageText8 takes at most 255 characters; the layouts make none that long.
        bytes.truncate(255);
        self.conn
            .image_text8(self.id, self.gc, line.x, line.baseline, &bytes)?;
        Ok(())
    }

    /// Draws a button: its face, its frame and its label.
    pub fn button(&self, button: &Button) -> Result<(), WindowError> {
        let Rect {
            x,
            y,
            width,
            height,
        } = button.rect;
        let face = xproto::Rectangle {
            x,
            y,
            width,
            height,
        };
        self.conn
            .poly_fill_rectangle(self.id, self.back_gc, &[face])?;
        let frame = xproto::Rectangle {
            x,
            y,
            width: width.saturating_sub(1),
            height: height.saturating_sub(1),
        };
        self.conn.poly_rectangle(self.id, self.gc, &[frame])?;
        let label = latin1(&button.label.text);
        self.conn.image_text8(
            self.id,
            self.button_gc,
            button.label.x,
            button.label.baseline,
            &label,
        )?;
        Ok(())
    }

    /// Sends what was drawn, and raises the window again if something covered it.
    pub fn flush(&mut self) -> Result<(), WindowError> {
        if std::mem::take(&mut self.obscured) {
            self.conn.configure_window(
                self.id,
                &ConfigureWindowAux::new().stack_mode(StackMode::ABOVE),
            )?;
        }
        self.conn.flush()?;
        Ok(())
    }

    /// Takes the keyboard focus (a dialog answered with Enter or Escape needs it; without a
    /// window manager nothing else gives it).
    pub fn focus(&self) -> Result<(), WindowError> {
        self.conn
            .set_input_focus(xproto::InputFocus::PARENT, self.id, x11rb::CURRENT_TIME)?;
        Ok(())
    }

    /// Waits up to `timeout` for something to happen in the window; returns what did.
    pub fn wait(&mut self, timeout: Duration) -> Result<Vec<Happened>, WindowError> {
        let mut out = self.drain()?;
        if out.is_empty() && !timeout.is_zero() {
            let fd = self.conn.stream().as_fd();
            let millis = u16::try_from(timeout.as_millis().max(1)).unwrap_or(u16::MAX);
            let mut fds = [nix::poll::PollFd::new(fd, nix::poll::PollFlags::POLLIN)];
            match nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(millis)) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(WindowError::X(Box::new(e))),
            }
            out = self.drain()?;
        }
        Ok(out)
    }

    fn drain(&mut self) -> Result<Vec<Happened>, WindowError> {
        let mut out = Vec::new();
        while let Some(event) = self.conn.poll_for_event()? {
            match event {
                Event::Expose(e) if e.count == 0 => out.push(Happened::Exposed),
                Event::ButtonPress(e) if e.detail == 1 => {
                    out.push(Happened::Clicked(e.event_x, e.event_y));
                }
                Event::KeyPress(e) if self.enter.contains(&e.detail) => out.push(Happened::Enter),
                Event::KeyPress(e) if self.escape.contains(&e.detail) => {
                    out.push(Happened::Escape);
                }
                Event::VisibilityNotify(e) if e.state != Visibility::UNOBSCURED => {
                    self.obscured = true;
                }
                // Errors of requests not checked (a focus taken before the window showed).
                _ => {}
            }
        }
        Ok(out)
    }
}

impl Drop for Window {
    fn drop(&mut self) {
        let _ = self.conn.destroy_window(self.id);
        let _ = self.conn.flush();
    }
}
