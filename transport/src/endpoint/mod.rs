//! Listening (relay) and dialling (agent, technician): QUIC on a UDP port and TLS on the TCP
//! port of the same number; clients start QUIC, race TCP (optionally through an HTTP CONNECT
//! proxy) against it when QUIC has not connected within a short head start, and keep the first
//! connection.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tracing::debug;

use crate::conn::{Connection, start_mux};

mod dial;

pub use dial::{Attempt, Dial, Prefer, Race, TCP_HEAD_START, connect_via_proxy};

/// A transport or handshake failure.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// A socket operation failed.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The QUIC handshake failed.
    #[error("QUIC connection to {addr} failed: {message}")]
    Quic {
        /// The relay.
        addr: String,
        /// Why.
        message: String,
    },
    /// The relay address is not usable.
    #[error("invalid relay address {0:?}: expected host:port")]
    Address(String),
    /// The proxy refused or is malformed.
    #[error("HTTP proxy {proxy}: {message}")]
    Proxy {
        /// The proxy.
        proxy: String,
        /// Why.
        message: String,
    },
    /// Neither transport worked.
    #[error("could not reach the relay at {addr}: QUIC: {quic}; TCP: {tcp}")]
    Unreachable {
        /// The relay.
        addr: String,
        /// The QUIC failure.
        quic: String,
        /// The TCP failure.
        tcp: String,
    },
}

/// An error with its sources (e.g. "TLS handshake failed: invalid peer certificate: …"), so
/// the reason survives being turned into a sentence.
fn with_sources(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ConnectError {
    let what = what.into();
    move |source| ConnectError::Io { what, source }
}

/// QUIC transport settings. Windows are bounded so memory per connection is bounded: the
/// defaults let a connection's receive window grow without limit.
pub fn quic_transport() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.receive_window(quinn::VarInt::from_u32(8 * 1024 * 1024));
    t.stream_receive_window(quinn::VarInt::from_u32(2 * 1024 * 1024));
    t.send_window(8 * 1024 * 1024);
    t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(64));
    t.max_concurrent_uni_streams(quinn::VarInt::from_u32(0));
    // What is in flight queues in front of every channel's datagrams: bound it by delay.
    t.congestion_controller_factory(std::sync::Arc::new(
        crate::congestion::DelayBoundedConfig::default(),
    ));
    t.keep_alive_interval(Some(Duration::from_secs(5)));
    t.max_idle_timeout(Some(quinn::IdleTimeout::from(quinn::VarInt::from_u32(
        20_000,
    ))));
    t
}

/// The UDP socket buffers QUIC endpoints ask for, each way. At the kernel's defaults
/// (≈ 200 KiB) a burst of datagrams is dropped before the endpoint reads it, and every drop
/// is a loss that halves the sender's window; 4 MiB holds a burst at a few Gbit/s. The kernel
/// grants at most `net.core.rmem_max`/`wmem_max` (a node setting, see docs/dataplane.md).
/// Larger buffers do not add latency here: what queues is bounded by the connection's send
/// window and by stream priorities, not by the socket.
pub const UDP_BUFFER: usize = 4 * 1024 * 1024;

/// A UDP socket bound to `addr` with [`UDP_BUFFER`]-sized buffers (or what the kernel grants).
fn udp_socket(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        // As quinn's own endpoints do: one socket for IPv4 and IPv6 where the OS allows it.
        let _ = socket.set_only_v6(false);
    }
    // Best effort: a kernel that refuses keeps its defaults.
    let _ = socket.set_recv_buffer_size(UDP_BUFFER);
    let _ = socket.set_send_buffer_size(UDP_BUFFER);
    debug!(
        recv = socket.recv_buffer_size().unwrap_or(0),
        send = socket.send_buffer_size().unwrap_or(0),
        "Sized a QUIC socket's buffers"
    );
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// The relay's listeners: QUIC and TLS-over-TCP on the same port number.
pub struct Listener {
    quic: Option<quinn::Endpoint>,
    tcp: Option<TcpListener>,
    tls: Arc<RwLock<tokio_rustls::TlsAcceptor>>,
    local: SocketAddr,
}

/// A connection attempt accepted but not yet established.
pub enum Incoming {
    /// A QUIC connection attempt.
    Quic(Box<quinn::Incoming>),
    /// A TCP connection waiting for its TLS handshake.
    Tcp(TcpStream, SocketAddr, tokio_rustls::TlsAcceptor),
}

