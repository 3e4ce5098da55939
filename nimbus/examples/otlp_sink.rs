//! An OTLP/gRPC trace receiver that accepts every export and counts the spans: the
//! collector side of `scripts/bench-sandbox.sh`'s tracing-on runs.
//!
//!   cargo run --release -p nimbus --example otlp_sink -- 127.0.0.1:4317
//!
//! Prints the spans received so far every 5 seconds (when it changed), on stderr.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};

#[derive(Default, Clone)]
struct Count(Arc<AtomicU64>);

#[tonic::async_trait]
impl TraceService for Count {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let spans: usize = req
            .into_inner()
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum();
        self.0.fetch_add(spans as u64, Ordering::Relaxed);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:4317".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    eprintln!("otlp sink on http://{}", listener.local_addr()?);
    let count = Count::default();
    let seen = count.0.clone();
    tokio::spawn(async move {
        let mut said = 0;
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(5)).await;
            let n = seen.load(Ordering::Relaxed);
            if n != said {
                eprintln!("otlp sink: {n} spans received");
                said = n;
            }
        }
    });
    tonic::transport::Server::builder()
        .add_service(TraceServiceServer::new(count))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
        .await?;
    Ok(())
}
