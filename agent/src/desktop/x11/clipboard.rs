//! The X11 clipboard, on a connection and an unmapped window of its own.
//!
//! - **Setting** (technician → device): the window takes the CLIPBOARD and PRIMARY
//!   selections and answers other clients' SelectionRequests for `UTF8_STRING`, `STRING`
//!   (Latin-1, `?` for the rest), `TEXT`, `TARGETS` and `TIMESTAMP`, until another client
//!   takes the selection (SelectionClear).
//! - **Watching** (device → technician): XFIXES reports each new owner of CLIPBOARD; the
//!   window asks the owner for `UTF8_STRING` (then `STRING` if it has none) into a property
//!   of its own and reads it when SelectionNotify comes, within [`CONVERT_TIMEOUT`]. INCR
//!   transfers are not read: the text is at most [`MAX_CLIPBOARD`] bytes, which owners send
//!   whole, and anything bigger is reported as too big. The window's own ownership is not
//!   reported, so text from a technician is not echoed back.

use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use tracing::{debug, info};
use x11rb::connection::{Connection, RequestConnection};
use x11rb::errors::ReplyError;
use x11rb::protocol::Event;
use x11rb::protocol::xfixes;
use x11rb::protocol::xproto::{
    self, Atom, AtomEnum, ConnectionExt as _, EventMask, PropMode, SelectionNotifyEvent,
    SelectionRequestEvent, Timestamp, Window, WindowClass,
};
use x11rb::rust_connection::RustConnection;
use x11rb::wrapper::ConnectionExt as _;

use super::{lost, open_error};
use crate::desktop::backend::{Clipboard, ClipboardText, DesktopError, MAX_CLIPBOARD};

/// How long an owner has to answer a request for the clipboard's text.
pub const CONVERT_TIMEOUT: Duration = Duration::from_secs(2);

x11rb::atom_manager! {
    /// The atoms the clipboard uses.
    Atoms: AtomsCookie {
        CLIPBOARD,
        UTF8_STRING,
        TEXT,
        TARGETS,
        TIMESTAMP,
        INCR,
        TETHER_SELECTION,
        TETHER_TIME,
    }
}

/// What the window holds as a selection owner.
struct Held {
    text: String,
    /// When it took the selections (requests from before are refused, as ICCCM says).
    time: Timestamp,
    clipboard: bool,
    primary: bool,
}

/// A request for the clipboard's text that waits for the owner's answer.
struct Pending {
    target: Atom,
    time: Timestamp,
    deadline: Instant,
}

/// The clipboard's connection and window.
pub struct X11Clipboard {
    conn: RustConnection,
    display: String,
    window: Window,
    atoms: Atoms,
    held: Option<Held>,
    pending: Option<Pending>,
    /// A text read while doing something else, for the next `wait`.
    ready: Option<ClipboardText>,
}

impl X11Clipboard {
    /// Sets up the window and, where the server has XFIXES, the watch on CLIPBOARD.
    pub fn new(
        conn: RustConnection,
        screen_num: usize,
        display: &str,
    ) -> Result<Self, DesktopError> {
        let root = conn
            .setup()
            .roots
            .get(screen_num)
            .map(|s| s.root)
            .ok_or_else(|| open_error(display, format!("the server has no screen {screen_num}")))?;
        let window = conn.generate_id().map_err(|e| lost(display, e))?;
        conn.create_window(
            0,
            window,
            root,
            -1,
            -1,
            1,
            1,
            0,
            WindowClass::INPUT_ONLY,
            x11rb::COPY_FROM_PARENT,
            &xproto::CreateWindowAux::new().event_mask(EventMask::PROPERTY_CHANGE),
        )
        .map_err(|e| lost(display, e))?;
        let atoms = Atoms::new(&conn)
            .map_err(|e| lost(display, e))?
            .reply()
            .map_err(|e| lost(display, e))?;
        let watch = || -> Result<bool, ReplyError> {
            if conn
                .extension_information(xfixes::X11_EXTENSION_NAME)?
                .is_none()
            {
                return Ok(false);
            }
            xfixes::query_version(&conn, 5, 0)?.reply()?;
            xfixes::select_selection_input(
                &conn,
                window,
                atoms.CLIPBOARD,
                xfixes::SelectionEventMask::SET_SELECTION_OWNER
                    | xfixes::SelectionEventMask::SELECTION_WINDOW_DESTROY
                    | xfixes::SelectionEventMask::SELECTION_CLIENT_CLOSE,
            )?
            .check()?;
            Ok(true)
        };
        let name = display;
        match watch() {
            Ok(true) => {}
            Ok(false) => {
                info!(display = %name, "Watched no clipboard changes: the X server has no XFIXES")
            }
            Err(e) => {
                info!(display = %name, error = %e, "Watched no clipboard changes: XFIXES failed")
            }
        }
        conn.flush().map_err(|e| lost(display, e))?;
        Ok(Self {
            conn,
            display: display.to_owned(),
            window,
            atoms,
            held: None,
            pending: None,
            ready: None,
        })
    }

