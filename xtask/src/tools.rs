//! Test tools that are not Rust crates: a Python virtual environment in Tether's cache with
//! `aiosmtpd` (the SMTP server notification tests send to), `asciinema` (whose `asciinema cat`
//! checks that session recordings are valid asciicasts) and `vncdotool` (a real VNC viewer the
//! desktop tests drive); and Debian packages for the desktop: an X server (Xvfb), X tools
//! (xdotool, xwd, xdpyinfo, xterm, xclip), x11vnc (the reference server of the desktop
//! benchmark), Chromium (the browser viewer's tests) and ffmpeg (video export).

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};
use tether_controlplane::assets::cache_root;

/// Pinned Python packages for tests. asciinema 2.4.0 is the last release written in Python
/// (3.x is a Rust binary); its `cat` reads the asciicast v2 files Tether records.
/// vncdotool decodes Raw, CopyRect, RRE, Hextile and ZRLE and speaks VNC authentication.
const PYTHON_PACKAGES: &[&str] = &["aiosmtpd==1.4.6", "asciinema==2.4.0", "vncdotool==1.4.2"];

/// Debian packages the tests and benchmarks run, with a command each provides.
const DEBIAN_PACKAGES: &[(&str, &str)] = &[
    ("xvfb", "Xvfb"),
    ("tigervnc-standalone-server", "Xvnc"),
    ("xdotool", "xdotool"),
    ("x11-apps", "xwd"),
    ("x11-utils", "xdpyinfo"),
    ("x11-xserver-utils", "xsetroot"),
    ("x11vnc", "x11vnc"),
    ("xterm", "xterm"),
    ("x11-apps", "xclock"),
    ("xclip", "xclip"),
    ("chromium", "chromium"),
    ("ffmpeg", "ffmpeg"),
    // `cargo xtask images` and its test: OCI image layouts without a container daemon.
    ("umoci", "umoci"),
];

/// Installs the Debian packages in [`DEBIAN_PACKAGES`] that are missing.
pub fn ensure_debian() -> Result<()> {
    ensure_debian_packages(DEBIAN_PACKAGES)
}

/// Installs those of `packages` (package, a command it provides) whose command is missing,
/// with apt-get (as root, or through sudo), refreshing the package lists once if the first
/// try fails.
pub fn ensure_debian_packages(packages: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .filter(|(_, command)| !on_path(command))
        .map(|(package, _)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("Installing Debian packages: {}", missing.join(" "));
    let root = is_root();
    let apt = |args: &[&str]| -> Result<bool> {
        let mut command = if root {
            Command::new("apt-get")
        } else {
            let mut c = Command::new("sudo");
            c.arg("-n").arg("apt-get");
            c
        };
        let status = command
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .context("apt-get is needed to install the tools (Debian or Ubuntu)")?;
        Ok(status.success())
    };
    let install: Vec<&str> = ["install", "-y", "-q", "--no-install-recommends"]
        .into_iter()
        .chain(missing.iter().copied())
        .collect();
    if apt(&install)? {
        return Ok(());
    }
    if apt(&["update", "-q"])? && apt(&install)? {
        return Ok(());
    }
    bail!(
        "failed to install {} with apt-get; install them (as root) and run again",
        missing.join(" ")
    )
}

/// Whether `command` is an executable on PATH.
fn on_path(command: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(command).is_file()))
}

/// Whether this process runs as root (from /proc, without a libc binding).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|status| {
        status
            .lines()
            .find(|l| l.starts_with("Uid:"))
            .and_then(|l| l.split_whitespace().nth(2))
            == Some("0")
    })
}

/// The installed test tools.
pub struct PythonTools {
    /// The virtual environment's Python (runs the SMTP sink).
    pub python: PathBuf,
    /// The `asciinema` command.
    pub asciinema: PathBuf,
    /// The `vncdo` command (vncdotool's command line).
    pub vncdo: PathBuf,
}

/// The virtual environment's tools, installing them first if needed. The environment is
/// rebuilt only when [`PYTHON_PACKAGES`] differs from what it was built with.
pub fn ensure_python() -> Result<PythonTools> {
    let venv = cache_root().join("python");
    let tools = PythonTools {
        python: venv.join("bin/python3"),
        asciinema: venv.join("bin/asciinema"),
        vncdo: venv.join("bin/vncdo"),
    };
    let python = &tools.python;
    let stamp = venv.join("REQUIREMENTS");
    let wanted = PYTHON_PACKAGES.join("\n");
    if python.exists()
        && tools.asciinema.exists()
        && tools.vncdo.exists()
        && std::fs::read_to_string(&stamp).ok().as_deref() == Some(wanted.as_str())
    {
        return Ok(tools);
    }
    eprintln!(
        "Installing test tools into {} ({})",
        venv.display(),
        PYTHON_PACKAGES.join(", ")
    );
    let status = Command::new("python3")
        .args(["-m", "venv", "--clear"])
        .arg(&venv)
        .status()
        .context(
            "python3 is needed for the test tools (SMTP server, asciinema); install Python 3",
        )?;
    if !status.success() {
        bail!(
            "failed to create a Python virtual environment in {}",
            venv.display()
        );
    }
    let status = Command::new(python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .args(PYTHON_PACKAGES)
        .status()
        .context("failed to run pip")?;
    if !status.success() {
        bail!("failed to install {} from PyPI", PYTHON_PACKAGES.join(", "));
    }
    std::fs::write(&stamp, wanted)?;
    Ok(tools)
}