impl Incoming {
    /// Completes the handshake (run it in the connection's own task).
    pub async fn establish(self) -> Result<Connection, ConnectError> {
        match self {
            Self::Quic(incoming) => {
                let addr = incoming.remote_address().to_string();
                let conn = (*incoming).await.map_err(|e| ConnectError::Quic {
                    addr,
                    message: e.to_string(),
                })?;
                Ok(Connection::Quic(conn, None))
            }
            Self::Tcp(stream, remote, acceptor) => {
                let _ = stream.set_nodelay(true);
                let tls = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream))
                    .await
                    .map_err(|_| ConnectError::Io {
                        what: "TLS handshake timed out".into(),
                        source: std::io::ErrorKind::TimedOut.into(),
                    })?
                    .map_err(io("TLS handshake failed"))?;
                let certs = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .map(|c| c.iter().map(|c| c.clone().into_owned()).collect());
                Ok(start_mux(tls, yamux::Mode::Server, certs, remote))
            }
        }
    }
}

impl Listener {
    /// Binds QUIC (unless `quic` is false) and TCP on `addr` (port 0 picks one free port for
    /// both).
    pub async fn bind(
        addr: SocketAddr,
        tls: rustls::ServerConfig,
        quic: bool,
    ) -> Result<Self, ConnectError> {
        let tcp = TcpListener::bind(addr)
            .await
            .map_err(io(format!("failed to listen on TCP {addr}")))?;
        let local = tcp
            .local_addr()
            .map_err(io("failed to read the bound address"))?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls.clone()));
        let quic = if quic {
            Some(Self::quic_endpoint(local, tls)?)
        } else {
            None
        };
        Ok(Self {
            quic,
            tcp: Some(tcp),
            tls: Arc::new(RwLock::new(acceptor)),
            local,
        })
    }

    fn quic_server(tls: rustls::ServerConfig) -> Result<quinn::ServerConfig, ConnectError> {
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls).map_err(|e| {
            ConnectError::Quic {
                addr: "listener".into(),
                message: e.to_string(),
            }
        })?;
        let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        config.transport_config(Arc::new(quic_transport()));
        Ok(config)
    }

    fn quic_endpoint(
        addr: SocketAddr,
        tls: rustls::ServerConfig,
    ) -> Result<quinn::Endpoint, ConnectError> {
        let what = format!("failed to listen on UDP {addr}");
        let socket = udp_socket(addr).map_err(io(what.clone()))?;
        let runtime = quinn::default_runtime()
            .ok_or_else(|| ConnectError::Address("no async runtime for QUIC".into()))?;
        quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            Some(Self::quic_server(tls)?),
            socket,
            runtime,
        )
        .map_err(io(what))
    }

    /// The bound address (TCP and UDP share the port).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Replaces the TLS configuration (a rotated certificate, a new CA bundle) for new
    /// connections; established ones are not disturbed.
    pub fn set_tls(&self, tls: rustls::ServerConfig) -> Result<(), ConnectError> {
        self.tls_updater().set(tls)
    }

    /// A handle that updates the TLS configuration while the listener serves elsewhere.
    pub fn tls_updater(&self) -> TlsUpdater {
        TlsUpdater {
            quic: self.quic.clone(),
            tls: self.tls.clone(),
        }
    }

    /// The next connection attempt on either transport.
    pub async fn accept(&self) -> Option<Incoming> {
        loop {
            tokio::select! {
                incoming = async {
                    match &self.quic {
                        Some(q) => q.accept().await,
                        None => std::future::pending().await,
                    }
                } => return incoming.map(|i| Incoming::Quic(Box::new(i))),
                accepted = async {
                    match &self.tcp {
                        Some(t) => t.accept().await,
                        None => std::future::pending().await,
                    }
                } => match accepted {
                    Ok((stream, remote)) => {
                        let acceptor = self.tls.read().unwrap_or_else(|e| e.into_inner()).clone();
                        return Some(Incoming::Tcp(stream, remote, acceptor));
                    }
                    Err(e) => {
                        debug!(error = %e, "Failed to accept a TCP connection");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
            }
        }
    }

    /// Stops accepting: QUIC connections get `reason`, the TCP listener closes.
    pub fn close(&mut self, reason: &str) {
        if let Some(q) = &self.quic {
            q.close(0u32.into(), reason.as_bytes());
        }
        self.tcp = None;
    }

    /// Waits until QUIC connections have finished closing.
    pub async fn wait_idle(&self) {
        if let Some(q) = &self.quic {
            let _ = tokio::time::timeout(Duration::from_secs(2), q.wait_idle()).await;
        }
    }
}

/// Updates a listener's TLS configuration.
#[derive(Clone)]
pub struct TlsUpdater {
    quic: Option<quinn::Endpoint>,
    tls: Arc<RwLock<tokio_rustls::TlsAcceptor>>,
}

impl TlsUpdater {
    /// Uses `tls` for new connections on both transports.
    pub fn set(&self, tls: rustls::ServerConfig) -> Result<(), ConnectError> {
        if let Some(q) = &self.quic {
            q.set_server_config(Some(Listener::quic_server(tls.clone())?));
        }
        *self.tls.write().unwrap_or_else(|e| e.into_inner()) =
            tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        Ok(())
    }
}
