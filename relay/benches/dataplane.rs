//! Data-plane benchmark (prints numbers, asserts nothing), three paths side by side in one run:
//! the relay, an encrypted TCP tunnel (TLS 1.3 terminated on both legs, as the relay does, but
//! copying bytes instead of frames) and the same QUIC client and server code connected
//! directly:
//!
//! - goodput of one bulk stream technician → agent on each path, their ratios, and the CPU
//!   seconds per GB of the process in the middle (relay, tunnel);
//! - round-trip latency of 64-byte messages on a shell channel (p50/p99), idle and while a
//!   bulk transfer on a files channel of the same session shares the path, uploading and
//!   downloading (through the tunnel, the bulk transfer is a second TCP connection: TCP has no
//!   streams);
//! - session recording: goodput of shell output agent → technician with recording off and on
//!   (alternating rounds on one relay, and their ratio), the relay's CPU seconds per GB of
//!   output off and on, and the relay's resident memory with 100 concurrent sessions, each
//!   with a shell channel that has printed 64 KiB, unrecorded and recorded;
//! - the relay's resident memory per idle agent, with 1,000 and 10,000 agents connected.
//!
//! The relay and the tunnel each run as their own process (this binary re-executed with
//! `--serve` or `--tunnel`); the relay is configured with a throw-away CA and signing key
//! instead of a cluster, and for the recording section with a local-filesystem recording store
//! in a temporary directory. Run with `cargo bench -p tether-relay --bench dataplane` (release
//! build); `-- --quick` moves fewer bytes and rounds, for a smoke run.

#![allow(clippy::unwrap_used)] // A benchmark harness stops loudly on any unexpected error.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, SanType};
use rustls::pki_types::ServerName;
use tether_proto::frame::{Frame, FrameKind};
use tether_proto::message::{
    AgentInfo, Attach, AttachReply, CONTROL_PRIORITY, ChannelKind, Control, Hello, HelloReply,
    Join, PROTOCOL_VERSION, Role, ShellParams, Welcome,
};
use tether_proto::token::{
    Claims, DesktopPermission, Permissions, RecordingPolicy, SessionClaims, SigningKey, Technicians,
};
use tether_relay::metrics::Metrics;
use tether_relay::trust::TrustStore;
use tether_relay::{Relay, Settings};
use tether_transport::{Connection, Dial, FrameReader, FrameWriter, Listener, Prefer, framed, tls};
use tokio::net::{TcpListener, TcpStream};

/// How much each section moves: the full run, or `--quick` for a smoke run.
struct Scale {
    /// Bytes per goodput run.
    bulk: u64,
    /// Round trips per latency measurement.
    pings: usize,
    /// Shell output per goodput round of the recording section.
    shell_bulk: u64,
    /// Measured goodput rounds per setting (plus one warm-up each), alternating off and on.
    recording_rounds: usize,
    /// Concurrent sessions for the recording memory measurement.
    recorded_sessions: usize,
    /// Idle agent counts at which the relay's memory is read, in increasing order.
    idle_agents: &'static [usize],
}

const FULL: Scale = Scale {
    bulk: 256 * 1024 * 1024,
    pings: 2_000,
    shell_bulk: 128 * 1024 * 1024,
    recording_rounds: 5,
    recorded_sessions: 100,
    idle_agents: &[1_000, 10_000],
};

const QUICK: Scale = Scale {
    bulk: 32 * 1024 * 1024,
    pings: 200,
    shell_bulk: 16 * 1024 * 1024,
    recording_rounds: 2,
    recorded_sessions: 20,
    idle_agents: &[200],
};

/// Bulk transfers write 64 KiB frames, as `kubectl tether cp` does.
const BULK_FRAME: usize = 64 * 1024;
/// Shell output frames: what the agent's shell reads at most at once.
const SHELL_FRAME: usize = 32 * 1024;
/// What each shell of the recording memory measurement printed.
const SESSION_OUTPUT: u64 = 64 * 1024;
/// How long the idle agents may take to connect before the count reached is reported instead.
const IDLE_CONNECT_BUDGET: Duration = Duration::from_secs(240);
/// How long any one measurement may take before the benchmark gives up on it.
const STALL: Duration = Duration::from_secs(300);

/// A channel: frames in, frames out.
type Channel = (FrameReader, FrameWriter);

struct Pki {
    ca: String,
    ca_key: KeyPair,
    ca_params: CertificateParams,
    server_cert: String,
    server_key: String,
}

fn pki() -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(
        ca_params.clone(),
        KeyPair::from_pem(&ca_key.serialize_pem()).unwrap(),
    )
    .unwrap();
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    p.subject_alt_names
        .push(SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()));
    let cert = p.signed_by(&key, &ca).unwrap();
    Pki {
        ca: ca.pem(),
        ca_key,
        ca_params,
        server_cert: cert.pem(),
        server_key: key.serialize_pem(),
    }
}

fn agent_cert(pki: &Pki, device: &str) -> (String, String) {
    let issuer = rcgen::Issuer::new(
        pki.ca_params.clone(),
        KeyPair::from_pem(&pki.ca_key.serialize_pem()).unwrap(),
    );
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.subject_alt_names.push(SanType::URI(
        format!("tether://device/bench/{device}")
            .try_into()
            .unwrap(),
    ));
    (
        p.signed_by(&key, &issuer).unwrap().pem(),
        key.serialize_pem(),
    )
}

