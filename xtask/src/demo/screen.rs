//! The demo device's screen: an X server (Xvfb) with a background, an xterm and a clock on
//! it, for the agent's desktop channel to show.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use tether_controlplane::ControlPlane;
use tether_controlplane::process::ManagedProcess;

use super::run_checked;

/// The demo device's screen: its display and the processes drawing it (stopped when dropped).
pub(super) struct Screen {
    pub(super) display: String,
    _processes: Vec<ManagedProcess>,
}

/// Starts an X server for the demo device with something to see on it.
pub(super) fn start_screen(cp: &ControlPlane, home: &std::path::Path) -> Result<Screen> {
    let mut xvfb = Command::new("Xvfb");
    // -noreset: the server keeps its state (the background) when its last client leaves.
    xvfb.args([
        "-displayfd",
        "1",
        "-nolisten",
        "tcp",
        "-noreset",
        "-screen",
        "0",
        "1280x800x24",
    ]);
    let log = cp.spawn("Xvfb", xvfb)?;
    // -displayfd writes the display number Xvfb chose as the first line of its output.
    let deadline = Instant::now() + Duration::from_secs(30);
    let number = loop {
        let first = std::fs::read_to_string(log.log_path())
            .ok()
            .and_then(|t| t.lines().next().map(str::trim).map(str::to_owned))
            .filter(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit()));
        if let Some(n) = first {
            break n;
        }
        if Instant::now() > deadline {
            bail!("Xvfb did not start:\n{}", log.log_tail(20));
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let display = format!(":{number}");
    let x = |program: &str, args: &[&str]| {
        let mut c = Command::new(program);
        c.args(args).env("DISPLAY", &display).current_dir(home);
        c
    };
    run_checked(&mut x("xsetroot", &["-solid", "#2e5c8a"]), "xsetroot")?;
    let term = cp.spawn(
        "xterm",
        x(
            "xterm",
            &["-geometry", "100x30+60+60", "-title", "reception-laptop"],
        ),
    )?;
    let clock = cp.spawn("xclock", x("xclock", &["-geometry", "200x200-40+40"]))?;
    Ok(Screen {
        display,
        _processes: vec![log, term, clock],
    })
}
