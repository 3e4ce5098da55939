//! The process's own log and, when a collector is configured, span export.
//!
//! Spans go to an OTLP/gRPC collector named by `OTEL_EXPORTER_OTLP_ENDPOINT` (the
//! standard variable, which wins) or `[trace] otlp_endpoint`; without either,
//! nothing is exported and the data path creates no spans
//! ([`nimbus_core::trace`]). `service` names the process in the spans
//! (`nimbus-gateway`, `nimbus-node`, … or `nimbus` for `nimbus up`).

use nimbus_core::config::{LogFormat, TraceConfig};
use opentelemetry::trace::{SpanId, TraceId, TracerProvider as _};
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// The standard variable naming the collector.
const ENDPOINT_VAR: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";

/// What to flush at exit.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports the spans still buffered (bounded by the exporter's timeout).
    pub async fn shutdown(self) {
        if let Some(p) = self.provider {
            let _ = tokio::task::spawn_blocking(move || p.shutdown()).await;
        }
    }
}

/// Trace ids laid out as [`nimbus_core::trace::TraceContext::root`]'s (valid X-Ray
/// ids too).
#[derive(Debug)]
struct Ids;

impl opentelemetry_sdk::trace::IdGenerator for Ids {
    fn new_trace_id(&self) -> TraceId {
        TraceId::from_bytes(
            nimbus_core::trace::TraceContext::root()
                .trace_id
                .to_be_bytes(),
        )
    }
    fn new_span_id(&self) -> SpanId {
        SpanId::from_bytes(nimbus_core::trace::new_span_id().to_be_bytes())
    }
}

/// Installs the log (stderr, `NIMBUS_LOG` levels) and, if a collector is named, the
/// span exporter. Must run inside the tokio runtime (the gRPC exporter lives there).
pub fn init(format: LogFormat, service: &str, trace: &TraceConfig) -> anyhow::Result<Telemetry> {
    let filter = tracing_subscriber::EnvFilter::try_from_env("NIMBUS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn,lapin=warn"));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = match format {
        LogFormat::Json => fmt
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_filter(filter)
            .boxed(),
        LogFormat::Text => fmt.with_filter(filter).boxed(),
    };
    let endpoint = std::env::var(ENDPOINT_VAR)
        .ok()
        .filter(|e| !e.is_empty())
        .or_else(|| trace.otlp_endpoint.clone());
    let Some(endpoint) = endpoint else {
        tracing_subscriber::registry().with(fmt).init();
        return Ok(Telemetry { provider: None });
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint.clone())
        .build()
        .map_err(|e| anyhow::anyhow!("the OTLP exporter for {endpoint}: {e}"))?;
    let ratio = trace.sample_ratio.unwrap_or(1.0);
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            ratio,
        ))))
        .with_id_generator(Ids)
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(service.to_string())
                .build(),
        )
        .build();
    // Our own spans only: the libraries' (HTTP/2, gRPC, SQL, AMQP, the exporter's
    // own calls) would swamp them.
    let spans = tracing_subscriber::EnvFilter::new(
        "info,h2=off,hyper=off,hyper_util=off,tonic=off,tower=off,sqlx=off,sea_orm=off,\
         lapin=off,reqwest=off,opentelemetry=off,opentelemetry_sdk=off,opentelemetry_otlp=off",
    );
    let otel = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("nimbus"))
        .with_filter(spans);
    tracing_subscriber::registry().with(fmt).with(otel).init();
    nimbus_core::trace::set_exporting(true);
    tracing::info!(%endpoint, service = %service.to_string(), "exporting spans");
    Ok(Telemetry {
        provider: Some(provider),
    })
}
