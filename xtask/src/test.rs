//! `cargo xtask test`: everything the test suite needs, then the whole suite.

use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::controlplane;

/// Builds or finds the control plane, builds every binary the end-to-end tests run as real
/// processes, then runs every test in the workspace. `extra` is passed to `cargo test`.
pub fn run(extra: &[String]) -> Result<()> {
    controlplane::ensure()?;
    let tools = crate::tools::ensure_python()?;
    crate::tools::ensure_debian()?;
    cargo(&["build", "--workspace", "--bins"])?;
    let mut args = vec!["test".to_owned(), "--workspace".to_owned()];
    args.extend(extra.iter().cloned());
    cargo_with_env(
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        &[
            ("TETHER_TEST_PYTHON", tools.python.as_os_str()),
            ("TETHER_TEST_ASCIINEMA", tools.asciinema.as_os_str()),
            ("TETHER_TEST_VNCDO", tools.vncdo.as_os_str()),
        ],
    )
}

/// Runs cargo with extra environment variables.
pub fn cargo_with_env(args: &[&str], env: &[(&str, &std::ffi::OsStr)]) -> Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!("+ cargo {}", args.join(" "));
    let status = Command::new(cargo)
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, *v)))
        .current_dir(crate::crdgen::workspace_root())
        .status()
        .context("failed to run cargo")?;
    if !status.success() {
        bail!("`cargo {}` failed ({status})", args.join(" "));
    }
    Ok(())
}

/// Runs the cargo that runs this xtask, in the workspace root.
pub fn cargo(args: &[&str]) -> Result<()> {
    cargo_with_env(args, &[])
}
