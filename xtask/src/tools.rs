//! Test tools that are not Rust crates, installed once into Tether's cache: a Python
//! virtual environment with `aiosmtpd` (the SMTP server notification tests send to).

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};
use tether_controlplane::assets::cache_root;

/// Pinned Python packages for tests.
const PYTHON_PACKAGES: &[&str] = &["aiosmtpd==1.4.6"];

/// The virtual environment's Python, installing it first if needed.
pub fn ensure_python() -> Result<PathBuf> {
    let venv = cache_root().join("python");
    let python = venv.join("bin/python3");
    let stamp = venv.join("REQUIREMENTS");
    let wanted = PYTHON_PACKAGES.join("\n");
    if python.exists() && std::fs::read_to_string(&stamp).ok().as_deref() == Some(wanted.as_str()) {
        return Ok(python);
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
        .context("python3 is needed for the test SMTP server; install Python 3")?;
    if !status.success() {
        bail!(
            "failed to create a Python virtual environment in {}",
            venv.display()
        );
    }
    let status = Command::new(&python)
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
    Ok(python)
}