    fn lost(&self, e: impl std::error::Error + Send + Sync + 'static) -> DesktopError {
        lost(&self.display, e)
    }

    /// A server timestamp: the time of a PropertyNotify this window causes itself.
    fn now(&mut self) -> Result<Timestamp, DesktopError> {
        self.conn
            .change_property32(
                PropMode::APPEND,
                self.window,
                self.atoms.TETHER_TIME,
                AtomEnum::INTEGER,
                &[],
            )
            .map_err(|e| self.lost(e))?;
        // After the round trip the PropertyNotify is queued.
        self.conn
            .get_input_focus()
            .map_err(|e| self.lost(e))?
            .reply()
            .map_err(|e| self.lost(e))?;
        let mut time = None;
        while let Some(event) = self.conn.poll_for_event().map_err(|e| self.lost(e))? {
            match event {
                Event::PropertyNotify(e)
                    if e.window == self.window && e.atom == self.atoms.TETHER_TIME =>
                {
                    time = Some(e.time);
                }
                other => self.handle(other)?,
            }
        }
        Ok(time.unwrap_or(x11rb::CURRENT_TIME))
    }

    fn drain(&mut self) -> Result<(), DesktopError> {
        while let Some(event) = self.conn.poll_for_event().map_err(|e| self.lost(e))? {
            self.handle(event)?;
        }
        Ok(())
    }

    fn handle(&mut self, event: Event) -> Result<(), DesktopError> {
        match event {
            Event::SelectionRequest(e) => self.answer(&e)?,
            Event::SelectionClear(e) if e.owner == self.window => {
                if let Some(held) = &mut self.held {
                    if e.selection == self.atoms.CLIPBOARD {
                        held.clipboard = false;
                    } else if e.selection == u32::from(AtomEnum::PRIMARY) {
                        held.primary = false;
                    }
                    if !held.clipboard && !held.primary {
                        self.held = None;
                        debug!(display = %self.display, "Gave the X selections up to another client");
                    }
                }
            }
            // Another client's text (the window's own is the technician's).
            Event::XfixesSelectionNotify(e)
                if e.selection == self.atoms.CLIPBOARD
                    && e.owner != self.window
                    && e.owner != x11rb::NONE =>
            {
                self.convert(self.atoms.UTF8_STRING, e.selection_timestamp)?;
            }
            Event::SelectionNotify(e)
                if e.requestor == self.window && e.selection == self.atoms.CLIPBOARD =>
            {
                self.converted(&e)?;
            }
            Event::Error(e) => {
                debug!(display = %self.display, error = ?e.error_kind, "Got an X error on the clipboard's connection");
            }
            _ => {}
        }
        Ok(())
    }

