//! Listening (relay) and dialling (agent, technician): QUIC on a UDP port and TLS on the TCP
//! port of the same number; clients start QUIC, race TCP (optionally through an HTTP CONNECT
//! proxy) against it when QUIC has not connected within a short head start, and keep the first
//! connection.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use base64::Engine;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, info};

use crate::conn::{Connection, Transport, start_mux};
use futures::future::OptionFuture;

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

/// Which transports a client may use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Prefer {
    /// QUIC first; TCP alongside when QUIC has not connected within [`TCP_HEAD_START`].
    #[default]
    Auto,
    /// Only QUIC.
    Quic,
    /// Only TLS over TCP.
    Tcp,
}

/// How long QUIC has to itself before TCP is tried alongside it: long enough for a QUIC
/// handshake on any network where UDP gets through, short enough that a network dropping
/// UDP costs little.
pub const TCP_HEAD_START: Duration = Duration::from_millis(250);

/// What became of one transport in a connection attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attempt {
    /// Never started: the preference excluded it, or the other transport connected first.
    NotTried,
    /// Connected; this is the connection returned.
    Chosen,
    /// Failed or timed out, with why.
    Failed(String),
    /// Still under way when the other transport connected, and dropped.
    Abandoned,
}

/// What became of each transport in [`Dial::connect_racing`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Race {
    /// The QUIC attempt.
    pub quic: Attempt,
    /// The TCP attempt.
    pub tcp: Attempt,
}

impl Race {
    fn won(transport: Transport) -> Self {
        match transport {
            Transport::Quic => Self {
                quic: Attempt::Chosen,
                tcp: Attempt::NotTried,
            },
            Transport::Tcp => Self {
                quic: Attempt::NotTried,
                tcp: Attempt::Chosen,
            },
        }
    }
}

/// How a client reaches the relay.
#[derive(Clone, Debug)]
pub struct Dial {
    /// `host:port` of the relay.
    pub relay: String,
    /// TLS configuration (trust, and a client certificate for agents).
    pub tls: rustls::ClientConfig,
    /// Transport preference.
    pub prefer: Prefer,
    /// How long a QUIC attempt may take at most (TCP does not wait for it: see
    /// [`Dial::connect_racing`]).
    pub quic_timeout: Duration,
    /// `http://[user:pass@]host:port` (or `host:port`) of an HTTP CONNECT proxy for the TCP
    /// path.
    pub proxy: Option<String>,
}

fn split_host_port(addr: &str) -> Option<(String, u16)> {
    let (host, port) = addr.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Some((host.to_owned(), port.parse().ok()?))
}

