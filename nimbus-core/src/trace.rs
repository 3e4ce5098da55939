//! Trace context: which trace a request belongs to, carried across every hop.
//!
//! A [`TraceContext`] is the W3C `traceparent` (trace id, parent span id, sampled
//! flag). It travels explicitly with the work — in HTTP headers, gRPC metadata,
//! AMQP headers, task rows and the call handed to a node — so it is there whether or
//! not spans are exported: the function always gets a trace header, and the caller
//! always gets `traceparent` back.
//!
//! Spans are exported only when the process installed an OpenTelemetry layer
//! ([`set_exporting`]; `nimbus` does so when `OTEL_EXPORTER_OTLP_ENDPOINT` or
//! `[trace] otlp_endpoint` is set). Then [`enter`] makes a `tracing` span the child of
//! the context that arrived and returns the span's own context, which is what the
//! next hop receives. When nothing is exported, hot paths create no span at all
//! ([`span_if_exporting`]), and each hop passes on the trace id under a new span id.

use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState,
};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// The header (HTTP, gRPC metadata, AMQP) that carries a context.
pub const HEADER: &str = "traceparent";

static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Whether this process exports spans (an OpenTelemetry layer is installed).
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// Declares that an OpenTelemetry layer is installed (once, at start).
pub fn set_exporting(on: bool) {
    EXPORTING.store(on, Ordering::Relaxed);
}

/// One W3C trace context.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceContext {
    /// 128 bits, never zero.
    pub trace_id: u128,
    /// The sender's span: the parent of the receiver's. Never zero.
    pub span_id: u64,
    /// Whether the trace is recorded.
    pub sampled: bool,
}

impl TraceContext {
    /// A new trace. Its first 32 bits are the time in seconds, so the id is also a
    /// valid AWS X-Ray trace id (`1-{time}-{random}`).
    pub fn root() -> Self {
        let secs = (crate::now_ms() / 1000) as u32 as u128;
        let low: u128 = rand::random::<u128>() & ((1u128 << 96) - 1);
        TraceContext {
            trace_id: (secs << 96) | low.max(1),
            span_id: new_span_id(),
            sampled: true,
        }
    }

    /// The same trace under a new span id: what a hop that records no span passes on.
    pub fn child(&self) -> Self {
        TraceContext {
            span_id: new_span_id(),
            ..*self
        }
    }

