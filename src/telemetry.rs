//! Logging, and (with the `otel` feature) trace export. Installed once per process;
//! `RUST_LOG` overrides the default filter: comma-separated `level` and `target=level`
//! directives (tracing-subscriber's `Targets`; the regex-based `EnvFilter`'s span and field
//! directives cost 100 unit-seconds of a cold build and are not needed to pick levels).

use crate::config::LogFormat;
use std::io::IsTerminal;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::{Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;

pub const DEFAULT_FILTER: &str = "info,sqlx=warn";

/// The subscriber under the output layers: the registry behind the level filter.
type Filtered = tracing_subscriber::layer::Layered<Targets, tracing_subscriber::Registry>;
type Layers = Vec<Box<dyn Layer<Filtered> + Send + Sync>>;

/// Keeps the trace exporter alive; dropping it sends the spans still buffered.
#[must_use = "dropping it stops trace export"]
pub struct Telemetry {
    #[cfg(feature = "otel")]
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        #[cfg(feature = "otel")]
        if let Some(provider) = self.provider.take() {
            if let Err(e) = provider.shutdown() {
                eprintln!("could not flush the last spans: {e}");
            }
        }
    }
}

pub fn init(format: LogFormat) -> Telemetry {
    let filter = filter(std::env::var("RUST_LOG").ok().as_deref());
    #[cfg_attr(not(feature = "otel"), allow(unused_mut))]
    let mut layers: Layers = vec![match format {
        LogFormat::Json => {
            tracing_subscriber::fmt::layer().json().flatten_event(true).with_writer(std::io::stderr).boxed()
        }
        // Colour is for a person at a terminal: in a file or a pipe the escape codes would
        // start every line.
        LogFormat::Pretty => tracing_subscriber::fmt::layer()
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(std::io::stderr)
            .boxed(),
    }];
    #[cfg(feature = "otel")]
    let provider = otel::layer().map(|(layer, provider)| {
        layers.push(layer);
        provider
    });
    // A second init (tests) is harmless: the first subscriber stays.
    let _ = tracing_subscriber::registry().with(filter).with(layers).try_init();
    Telemetry {
        #[cfg(feature = "otel")]
        provider,
    }
}

/// The filter `RUST_LOG` names, or the default when it is unset or empty; one it cannot
/// read is reported on stderr (there is no log yet) and the default applies.
fn filter(directives: Option<&str>) -> Targets {
    let default = || DEFAULT_FILTER.parse().expect("the default filter parses");
    match directives.map(str::trim).filter(|d| !d.is_empty()) {
        None => default(),
        Some(directives) => directives.parse().unwrap_or_else(|e| {
            eprintln!("RUST_LOG={directives:?} is not a filter keygate reads ({e}): `level` or `target=level`, comma-separated; using {DEFAULT_FILTER:?}");
            default()
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::filter;
    use tracing::Level;

    #[test]
    fn rust_log_picks_levels_by_target_and_a_bad_one_falls_back_to_the_default() {
        let f = filter(Some("info,keygate=debug"));
        assert!(f.would_enable("keygate::authz", &Level::DEBUG));
        assert!(!f.would_enable("tower", &Level::DEBUG));
        assert!(f.would_enable("tower", &Level::INFO));
        let default = filter(None);
        assert!(!default.would_enable("sqlx::query", &Level::INFO), "sqlx=warn");
        assert!(default.would_enable("keygate", &Level::INFO));
        let bad = filter(Some("keygate=loud"));
        assert!(!bad.would_enable("sqlx::query", &Level::INFO), "the default, not nothing");
        assert!(filter(Some("  ")).would_enable("keygate", &Level::INFO));
    }
}

#[cfg(feature = "otel")]
mod otel {
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use tracing_subscriber::layer::Layer;

    /// OTLP over gRPC to `OTEL_EXPORTER_OTLP_ENDPOINT` (the standard variable; the other
    /// `OTEL_*` variables apply too), batched off the request path. `None` when unset.
    pub fn layer() -> Option<(Box<dyn Layer<super::Filtered> + Send + Sync>, SdkTracerProvider)> {
        std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT")?;
        let exporter = match opentelemetry_otlp::SpanExporter::builder().with_tonic().build() {
            Ok(exporter) => exporter,
            Err(e) => {
                eprintln!("OpenTelemetry export is off: {e}");
                return None;
            }
        };
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(opentelemetry_sdk::Resource::builder().with_service_name("keygate").build())
            .build();
        let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("keygate"));
        Some((layer.boxed(), provider))
    }
}
