//! One connection type over two transports: QUIC, and TLS over TCP multiplexed by yamux for
//! networks that block UDP. Only the client side (agent, technician) opens streams; the relay
//! accepts them. Every yamux connection is driven by a task its handle owns.

use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Mutex, mpsc, oneshot};
use tokio_util::compat::{FuturesAsyncReadCompatExt, TokioAsyncReadCompatExt};
use tokio_util::sync::CancellationToken;
use tracing::debug;

/// A stream's sending half.
pub type SendHalf = Pin<Box<dyn SendStream>>;

/// A stream's sending half that can be told how urgent its data is.
pub trait SendStream: AsyncWrite + Send {
    /// Sets the stream's priority: among a connection's streams with data to send, higher
    /// priorities go first (QUIC). A no-op where the transport has no priorities (yamux
    /// over TCP, local pipes).
    fn set_priority(&self, priority: i32) {
        let _ = priority;
    }
}

impl SendStream for quinn::SendStream {
    fn set_priority(&self, priority: i32) {
        // Fails only on a stream that is already closed, which then needs no priority.
        let _ = quinn::SendStream::set_priority(self, priority);
    }
}

/// Any writer, without priorities.
pub struct Plain(Pin<Box<dyn AsyncWrite + Send>>);

impl Plain {
    /// Wraps `w`.
    pub fn new(w: impl AsyncWrite + Send + 'static) -> Self {
        Self(Box::pin(w))
    }
}

impl SendStream for Plain {}

impl AsyncWrite for Plain {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.0.as_mut().poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<io::Result<()>> {
        self.0.as_mut().poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<io::Result<()>> {
        self.0.as_mut().poll_shutdown(cx)
    }
}
/// A stream's receiving half.
pub type RecvHalf = Pin<Box<dyn AsyncRead + Send>>;

/// A bidirectional stream.
pub struct BiStream {
    /// Where to write.
    pub send: SendHalf,
    /// Where to read.
    pub recv: RecvHalf,
}

impl std::fmt::Debug for BiStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BiStream")
    }
}

type OpenRequest = oneshot::Sender<io::Result<yamux::Stream>>;

/// A yamux session over TLS over TCP, driven by its own task.
pub struct Mux {
    open: mpsc::Sender<OpenRequest>,
    inbound: Mutex<mpsc::Receiver<yamux::Stream>>,
    closed: CancellationToken,
    driver: tokio::task::JoinHandle<()>,
    peer_certificates: Option<Vec<CertificateDer<'static>>>,
    remote: SocketAddr,
}

impl Drop for Mux {
    fn drop(&mut self) {
        self.closed.cancel();
        self.driver.abort();
    }
}

/// Which transport a connection uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// QUIC over UDP.
    Quic,
    /// TLS over TCP, multiplexed.
    Tcp,
}

impl Transport {
    /// Lower-case name for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Quic => "quic",
            Self::Tcp => "tcp",
        }
    }
}

/// A connection between a client (agent or technician) and the relay.
pub enum Connection {
    /// QUIC, with the client's endpoint (absent on the relay's side, which owns its own).
    Quic(quinn::Connection, Option<quinn::Endpoint>),
    /// TLS over TCP with yamux.
    Mux(Arc<Mux>),
}

impl Clone for Connection {
    fn clone(&self) -> Self {
        match self {
            Self::Quic(c, e) => Self::Quic(c.clone(), e.clone()),
            Self::Mux(m) => Self::Mux(m.clone()),
        }
    }
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Connection({} {})",
            self.transport().as_str(),
            self.remote_address()
        )
    }
}

fn mux_stream(stream: yamux::Stream) -> BiStream {
    let (recv, send) = tokio::io::split(stream.compat());
    BiStream {
        send: Box::pin(Plain::new(send)),
        recv: Box::pin(recv),
    }
}

impl Connection {
    /// Which transport this is.
    pub fn transport(&self) -> Transport {
        match self {
            Self::Quic(..) => Transport::Quic,
            Self::Mux(_) => Transport::Tcp,
        }
    }

    /// The peer's address.
    pub fn remote_address(&self) -> SocketAddr {
        match self {
            Self::Quic(c, _) => c.remote_address(),
            Self::Mux(m) => m.remote,
        }
    }

    /// The certificates the peer presented (verified by TLS), if any.
    pub fn peer_certificates(&self) -> Option<Vec<CertificateDer<'static>>> {
        match self {
            Self::Quic(c, _) => c
                .peer_identity()
                .and_then(|id| id.downcast::<Vec<CertificateDer<'static>>>().ok())
                .map(|b| *b),
            Self::Mux(m) => m.peer_certificates.clone(),
        }
    }

