//! Embeds the browser viewer's files (`assets/viewer`, Tether's page, and `assets/novnc`, the
//! noVNC library checked in as its npm package ships it) into `kubectl-tether`: writes a table
//! of every file by the path it is served under, each read with `include_bytes!`, so the
//! binary serves them without a network or files next to it.

use std::path::{Path, PathBuf};

/// Files under `assets/` that are documentation of the assets, not served.
const NOT_SERVED: &[&str] = &["README.md", "novnc/MANIFEST.sha256"];

fn main() {
    let root = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"))
        .join("assets");
    println!("cargo:rerun-if-changed={}", root.display());
    let mut files = Vec::new();
    walk(&root, &mut files);
    files.sort();
    let mut table = String::from(
        "/// Every file the viewer serves under `/assets/`, by path.\n\
         pub(super) static ASSETS: &[(&str, &[u8])] = &[\n",
    );
    for file in files {
        let rel = file
            .strip_prefix(&root)
            .expect("under assets")
            .to_string_lossy()
            .replace('\\', "/");
        if NOT_SERVED.contains(&rel.as_str()) {
            continue;
        }
        table.push_str(&format!(
            "    ({rel:?}, include_bytes!({:?})),\n",
            file.display().to_string()
        ));
    }
    table.push_str("];\n");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets it")).join("assets.rs");
    std::fs::write(out, table).expect("OUT_DIR is writable");
}

fn walk(dir: &Path, files: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            walk(&path, files);
        } else {
            files.push(path);
        }
    }
}
