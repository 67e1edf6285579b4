//! Logging. Installed once per process; `RUST_LOG` overrides the default filter.

use crate::config::LogFormat;
use tracing_subscriber::EnvFilter;

pub const DEFAULT_FILTER: &str = "info,sqlx=warn";

pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    // A second init (tests) is harmless: the first subscriber stays.
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
}
