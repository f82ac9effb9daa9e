//! Image archives for the node: the sandbox ("pause") image, and OCI layouts as archives the
//! runtime imports.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{PAUSE_IMAGE, mkdir, run, write};
use crate::Error;

/// The sandbox program: holds a pod's namespaces until SIGTERM or SIGINT.
const PAUSE_GO: &str = r#"// Command pause holds a pod's namespaces open until it is told to stop.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGINT, syscall.SIGTERM)
	<-stop
}
"#;

/// Builds [`PAUSE_IMAGE`] (a static Go program, no other file) as a `docker-archive` tar in
/// `work` with Go, umoci and skopeo, and returns its path.
pub fn build_pause_image(work: &Path) -> Result<PathBuf, Error> {
    let src = work.join("pause-src");
    let root = work.join("pause-root");
    let layout = work.join("pause-layout");
    for dir in [&src, &root] {
        mkdir(dir)?;
    }
    write(&src.join("main.go"), PAUSE_GO)?;
    write(&src.join("go.mod"), "module tether.dev/pause\n\ngo 1.22\n")?;
    let binary = root.join("pause");
    let out = Command::new("go")
        .args(["build", "-trimpath", "-ldflags", "-s -w", "-o"])
        .arg(&binary)
        .arg(".")
        .env("CGO_ENABLED", "0")
        .current_dir(&src)
        .output()
        .map_err(|source| Error::Spawn {
            program: "go".into(),
            source,
        })?;
    if !out.status.success() {
        return Err(Error::Startup {
            component: "node".into(),
            problem: format!(
                "go build of the pause program failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            log: String::new(),
            tail: String::new(),
        });
    }
    let _ = std::fs::remove_dir_all(&layout);
    let image = format!("{}:1", layout.display());
    run("umoci", &["init", "--layout", &layout.to_string_lossy()])?;
    run("umoci", &["new", "--image", &image])?;
    run(
        "umoci",
        &["insert", "--image", &image, &root.to_string_lossy(), "/"],
    )?;
    run(
        "umoci",
        &[
            "config",
            "--image",
            &image,
            "--config.entrypoint",
            "/pause",
            "--config.user",
            "65535:65535",
        ],
    )?;
    archive(&layout, "1", PAUSE_IMAGE, work)
}

/// Writes the OCI layout `layout`'s tag `tag` as a `docker-archive` tar named `name` (the
/// image reference the runtime will know it by) in `work`, and returns its path.
pub fn archive(layout: &Path, tag: &str, name: &str, work: &Path) -> Result<PathBuf, Error> {
    let file = work.join(format!("{}.tar", name.replace(['/', ':'], "_")));
    let _ = std::fs::remove_file(&file);
    run(
        "skopeo",
        &[
            "copy",
            "-q",
            &format!("oci:{}:{tag}", layout.display()),
            &format!("docker-archive:{}:{name}", file.display()),
        ],
    )?;
    Ok(file)
}
