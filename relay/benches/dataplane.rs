//! Data-plane benchmark (prints numbers, asserts nothing):
//!
//! - goodput of one bulk stream technician → agent through the relay, against the same client
//!   and server code connected directly (QUIC, loopback), and their ratio;
//! - round-trip latency of 64-byte messages through the relay, idle and while a bulk transfer
//!   shares it (p50/p99);
//! - the relay's resident memory with 1,000 idle agent connections.
//!
//! The relay runs as its own process (this binary re-executed with `--serve`), configured with
//! a throw-away CA and signing key instead of a cluster. Run with
//! `cargo bench -p tether-relay --bench dataplane` (release build).

#![allow(clippy::unwrap_used)] // A benchmark harness stops loudly on any unexpected error.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, SanType};
use tether_proto::frame::{Frame, FrameKind};
use tether_proto::message::{
    AgentInfo, Attach, AttachReply, ChannelKind, Control, Hello, HelloReply, Join,
    PROTOCOL_VERSION, Role, Welcome,
};
use tether_proto::token::{
    Claims, DesktopPermission, Permissions, SessionClaims, SigningKey, Technicians,
};
use tether_relay::metrics::Metrics;
use tether_relay::trust::TrustStore;
use tether_relay::{Relay, Settings};
use tether_transport::{Connection, Dial, Listener, Prefer, framed, tls};

const BULK: u64 = 256 * 1024 * 1024;
const PINGS: usize = 2_000;
const IDLE_AGENTS: usize = 1_000;

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

