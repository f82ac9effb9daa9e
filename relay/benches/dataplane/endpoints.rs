//! The two ends of every measured path: the benchmark agent and its channels (pretend shells,
//! an upload sink, a download source), the technician, the direct QUIC server, and the
//! tunnel's upstream; channels opened over QUIC or through the tunnel alike.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use rustls::pki_types::ServerName;
use tether_proto::frame::{Frame, FrameKind};
use tether_proto::message::{
    AgentInfo, Attach, AttachReply, CONTROL_PRIORITY, ChannelKind, Control, Hello, HelloReply,
    Join, PROTOCOL_VERSION, Role, ShellParams, Welcome,
};
use tether_transport::{Connection, Dial, FrameReader, FrameWriter, Listener, Prefer, framed, tls};
use tokio::net::{TcpListener, TcpStream};

use crate::harness::Pki;
use crate::{BULK_FRAME, Channel, SHELL_FRAME};

fn dial(relay: &str, ca: &str, identity: Option<(&str, &str)>) -> Dial {
    Dial {
        relay: relay.to_owned(),
        tls: tls::client_config(ca, identity).unwrap(),
        prefer: Prefer::Quic,
        quic_timeout: Duration::from_secs(10),
        proxy: None,
    }
}

/// Terminal-like output (`ls -l` lines, printable ASCII), one shell read's worth.
fn shell_chunk() -> Bytes {
    let mut out = Vec::with_capacity(SHELL_FRAME);
    let mut i = 0u64;
    while out.len() < SHELL_FRAME {
        out.extend_from_slice(
            format!(
                "-rw-r--r-- 1 bench bench {:>8} Nov 22 10:00 file-{i:06}.log\n",
                i * 37
            )
            .as_bytes(),
        );
        i += 1;
    }
    out.truncate(SHELL_FRAME);
    Bytes::from(out)
}

/// What a technician's first frame on a files channel says to ask for a download (the agent
/// sends until the technician's end of data). Without it, the channel is an upload sink.
pub(crate) fn download_request() -> serde_json::Value {
    serde_json::json!({"download": true})
}

/// Serves one channel, on the agent's side of every path. `Shell` runs one of two pretend
/// commands: `bench-output N` (N bytes of output, then waits for the technician to leave) or
/// `bench-echo` (echoes every frame, as a terminal echoes keystrokes). `Files` is an upload
/// sink that reports the bytes received, or a download source. Other kinds echo.
async fn serve_channel(attach: Attach, mut r: FrameReader, mut w: FrameWriter) {
    let command = attach.shell.map(|s| s.command).unwrap_or_default();
    match attach.kind {
        ChannelKind::Shell if command.first().is_some_and(|c| c == "bench-output") => {
            let n: u64 = command.get(1).and_then(|n| n.parse().ok()).unwrap_or(0);
            let chunk = shell_chunk();
            let mut sent = 0u64;
            while sent < n {
                let len = (n - sent).min(chunk.len() as u64) as usize;
                if w.send(&Frame::data(chunk.slice(..len))).await.is_err() {
                    return;
                }
                sent += len as u64;
            }
            while let Ok(Some(_)) = r.next().await {}
        }
        ChannelKind::Files => {
            let mut n = 0u64;
            while let Ok(Some(f)) = r.next().await {
                match f.kind {
                    FrameKind::Data => n += f.payload.len() as u64,
                    FrameKind::EndOfData => break,
                    FrameKind::Message => {
                        if f.parse::<serde_json::Value>().ok() == Some(download_request()) {
                            return download_source(r, w).await;
                        }
                    }
                }
            }
            let _ = w.message(&serde_json::json!({"received": n})).await;
        }
        _ => {
            while let Ok(Some(f)) = r.next().await {
                if w.send(&f).await.is_err() {
                    break;
                }
            }
        }
    }
}