    /// Asks CLIPBOARD's owner for its text as `target`.
    fn convert(&mut self, target: Atom, time: Timestamp) -> Result<(), DesktopError> {
        self.conn
            .convert_selection(
                self.window,
                self.atoms.CLIPBOARD,
                target,
                self.atoms.TETHER_SELECTION,
                time,
            )
            .map_err(|e| self.lost(e))?;
        self.pending = Some(Pending {
            target,
            time,
            deadline: Instant::now() + CONVERT_TIMEOUT,
        });
        Ok(())
    }

    /// The owner answered: reads the text it put on the window.
    fn converted(&mut self, e: &SelectionNotifyEvent) -> Result<(), DesktopError> {
        let Some(pending) = self.pending.take() else {
            return Ok(());
        };
        if e.property == x11rb::NONE {
            if pending.target == self.atoms.UTF8_STRING {
                return self.convert(AtomEnum::STRING.into(), pending.time);
            }
            debug!(display = %self.display, "Read no clipboard text: its owner offers none");
            return Ok(());
        }
        let words = u32::try_from(MAX_CLIPBOARD / 4 + 1).unwrap_or(u32::MAX);
        let reply = self
            .conn
            .get_property(
                true,
                self.window,
                self.atoms.TETHER_SELECTION,
                AtomEnum::ANY,
                0,
                words,
            )
            .map_err(|e| self.lost(e))?
            .reply();
        let reply = match reply {
            Ok(r) => r,
            Err(ReplyError::X11Error(e)) => {
                debug!(display = %self.display, error = ?e.error_kind, "Read no clipboard text");
                return Ok(());
            }
            Err(e) => return Err(self.lost(e)),
        };
        if reply.type_ == self.atoms.INCR {
            let size = reply
                .value32()
                .and_then(|mut v| v.next())
                .map_or(0, |n| n as usize);
            debug!(display = %self.display, size, limit = MAX_CLIPBOARD, "Dropped the device's clipboard text: its owner sends it in parts (INCR), which only texts over the limit need");
            self.ready = Some(ClipboardText::TooBig(size.max(MAX_CLIPBOARD + 1)));
            return Ok(());
        }
        if reply.bytes_after > 0 || reply.value.len() > MAX_CLIPBOARD {
            // Delete only deletes a property read to its end.
            let _ = self
                .conn
                .delete_property(self.window, self.atoms.TETHER_SELECTION);
            let size = reply.value.len() + reply.bytes_after as usize;
            debug!(display = %self.display, size, limit = MAX_CLIPBOARD, "Dropped the device's clipboard text: it is over the limit");
            self.ready = Some(ClipboardText::TooBig(size));
            return Ok(());
        }
        let text = if reply.type_ == u32::from(AtomEnum::STRING) {
            reply.value.iter().map(|b| char::from(*b)).collect()
        } else {
            String::from_utf8_lossy(&reply.value).into_owned()
        };
        self.ready = Some(ClipboardText::Text(text));
        Ok(())
    }

    /// Answers another client's request for what the window holds.
    fn answer(&mut self, e: &SelectionRequestEvent) -> Result<(), DesktopError> {
        let property = if e.property == x11rb::NONE {
            e.target // ICCCM's obsolete clients
        } else {
            e.property
        };
        let answered = self
            .write_target(e, property)
            .map_err(|err| self.lost(err))?;
        let notify = SelectionNotifyEvent {
            response_type: xproto::SELECTION_NOTIFY_EVENT,
            sequence: 0,
            time: e.time,
            requestor: e.requestor,
            selection: e.selection,
            target: e.target,
            property: if answered { property } else { x11rb::NONE },
        };
        self.conn
            .send_event(false, e.requestor, EventMask::NO_EVENT, notify)
            .map_err(|err| self.lost(err))?;
        self.conn.flush().map_err(|err| self.lost(err))
    }

