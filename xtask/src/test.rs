//! `cargo xtask test`: everything the test suite needs, then the whole suite.

use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::controlplane;

/// Builds or finds the control plane, builds every binary the end-to-end tests run as real
/// processes, then runs every test in the workspace. `extra` is passed to `cargo test`.
pub fn run(extra: &[String]) -> Result<()> {
    controlplane::ensure()?;
    cargo(&["build", "--workspace", "--bins"])?;
    let mut args = vec!["test".to_owned(), "--workspace".to_owned()];
    args.extend(extra.iter().cloned());
    cargo(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// Runs the cargo that runs this xtask, in the workspace root.
pub fn cargo(args: &[&str]) -> Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!("+ cargo {}", args.join(" "));
    let status = Command::new(cargo)
        .args(args)
        .current_dir(crate::crdgen::workspace_root())
        .status()
        .context("failed to run cargo")?;
    if !status.success() {
        bail!("`cargo {}` failed ({status})", args.join(" "));
    }
    Ok(())
}
