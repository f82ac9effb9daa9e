//! What one measured run produced, process usage from /proc, and the printed tables (Markdown,
//! so they can go into docs/benchmarks.md as printed): one per phase with Tether and x11vnc
//! side by side, and the targets against both.

use std::fmt::Write as _;
use std::time::{Duration, Instant, SystemTime};

use super::client::{FirstFrame, Window};

/// The run of Tether's path with recording off (the one the targets compare with x11vnc).
pub const TETHER: &str = "Tether";
/// The run with the session recorded.
pub const TETHER_RECORDED: &str = "Tether, recorded";

/// A process whose usage is reported, by its role on the path.
#[derive(Clone, Copy, Debug)]
pub struct Proc {
    /// "server" (the agent or x11vnc), "relay", "CLI", "Xvfb".
    pub role: &'static str,
    /// Its pid.
    pub pid: u32,
}

/// CPU time of processes at one instant.
pub struct CpuSample {
    at: Instant,
    ticks: Vec<Option<u64>>,
}

/// utime + stime of `pid` in clock ticks (all its threads), from /proc/PID/stat.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Resident memory of `pid` in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 on Linux if that fails).
pub fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

impl CpuSample {
    /// Samples `procs` now.
    pub fn take(procs: &[Proc]) -> Self {
        Self {
            at: Instant::now(),
            ticks: procs.iter().map(|p| cpu_ticks(p.pid)).collect(),
        }
    }

    /// Each process's CPU from `self` to `later` as % of one core, and its RSS now.
    pub fn usage(&self, later: &Self, procs: &[Proc], hz: f64) -> Vec<Usage> {
        let secs = later.at.duration_since(self.at).as_secs_f64().max(1e-3);
        procs
            .iter()
            .zip(self.ticks.iter().zip(&later.ticks))
            .map(|(p, (a, b))| Usage {
                role: p.role,
                cpu: match (a, b) {
                    (Some(a), Some(b)) => Some(b.saturating_sub(*a) as f64 / hz / secs * 100.0),
                    _ => None,
                },
                rss_kib: rss_kib(p.pid),
            })
            .collect()
    }
}

/// One process's usage over a phase.
#[derive(Clone, Debug)]
pub struct Usage {
    /// Its role.
    pub role: &'static str,
    /// CPU, % of one core.
    pub cpu: Option<f64>,
    /// Resident memory at the end, KiB.
    pub rss_kib: Option<u64>,
}

/// Key-to-update latencies, ms.
#[derive(Clone, Debug, Default)]
pub struct Latency {
    /// Sorted samples.
    pub samples: Vec<f64>,
    /// Keys after which no update came within the limit.
    pub missed: usize,
}

impl Latency {
    /// The `p` quantile (nearest rank).
    pub fn quantile(&self, p: f64) -> Option<f64> {
        if self.samples.is_empty() {
            return None;
        }
        let i = ((self.samples.len() as f64 - 1.0) * p).round() as usize;
        self.samples.get(i.min(self.samples.len() - 1)).copied()
    }
}

/// One timed phase.
#[derive(Clone, Debug)]
pub struct Phase {
    /// Its name.
    pub name: &'static str,
    /// When it started (wall clock, to find it in a recording).
    pub started: SystemTime,
    /// How long it lasted.
    pub elapsed: Duration,
    /// What the viewer received.
    pub window: Window,
    /// Process usage.
    pub usage: Vec<Usage>,
    /// Anything worth saying (e.g. frames the video window drew).
    pub note: String,
}

impl Phase {
    fn kib_per_sec(&self) -> f64 {
        self.window.bytes as f64 / 1024.0 / self.elapsed.as_secs_f64().max(1e-3)
    }

    fn updates_per_sec(&self) -> f64 {
        self.window.updates as f64 / self.elapsed.as_secs_f64().max(1e-3)
    }

    /// The usage of the process in `role`.
    pub fn usage(&self, role: &str) -> Option<&Usage> {
        self.usage.iter().find(|u| u.role == role)
    }
}

/// Everything measured of one server in one pass.
#[derive(Clone, Debug)]
pub struct Run {
    /// [`TETHER`], [`TETHER_RECORDED`] or "x11vnc".
    pub server: &'static str,
    /// The first full frame.
    pub first: FirstFrame,
    /// What it was made of.
    pub first_window: Window,
    /// Everything the viewer received from the first request to the end.
    pub total: Window,
    /// The timed phases.
    pub phases: Vec<Phase>,
    /// Keys pressed on the device (XTEST) to the next update.
    pub x_keys: Latency,
    /// RFB KeyEvents sent by the viewer to the next update.
    pub rfb_keys: Latency,
    /// The relay's resident memory before the viewer connected, KiB.
    pub relay_rss_before_kib: Option<u64>,
}

