//! `cargo xtask`: the project's development tasks, one subcommand each.

mod bench;
mod bench_admission;
mod bench_desktop;
mod bench_relays;
mod controlplane;
mod crdgen;
mod demo;
mod images;
mod test;
mod tools;

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
    /// Build (or find in the cache) etcd, kube-apiserver, kube-controller-manager, helm and
    /// versitygw for the pinned versions, from the official Go modules.
    Controlplane,
    /// Run Tether locally on the embedded default: a real control plane, the chart, the
    /// operator and example sessions, until Ctrl-C.
    Demo,
    /// Build OCI images of the operator, the relay and the agent (no container daemon needed).
    Images(images::ImagesArgs),
    /// Run a benchmark; prints numbers, asserts nothing.
    Bench {
        #[command(subcommand)]
        which: Bench,
    },
    /// Build what the tests need (control plane, binaries) and run the whole test suite.
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter after `--`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

#[derive(Subcommand)]
enum Bench {
    /// Transition lateness and operator memory with many staggered sessions.
    Lifecycle(bench::LifecycleArgs),
    /// The desktop on the wire and on the device: Tether against x11vnc on one 1920×1080 Xvfb.
    Desktop(bench_desktop::DesktopArgs),
    /// The latency SessionPolicies add to creating a RemoteSession.
    Admission(bench_admission::AdmissionArgs),
    /// Relay replicas: joining through the device's replica or another, presence writes, an
    /// agent moving off a replica sent SIGTERM.
    Relays(bench_relays::RelaysArgs),
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
        Command::Demo => demo::run(),
        Command::Images(args) => images::run(args),
        Command::Bench { which } => match which {
            Bench::Lifecycle(args) => bench::lifecycle(args),
            Bench::Desktop(args) => bench_desktop::desktop(args),
            Bench::Admission(args) => bench_admission::admission(args),
            Bench::Relays(args) => bench_relays::relays(args),
        },
        Command::Test { args } => test::run(&args),
    }
}