impl Dial {
    fn server_name(&self) -> Result<ServerName<'static>, ConnectError> {
        let (host, _) = split_host_port(&self.relay)
            .ok_or_else(|| ConnectError::Address(self.relay.clone()))?;
        ServerName::try_from(host).map_err(|_| ConnectError::Address(self.relay.clone()))
    }

    async fn resolve(&self) -> Result<SocketAddr, ConnectError> {
        tokio::net::lookup_host(&self.relay)
            .await
            .map_err(io(format!("failed to resolve {}", self.relay)))?
            .next()
            .ok_or_else(|| ConnectError::Address(self.relay.clone()))
    }

    /// Connects: with [`Prefer::Auto`], QUIC and TCP race (see [`Dial::connect_racing`]).
    pub async fn connect(&self) -> Result<Connection, ConnectError> {
        self.connect_racing().await.map(|(conn, _)| conn)
    }

    /// Connects and says what became of each transport. With [`Prefer::Auto`], QUIC starts
    /// first and has [`TCP_HEAD_START`] to itself; if it has not connected by then (or failed
    /// sooner), TCP starts alongside it and the first connection wins, the other attempt is
    /// abandoned. A network that drops UDP so costs the head start, not the QUIC timeout.
    /// QUIC still gets at most `quic_timeout` (which matters when TCP fails too).
    pub async fn connect_racing(&self) -> Result<(Connection, Race), ConnectError> {
        self.race(TCP_HEAD_START).await
    }

    /// [`Dial::connect_racing`] with a given head start for QUIC.
    pub(crate) async fn race(
        &self,
        head_start: Duration,
    ) -> Result<(Connection, Race), ConnectError> {
        let quic = async {
            match tokio::time::timeout(self.quic_timeout, self.connect_quic()).await {
                Ok(Ok(conn)) => Ok(conn),
                Ok(Err(e)) => Err(with_sources(&e)),
                Err(_) => Err(format!("no answer within {:?}", self.quic_timeout)),
            }
        };
        match self.prefer {
            Prefer::Quic => {
                let conn = quic.await.map_err(|message| ConnectError::Quic {
                    addr: self.relay.clone(),
                    message,
                })?;
                return Ok((conn, Race::won(Transport::Quic)));
            }
            Prefer::Tcp => {
                let conn = self
                    .connect_tcp()
                    .await
                    .map_err(|e| ConnectError::Unreachable {
                        addr: self.relay.clone(),
                        quic: "not tried".into(),
                        tcp: with_sources(&e),
                    })?;
                return Ok((conn, Race::won(Transport::Tcp)));
            }
            Prefer::Auto => {}
        }
        let mut quic = std::pin::pin!(quic);
        let mut head_start = std::pin::pin!(tokio::time::sleep(head_start));
        let mut tcp = None;
        let (mut quic_failed, mut tcp_failed): (Option<String>, Option<String>) = (None, None);
        loop {
            tokio::select! {
                result = &mut quic, if quic_failed.is_none() => match result {
                    Ok(conn) => {
                        let tcp = if tcp.is_some() { Attempt::Abandoned } else { Attempt::NotTried };
                        return Ok((conn, Race { quic: Attempt::Chosen, tcp }));
                    }
                    Err(why) => {
                        debug!(relay = %self.relay, reason = %why, "QUIC connection attempt failed");
                        quic_failed = Some(why);
                        if tcp.is_none() {
                            tcp = Some(Box::pin(self.connect_tcp()));
                        }
                    }
                },
                () = &mut head_start, if tcp.is_none() => {
                    debug!(relay = %self.relay, "QUIC has not connected yet; trying TCP alongside");
                    tcp = Some(Box::pin(self.connect_tcp()));
                }
                Some(result) = OptionFuture::from(tcp.as_mut()), if tcp.is_some() && tcp_failed.is_none() => match result {
                    Ok(conn) => {
                        let quic = match quic_failed {
                            Some(why) => Attempt::Failed(why),
                            None => Attempt::Abandoned,
                        };
                        info!(relay = %self.relay, quic = ?quic, "Connected over TCP because QUIC had not connected");
                        return Ok((conn, Race { quic, tcp: Attempt::Chosen }));
                    }
                    Err(e) => tcp_failed = Some(with_sources(&e)),
                },
            }
            if let (Some(quic), Some(tcp)) = (&quic_failed, &tcp_failed) {
                return Err(ConnectError::Unreachable {
                    addr: self.relay.clone(),
                    quic: quic.clone(),
                    tcp: tcp.clone(),
                });
            }
        }
    }

    async fn connect_quic(&self) -> Result<Connection, ConnectError> {
        let addr = self.resolve().await?;
        let bind: SocketAddr = if addr.is_ipv6() {
            "[::]:0"
                .parse()
                .map_err(|_| ConnectError::Address("[::]:0".into()))?
        } else {
            "0.0.0.0:0"
                .parse()
                .map_err(|_| ConnectError::Address("0.0.0.0:0".into()))?
        };
        let socket = udp_socket(bind).map_err(io("failed to open a UDP socket"))?;
        let runtime = quinn::default_runtime()
            .ok_or_else(|| ConnectError::Address("no async runtime for QUIC".into()))?;
        let endpoint =
            quinn::Endpoint::new(quinn::EndpointConfig::default(), None, socket, runtime)
                .map_err(io("failed to open a UDP socket"))?;
        let crypto =
            quinn::crypto::rustls::QuicClientConfig::try_from(self.tls.clone()).map_err(|e| {
                ConnectError::Quic {
                    addr: self.relay.clone(),
                    message: e.to_string(),
                }
            })?;
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        config.transport_config(Arc::new(quic_transport()));
        // Validates the host part; quinn takes it as text.
        self.server_name()?;
        let host = split_host_port(&self.relay)
            .map(|(h, _)| h)
            .unwrap_or_default();
        let conn = endpoint
            .connect_with(config, addr, &host)
            .map_err(|e| ConnectError::Quic {
                addr: self.relay.clone(),
                message: e.to_string(),
            })?
            .await
            .map_err(|e| ConnectError::Quic {
                addr: self.relay.clone(),
                message: e.to_string(),
            })?;
        Ok(Connection::Quic(conn, Some(endpoint)))
    }

    async fn connect_tcp(&self) -> Result<Connection, ConnectError> {
        let stream = match &self.proxy {
            Some(proxy) => connect_via_proxy(proxy, &self.relay).await?,
            None => TcpStream::connect(&self.relay)
                .await
                .map_err(io(format!("failed to connect to {} over TCP", self.relay)))?,
        };
        let _ = stream.set_nodelay(true);
        let remote = stream
            .peer_addr()
            .map_err(io("failed to read the peer address"))?;
        let connector = tokio_rustls::TlsConnector::from(Arc::new(self.tls.clone()));
        let tls = tokio::time::timeout(
            Duration::from_secs(10),
            connector.connect(self.server_name()?, stream),
        )
        .await
        .map_err(|_| ConnectError::Io {
            what: "TLS handshake timed out".into(),
            source: std::io::ErrorKind::TimedOut.into(),
        })?
        .map_err(io("TLS handshake failed"))?;
        Ok(start_mux(tls, yamux::Mode::Client, None, remote))
    }
}