/// Sends 64 KiB frames until the technician's end of data (read by a task of its own, so
/// that no frame is cut off half-written), then an end of data.
async fn download_source(mut r: FrameReader, mut w: FrameWriter) {
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    let reader = tokio::spawn(async move {
        while let Ok(Some(f)) = r.next().await {
            if f.kind == FrameKind::EndOfData {
                break;
            }
        }
        stopped.store(true, Ordering::Relaxed);
    });
    let chunk = Bytes::from(vec![0x5Au8; BULK_FRAME]);
    while !stop.load(Ordering::Relaxed) {
        if w.send(&Frame::data(chunk.clone())).await.is_err() {
            reader.abort();
            return;
        }
    }
    let _ = w.send(&Frame::end_of_data()).await;
    let _ = reader.await;
}

/// A benchmark agent: connects, and serves whatever channels the relay opens, setting each
/// stream's priority as the real agent does.
pub(crate) async fn agent(
    relay: String,
    ca: String,
    cert: (String, String),
    serve_channels: bool,
) -> Connection {
    let conn = dial(&relay, &ca, Some((&cert.0, &cert.1)))
        .connect()
        .await
        .unwrap();
    let (mut r, mut w) = framed(conn.open().await.unwrap());
    w.set_priority(CONTROL_PRIORITY);
    w.message(&Hello {
        versions: vec![PROTOCOL_VERSION],
        role: Role::Agent,
        token: None,
        agent: Some(AgentInfo::default()),
        enroll: None,
        client: "bench".into(),
        technician: None,
        forwarded: None,
    })
    .await
    .unwrap();
    let HelloReply::Welcome(_) = r.message().await.unwrap() else {
        panic!("agent refused")
    };
    let c = conn.clone();
    tokio::spawn(async move {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Control>(16);
        tokio::spawn(async move {
            while let Some(m) = rx.recv().await {
                if w.message(&m).await.is_err() {
                    break;
                }
            }
        });
        while let Ok(message) = r.message::<Control>().await {
            match message {
                Control::Open {
                    channel, attach, ..
                } if serve_channels => {
                    let c = c.clone();
                    tokio::spawn(async move {
                        let Ok(stream) = c.open().await else { return };
                        let (rr, mut ww) = framed(stream);
                        ww.set_priority(attach.kind.priority());
                        if ww.message(&Join { channel }).await.is_ok() {
                            serve_channel(attach, rr, ww).await;
                        }
                    });
                }
                Control::Ping { n } => {
                    let _ = tx.send(Control::Pong { n }).await;
                }
                _ => {}
            }
        }
    });
    conn
}

/// The technician side: a technician certificate (carrying the session's grant), hello, then
/// channels.
pub(crate) async fn technician(relay: &str, ca: &str, identity: &(String, String)) -> Connection {
    let conn = dial(relay, ca, Some((&identity.0, &identity.1)))
        .connect()
        .await
        .unwrap();
    let (mut r, mut w) = framed(conn.open().await.unwrap());
    w.set_priority(CONTROL_PRIORITY);
    w.message(&Hello {
        versions: vec![PROTOCOL_VERSION],
        role: Role::Technician,
        token: None,
        agent: None,
        enroll: None,
        client: "bench".into(),
        technician: None,
        forwarded: None,
    })
    .await
    .unwrap();
    match r.message::<HelloReply>().await.unwrap() {
        HelloReply::Welcome(_) => {}
        HelloReply::Refused(x) => panic!("refused: {}", x.message),
    }
    // Keep the control stream open (closing it leaves the session).
    tokio::spawn(async move {
        let _keep = w;
        while r.next().await.ok().flatten().is_some() {}
    });
    conn
}

pub(crate) fn files() -> Attach {
    Attach {
        kind: ChannelKind::Files,
        shell: None,
    }
}

pub(crate) fn shell(command: Vec<String>) -> Attach {
    Attach {
        kind: ChannelKind::Shell,
        shell: Some(ShellParams {
            command,
            tty: true,
            cols: 120,
            rows: 40,
            term: Some("xterm-256color".into()),
        }),
    }
}

pub(crate) fn echo_shell() -> Attach {
    shell(vec!["bench-echo".into()])
}

