//! Log setup: human-readable lines for terminals, JSON lines for log pipelines, filtered by
//! `RUST_LOG`-style directives.
//!
//! Whatever the directives, targets known to log whole API response bodies are held at `error`
//! unless the directives name them: kube's client logs the full body of any response it cannot
//! decode, and a list of Secrets is such a body.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::FmtSpan;

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Plain,
    /// One JSON object per line, for log pipelines.
    Json,
}

/// Command-line flags for logging, shared by every binary.
#[derive(Clone, Debug, clap::Args)]
pub struct LoggingArgs {
    /// Log format.
    #[arg(long, env = "TETHER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Plain)]
    pub log_format: LogFormat,

    /// Log filter, in `RUST_LOG` syntax (e.g. `info,tether_operator=debug`).
    #[arg(long, env = "TETHER_LOG", default_value = "info")]
    pub log_filter: String,
}

/// Failure to set up logging.
#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    /// The filter directives do not parse.
    #[error("failed to parse the log filter {filter:?}")]
    Filter {
        /// The directives given.
        filter: String,
        /// The parser's complaint.
        #[source]
        source: tracing_subscriber::filter::ParseError,
    },
    /// A global subscriber was already installed.
    #[error("failed to install the log subscriber")]
    Install(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Log targets that write whole response bodies (kube's client: on a response it cannot
/// decode, `warn!` with the body; at `debug` and `trace`, bodies of errors and statuses).
pub const BODY_LOGGING_TARGETS: &[&str] = &["kube_client::client"];

/// The filter for `directives`, with every target of [`BODY_LOGGING_TARGETS`] the directives
/// do not name held at `error` (naming one, e.g. `kube_client::client=debug`, is the explicit
/// way to see bodies while debugging).
pub fn filter(directives: &str) -> Result<EnvFilter, LoggingError> {
    let parse_error = |source| LoggingError::Filter {
        filter: directives.to_owned(),
        source,
    };
    let mut filter = EnvFilter::try_new(directives).map_err(parse_error)?;
    for target in BODY_LOGGING_TARGETS {
        if !directives.contains(target) {
            filter = filter.add_directive(format!("{target}=error").parse().map_err(parse_error)?);
        }
    }
    Ok(filter)
}

/// Installs the global log subscriber. Logs go to stderr.
pub fn init_logging(args: &LoggingArgs) -> Result<(), LoggingError> {
    let filter = filter(&args.log_filter)?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_span_events(FmtSpan::NONE);
    match args.log_format {
        LogFormat::Plain => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    }
    .map_err(LoggingError::Install)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// What `directives` let through of kube's body logging and of an ordinary warning.
    fn logged(directives: &str) -> String {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(filter(directives).unwrap())
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(target: "kube_client::client", "{{\"kind\":\"SecretList\",\"items\":[SECRET-BODY]}}, decode error");
            tracing::debug!(target: "kube_client::client", "Unsuccessful data error parse: SECRET-BODY");
            tracing::error!(target: "kube_client::client::builder", "failed with status 500");
            tracing::warn!(target: "tether_operator", "Failed to list RemoteSessions");
        });
        let out = buffer.0.lock().unwrap().clone();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn response_bodies_are_not_logged_by_default_filters() {
        for directives in [
            "info",
            "debug",
            "trace",
            "info,kube=debug",
            "warn,kube_client=trace",
        ] {
            let out = logged(directives);
            assert!(!out.contains("SECRET-BODY"), "{directives}: {out}");
            // Positive controls: our own warnings and kube's errors without a body still show.
            assert!(
                out.contains("Failed to list RemoteSessions"),
                "{directives}: {out}"
            );
            assert!(
                out.contains("failed with status 500"),
                "{directives}: {out}"
            );
        }
        // Naming the target is the explicit way to see bodies.
        assert!(logged("info,kube_client::client=debug").contains("SECRET-BODY"));
    }

    #[test]
    fn bad_directives_are_refused() {
        assert!(matches!(
            filter("info,=="),
            Err(LoggingError::Filter { .. })
        ));
    }
}