    /// Parses a `traceparent` header. Version `00` exactly; a later version is read
    /// by its first four fields, as the W3C spec asks. Anything invalid is `None`
    /// (the receiver starts a new trace).
    pub fn parse(header: &str) -> Option<Self> {
        let h = header.trim();
        let mut parts = h.split('-');
        let (version, trace, span, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let lower_hex = |s: &str, n: usize| {
            s.len() == n
                && s.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        if !lower_hex(version, 2) || version == "ff" || !lower_hex(flags, 2) {
            return None;
        }
        if version == "00" && parts.next().is_some() {
            return None;
        }
        if !lower_hex(trace, 32) || !lower_hex(span, 16) {
            return None;
        }
        let trace_id = u128::from_str_radix(trace, 16).ok()?;
        let span_id = u64::from_str_radix(span, 16).ok()?;
        let flags = u8::from_str_radix(flags, 16).ok()?;
        (trace_id != 0 && span_id != 0).then_some(TraceContext {
            trace_id,
            span_id,
            sampled: flags & 1 == 1,
        })
    }

    /// The `traceparent` header value.
    pub fn traceparent(&self) -> String {
        format!(
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id, self.span_id, self.sampled as u8
        )
    }

    /// The AWS X-Ray header (`_X_AMZN_TRACE_ID`, `Lambda-Runtime-Trace-Id`):
    /// `Root=1-{8 hex}-{24 hex};Parent={16 hex};Sampled={0|1}`, the split that
    /// AWS's own W3C ↔ X-Ray mapping uses.
    pub fn xray(&self) -> String {
        let hex = format!("{:032x}", self.trace_id);
        format!(
            "Root=1-{}-{};Parent={:016x};Sampled={}",
            &hex[..8],
            &hex[8..],
            self.span_id,
            self.sampled as u8
        )
    }

    fn to_otel(self) -> opentelemetry::Context {
        let sc = SpanContext::new(
            TraceId::from_bytes(self.trace_id.to_be_bytes()),
            SpanId::from_bytes(self.span_id.to_be_bytes()),
            if self.sampled {
                TraceFlags::SAMPLED
            } else {
                TraceFlags::default()
            },
            true,
            TraceState::default(),
        );
        opentelemetry::Context::new().with_remote_span_context(sc)
    }

    fn from_otel(sc: &SpanContext) -> Option<Self> {
        sc.is_valid().then(|| TraceContext {
            trace_id: u128::from_be_bytes(sc.trace_id().to_bytes()),
            span_id: u64::from_be_bytes(sc.span_id().to_bytes()),
            sampled: sc.is_sampled(),
        })
    }
}

/// A new span id, never zero.
pub fn new_span_id() -> u64 {
    rand::random::<u64>().max(1)
}

/// Makes `span` the child of `parent` (a new trace when `None`) and returns the
/// context the next hop receives: the span's own when spans are exported, else
/// the same trace under a new span id.
pub fn enter(span: &tracing::Span, parent: Option<TraceContext>) -> TraceContext {
    if exporting() && !span.is_disabled() {
        // A root span gets its ids from the exporter's generator (`nimbus::telemetry`).
        if let Some(p) = parent {
            let _ = span.set_parent(p.to_otel());
        }
        if let Some(own) = TraceContext::from_otel(span.context().span().span_context()) {
            return own;
        }
    }
    parent.map(|p| p.child()).unwrap_or_else(TraceContext::root)
}

/// [`enter`] for a context that came as text (a header, a column).
pub fn enter_str(span: &tracing::Span, parent: Option<&str>) -> TraceContext {
    enter(span, parent.and_then(TraceContext::parse))
}

/// The context to hand the next hop from inside the current span: the span's own
/// when spans are exported, else `fallback`'s trace under a new span id (a new
/// trace without one).
pub fn current(fallback: Option<TraceContext>) -> TraceContext {
    if exporting()
        && let Some(own) =
            TraceContext::from_otel(tracing::Span::current().context().span().span_context())
    {
        return own;
    }
    fallback
        .map(|p| p.child())
        .unwrap_or_else(TraceContext::root)
}

/// `span` when spans are exported, else a disabled span (free on hot paths).
#[macro_export]
macro_rules! span_if_exporting {
    ($($arg:tt)*) => {
        if $crate::trace::exporting() {
            tracing::info_span!($($arg)*)
        } else {
            tracing::Span::none()
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_formats_traceparent() {
        let h = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let c = TraceContext::parse(h).unwrap();
        assert_eq!(c.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!(c.span_id, 0x00f067aa0ba902b7);
        assert!(c.sampled);
        assert_eq!(c.traceparent(), h);
        assert_eq!(
            c.xray(),
            "Root=1-4bf92f35-77b34da6a3ce929d0e0e4736;Parent=00f067aa0ba902b7;Sampled=1"
        );
        // A later version with more fields is read by its first four.
        assert!(TraceContext::parse(&format!("cc{}-what-ever", &h[2..])).is_some());
    }

    #[test]
    fn refuses_invalid_headers() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceContext::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn new_traces_are_valid_xray_ids() {
        let c = TraceContext::root();
        let x = c.xray();
        let root = x.strip_prefix("Root=1-").unwrap();
        let secs = u32::from_str_radix(&root[..8], 16).unwrap() as i64;
        assert!((secs - crate::now_ms() / 1000).abs() < 5, "{x}");
        let child = c.child();
        assert_eq!(child.trace_id, c.trace_id);
        assert_ne!(child.span_id, c.span_id);
        // Not exporting: the next hop gets the same trace.
        let next = enter(&tracing::Span::none(), Some(c));
        assert_eq!(next.trace_id, c.trace_id);
        assert_ne!(next.span_id, c.span_id);
    }
}