/// Opens a channel on a QUIC connection (relay or direct) at the channel's priority, as
/// `kubectl tether` does.
pub(crate) async fn attach(conn: &Connection, attach: Attach) -> Channel {
    let (mut r, mut w) = framed(conn.open().await.unwrap());
    w.set_priority(attach.kind.priority());
    w.message(&attach).await.unwrap();
    match r.message::<AttachReply>().await.unwrap() {
        AttachReply::Attached { .. } => (r, w),
        AttachReply::Refused(x) => panic!("refused: {}", x.message),
    }
}

/// Where a path's channels open: each is a stream of one connection (relay, direct), or its
/// own TCP connection through the tunnel.
pub(crate) enum Route<'a> {
    Quic(&'a Connection),
    Tunnel { addr: SocketAddr, ca: &'a str },
}

impl Route<'_> {
    pub(crate) async fn open(&self, a: Attach) -> Channel {
        match self {
            Self::Quic(conn) => attach(conn, a).await,
            Self::Tunnel { addr, ca } => tunnel_channel(*addr, ca, a).await,
        }
    }
}

/// A TLS connection through the tunnel, carrying one channel (frames over the TLS stream, the
/// same frames as on a QUIC stream).
async fn tunnel_channel(addr: SocketAddr, ca: &str, attach: Attach) -> Channel {
    let tcp = TcpStream::connect(addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let connector =
        tokio_rustls::TlsConnector::from(Arc::new(tls::client_config(ca, None).unwrap()));
    let stream = connector
        .connect(ServerName::from(addr.ip()), tcp)
        .await
        .unwrap();
    let (r, w) = tokio::io::split(stream);
    let (mut r, mut w) = (framed::reader(r), framed::writer(w));
    w.message(&attach).await.unwrap();
    match r.message::<AttachReply>().await.unwrap() {
        AttachReply::Attached { .. } => (r, w),
        AttachReply::Refused(x) => panic!("refused: {}", x.message),
    }
}

/// The tunnel's upstream: the agent's side, serving one channel per TLS connection with the
/// same channel code as the benchmark agent. Returns its address.
pub(crate) async fn tunnel_agent(pki: &Pki) -> SocketAddr {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(
        tls::server_config(&pki.server_cert, &pki.server_key, &pki.ca).unwrap(),
    ));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let _ = tcp.set_nodelay(true);
                let Ok(stream) = acceptor.accept(tcp).await else {
                    return;
                };
                let (r, w) = tokio::io::split(stream);
                let (mut r, mut w) = (framed::reader(r), framed::writer(w));
                let Ok(attach) = r.message::<Attach>().await else {
                    return;
                };
                if w.message(&AttachReply::Attached { channel: 1 })
                    .await
                    .is_ok()
                {
                    serve_channel(attach, r, w).await;
                }
            });
        }
    });
    addr
}

/// A direct server with the relay's role in the handshake but no relay in between, serving
/// the channels itself at their priorities.
pub(crate) async fn direct_server(pki: &Pki) -> u16 {
    let tls = tls::server_config(&pki.server_cert, &pki.server_key, &pki.ca).unwrap();
    let listener = Listener::bind("127.0.0.1:0".parse().unwrap(), tls, true)
        .await
        .unwrap();
    let port = listener.local_addr().port();
    tokio::spawn(async move {
        while let Some(incoming) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(conn) = incoming.establish().await else {
                    return;
                };
                let Some(control) = conn.accept().await else {
                    return;
                };
                let (mut r, mut w) = framed(control);
                w.set_priority(CONTROL_PRIORITY);
                if r.message::<Hello>().await.is_err() {
                    return;
                }
                let welcome = HelloReply::Welcome(Welcome {
                    version: 1,
                    relay: "direct".into(),
                    session: None,
                    certificate: None,
                    ca_bundle: None,
                });
                if w.message(&welcome).await.is_err() {
                    return;
                }
                let mut id = 0;
                while let Some(stream) = conn.accept().await {
                    id += 1;
                    let (mut r, mut w) = framed(stream);
                    tokio::spawn(async move {
                        let Ok(attach) = r.message::<Attach>().await else {
                            return;
                        };
                        w.set_priority(attach.kind.priority());
                        if w.message(&AttachReply::Attached { channel: id })
                            .await
                            .is_ok()
                        {
                            serve_channel(attach, r, w).await;
                        }
                    });
                }
            });
        }
    });
    port
}
