//! `cargo xtask crdgen`: writes the CRD YAML derived from the `tether-crds` types.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// The workspace root (the parent of this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Writes (or, with `check`, compares) every generated CRD file.
pub fn run(check: bool) -> Result<()> {
    let root = workspace_root();
    let mut stale = Vec::new();
    for crd in tether_crds::render_crds()? {
        let outputs = [
            (
                root.join("crds/generated").join(&crd.file_name),
                crd.yaml.clone(),
            ),
            (
                root.join("charts/tether/templates/crds")
                    .join(&crd.file_name),
                tether_crds::chart_template(&crd),
            ),
        ];
        for (path, content) in outputs {
            let current = std::fs::read_to_string(&path).ok();
            if current.as_deref() == Some(content.as_str()) {
                continue;
            }
            if check {
                stale.push(path);
                continue;
            }
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("failed to create {}", dir.display()))?;
            }
            std::fs::write(&path, content)
                .with_context(|| format!("failed to write {}", path.display()))?;
            println!(
                "wrote {}",
                path.strip_prefix(&root).unwrap_or(&path).display()
            );
        }
    }
    if !stale.is_empty() {
        bail!(
            "generated CRDs are out of date: {}; run `cargo xtask crdgen`",
            stale
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(())
}
