//! Test tools that are not Rust crates, installed once into Tether's cache: a Python
//! virtual environment with `aiosmtpd` (the SMTP server notification tests send to) and
//! `asciinema` (whose `asciinema cat` checks that session recordings are valid asciicasts).

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};
use tether_controlplane::assets::cache_root;

/// Pinned Python packages for tests. asciinema 2.4.0 is the last release written in Python
/// (3.x is a Rust binary); its `cat` reads the asciicast v2 files Tether records.
const PYTHON_PACKAGES: &[&str] = &["aiosmtpd==1.4.6", "asciinema==2.4.0"];

/// The installed test tools.
pub struct PythonTools {
    /// The virtual environment's Python (runs the SMTP sink).
    pub python: PathBuf,
    /// The `asciinema` command.
    pub asciinema: PathBuf,
}

/// The virtual environment's tools, installing them first if needed. The environment is
/// rebuilt only when [`PYTHON_PACKAGES`] differs from what it was built with.
pub fn ensure_python() -> Result<PythonTools> {
    let venv = cache_root().join("python");
    let tools = PythonTools {
        python: venv.join("bin/python3"),
        asciinema: venv.join("bin/asciinema"),
    };
    let python = &tools.python;
    let stamp = venv.join("REQUIREMENTS");
    let wanted = PYTHON_PACKAGES.join("\n");
    if python.exists()
        && tools.asciinema.exists()
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