fn vm_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// `--serve PORT DIR`: the relay, trusting the material in DIR.
async fn serve(port: u16, dir: &Path) {
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
    let relay = Relay::new(Settings::default(), trust, None, metrics);
    println!("ready");
    relay.serve(listener).await;
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

/// Serves one channel: `Files` is a sink that reports the bytes received, `Chat` echoes.
async fn serve_channel(
    kind: ChannelKind,
    mut r: tether_transport::FrameReader,
    mut w: tether_transport::FrameWriter,
) {
    match kind {
        ChannelKind::Files => {
            let mut n = 0u64;
            while let Ok(Some(f)) = r.next().await {
                match f.kind {
                    FrameKind::Data => n += f.payload.len() as u64,
                    FrameKind::EndOfData => break,
                    FrameKind::Message => {}
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

/// A benchmark agent: connects, and serves whatever channels the relay opens.
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
                        let (rr, mut ww) = framed(c.open().await.unwrap());
                        ww.message(&Join { channel }).await.unwrap();
                        serve_channel(attach.kind, rr, ww).await;
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

/// The technician side: hello with a token, then channels.
async fn technician(relay: &str, ca: &str, token: &str) -> Connection {
    let conn = dial(relay, ca, None).connect().await.unwrap();
    let (mut r, mut w) = framed(conn.open().await.unwrap());
    w.message(&Hello {
        versions: vec![PROTOCOL_VERSION],
        role: Role::Technician,
        token: Some(token.to_owned()),
        agent: None,
        enroll: None,
        client: "bench".into(),
        technician: Some("bench".into()),
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

async fn attach(
    conn: &Connection,
    kind: ChannelKind,
) -> (tether_transport::FrameReader, tether_transport::FrameWriter) {
    let (mut r, mut w) = framed(conn.open().await.unwrap());
    w.message(&Attach { kind, shell: None }).await.unwrap();
    match r.message::<AttachReply>().await.unwrap() {
        AttachReply::Attached { .. } => (r, w),
        AttachReply::Refused(x) => panic!("refused: {}", x.message),
    }
}

/// Sends BULK bytes on a sink channel; returns MB/s.
async fn bulk(conn: &Connection) -> f64 {
    let (mut r, mut w) = attach(conn, ChannelKind::Files).await;
    let chunk = Bytes::from(vec![0xA5u8; 64 * 1024]);
    let started = Instant::now();
    let mut sent = 0u64;
    while sent < BULK {
        w.send(&Frame::data(chunk.clone())).await.unwrap();
        sent += chunk.len() as u64;
    }
    w.send(&Frame::end_of_data()).await.unwrap();
    let reply: serde_json::Value = r.message().await.unwrap();
    assert_eq!(reply["received"].as_u64(), Some(BULK));
    BULK as f64 / 1e6 / started.elapsed().as_secs_f64()
}

/// Round trips of 64-byte messages on an echo channel; returns sorted microseconds.
async fn pings(conn: &Connection) -> Vec<f64> {
    let (mut r, mut w) = attach(conn, ChannelKind::Chat).await;
    let payload = Bytes::from(vec![1u8; 64]);
    let mut out = Vec::with_capacity(PINGS);
    for _ in 0..PINGS {
        let t = Instant::now();
        w.send(&Frame::data(payload.clone())).await.unwrap();
        r.next().await.unwrap().unwrap();
        out.push(t.elapsed().as_secs_f64() * 1e6);
    }
    out.sort_by(|a, b| a.total_cmp(b));
    out
}

fn pct(v: &[f64], p: f64) -> f64 {
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// A direct server with the relay's role in the handshake but no relay in between.
async fn direct_server(pki: &Pki) -> u16 {
    let tls = tls::server_config(&pki.server_cert, &pki.server_key, &pki.ca).unwrap();
    let listener = Listener::bind("127.0.0.1:0".parse().unwrap(), tls, true)
        .await
        .unwrap();
    let port = listener.local_addr().port();
    tokio::spawn(async move {
        while let Some(incoming) = listener.accept().await {
            tokio::spawn(async move {
                let conn = incoming.establish().await.unwrap();
                let control = conn.accept().await.unwrap();
                let (mut r, mut w) = framed(control);
                let _: Hello = r.message().await.unwrap();
                w.message(&HelloReply::Welcome(Welcome {
                    version: 1,
                    relay: "direct".into(),
                    session: None,
                    certificate: None,
                    ca_bundle: None,
                }))
                .await
                .unwrap();
                let mut id = 0;
                while let Some(stream) = conn.accept().await {
                    id += 1;
                    let (mut r, mut w) = framed(stream);
                    let attach: Attach = r.message().await.unwrap();
                    w.message(&AttachReply::Attached { channel: id })
                        .await
                        .unwrap();
                    tokio::spawn(serve_channel(attach.kind, r, w));
                }
            });
        }
    });
    port
}

/// The relay child process, killed however the benchmark ends.
struct RelayProcess(std::process::Child);

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--serve") {
        serve(args[i + 1].parse().unwrap(), Path::new(&args[i + 2])).await;
        return;
    }
    if args.iter().any(|a| a == "--list") {
        return;
    }

    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::generate("bench").unwrap();
    std::fs::write(
        dir.path().join("keys.json"),
        serde_json::to_string(&vec![key.verifying_key()]).unwrap(),
    )
    .unwrap();
    std::fs::write(dir.path().join("ca.crt"), &pki.ca).unwrap();
    std::fs::write(dir.path().join("server.crt"), &pki.server_cert).unwrap();
    std::fs::write(dir.path().join("server.key"), &pki.server_key).unwrap();
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = RelayProcess(
        std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--serve", &port.to_string()])
            .arg(dir.path())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    {
        use std::io::BufRead;
        let mut line = String::new();
        std::io::BufReader::new(child.0.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready");
    }
    let relay = format!("127.0.0.1:{port}");
    let now = jiff::Timestamp::now().as_second();
    let token = key
        .mint(&Claims::new(
            SessionClaims {
                uid: "bench".into(),
                namespace: "bench".into(),
                name: "bench".into(),
                device: "dev-0".into(),
                ends_at: now + 3600,
                technicians: Technicians::default(),
                permissions: Permissions {
                    desktop: DesktopPermission::Control,
                    shell: true,
                    files: true,
                    chat: true,
                    processes: true,
                },
                consent: false,
                reason: None,
                recording: Default::default(),
            },
            "bench".into(),
            now,
            now,
        ))
        .unwrap();

    let _agent = agent(
        relay.clone(),
        pki.ca.clone(),
        agent_cert(&pki, "dev-0"),
        true,
    )
    .await;
    let tech = technician(&relay, &pki.ca, &token).await;
    let direct_port = direct_server(&pki).await;
    let direct = technician(&format!("127.0.0.1:{direct_port}"), &pki.ca, &token).await;

    // Warm up, then measure each path twice and keep the better run.
    let _ = bulk(&tech).await;
    let relayed = bulk(&tech).await.max(bulk(&tech).await);
    let direct_mbps = bulk(&direct).await.max(bulk(&direct).await);

    let idle = pings(&tech).await;
    let busy = {
        let t2 = tech.clone();
        let load = tokio::spawn(async move {
            for _ in 0..3 {
                bulk(&t2).await;
            }
        });
        let p = pings(&tech).await;
        load.abort();
        p
    };

    let before = vm_rss_kib(child.0.id());
    let ca = pki.ca.clone();
    let mut idle_agents = Vec::with_capacity(IDLE_AGENTS);
    let started = Instant::now();
    for batch in 0..(IDLE_AGENTS / 50) {
        let mut set = tokio::task::JoinSet::new();
        for i in 0..50 {
            let cert = agent_cert(&pki, &format!("idle-{}", batch * 50 + i));
            let (relay, ca) = (relay.clone(), ca.clone());
            set.spawn(async move { agent(relay, ca, cert, false).await });
        }
        while let Some(c) = set.join_next().await {
            idle_agents.push(c.unwrap());
        }
    }
    let connect_secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = vm_rss_kib(child.0.id());

    println!();
    println!(
        "data-plane benchmark (loopback, QUIC, release build, {} MiB per bulk run)",
        BULK >> 20
    );
    println!("goodput  direct quinn: {direct_mbps:8.1} MB/s");
    println!(
        "goodput  via relay:    {relayed:8.1} MB/s   ratio {:.2}",
        relayed / direct_mbps
    );
    println!(
        "64 B round trip via relay, idle:      p50 {:7.0} µs   p99 {:7.0} µs",
        pct(&idle, 0.5),
        pct(&idle, 0.99)
    );
    println!(
        "64 B round trip via relay, with bulk: p50 {:7.0} µs   p99 {:7.0} µs",
        pct(&busy, 0.5),
        pct(&busy, 0.99)
    );
    println!(
        "relay RSS: {:.1} MiB with 2 connections, {:.1} MiB with {} more idle agents ({:.1} KiB each; connected in {connect_secs:.1}s)",
        before as f64 / 1024.0,
        after as f64 / 1024.0,
        idle_agents.len(),
        (after.saturating_sub(before)) as f64 / idle_agents.len() as f64
    );
}