    /// Opens a stream (client side).
    pub async fn open(&self) -> io::Result<BiStream> {
        match self {
            Self::Quic(c, _) => {
                let (send, recv) = c.open_bi().await.map_err(io::Error::other)?;
                Ok(BiStream {
                    send: Box::pin(send),
                    recv: Box::pin(recv),
                })
            }
            Self::Mux(m) => {
                let (tx, rx) = oneshot::channel();
                m.open.send(tx).await.map_err(|_| {
                    io::Error::new(io::ErrorKind::NotConnected, "connection closed")
                })?;
                let stream = rx.await.map_err(|_| {
                    io::Error::new(io::ErrorKind::NotConnected, "connection closed")
                })??;
                Ok(mux_stream(stream))
            }
        }
    }

    /// Accepts the next stream the peer opened (relay side); `None` once the connection ends.
    pub async fn accept(&self) -> Option<BiStream> {
        match self {
            Self::Quic(c, _) => match c.accept_bi().await {
                Ok((send, recv)) => Some(BiStream {
                    send: Box::pin(send),
                    recv: Box::pin(recv),
                }),
                Err(e) => {
                    debug!(error = %e, "Stopped accepting QUIC streams");
                    None
                }
            },
            Self::Mux(m) => m.inbound.lock().await.recv().await.map(mux_stream),
        }
    }

    /// Closes the connection, telling the peer `reason`.
    pub fn close(&self, reason: &str) {
        match self {
            Self::Quic(c, _) => c.close(0u32.into(), reason.as_bytes()),
            Self::Mux(m) => m.closed.cancel(),
        }
    }

    /// Closes the connection and waits (briefly) until the peer has been told, so a client
    /// that exits right after does not leave the relay waiting for the idle timeout.
    pub async fn close_and_flush(&self, reason: &str) {
        self.close(reason);
        if let Self::Quic(_, Some(endpoint)) = self {
            let _ =
                tokio::time::timeout(std::time::Duration::from_secs(1), endpoint.wait_idle()).await;
        }
    }

    /// Resolves when the connection has ended, whoever ended it.
    pub async fn closed(&self) {
        match self {
            Self::Quic(c, _) => {
                c.closed().await;
            }
            Self::Mux(m) => m.closed.cancelled().await,
        }
    }
}

/// yamux settings: bounded receive windows so a connection's memory is bounded.
pub fn mux_config() -> yamux::Config {
    let mut config = yamux::Config::default();
    config.set_max_num_streams(64);
    config.set_max_connection_receive_window(Some(16 * 1024 * 1024));
    config
}

/// Wraps an established TLS stream in a yamux session driven by a task of its own.
pub fn start_mux<S>(
    io: S,
    mode: yamux::Mode,
    peer_certificates: Option<Vec<CertificateDer<'static>>>,
    remote: SocketAddr,
) -> Connection
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let mut session = yamux::Connection::new(io.compat(), mux_config(), mode);
    let (open_tx, mut open_rx) = mpsc::channel::<OpenRequest>(16);
    let (in_tx, in_rx) = mpsc::channel::<yamux::Stream>(64);
    let closed = CancellationToken::new();
    let driver_closed = closed.clone();
    let driver = tokio::spawn(async move {
        let mut pending_open: Option<OpenRequest> = None;
        let result = poll_fn(|cx| {
            if driver_closed.is_cancelled() {
                return Poll::Ready(Ok(()));
            }
            // Open streams the owner asked for.
            loop {
                if pending_open.is_some() {
                    match session.poll_new_outbound(cx) {
                        Poll::Ready(result) => {
                            if let Some(reply) = pending_open.take() {
                                let _ = reply.send(result.map_err(io::Error::other));
                            }
                            continue;
                        }
                        Poll::Pending => break,
                    }
                }
                match open_rx.poll_recv(cx) {
                    Poll::Ready(Some(reply)) => pending_open = Some(reply),
                    _ => break,
                }
            }
            // Drive the connection and hand over streams the peer opened.
            loop {
                match session.poll_next_inbound(cx) {
                    Poll::Ready(Some(Ok(stream))) => {
                        if in_tx.try_send(stream).is_err() {
                            debug!("Dropped an inbound stream: too many waiting");
                        }
                    }
                    Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
                    Poll::Ready(None) => return Poll::Ready(Ok(())),
                    Poll::Pending => return Poll::Pending,
                }
            }
        });
        let cancelled = driver_closed.clone();
        tokio::select! {
            r = result => {
                if let Err(e) = r {
                    debug!(error = %e, "The multiplexed connection ended");
                }
            }
            () = cancelled.cancelled() => {}
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), poll_fn(|cx| session.poll_close(cx)))
            .await;
        driver_closed.cancel();
    });
    Connection::Mux(Arc::new(Mux {
        open: open_tx,
        inbound: Mutex::new(in_rx),
        closed,
        driver,
        peer_certificates,
        remote,
    }))
}
