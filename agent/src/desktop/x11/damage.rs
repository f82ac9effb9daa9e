//! Damage tracking on the capture connection: XDamage on the root window as change hints,
//! the damaged area fetched as an XFIXES region, and waiting for the connection's events
//! (damage, cursor and size changes) as the capture thread's [`ChangeTracker`].

use std::os::fd::AsFd;
use std::time::Duration;

use tether_rfb::server::Rect;
use tracing::{debug, info};
use x11rb::connection::{Connection, RequestConnection};
use x11rb::errors::{ReplyError, ReplyOrIdError};
use x11rb::protocol::Event;
use x11rb::protocol::{damage, xfixes};

use super::{X11Screen, lost};
use crate::desktop::backend::{ChangeTracker, Changes, DesktopError};

impl X11Screen {
    /// Asks for damage reports on the root window (XDamage, with an XFIXES region to move
    /// them into); none where the server has no XDamage.
    pub(super) fn watch_damage(&self) -> Option<(damage::Damage, xfixes::Region)> {
        let make = || -> Result<Option<(damage::Damage, xfixes::Region)>, ReplyOrIdError> {
            if self
                .conn
                .extension_information(damage::X11_EXTENSION_NAME)?
                .is_none()
            {
                return Ok(None);
            }
            damage::query_version(&self.conn, 1, 1)?.reply()?;
            xfixes::query_version(&self.conn, 4, 0)?.reply()?;
            let region = self.conn.generate_id()?;
            xfixes::create_region(&self.conn, region, &[])?.check()?;
            let id = self.conn.generate_id()?;
            damage::create(&self.conn, id, self.root, damage::ReportLevel::NON_EMPTY)?.check()?;
            Ok(Some((id, region)))
        };
        make().unwrap_or_else(|e| {
            info!(display = %self.display, error = %e, "Polled the screen: the X server reports no damage");
            None
        })
    }

    /// Reads the events queued on the capture connection into `changes`: damage, the cursor
    /// and size changes. Damage is then fetched as the XFIXES region it was moved into.
    fn drain(&mut self, changes: &mut Changes) -> Result<(), DesktopError> {
        let mut notified = Vec::new();
        while let Some(event) = self
            .conn
            .poll_for_event()
            .map_err(|e| lost(&self.display, e))?
        {
            match event {
                Event::DamageNotify(e) => notified.push(Rect::new(
                    e.area.x.max(0) as u16,
                    e.area.y.max(0) as u16,
                    e.area.width,
                    e.area.height,
                )),
                Event::XfixesCursorNotify(_) => changes.cursor = true,
                Event::RandrScreenChangeNotify(_) => changes.resized |= self.refresh_size()?,
                Event::Error(e) => debug!(display = %self.display, error = ?e, "Got an X error"),
                _ => {}
            }
        }
        if notified.is_empty() {
            return Ok(());
        }
        let Some((id, region)) = self.damage else {
            return Ok(());
        };
        // The whole damage moves into the region at once: what is drawn after this is
        // reported again, so nothing drawn between a notification and its capture is lost.
        damage::subtract(&self.conn, id, x11rb::NONE, region)
            .map_err(|e| lost(&self.display, e))?;
        let drawn = match xfixes::fetch_region(&self.conn, region)
            .map_err(|e| lost(&self.display, e))?
            .reply()
        {
            Ok(reply) => reply
                .rectangles
                .iter()
                .map(|r| Rect::new(r.x.max(0) as u16, r.y.max(0) as u16, r.width, r.height))
                .collect(),
            Err(ReplyError::X11Error(e)) => {
                debug!(display = %self.display, error = ?e.error_kind, "Read no damaged region");
                notified
            }
            Err(e) => return Err(lost(&self.display, e)),
        };
        let bounds = self.size.bounds();
        changes.damaged.extend(
            drawn
                .into_iter()
                .map(|r| r.intersect(&bounds))
                .filter(|r| !r.is_empty()),
        );
        Ok(())
    }
}

impl ChangeTracker for X11Screen {
    fn reports_damage(&self) -> bool {
        self.damage.is_some()
    }

    fn wait(&mut self, timeout: Duration) -> Result<Changes, DesktopError> {
        let mut changes = Changes {
            resized: std::mem::take(&mut self.resized),
            ..Changes::default()
        };
        self.drain(&mut changes)?;
        if changes.is_empty() && !timeout.is_zero() {
            let fd = self.conn.stream().as_fd();
            let millis = u16::try_from(timeout.as_millis().max(1)).unwrap_or(u16::MAX);
            let mut fds = [nix::poll::PollFd::new(fd, nix::poll::PollFlags::POLLIN)];
            match nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(millis)) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(lost(&self.display, e)),
            }
            self.drain(&mut changes)?;
        }
        Ok(changes)
    }
}
