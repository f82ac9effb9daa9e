//! The desktop's real parts for end-to-end tests: an X server (Xvfb) for the device, X tools
//! run on it (xterm, xdotool, xsetroot), the X server's own capture of the screen (`xwd`),
//! `kubectl tether vnc` as the technician runs it, and a real VNC viewer (vncdotool) through
//! it. `cargo xtask test` installs all of them; a missing one fails the test and names it.

use std::io::{BufRead, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use tether_crds::remote_session::SessionPhase;

use crate::dataplane::{Agent, Cluster, kubectl_tether_command};
use crate::pixels::parse_xwd;
pub use crate::pixels::{NOTICE_ROWS, Rgb, differing_below, png_to_rgb};
use crate::{PATIENCE, eventually};

/// A running Xvfb, killed when dropped.
pub struct Xvfb {
    child: Child,
    /// The display, e.g. `:17`.
    pub display: String,
    /// Screen width.
    pub width: u16,
    /// Screen height.
    pub height: u16,
}

/// A command on PATH or a clear failure naming the package that provides it.
fn tool(command: &str, package: &str) -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(command))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!("{command} is needed (Debian package {package}; `cargo xtask test` installs it)")
    })
}

impl Xvfb {
    /// Starts an X server with a `width`×`height`×24 screen on a free display number (the
    /// server picks it and reports it through `-displayfd`).
    pub fn start(width: u16, height: u16) -> Self {
        let mut command = Command::new(tool("Xvfb", "xvfb"));
        command
            .args([
                "-displayfd",
                "1",
                "-nolisten",
                "tcp",
                "-noreset",
                "-screen",
                "0",
            ])
            .arg(format!("{width}x{height}x24"));
        Self::launch(command, width, height)
    }

    /// Starts an X server whose screen can change size (`xrandr -s WxH`, see [`Xvfb::resize`]),
    /// as a user's does when a monitor is plugged in: Xvfb's cannot. TigerVNC's `Xvnc` is an
    /// X server with full RandR; here it is only that, its own VNC listener turned off
    /// (`-rfbport -1`), so the desktop the tests see still comes from Tether's agent.
    pub fn start_resizable(width: u16, height: u16) -> Self {
        let mut command = Command::new(tool("Xvnc", "tigervnc-standalone-server"));
        command
            .args([
                "-displayfd",
                "1",
                "-nolisten",
                "tcp",
                "-noreset",
                "-rfbport",
                "-1",
                "-SecurityTypes",
                "None",
                "-depth",
                "24",
                "-geometry",
            ])
            .arg(format!("{width}x{height}"));
        Self::launch(command, width, height)
    }

    /// Changes the screen's size through RandR (a server from [`Xvfb::start_resizable`]).
    pub fn resize(&mut self, width: u16, height: u16) {
        self.run("xrandr", &["-s", &format!("{width}x{height}")]);
        self.width = width;
        self.height = height;
    }

    fn launch(mut command: Command, width: u16, height: u16) -> Self {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("the X server starts");
        let mut number = String::new();
        let Some(stdout) = child.stdout.take() else {
            panic!("the X server's stdout is piped");
        };
        let mut reader = std::io::BufReader::new(stdout);
        if reader.read_line(&mut number).is_err() || number.trim().is_empty() {
            let _ = child.kill();
            panic!("the X server did not report its display number");
        }
        Self {
            child,
            display: format!(":{}", number.trim()),
            width,
            height,
        }
    }

    /// Runs an X client on this display and waits for it.
    pub fn run(&self, command: &str, args: &[&str]) -> String {
        let out = Command::new(command)
            .args(args)
            .env("DISPLAY", &self.display)
            .output()
            .unwrap_or_else(|e| panic!("{command} runs: {e}"));
        assert!(
            out.status.success(),
            "{command} {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts a long-running X client on this display (killed when the handle drops).
    pub fn spawn(&self, command: &str, args: &[&str]) -> KillOnDrop {
        KillOnDrop(
            Command::new(command)
                .args(args)
                .env("DISPLAY", &self.display)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("{command} starts: {e}")),
        )
    }

    /// Starts `xev` in a window at `geometry`, its report of every event going to `log`
    /// (pointer buttons with their coordinates among them).
    pub fn xev(&self, geometry: &str, log: &Path) -> KillOnDrop {
        let out = std::fs::File::create(log).expect("the xev log is created");
        KillOnDrop(
            Command::new(tool("xev", "x11-utils"))
                .args([
                    "-geometry",
                    geometry,
                    "-event",
                    "button",
                    "-event",
                    "structure",
                ])
                .env("DISPLAY", &self.display)
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(Stdio::null())
                .spawn()
                .expect("xev starts"),
        )
    }

    /// Where the pointer is, as `xdotool getmouselocation` says.
    pub fn pointer(&self) -> (u16, u16) {
        let out = self.run(
            &tool("xdotool", "xdotool").to_string_lossy(),
            &["getmouselocation"],
        );
        let field = |name: &str| {
            out.split_whitespace()
                .find_map(|f| f.strip_prefix(name))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("xdotool printed {out:?}"))
        };
        (field("x:"), field("y:"))
    }

