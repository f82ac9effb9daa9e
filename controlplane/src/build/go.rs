//! Running the Go toolchain for the builds: one environment for every go command, and
//! running one either for its output or with progress reported from what it prints.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::human;
use crate::Error;

/// Runs go in `dir` with the local toolchain only, no cgo, modules resolved from go.mod and
/// no workspace file, whatever the caller's environment says.
pub(super) fn go_env(cmd: &mut Command, dir: &Path) {
    cmd.current_dir(dir)
        .env("GOTOOLCHAIN", "local")
        .env("CGO_ENABLED", "0")
        .env("GOFLAGS", "-mod=mod")
        .env("GOWORK", "off");
}

/// Runs a go command and returns its standard output; on failure its standard error is in
/// the error.
pub(super) fn run_capture(what: &str, cmd: &mut Command, dir: &Path) -> Result<String, Error> {
    go_env(cmd, dir);
    let output = cmd.output().map_err(|source| Error::Spawn {
        program: "go".into(),
        source,
    })?;
    if !output.status.success() {
        return Err(Error::Build {
            what: what.into(),
            command: format!("{cmd:?}"),
            status: output.status.to_string(),
            output: String::from_utf8_lossy(&output.stderr).into_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Runs a go command, counting downloaded modules and compiled packages from its output and
/// reporting progress every 15 seconds; on failure the last lines of output are in the error.
pub(super) fn run_streaming(
    what: &str,
    cmd: &mut Command,
    dir: &Path,
    tag: &str,
    say: &mut dyn FnMut(&str),
) -> Result<(), Error> {
    go_env(cmd, dir);
    let command_text = format!("{cmd:?}");
    let started = Instant::now();
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| Error::Spawn {
            program: "go".into(),
            source,
        })?;
    let stderr = child.stderr.take().ok_or_else(|| Error::Io {
        what: "failed to read go's output".into(),
        source: std::io::Error::other("no stderr pipe"),
    })?;
    let (mut downloads, mut packages) = (0usize, 0usize);
    let mut tail: std::collections::VecDeque<String> = std::collections::VecDeque::new();
    let mut last_report = Instant::now();
    for line in BufReader::new(stderr).lines() {
        let Ok(line) = line else { break };
        if line.starts_with("go: downloading") {
            downloads += 1;
        } else if !line.starts_with("go:") && !line.starts_with('#') && !line.contains(' ') {
            packages += 1;
        }
        if tail.len() == 40 {
            tail.pop_front();
        }
        tail.push_back(line);
        if last_report.elapsed() >= Duration::from_secs(15) {
            last_report = Instant::now();
            say(&format!(
                "[{tag}] {} elapsed: {downloads} modules downloaded, {packages} packages compiled",
                human(started.elapsed())
            ));
        }
    }
    let status = child.wait().map_err(|source| Error::Io {
        what: "failed to wait for go".into(),
        source,
    })?;
    if !status.success() {
        return Err(Error::Build {
            what: what.into(),
            command: command_text,
            status: status.to_string(),
            output: tail.into_iter().collect::<Vec<_>>().join("\n"),
        });
    }
    say(&format!(
        "[{tag}] done in {} ({downloads} modules downloaded, {packages} packages compiled)",
        human(started.elapsed())
    ));
    Ok(())
}
