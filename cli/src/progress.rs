//! Progress of byte transfers on stderr (file copies, recording exports): a live line on a
//! terminal, a line every half second otherwise, and a summary with the SHA-256.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// A byte count for people: `3.1 MiB`.
pub(crate) fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// Progress on stderr for transfers.
pub(crate) struct Progress {
    label: String,
    total: u64,
    done: u64,
    started: Instant,
    last: Instant,
    live: bool,
}

impl Progress {
    /// Starts reporting progress of `total` bytes.
    pub(crate) fn new(label: String, total: u64) -> Self {
        Self {
            label,
            total,
            done: 0,
            started: Instant::now(),
            last: Instant::now(),
            live: std::io::stderr().is_terminal(),
        }
    }

    /// Counts `n` more bytes.
    pub(crate) fn add(&mut self, n: u64) {
        self.done += n;
        if self.last.elapsed() >= Duration::from_millis(500) {
            self.last = Instant::now();
            let pct = (self.done * 100).checked_div(self.total).unwrap_or(100);
            let line = format!(
                "{}: {} of {} ({pct}%)",
                self.label,
                human_bytes(self.done),
                human_bytes(self.total)
            );
            if self.live {
                eprint!("\r{line}   ");
            } else {
                eprintln!("{line}");
            }
        }
    }

    /// Prints the summary.
    pub(crate) fn finish(&self, sha256: &str) {
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        if self.live {
            eprint!("\r");
        }
        eprintln!(
            "{}: {} in {secs:.1}s ({}/s), sha256 {sha256}",
            self.label,
            human_bytes(self.done),
            human_bytes((self.done as f64 / secs) as u64)
        );
    }
}