    /// Puts the requested form of the held text on the requestor's property; false when
    /// the request is refused.
    fn write_target(
        &self,
        e: &SelectionRequestEvent,
        property: Atom,
    ) -> Result<bool, x11rb::errors::ConnectionError> {
        let a = &self.atoms;
        let Some(held) = &self.held else {
            return Ok(false);
        };
        let owned = (e.selection == a.CLIPBOARD && held.clipboard)
            || (e.selection == u32::from(AtomEnum::PRIMARY) && held.primary);
        if !owned || (e.time != x11rb::CURRENT_TIME && e.time < held.time) {
            return Ok(false);
        }
        let (kind, bytes): (Atom, Vec<u8>) = if e.target == a.TARGETS {
            let targets = [
                a.TARGETS,
                a.TIMESTAMP,
                a.UTF8_STRING,
                AtomEnum::STRING.into(),
                a.TEXT,
            ];
            self.conn.change_property32(
                PropMode::REPLACE,
                e.requestor,
                property,
                AtomEnum::ATOM,
                &targets,
            )?;
            return Ok(true);
        } else if e.target == a.TIMESTAMP {
            self.conn.change_property32(
                PropMode::REPLACE,
                e.requestor,
                property,
                AtomEnum::INTEGER,
                &[held.time],
            )?;
            return Ok(true);
        } else if e.target == a.UTF8_STRING || e.target == a.TEXT {
            (a.UTF8_STRING, held.text.as_bytes().to_vec())
        } else if e.target == u32::from(AtomEnum::STRING) {
            let latin1 = held
                .text
                .chars()
                .map(|c| u8::try_from(u32::from(c)).unwrap_or(b'?'))
                .collect();
            (AtomEnum::STRING.into(), latin1)
        } else {
            return Ok(false);
        };
        if bytes.len() + 64 > self.conn.maximum_request_bytes() {
            debug!(display = %self.display, size = bytes.len(), "Refused a clipboard request: the text is too big for one X request (INCR is not offered)");
            return Ok(false);
        }
        self.conn
            .change_property8(PropMode::REPLACE, e.requestor, property, kind, &bytes)?;
        Ok(true)
    }
}

impl Clipboard for X11Clipboard {
    fn set_text(&mut self, text: &str) -> Result<(), DesktopError> {
        let time = self.now()?;
        let clipboard = self.atoms.CLIPBOARD;
        for selection in [clipboard, AtomEnum::PRIMARY.into()] {
            self.conn
                .set_selection_owner(self.window, selection, time)
                .map_err(|e| self.lost(e))?;
        }
        let owner = self
            .conn
            .get_selection_owner(clipboard)
            .map_err(|e| self.lost(e))?
            .reply()
            .map_err(|e| self.lost(e))?
            .owner;
        if owner != self.window {
            return Err(DesktopError::Unsupported {
                display: self.display.clone(),
                reason: "another client kept the clipboard".into(),
            });
        }
        self.held = Some(Held {
            text: text.to_owned(),
            time,
            clipboard: true,
            primary: true,
        });
        Ok(())
    }

    fn wait(&mut self, timeout: Duration) -> Result<Option<ClipboardText>, DesktopError> {
        self.drain()?;
        if self.ready.is_none() && !timeout.is_zero() {
            let timeout = match &self.pending {
                Some(p) => timeout.min(p.deadline.saturating_duration_since(Instant::now())),
                None => timeout,
            };
            let fd = self.conn.stream().as_fd();
            let millis = u16::try_from(timeout.as_millis().max(1)).unwrap_or(u16::MAX);
            let mut fds = [nix::poll::PollFd::new(fd, nix::poll::PollFlags::POLLIN)];
            match nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(millis)) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(self.lost(e)),
            }
            self.drain()?;
        }
        if self
            .pending
            .as_ref()
            .is_some_and(|p| Instant::now() >= p.deadline)
        {
            self.pending = None;
            debug!(display = %self.display, "Read no clipboard text: its owner did not answer in time");
        }
        self.conn.flush().map_err(|e| self.lost(e))?;
        Ok(self.ready.take())
    }
}

impl Drop for X11Clipboard {
    fn drop(&mut self) {
        let _ = self.conn.destroy_window(self.window);
        let _ = self.conn.flush();
    }
}
