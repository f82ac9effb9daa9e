//! Data-plane benchmark (prints numbers, asserts nothing):
//!
//! - goodput of one bulk stream technician → agent through the relay, against the same client
//!   and server code connected directly (QUIC, loopback), and their ratio;
//! - round-trip latency of 64-byte messages through the relay, idle and while a bulk transfer
//!   shares it (p50/p99);
//! - the relay's resident memory with 1,000 idle agent connections;
//! - session recording: goodput of shell output agent → technician with recording off and on
//!   (alternating rounds on one relay, and their ratio), and the relay's resident memory with
//!   100 concurrent sessions, each with a shell channel that has printed 64 KiB, unrecorded
//!   and recorded.
//!
//! The relay runs as its own process (this binary re-executed with `--serve`), configured with
//! a throw-away CA and signing key instead of a cluster, and for the recording section with a
//! local-filesystem recording store in a temporary directory. Run with
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
    PROTOCOL_VERSION, Role, ShellParams, Welcome,
};
use tether_proto::token::{
    Claims, DesktopPermission, Permissions, RecordingPolicy, SessionClaims, SigningKey, Technicians,
};
use tether_relay::metrics::Metrics;
use tether_relay::trust::TrustStore;
use tether_relay::{Relay, Settings};
use tether_transport::{Connection, Dial, Listener, Prefer, framed, tls};

const BULK: u64 = 256 * 1024 * 1024;
const PINGS: usize = 2_000;
const IDLE_AGENTS: usize = 1_000;
/// Shell output per goodput round of the recording section.
const SHELL_BULK: u64 = 128 * 1024 * 1024;
/// Shell output frames: what the agent's shell reads at most at once.
const SHELL_FRAME: usize = 32 * 1024;
/// Measured goodput rounds per setting (plus one warm-up each), alternating off and on.
const RECORDING_ROUNDS: usize = 5;
/// Concurrent sessions for the recording memory measurement, and what each shell printed.
const RECORDED_SESSIONS: usize = 100;
const SESSION_OUTPUT: u64 = 64 * 1024;

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

/// Serves one channel: `Files` is a sink that reports the bytes received, `Shell` runs the
/// pretend command `bench-output N` (N bytes of output, then waits for the technician to
/// leave), `Chat` echoes.
async fn serve_channel(
    attach: Attach,
    mut r: tether_transport::FrameReader,
    mut w: tether_transport::FrameWriter,
) {
    match attach.kind {
        ChannelKind::Shell => {
            let n: u64 = attach
                .shell
                .as_ref()
                .and_then(|s| s.command.get(1))
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
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
                        serve_channel(attach, rr, ww).await;
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
    attach_with(conn, Attach { kind, shell: None }).await
}

async fn attach_with(
    conn: &Connection,
    attach: Attach,
) -> (tether_transport::FrameReader, tether_transport::FrameWriter) {
    let (mut r, mut w) = framed(conn.open().await.unwrap());
    w.message(&attach).await.unwrap();
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

/// A shell channel whose command prints `bytes` of output; returns MB/s from the channel's
/// attachment to the last byte received, and the open channel (dropping it closes it).
async fn shell_output(
    conn: &Connection,
    bytes: u64,
) -> (
    f64,
    (tether_transport::FrameReader, tether_transport::FrameWriter),
) {
    let (mut r, w) = attach_with(
        conn,
        Attach {
            kind: ChannelKind::Shell,
            shell: Some(ShellParams {
                command: vec!["bench-output".into(), bytes.to_string()],
                tty: true,
                cols: 120,
                rows: 40,
                term: Some("xterm-256color".into()),
            }),
        },
    )
    .await;
    let started = Instant::now();
    let receive = async {
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
    };
    tokio::time::timeout(Duration::from_secs(300), receive)
        .await
        .expect("the shell output stalled");
    (bytes as f64 / 1e6 / started.elapsed().as_secs_f64(), (r, w))
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
                    tokio::spawn(serve_channel(attach, r, w));
                }
            });
        }
    });
    port
}

/// The relay child process, killed however the benchmark ends.
struct RelayProcess {
    child: std::process::Child,
    addr: String,
}

