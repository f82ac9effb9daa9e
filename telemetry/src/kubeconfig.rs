//! Loading Kubernetes client configuration the way kubectl does, shared by the operator, the
//! relay and the CLI (behind the `kube` feature, so the agent never links a Kubernetes
//! client): `--kubeconfig` and `--context` when given, otherwise `KUBECONFIG`, the default
//! kubeconfig or the in-cluster service account.

use std::path::{Path, PathBuf};

use kube::config::{InferConfigError, KubeConfigOptions, Kubeconfig, KubeconfigError};

/// Failure to load a client configuration.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The kubeconfig file named could not be read.
    #[error("failed to read kubeconfig {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: KubeconfigError,
    },
    /// The kubeconfig was read but does not give a usable configuration (e.g. no such
    /// context).
    #[error("failed to load the kubeconfig")]
    Load(#[source] KubeconfigError),
    /// Neither a kubeconfig nor in-cluster credentials were found.
    #[error(
        "failed to find Kubernetes credentials (set KUBECONFIG or use --kubeconfig, or run in a cluster)"
    )]
    Infer(#[source] InferConfigError),
}

/// The client configuration for `kubeconfig` (a file) and `context`, each optional.
pub async fn load(
    kubeconfig: Option<&Path>,
    context: Option<&str>,
) -> Result<kube::Config, LoadError> {
    let options = KubeConfigOptions {
        context: context.map(str::to_owned),
        ..Default::default()
    };
    match kubeconfig {
        Some(path) => {
            let file = Kubeconfig::read_from(path).map_err(|source| LoadError::Read {
                path: path.to_owned(),
                source,
            })?;
            kube::Config::from_custom_kubeconfig(file, &options)
                .await
                .map_err(LoadError::Load)
        }
        None if context.is_some() => kube::Config::from_kubeconfig(&options)
            .await
            .map_err(LoadError::Load),
        None => kube::Config::infer().await.map_err(LoadError::Infer),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_missing_kubeconfig_names_the_file() {
        let dir = std::env::temp_dir().join("tether-telemetry-no-such-kubeconfig");
        let err = load(Some(&dir), None).await.unwrap_err();
        assert!(matches!(err, LoadError::Read { .. }), "{err:?}");
        assert!(
            crate::error_chain(&err)
                .starts_with(&format!("failed to read kubeconfig {}", dir.display())),
            "{}",
            crate::error_chain(&err)
        );
    }

    #[tokio::test]
    async fn an_unknown_context_is_a_load_error() {
        let file = std::env::temp_dir().join(format!(
            "tether-telemetry-kubeconfig-{}.yaml",
            std::process::id()
        ));
        std::fs::write(
            &file,
            "apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\nusers: []\n",
        )
        .unwrap();
        let err = load(Some(&file), Some("nowhere")).await.unwrap_err();
        std::fs::remove_file(&file).ok();
        assert!(matches!(err, LoadError::Load(_)), "{err:?}");
    }
}