/// A field of /proc/PID/status in KiB (`VmRSS:` resident now, `VmHWM:` peak).
fn proc_status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

fn vm_rss_kib(pid: u32) -> u64 {
    proc_status_kib(pid, "VmRSS:")
}

/// CPU seconds the process has used, user and system, all threads (/proc/PID/stat `utime` and
/// `stime`, fields 14 and 15, in clock ticks).
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name (field 2) is in parentheses and may contain spaces: count after it.
    let rest = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let ticks: u64 = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|t| t.parse::<u64>().ok())
        .sum();
    ticks as f64 / rustix::param::clock_ticks_per_second() as f64
}

/// The host's UDP error counters (/proc/net/snmp): datagrams dropped because a socket's
/// receive buffer was full, and sends that failed for lack of send buffer.
fn udp_buffer_errors() -> (u64, u64) {
    let snmp = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(names), Some(values)) = (udp.next(), udp.next()) else {
        return (0, 0);
    };
    let field = |name: &str| {
        names
            .split_whitespace()
            .zip(values.split_whitespace())
            .find(|(n, _)| *n == name)
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0)
    };
    (field("RcvbufErrors"), field("SndbufErrors"))
}

/// The most bytes waiting unread in any one socket's receive queue of the host, from
/// /proc/net/udp and /proc/net/tcp (`rx_queue`; for UDP the kernel's accounting, datagrams
/// with their overhead), and in the UDP socket bound to `port` if given: (UDP, TCP, port's).
fn receive_queues(port: Option<u16>) -> (u64, u64, u64) {
    let scan = |file: &str| -> Vec<(u16, u64)> {
        std::fs::read_to_string(file)
            .unwrap_or_default()
            .lines()
            .skip(1)
            .filter_map(|line| {
                let mut fields = line.split_whitespace();
                let local = fields.nth(1)?;
                let queues = fields.nth(2)?;
                let port = u16::from_str_radix(local.rsplit_once(':')?.1, 16).ok()?;
                let rx = u64::from_str_radix(queues.split_once(':')?.1, 16).ok()?;
                Some((port, rx))
            })
            .collect()
    };
    let udp = scan("/proc/net/udp");
    let tcp = scan("/proc/net/tcp");
    let max = |v: &[(u16, u64)]| v.iter().map(|(_, rx)| *rx).max().unwrap_or(0);
    let own = port.map_or(0, |port| {
        udp.iter()
            .filter(|(p, _)| *p == port)
            .map(|(_, rx)| *rx)
            .max()
            .unwrap_or(0)
    });
    (max(&udp), max(&tcp), own)
}

/// Samples [`receive_queues`] every 10 ms until `stop`; returns the maxima seen.
async fn sample_queues(port: Option<u16>, stop: Arc<AtomicBool>) -> (u64, u64, u64) {
    let mut most = (0, 0, 0);
    while !stop.load(Ordering::Relaxed) {
        let (udp, tcp, own) = receive_queues(port);
        most = (most.0.max(udp), most.1.max(tcp), most.2.max(own));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    most
}

/// CPU seconds: the whole host's busy time (/proc/stat: all but idle and iowait), and this
/// process's own with its reaped children's (the relay and tunnel processes, once dropped).
fn host_and_own_cpu() -> (f64, f64) {
    let ticks = rustix::param::clock_ticks_per_second() as f64;
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let host: u64 = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .take(8)
        .enumerate()
        // user nice system idle iowait irq softirq steal
        .filter(|(i, _)| *i != 3 && *i != 4)
        .filter_map(|(_, t)| t.parse::<u64>().ok())
        .sum();
    let own = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let rest = own.rsplit_once(')').map_or("", |(_, rest)| rest);
    // utime stime cutime cstime: fields 14-17.
    let mine: u64 = rest
        .split_whitespace()
        .skip(11)
        .take(4)
        .filter_map(|t| t.parse::<u64>().ok())
        .sum();
    (host as f64 / ticks, mine as f64 / ticks)
}

/// Runs a section and says how busy the rest of the host was meanwhile: the other processes'
/// CPU seconds per wall second (on 2 cores, 0 is a quiet machine and 2 a saturated one).
async fn section<T>(name: &str, f: impl Future<Output = T>) -> T {
    let (host, own) = host_and_own_cpu();
    let started = Instant::now();
    let t = f.await;
    let (host_after, own_after) = host_and_own_cpu();
    let wall = started.elapsed().as_secs_f64();
    println!(
        "({name}: {wall:.0} s; this benchmark used {:.2} cores on average, other processes {:.2})",
        (own_after - own) / wall,
        ((host_after - host) - (own_after - own)).max(0.0) / wall
    );
    t
}

/// The host's 1-minute load average (/proc/loadavg), to tell a quiet run from a shared one.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "unknown".into())
}

