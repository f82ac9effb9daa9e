//! `cargo xtask`: the project's development tasks, one subcommand each.

mod controlplane;
mod crdgen;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// Tether development tasks.
#[derive(Parser)]
#[command(name = "cargo xtask", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Regenerate the committed CRD YAML (crds/generated and the Helm chart) from the Rust types.
    Crdgen {
        /// Only check that the committed files are current; exit non-zero if not.
        #[arg(long)]
        check: bool,
    },
    /// Build (or find in the cache) etcd, kube-apiserver, kube-controller-manager and helm for
    /// the pinned versions, from the official Go modules.
    Controlplane,
}

fn main() -> std::process::ExitCode {
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One readable line (with causes), never a backtrace: these are user-facing errors.
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Crdgen { check } => crdgen::run(check),
        Command::Controlplane => controlplane::ensure().map(|_| ()),
    }
}
