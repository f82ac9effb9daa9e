//! One page's WebSocket fed from a recording: the RFB handshake as the desktop's server
//! (version 3.8, security None, ServerInit with the recording's first size), then
//! FramebufferUpdates as the page asks for them, paced by the shared [`Clock`]. A seek
//! restores the [`Timeline`]'s nearest snapshot and sends the whole screen. Whatever input
//! the page sends is read and dropped: a recording has no device to reach.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use axum::extract::ws::{Message, WebSocket};
use tether_recording::playback::Timeline;
use tether_rfb::client::{ClientMessage, Limits, Parser, PixelFormat};
use tether_rfb::server::{self, Rect};
use tokio::sync::watch;

use super::clock::Clock;
use super::screen::{Screen, add_damage, cursor_area};
use crate::remote::browser::{HANDSHAKE_TIMEOUT, fill, page_handshake};

/// What the stream needs of the recording.
pub(super) struct Source<'a> {
    /// The decoded recording with its snapshots.
    pub timeline: &'a Timeline<'a>,
    /// The first framebuffer size (ServerInit's).
    pub first_size: (u16, u16),
    /// The desktop's name as recorded.
    pub name: String,
}

/// Plays the recording into `socket` until the page leaves or the clock is dropped.
pub(super) async fn stream(
    source: &Source<'_>,
    mut clock: watch::Receiver<Clock>,
    socket: &mut WebSocket,
) -> Result<()> {
    let mut buf = Vec::new();
    tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
        page_handshake(socket, &mut buf).await?;
        fill(socket, &mut buf, 1).await
    })
    .await
    .context("the page did not finish its handshake in time")??;
    buf.drain(..1); // ClientInit: shared or not, there is one recording.
    let (width, height) = source.first_size;
    socket
        .send(Message::Binary(
            server::server_init(width, height, &PixelFormat::BGRX, &source.name).into(),
        ))
        .await?;
    let mut parser = Parser::after_handshake(Limits::default());
    parser.push(&buf);
    let mut screen = Screen::new(source.first_size);
    let mut seeks = clock.borrow().seeks;
    let mut player = source
        .timeline
        .seek(clock.borrow().position(Instant::now()));
    let (mut requested, mut full, mut broken) = (false, true, false);
    let mut damage = Vec::new();
    let mut cursor = None;
    loop {
        while let Some((message, _)) = parser
            .next_message()
            .map_err(|e| anyhow::anyhow!("the page sent bad RFB: {e}"))?
        {
            match message {
                ClientMessage::UpdateRequest { incremental, .. } => {
                    requested = true;
                    full |= !incremental;
                }
                ClientMessage::SetPixelFormat(format) => screen
                    .set_format(format)
                    .map_err(|e| anyhow::anyhow!("the page's pixel format: {e}"))?,
                ClientMessage::SetEncodings(list) => screen.set_encodings(&list),
                _ => {}
            }
        }
        let now = Instant::now();
        let c = clock.borrow_and_update().clone();
        if c.seeks != seeks {
            seeks = c.seeks;
            player = source.timeline.seek(c.position(now));
            (full, broken) = (true, false);
            damage.clear();
        } else if !broken && player.advance_to(c.position(now)).is_err() {
            // The timeline met the same error and `/state` reports it; the screen stays as
            // it was before it.
            broken = true;
        }
        let (new, resized) = player.take_damage();
        let decoder = player.decoder();
        let fb = decoder.framebuffer();
        let bounds = Rect::new(0, 0, fb.width, fb.height);
        add_damage(&mut damage, &new, bounds);
        // The pointer moved or changed shape: where it was and where it is.
        let now_cursor = cursor_area(decoder);
        if now_cursor != cursor {
            let moved: Vec<Rect> = cursor.into_iter().chain(now_cursor).collect();
            add_damage(&mut damage, &moved, bounds);
            cursor = now_cursor;
        }
        full |= resized;
        if requested
            && decoder.is_ready()
            && (full || !damage.is_empty())
            && let Some(bytes) = match cursor {
                Some(_) => screen.update(&decoder.composed(), &damage, full),
                None => screen.update(fb, &damage, full),
            }
        {
            socket.send(Message::Binary(bytes.into())).await?;
            requested = false;
            (full, damage) = (false, Vec::new());
        }
        let wake = player.next_ms().and_then(|t| c.wake_in(t, now));
        tokio::select! {
            message = socket.recv() => match message {
                Some(Ok(Message::Binary(data))) => parser.push(&data),
                Some(Ok(Message::Text(_))) => bail!("the page sent text; RFB travels as binary"),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Close(_))) | None => return Ok(()),
                Some(Err(e)) => return Err(e).context("the page's WebSocket failed"),
            },
            changed = clock.changed() => if changed.is_err() { return Ok(()) },
            () = tokio::time::sleep(wake.unwrap_or(Duration::ZERO)), if wake.is_some() => {}
        }
    }
}
