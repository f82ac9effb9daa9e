//! Process plumbing every binary shares: waiting for the signal to shut down, and printing
//! an error with its causes.

/// Failure to watch for the shutdown signals.
#[derive(Debug, thiserror::Error)]
#[error("failed to watch {signal}")]
pub struct SignalError {
    signal: &'static str,
    #[source]
    source: std::io::Error,
}

/// Resolves when the process is asked to stop: SIGTERM (what Kubernetes sends) or Ctrl-C.
pub async fn shutdown_signal() -> Result<(), SignalError> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).map_err(|source| SignalError {
            signal: "SIGTERM",
            source,
        })?;
        tokio::select! {
            _ = term.recv() => Ok(()),
            r = tokio::signal::ctrl_c() => r.map_err(|source| SignalError { signal: "Ctrl-C", source }),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await.map_err(|source| SignalError {
            signal: "Ctrl-C",
            source,
        })
    }
}

/// An error and its causes, `: `-separated, each said once (some errors repeat their
/// cause in their own message), for logs and for what a command prints.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("{text}")]
    struct Layer {
        text: &'static str,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    }

    fn layer(text: &'static str, source: Option<Layer>) -> Layer {
        Layer {
            text,
            source: source.map(|s| Box::new(s) as _),
        }
    }

    #[test]
    fn every_cause_is_said_once() {
        let e = layer(
            "failed to load the kubeconfig",
            Some(layer(
                "failed to read x: No such file",
                Some(layer("No such file", None)),
            )),
        );
        assert_eq!(
            error_chain(&e),
            "failed to load the kubeconfig: failed to read x: No such file"
        );
        assert_eq!(error_chain(&layer("alone", None)), "alone");
    }
}