    /// The screen as the X server itself sees it, as RGB bytes, from `xwd -root`.
    pub fn capture(&self) -> Rgb {
        let xwd = tool("xwd", "x11-apps");
        let out = Command::new(xwd)
            .args(["-root", "-silent", "-display", &self.display])
            .output()
            .expect("xwd runs");
        assert!(out.status.success(), "xwd failed");
        parse_xwd(&out.stdout)
    }
}

impl Drop for Xvfb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A child process killed when dropped.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `kubectl tether vnc NAME` running as a technician, with the address and one-time
/// password it printed.
pub struct Vnc {
    child: KillOnDrop,
    /// The local port.
    pub port: u16,
    /// The one-time password.
    pub password: String,
    lines: mpsc::Receiver<String>,
    /// Everything it printed so far.
    pub printed: Vec<String>,
}

impl Vnc {
    /// Starts `kubectl tether vnc NAME` as `user` in `ns` and waits until it listens.
    pub async fn start(ns: &str, user: &str, name: &str) -> Self {
        let (child, lines) = spawn_kubectl_tether(ns, user, &["vnc", name], "kubectl tether vnc");
        let mut vnc = Self {
            child,
            port: 0,
            password: String::new(),
            lines,
            printed: Vec::new(),
        };
        let (port, password) = eventually("kubectl tether vnc listens", PATIENCE, || {
            vnc.drain();
            let port = vnc.printed.iter().find_map(|l| {
                l.split("127.0.0.1:")
                    .nth(1)?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            });
            let password = vnc
                .printed
                .iter()
                .find_map(|l| l.split("one-time password: ").nth(1).map(str::to_owned));
            let exited = vnc.child.0.try_wait().ok().flatten();
            if let Some(status) = exited {
                panic!("kubectl tether vnc exited ({status}): {:#?}", vnc.printed);
            }
            async move { Some((port?, password?)) }
        })
        .await;
        vnc.port = port;
        vnc.password = password;
        vnc
    }

    /// Takes in what it printed since the last call.
    pub fn drain(&mut self) {
        while let Ok(line) = self.lines.try_recv() {
            self.printed.push(line);
        }
    }

    /// Waits until it exits; returns everything it printed.
    pub async fn wait_exit(&mut self, patience: Duration) -> Vec<String> {
        eventually("kubectl tether vnc exits", patience, || {
            let status = self.child.0.try_wait().ok().flatten();
            async move { status }
        })
        .await;
        // Its stderr closes with it; collect what is left.
        let mut rest = String::new();
        if let Some(mut e) = self.child.0.stderr.take() {
            let _ = e.read_to_string(&mut rest);
        }
        std::thread::sleep(Duration::ZERO);
        self.drain();
        self.printed.clone()
    }

    /// Runs vncdotool's `vncdo` against the listener with `actions` (e.g. `capture f.png`,
    /// `move 10 20`, `type hello`), returning its exit status and stderr. It asks for the cursor
    /// as a separate shape and leaves it out of screenshots, as the X server's own capture does.
    pub fn vncdo(&self, actions: &[&str]) -> (bool, String) {
        let vncdo = std::env::var_os("TETHER_TEST_VNCDO")
            .map_or_else(|| PathBuf::from("vncdo"), PathBuf::from);
        let out = Command::new(&vncdo)
            .arg("-s")
            .arg(format!("127.0.0.1::{}", self.port))
            .arg("-p")
            .arg(&self.password)
            .args(["--timeout", "60", "--nocursor"])
            .args(actions)
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "{} is needed (vncdotool from PyPI; `cargo xtask test` installs it): {e}",
                    vncdo.display()
                )
            });
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Starts vncdotool's `vncdo` with `actions` and leaves it running (a viewer that stays
    /// connected, e.g. `pastefile F pause 30`); killed when the handle drops.
    pub fn vncdo_spawn(&self, actions: &[&str]) -> KillOnDrop {
        let vncdo = std::env::var_os("TETHER_TEST_VNCDO")
            .map_or_else(|| PathBuf::from("vncdo"), PathBuf::from);
        KillOnDrop(
            Command::new(&vncdo)
                .arg("-s")
                .arg(format!("127.0.0.1::{}", self.port))
                .arg("-p")
                .arg(&self.password)
                .args(["--timeout", "120", "--nocursor"])
                .args(actions)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("{} starts: {e}", vncdo.display())),
        )
    }

    /// A screenshot through a real VNC viewer, as RGB.
    pub fn screenshot(&self, dir: &Path) -> Rgb {
        let png = dir.join(format!("screen-{}.png", rand_suffix()));
        let (ok, stderr) = self.vncdo(&["capture", &png.to_string_lossy()]);
        assert!(ok, "vncdo capture failed: {stderr}");
        png_to_rgb(&png)
    }
}

