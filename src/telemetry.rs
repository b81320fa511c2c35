//! Logging set up by a function the binary calls once, so libraries and tests never install a global
//! subscriber behind anyone's back.

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines, for terminals.
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// What is logged when `RUST_LOG` is not set: our crates at info, the transport crates' chatter kept
/// out (h2 and hyper log every frame at debug).
pub const DEFAULT_FILTER: &str = "info,h2=warn,hyper=warn,hyper_util=warn,tower=warn,sqlx=warn";

/// Installs the global subscriber: `RUST_LOG` if set, else [`DEFAULT_FILTER`]. Fails if one was
/// already installed (as happens when several services run in one process, where the first one wins).
pub fn init(format: LogFormat) -> Result<(), tracing_subscriber::util::TryInitError> {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Text => registry.with(fmt::layer()).try_init(),
        LogFormat::Json => registry.with(fmt::layer().json()).try_init(),
    }
}