/// Opens a tunnel to `target` through an HTTP CONNECT proxy.
pub async fn connect_via_proxy(proxy: &str, target: &str) -> Result<TcpStream, ConnectError> {
    // Named in errors without its credentials.
    let shown = match proxy.rsplit_once('@') {
        Some((auth, host)) => match auth.split_once("://") {
            Some((scheme, _)) => format!("{scheme}://{host}"),
            None => host.to_owned(),
        },
        None => proxy.to_owned(),
    };
    let err = |message: String| ConnectError::Proxy {
        proxy: shown.clone(),
        message,
    };
    // A proxy without a scheme is an HTTP proxy, as curl and Go read HTTPS_PROXY.
    let rest = match proxy.split_once("://") {
        Some(("http" | "HTTP", rest)) => rest,
        Some(_) => return Err(err("only http:// proxies are supported".into())),
        None => proxy,
    };
    let rest = rest.trim_end_matches('/');
    let (auth, hostport) = match rest.rsplit_once('@') {
        Some((auth, hp)) => (Some(auth), hp),
        None => (None, rest),
    };
    let mut stream = TcpStream::connect(hostport)
        .await
        .map_err(|e| err(format!("failed to connect: {e}")))?;
    let mut request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
    if let Some(auth) = auth {
        let encoded = base64::engine::general_purpose::STANDARD.encode(auth);
        request.push_str(&format!("Proxy-Authorization: Basic {encoded}\r\n"));
    }
    request.push_str("\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| err(format!("failed to send CONNECT: {e}")))?;
    // Read the response head byte by byte so nothing of the tunnel is consumed.
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 8192 {
            return Err(err("response head too long".into()));
        }
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut byte))
            .await
            .map_err(|_| err("no answer within 10s".into()))?
            .map_err(|e| err(format!("failed to read the answer: {e}")))?;
        if n == 0 {
            return Err(err("closed the connection".into()));
        }
        head.push(byte[0]);
    }
    let status = String::from_utf8_lossy(&head);
    let first = status.lines().next().unwrap_or_default();
    if first.split_whitespace().nth(1) != Some("200") {
        return Err(err(format!("refused the tunnel: {first}")));
    }
    Ok(stream)
}
