//! The input thread's connection: keys and pointer events injected with XTEST, keysyms
//! looked up in the keyboard mapping (followed as it changes), and spare keycodes mapped for
//! keysyms on no key and cleared again when the connection closes.

use tracing::{debug, info};
use x11rb::connection::{Connection, RequestConnection};
use x11rb::protocol::Event;
use x11rb::protocol::xproto::{self, ConnectionExt as _, Mapping};
use x11rb::protocol::xtest;
use x11rb::rust_connection::RustConnection;

use super::keymap::Keymap;
use super::{lost, open_error};
use crate::desktop::backend::{DesktopError, Input};

/// The input thread's connection: XTEST and the keyboard mapping.
pub(super) struct X11Input {
    conn: RustConnection,
    display: String,
    root: xproto::Window,
    xtest: bool,
    min_keycode: u8,
    max_keycode: u8,
    keymap: Keymap,
    /// Keycodes with nothing on them, taken in turn for keysyms on no key.
    spare: Vec<u8>,
    next_spare: usize,
    /// Keycodes this connection remapped, cleared again when it closes.
    remapped: Vec<u8>,
}

impl X11Input {
    pub(super) fn new(
        conn: RustConnection,
        screen_num: usize,
        display: &str,
    ) -> Result<Self, DesktopError> {
        let setup = conn.setup();
        let root =
            setup.roots.get(screen_num).map(|s| s.root).ok_or_else(|| {
                open_error(display, format!("the server has no screen {screen_num}"))
            })?;
        let (min_keycode, max_keycode) = (setup.min_keycode, setup.max_keycode);
        let xtest = conn
            .extension_information(xtest::X11_EXTENSION_NAME)
            .map_err(|e| lost(display, e))?
            .is_some();
        if !xtest {
            let name = display;
            info!(display = %name, "Left input out: the X server has no XTEST");
        }
        let mut this = Self {
            conn,
            display: display.to_owned(),
            root,
            xtest,
            min_keycode,
            max_keycode,
            keymap: Keymap::new(min_keycode, 1, Vec::new()),
            spare: Vec::new(),
            next_spare: 0,
            remapped: Vec::new(),
        };
        this.read_keymap()?;
        Ok(this)
    }

    fn read_keymap(&mut self) -> Result<(), DesktopError> {
        let count = self
            .max_keycode
            .saturating_sub(self.min_keycode)
            .saturating_add(1);
        let reply = self
            .conn
            .get_keyboard_mapping(self.min_keycode, count)
            .map_err(|e| lost(&self.display, e))?
            .reply()
            .map_err(|e| lost(&self.display, e))?;
        self.keymap = Keymap::new(self.min_keycode, reply.keysyms_per_keycode, reply.keysyms);
        // Spares this connection already uses stay spares.
        let mut spare = self.keymap.spare();
        for code in &self.remapped {
            if !spare.contains(code) {
                spare.push(*code);
            }
        }
        self.spare = spare;
        Ok(())
    }

    /// Takes note of keyboard mapping changes (other clients', and this one's own).
    fn follow_mapping(&mut self) -> Result<(), DesktopError> {
        let mut changed = false;
        while let Some(event) = self
            .conn
            .poll_for_event()
            .map_err(|e| lost(&self.display, e))?
        {
            if let Event::MappingNotify(e) = event
                && e.request == Mapping::KEYBOARD
            {
                changed = true;
            }
        }
        if changed {
            self.read_keymap()?;
        }
        Ok(())
    }

    /// Maps a spare keycode to `keysym`.
    fn remap(&mut self, keysym: u32) -> Result<Option<u8>, DesktopError> {
        if self.spare.is_empty() {
            return Ok(None);
        }
        let code = self.spare[self.next_spare % self.spare.len()];
        self.next_spare += 1;
        let row = self.keymap.remap(code, keysym);
        self.conn
            .change_keyboard_mapping(1, code, self.keymap.per_keycode(), &row)
            .map_err(|e| lost(&self.display, e))?;
        if !self.remapped.contains(&code) {
            self.remapped.push(code);
        }
        debug!(display = %self.display, keysym, keycode = code, "Mapped a spare keycode for a keysym on no key");
        Ok(Some(code))
    }

    fn fake(&self, kind: u8, detail: u8, x: i16, y: i16) -> Result<(), DesktopError> {
        if !self.xtest {
            return Err(DesktopError::Unsupported {
                display: self.display.clone(),
                reason: "the X server has no XTEST extension".into(),
            });
        }
        xtest::fake_input(
            &self.conn,
            kind,
            detail,
            x11rb::CURRENT_TIME,
            self.root,
            x,
            y,
            0,
        )
        .map_err(|e| lost(&self.display, e))?;
        self.conn.flush().map_err(|e| lost(&self.display, e))
    }
}

impl Input for X11Input {
    fn key(&mut self, keysym: u32, down: bool) -> Result<(), DesktopError> {
        self.follow_mapping()?;
        let code = match self.keymap.keycode(keysym) {
            Some(code) => Some(code),
            None if down => self.remap(keysym)?,
            None => None,
        };
        let Some(code) = code else {
            debug!(display = %self.display, keysym, "Skipped a keysym the keyboard cannot type");
            return Ok(());
        };
        let kind = if down {
            xproto::KEY_PRESS_EVENT
        } else {
            xproto::KEY_RELEASE_EVENT
        };
        self.fake(kind, code, 0, 0)
    }

    fn pointer_move(&mut self, x: u16, y: u16) -> Result<(), DesktopError> {
        let clamp = |v: u16| i16::try_from(v).unwrap_or(i16::MAX);
        self.fake(xproto::MOTION_NOTIFY_EVENT, 0, clamp(x), clamp(y))
    }

    fn button(&mut self, button: u8, down: bool) -> Result<(), DesktopError> {
        let kind = if down {
            xproto::BUTTON_PRESS_EVENT
        } else {
            xproto::BUTTON_RELEASE_EVENT
        };
        self.fake(kind, button, 0, 0)
    }
}

impl Drop for X11Input {
    fn drop(&mut self) {
        // Spare keycodes go back to carrying nothing.
        let nothing = vec![0u32; usize::from(self.keymap.per_keycode())];
        for code in std::mem::take(&mut self.remapped) {
            let _ = self
                .conn
                .change_keyboard_mapping(1, code, self.keymap.per_keycode(), &nothing);
        }
        let _ = self.conn.flush();
    }
}
