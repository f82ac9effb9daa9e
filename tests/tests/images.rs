//! Tether's OCI images as `cargo xtask images` builds them (here from the test build's
//! binaries, `--binaries`): each is an OCI image layout whose configuration runs its binary as
//! the non-root user with the version, revision and source labels; its filesystem holds
//! nothing else to run (no shell); and the binary runs from that filesystem alone, as the
//! non-root user (chroot).

#![allow(clippy::unwrap_used)] // Tests fail loudly on any unexpected error.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use tether_e2e::workspace_bin;

const TAG: &str = "e2e-1";

/// A blob of an OCI layout, as JSON.
fn blob(layout: &Path, digest: &str) -> Value {
    let hex = digest.strip_prefix("sha256:").unwrap();
    let path = layout.join("blobs/sha256").join(hex);
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// Every regular file under `root` with an execute bit, relative to it.
fn executables(root: &Path) -> Vec<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let mut found = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let kind = entry.file_type().unwrap();
            let path = entry.path();
            if kind.is_dir() {
                dirs.push(path);
            } else if kind.is_file() && entry.metadata().unwrap().permissions().mode() & 0o111 != 0
            {
                found.push(path.strip_prefix(root).unwrap().to_path_buf());
            }
        }
    }
    found.sort();
    found
}

/// Whether a path is a shared library or the dynamic loader (which carry execute bits).
fn is_library(path: &Path) -> bool {
    let name = path.file_name().unwrap().to_string_lossy();
    name.contains(".so") || name.starts_with("ld-linux")
}

#[test]
fn each_image_runs_its_binary_as_nonroot_with_nothing_else_to_run() {
    let out = tempfile::tempdir().unwrap();
    let binaries = workspace_bin("tether-operator")
        .parent()
        .unwrap()
        .to_path_buf();
    let built = Command::new(workspace_bin("tether-xtask"))
        .arg("images")
        .arg("--binaries")
        .arg(&binaries)
        .arg("--out")
        .arg(out.path())
        .args(["--tag", TAG])
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "cargo xtask images failed:\n{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let printed = String::from_utf8_lossy(&built.stdout);

    for binary in ["tether-operator", "tether-relay", "tether-agent"] {
        let layout = out.path().join(binary);
        assert!(printed.contains(&format!("{binary}:{TAG}")), "{printed}");
        let index = blob_index(&layout);
        let manifest = index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == TAG)
            .unwrap_or_else(|| panic!("{binary} has no tag {TAG}: {index}"));
        let manifest = blob(&layout, manifest["digest"].as_str().unwrap());
        assert_eq!(
            manifest["layers"].as_array().unwrap().len(),
            2,
            "the base and the binary"
        );
        let config = blob(&layout, manifest["config"]["digest"].as_str().unwrap());
        let run = &config["config"];
        assert_eq!(run["User"], "65532:65532", "{binary}: {run}");
        assert_eq!(
            run["Entrypoint"],
            serde_json::json!([format!("/usr/local/bin/{binary}")])
        );
        let labels = &run["Labels"];
        assert_eq!(labels["org.opencontainers.image.version"], TAG);
        assert_eq!(labels["org.opencontainers.image.title"], binary);
        assert_eq!(
            labels["org.opencontainers.image.source"],
            "https://github.com/tether-dev/tether"
        );
        let revision = labels["org.opencontainers.image.revision"]
            .as_str()
            .unwrap();
        assert!(
            revision.len() == 40 && revision.bytes().all(|b| b.is_ascii_hexdigit()),
            "{revision}"
        );

        // The filesystem: the binary, libraries, and nothing else that runs.
        let rootfs = out.path().join(format!("{binary}-rootfs"));
        let unpacked = Command::new("umoci")
            .args(["raw", "unpack", "--image"])
            .arg(format!("{}:{TAG}", layout.display()))
            .arg(&rootfs)
            .output()
            .unwrap();
        assert!(
            unpacked.status.success(),
            "{}",
            String::from_utf8_lossy(&unpacked.stderr)
        );
        let programs: Vec<PathBuf> = executables(&rootfs)
            .into_iter()
            .filter(|p| !is_library(p))
            .collect();
        assert_eq!(
            programs,
            vec![PathBuf::from(format!("usr/local/bin/{binary}"))],
            "{binary}: nothing to run but the binary"
        );
        for shell in ["bin/sh", "usr/bin/sh", "bin/bash", "bin/dash"] {
            assert!(!rootfs.join(shell).exists(), "{binary} has {shell}");
        }
        let bundle =
            std::fs::read_to_string(rootfs.join("etc/ssl/certs/ca-certificates.crt")).unwrap();
        assert!(bundle.matches("BEGIN CERTIFICATE").count() > 100);
        let passwd = std::fs::read_to_string(rootfs.join("etc/passwd")).unwrap();
        assert!(passwd.contains("nonroot:x:65532:65532:"), "{passwd}");

        // It runs from the image's files alone, as the image's user.
        let ran = Command::new("chroot")
            .arg("--userspec=65532:65532")
            .arg(&rootfs)
            .arg(format!("/usr/local/bin/{binary}"))
            .arg("--version")
            .output()
            .unwrap();
        let version = String::from_utf8_lossy(&ran.stdout);
        assert!(
            ran.status.success() && version.starts_with(binary),
            "{binary} --version in the image: {}{}",
            version,
            String::from_utf8_lossy(&ran.stderr)
        );
    }
}

fn blob_index(layout: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap()
}

#[test]
fn a_bad_tag_is_refused_before_anything_is_built() {
    let out = tempfile::tempdir().unwrap();
    for tag in ["", "a/b", "x:y", "-dash;rm", ".hidden"] {
        let run = Command::new(workspace_bin("tether-xtask"))
            .arg("images")
            .arg("--binaries")
            .arg(out.path())
            .arg("--out")
            .arg(out.path())
            .arg(format!("--tag={tag}"))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&run.stderr);
        assert!(!run.status.success(), "{tag:?}");
        assert!(err.contains("is not an image tag"), "{tag:?}: {err}");
    }
}
