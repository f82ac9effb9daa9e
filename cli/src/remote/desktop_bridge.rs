//! The bridge between a viewer page's WebSocket and a desktop channel of its own.
//!
//! Two RFB 3.8 handshakes meet here, as in `vnc`: towards the device, security None inside
//! the channel the relay authenticated (`desktop_channel`); towards the page, security None
//! too, since the page already proved itself with the cookie its one-time link was exchanged
//! for. From ClientInit on, RFB passes unchanged, one binary WebSocket message per frame.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use axum::extract::ws::{CloseFrame, Message, WebSocket};
use bytes::Bytes;

use super::desktop_channel::{self, FromDevice, NONE, VERSION};
use super::desktop_server::Shared;
use crate::connect::Joined;

/// How long the page and the device have to finish their handshakes.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// WebSocket close code for a normal close (the session or the viewer ended).
const CLOSE_NORMAL: u16 = 1000;
/// WebSocket close code for a desktop that failed or was closed by the relay or device.
const CLOSE_ERROR: u16 = 1011;
/// A close reason's limit in bytes (a control frame carries at most 125, with the code).
const MAX_REASON: usize = 120;

/// Counts a connected page while it lives.
struct Viewer<'a>(&'a Shared);

impl<'a> Viewer<'a> {
    fn new(shared: &'a Shared) -> Self {
        shared.viewers.fetch_add(1, Ordering::Relaxed);
        Self(shared)
    }
}

impl Drop for Viewer<'_> {
    fn drop(&mut self) {
        self.0.viewers.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves one page's desktop until the page, the device, the relay or the session ends it;
/// the page is told why in the close frame and in `/state`.
pub(super) async fn bridge(shared: Arc<Shared>, joined: Arc<Joined>, socket: WebSocket) {
    attend(&shared, socket, async |socket| serve(&joined, socket).await).await;
}

/// Serves one page with `serve`, counted as a viewer while it runs; then closes the page's
/// WebSocket, telling it why when `serve` failed (and `/state` too).
pub(crate) async fn attend(
    shared: &Shared,
    mut socket: WebSocket,
    serve: impl AsyncFnOnce(&mut WebSocket) -> Result<()>,
) {
    let viewer = Viewer::new(shared);
    eprintln!("tether: a browser viewer connected");
    let result = serve(&mut socket).await;
    drop(viewer);
    let (code, reason) = match result {
        Ok(()) => {
            eprintln!("tether: a browser viewer disconnected");
            (CLOSE_NORMAL, String::new())
        }
        Err(e) => {
            let reason = format!("{e:#}");
            eprintln!("tether: a browser viewer's desktop closed: {reason}");
            *shared.closed.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason.clone());
            (CLOSE_ERROR, reason)
        }
    };
    close(socket, code, &reason).await;
}

/// Refuses a page's WebSocket with `reason`.
pub(crate) async fn refuse(socket: WebSocket, reason: &str) {
    close(socket, CLOSE_ERROR, reason).await;
}

/// Sends a close frame (reason cut to fit) and lets the socket go.
async fn close(mut socket: WebSocket, code: u16, reason: &str) {
    let mut cut = reason.len().min(MAX_REASON);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    let _ = socket
        .send(Message::Close(Some(CloseFrame {
            code,
            reason: reason[..cut].into(),
        })))
        .await;
}

async fn serve(joined: &Joined, socket: &mut WebSocket) -> Result<()> {
    let mut device = tokio::time::timeout(HANDSHAKE_TIMEOUT, desktop_channel::open(joined))
        .await
        .context("the device did not answer in time")??;
    let mut from_page = Vec::new();
    tokio::time::timeout(HANDSHAKE_TIMEOUT, page_handshake(socket, &mut from_page))
        .await
        .context("the page did not finish its handshake in time")??;
    if !from_page.is_empty() {
        device.send(Bytes::from(from_page)).await?;
    }
    if !device.pending.is_empty() {
        let pending = std::mem::take(&mut device.pending);
        socket.send(Message::Binary(pending.into())).await?;
    }
    let mut ended = joined.ended.clone();
    loop {
        tokio::select! {
            // The page's input first: what it sent before it left still reaches the device.
            biased;
            message = socket.recv() => match message {
                Some(Ok(Message::Binary(data))) => device.send(data).await?,
                Some(Ok(Message::Text(_))) => bail!("the page sent text; RFB travels as binary"),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Close(_))) | None => {
                    device.finish().await;
                    return Ok(());
                }
                Some(Err(e)) => {
                    device.finish().await;
                    return Err(e).context("the page's WebSocket failed");
                }
            },
            from = device.next() => match from? {
                FromDevice::Data(data) => {
                    if socket.send(Message::Binary(data)).await.is_err() {
                        // The page left.
                        device.finish().await;
                        return Ok(());
                    }
                }
                FromDevice::Closed(reason) => bail!("{reason}"),
            },
            reason = async { ended.wait_for(Option::is_some).await.ok().and_then(|r| r.clone()) } => {
                bail!("the session ended ({})", reason.unwrap_or_default());
            }
        }
    }
}

/// Reads from the page until `want` bytes of RFB are in `buf`.
pub(crate) async fn fill(socket: &mut WebSocket, buf: &mut Vec<u8>, want: usize) -> Result<()> {
    while buf.len() < want {
        match socket.recv().await {
            Some(Ok(Message::Binary(data))) => buf.extend_from_slice(&data),
            Some(Ok(Message::Text(_))) => bail!("the page sent text; RFB travels as binary"),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            Some(Ok(Message::Close(_))) | None => bail!("the page left during its handshake"),
            Some(Err(e)) => return Err(e).context("the page's WebSocket failed"),
        }
    }
    Ok(())
}

/// The page's side of the handshake: version 3.8, security None, SecurityResult OK. What
/// the page sent beyond it (ClientInit) stays in `buf` for the device.
pub(crate) async fn page_handshake(socket: &mut WebSocket, buf: &mut Vec<u8>) -> Result<()> {
    socket
        .send(Message::Binary(Bytes::from_static(VERSION)))
        .await?;
    fill(socket, buf, 12).await?;
    if buf[..12] != *VERSION {
        bail!(
            "the page speaks {}, not RFB 3.8",
            tether_proto::text::escape(&String::from_utf8_lossy(&buf[..12]))
        );
    }
    buf.drain(..12);
    socket
        .send(Message::Binary(Bytes::from_static(&[1, NONE])))
        .await?;
    fill(socket, buf, 1).await?;
    if buf[0] != NONE {
        bail!("the page chose security type {}, not None", buf[0]);
    }
    buf.drain(..1);
    socket
        .send(Message::Binary(Bytes::from_static(&[0, 0, 0, 0])))
        .await?;
    Ok(())
}
