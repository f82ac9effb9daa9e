//! What one measurement does on a path: bulk transfers for goodput, 64-byte round trips for
//! latency (idle and beside a bulk transfer), shell output, each bounded by [`STALL`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tether_proto::frame::{Frame, FrameKind};
use tether_transport::Connection;

use crate::endpoints::{Route, attach, download_request, echo_shell, files, shell};
use crate::harness::{cpu_secs, receive_queues, sample_queues};
use crate::{BULK_FRAME, Channel, STALL};

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
pub(crate) async fn shell_output(conn: &Connection, bytes: u64) -> (f64, Channel) {
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

pub(crate) fn pct(v: &[f64], p: f64) -> f64 {
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
pub(crate) struct Lat {
    pub(crate) rtt: Vec<f64>,
    pub(crate) bulk: f64,
    pub(crate) queues: (u64, u64, u64),
}

impl Lat {
    pub(crate) fn p50(&self) -> f64 {
        pct(&self.rtt, 0.5)
    }
    pub(crate) fn p99(&self) -> f64 {
        pct(&self.rtt, 0.99)
    }
}

/// Latency on one path: idle, with a bulk upload, with a bulk download.
pub(crate) async fn latencies(path: &Route<'_>, n: usize, relay_port: Option<u16>) -> [Lat; 3] {
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

/// Goodput runs on one path: a warm-up, then the better of two, with the CPU seconds per GB
/// the process in the middle (if any) used over the two measured runs.
pub(crate) async fn goodput(
    path: &Route<'_>,
    bytes: u64,
    middle: Option<u32>,
) -> (f64, Option<f64>) {
    let _ = bulk(path.open(files()).await, bytes).await;
    let cpu = middle.map(cpu_secs);
    let a = bulk(path.open(files()).await, bytes).await;
    let b = bulk(path.open(files()).await, bytes).await;
    let per_gb = middle
        .zip(cpu)
        .map(|(pid, before)| (cpu_secs(pid) - before) / (2.0 * bytes as f64 / 1e9));
    (a.max(b), per_gb)
}
