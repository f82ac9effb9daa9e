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
//! build); `-- --quick` moves fewer bytes and rounds, for a smoke run; `-- --only SECTION`
//! (`dataplane`, `recording`, `idle`, repeatable) runs only those sections. To profile the
//! relay, `TETHER_BENCH_WRAP` names a command the relay child runs under (split at spaces,
//! e.g. `heaptrack -o /tmp/relay` or `perf record -g -o /tmp/relay.perf --`).
//!
//! The sections are here; the harness (PKI, child processes, /proc readers) is in `harness`,
//! the two ends of every path in `endpoints`, and what one measurement does in `measure`.

#![allow(clippy::unwrap_used)] // A benchmark harness stops loudly on any unexpected error.

use std::path::Path;
use std::time::{Duration, Instant};

use tether_proto::token::RecordingPolicy;
use tether_transport::{FrameReader, FrameWriter};

mod endpoints;
mod harness;
mod measure;

use endpoints::{Route, agent, direct_server, technician, tunnel_agent};
use harness::{
    Bench, ChildProcess, agent_cert, cpu_secs, load_average, proc_status_kib, raise_nofile,
    section, serve, sysctl, tunnel, udp_buffer_errors, vm_rss_kib,
};
use measure::{goodput, latencies, pct, shell_output};

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
    let only: Vec<&str> = args
        .windows(2)
        .filter(|w| w[0] == "--only")
        .map(|w| w[1].as_str())
        .collect();
    if args.last().is_some_and(|a| a == "--only") {
        eprintln!("--only needs a section (sections: {})", SECTIONS.join(", "));
        std::process::exit(2);
    }
    for name in &only {
        if !SECTIONS.contains(name) {
            eprintln!(
                "--only {name}: no such section (sections: {})",
                SECTIONS.join(", ")
            );
            std::process::exit(2);
        }
    }
    let wanted = |name: &str| only.is_empty() || only.contains(&name);
    if wanted("dataplane") {
        section("data plane", dataplane(&bench)).await;
    }
    if wanted("recording") {
        section("recording", recording(&bench)).await;
    }
    if wanted("idle") {
        section("idle agents", idle_agents(&bench, nofile)).await;
    }
}

/// The sections `--only` can name, in the order they run.
const SECTIONS: [&str; 3] = ["dataplane", "recording", "idle"];
