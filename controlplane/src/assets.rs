//! Where the control-plane binaries live: `KUBEBUILDER_ASSETS` when the user set it, then
//! Tether's per-user cache (`~/.cache/tether/controlplane/v<version>/`).

use std::path::{Path, PathBuf};

use crate::{Error, KUBERNETES_VERSION};

/// Binaries the local control plane and the tests need, by file name.
pub const BINARIES: [&str; 8] = [
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubelet",
    "kube-proxy",
    "helm",
    "versitygw",
];

/// Tether's cache root: `$TETHER_CACHE_DIR`, else `$XDG_CACHE_HOME/tether`, else
/// `~/.cache/tether`.
pub fn cache_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("TETHER_CACHE_DIR").filter(|v| !v.is_empty()) {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(dir).join("tether");
    }
    let home = std::env::var_os("HOME").map_or_else(std::env::temp_dir, PathBuf::from);
    home.join(".cache").join("tether")
}

/// The set of directories searched for control-plane binaries.
#[derive(Debug, Clone)]
pub struct Assets {
    /// `KUBEBUILDER_ASSETS`, searched first when set.
    pub kubebuilder: Option<PathBuf>,
    /// Tether's cache directory for the pinned version, searched next and built into.
    pub cache: PathBuf,
}

impl Assets {
    /// The standard locations: `KUBEBUILDER_ASSETS` (if set) and the cache for
    /// [`KUBERNETES_VERSION`].
    pub fn from_env() -> Self {
        Self {
            kubebuilder: std::env::var_os("KUBEBUILDER_ASSETS")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from),
            cache: cache_root()
                .join("controlplane")
                .join(format!("v{KUBERNETES_VERSION}")),
        }
    }

    /// Where a binary is, if it exists in any searched directory.
    pub fn find(&self, binary: &str) -> Option<PathBuf> {
        self.kubebuilder
            .iter()
            .chain(std::iter::once(&self.cache))
            .map(|dir| dir.join(binary))
            .find(|p| is_executable(p))
    }

    /// Where a binary is, or an error that says how to build it.
    pub fn require(&self, binary: &str) -> Result<PathBuf, Error> {
        self.find(binary).ok_or_else(|| Error::MissingBinary {
            binary: binary.to_owned(),
            searched: self
                .kubebuilder
                .iter()
                .chain(std::iter::once(&self.cache))
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(" and "),
        })
    }

    /// The binaries that are not found anywhere.
    pub fn missing(&self) -> Vec<&'static str> {
        BINARIES
            .into_iter()
            .filter(|b| self.find(b).is_none())
            .collect()
    }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubebuilder_assets_win_over_the_cache() {
        use std::os::unix::fs::PermissionsExt;
        let kb = tempfile::tempdir().unwrap();
        let cache = tempfile::tempdir().unwrap();
        for (dir, name) in [
            (kb.path(), "etcd"),
            (cache.path(), "etcd"),
            (cache.path(), "helm"),
        ] {
            let p = dir.join(name);
            std::fs::write(&p, "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        // Not executable: ignored.
        std::fs::write(cache.path().join("kube-apiserver"), "").unwrap();
        let assets = Assets {
            kubebuilder: Some(kb.path().to_path_buf()),
            cache: cache.path().to_path_buf(),
        };
        assert_eq!(assets.find("etcd").unwrap(), kb.path().join("etcd"));
        assert_eq!(assets.find("helm").unwrap(), cache.path().join("helm"));
        assert_eq!(
            assets.missing(),
            vec![
                "kube-apiserver",
                "kube-controller-manager",
                "kube-scheduler",
                "kubelet",
                "kube-proxy",
                "versitygw"
            ]
        );
        let err = assets.require("kube-apiserver").unwrap_err().to_string();
        assert!(err.contains("cargo xtask controlplane"), "{err}");
    }
}
