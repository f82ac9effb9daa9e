//! The benchmark's harness: a throw-away PKI and token signing key in place of a cluster, the
//! relay and the tunnel as child processes (this binary re-executed with `--serve` or
//! `--tunnel`), and the /proc readers for CPU time, memory, UDP drops and socket queues.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, SanType};
use rustls::pki_types::ServerName;
use tether_proto::token::{
    Claims, DesktopPermission, Permissions, RecordingPolicy, SessionClaims, SigningKey, Technicians,
};
use tether_relay::metrics::Metrics;
use tether_relay::trust::TrustStore;
use tether_relay::{Relay, Settings};
use tether_transport::{Connection, Listener, tls};
use tokio::net::{TcpListener, TcpStream};

use crate::Scale;
use crate::endpoints::agent;

pub(crate) struct Pki {
    pub(crate) ca: String,
    pub(crate) ca_key: KeyPair,
    pub(crate) ca_params: CertificateParams,
    pub(crate) server_cert: String,
    pub(crate) server_key: String,
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

pub(crate) fn agent_cert(pki: &Pki, device: &str) -> (String, String) {
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
pub(crate) fn proc_status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

pub(crate) fn vm_rss_kib(pid: u32) -> u64 {
    proc_status_kib(pid, "VmRSS:")
}

/// CPU seconds the process has used, user and system, all threads (/proc/PID/stat `utime` and
/// `stime`, fields 14 and 15, in clock ticks).
pub(crate) fn cpu_secs(pid: u32) -> f64 {
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
pub(crate) fn udp_buffer_errors() -> (u64, u64) {
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
pub(crate) fn receive_queues(port: Option<u16>) -> (u64, u64, u64) {
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
pub(crate) async fn sample_queues(port: Option<u16>, stop: Arc<AtomicBool>) -> (u64, u64, u64) {
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
pub(crate) async fn section<T>(name: &str, f: impl Future<Output = T>) -> T {
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
pub(crate) fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "unknown".into())
}

pub(crate) fn sysctl(name: &str) -> String {
    std::fs::read_to_string(format!("/proc/sys/{}", name.replace('.', "/")))
        .map(|v| v.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}

/// Raises the soft open-files limit to the hard one (every idle agent is a UDP socket in this
/// process); returns the soft limit in force.
pub(crate) fn raise_nofile() -> u64 {
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
pub(crate) async fn serve(port: u16, dir: &Path, recordings: Option<&Path>) {
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
    println!("ready {}", std::process::id());
    tokio::select! {
        () = relay.serve(listener) => {}
        // How the benchmark ends a relay under a profiler: exiting runs its exit handlers.
        _ = tokio::signal::ctrl_c() => std::process::exit(0),
    }
}

/// Buffers of the tunnel's byte copies, each way: four TLS records' worth.
const TUNNEL_BUFFER: usize = 64 * 1024;

/// `--tunnel PORT UPSTREAM DIR`: the encrypted TCP tunnel. Accepts TLS 1.3 on PORT with the
/// server certificate in DIR, and for each connection opens a TLS 1.3 connection to UPSTREAM
/// (verified against DIR's CA) and copies bytes both ways, decrypting and re-encrypting
/// everything as the relay does, with Nagle off on both legs (as interactive tunnels run).
pub(crate) async fn tunnel(port: u16, upstream: SocketAddr, dir: &Path) {
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(
        tls::server_config(&read("server.crt"), &read("server.key"), &read("ca.crt")).unwrap(),
    ));
    let connector = tokio_rustls::TlsConnector::from(Arc::new(
        tls::client_config(&read("ca.crt"), None).unwrap(),
    ));
    let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    println!("ready {}", std::process::id());
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

/// A child process of this benchmark (the relay or the tunnel), killed however the benchmark
/// ends.
pub(crate) struct ChildProcess {
    pub(crate) child: std::process::Child,
    pub(crate) addr: SocketAddr,
    /// The relay's or tunnel's own pid (not the wrapper's, under `TETHER_BENCH_WRAP`).
    pid: u32,
    /// The child's output past its ready line, kept open so a wrapper's closing report
    /// (a profiler's summary) is not cut off by a closed pipe.
    _stdout: Option<std::io::BufReader<std::process::ChildStdout>>,
}

impl ChildProcess {
    /// Starts the relay with the trust material in `trust`, recording to `recordings` when
    /// given, and waits until it listens.
    pub(crate) fn relay(trust: &Path, recordings: Option<&Path>) -> Self {
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
    pub(crate) fn tunnel(trust: &Path, upstream: SocketAddr) -> Self {
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

    pub(crate) fn spawn(args: &[String], port: u16) -> Self {
        // A profiler to run the child under, when asked (see the benchmark's documentation).
        let wrap = std::env::var("TETHER_BENCH_WRAP").unwrap_or_default();
        let mut command = wrap.split_whitespace();
        let mut child = match command.next() {
            Some(program) => {
                let mut c = std::process::Command::new(program);
                c.args(command).arg(std::env::current_exe().unwrap());
                c
            }
            None => std::process::Command::new(std::env::current_exe().unwrap()),
        };
        let mut process = Self {
            child: child
                .args(args)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap(),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            pid: 0,
            _stdout: None,
        };
        {
            use std::io::BufRead;
            let mut stdout = std::io::BufReader::new(process.child.stdout.take().unwrap());
            // The child's own pid, which is not ours to know when it runs under a wrapper; a
            // wrapper may print lines of its own first (bounded).
            let mut pid = None;
            for _ in 0..100 {
                let mut line = String::new();
                if stdout.read_line(&mut line).unwrap() == 0 {
                    break;
                }
                pid = line
                    .trim()
                    .strip_prefix("ready ")
                    .and_then(|p| p.parse().ok());
                if pid.is_some() {
                    break;
                }
            }
            process.pid = pid.expect("the child says it is ready with its pid");
            process._stdout = Some(stdout);
        }
        process
    }

    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    pub(crate) fn address(&self) -> String {
        self.addr.to_string()
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        if self.pid != self.child.id() {
            // Under a wrapper: end the child itself with a signal it exits on, so the wrapper
            // (a profiler) writes its results and exits too.
            let _ = std::process::Command::new("kill")
                .args(["-INT", &self.pid.to_string()])
                .status();
            let _ = self.child.wait();
            return;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What every relay of the run trusts: a CA, the server certificate, a token signing key.
pub(crate) struct Bench {
    pub(crate) pki: Pki,
    pub(crate) key: SigningKey,
    pub(crate) trust: tempfile::TempDir,
    pub(crate) scale: Scale,
}

impl Bench {
    pub(crate) fn new(scale: Scale) -> Self {
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
    pub(crate) fn technician(
        &self,
        name: &str,
        device: &str,
        recording: RecordingPolicy,
    ) -> (String, String) {
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
                consent_timeout: None,
                ticket: None,
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
    pub(crate) async fn agent(&self, relay: &ChildProcess, device: &str) -> Connection {
        agent(
            relay.address(),
            self.pki.ca.clone(),
            agent_cert(&self.pki, device),
            true,
        )
        .await
    }
}
