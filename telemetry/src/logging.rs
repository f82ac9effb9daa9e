//! Log setup: human-readable lines for terminals, JSON lines for log pipelines, filtered by
//! `RUST_LOG`-style directives.

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

/// Installs the global log subscriber. Logs go to stderr.
pub fn init_logging(args: &LoggingArgs) -> Result<(), LoggingError> {
    let filter = EnvFilter::try_new(&args.log_filter).map_err(|source| LoggingError::Filter {
        filter: args.log_filter.clone(),
        source,
    })?;
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
