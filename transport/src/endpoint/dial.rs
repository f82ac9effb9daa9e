//! Dialling the relay (agent, technician): QUIC first, TLS over TCP raced against it once QUIC
//! has had a short head start (optionally through an HTTP CONNECT proxy), the first connection
//! kept.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use futures::future::OptionFuture;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::{debug, info};

use super::{ConnectError, io, quic_transport, udp_socket, with_sources};
use crate::conn::{Connection, Transport, start_mux};

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