fn sysctl(name: &str) -> String {
    std::fs::read_to_string(format!("/proc/sys/{}", name.replace('.', "/")))
        .map(|v| v.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}

/// Raises the soft open-files limit to the hard one (every idle agent is a UDP socket in this
/// process); returns the soft limit in force.
fn raise_nofile() -> u64 {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        limit.current = limit.maximum;
        let _ = setrlimit(Resource::Nofile, limit);
    }
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

/// `--serve PORT DIR [RECORDINGS]`: the relay, trusting the material in DIR, recording to the
/// local directory RECORDINGS when given.
async fn serve(port: u16, dir: &Path, recordings: Option<&Path>) {
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
    let trust = TrustStore::new();
    trust.load_trust(&BTreeMap::from([
        ("token-keys.json".to_owned(), read("keys.json")),
        ("ca-bundle.crt".to_owned(), read("ca.crt")),
    ]));
    trust.load_revocations(&BTreeMap::new());
    let tls =
        tls::server_config(&read("server.crt"), &read("server.key"), &read("ca.crt")).unwrap();
    let listener = Listener::bind(format!("127.0.0.1:{port}").parse().unwrap(), tls, true)
        .await
        .unwrap();
    let metrics = Metrics::register(&prometheus::Registry::new()).unwrap();
    let recording = recordings.map(|dir| tether_relay::recording::RecordingSetup {
        storage: tether_recording::Storage::open(&tether_recording::StoreConfig::new(format!(
            "file://{}",
            dir.display()
        )))
        .unwrap(),
        settings: tether_recording::RecorderSettings::default(),
        start_timeout: Duration::from_secs(10),
    });
    let settings = Settings {
        recording,
        ..Settings::default()
    };
    let relay = Relay::new(settings, trust, None, metrics);
    println!("ready");
    relay.serve(listener).await;
}

/// Buffers of the tunnel's byte copies, each way: four TLS records' worth.
const TUNNEL_BUFFER: usize = 64 * 1024;

/// `--tunnel PORT UPSTREAM DIR`: the encrypted TCP tunnel. Accepts TLS 1.3 on PORT with the
/// server certificate in DIR, and for each connection opens a TLS 1.3 connection to UPSTREAM
/// (verified against DIR's CA) and copies bytes both ways, decrypting and re-encrypting
/// everything as the relay does, with Nagle off on both legs (as interactive tunnels run).
async fn tunnel(port: u16, upstream: SocketAddr, dir: &Path) {
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(
        tls::server_config(&read("server.crt"), &read("server.key"), &read("ca.crt")).unwrap(),
    ));
    let connector = tokio_rustls::TlsConnector::from(Arc::new(
        tls::client_config(&read("ca.crt"), None).unwrap(),
    ));
    let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    println!("ready");
    loop {
        let Ok((downstream, _)) = listener.accept().await else {
            continue;
        };
        let (acceptor, connector) = (acceptor.clone(), connector.clone());
        tokio::spawn(async move {
            let _ = downstream.set_nodelay(true);
            let Ok(mut downstream) = acceptor.accept(downstream).await else {
                return;
            };
            let Ok(up) = TcpStream::connect(upstream).await else {
                return;
            };
            let _ = up.set_nodelay(true);
            let Ok(mut up) = connector.connect(ServerName::from(upstream.ip()), up).await else {
                return;
            };
            let _ = tokio::io::copy_bidirectional_with_sizes(
                &mut downstream,
                &mut up,
                TUNNEL_BUFFER,
                TUNNEL_BUFFER,
            )
            .await;
        });
    }
}

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
fn download_request() -> serde_json::Value {
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
async fn agent(
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
async fn technician(relay: &str, ca: &str, identity: &(String, String)) -> Connection {
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

fn files() -> Attach {
    Attach {
        kind: ChannelKind::Files,
        shell: None,
    }
}

fn shell(command: Vec<String>) -> Attach {
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

fn echo_shell() -> Attach {
    shell(vec!["bench-echo".into()])
}

/// Opens a channel on a QUIC connection (relay or direct) at the channel's priority, as
/// `kubectl tether` does.
async fn attach(conn: &Connection, attach: Attach) -> Channel {
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
enum Route<'a> {
    Quic(&'a Connection),
    Tunnel { addr: SocketAddr, ca: &'a str },
}

impl Route<'_> {
    async fn open(&self, a: Attach) -> Channel {
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
async fn tunnel_agent(pki: &Pki) -> SocketAddr {
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

/// Runs `what`, giving up loudly after [`STALL`].
async fn bounded<T>(what: &str, f: impl Future<Output = T>) -> T {
    match tokio::time::timeout(STALL, f).await {
        Ok(t) => t,
        Err(_) => panic!("{what} stalled for {STALL:?}"),
    }
}

/// Sends `bytes` on an upload sink channel; returns MB/s.
async fn bulk((mut r, mut w): Channel, bytes: u64) -> f64 {
    let chunk = Bytes::from(vec![0xA5u8; BULK_FRAME]);
    bounded("a bulk transfer", async {
        let started = Instant::now();
        let mut sent = 0u64;
        while sent < bytes {
            w.send(&Frame::data(chunk.clone())).await.unwrap();
            sent += chunk.len() as u64;
        }
        w.send(&Frame::end_of_data()).await.unwrap();
        let reply: serde_json::Value = r.message().await.unwrap();
        assert_eq!(reply["received"].as_u64(), Some(sent));
        sent as f64 / 1e6 / started.elapsed().as_secs_f64()
    })
    .await
}

/// Which way a background bulk transfer goes.
#[derive(Clone, Copy)]
enum Way {
    Upload,
    Download,
}

/// A bulk transfer on `channel` until `stop`; returns its MB/s.
async fn bulk_until((mut r, mut w): Channel, way: Way, stop: Arc<AtomicBool>) -> f64 {
    let started = Instant::now();
    let moved = match way {
        Way::Upload => {
            let chunk = Bytes::from(vec![0xA5u8; BULK_FRAME]);
            let mut sent = 0u64;
            while !stop.load(Ordering::Relaxed) {
                w.send(&Frame::data(chunk.clone())).await.unwrap();
                sent += chunk.len() as u64;
            }
            w.send(&Frame::end_of_data()).await.unwrap();
            let reply: serde_json::Value = r.message().await.unwrap();
            assert_eq!(reply["received"].as_u64(), Some(sent));
            sent
        }
        Way::Download => {
            w.message(&download_request()).await.unwrap();
            let stopper = tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                w.send(&Frame::end_of_data()).await.unwrap();
                w
            });
            let mut received = 0u64;
            loop {
                let frame = r.next().await.unwrap().expect("the download ended early");
                match frame.kind {
                    FrameKind::Data => received += frame.payload.len() as u64,
                    FrameKind::EndOfData => break,
                    FrameKind::Message => {}
                }
            }
            drop(stopper.await.unwrap());
            received
        }
    };
    moved as f64 / 1e6 / started.elapsed().as_secs_f64()
}

/// A shell channel whose command prints `bytes` of output; returns MB/s from the channel's
/// attachment to the last byte received, and the open channel (dropping it closes it).
async fn shell_output(conn: &Connection, bytes: u64) -> (f64, Channel) {
    let (mut r, w) = attach(conn, shell(vec!["bench-output".into(), bytes.to_string()])).await;
    let started = Instant::now();
    bounded("the shell output", async {
        let mut received = 0u64;
        while received < bytes {
            let frame = r
                .next()
                .await
                .unwrap()
                .expect("the shell channel ended early");
            if frame.kind == FrameKind::Data {
                received += frame.payload.len() as u64;
            }
        }
    })
    .await;
    (bytes as f64 / 1e6 / started.elapsed().as_secs_f64(), (r, w))
}

/// `n` round trips of 64-byte messages on an echo channel; returns sorted microseconds.
async fn pings((r, w): &mut Channel, n: usize) -> Vec<f64> {
    let payload = Bytes::from(vec![1u8; 64]);
    let mut out = Vec::with_capacity(n);
    bounded("the round trips", async {
        for _ in 0..n {
            let t = Instant::now();
            w.send(&Frame::data(payload.clone())).await.unwrap();
            r.next().await.unwrap().unwrap();
            out.push(t.elapsed().as_secs_f64() * 1e6);
        }
    })
    .await;
    out.sort_by(|a, b| a.total_cmp(b));
    out
}

fn pct(v: &[f64], p: f64) -> f64 {
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// Round trips on `echo` while a bulk transfer goes `way` on a files channel opened on
/// `path`: sorted microseconds, the bulk transfer's MB/s meanwhile, and the receive queues
/// seen meanwhile (`relay_port`: the relay's UDP socket).
async fn pings_under_bulk(
    path: &Route<'_>,
    echo: &mut Channel,
    way: Way,
    n: usize,
    relay_port: Option<u16>,
) -> Lat {
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(bulk_until(path.open(files()).await, way, stop.clone()));
    // Past slow start and the windows' growth: the bulk transfer's queues are full.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sampling = Arc::new(AtomicBool::new(false));
    let sampler = tokio::spawn(sample_queues(relay_port, sampling.clone()));
    let rtt = pings(echo, n).await;
    sampling.store(true, Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    let mbps = bounded("stopping a bulk transfer", load).await.unwrap();
    Lat {
        rtt,
        bulk: mbps,
        queues: sampler.await.unwrap(),
    }
}

/// Round trips, sorted, what a background transfer achieved meanwhile (0 when idle), and the
/// largest receive queues seen meanwhile (UDP, TCP, the relay's socket; bytes).
struct Lat {
    rtt: Vec<f64>,
    bulk: f64,
    queues: (u64, u64, u64),
}

impl Lat {
    fn p50(&self) -> f64 {
        pct(&self.rtt, 0.5)
    }
    fn p99(&self) -> f64 {
        pct(&self.rtt, 0.99)
    }
}

/// Latency on one path: idle, with a bulk upload, with a bulk download.
async fn latencies(path: &Route<'_>, n: usize, relay_port: Option<u16>) -> [Lat; 3] {
    let mut echo = path.open(echo_shell()).await;
    // Warm-up: connection windows, allocations, the shell channel's buffers.
    let _ = pings(&mut echo, n / 10).await;
    let idle = Lat {
        rtt: pings(&mut echo, n).await,
        bulk: 0.0,
        queues: receive_queues(relay_port),
    };
    let up = pings_under_bulk(path, &mut echo, Way::Upload, n, relay_port).await;
    let down = pings_under_bulk(path, &mut echo, Way::Download, n, relay_port).await;
    [idle, up, down]
}

/// A direct server with the relay's role in the handshake but no relay in between, serving
/// the channels itself at their priorities.
async fn direct_server(pki: &Pki) -> u16 {
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

/// A child process of this benchmark (the relay or the tunnel), killed however the benchmark
/// ends.
struct ChildProcess {
    child: std::process::Child,
    addr: SocketAddr,
}

impl ChildProcess {
    /// Starts the relay with the trust material in `trust`, recording to `recordings` when
    /// given, and waits until it listens.
    fn relay(trust: &Path, recordings: Option<&Path>) -> Self {
        let port = std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut args = vec![
            "--serve".into(),
            port.to_string(),
            trust.display().to_string(),
        ];
        if let Some(recordings) = recordings {
            args.push(recordings.display().to_string());
        }
        Self::spawn(&args, port)
    }

    /// Starts the tunnel in front of `upstream`, with the certificates in `trust`.
    fn tunnel(trust: &Path, upstream: SocketAddr) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let args = [
            "--tunnel".into(),
            port.to_string(),
            upstream.to_string(),
            trust.display().to_string(),
        ];
        Self::spawn(&args, port)
    }

    fn spawn(args: &[String], port: u16) -> Self {
        let mut process = Self {
            child: std::process::Command::new(std::env::current_exe().unwrap())
                .args(args)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap(),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        };
        {
            use std::io::BufRead;
            let mut line = String::new();
            std::io::BufReader::new(process.child.stdout.take().unwrap())
                .read_line(&mut line)
                .unwrap();
            assert_eq!(line.trim(), "ready");
        }
        process
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn address(&self) -> String {
        self.addr.to_string()
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What every relay of the run trusts: a CA, the server certificate, a token signing key.
struct Bench {
    pki: Pki,
    key: SigningKey,
    trust: tempfile::TempDir,
    scale: Scale,
}

impl Bench {
    fn new(scale: Scale) -> Self {
        let pki = pki();
        let trust = tempfile::tempdir().unwrap();
        let key = SigningKey::generate("bench").unwrap();
        std::fs::write(
            trust.path().join("keys.json"),
            serde_json::to_string(&vec![key.verifying_key()]).unwrap(),
        )
        .unwrap();
        std::fs::write(trust.path().join("ca.crt"), &pki.ca).unwrap();
        std::fs::write(trust.path().join("server.crt"), &pki.server_cert).unwrap();
        std::fs::write(trust.path().join("server.key"), &pki.server_key).unwrap();
        Self {
            pki,
            key,
            trust,
            scale,
        }
    }

    /// A technician certificate for the session `name` (also its uid) on `device`, as the
    /// operator's signer issues one: CN the technician `bench`, the session's URI SAN, and the
    /// grant minted for that technician alone. Returns (certificate PEM, key PEM).
    fn technician(&self, name: &str, device: &str, recording: RecordingPolicy) -> (String, String) {
        const USER: &str = "bench";
        let now = jiff::Timestamp::now().as_second();
        let claims = Claims::new(
            SessionClaims {
                uid: name.into(),
                namespace: "bench".into(),
                name: name.into(),
                device: device.into(),
                ends_at: now + 3600,
                technicians: Technicians::default(),
                permissions: Permissions {
                    desktop: DesktopPermission::Control,
                    shell: true,
                    files: true,
                    chat: true,
                    processes: true,
                    clipboard: Default::default(),
                },
                consent: false,
                reason: None,
                recording,
                record_keystrokes: false,
            },
            name.into(),
            now,
            now,
        )
        .for_technician(USER, format!("{name}-grant"), now, now + 3600);
        let grant = self.key.mint(&claims).unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, USER);
        params.subject_alt_names = vec![
            SanType::URI(
                format!("tether://technician/bench/{name}")
                    .try_into()
                    .unwrap(),
            ),
            SanType::URI(format!("tether://grant/{grant}").try_into().unwrap()),
        ];
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let issuer = rcgen::Issuer::new(
            self.pki.ca_params.clone(),
            KeyPair::from_pem(&self.pki.ca_key.serialize_pem()).unwrap(),
        );
        let key = KeyPair::generate().unwrap();
        (
            params.signed_by(&key, &issuer).unwrap().pem(),
            key.serialize_pem(),
        )
    }

    /// An agent for `device` that serves channels.
    async fn agent(&self, relay: &ChildProcess, device: &str) -> Connection {
        agent(
            relay.address(),
            self.pki.ca.clone(),
            agent_cert(&self.pki, device),
            true,
        )
        .await
    }
}

/// Goodput runs on one path: a warm-up, then the better of two, with the CPU seconds per GB
/// the process in the middle (if any) used over the two measured runs.
async fn goodput(path: &Route<'_>, bytes: u64, middle: Option<u32>) -> (f64, Option<f64>) {
    let _ = bulk(path.open(files()).await, bytes).await;
    let cpu = middle.map(cpu_secs);
    let a = bulk(path.open(files()).await, bytes).await;
    let b = bulk(path.open(files()).await, bytes).await;
    let per_gb = middle
        .zip(cpu)
        .map(|(pid, before)| (cpu_secs(pid) - before) / (2.0 * bytes as f64 / 1e9));
    (a.max(b), per_gb)
}

/// Goodput and latency on the three paths: relay, tunnel, direct quinn.
async fn dataplane(bench: &Bench) {
    let (pki, scale) = (&bench.pki, &bench.scale);
    let load = load_average();
    let relay = ChildProcess::relay(bench.trust.path(), None);
    let identity = bench.technician("bench", "dev-0", RecordingPolicy::Disabled);
    let _agent = bench.agent(&relay, "dev-0").await;
    let tech = technician(&relay.address(), &pki.ca, &identity).await;
    let direct_port = direct_server(pki).await;
    let direct = technician(&format!("127.0.0.1:{direct_port}"), &pki.ca, &identity).await;
    let upstream = tunnel_agent(pki).await;
    let tunnel = ChildProcess::tunnel(bench.trust.path(), upstream);

    let via_relay = Route::Quic(&tech);
    let via_direct = Route::Quic(&direct);
    let via_tunnel = Route::Tunnel {
        addr: tunnel.addr,
        ca: &pki.ca,
    };

    let udp_before = udp_buffer_errors();
    let (relayed, relay_cpu) = goodput(&via_relay, scale.bulk, Some(relay.pid())).await;
    let udp_relay = udp_buffer_errors();
    let (direct_mbps, _) = goodput(&via_direct, scale.bulk, None).await;
    let udp_direct = udp_buffer_errors();
    let (tunneled, tunnel_cpu) = goodput(&via_tunnel, scale.bulk, Some(tunnel.pid())).await;

    let relay_lat = latencies(&via_relay, scale.pings, Some(relay.addr.port())).await;
    let tunnel_lat = latencies(&via_tunnel, scale.pings, None).await;
    let direct_lat = latencies(&via_direct, scale.pings, None).await;

    let udp_after = udp_buffer_errors();
    let udp_all = (udp_after.0 - udp_before.0, udp_after.1 - udp_before.1);

    println!();
    println!(
        "data-plane benchmark (loopback, release build, {} MiB per goodput run in {} KiB frames, {} round trips per latency line)",
        scale.bulk >> 20,
        BULK_FRAME >> 10,
        scale.pings
    );
    println!(
        "host load average (1 min): {load} at the start, {} at the end",
        load_average()
    );
    println!(
        "paths: relay = QUIC technician → relay process → QUIC agent (both legs terminated); tunnel = TLS 1.3/TCP → tunnel process → TLS 1.3/TCP (both legs terminated); direct = QUIC, no middle"
    );
    println!(
        "kernel: net.core.rmem_max {} wmem_max {} (the relay's QUIC sockets ask for {} MiB each way)",
        sysctl("net.core.rmem_max"),
        sysctl("net.core.wmem_max"),
        tether_transport::endpoint::UDP_BUFFER >> 20
    );
    let per_gb = |x: Option<f64>| x.map_or("-".to_owned(), |x| format!("{x:.2}"));
    println!(
        "goodput MB/s        relay {relayed:8.1}   tunnel {tunneled:8.1}   direct quinn {direct_mbps:8.1}   relay/direct {:.2}   relay/tunnel {:.2}   tunnel/direct {:.2}",
        relayed / direct_mbps,
        relayed / tunneled,
        tunneled / direct_mbps
    );
    println!(
        "middle CPU s/GB     relay {:>8}   tunnel {:>8}   (user+system of the middle process over the measured runs)",
        per_gb(relay_cpu),
        per_gb(tunnel_cpu)
    );
    println!(
        "UDP drops (host): receive-buffer {} and send-buffer {} during the relay's goodput runs, {} and {} during direct's, {} and {} over the whole section",
        udp_relay.0 - udp_before.0,
        udp_relay.1 - udp_before.1,
        udp_direct.0 - udp_relay.0,
        udp_direct.1 - udp_relay.1,
        udp_all.0,
        udp_all.1
    );
    let cases = ["idle", "bulk upload", "bulk download"];
    for (i, case) in cases.iter().enumerate() {
        let (r, t, d) = (&relay_lat[i], &tunnel_lat[i], &direct_lat[i]);
        println!(
            "64 B RTT µs, {case:<13}  relay p50 {:6.0} p99 {:6.0}   tunnel p50 {:6.0} p99 {:6.0}   direct p50 {:6.0} p99 {:6.0}   p99 relay/tunnel {:.2} relay/direct {:.2}",
            r.p50(),
            r.p99(),
            t.p50(),
            t.p99(),
            d.p50(),
            d.p99(),
            r.p99() / t.p99(),
            r.p99() / d.p99()
        );
    }
    for (i, case) in cases.iter().enumerate().skip(1) {
        let (r, t, d) = (&relay_lat[i], &tunnel_lat[i], &direct_lat[i]);
        println!(
            "  {case:<13} meanwhile MB/s   relay {:7.1}   tunnel {:7.1}   direct {:7.1};   p99 loaded/idle   relay {:.1}×   tunnel {:.1}×   direct {:.1}×",
            r.bulk,
            t.bulk,
            d.bulk,
            r.p99() / relay_lat[0].p99(),
            t.p99() / tunnel_lat[0].p99(),
            d.p99() / direct_lat[0].p99()
        );
        let kib = |b: u64| b as f64 / 1024.0;
        println!(
            "  {case:<13} largest unread receive queue, KiB   relay run: UDP {:.0} (relay's socket {:.0})   tunnel run: TCP {:.0}   direct run: UDP {:.0}",
            kib(r.queues.0),
            kib(r.queues.2),
            kib(t.queues.1),
            kib(d.queues.0)
        );
    }
    println!(
        "  (relay and direct: echo on a shell channel and the bulk on a files channel of the same session, one QUIC connection per leg; tunnel: the bulk on a second TCP connection)"
    );
}

/// The relay's memory per idle agent: a fresh relay, one agent to warm it up, then agents
/// added up to each count in `scale.idle_agents`, reading the relay's RSS 2 s after each.
async fn idle_agents(bench: &Bench, nofile: u64) {
    let relay = ChildProcess::relay(bench.trust.path(), None);
    let addr = relay.address();
    let _first = bench.agent(&relay, "idle-warm").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = vm_rss_kib(relay.pid());

    println!();
    println!(
        "idle agents (fresh relay; RSS {:.1} MiB with 1 agent; open-files limit {nofile}; host load average {})",
        before as f64 / 1024.0,
        load_average()
    );
    let mut agents = Vec::new();
    let started = Instant::now();
    for &target in bench.scale.idle_agents {
        // Every agent here is a UDP socket of this process; keep room for everything else.
        if target as u64 + 256 > nofile {
            println!(
                "{target} idle agents: skipped, they need {} open files and the limit is {nofile}",
                target + 256
            );
            break;
        }
        const BATCH: usize = 50;
        while agents.len() < target && started.elapsed() < IDLE_CONNECT_BUDGET {
            let mut set = tokio::task::JoinSet::new();
            for i in agents.len()..(agents.len() + BATCH).min(target) {
                let cert = agent_cert(&bench.pki, &format!("idle-{i}"));
                let (relay, ca) = (addr.clone(), bench.pki.ca.clone());
                set.spawn(async move { agent(relay, ca, cert, false).await });
            }
            while let Some(c) = set.join_next().await {
                agents.push(c.unwrap());
            }
        }
        let connect_secs = started.elapsed().as_secs_f64();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let after = vm_rss_kib(relay.pid());
        let n = agents.len();
        println!(
            "relay RSS with {n} idle agents: {:.1} MiB ({:.1} KiB per agent over the first; all connected after {connect_secs:.1} s{})",
            after as f64 / 1024.0,
            after.saturating_sub(before) as f64 / n as f64,
            if n < target {
                format!(", stopped short of {target} at the {IDLE_CONNECT_BUDGET:?} budget")
            } else {
                String::new()
            }
        );
        if n < target {
            break;
        }
    }
    drop(agents);
    drop(relay);
    // Let the dropped connections' endpoints wind down before anything else runs.
    tokio::time::sleep(Duration::from_secs(2)).await;
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    pct(&v, 0.5)
}

/// Files under `dir` whose path ends with `suffix`: how many, and their total size.
fn files_ending(dir: &Path, suffix: &str) -> (usize, u64) {
    let (mut count, mut bytes) = (0, 0);
    let mut pending = vec![dir.to_path_buf()];
    // Bounded: recordings hold a few directories per session.
    for _ in 0..100_000 {
        let Some(d) = pending.pop() else { break };
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                pending.push(entry.path());
            } else if entry.path().to_string_lossy().ends_with(suffix) {
                count += 1;
                bytes += meta.len();
            }
        }
    }
    (count, bytes)
}

/// Waits (bounded) until no shell recording under `recordings` is still being finished, so
/// finishing one does not share the CPU with the next measurement. (The event log's upload
/// stays open as long as its session.)
async fn settle(recordings: &Path) {
    let uploads = recordings.join("uploads");
    for _ in 0..100 {
        if files_ending(&uploads, ".cast/journal.json").0 == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The relay's memory with `scale.recorded_sessions` sessions, each with a technician and a
/// shell channel that printed `SESSION_OUTPUT`, on a fresh relay: (KiB before, KiB after, peak
/// KiB).
async fn sessions_rss(bench: &Bench, policy: RecordingPolicy, label: &str) -> (u64, u64, u64) {
    let sessions = bench.scale.recorded_sessions;
    let recordings = tempfile::tempdir().unwrap();
    let relay = ChildProcess::relay(bench.trust.path(), Some(recordings.path()));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = vm_rss_kib(relay.pid());

    const BATCH: usize = 25;
    let mut agents = Vec::with_capacity(sessions);
    let mut channels = Vec::with_capacity(sessions);
    for batch in 0..sessions.div_ceil(BATCH) {
        let range = batch * BATCH..((batch + 1) * BATCH).min(sessions);
        let mut set = tokio::task::JoinSet::new();
        for i in range.clone() {
            let cert = agent_cert(&bench.pki, &format!("{label}-{i}"));
            let (addr, ca) = (relay.address(), bench.pki.ca.clone());
            set.spawn(async move { agent(addr, ca, cert, true).await });
        }
        while let Some(c) = set.join_next().await {
            agents.push(c.unwrap());
        }
        let mut set = tokio::task::JoinSet::new();
        for i in range {
            let identity =
                bench.technician(&format!("{label}-{i}"), &format!("{label}-{i}"), policy);
            let (addr, ca) = (relay.address(), bench.pki.ca.clone());
            set.spawn(async move {
                let tech = technician(&addr, &ca, &identity).await;
                let (_, channel) = shell_output(&tech, SESSION_OUTPUT).await;
                (tech, channel)
            });
        }
        while let Some(c) = set.join_next().await {
            channels.push(c.unwrap());
        }
    }
    // Past a flush interval, so recorded output has been checkpointed to the store.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = vm_rss_kib(relay.pid());
    let peak = proc_status_kib(relay.pid(), "VmHWM:");
    if policy != RecordingPolicy::Disabled {
        // Each session's recording has started (manifest written) and its shell is open.
        let (manifests, _) = files_ending(recordings.path(), ".manifest.json");
        assert!(
            manifests >= sessions,
            "only {manifests} manifests for {sessions} recorded sessions"
        );
    }
    drop(channels);
    drop(agents);
    drop(relay);
    (before, after, peak)
}

/// Recording's cost: shell goodput and relay CPU off vs on through one relay, and memory per
/// session.
async fn recording(bench: &Bench) {
    let scale = &bench.scale;
    let load = load_average();
    let recordings = tempfile::tempdir().unwrap();
    let relay = ChildProcess::relay(bench.trust.path(), Some(recordings.path()));
    // One relay, configured to record; the session's token decides whether it is recorded.
    let _plain_agent = bench.agent(&relay, "plain").await;
    let _recorded_agent = bench.agent(&relay, "recorded").await;
    let plain = technician(
        &relay.address(),
        &bench.pki.ca,
        &bench.technician("plain", "plain", RecordingPolicy::Disabled),
    )
    .await;
    let recorded = technician(
        &relay.address(),
        &bench.pki.ca,
        &bench.technician("recorded", "recorded", RecordingPolicy::Enabled),
    )
    .await;

    let (mut off, mut on) = (Vec::new(), Vec::new());
    // Relay CPU seconds over the measured rounds, each round until its recording is finished.
    let (mut off_cpu, mut on_cpu) = (0.0, 0.0);
    for round in 0..=scale.recording_rounds {
        let cpu = cpu_secs(relay.pid());
        let (a, _) = shell_output(&plain, scale.shell_bulk).await;
        settle(recordings.path()).await;
        let between = cpu_secs(relay.pid());
        let (b, _) = shell_output(&recorded, scale.shell_bulk).await;
        settle(recordings.path()).await;
        let end = cpu_secs(relay.pid());
        if round > 0 {
            off.push(a);
            on.push(b);
            off_cpu += between - cpu;
            on_cpu += end - between;
        }
    }
    let load_after = load_average();
    let (casts, cast_bytes) = files_ending(recordings.path(), ".cast");
    let goodput_rss = vm_rss_kib(relay.pid());
    let goodput_peak = proc_status_kib(relay.pid(), "VmHWM:");
    drop(relay);
    drop(recordings);

    let unrecorded = sessions_rss(bench, RecordingPolicy::Disabled, "off").await;
    let recorded_rss = sessions_rss(bench, RecordingPolicy::Enabled, "on").await;

    let rounds = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.0}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let ratios: Vec<f64> = on.iter().zip(&off).map(|(b, a)| b / a).collect();
    let gb = scale.recording_rounds as f64 * scale.shell_bulk as f64 / 1e9;
    println!();
    println!(
        "recording benchmark (shell output agent → technician, {} MiB per round in {} KiB frames, {} rounds each after a warm-up, alternating off/on, local filesystem store)",
        scale.shell_bulk >> 20,
        SHELL_FRAME >> 10,
        scale.recording_rounds
    );
    println!(
        "host load average (1 min) over the goodput rounds: {load} at the start, {load_after} at the end"
    );
    println!(
        "shell goodput, recording off: median {:7.1} MB/s   rounds {}",
        median(&off),
        rounds(&off)
    );
    println!(
        "shell goodput, recording on:  median {:7.1} MB/s   rounds {}",
        median(&on),
        rounds(&on)
    );
    println!(
        "ratio on/off: {:.2} (medians); per round pair median {:.2}, min {:.2}, max {:.2}",
        median(&on) / median(&off),
        median(&ratios),
        ratios.iter().copied().fold(f64::INFINITY, f64::min),
        ratios.iter().copied().fold(0.0, f64::max)
    );
    println!(
        "relay CPU s/GB of shell output (user+system, each round until its recording finished): off {:.2}, on {:.2} (on/off {:.2})",
        off_cpu / gb,
        on_cpu / gb,
        on_cpu / off_cpu
    );
    println!(
        "recorded: {casts} asciicasts, {:.1} MiB ({:.1} MiB of output each); relay RSS after the rounds {:.1} MiB, peak {:.1} MiB",
        cast_bytes as f64 / 1048576.0,
        (scale.shell_bulk >> 20) as f64,
        goodput_rss as f64 / 1024.0,
        goodput_peak as f64 / 1024.0
    );
    let sessions = scale.recorded_sessions as f64;
    for (label, (before, after, peak)) in [("off", unrecorded), ("on ", recorded_rss)] {
        println!(
            "relay RSS, {} sessions with a shell that printed {} KiB, recording {label}: {:.1} MiB → {:.1} MiB (+{:.1} MiB, {:.0} KiB per session; peak {:.1} MiB)",
            scale.recorded_sessions,
            SESSION_OUTPUT >> 10,
            before as f64 / 1024.0,
            after as f64 / 1024.0,
            after.saturating_sub(before) as f64 / 1024.0,
            after.saturating_sub(before) as f64 / sessions,
            peak as f64 / 1024.0
        );
    }
    let growth = |(before, after, _): (u64, u64, u64)| after as f64 - before as f64;
    println!(
        "recording's share: {:+.1} MiB for {} sessions ({:+.0} KiB per recorded session)",
        (growth(recorded_rss) - growth(unrecorded)) / 1024.0,
        scale.recorded_sessions,
        (growth(recorded_rss) - growth(unrecorded)) / sessions
    );
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--serve") {
        serve(
            args[i + 1].parse().unwrap(),
            Path::new(&args[i + 2]),
            args.get(i + 3).map(Path::new),
        )
        .await;
        return;
    }
    if let Some(i) = args.iter().position(|a| a == "--tunnel") {
        tunnel(
            args[i + 1].parse().unwrap(),
            args[i + 2].parse().unwrap(),
            Path::new(&args[i + 3]),
        )
        .await;
        return;
    }
    if args.iter().any(|a| a == "--list") {
        return;
    }
    let quick = args.iter().any(|a| a == "--quick");
    // Before any child starts: they inherit it.
    let nofile = raise_nofile();

    let bench = Bench::new(if quick { QUICK } else { FULL });
    if quick {
        println!("quick run (--quick): fewer bytes and rounds; numbers for a smoke test only");
    }
    section("data plane", dataplane(&bench)).await;
    section("recording", recording(&bench)).await;
    section("idle agents", idle_agents(&bench, nofile)).await;
}