impl RelayProcess {
    /// Starts the relay with the trust material in `trust`, recording to `recordings` when
    /// given, and waits until it listens.
    fn spawn(trust: &Path, recordings: Option<&Path>) -> Self {
        let port = std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut command = std::process::Command::new(std::env::current_exe().unwrap());
        command.args(["--serve", &port.to_string()]).arg(trust);
        if let Some(recordings) = recordings {
            command.arg(recordings);
        }
        let mut relay = Self {
            child: command
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap(),
            addr: format!("127.0.0.1:{port}"),
        };
        {
            use std::io::BufRead;
            let mut line = String::new();
            std::io::BufReader::new(relay.child.stdout.take().unwrap())
                .read_line(&mut line)
                .unwrap();
            assert_eq!(line.trim(), "ready");
        }
        relay
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for RelayProcess {
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
}

impl Bench {
    fn new() -> Self {
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
        Self { pki, key, trust }
    }

    /// A session token for the session `name` (also its uid) on `device`.
    fn token(&self, name: &str, device: &str, recording: RecordingPolicy) -> String {
        let now = jiff::Timestamp::now().as_second();
        self.key
            .mint(&Claims::new(
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
            ))
            .unwrap()
    }

    /// An agent for `device` that serves channels.
    async fn agent(&self, relay: &RelayProcess, device: &str) -> Connection {
        agent(
            relay.addr.clone(),
            self.pki.ca.clone(),
            agent_cert(&self.pki, device),
            true,
        )
        .await
    }
}

/// Goodput, latency and memory per idle agent, through a relay that does not record.
async fn dataplane(bench: &Bench) {
    let pki = &bench.pki;
    let relay_process = RelayProcess::spawn(bench.trust.path(), None);
    let relay = relay_process.addr.clone();
    let token = bench.token("bench", "dev-0", RecordingPolicy::Disabled);

    let _agent = bench.agent(&relay_process, "dev-0").await;
    let tech = technician(&relay, &pki.ca, &token).await;
    let direct_port = direct_server(pki).await;
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

    let before = vm_rss_kib(relay_process.pid());
    let ca = pki.ca.clone();
    let mut idle_agents = Vec::with_capacity(IDLE_AGENTS);
    let started = Instant::now();
    for batch in 0..(IDLE_AGENTS / 50) {
        let mut set = tokio::task::JoinSet::new();
        for i in 0..50 {
            let cert = agent_cert(pki, &format!("idle-{}", batch * 50 + i));
            let (relay, ca) = (relay.clone(), ca.clone());
            set.spawn(async move { agent(relay, ca, cert, false).await });
        }
        while let Some(c) = set.join_next().await {
            idle_agents.push(c.unwrap());
        }
    }
    let connect_secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = vm_rss_kib(relay_process.pid());

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

/// The relay's memory with `RECORDED_SESSIONS` sessions, each with a technician and a shell
/// channel that printed `SESSION_OUTPUT`, on a fresh relay: (KiB before, KiB after, peak KiB).
async fn sessions_rss(bench: &Bench, policy: RecordingPolicy, label: &str) -> (u64, u64, u64) {
    let recordings = tempfile::tempdir().unwrap();
    let relay = RelayProcess::spawn(bench.trust.path(), Some(recordings.path()));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = vm_rss_kib(relay.pid());

    const BATCH: usize = 25;
    let mut agents = Vec::with_capacity(RECORDED_SESSIONS);
    let mut channels = Vec::with_capacity(RECORDED_SESSIONS);
    for batch in 0..RECORDED_SESSIONS.div_ceil(BATCH) {
        let range = batch * BATCH..((batch + 1) * BATCH).min(RECORDED_SESSIONS);
        let mut set = tokio::task::JoinSet::new();
        for i in range.clone() {
            let cert = agent_cert(&bench.pki, &format!("{label}-{i}"));
            let (addr, ca) = (relay.addr.clone(), bench.pki.ca.clone());
            set.spawn(async move { agent(addr, ca, cert, true).await });
        }
        while let Some(c) = set.join_next().await {
            agents.push(c.unwrap());
        }
        let mut set = tokio::task::JoinSet::new();
        for i in range {
            let token = bench.token(&format!("{label}-{i}"), &format!("{label}-{i}"), policy);
            let (addr, ca) = (relay.addr.clone(), bench.pki.ca.clone());
            set.spawn(async move {
                let tech = technician(&addr, &ca, &token).await;
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
            manifests >= RECORDED_SESSIONS,
            "only {manifests} manifests for {RECORDED_SESSIONS} recorded sessions"
        );
    }
    drop(channels);
    drop(agents);
    drop(relay);
    (before, after, peak)
}

/// Recording's cost: shell goodput off vs on through one relay, and memory per session.
async fn recording(bench: &Bench) {
    let recordings = tempfile::tempdir().unwrap();
    let relay = RelayProcess::spawn(bench.trust.path(), Some(recordings.path()));
    // One relay, configured to record; the session's token decides whether it is recorded.
    let _plain_agent = bench.agent(&relay, "plain").await;
    let _recorded_agent = bench.agent(&relay, "recorded").await;
    let plain = technician(
        &relay.addr,
        &bench.pki.ca,
        &bench.token("plain", "plain", RecordingPolicy::Disabled),
    )
    .await;
    let recorded = technician(
        &relay.addr,
        &bench.pki.ca,
        &bench.token("recorded", "recorded", RecordingPolicy::Enabled),
    )
    .await;

    let (mut off, mut on) = (Vec::new(), Vec::new());
    for round in 0..=RECORDING_ROUNDS {
        let (a, _) = shell_output(&plain, SHELL_BULK).await;
        settle(recordings.path()).await;
        let (b, _) = shell_output(&recorded, SHELL_BULK).await;
        settle(recordings.path()).await;
        if round > 0 {
            off.push(a);
            on.push(b);
        }
    }
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
    println!();
    println!(
        "recording benchmark (shell output agent → technician, {} MiB per round in {} KiB frames, {RECORDING_ROUNDS} rounds each after a warm-up, alternating off/on, local filesystem store)",
        SHELL_BULK >> 20,
        SHELL_FRAME >> 10
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
        "recorded: {casts} asciicasts, {:.1} MiB ({:.1} MiB of output each); relay RSS after the rounds {:.1} MiB, peak {:.1} MiB",
        cast_bytes as f64 / 1048576.0,
        (SHELL_BULK >> 20) as f64,
        goodput_rss as f64 / 1024.0,
        goodput_peak as f64 / 1024.0
    );
    let sessions = RECORDED_SESSIONS as f64;
    for (label, (before, after, peak)) in [("off", unrecorded), ("on ", recorded_rss)] {
        println!(
            "relay RSS, {RECORDED_SESSIONS} sessions with a shell that printed {} KiB, recording {label}: {:.1} MiB → {:.1} MiB (+{:.1} MiB, {:.0} KiB per session; peak {:.1} MiB)",
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
        "recording's share: {:+.1} MiB for {RECORDED_SESSIONS} sessions ({:+.0} KiB per recorded session)",
        (growth(recorded_rss) - growth(unrecorded)) / 1024.0,
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
    if args.iter().any(|a| a == "--list") {
        return;
    }

    let bench = Bench::new();
    dataplane(&bench).await;
    recording(&bench).await;
}
