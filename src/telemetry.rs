//! Logging, and (with the `otel` feature) trace export. Installed once per process;
//! `RUST_LOG` overrides the default filter.

use crate::config::LogFormat;
use std::io::IsTerminal;
use tracing_subscriber::layer::{Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

pub const DEFAULT_FILTER: &str = "info,sqlx=warn";

/// The subscriber under the output layers: the registry behind the level filter.
type Filtered = tracing_subscriber::layer::Layered<EnvFilter, tracing_subscriber::Registry>;
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
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
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