/// Starts `kubectl tether --context USER -n NS ARGS…` as a technician runs it, through the real
/// kubectl with the built plugin first on `PATH`, and leaves it running: the process (killed
/// when dropped) and its stderr, line by line. `what` names it if it does not start.
pub fn spawn_kubectl_tether(
    ns: &str,
    user: &str,
    args: &[&str],
    what: &str,
) -> (KillOnDrop, mpsc::Receiver<String>) {
    let mut child = kubectl_tether_command(ns, user, args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{what} starts: {e:?}"));
    let stderr = child.stderr.take().expect("stderr is piped");
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (KillOnDrop(child), lines)
}

/// Draws something recognisable on `x`: a solid background and an xterm at `geometry` that
/// prints `text`.
pub fn decorate(x: &Xvfb, geometry: &str, text: &str) -> KillOnDrop {
    x.run("xsetroot", &["-solid", "#3366cc"]);
    x.spawn(
        "xterm",
        &[
            "-geometry",
            geometry,
            "-e",
            "sh",
            "-c",
            &format!("echo {text}; sleep 600"),
        ],
    )
}

/// The device `kiosk` enrolled in `cluster` and serving the display of `x` without asking
/// for consent, and the Unattended RemoteSession `screen` on it, with `spec` (its features,
/// its recording) added, once it is Active.
pub async fn screen_session(cluster: &Cluster, x: &Xvfb, spec: serde_json::Value) -> Agent {
    let ns = cluster.namespace.clone();
    let display = format!("--display={}", x.display);
    let agent = Agent::enroll_and_run(
        &ns,
        "kiosk",
        cluster.relay.port,
        &["--consent=never", &display],
    )
    .await;
    let mut session = serde_json::json!({
        "device": "kiosk",
        "mode": "Unattended",
    });
    if let (Some(session), serde_json::Value::Object(extra)) = (session.as_object_mut(), spec) {
        session.extend(extra);
    }
    cluster.apply_session("screen", session).await;
    cluster.wait_phase("screen", SessionPhase::Active).await;
    agent
}

/// Two viewers of the session `screen` in `ns` (vncdotool through `kubectl tether vnc` as
/// carol): one captures the 640×480 screen and leaves, the other stays connected while `x`
/// (from [`Xvfb::start_resizable`]) changes to 800×600 and its background to orange, as when
/// the user plugs in a monitor. Returns the resized screen as the X server has it.
pub async fn view_across_a_resize(ns: &str, x: &mut Xvfb, dir: &Path) -> Rgb {
    let vnc = Vnc::start(ns, "carol", "screen").await;
    let before = dir.join("before.png");
    let (ok_before, err) = vnc.vncdo(&["capture", &before.to_string_lossy()]);
    assert!(ok_before, "{err}");
    let after = dir.join("after.png");
    let after = after.to_string_lossy();
    let mut viewer = vnc.vncdo_spawn(&["pause", "3", "capture", &after, "pause", "2"]);
    std::thread::sleep(Duration::from_millis(1000));
    x.resize(800, 600);
    x.run("xsetroot", &["-solid", "#cc6633"]);
    let status = viewer.0.wait().expect("vncdo runs");
    assert!(status.success(), "vncdo: {status}");
    let own = x.capture();
    assert_eq!((own.width, own.height), (800, 600));
    own
}

/// [`screen_session`] recorded (`Required`) with the desktop under `Control`: what the
/// playback and export tests record.
pub async fn recorded_screen_session(cluster: &Cluster, x: &Xvfb) -> Agent {
    screen_session(
        cluster,
        x,
        serde_json::json!({
            "recording": "Required",
            "features": {"desktop": "Control"},
        }),
    )
    .await
}

/// An 800×600 X server with [`decorate`]'s background and xterm, a cluster for `prefix`,
/// and [`screen_session`] with the desktop permission `desktop`.
pub async fn desktop_session(prefix: &str, desktop: &str) -> (Cluster, Agent, Xvfb, KillOnDrop) {
    let x = Xvfb::start(800, 600);
    let decoration = decorate(&x, "60x10+40+40", "Tether desktop");
    let cluster = Cluster::start(prefix, &[]).await;
    let agent = screen_session(
        &cluster,
        &x,
        serde_json::json!({"features": {"desktop": desktop}}),
    )
    .await;
    (cluster, agent, x, decoration)
}

/// An xterm at (400, 300)–(640, 365) on `x` whose shell writes the first line typed into it
/// to `marker`, once it is reading (a line typed while the terminal is being set up could be
/// flushed).
pub async fn reader_xterm(x: &Xvfb, marker: &Path) -> KillOnDrop {
    let m = marker.display();
    let script = format!(
        "stty -echo 2>/dev/null; touch {m}.ready; read line; echo \"$line\" > {m}; sleep 600"
    );
    let term = x.spawn(
        "xterm",
        &["-geometry", "40x5+400+300", "-e", "sh", "-c", &script],
    );
    let ready = marker.with_extension("ready");
    eventually("the xterm's shell is reading", PATIENCE, || {
        let exists = ready.exists();
        async move { exists.then_some(()) }
    })
    .await;
    term
}

fn rand_suffix() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}