impl Run {
    fn phase(&self, name: &str) -> Option<&Phase> {
        self.phases.iter().find(|p| p.name == name)
    }
}

/// One encoding pass: its name, the encodings asked for, and the runs.
pub struct Pass {
    /// E.g. "ZRLE".
    pub name: &'static str,
    /// The SetEncodings list.
    pub encodings: Vec<i32>,
    /// Tether's runs (recording off and on) and x11vnc's.
    pub runs: Vec<Run>,
    /// The recording of Tether's recorded run.
    pub recorded: Option<super::recorded::Recorded>,
}

fn num(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "—".to_owned(), |v| format!("{v:.digits$}"))
}

fn kinds(w: &Window) -> String {
    if w.kinds.is_empty() {
        return "none".to_owned();
    }
    w.kinds
        .iter()
        .map(|(k, kind)| {
            let mut text = format!("{k} {}× {:.0} KiB", kind.rects, kind.bytes as f64 / 1024.0);
            if kind.pixels > 0 {
                let _ = write!(text, " ({} px each)", kind.pixels / kind.rects.max(1));
            }
            text
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The report for every pass, as Markdown.
pub fn render(passes: &[Pass], phase_secs: u64) -> String {
    let mut out = String::new();
    for pass in passes {
        let _ = writeln!(
            out,
            "\n### {} pass (SetEncodings {:?})\n",
            pass.name, pass.encodings
        );
        let servers: Vec<&Run> = pass.runs.iter().collect();
        let header = |out: &mut String, title: &str| {
            let _ = write!(out, "| {title} |");
            for r in &servers {
                let _ = write!(out, " {} |", r.server);
            }
            let _ = writeln!(out, " target |");
            let _ = write!(out, "|---|");
            for _ in &servers {
                let _ = write!(out, "---|");
            }
            let _ = writeln!(out, "---|");
        };
        let row = |out: &mut String, label: &str, f: &dyn Fn(&Run) -> String, target: &str| {
            let _ = write!(out, "| {label} |");
            for r in &servers {
                let _ = write!(out, " {} |", f(r));
            }
            let _ = writeln!(out, " {target} |");
        };
        header(&mut out, "first full frame");
        row(
            &mut out,
            "bytes",
            &|r| format!("{:.1} KiB", r.first.bytes as f64 / 1024.0),
            "≤ 300 KiB",
        );
        row(
            &mut out,
            "updates, time",
            &|r| {
                format!(
                    "{}, {:.0} ms",
                    r.first.updates,
                    r.first.elapsed.as_secs_f64() * 1000.0
                )
            },
            "",
        );
        row(&mut out, "rectangles", &|r| kinds(&r.first_window), "");
        row(
            &mut out,
            "whole run: bytes, updates",
            &|r| {
                format!(
                    "{:.1} MiB, {}",
                    r.total.bytes as f64 / 1024.0 / 1024.0,
                    r.total.updates
                )
            },
            "",
        );
        let _ = writeln!(out);
        header(&mut out, "key → next update");
        for (label, on_device) in [
            ("key on the device (XTEST)", true),
            ("RFB KeyEvent from the viewer", false),
        ] {
            let pick = |r: &Run| {
                if on_device {
                    r.x_keys.clone()
                } else {
                    r.rfb_keys.clone()
                }
            };
            row(
                &mut out,
                &format!("{label}: p50 / p95 / max ms"),
                &|r| {
                    let l = pick(r);
                    format!(
                        "{} / {} / {}",
                        num(l.quantile(0.5), 1),
                        num(l.quantile(0.95), 1),
                        num(l.samples.last().copied(), 1)
                    )
                },
                "p50 ≤ 30, p95 ≤ 80",
            );
            row(
                &mut out,
                &format!("{label}: samples (no update in 2 s)"),
                &|r| {
                    let l = pick(r);
                    format!("{} ({})", l.samples.len(), l.missed)
                },
                "≥ 30",
            );
        }
        let names: Vec<&'static str> = servers
            .first()
            .map(|r| r.phases.iter().map(|p| p.name).collect())
            .unwrap_or_default();
        for name in names {
            let _ = writeln!(out);
            header(&mut out, &format!("{name} ({phase_secs} s)"));
            let target = match name {
                "idle" => "≤ 1 KiB/s",
                "typing" => "≤ 5 KiB/s",
                "scrolling" if pass.name == "ZRLE" => "≤ 600 KiB/s lossless",
                "scrolling" => "≤ 250 KiB/s with CopyRect/JPEG",
                _ => "",
            };
            let phase = |r: &Run| r.phase(name).cloned();
            row(
                &mut out,
                "KiB/s",
                &|r| num(phase(r).map(|p| p.kib_per_sec()), 1),
                target,
            );
            row(
                &mut out,
                "updates/s",
                &|r| num(phase(r).map(|p| p.updates_per_sec()), 1),
                "",
            );
            for (role, label) in [
                ("server", "server CPU % (agent / x11vnc)"),
                ("relay", "relay CPU %"),
                ("CLI", "kubectl tether vnc CPU %"),
                ("Xvfb", "Xvfb CPU %"),
            ] {
                let target = if role == "server" && name == "typing" {
                    "≤ 5 %"
                } else {
                    ""
                };
                row(
                    &mut out,
                    label,
                    &|r| num(phase(r).and_then(|p| p.usage(role)?.cpu), 1),
                    target,
                );
            }
            for (role, label) in [("server", "server RSS MiB"), ("relay", "relay RSS MiB")] {
                row(
                    &mut out,
                    label,
                    &|r| {
                        num(
                            phase(r)
                                .and_then(|p| p.usage(role)?.rss_kib)
                                .map(|k| k as f64 / 1024.0),
                            1,
                        )
                    },
                    "",
                );
            }
            row(
                &mut out,
                "rectangles",
                &|r| phase(r).map_or_else(String::new, |p| kinds(&p.window)),
                "",
            );
            if servers
                .iter()
                .any(|r| phase(r).is_some_and(|p| !p.note.is_empty()))
            {
                row(
                    &mut out,
                    "note",
                    &|r| phase(r).map(|p| p.note).unwrap_or_default(),
                    "",
                );
            }
        }
        render_targets(&mut out, pass);
        out.push_str(&super::recorded::render(pass, TETHER, TETHER_RECORDED));
    }
    out
}

/// The targets: Tether's value, x11vnc's, whether Tether meets the target and
/// whether it is no worse than x11vnc.
fn render_targets(out: &mut String, pass: &Pass) {
    let (Some(t), Some(x)) = (
        pass.runs.iter().find(|r| r.server == TETHER),
        pass.runs.iter().find(|r| r.server == "x11vnc"),
    ) else {
        return;
    };
    let rate = |r: &Run, name: &str| r.phase(name).map(|p| p.kib_per_sec());
    let cpu = |r: &Run, name: &str| r.phase(name).and_then(|p| p.usage("server")?.cpu);
    let scroll_goal = if pass.name == "ZRLE" { 600.0 } else { 250.0 };
    let lines: Vec<(&str, f64, Option<f64>, Option<f64>)> = vec![
        (
            "first frame KiB",
            300.0,
            Some(t.first.bytes as f64 / 1024.0),
            Some(x.first.bytes as f64 / 1024.0),
        ),
        ("idle KiB/s", 1.0, rate(t, "idle"), rate(x, "idle")),
        ("typing KiB/s", 5.0, rate(t, "typing"), rate(x, "typing")),
        (
            "scrolling KiB/s",
            scroll_goal,
            rate(t, "scrolling"),
            rate(x, "scrolling"),
        ),
        (
            "key → update p50 ms",
            30.0,
            t.x_keys.quantile(0.5),
            x.x_keys.quantile(0.5),
        ),
        (
            "key → update p95 ms",
            80.0,
            t.x_keys.quantile(0.95),
            x.x_keys.quantile(0.95),
        ),
        (
            "server CPU % while typing",
            5.0,
            cpu(t, "typing"),
            cpu(x, "typing"),
        ),
    ];
    let _ = writeln!(
        out,
        "\n| target ({} pass) | goal | Tether | x11vnc | Tether meets goal | Tether ≤ x11vnc |",
        pass.name
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|");
    for (label, goal, tv, xv) in lines {
        let meets = tv.map_or("—", |v| if v <= goal { "yes" } else { "no" });
        let no_worse = match (tv, xv) {
            (Some(a), Some(b)) if a <= b => "yes".to_owned(),
            (Some(a), Some(b)) => format!("no ({:.1}×)", a / b.max(1e-9)),
            _ => "—".to_owned(),
        };
        let _ = writeln!(
            out,
            "| {label} | ≤ {goal} | {} | {} | {meets} | {no_worse} |",
            num(tv, 1),
            num(xv, 1)
        );
    }
}
